#!/usr/bin/env bash
# `make e2e`: end-to-end tests on a real Kubernetes cluster (kind).
#
#   1. kind cluster from kind-config.yaml (one control plane, two workers), reused if it exists
#   2. docker build of the image, `kind load` into the nodes
#   3. KEDA (its Helm chart, with its CRDs) and the prometheus-operator CRDs
#   4. helm upgrade --install of charts/taskproc with tests/e2e/values.yaml
#   5. pytest -m e2e tests/e2e (kubernetes Python client + kubectl port-forward)
#
# Needs: a Docker engine, network access to the image registries and chart repositories, and kind.
# kind is a Go program and comes from no package registry this project uses, so it is taken from, in order:
#   $KIND, `kind` on PATH, .tools/bin/kind, or built with `go install sigs.k8s.io/kind@$KIND_VERSION` into
#   .tools/bin when Go is installed. Without any of them the script stops and says so.
#
# Environment: KIND_CLUSTER_NAME (taskproc-e2e), KEEP_CLUSTER=1 keeps the cluster afterwards,
# E2E_LOG_DIR (.tools/e2e-logs) receives pod logs and events when something fails, PY (.venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLUSTER="${KIND_CLUSTER_NAME:-taskproc-e2e}"
CONTEXT="kind-$CLUSTER"
NAMESPACE="${E2E_NAMESPACE:-taskproc}"
RELEASE="${E2E_RELEASE:-taskproc}"
IMAGE_REPO="${E2E_IMAGE_REPO:-taskproc}"
IMAGE_TAG="${E2E_IMAGE_TAG:-e2e}"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KEDA_CHART_VERSION="${KEDA_CHART_VERSION:-2.20.0}"
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.93.0}"
SHARED_CRDS="${SHARED_CRDS:-$ROOT/../shared/crds}"
LOG_DIR="${E2E_LOG_DIR:-$ROOT/.tools/e2e-logs}"
PY="${PY:-$ROOT/.venv/bin/python}"

say() { echo "e2e: $*" >&2; }
die() { echo "e2e: ERROR: $*" >&2; exit 1; }

find_kind() {
  if [ -n "${KIND:-}" ]; then
    [ -x "$KIND" ] || die "KIND=$KIND is not an executable kind binary"
    echo "$KIND"
    return
  fi
  if command -v kind >/dev/null 2>&1; then command -v kind; return; fi
  if [ -x "$ROOT/.tools/bin/kind" ]; then echo "$ROOT/.tools/bin/kind"; return; fi
  if command -v go >/dev/null 2>&1; then
    say "building kind $KIND_VERSION with 'go install' into .tools/bin"
    mkdir -p "$ROOT/.tools/bin"
    GOBIN="$ROOT/.tools/bin" go install "sigs.k8s.io/kind@$KIND_VERSION" >&2 || die "go install sigs.k8s.io/kind@$KIND_VERSION failed"
    echo "$ROOT/.tools/bin/kind"
    return
  fi
  die "kind not found. kind is a Go binary that no package registry of this project ships: put 'kind' on PATH \
(https://kind.sigs.k8s.io/docs/user/quick-start/#installation), set KIND=/path/to/kind, or install Go so this \
script can run 'go install sigs.k8s.io/kind@$KIND_VERSION'."
}

command -v docker >/dev/null 2>&1 || die "docker CLI not found: kind runs its nodes as Docker containers"
docker info >/dev/null 2>&1 || die "no Docker engine reachable (docker info failed): kind needs one"
[ -x "$PY" ] || die "$PY not found: run 'make venv' first"
KIND="$(find_kind)"
bash scripts/tools.sh install >&2
eval "$(bash scripts/tools.sh env)"   # HELM, HELM3, KUBECTL
export HELM KUBECTL
kc() { "$KUBECTL" --context "$CONTEXT" "$@"; }

created=0
status=1
diagnostics() {
  mkdir -p "$LOG_DIR"
  say "collecting diagnostics into $LOG_DIR"
  kc get all,pvc,scaledobjects,hpa,events -A -o wide >"$LOG_DIR/objects.txt" 2>&1 || true
  kc -n "$NAMESPACE" describe pods >"$LOG_DIR/pods-describe.txt" 2>&1 || true
  for pod in $(kc -n "$NAMESPACE" get pods -o name 2>/dev/null); do
    kc -n "$NAMESPACE" logs "$pod" --all-containers --prefix --tail=500 >"$LOG_DIR/$(basename "$pod").log" 2>&1 || true
  done
  kc -n keda logs -l app=keda-operator --tail=300 >"$LOG_DIR/keda-operator.log" 2>&1 || true
}
finish() {
  if [ "$status" -ne 0 ]; then diagnostics; fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ] && [ "$created" = 1 ]; then
    say "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    "$KIND" delete cluster --name "$CLUSTER" >&2 || true
  fi
}
trap finish EXIT

# 1. cluster
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing kind cluster $CLUSTER"
else
  say "creating kind cluster $CLUSTER"
  created=1
  "$KIND" create cluster --name "$CLUSTER" --config kind-config.yaml --wait 180s
fi
kc cluster-info >/dev/null

# 2. image
say "building $IMAGE_REPO:$IMAGE_TAG"
docker build -t "$IMAGE_REPO:$IMAGE_TAG" .
"$KIND" load docker-image "$IMAGE_REPO:$IMAGE_TAG" --name "$CLUSTER"

# 3. KEDA and the prometheus-operator CRDs
say "installing KEDA chart $KEDA_CHART_VERSION"
"$HELM" upgrade --install keda keda --repo https://kedacore.github.io/charts --version "$KEDA_CHART_VERSION" \
  --kube-context "$CONTEXT" --namespace keda --create-namespace --wait --timeout 10m
if ls "$SHARED_CRDS"/monitoring.coreos.com_*.yaml >/dev/null 2>&1; then
  say "applying prometheus-operator CRDs from $SHARED_CRDS"
  for crd in "$SHARED_CRDS"/monitoring.coreos.com_*.yaml; do kc apply --server-side -f "$crd"; done
else
  say "applying prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs"
  kc apply --server-side -f \
    "https://github.com/prometheus-operator/prometheus-operator/releases/download/$PROMETHEUS_OPERATOR_VERSION/stripped-down-crds.yaml"
fi
kc wait --for condition=Established --timeout 120s \
  crd/scaledobjects.keda.sh crd/triggerauthentications.keda.sh \
  crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com

# 4. taskproc
say "helm install $RELEASE"
"$HELM" upgrade --install "$RELEASE" charts/taskproc --kube-context "$CONTEXT" --namespace "$NAMESPACE" \
  --create-namespace --values tests/e2e/values.yaml \
  --set "image.repository=$IMAGE_REPO" --set "image.tag=$IMAGE_TAG" --wait --timeout 10m
kc -n "$NAMESPACE" rollout status "deployment/$RELEASE-api" --timeout 300s

# 5. tests
export TASKPROC_E2E_CONTEXT="$CONTEXT" TASKPROC_E2E_NAMESPACE="$NAMESPACE" TASKPROC_E2E_RELEASE="$RELEASE"
export TASKPROC_E2E_CHART="$ROOT/charts/taskproc" TASKPROC_E2E_VALUES="$ROOT/tests/e2e/values.yaml"
say "running pytest -m e2e"
"$PY" -m pytest -m e2e tests/e2e -p no:cacheprovider -v -rA
status=0
