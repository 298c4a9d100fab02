#!/usr/bin/env bash
# Print the directory holding etcd, kube-apiserver and kube-controller-manager v1.20.2 for
# the cluster tests (KUBEBUILDER_ASSETS), building them first when one is missing.
#
#   export KUBEBUILDER_ASSETS=$(tools/envtest/ensure.sh)
#
# The build (tools/envtest/build.sh, about 3 min cold on 2 cores, apt included) logs to stderr and to
# <cache>/build.log. Afterwards the Go build cache (~1.4 GB) is deleted when it is larger
# than FLEET_ENVTEST_GOCACHE_MAX_MB (default 200); set it to 0 to always delete, or
# FLEET_ENVTEST_KEEP_GOCACHE=1 to keep it. The unpacked sources are deleted too unless
# FLEET_ENVTEST_KEEP_WORK=1.
#
# FLEET_ENVTEST_NODE=1 also requires (and builds, in the same run and with the same sources and
# Go cache) the node binaries kube-scheduler, kubelet and kube-proxy into the same directory, for
# the local cluster of tools/cluster/up.sh. Set it for the first call of a run that will also
# need the cluster, so a cold machine builds from the sources once (about 4 more minutes).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=patches.sh
. "$HERE/patches.sh"
K8S_VERSION=1.20.2
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/fleet-external-server/envtest
DEST=${FLEET_ENVTEST_DIR:-$CACHE_ROOT/$K8S_VERSION}
WORK=${FLEET_ENVTEST_WORK:-$CACHE_ROOT/work-$K8S_VERSION}

WANT=(kube-apiserver kube-controller-manager)
if [ "${FLEET_ENVTEST_NODE:-0}" = 1 ]; then WANT+=(kube-scheduler kubelet kube-proxy); fi

# The wanted components that are not built yet (or were built without their current patches,
# see build.sh), one per line.
missing() {
  local b want
  for b in "${WANT[@]}"; do
    want=$(patches_id "$b")
    if [ ! -x "$DEST/$b" ]; then
      echo "$b"
    elif [ -n "$want" ] && [ "$(cat "$DEST/.$b.patches" 2>/dev/null)" != "$want" ]; then
      echo "$b"
    fi
  done
}

complete() {
  [ -x "$DEST/etcd" ] && [ -z "$(missing)" ]
}

if ! complete; then
  mkdir -p "$CACHE_ROOT"
  # One build at a time per machine; a second caller waits and then reuses the result.
  exec 9>"$CACHE_ROOT/.lock"
  flock 9
  if ! complete; then
    echo "ensure-envtest: building envtest binaries into $DEST (log: $CACHE_ROOT/build.log)" >&2
    mapfile -t build < <(missing)
    FLEET_ENVTEST_DIR=$DEST FLEET_ENVTEST_WORK=$WORK "$HERE/build.sh" "${build[@]}" 2>&1 \
      | tee "$CACHE_ROOT/build.log" >&2
    if [ "${FLEET_ENVTEST_KEEP_GOCACHE:-0}" != 1 ] && [ -d "$WORK/gocache" ]; then
      size_mb=$(du -sm "$WORK/gocache" | cut -f1)
      if [ "$size_mb" -gt "${FLEET_ENVTEST_GOCACHE_MAX_MB:-200}" ]; then
        echo "ensure-envtest: deleting Go build cache ($size_mb MB)" >&2
        chmod -R u+w "$WORK/gocache" && rm -rf "$WORK/gocache"
      fi
    fi
    # The unpacked source tree (~500 MB) is cheap to fetch again.
    if [ "${FLEET_ENVTEST_KEEP_WORK:-0}" != 1 ]; then
      rm -rf "${WORK:?}/src" "${WORK:?}/gopath" "${WORK:?}/debs" "${WORK:?}/bin"
    fi
    complete || { echo "ensure-envtest: build finished but binaries are missing in $DEST" >&2; exit 1; }
  fi
fi
echo "$DEST"
