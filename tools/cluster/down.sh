#!/usr/bin/env bash
# Tear down the cluster tools/cluster/up.sh started in WORKDIR. Safe to run more than once, after a
# failed or partial up.sh, and for a WORKDIR that never held a cluster.
#
#   tools/cluster/down.sh WORKDIR
#
# Only the cluster that owns the node (see lib.sh) removes node-wide state; for any other WORKDIR
# (e.g. one whose up.sh refused to start because another cluster runs) only its own processes and
# mounts are handled. In order: the kubelet stops; every container it created (`docker ps -a --filter name=k8s_`) is
# removed; kube-proxy stops and `kube-proxy --cleanup` removes its iptables rules, then any KUBE-*
# chain left (the kubelet's own) is deleted; dnsmasq, dns-sync, the scheduler, the controller
# manager, the API server and etcd stop (SIGTERM to each process group recorded in WORKDIR/pids,
# SIGKILL after a bounded wait); mounts below WORKDIR (pod volumes) are unmounted; the pods' log
# directories under /var/log/pods and /var/log/containers are removed. The Docker engine is left
# running (tools/docker/engine.sh stop ends it), and so is everything in WORKDIR except the
# mounts, so its logs can be read; `rm -rf WORKDIR` is safe afterwards.
#
# Output: progress on stderr, nothing on stdout. Exit 0 when nothing is left behind (no recorded
# process alive, no k8s_ container, no KUBE-* chain, no mount below WORKDIR); 1 with a list of
# what is left otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 WORKDIR" >&2; exit 2; }
[ -d "$1" ] || { cluster_log "no such directory: $1 (nothing to tear down)"; exit 0; }
W=$(cd "$1" && pwd)
T0=$SECONDS
BIN=""
if [ -f "$W/env" ]; then BIN=$(sed -n 's/^BIN_DIR=//p' "$W/env"); fi
if [ -z "$BIN" ] && [ -n "${FLEET_CLUSTER_BIN_DIR:-}" ]; then BIN=$FLEET_CLUSTER_BIN_DIR; fi
if [ -z "$BIN" ]; then BIN=${XDG_CACHE_HOME:-$HOME/.cache}/fleet-external-server/envtest/1.20.2; fi

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
mkdir -p "$W/logs"

# The node-wide cleanup (kubelet containers, KUBE-* chains) only for the cluster that owns the
# node: never for a WORKDIR whose up.sh stopped early because another cluster runs.
owner=$(node_owner)
node_wide=0
if [ "$owner" = "$W" ]; then
  node_wide=1
elif [ -z "$owner" ] && { [ -e "$W/pids/kubelet.pid" ] || [ -e "$W/pids/kube-proxy.pid" ]; }; then
  node_wide=1
elif [ -n "$owner" ]; then
  cluster_log "the node belongs to the cluster of $owner: leaving its containers and iptables alone"
fi

# Pod UIDs, for their log directories (only while the API server still answers).
uids=""
if recorded_pid "$W" kube-apiserver >/dev/null && [ -f "$W/kubeconfig" ]; then
  uids=$(kubectl --kubeconfig "$W/kubeconfig" --request-timeout=5s get pods --all-namespaces \
           -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}' 2>/dev/null || true)
fi

# 1. The kubelet first, so that it recreates nothing.
stop_proc "$W" kubelet 20

# 2. Its containers (pods and pod sandboxes).
if [ "$node_wide" = 1 ] && docker_ok; then
  mapfile -t ids < <(docker ps -aq --filter name=k8s_)
  if [ ${#ids[@]} -gt 0 ]; then
    cluster_log "removing ${#ids[@]} kubelet containers"
    docker rm -f -v "${ids[@]}" >/dev/null || cluster_log "docker rm reported errors"
  fi
fi

# 3. kube-proxy and the iptables rules.
stop_proc "$W" kube-proxy
if [ "$node_wide" = 1 ]; then
  if [ -x "$BIN/kube-proxy" ] && command -v iptables >/dev/null 2>&1; then
    "$BIN/kube-proxy" --cleanup >>"$W/logs/kube-proxy-cleanup.log" 2>&1 \
      || cluster_log "kube-proxy --cleanup failed (see $W/logs/kube-proxy-cleanup.log); deleting chains directly"
  fi
  delete_kube_chains
fi

# 4. The rest, in reverse start order.
# The API server waits for open watches (clients still running) on SIGTERM; its state is thrown
# away anyway, so it gets 5 s.
for name in dnsmasq dns-sync kube-scheduler kube-controller-manager; do
  stop_proc "$W" "$name"
done
stop_proc "$W" kube-apiserver 5
stop_proc "$W" etcd

# 5. Pod volume mounts (tmpfs for secrets and service-account tokens).
while read -r m; do
  [ -n "$m" ] || continue
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || cluster_log "could not unmount $m"
done < <(mounts_below "$W")

# 6. Pod log directories the kubelet keeps outside its root dir.
for uid in $uids; do
  for d in /var/log/pods/*_"$uid"; do
    [ -e "$d" ] && rm -rf "$d"
  done
done
if [ "$node_wide" = 1 ]; then
  # Also those of pods deleted earlier whose directories the kubelet had not collected yet.
  if [ -f "$W/started" ] && [ -d /var/log/pods ]; then
    find /var/log/pods -mindepth 1 -maxdepth 1 -type d -newer "$W/started" -exec rm -rf {} + 2>/dev/null || true
  fi
  if [ -d /var/log/containers ]; then
    find /var/log/containers -maxdepth 1 -type l ! -exec test -e {} \; -delete 2>/dev/null || true
  fi
fi
if [ -S "$W/dockershim/dockershim.sock" ]; then rm -f "$W/dockershim/dockershim.sock"; fi

# 7. Check.
left=()
for name in "${CLUSTER_PROCS[@]}"; do
  if pid=$(recorded_pid "$W" "$name"); then left+=("process $name (pid $pid)"); fi
done
if [ "$node_wide" = 1 ]; then
  if docker_ok; then
    while read -r c; do [ -n "$c" ] && left+=("container $c"); done < <(docker ps -a --filter name=k8s_ --format '{{.Names}}')
  fi
  while read -r c; do [ -n "$c" ] && left+=("chain $c"); done < <(kube_chains)
fi
while read -r m; do [ -n "$m" ] && left+=("mount $m"); done < <(mounts_below "$W")
if [ ${#left[@]} -gt 0 ]; then
  cluster_log "left behind after down.sh:"
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
if [ "$(node_owner)" = "$W" ]; then rm -f "$CLUSTER_OWNER"; fi
cluster_log "cluster in $W is down ($((SECONDS - T0))s)"
