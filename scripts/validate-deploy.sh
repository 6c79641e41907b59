#!/usr/bin/env bash
# Checks the deployment artifacts without a Docker engine, a cluster or Terraform (`make validate-deploy`):
#   0. the Dockerfile: stages, non-root user, COPY sources, the runtime libraries of the -dev packages
#      (scripts/check-dockerfile.py; the image itself is not built);
#   1. docker-compose.yml against the Compose specification (check-jsonschema's vendored schema);
#   2. each Kustomize overlay rendered with `kubectl kustomize`, then validated with kubernetes-validate
#      against the Kubernetes version we support ($HTC_K8S_VERSION);
#   3. every Terraform file parsed (python-hcl2), and the names it creates checked against the grid's
#      (scripts/check-terraform.py).
# KUBECTL=/path/to/kubectl picks another kubectl (e.g. Debian's 1.20, whose kustomize is v2.0.3).
# The Swift test DeploymentArtifactTests checks the commands and HTC_* variables of the same files.
set -euo pipefail
# Tools pip installed with --user (scripts/install-deps.sh as a user) live here.
export PATH="$PATH:$(python3 -m site --user-base)/bin"
cd "$(dirname "$0")/.."
k8s_version="${HTC_K8S_VERSION:-1.30.0}"
out="$(mktemp -d "${TMPDIR:-/tmp}/htc-deploy.XXXXXX")"
trap 'rm -rf "$out"' EXIT

echo "Dockerfile: stages, user, build context, runtime libraries"
python3 scripts/check-dockerfile.py Dockerfile

echo "compose: docker-compose.yml against the compose specification"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

for overlay in deployment/kubernetes/overlays/*/; do
    name=$(basename "$overlay")
    echo "kubernetes: overlays/$name rendered and validated for Kubernetes $k8s_version"
    "${KUBECTL:-kubectl}" kustomize "$overlay" > "$out/$name.yaml" 2> "$out/$name.err" || { cat "$out/$name.err" >&2; exit 1; }
    # kubernetes-validate knows only the built-in kinds and merely warns about others. The custom
    # resources are left out here by name (KEDA's ScaledObject and TriggerAuthentication, the Prometheus
    # Operator's ServiceMonitor and PodMonitor); any other kind without a schema fails the check below.
    python3 - "$out/$name.yaml" "$out/$name.builtin.yaml" <<'PY'
import sys, yaml
custom = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
          ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
kept, skipped = [], []
for document in yaml.safe_load_all(open(sys.argv[1])):
    if not document:
        continue
    if (document.get("apiVersion"), document.get("kind")) in custom:
        skipped.append(f"{document['kind']}/{document['metadata']['name']}")
    else:
        kept.append(document)
if not kept:
    sys.exit("the overlay rendered no built-in objects")
yaml.safe_dump_all(kept, open(sys.argv[2], "w"))
print(f"  {len(kept)} objects; custom resources not validated: {', '.join(skipped) or 'none'}")
PY
    kubernetes-validate --strict --quiet -k "$k8s_version" "$out/$name.builtin.yaml" 2>&1 | tee "$out/$name.log"
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ] || grep -q "Couldn't find schema" "$out/$name.log"; then
        echo "overlays/$name: not valid for Kubernetes $k8s_version" >&2
        exit 1
    fi
done

echo "terraform: every .tf parsed, resource names checked against the grid"
python3 scripts/check-terraform.py deployment/terraform
echo "deployment artifacts: all checks passed"
