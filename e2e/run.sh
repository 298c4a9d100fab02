#!/usr/bin/env bash
# The end-to-end suite, for real: images built here, a real cluster, the chart installed as a user
# installs it, and e2e/test_e2e.py (issue 10's scenario) against it through a kubeconfig.
#
#   e2e/run.sh                                # or: make e2e
#   FLEET_E2E_REQUIRED=1 e2e/run.sh           # a missing prerequisite fails instead of SKIP (CI)
#
# Steps:
#   1. a Docker engine: one that answers `docker info`, else tools/docker/engine.sh ensure (Debian's
#      docker.io; needs root), stopped again at the end when this run started it;
#   2. a cluster, by provider (E2E_PROVIDER, default auto = kind when `kind` is installed, else node):
#        kind        `kind create cluster` (or reuse E2E_CLUSTER), images `kind load`ed;
#        node        the project's single-node Kubernetes 1.20.2 (tools/cluster/up.sh): the kubelet
#                    uses dockershim, so the images this run builds are visible to pods at once;
#        kubeconfig  an existing cluster whose node sees this Docker engine's images
#                    (E2E_KUBECONFIG=path), neither created nor torn down;
#   3. the images: `make image` (server and operator, no registry needed: a local Debian Python
#      base when the public one cannot be pulled) and the development broker's image
#      (tools/image/ensure-broker.sh); E2E_EXTRA_CA=<PEM bundle> is passed as the documented extra
#      CA build argument (a TLS-intercepting proxy in front of PyPI);
#   4. `helm install` of charts/external-server with e2e/values.yaml (the images just built, the
#      development broker);
#   5. pytest e2e/test_e2e.py; figures in WORKDIR/figures.json, printed at the end;
#   6. always (trap): diagnostics into WORKDIR/diagnostics.txt when something failed, then the
#      cluster torn down (unless E2E_KEEP_CLUSTER=1) and the engine stopped if this run started it.
#
# Without docker, a cluster provider or kubectl it prints one "SKIP: e2e: ..." line and exits 0,
# unless FLEET_E2E_REQUIRED=1, where that is a failure (exit 1).
#
# Environment: E2E_PROVIDER (auto|kind|node), E2E_CLUSTER (kind cluster name, default fleet-e2e),
# E2E_NODE_IMAGE (kind node image), E2E_KEEP_CLUSTER=1, E2E_WORKDIR (logs, kubeconfig, figures;
# default a new directory under ${TMPDIR:-/tmp}), E2E_SKIP_BUILD=1 (images already built),
# E2E_EXTRA_CA, PYTEST_ARGS (extra pytest arguments). Timings of each step: WORKDIR/timings.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

NAMESPACE=fleet
RELEASE=fleet
TAG=e2e
SERVER_IMAGE=fleet-external-server:$TAG
OPERATOR_IMAGE=fleet-external-server-operator:$TAG
CLUSTER=${E2E_CLUSTER:-fleet-e2e}
T_START=$SECONDS

say() { echo "e2e: $*" >&2; }
skip() {
  if [ "${FLEET_E2E_REQUIRED:-0}" = 1 ]; then
    say "FAIL: $* (FLEET_E2E_REQUIRED=1)"
    exit 1
  fi
  echo "SKIP: e2e: $*"
  exit 0
}

WORK=${E2E_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/fleet-e2e.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
: >"$WORK/timings.txt"
step_t=$SECONDS
step() {  # record how long the previous step took, announce the next
  local now=$SECONDS
  if [ -n "${step_name:-}" ]; then echo "$step_name $((now - step_t))" >>"$WORK/timings.txt"; fi
  step_name=$1 step_t=$now
  say "[$((now - T_START))s] $1"
}

# --- prerequisites ---------------------------------------------------------------------------------
PROVIDER=${E2E_PROVIDER:-auto}
if [ "$PROVIDER" = auto ]; then
  if command -v kind >/dev/null 2>&1; then PROVIDER=kind; else PROVIDER=node; fi
fi
case "$PROVIDER" in
  kind | node) ;;
  kubeconfig) [ -r "${E2E_KUBECONFIG:-}" ] || { say "E2E_PROVIDER=kubeconfig needs E2E_KUBECONFIG=<readable file>"; exit 2; } ;;
  *) say "E2E_PROVIDER must be auto, kind, node or kubeconfig (got '$PROVIDER')"; exit 2 ;;
esac
command -v kubectl >/dev/null 2>&1 || skip "kubectl is not installed"
# Another single-node cluster on this machine: its API port is taken or a kubelet runs.
other_cluster() {
  ss -Hltn "sport = :${FLEET_CLUSTER_API_PORT:-6443}" 2>/dev/null | grep -q . ||
    [ -n "$(ps -C kubelet -o pid= 2>/dev/null)" ]
}
if [ "$PROVIDER" = node ]; then
  [ "$(id -u)" = 0 ] || skip "kind is not installed and the project's single-node cluster needs root"
  [ -x "$ROOT/tools/cluster/up.sh" ] || skip "kind is not installed and tools/cluster/up.sh is missing"
  if other_cluster; then
    say "FAIL: another cluster is running on this machine (port ${FLEET_CLUSTER_API_PORT:-6443} in use or" \
      "a kubelet runs); stop it first (tools/cluster/down.sh ITS_WORKDIR)"
    exit 1
  fi
fi

engine_started=0
HELM=${HELM:-}
export KUBECONFIG="$WORK/kubeconfig"
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
say "work directory $WORK (provider $PROVIDER)"

cluster_up=0
kind_created=0
node_started=0
diagnostics() {
  {
    echo "=== $(date -u +%FT%TZ) e2e diagnostics (provider $PROVIDER)"
    kubectl version 2>&1 || true
    kubectl get nodes -o wide 2>&1 || true
    kubectl get all,externalservers,configmaps,serviceaccounts,roles,rolebindings,jobs -n "$NAMESPACE" -o wide 2>&1 || true
    kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 150 || true
    kubectl describe externalservers -n "$NAMESPACE" 2>&1 || true
    kubectl describe pods -n "$NAMESPACE" 2>&1 || true
    for pod in $(kubectl get pods -n "$NAMESPACE" -o name 2>/dev/null); do
      echo "=== logs $pod"
      kubectl logs -n "$NAMESPACE" "$pod" --all-containers --tail=300 2>&1 || true
    done
    echo "=== docker ps -a"
    docker ps -a 2>&1 | head -n 60 || true
    if [ "$PROVIDER" = node ] && [ -d "$WORK/cluster/logs" ]; then
      for log in "$WORK"/cluster/logs/*.log; do
        echo "=== $log (tail)"
        tail -n 60 "$log" 2>&1 || true
      done
    fi
  } >"$WORK/diagnostics.txt" 2>&1
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  step teardown
  if [ "$status" -ne 0 ] && [ "$cluster_up" = 1 ]; then
    say "failed (exit $status); collecting diagnostics into $WORK/diagnostics.txt"
    diagnostics
    grep -E "^(===|NAME|pod/|deployment|job|externalserver)" "$WORK/diagnostics.txt" | head -n 60 >&2 || true
  fi
  say "evidence in $WORK: logs/ (every pod's log, followed while it lived), pods.json, figures.json"
  if [ -s "$WORK/figures.json" ]; then
    say "figures ($WORK/figures.json):"
    cat "$WORK/figures.json" >&2
  fi
  if [ "${E2E_KEEP_CLUSTER:-0}" = 1 ]; then
    say "keeping the cluster (KUBECONFIG=$KUBECONFIG)"
  elif [ "$PROVIDER" = node ]; then
    if [ "$node_started" = 1 ]; then
      say "tearing the cluster down (tools/cluster/down.sh)"
      if ! "$ROOT/tools/cluster/down.sh" "$WORK/cluster" >&2; then
        say "tools/cluster/down.sh reported leftovers"
        if [ "$status" -eq 0 ]; then status=1; fi
      fi
    fi
  elif [ "$PROVIDER" = kubeconfig ] && [ "$cluster_up" = 1 ]; then
    say "removing what this run left in the existing cluster (release $RELEASE, namespace $NAMESPACE)"
    for exs in $(kubectl get externalservers -n "$NAMESPACE" -o name 2>/dev/null); do
      kubectl patch "$exs" -n "$NAMESPACE" --type=merge -p '{"metadata":{"finalizers":[]}}' >/dev/null 2>&1 || true
    done
    "$HELM" uninstall "$RELEASE" -n "$NAMESPACE" --no-hooks >/dev/null 2>&1 || true
    kubectl delete namespace "$NAMESPACE" --wait=true --timeout=120s >/dev/null 2>&1 || true
  elif [ "$kind_created" = 1 ]; then
    say "deleting kind cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  if [ "$engine_started" = 1 ] && [ "${E2E_KEEP_ENGINE:-0}" != 1 ]; then
    say "stopping the Docker engine this run started"
    "$ROOT/tools/docker/engine.sh" stop >&2 || true
  fi
  echo "total $((SECONDS - T_START))" >>"$WORK/timings.txt"
  say "timings (s): $(tr '\n' ' ' <"$WORK/timings.txt")"
  if [ "$status" -eq 0 ]; then say "OK ($((SECONDS - T_START)) s)"; else say "FAILED (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step engine
if ! docker info >/dev/null 2>&1; then
  if [ -x "$ROOT/tools/docker/engine.sh" ] && [ "$(id -u)" = 0 ]; then
    say "no Docker daemon answers; starting one (tools/docker/engine.sh ensure)"
    "$ROOT/tools/docker/engine.sh" ensure || skip "no Docker engine could be started (tools/docker/engine.sh ensure failed)"
    engine_started=1
  else
    skip "no Docker daemon is reachable ('docker info' failed) and none can be started here"
  fi
fi
[ -x "$ROOT/.venv/bin/pytest" ] || make -C "$ROOT" --no-print-directory venv >&2
HELM=$("$ROOT/tools/helm/ensure.sh") || skip "Helm is not available (tools/helm/ensure.sh failed)"


# --- images (before the cluster: the node provider's kubelet then finds them at once) ----------------
step images
if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
  say "building $SERVER_IMAGE and $OPERATOR_IMAGE (make image)"
  make -C "$ROOT" --no-print-directory image IMAGE_SERVER="$SERVER_IMAGE" IMAGE_OPERATOR="$OPERATOR_IMAGE" \
    ${E2E_EXTRA_CA:+EXTRA_CA="$E2E_EXTRA_CA"} >"$WORK/build-images.log" 2>&1 ||
    { tail -n 60 "$WORK/build-images.log" >&2; say "make image failed (log: $WORK/build-images.log)"; exit 1; }
fi
BROKER_IMAGE=eclipse-mosquitto:2
if [ -x "$ROOT/tools/image/ensure-broker.sh" ]; then
  BROKER_IMAGE=$("$ROOT/tools/image/ensure-broker.sh" 2>>"$WORK/build-images.log" | tail -n 1) ||
    { tail -n 30 "$WORK/build-images.log" >&2; say "tools/image/ensure-broker.sh failed"; exit 1; }
elif ! docker image inspect "$BROKER_IMAGE" >/dev/null 2>&1; then
  docker pull -q "$BROKER_IMAGE" >/dev/null || skip "the broker image $BROKER_IMAGE cannot be pulled"
fi
say "broker image $BROKER_IMAGE"
# The images as the cluster will run them: modules at the documented path, non-root, read-only root.
docker run --rm --entrypoint ls "$SERVER_IMAGE" /opt/external-server/modules/ >"$WORK/modules.txt"
for lib in libexample.so libfleet_http_transparent.so libfleet_http_io.so libfleet_http_mission.so; do
  grep -qx "$lib" "$WORK/modules.txt" || { say "FAIL: $SERVER_IMAGE has no /opt/external-server/modules/$lib"; exit 1; }
done
for image in "$SERVER_IMAGE" "$OPERATOR_IMAGE"; do
  user=$(docker image inspect -f '{{.Config.User}}' "$image")
  [ "$user" = "10001:10001" ] || { say "FAIL: $image runs as '$user', expected 10001:10001"; exit 1; }
  docker run --rm --read-only "$image" --help >/dev/null || { say "FAIL: $image --help"; exit 1; }
done
docker run --rm --read-only --entrypoint fleet-simulator "$SERVER_IMAGE" --help >/dev/null ||
  { say "FAIL: $SERVER_IMAGE has no working fleet-simulator"; exit 1; }

# --- cluster ---------------------------------------------------------------------------------------
step cluster
if [ "$PROVIDER" = kind ]; then
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "reusing kind cluster $CLUSTER"
    kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null
  else
    say "creating kind cluster $CLUSTER${E2E_NODE_IMAGE:+ ($E2E_NODE_IMAGE)}"
    kind_created=1
    kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s \
      ${E2E_NODE_IMAGE:+--image "$E2E_NODE_IMAGE"} >&2
  fi
  cluster_up=1
  for image in "$SERVER_IMAGE" "$OPERATOR_IMAGE" "$BROKER_IMAGE"; do
    say "kind load $image"
    kind load docker-image --name "$CLUSTER" "$image" >/dev/null
  done
elif [ "$PROVIDER" = kubeconfig ]; then
  say "using the existing cluster of $E2E_KUBECONFIG"
  cp "$E2E_KUBECONFIG" "$KUBECONFIG"
  cluster_up=1
else
  # One cluster per machine (node-wide kubelet, kube-proxy, DNS): never start (or tear down) ours
  # while another one runs, e.g. a cluster somebody else started with tools/cluster/up.sh.
  if other_cluster; then
    say "FAIL: another cluster is running on this machine; stop it first (tools/cluster/down.sh ITS_WORKDIR)"
    exit 1
  fi
  say "starting the single-node cluster (tools/cluster/up.sh; logs in $WORK/cluster/logs)"
  cluster_up=1
  node_started=1
  kubeconfig=$("$ROOT/tools/cluster/up.sh" "$WORK/cluster") || { say "tools/cluster/up.sh failed"; exit 1; }
  cp "$kubeconfig" "$KUBECONFIG"
fi
kubectl version 2>/dev/null | grep -i server >&2 || true

# --- chart -----------------------------------------------------------------------------------------
step helm-install
VALUES="$WORK/values.yaml"
"$ROOT/.venv/bin/python" - "$ROOT/e2e/values.yaml" "$VALUES" "$BROKER_IMAGE" <<'EOF'
import sys

import yaml

source, target, image = sys.argv[1:4]
with open(source) as f:
    values = yaml.safe_load(f)
repository, _, tag = image.rpartition(":")
broker = values.setdefault("devBroker", {})
broker["enabled"] = True
broker["image"] = {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}
with open(target, "w") as out:
    out.write("# e2e/values.yaml with the development broker image of this run (e2e/run.sh)\n")
    yaml.safe_dump(values, out, sort_keys=False)
EOF
say "helm install $RELEASE (namespace $NAMESPACE, development broker $BROKER_IMAGE)"
"$HELM" install "$RELEASE" "$ROOT/charts/external-server" -n "$NAMESPACE" --create-namespace \
  -f "$VALUES" --wait --timeout 5m >&2

# --- scenario --------------------------------------------------------------------------------------
step tests
export E2E_NAMESPACE=$NAMESPACE E2E_RELEASE=$RELEASE E2E_SERVER_IMAGE=$SERVER_IMAGE HELM E2E_WORKDIR=$WORK
export E2E_VALUES=$VALUES PYTHONDONTWRITEBYTECODE=1
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
"$ROOT/.venv/bin/pytest" "$ROOT/e2e/test_e2e.py" -x -v -rA -p no:cacheprovider --timeout 900 \
  -o testpaths=e2e ${PYTEST_ARGS:-} >&2
