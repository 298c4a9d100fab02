#!/usr/bin/env bash
# Build every module under lib/modules/ and collect the server's module directory.
#
#   tools/image/build-modules.sh OUT_DIR [EXTRA_DIR]
#
# Used by the Dockerfile's `modules` stage (OUT_DIR=/out/modules, later copied to
# /opt/external-server/modules/) and by tools/image_emulation.sh, so both run the same steps.
#
# - Every lib/modules/<name>/ that has a Makefile is built with `make -C lib/modules/<name> OUT=OUT_DIR`
#   (its default target must write its release lib*.so files into OUT). A module directory added
#   by a user is therefore compiled without any change here.
# - Every *.so directly inside EXTRA_DIR (prebuilt modules a user brings) is copied as is; a name
#   that a built module already uses is an error.
# - OUT_DIR must be new or empty: it becomes the image's module directory as it is.
# - FLEET_REQUIRE_REAL_PARTS defaults to 1 here: a module whose build dependencies are missing
#   fails the build instead of being skipped, so an image never silently lacks a module.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: build-modules.sh OUT_DIR [EXTRA_DIR]}
EXTRA=${2:-}
export FLEET_REQUIRE_REAL_PARTS=${FLEET_REQUIRE_REAL_PARTS:-1}

if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "build-modules: $OUT is not empty; give a new or empty directory" >&2
  exit 1
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
built=0
for makefile in "$ROOT"/lib/modules/*/Makefile; do
  [ -f "$makefile" ] || continue
  dir=$(dirname "$makefile")
  echo "build-modules: $(basename "$dir")" >&2
  make --no-print-directory -C "$dir" OUT="$OUT" >&2
  built=$((built + 1))
done
[ "$built" -gt 0 ] || { echo "build-modules: no lib/modules/*/Makefile found" >&2; exit 1; }

if [ -n "$EXTRA" ] && [ -d "$EXTRA" ]; then
  for so in "$EXTRA"/*.so; do
    [ -f "$so" ] || continue
    name=$(basename "$so")
    if [ -e "$OUT/$name" ]; then
      echo "build-modules: extra module $name collides with a module built from lib/modules/" >&2
      exit 1
    fi
    install -m 0644 "$so" "$OUT/$name"
    echo "build-modules: extra $name" >&2
  done
fi

chmod 0644 "$OUT"/*.so
ls -1 "$OUT"
