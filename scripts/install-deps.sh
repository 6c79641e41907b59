#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only when they are missing.
# Debian's packages, and moto (the AWS emulator the AWS suites run against) from PyPI.
set -euo pipefail

packages=(libsqlite3-dev sqlite3 libhiredis-dev redis-server openssl python3 python3-pip)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# moto for the AWS backend's tests (scripts/with-moto.sh). Debian's Python refuses pip installs
# outside a virtual environment (PEP 668) unless told otherwise; as a user the install goes to ~/.local.
moto_version="5.2.1"
if ! python3 -c 'import moto.moto_server.werkzeug_app, boto3' >/dev/null 2>&1; then
    echo "installing: moto[server]==$moto_version (pip)"
    pip_args=(install --quiet --disable-pip-version-check "moto[server]==$moto_version")
    [ "$(id -u)" -eq 0 ] || pip_args+=(--user)
    python3 -m pip "${pip_args[@]}" --break-system-packages 2>/dev/null || python3 -m pip "${pip_args[@]}"
fi
command -v swift >/dev/null || { echo "swift is not on PATH; install Swift 6 first" >&2; exit 1; }
