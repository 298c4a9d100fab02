#!/usr/bin/env bash
# Repeat the Dockerfile's build steps on this machine, for where no container engine runs.
#
#   tools/image_emulation.sh [WORKDIR]
#
# Stage by stage (see Dockerfile):
#   modules   tools/image/build-modules.sh WORKDIR/modules tools/image/extra-modules  (same script)
#   wheel     the files the wheel stage COPYs, copied to WORKDIR/src, then `pip wheel --no-deps`
#   server    a fresh venv with the wheel alone (no extras): `external-server --help`,
#             `python -m external_server.simulator --help`, kopf must NOT be importable, each module
#             loads and reports its module number, and the server starts on a config that names
#             the modules by absolute path and answers /healthz (loopback only, no broker needed)
#   operator  a fresh venv with the wheel's `operator` extra: `external-server-operator --help`
#
# The venvs install the wheel's dependencies from PyPI at the versions pinned in
# tools/image/constraints.txt, as the image's wheelhouse does (pip's cache makes repeated runs fast).
# WORKDIR defaults to a new temporary directory, deleted at exit unless KEEP_WORKDIR=1.
# PYTHON (default: the project's .venv python, else python3.11/python3) is the interpreter the
# venvs are made from; the image uses Python 3.11. Prints "image-emulation: OK" at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "image-emulation: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

if [ -z "${PYTHON:-}" ]; then
  for candidate in "$ROOT/.venv/bin/python" python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -n "${PYTHON:-}" ] || fail "no Python found"

if [ $# -ge 1 ]; then
  W=$1
  OWN_WORKDIR=0
  mkdir -p "$W"
else
  W=$(mktemp -d "${TMPDIR:-/tmp}/image-emulation.XXXXXX")
  OWN_WORKDIR=1
fi
W=$(cd "$W" && pwd)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$OWN_WORKDIR" = 1 ] && [ "${KEEP_WORKDIR:-0}" != 1 ]; then rm -rf "$W"; fi
}
trap cleanup EXIT

PIP_FLAGS=(--disable-pip-version-check --quiet)
# The image installs exactly these versions (from its wheelhouse); so do the venvs here.
CONSTRAINTS=$ROOT/tools/image/constraints.txt

# --- modules stage ---
say "stage modules"
rm -rf "$W/modules"
"$ROOT/tools/image/build-modules.sh" "$W/modules" "$ROOT/tools/image/extra-modules" >"$W/modules.list"
MODULES=$(tr '\n' ' ' <"$W/modules.list")
say "modules: $MODULES"

# --- wheel stage: only what the Dockerfile COPYs ---
say "stage wheel"
rm -rf "$W/src" "$W/wheels"
mkdir -p "$W/src"
cp "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT/README.md" "$W/src/"
for d in server operator; do
  # COPY server/ server/ minus what .dockerignore excludes (caches, egg-info, in-place builds).
  (cd "$ROOT" && tar --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' --exclude='*.so' -cf - "$d") |
    (cd "$W/src" && tar -xf -)
done
"$PYTHON" -m pip wheel "${PIP_FLAGS[@]}" --no-deps --wheel-dir "$W/wheels" "$W/src" >&2
WHEEL=$(ls "$W"/wheels/fleet_external_server-*.whl)
say "wheel: $(basename "$WHEEL")"

# --- server stage ---
say "stage server"
rm -rf "$W/server-venv"
"$PYTHON" -m venv "$W/server-venv"
"$W/server-venv/bin/pip" install "${PIP_FLAGS[@]}" --constraint "$CONSTRAINTS" "$WHEEL" >&2
SPY="$W/server-venv/bin/python"
"$W/server-venv/bin/external-server" --help >"$W/server-help.txt" || fail "external-server --help"
grep -q -- "--http-port" "$W/server-help.txt" || fail "external-server --help does not list --http-port"
"$SPY" -m external_server.simulator --help >/dev/null || fail "python -m external_server.simulator --help"
if "$SPY" -c "import kopf" 2>/dev/null; then fail "kopf is installed in the server image"; fi

"$SPY" - "$W/modules" <<'PY' || fail "a module does not load"
import ctypes
import pathlib
import sys

for lib in sorted(pathlib.Path(sys.argv[1]).glob("*.so")):
    dll = ctypes.CDLL(str(lib))
    dll.get_module_number.restype = ctypes.c_int
    print(f"image-emulation: {lib.name}: module {dll.get_module_number()}", file=sys.stderr)
PY

# The server from the installed wheel, modules by absolute path, HTTP on loopback, broker absent.
HTTP_PORT=$("$SPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BROKER_PORT=$("$SPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SPY" - "$W/config.json" "$W/modules/libexample.so" "$BROKER_PORT" <<'PY'
import json
import sys

path, library, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = {
    "company_name": "emulation",
    "external_communication": {"protocol": "MQTT", "server_address": "127.0.0.1", "server_port": port, "timeout_ms": 30000},
    "timeout": 30,
    "send_invalid_command": False,
    "sleep_duration_after_connection_refused": 0.5,
    "common_modules": {"1000": {"lib_path": library, "config": {}, "timeout_ms": 1000}},
    "cars": {"car_a": {}},
    "logging": {"console": {"level": "INFO", "use": True}, "file": {"level": "INFO", "use": False, "path": ""}},
}
with open(path, "w") as f:
    json.dump(config, f)
PY
(cd "$W" && exec "$W/server-venv/bin/external-server" -c "$W/config.json" --http-host 127.0.0.1 \
  --http-port "$HTTP_PORT" >"$W/server.log" 2>&1) &
SERVER_PID=$!
healthy=""
for _ in $(seq 1 100); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$W/server.log" >&2; fail "the server exited"; fi
  if "$SPY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/healthz', timeout=1)" \
      2>/dev/null; then
    healthy=1; break
  fi
  sleep 0.1
done
[ -n "$healthy" ] || { cat "$W/server.log" >&2; fail "the server's /healthz did not answer"; }
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "the server did not stop cleanly on SIGTERM (exit $?)"
SERVER_PID=""
say "server /healthz answered, stopped cleanly"

# --- operator stage ---
say "stage operator"
rm -rf "$W/operator-venv"
"$PYTHON" -m venv "$W/operator-venv"
"$W/operator-venv/bin/pip" install "${PIP_FLAGS[@]}" --constraint "$CONSTRAINTS" "${WHEEL}[operator]" >&2
"$W/operator-venv/bin/external-server-operator" --help >"$W/operator-help.txt" ||
  fail "external-server-operator --help"
grep -q -- "--liveness-port" "$W/operator-help.txt" || fail "operator --help does not list --liveness-port"
"$W/operator-venv/bin/python" -m external_server_operator --help >/dev/null ||
  fail "python -m external_server_operator --help"

say "OK"
