#!/usr/bin/env bash
# Install the LOWEST versions pyproject.toml allows for the direct dependencies into a throwaway
# venv and run the unit tests there, so a floor that no longer works fails CI instead of a user.
#
#   tools/ci/lowest-deps.sh [VENV_DIR]        (default: ~/.cache/fleet-external-server/lowest-venv)
#
# uv (from PyPI) does the lowest-direct resolution, which pip cannot.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/fleet-external-server/lowest-venv}
PYTHON=${PYTHON:-python3}
cd "$ROOT"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check uv
# A TLS-intercepting proxy's CA is trusted through the system bundle (pip uses it already).
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --native-tls --resolution lowest-direct \
  -e '.[dev,operator]'
echo "lowest-deps: $("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(aiomqtt|paho-mqtt|protobuf|pydantic|opentelemetry-sdk|opentelemetry-exporter-prometheus|prometheus-client|aiohttp|kopf|kubernetes)==' | tr '\n' ' ')"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit
