#!/usr/bin/env bash
# Check that a cluster from tools/cluster/up.sh really works, end to end, with a throwaway
# namespace and a local image made of Debian's busybox-static plus the host's `getent` and `curl`
# with their shared libraries (so names are resolved by glibc's resolver, with the search path and
# ndots, as Python programs do; the static busybox cannot resolve names). Nothing is pulled.
#   1. a Deployment (busybox httpd) behind a Service becomes Ready;
#   2. a client pod reaches it by Service name (short, <svc>.<ns>, FQDN) through the cluster DNS
#      and kube-proxy, and reaches the API server through the `kubernetes` Service with its
#      service-account token; its output is read with `kubectl logs`;
#   3. pods deleted one by one, and all of them by a rollout, are gone (not left Terminating)
#      within FLEET_SMOKE_DELETE_TIMEOUT seconds (default 60) each;
#   4. the namespace is deleted again.
#
#   tools/cluster/smoke.sh WORKDIR        # WORKDIR of a running up.sh
#
# Progress and timings on stderr; exit 0 when every check passed.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 WORKDIR" >&2; exit 2; }
W=$(cd "$1" && pwd)
export KUBECONFIG=$W/kubeconfig
DELETE_TIMEOUT=${FLEET_SMOKE_DELETE_TIMEOUT:-60}
NS=smoke-$$
T0=$SECONDS
say() { echo "smoke: [$((SECONDS - T0))s] $*" >&2; }
fail() { say "FAILED: $*"; kubectl -n "$NS" get pods -o wide >&2 || true; exit 1; }
cleanup() { kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT

# --- the image ---------------------------------------------------------------------------------------
if ! command -v busybox >/dev/null || ! busybox --list | grep -qx ssl_client; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends busybox-static >&2
fi
BUSYBOX=$(command -v busybox)
command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
  install -y -qq --no-install-recommends curl >&2
TOOLS=("$(command -v getent)" "$(command -v curl)")
IMAGE="fleet-smoke:$(cat "$BUSYBOX" "${TOOLS[@]}" | sha256sum | cut -c1-12)"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/etc"
  cp "$BUSYBOX" "$tmp/bin/busybox"
  for tool in "${TOOLS[@]}"; do
    rm -f "$tmp/bin/$(basename "$tool")"
    cp "$tool" "$tmp/bin/"
    # Its shared libraries, at the paths the dynamic loader expects.
    for lib in $(ldd "$tool" | awk '$2 == "=>" { print $3; next } $1 ~ /^\// { print $1 }'); do
      mkdir -p "$tmp$(dirname "$lib")"
      [ -e "$tmp$lib" ] || cp -L "$lib" "$tmp$lib"
    done
  done
  printf 'hosts: files dns\n' >"$tmp/etc/nsswitch.conf"
  for applet in $("$BUSYBOX" --list); do
    [ -e "$tmp/bin/$applet" ] || ln -s busybox "$tmp/bin/$applet"
  done
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$tmp/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
  tar -C "$tmp" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  rm -rf "$tmp"
fi
say "image $IMAGE"

# --- 1. a Deployment behind a Service -------------------------------------------------------------------
kubectl create namespace "$NS" >/dev/null
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: httpd
        image: $IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && echo "hello from \$(hostname)" > /www/index.html && exec httpd -f -v -p 8080 -h /www']
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
EOF
kubectl -n "$NS" rollout status deployment/echo --timeout=120s >&2 || fail "the echo Deployment did not become ready"
say "Deployment ready"

# --- 2. DNS, Service, API server through the kubernetes Service, logs ----------------------------------------
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: $IMAGE
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      set -e
      cat /etc/resolv.conf
      for name in echo echo.$NS echo.$NS.svc echo.$NS.svc.cluster.local; do
        echo "\$name -> \$(getent hosts \$name | awk '{print \$1}'): \$(curl -fsS -m 5 http://\$name/)"
      done
      sa=/var/run/secrets/kubernetes.io/serviceaccount
      curl -fsS -m 5 --cacert \$sa/ca.crt -H "Authorization: Bearer \$(cat \$sa/token)" \
        https://kubernetes.default.svc/api | tr -d ' \n'; echo
      echo CLIENT-OK
EOF
deadline=$((SECONDS + 90))
while :; do
  phase=$(kubectl -n "$NS" get pod client -o jsonpath='{.status.phase}')
  case "$phase" in Succeeded | Failed) break ;; esac
  [ "$SECONDS" -lt "$deadline" ] || fail "client pod still $phase after 90s"
  sleep 0.5
done
logs=$(kubectl -n "$NS" logs client) || fail "kubectl logs client"
printf '%s\n' "$logs" | sed 's/^/  client| /' >&2
[ "$phase" = Succeeded ] || fail "client pod $phase"
grep -q '^CLIENT-OK$' <<<"$logs" || fail "client did not finish"
grep -q '"versions":\["v1"\]' <<<"$logs" || fail "API server not reached through the kubernetes Service"
[ "$(grep -c 'hello from echo-' <<<"$logs")" -eq 4 ] || fail "echo Service not reached by all four names"
kubectl -n "$NS" logs deployment/echo >/dev/null || fail "kubectl logs deployment/echo"
say "DNS, Service, API server via Service with the SA token, kubectl logs: ok"

# --- 3. deletes end with the pod gone ------------------------------------------------------------------------
gone_within() {
  # gone_within POD...: every named pod disappears within DELETE_TIMEOUT seconds.
  local deadline=$((SECONDS + DELETE_TIMEOUT)) p
  for p in "$@"; do
    while kubectl -n "$NS" get pod "$p" >/dev/null 2>&1; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        kubectl -n "$NS" get pod "$p" -o jsonpath='{.status.containerStatuses}' >&2 || true
        echo >&2
        fail "pod $p still there ${DELETE_TIMEOUT}s after its delete"
      fi
      sleep 0.5
    done
  done
}
for round in 1 2 3; do
  pod=$(kubectl -n "$NS" get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
  start=$SECONDS
  kubectl -n "$NS" delete pod "$pod" --wait=false >/dev/null
  gone_within "$pod"
  say "delete $round: $pod gone after $((SECONDS - start))s"
  kubectl -n "$NS" rollout status deployment/echo --timeout=60s >/dev/null 2>&1 || fail "echo not ready again"
done
mapfile -t old < <(kubectl -n "$NS" get pods -l app=echo -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
start=$SECONDS
kubectl -n "$NS" set env deployment/echo ROLLOUT="$start" >/dev/null
kubectl -n "$NS" rollout status deployment/echo --timeout=120s >/dev/null 2>&1 || fail "rollout did not finish"
gone_within "${old[@]}"
say "rollout: new pods ready and the ${#old[@]} old ones gone after $((SECONDS - start))s"

# --- 4. the namespace ------------------------------------------------------------------------------------------
start=$SECONDS
kubectl delete namespace "$NS" --timeout=120s >/dev/null || fail "namespace $NS not deleted"
say "namespace deleted in $((SECONDS - start))s; all checks passed"
trap - EXIT
