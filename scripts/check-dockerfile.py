#!/usr/bin/env python3
"""Checks the Dockerfile without a Docker engine (`scripts/validate-deploy.sh`):

- it has a build stage and a runtime stage, the runtime runs as a non-root user;
- every COPY from the build context names a file or directory that exists and .dockerignore keeps;
- the build stage installs the -dev packages of the C libraries the package links (those of
  scripts/install-deps.sh), and the runtime stage installs the library package each of them depends on
  (read from dpkg on this Debian machine, the same release as the image: bookworm).

    scripts/check-dockerfile.py [Dockerfile]
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The C libraries Package.swift links: SQLite (GRDB) and hiredis (CHiredis).
DEV_PACKAGES = ["libsqlite3-dev", "libhiredis-dev"]


def instructions(text):
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def installed(stage):
    """Packages named by `apt-get install` in a stage's RUN instructions."""
    packages = set()
    for keyword, arguments in stage:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            words = command.split()
            if "apt-get" in words and "install" in words:
                packages.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
    return packages


def runtime_library(dev_package):
    """The library package a -dev package depends on, e.g. libhiredis-dev -> libhiredis0.14."""
    output = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", dev_package], capture_output=True, text=True)
    if output.returncode != 0:
        sys.exit(f"check-dockerfile: {dev_package} is not installed here (scripts/install-deps.sh installs it)")
    libraries = [d.split()[0] for d in output.stdout.split(",") if d.strip().startswith("lib") and "-dev" not in d]
    if not libraries:
        sys.exit(f"check-dockerfile: cannot tell the library package of {dev_package} from '{output.stdout}'")
    return libraries[0]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "Dockerfile")
    with open(path, encoding="utf-8") as handle:
        steps = instructions(handle.read())
    stages, current = [], None
    for keyword, arguments in steps:
        if keyword == "FROM":
            current = []
            stages.append((arguments, current))
        elif current is not None:
            current.append((keyword, arguments))
    failures = []
    if len(stages) < 2:
        failures.append("expected a build stage and a runtime stage")
    build, runtime = stages[0][1], stages[-1][1]

    ignore_file = os.path.join(os.path.dirname(path), ".dockerignore")
    ignored = set()
    if os.path.exists(ignore_file):
        with open(ignore_file, encoding="utf-8") as handle:
            ignored = {line.strip().rstrip("/") for line in handle if line.strip() and not line.startswith("#")}
    for _, stage in stages:
        for keyword, arguments in stage:
            if keyword != "COPY" or "--from=" in arguments:
                continue
            for source in arguments.split()[:-1]:
                if source.startswith("--"):
                    continue
                if not os.path.exists(os.path.join(os.path.dirname(path), source)):
                    failures.append(f"COPY {source}: no such file in the build context")
                elif source.rstrip("/") in ignored:
                    failures.append(f"COPY {source}: .dockerignore leaves it out of the build context")

    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        failures.append("the runtime stage must end with a non-root USER")

    build_packages, runtime_packages = installed(build), installed(runtime)
    for dev in DEV_PACKAGES:
        if dev not in build_packages:
            failures.append(f"the build stage does not install {dev}")
        library = runtime_library(dev)
        if library not in runtime_packages:
            failures.append(f"the runtime stage does not install {library}, the library of {dev}")

    if failures:
        for message in failures:
            print(f"check-dockerfile: {message}", file=sys.stderr)
        sys.exit(1)
    print(f"  {len(stages)} stages; runtime installs {', '.join(sorted(runtime_packages))}; user {users[-1]}")


if __name__ == "__main__":
    main()
