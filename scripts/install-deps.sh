#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only when they are missing.
# Debian's packages, and from PyPI the validators of the deployment artifacts, moto (the AWS emulator
# the AWS suites run against) and the HTC-Grid contract test's modules.
set -euo pipefail

packages=(libsqlite3-dev sqlite3 libhiredis-dev redis-server openssl python3 python3-pip postgresql)
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
# kubectl renders the Kustomize overlays (make validate-deploy, DeploymentArtifactTests). Any kubectl
# will do; Debian's (1.20, kustomize v2.0.3) only when there is none.
if ! command -v kubectl >/dev/null; then
    echo "installing: kubernetes-client (kubectl)"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends kubernetes-client
fi
# The validators of the deployment artifacts (scripts/validate-deploy.sh), from PyPI, pinned; as a
# user they go to ~/.local (validate-deploy.sh puts its bin on PATH).
deploy_tools=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 python-hcl2==8.1.4)
if ! python3 - "${deploy_tools[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != wanted for name, wanted in (tool.split("==") for tool in sys.argv[1:])))
PY
then
    echo "installing: ${deploy_tools[*]} (pip)"
    pip_args=(install --quiet --disable-pip-version-check "${deploy_tools[@]}")
    [ "$(id -u)" -eq 0 ] || pip_args+=(--user)
    python3 -m pip "${pip_args[@]}" --break-system-packages 2>/dev/null || python3 -m pip "${pip_args[@]}"
fi
# The HTC-Grid connector contract test (IntegrationTests/htcgrid) speaks to Redis with redis-py, as
# HTC-Grid's connector does, and signs Cognito-style tokens with cryptography: from PyPI when missing.
python_missing=()
for module in redis cryptography; do
    python3 -c "import $module" 2>/dev/null || python_missing+=("$module")
done
if [ ${#python_missing[@]} -gt 0 ]; then
    echo "installing: ${python_missing[*]} (pip)"
    pip_args=(install --quiet --disable-pip-version-check "${python_missing[@]}")
    [ "$(id -u)" -eq 0 ] || pip_args+=(--user)
    python3 -m pip "${pip_args[@]}" --break-system-packages 2>/dev/null || python3 -m pip "${pip_args[@]}"
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
