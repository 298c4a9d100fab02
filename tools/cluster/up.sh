#!/usr/bin/env bash
# Start a real single-node Kubernetes v1.20.2 cluster on this machine (pods really run, in Docker)
# and print the path of its admin kubeconfig. The provider `make e2e` uses where kind is missing.
#
#   KUBECONFIG=$(tools/cluster/up.sh WORKDIR)      # ... use the cluster ...
#   tools/cluster/down.sh WORKDIR                   # always, also after a failed up.sh
#
# stdout: exactly one line, WORKDIR/kubeconfig (absolute). Progress and errors go to stderr.
# Exit 0 once the node is Ready, the `default` ServiceAccounts exist in kube-system and default,
# kube-proxy has programmed the `kubernetes` Service and the cluster DNS answers; 1 otherwise
# (then everything started is torn down again unless FLEET_CLUSTER_KEEP_ON_FAILURE=1, and the end
# of the failing component's log is shown). Needs root, Debian (apt installs what is missing).
#
# What runs (each in its own process group, PIDs in WORKDIR/pids/, logs in WORKDIR/logs/):
#   - the Docker engine from tools/docker/engine.sh ensure (left running by down.sh; it is shared);
#   - etcd (Debian etcd-server) on 127.0.0.1:$FLEET_CLUSTER_ETCD_PORT;
#   - kube-apiserver on <docker0 address>:$FLEET_CLUSTER_API_PORT (RBAC, ServiceAccount admission
#     on; certificate SANs: docker0 address, 127.0.0.1, localhost, the `kubernetes` Service IP and
#     kubernetes[.default[.svc[.cluster.local]]]); pods reach it through the `kubernetes` Service;
#   - kube-controller-manager (service-account tokens, Deployments, GC, node lifecycle, ...);
#   - kube-scheduler;
#   - kubelet with dockershim (--container-runtime=docker, cgroupfs, no QoS cgroups, root dir
#     WORKDIR/kubelet, node name $FLEET_CLUSTER_NODE_NAME, node IP = docker0 address, image GC
#     off because nothing can be pulled again, disk eviction thresholds at 1%);
#   - kube-proxy in iptables mode;
#   - cluster DNS: dnsmasq on <docker0 address>:53 (the kubelet's --cluster-dns) serving
#     <svc>.<ns>.svc.cluster.local from the Services (dns-sync.sh), forwarding nothing else.
# Pods use Docker's default bridge (docker0, 172.17.0.0/16 by default): no CNI. Images must be
# local (`docker build`/`docker load`); use imagePullPolicy IfNotPresent or Never. The pod
# infrastructure image is fleet-pause:<hash>, built here from pause.c (static, one file).
#
# Every component authenticates with the admin client certificate (system:masters); this is a
# throwaway test cluster on the docker0 bridge, not a hardened one. The kubelet serves on the
# docker0 address and only accepts clients with a certificate of the cluster CA.
#
# Environment (all optional):
#   FLEET_CLUSTER_BIN_DIR       directory with etcd kube-apiserver kube-controller-manager
#                               kube-scheduler kubelet kube-proxy (default: tools/cluster/ensure-bin.sh,
#                               which builds them once into ~/.cache/fleet-external-server/envtest/1.20.2)
#   FLEET_CLUSTER_API_PORT      API server port (6443)
#   FLEET_CLUSTER_ETCD_PORT     etcd client port on loopback (2379; the peer port is this + 1)
#   FLEET_CLUSTER_NODE_NAME     node name (fleet-node)
#   FLEET_CLUSTER_SERVICE_CIDR  Service ClusterIP range (10.96.0.0/16; 10.96.0.1 is `kubernetes`)
#   FLEET_CLUSTER_TIMEOUT       seconds each wait may take (120)
#   FLEET_CLUSTER_KEEP_ON_FAILURE=1  leave a failed cluster running for inspection
#   FLEET_CLUSTER_VERBOSITY     klog -v of the components (1)
#
# WORKDIR/env (KEY=value, for scripts): KUBECONFIG, API_SERVER, NODE_NAME, NODE_IP, DNS_IP,
# CLUSTER_DOMAIN, SERVICE_CIDR, POD_CIDR, PAUSE_IMAGE, BIN_DIR. See lib.sh for the rest of WORKDIR.
# Only one cluster per machine: the kubelet, kube-proxy and the DNS use fixed node-wide resources.
# up.sh records its WORKDIR in /run/fleet-external-server/cluster.owner and refuses to start while
# the cluster of another WORKDIR is alive (it names that WORKDIR; run down.sh for it).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 WORKDIR" >&2; exit 2; }
mkdir -p "$1"
W=$(cd "$1" && pwd)

API_PORT=${FLEET_CLUSTER_API_PORT:-6443}
ETCD_PORT=${FLEET_CLUSTER_ETCD_PORT:-2379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
NODE_NAME=${FLEET_CLUSTER_NODE_NAME:-fleet-node}
SERVICE_CIDR=${FLEET_CLUSTER_SERVICE_CIDR:-10.96.0.0/16}
TIMEOUT=${FLEET_CLUSTER_TIMEOUT:-120}
VERBOSITY=${FLEET_CLUSTER_VERBOSITY:-1}
DOMAIN=cluster.local
T0=$SECONDS

say() { cluster_log "[$((SECONDS - T0))s] $*"; }
die() { cluster_log "error: $*"; exit 1; }

# A cluster already running in WORKDIR is left alone (checked before the failure trap is set).
for name in "${CLUSTER_PROCS[@]}"; do
  if recorded_pid "$W" "$name" >/dev/null; then
    die "a cluster is already running in $W ($name); run $HERE/down.sh $W first"
  fi
done

# --- failure handling ---------------------------------------------------------------------------
STEP="preparing"
FAILED_COMPONENT=""
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] && return 0
  cluster_log "up.sh failed while $STEP (exit $rc)"
  if [ -n "$FAILED_COMPONENT" ] && [ -f "$W/logs/$FAILED_COMPONENT.log" ]; then
    cluster_log "end of $W/logs/$FAILED_COMPONENT.log:"
    tail -n 25 "$W/logs/$FAILED_COMPONENT.log" >&2 || true
  fi
  if [ "${FLEET_CLUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
    cluster_log "FLEET_CLUSTER_KEEP_ON_FAILURE=1: leaving it running; tear down with $HERE/down.sh $W"
  else
    "$HERE/down.sh" "$W" >&2 || true
  fi
  exit "$rc"
}
trap on_exit EXIT

# wait_for DESCRIPTION COMPONENT COMMAND...: run COMMAND until it succeeds, at most TIMEOUT
# seconds; fail early when COMPONENT's process has exited.
wait_for() {
  local what=$1 comp=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  STEP="waiting for $what"
  FAILED_COMPONENT=$comp
  until "$@" >/dev/null 2>&1; do
    if [ -n "$comp" ] && ! recorded_pid "$W" "$comp" >/dev/null; then
      die "$comp exited while waiting for $what"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
  FAILED_COMPONENT=""
}

# --- preconditions ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (kubelet, kube-proxy, iptables, mounts)"

STEP="installing prerequisites"
need=()
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
# kube-proxy --cleanup (down.sh) also clears IPVS sets and fails without ipset.
command -v ipset >/dev/null || need+=(ipset)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(find /usr/lib -name libc.a -print -quit 2>/dev/null)" ] \
  || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${need[@]}" >&2
fi
command -v kubectl >/dev/null || die "kubectl is not on PATH"

STEP="ensuring the binaries"
if [ -n "${FLEET_CLUSTER_BIN_DIR:-}" ]; then
  BIN=$FLEET_CLUSTER_BIN_DIR
else
  BIN=$("$HERE/ensure-bin.sh")
fi
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing"
done

STEP="starting the Docker engine"
"$HERE/../docker/engine.sh" ensure
NODE_IP=$(docker0_address)
[ -n "$NODE_IP" ] || die "docker0 has no IPv4 address (is dockerd running with its default bridge?)"
POD_CIDR=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}' 2>/dev/null || true)
POD_CIDR=${POD_CIDR:-172.17.0.0/16}
say "node address $NODE_IP (docker0), pods in $POD_CIDR"

STEP="claiming the node"
# One up.sh at a time; the owner record says which WORKDIR's cluster holds the node.
mkdir -p "$CLUSTER_RUN_DIR"
exec 8>"$CLUSTER_LOCK"
flock -w "$TIMEOUT" 8 || die "another up.sh holds $CLUSTER_LOCK"
owner=$(node_owner)
if [ -n "$owner" ] && [ "$owner" != "$W" ]; then
  if cluster_alive "$owner"; then
    die "the cluster of $owner is running on this machine; tear it down first: $HERE/down.sh $owner"
  fi
  say "the cluster of $owner is gone; taking the node over"
fi

STEP="checking ports"
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
for p in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" 10250 10248 10249 10256; do
  port_busy "$p" && die "TCP port $p is in use (another cluster? run down.sh for it)"
done
ss -Hlun "sport = :53" | awk '{print $4}' | grep -qxF "$NODE_IP:53" && die "$NODE_IP:53 (UDP) is in use"

echo "$W" >"$CLUSTER_OWNER"
# down.sh removes the pod log directories made after this mark.
touch "$W/started"

# Containers of an earlier kubelet (no kubelet runs now: its ports are free) would be killed and
# removed by the new one behind the back of nobody; remove them now, visibly.
mapfile -t stale < <(docker ps -aq --filter name=k8s_)
if [ ${#stale[@]} -gt 0 ]; then
  say "removing ${#stale[@]} containers left by an earlier kubelet"
  docker rm -f -v "${stale[@]}" >/dev/null
fi

# The `kubernetes` Service gets the first address of the range.
IFS=./ read -r o1 o2 o3 o4 _ <<<"$SERVICE_CIDR"
API_SERVICE_IP="$o1.$o2.$o3.$((o4 + 1))"

# --- pause image ----------------------------------------------------------------------------------
STEP="building the pause image"
PAUSE_IMAGE="fleet-pause:$(sha256sum "$HERE/pause.c" | cut -c1-12)"
if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
  say "building $PAUSE_IMAGE"
  tmp=$(mktemp -d)
  gcc -static -Os -Wall -o "$tmp/pause" "$HERE/pause.c"
  strip "$tmp/pause" 2>/dev/null || true
  tar -C "$tmp" -c pause | docker import --change 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
  rm -rf "$tmp"
fi

# --- certificates ---------------------------------------------------------------------------------
STEP="making certificates"
PKI=$W/pki
rm -rf "$PKI" "$W/etcd" "$W/dns"
mkdir -p "$PKI" "$W/logs" "$W/pids" "$W/dns/hosts"
(
  cd "$PKI"
  exec 2>>"$W/logs/openssl.log"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
    -subj "/CN=fleet-cluster-ca" >/dev/null
  cat >server.ext <<EOF
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$DOMAIN
extendedKeyUsage=serverAuth
keyUsage=digitalSignature,keyEncipherment
EOF
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >client.ext
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" >/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile server.ext -out apiserver.crt >/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
    -subj "/O=system:masters/CN=fleet-admin" >/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile client.ext -out admin.crt >/dev/null
  openssl genrsa -out sa.key 2048 >/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub >/dev/null
  chmod 0600 ./*.key
)

KCFG=$W/kubeconfig
API_SERVER="https://$NODE_IP:$API_PORT"
rm -f "$KCFG"
kubectl config --kubeconfig "$KCFG" set-cluster fleet --server "$API_SERVER" \
  --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
kubectl config --kubeconfig "$KCFG" set-credentials fleet-admin \
  --client-certificate "$PKI/admin.crt" --client-key "$PKI/admin.key" --embed-certs >/dev/null
kubectl config --kubeconfig "$KCFG" set-context fleet --cluster fleet --user fleet-admin >/dev/null
kubectl config --kubeconfig "$KCFG" use-context fleet >/dev/null
chmod 0600 "$KCFG"
k() { kubectl --kubeconfig "$KCFG" --request-timeout=10s "$@"; }

# --- etcd, API server -------------------------------------------------------------------------------
STEP="starting etcd"
say "starting etcd"
start_proc "$W" etcd "$BIN/etcd" --name fleet --data-dir "$W/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "fleet=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync
wait_for "etcd" etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

STEP="starting kube-apiserver"
say "starting kube-apiserver on $API_SERVER"
start_proc "$W" kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" --insecure-port 0 \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --authorization-mode RBAC \
  --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota \
  --service-account-issuer "https://kubernetes.default.svc.$DOMAIN" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --kubelet-preferred-address-types InternalIP \
  --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
  --allow-privileged=true --profiling=false --v "$VERBOSITY"
wait_for "the API server" kube-apiserver k get --raw /readyz

# --- control plane ------------------------------------------------------------------------------------
STEP="starting kube-controller-manager and kube-scheduler"
say "starting kube-controller-manager and kube-scheduler"
start_proc "$W" kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$KCFG" --leader-elect=false --port 0 --secure-port 0 \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --controllers '*,-nodeipam,-cloud-node-lifecycle,-route,-service' \
  --profiling=false --v "$VERBOSITY"
start_proc "$W" kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$KCFG" --leader-elect=false --port 0 --secure-port 0 --profiling=false --v "$VERBOSITY"

# --- cluster DNS ------------------------------------------------------------------------------------
STEP="starting the cluster DNS"
say "starting the cluster DNS on $NODE_IP:53"
: >"$W/dns/hosts/services"
chmod 0755 "$W/dns" "$W/dns/hosts"
start_proc "$W" dns-sync "$HERE/dns-sync.sh" "$KCFG" "$W/dns/hosts/services" "$DOMAIN"
start_proc "$W" dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --user=root \
  --listen-address="$NODE_IP" --bind-interfaces --port=53 \
  --no-resolv --no-hosts --no-poll --local="/$DOMAIN/" --domain-needed --bogus-priv \
  --hostsdir="$W/dns/hosts" --log-facility=-
wait_for "the cluster DNS" dnsmasq python3 "$HERE/dnsq.py" "$NODE_IP" "kubernetes.default.svc.$DOMAIN"

# --- node ---------------------------------------------------------------------------------------------
STEP="starting kube-proxy"
# Replies between pods on the bridge must pass iptables for Service NAT to be undone.
masquerade_all=false
if [ -w /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
else
  masquerade_all=true
fi
echo 1 >/proc/sys/net/ipv4/ip_forward
say "starting kube-proxy"
start_proc "$W" kube-proxy "$BIN/kube-proxy" \
  --kubeconfig "$KCFG" --proxy-mode iptables --hostname-override "$NODE_NAME" \
  --cluster-cidr "$POD_CIDR" --masquerade-all="$masquerade_all" \
  --bind-address 127.0.0.1 --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
  --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
  --oom-score-adj 0 --profiling=false --v "$VERBOSITY"

STEP="starting the kubelet"
say "starting the kubelet (node $NODE_NAME)"
mkdir -p "$W/kubelet" "$W/dockershim" "$W/kubelet/volume-plugins"
# A unix socket path must stay short (108 bytes); fall back to the default location otherwise.
SHIM_SOCK="$W/dockershim/dockershim.sock"
if [ ${#SHIM_SOCK} -gt 100 ]; then SHIM_SOCK=/var/run/dockershim.sock; fi
start_proc "$W" kubelet "$BIN/kubelet" \
  --kubeconfig "$KCFG" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
  --container-runtime docker --cgroup-driver cgroupfs \
  --container-runtime-endpoint "unix://$SHIM_SOCK" \
  --experimental-dockershim-root-directory "$W/dockershim" \
  --pod-infra-container-image "$PAUSE_IMAGE" \
  --root-dir "$W/kubelet" --cert-dir "$W/kubelet/pki" --volume-plugin-dir "$W/kubelet/volume-plugins" \
  --fail-swap-on=false --cgroups-per-qos=false --enforce-node-allocatable= --oom-score-adj 0 \
  --cluster-dns "$NODE_IP" --cluster-domain "$DOMAIN" --node-status-update-frequency 2s \
  --address "$NODE_IP" --read-only-port 0 --healthz-bind-address 127.0.0.1 --healthz-port 10248 \
  --anonymous-auth=false --client-ca-file "$PKI/ca.crt" --authorization-mode AlwaysAllow \
  --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
  --eviction-hard 'memory.available<100Mi,nodefs.available<1%,nodefs.inodesFree<1%,imagefs.available<1%' \
  --v "$VERBOSITY"

# --- wait for observable readiness ---------------------------------------------------------------------
node_ready() {
  [ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for "node $NODE_NAME to be Ready" kubelet node_ready
wait_for "the default ServiceAccount in kube-system" kube-controller-manager k -n kube-system get serviceaccount default
wait_for "the default ServiceAccount in default" kube-controller-manager k -n default get serviceaccount default
proxy_synced() { iptables -w 5 -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https'; }
wait_for "kube-proxy to program the kubernetes Service" kube-proxy proxy_synced
STEP="finishing"

cat >"$W/env" <<EOF
KUBECONFIG=$KCFG
API_SERVER=$API_SERVER
NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
DNS_IP=$NODE_IP
CLUSTER_DOMAIN=$DOMAIN
SERVICE_CIDR=$SERVICE_CIDR
POD_CIDR=$POD_CIDR
PAUSE_IMAGE=$PAUSE_IMAGE
BIN_DIR=$BIN
EOF
exec 8>&-
say "cluster up: node $NODE_NAME Ready, API $API_SERVER, DNS $NODE_IP"
echo "$KCFG"
