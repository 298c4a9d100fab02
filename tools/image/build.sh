#!/usr/bin/env bash
# Build the server and operator images (the Dockerfile's targets) — what `make image` runs.
#
#   tools/image/build.sh [SERVER_TAG [OPERATOR_TAG]]
#       defaults: fleet-external-server:$VERSION fleet-external-server-operator:$VERSION
#
# Environment:
#   PYTHON_IMAGE  the base (default python:3.11-slim-bookworm); when it is neither present nor
#                 pullable, tools/image/ensure-base.sh builds a local one from Debian's packages
#   EXTRA_CA      a PEM file or a directory of *.crt/*.pem the build trusts for pip and apt (a
#                 TLS-intercepting proxy's CA); staged in tools/image/.build-ca/<digest>/ (git-ignored,
#                 removed by `make clean`) and used by the build stages only, not kept in the images.
#                 Unset: tools/image/extra-ca/ (empty but for its README unless you filled it)
#   VERSION       the images' version label (default: pyproject.toml's)
#
# docker's build output goes to stderr; stdout gets the two image references, one a line.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)}
SERVER_TAG=${1:-fleet-external-server:$VERSION}
OPERATOR_TAG=${2:-fleet-external-server-operator:$VERSION}

say() { echo "make image: $*" >&2; }

if ! command -v docker >/dev/null 2>&1; then
    say "docker is not installed. On Debian, \`make engine\` (tools/docker/engine.sh ensure, root)" \
        "installs and starts one; tools/image_emulation.sh checks the build steps without it."
    exit 1
fi
if ! docker info >/dev/null 2>&1; then
    say "no Docker daemon answers. On Debian, \`make engine\` (tools/docker/engine.sh ensure, root)" \
        "starts one."
    exit 1
fi

ca_dir=tools/image/extra-ca
if [ -n "${EXTRA_CA:-}" ]; then
    # Staged under a name made of the certificates' digest: the same CAs give the same build argument
    # (an ARG's value is part of the cache key of every later RUN), so warm builds stay cached.
    files=()
    if [ -d "$EXTRA_CA" ]; then
        for f in "$EXTRA_CA"/*.crt "$EXTRA_CA"/*.pem; do [ -f "$f" ] && files+=("$f"); done
    elif [ -f "$EXTRA_CA" ]; then
        files=("$EXTRA_CA")
    else
        say "EXTRA_CA=$EXTRA_CA: no such file or directory"
        exit 1
    fi
    if [ "${#files[@]}" = 0 ] || ! grep -qs 'BEGIN CERTIFICATE' "${files[@]}"; then
        say "EXTRA_CA=$EXTRA_CA holds no PEM certificate (*.crt or *.pem)"
        exit 1
    fi
    digest=$(cat "${files[@]}" | sha256sum | cut -c1-16)
    ca_dir=tools/image/.build-ca/$digest
    if [ ! -d "$ca_dir" ]; then
        tmp=$(mktemp -d tools/image/.build-ca.XXXXXX)
        i=0
        for f in "${files[@]}"; do
            i=$((i + 1))
            name=$(basename "$f")
            cp "$f" "$tmp/$i-${name%.*}.crt"
        done
        chmod 0755 "$tmp"
        chmod 0644 "$tmp"/*
        mkdir -p tools/image/.build-ca
        mv -T "$tmp" "$ca_dir" 2>/dev/null || rm -rf "$tmp" # a concurrent build staged it first
    fi
    say "trusting the certificates of $EXTRA_CA in the build stages (not in the images)"
fi

base=$(PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm} tools/image/ensure-base.sh python)

build_args=(--build-arg "PYTHON_IMAGE=$base" --build-arg "EXTRA_CA_DIR=$ca_dir" --build-arg "VERSION=$VERSION")
say "base image: $base"
for pair in "server $SERVER_TAG" "operator $OPERATOR_TAG"; do
    read -r target tag <<<"$pair"
    say "docker build --target $target -t $tag"
    if ! docker build "${build_args[@]}" --target "$target" -t "$tag" . >&2; then
        say "building $tag failed. Behind a TLS-intercepting proxy (pip: CERTIFICATE_VERIFY_FAILED)" \
            "give the build its CA: make image EXTRA_CA=/path/ca.pem"
        exit 1
    fi
done
echo "$SERVER_TAG"
echo "$OPERATOR_TAG"
