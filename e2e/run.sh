#!/usr/bin/env bash
# End-to-end run on a kind cluster:
#   1. create (or reuse) a kind cluster, with its own kubeconfig (yours is not touched)
#   2. build the server and operator images (Dockerfile targets) and `kind load` them, with the
#      development broker's image
#   3. `helm install` the chart with the development broker (e2e/values.yaml)
#   4. pytest e2e/test_e2e.py: apply an ExternalServer, run the fleet simulator as a Job, assert
#      the car reaches normal communication (RUNNING) and the resource's status shows it
#      connected; scale to more shards, update, delete; then `helm uninstall`
#   5. delete the cluster (unless E2E_KEEP_CLUSTER=1 or it existed before)
#
#   e2e/run.sh                 # or: make e2e
#
# Needs docker (with a running daemon), kind and kubectl; makes the project's venv when missing. Where
# docker or kind is missing, it prints one "SKIP: ..." line and exits 0, unless
# FLEET_E2E_REQUIRED=1, where that is a failure. Helm comes from tools/helm/ensure.sh.
#
# Environment: E2E_CLUSTER (default fleet-e2e), E2E_NODE_IMAGE (kind node image, e.g.
# kindest/node:v1.20.15 to run on the oldest supported Kubernetes), E2E_KEEP_CLUSTER=1,
# E2E_WORKDIR (logs and kubeconfig; default a new temporary directory), E2E_SKIP_BUILD=1 (images
# already built), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CLUSTER=${E2E_CLUSTER:-fleet-e2e}
NAMESPACE=fleet
RELEASE=fleet
SERVER_IMAGE=fleet-external-server:e2e
OPERATOR_IMAGE=fleet-external-server-operator:e2e
BROKER_IMAGE=eclipse-mosquitto:2

say() { echo "e2e: $*" >&2; }
skip() {
  if [ "${FLEET_E2E_REQUIRED:-0}" = 1 ]; then
    say "FAIL: $* (FLEET_E2E_REQUIRED=1)"
    exit 1
  fi
  echo "SKIP: e2e: $*"
  exit 0
}

# --- prerequisites ---------------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || skip "docker is not installed (the e2e suite builds images and runs kind)"
docker info >/dev/null 2>&1 || skip "no Docker daemon is reachable ('docker info' failed)"
command -v kind >/dev/null 2>&1 || skip "kind is not installed (https://kind.sigs.k8s.io)"
command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
[ -x "$ROOT/.venv/bin/pytest" ] || make -C "$ROOT" --no-print-directory venv
HELM=$("$ROOT/tools/helm/ensure.sh")

WORK=${E2E_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fleet-e2e.XXXXXX")}
mkdir -p "$WORK"
export KUBECONFIG="$WORK/kubeconfig"
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
say "work directory $WORK"

created=0
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    say "failed; collecting diagnostics into $WORK/diagnostics.txt"
    {
      kubectl get all,externalservers,configmaps,events -n "$NAMESPACE" -o wide || true
      kubectl describe externalservers -n "$NAMESPACE" || true
      kubectl logs -n "$NAMESPACE" -l app.kubernetes.io/component=operator --tail=300 || true
      kubectl logs -n "$NAMESPACE" -l app.kubernetes.io/name=external-server --all-containers --tail=300 || true
      kubectl logs -n "$NAMESPACE" -l app.kubernetes.io/name=mosquitto --tail=100 || true
    } >"$WORK/diagnostics.txt" 2>&1
    tail -n 80 "$WORK/diagnostics.txt" >&2 || true
  fi
  if [ "$created" = 1 ] && [ "${E2E_KEEP_CLUSTER:-0}" != 1 ]; then
    say "deleting kind cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  elif [ "$created" = 1 ]; then
    say "keeping kind cluster $CLUSTER (KUBECONFIG=$KUBECONFIG)"
  fi
  exit "$status"
}
trap cleanup EXIT

# --- cluster ---------------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "reusing kind cluster $CLUSTER"
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null
else
  say "creating kind cluster $CLUSTER${E2E_NODE_IMAGE:+ ($E2E_NODE_IMAGE)}"
  kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s \
    ${E2E_NODE_IMAGE:+--image "$E2E_NODE_IMAGE"}
  created=1
fi
kubectl version -o yaml | grep -E "gitVersion" >&2 || true

# --- images ----------------------------------------------------------------------------------------
if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
  say "building $SERVER_IMAGE and $OPERATOR_IMAGE"
  docker build --target server -t "$SERVER_IMAGE" "$ROOT" >"$WORK/build-server.log" 2>&1 ||
    { tail -n 60 "$WORK/build-server.log" >&2; exit 1; }
  docker build --target operator -t "$OPERATOR_IMAGE" "$ROOT" >"$WORK/build-operator.log" 2>&1 ||
    { tail -n 60 "$WORK/build-operator.log" >&2; exit 1; }
fi
docker image inspect "$BROKER_IMAGE" >/dev/null 2>&1 || docker pull -q "$BROKER_IMAGE" >/dev/null
# The images as the cluster will run them: modules at the documented path, non-root user.
docker run --rm --entrypoint ls "$SERVER_IMAGE" -l /opt/external-server/modules/ >&2
for image in "$SERVER_IMAGE" "$OPERATOR_IMAGE"; do
  user=$(docker image inspect -f '{{.Config.User}}' "$image")
  [ "$user" = "10001:10001" ] || { say "FAIL: $image runs as '$user', expected 10001:10001"; exit 1; }
  docker run --rm --read-only "$image" --help >/dev/null || { say "FAIL: $image --help"; exit 1; }
done
for image in "$SERVER_IMAGE" "$OPERATOR_IMAGE" "$BROKER_IMAGE"; do
  say "kind load $image"
  kind load docker-image --name "$CLUSTER" "$image" >/dev/null
done

# --- chart -----------------------------------------------------------------------------------------
say "helm install $RELEASE (namespace $NAMESPACE, development broker)"
"$HELM" upgrade --install "$RELEASE" "$ROOT/charts/external-server" -n "$NAMESPACE" --create-namespace \
  -f "$ROOT/e2e/values.yaml" --wait --timeout 5m

# --- scenario --------------------------------------------------------------------------------------
export E2E_NAMESPACE=$NAMESPACE E2E_RELEASE=$RELEASE E2E_SERVER_IMAGE=$SERVER_IMAGE HELM E2E_WORKDIR=$WORK
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
"$ROOT/.venv/bin/pytest" "$ROOT/e2e/test_e2e.py" -x -v -p no:cacheprovider ${PYTEST_ARGS:-}
say "OK"
