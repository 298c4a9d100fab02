# pre-delete hook of the external-server chart (templates/cleanup-hook.yaml): delete the release's
# ExternalServers and wait until the operator has removed its finalizer from each of them.
# Standard library only; runs in the operator image under the hook's ServiceAccount.
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

sa = os.environ.get("SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
host = os.environ["KUBERNETES_SERVICE_HOST"]
host = f"[{host}]" if ":" in host else host
base = f"https://{host}:{os.environ['KUBERNETES_SERVICE_PORT']}/apis/fleetprotocol.io/v1alpha1"
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
with open(f"{sa}/token") as f:
    token = f.read().strip()
targets = [tuple(t) for t in json.loads(os.environ["CLEANUP_TARGETS"])]
timeout = float(os.environ.get("CLEANUP_TIMEOUT_SECONDS", "120"))


def call(method, ns, name):
    url = f"{base}/namespaces/{ns}/externalservers/{name}"
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


for ns, name in targets:
    code = call("DELETE", ns, name)
    if code not in (200, 202, 404):
        sys.exit(f"cleanup: DELETE externalserver {ns}/{name}: HTTP {code}")
    print(f"cleanup: deleting externalserver {ns}/{name} (HTTP {code})", flush=True)

deadline = time.monotonic() + timeout
left = targets
while left:
    left = [(ns, name) for ns, name in left if call("GET", ns, name) != 404]
    if not left:
        break
    if time.monotonic() > deadline:
        names = ", ".join(f"{ns}/{name}" for ns, name in left)
        sys.exit(
            f"cleanup: still present after {timeout:.0f}s: {names}. Is the operator running? "
            "Without it nothing removes their finalizer; see the chart README (Uninstalling)."
        )
    time.sleep(1)
print("cleanup: all ExternalServers of the release are gone", flush=True)
