#!/bin/sh
# trust-extra-ca DIR: add the PEM certificates in DIR (*.crt, *.pem; a file may hold several) to the
# system trust store of a Debian-based build stage, so apt, pip (PIP_CERT) and Python's ssl
# (SSL_CERT_FILE) trust them. Nothing to do when DIR holds none. Used by the Dockerfile's build
# stages only; see the Dockerfile's header for why the final images do not carry them.
set -eu
dir=${1:?usage: trust-extra-ca DIR}
bundle=/etc/ssl/certs/ca-certificates.crt
found=0
for f in "$dir"/*.crt "$dir"/*.pem; do
    [ -f "$f" ] || continue
    grep -q 'BEGIN CERTIFICATE' "$f" || { echo "trust-extra-ca: $f holds no PEM certificate" >&2; exit 1; }
    mkdir -p /usr/local/share/ca-certificates/extra
    name=$(basename "$f")
    cp "$f" "/usr/local/share/ca-certificates/extra/${name%.*}.crt"
    found=$((found + 1))
done
[ "$found" -gt 0 ] || exit 0
if command -v update-ca-certificates >/dev/null 2>&1; then
    update-ca-certificates >/dev/null
else
    # No ca-certificates package: the extra certificates alone make the bundle.
    mkdir -p "$(dirname "$bundle")"
    cat /usr/local/share/ca-certificates/extra/*.crt >>"$bundle"
fi
echo "trust-extra-ca: $found file(s) from $dir added to $bundle" >&2
