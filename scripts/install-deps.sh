#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only when they are missing.
# Debian's packages only; nothing is fetched from anywhere else.
set -euo pipefail

packages=(libsqlite3-dev sqlite3 libhiredis-dev redis-server openssl postgresql)
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
command -v swift >/dev/null || { echo "swift is not on PATH; install Swift 6 first" >&2; exit 1; }
