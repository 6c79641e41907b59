#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only when they are missing.
# Debian's packages only; nothing is fetched from anywhere else.
set -euo pipefail

packages=(libsqlite3-dev sqlite3 libhiredis-dev redis-server openssl)
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
# The HTC-Grid connector contract test (IntegrationTests/htcgrid) speaks to Redis with redis-py, as
# HTC-Grid's connector does, and signs Cognito-style tokens with cryptography.
command -v python3 >/dev/null || { echo "python3 is not on PATH; install it first" >&2; exit 1; }
python_missing=()
for module in redis cryptography; do
    python3 -c "import $module" 2>/dev/null || python_missing+=("$module")
done
if [ ${#python_missing[@]} -gt 0 ]; then
    echo "installing Python packages: ${python_missing[*]}"
    # pip where python3 has it (pyenv, venv); Debian's own packages for Debian's python3 (PEP 668).
    if ! python3 -m pip install --quiet "${python_missing[@]}"; then
        sudo_cmd=()
        [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
            "${python_missing[@]/#/python3-}"
    fi
fi
command -v swift >/dev/null || { echo "swift is not on PATH; install Swift 6 first" >&2; exit 1; }
