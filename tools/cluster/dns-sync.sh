#!/usr/bin/env bash
# Keep the cluster DNS of tools/cluster/up.sh in step with the Services: a hosts file for dnsmasq
# (`--hostsdir`, which re-reads changed files by itself) with one line per name:
#
#   <clusterIP>       <svc>.<ns>.svc.<domain>     for every Service with a ClusterIP
#   <endpoint IP>...  <svc>.<ns>.svc.<domain>     for headless Services (clusterIP None)
#
# Pods ask with the search path the kubelet gives them (<ns>.svc.<domain>, svc.<domain>,
# <domain>), so `svc`, `svc.ns` and `svc.ns.svc` resolve too. ExternalName Services are not served.
#
#   dns-sync.sh KUBECONFIG HOSTS_FILE [DOMAIN]
#
# Polls the API server every FLEET_CLUSTER_DNS_INTERVAL seconds (default 1) with one `kubectl get`
# and replaces HOSTS_FILE atomically only when its content changes. Runs until killed; up.sh starts
# it in its own process group and down.sh ends that group. Errors (API server not there yet) are
# logged to stderr and retried.
set -euo pipefail
KUBECONFIG_FILE=${1:?usage: dns-sync.sh KUBECONFIG HOSTS_FILE [DOMAIN]}
HOSTS=${2:?usage: dns-sync.sh KUBECONFIG HOSTS_FILE [DOMAIN]}
DOMAIN=${3:-cluster.local}
INTERVAL=${FLEET_CLUSTER_DNS_INTERVAL:-1}

# kind, namespace, name, clusterIP (Services), endpoint IPs (Endpoints), tab-separated.
TEMPLATE='{range .items[*]}{.kind}{"\t"}{.metadata.namespace}{"\t"}{.metadata.name}{"\t"}{.spec.clusterIP}{"\t"}{.subsets[*].addresses[*].ip}{"\n"}{end}'

render() {
  awk -F'\t' -v domain="$DOMAIN" '
    $1 == "Service" && $4 != "" && $4 != "None" { print $4 "\t" $3 "." $2 ".svc." domain; next }
    $1 == "Service" && $4 == "None" { headless[$2 "/" $3] = 1; next }
    $1 == "Endpoints" { eps[$2 "/" $3] = $5 }
    END {
      for (key in headless) {
        n = split(eps[key], ips, " ")
        split(key, parts, "/")
        for (i = 1; i <= n; i++) print ips[i] "\t" parts[2] "." parts[1] ".svc." domain
      }
    }' | LC_ALL=C sort
}

# dnsmasq skips dot files in its hosts dir, so the new file is written beside the old one.
tmp="$(dirname "$HOSTS")/.$(basename "$HOSTS").tmp"
while :; do
  if listing=$(kubectl --kubeconfig "$KUBECONFIG_FILE" get services,endpoints --all-namespaces \
                 --request-timeout=10s -o jsonpath="$TEMPLATE"); then
    printf '%s\n' "$listing" | render >"$tmp"
    if cmp -s "$tmp" "$HOSTS"; then
      rm -f "$tmp"
    else
      chmod 0644 "$tmp"
      mv -f "$tmp" "$HOSTS"
      echo "dns-sync: $(date -u +%H:%M:%S) $(wc -l <"$HOSTS") names"
    fi
  fi
  sleep "$INTERVAL"
done
