# shellcheck shell=bash
# Shared by tools/cluster/up.sh and tools/cluster/down.sh (sourced, not run).
#
# Layout of a cluster WORKDIR:
#   kubeconfig         admin kubeconfig (system:masters), server https://<docker0 address>:<port>
#   env                KEY=value lines describing the running cluster (see up.sh)
#   pki/               CA, serving and client certificates, service-account key pair
#   etcd/              etcd data
#   kubelet/           the kubelet's --root-dir (pod volumes are mounted below it)
#   dockershim/        the kubelet's dockershim checkpoints
#   dns/hosts/         the hosts file dnsmasq serves (written by dns-sync.sh)
#   logs/NAME.log      each process's output
#   pids/NAME.pid      "PID STARTTIME" of each process started (STARTTIME from /proc/PID/stat, so a
#                      reused PID is never mistaken for ours)

# Processes in start order; down.sh stops them in the reverse order (kubelet first).
# shellcheck disable=SC2034  # used by up.sh and down.sh
CLUSTER_PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler dns-sync dnsmasq kube-proxy kubelet)

cluster_log() { echo "cluster: $*" >&2; }

# The start time (clock ticks since boot) of a PID, empty when there is no such process.
proc_starttime() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # Field 22; the command name (field 2) may contain spaces, so cut after its closing paren.
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}

# Print the PID recorded for NAME in WORKDIR when that process is still the one we started.
recorded_pid() {
  local workdir=$1 name=$2 file pid start
  file=$workdir/pids/$name.pid
  [ -s "$file" ] || return 1
  read -r pid start <"$file" || return 1
  [ -n "$pid" ] && [ -n "$start" ] || return 1
  [ "$(proc_starttime "$pid")" = "$start" ] || return 1
  echo "$pid"
}

# Start a command in its own session (process group = its PID) with output to logs/NAME.log and
# record it in pids/NAME.pid.
start_proc() {
  local workdir=$1 name=$2 pid
  shift 2
  mkdir -p "$workdir/logs" "$workdir/pids"
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >>"$workdir/logs/$name.log"
  # fd 8 is up.sh's node lock: the long-lived processes must not hold it.
  setsid "$@" </dev/null >>"$workdir/logs/$name.log" 2>&1 8>&- &
  pid=$!
  echo "$pid $(proc_starttime "$pid")" >"$workdir/pids/$name.pid"
}

# Stop NAME's process group: SIGTERM, then SIGKILL after TIMEOUT seconds (default 15).
stop_proc() {
  local workdir=$1 name=$2 timeout=${3:-15} pid deadline
  if ! pid=$(recorded_pid "$workdir" "$name"); then
    rm -f "$workdir/pids/$name.pid"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while [ -n "$(proc_starttime "$pid")" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      cluster_log "$name (pid $pid) did not stop within ${timeout}s; SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  # Anything left in the group (children of a script) goes too.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$workdir/pids/$name.pid"
}

# The IPv4 address of docker0 (the node address of the cluster).
docker0_address() {
  ip -4 -o addr show dev docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'
}

# Mount points at or below DIR, deepest first.
mounts_below() {
  local dir=$1
  awk -v dir="$dir" '{ m = $5; gsub(/\\040/, " ", m); if (m == dir || index(m, dir "/") == 1) print m }' \
    /proc/self/mountinfo | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

# KUBE-* iptables chains left in any table of iptables/ip6tables, as "COMMAND TABLE CHAIN" lines.
kube_chains() {
  local cmd table
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      "$cmd" -w 5 -t "$table" -S 2>/dev/null | awk -v c="$cmd" -v t="$table" '$1 == "-N" && $2 ~ /^KUBE-/ { print c, t, $2 }'
    done
  done
}

# Delete every KUBE-* chain (and the jumps to them) from iptables and ip6tables. kube-proxy
# --cleanup removes kube-proxy's chains; the kubelet's own (KUBE-FIREWALL, KUBE-MARK-DROP,
# KUBE-KUBELET-CANARY, ...) are only removed here.
delete_kube_chains() {
  local cmd table rules
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    command -v "$cmd-save" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      rules=$("$cmd-save" -t "$table" 2>/dev/null) || continue
      grep -q '^:KUBE-' <<<"$rules" || continue
      # Jumps from the built-in chains, then flush and delete the KUBE- chains, in one restore.
      {
        echo "*$table"
        awk '$1 == "-A" && $2 !~ /^KUBE-/ && / -j KUBE-/ { sub(/^-A /, "-D "); print }' <<<"$rules"
        awk '/^:KUBE-/ { sub(/^:/, ""); print "-F " $1 }' <<<"$rules"
        awk '/^:KUBE-/ { sub(/^:/, ""); print "-X " $1 }' <<<"$rules"
        echo COMMIT
      } | "$cmd-restore" -w 5 --noflush || cluster_log "could not delete all KUBE- chains from $cmd $table"
    done
  done
}

# The node-wide resources (kubelet and kube-proxy ports, the kubelet's containers, KUBE-* chains,
# port 53 on docker0) belong to one cluster at a time: the WORKDIR named in this file, written by
# up.sh (under CLUSTER_LOCK) before it starts anything and removed by that WORKDIR's down.sh.
# down.sh of any other WORKDIR leaves those resources alone.
CLUSTER_RUN_DIR=${FLEET_CLUSTER_RUN_DIR:-/run/fleet-external-server}
CLUSTER_OWNER=$CLUSTER_RUN_DIR/cluster.owner
CLUSTER_LOCK=$CLUSTER_RUN_DIR/cluster.lock

# The WORKDIR that owns the node, empty when none does.
node_owner() { cat "$CLUSTER_OWNER" 2>/dev/null || true; }

# Whether WORKDIR still has any process of its cluster alive.
cluster_alive() {
  local name
  for name in "${CLUSTER_PROCS[@]}"; do
    recorded_pid "$1" "$name" >/dev/null && return 0
  done
  return 1
}
