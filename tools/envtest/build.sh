#!/usr/bin/env bash
# Build the "envtest" binaries the cluster tests need -- kube-apiserver and
# kube-controller-manager v1.20.2, plus etcd -- offline from Debian packages, and install
# them into ${XDG_CACHE_HOME:-$HOME/.cache}/fleet-external-server/envtest/1.20.2/.
#
# Why from source: there is no container engine (kind/k3s) and no upstream binary
# download on the build machines; the only kube-apiserver source the Debian mirror carries
# is bookworm's `kubernetes` source package (upstream 1.20.2 with vendor/). It builds with
# Debian's golang-go (1.19) after these adjustments:
#   * GOPATH mode (module mode with go1.19 insists on go.mod updates under -mod=vendor);
#   * pkg/generated/openapi is not shipped: generate it with the vendored openapi-gen;
#   * the vendored reflect2/json-iterator crash on go >= 1.18: swap in Debian's versions;
#   * stamp the version into component-base/version and client-go/pkg/version.
# and with the project's patches beside this script (COMPONENT-*.patch, applied with patch -p1 to
# the whole tree; each built COMPONENT gets DEST/.COMPONENT.patches naming the patches' sha256, so
# ensure.sh rebuilds a component whose patches changed):
#   * kubelet-sandbox-cleanup.patch: a deleted pod's stopped sandbox is removed as soon as it
#     dies, not up to a minute later by the container GC (pods otherwise stay Terminating for up
#     to a minute, with ContainerStatusUnknown/exit 137, in about half of all deletes).
#
# Usage: tools/envtest/build.sh [COMPONENT...]   (normally called by tools/envtest/ensure.sh)
#        COMPONENTs are cmd/ names of the source tree, default: kube-apiserver
#        kube-controller-manager; tools/cluster/ensure-bin.sh adds kube-scheduler, kubelet and
#        kube-proxy (all built with CGO_ENABLED=0, so they are static). etcd is always installed.
# Env:   FLEET_ENVTEST_DIR   install dir (default as above)
#        FLEET_ENVTEST_WORK  scratch dir (default <install dir>/../work-1.20.2)
#        FLEET_ENVTEST_NO_APT=1  do not touch apt (prerequisites already installed)
# All progress goes to stderr; nothing is printed on stdout.
set -euo pipefail
exec 3>&1 1>&2

K8S_VERSION=1.20.2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=patches.sh
. "$HERE/patches.sh"
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/fleet-external-server/envtest
DEST=${FLEET_ENVTEST_DIR:-$CACHE_ROOT/$K8S_VERSION}
WORK=${FLEET_ENVTEST_WORK:-$CACHE_ROOT/work-$K8S_VERSION}
COMPONENTS=("$@")
if [ ${#COMPONENTS[@]} -eq 0 ]; then COMPONENTS=(kube-apiserver kube-controller-manager); fi
for C in "${COMPONENTS[@]}"; do
  case "$C" in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) ;;
    *) echo "envtest-build: unknown component $C" >&2; exit 2 ;;
  esac
done

now() { date +%s; }
log() { echo "envtest-build: $*"; }
T0=$(now)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# --- 0. prerequisites from apt ----------------------------------------------------------
have_kubernetes_source() {
  apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version: .*1\.20'
}
ensure_deb_src() {
  # A deb-src entry for bookworm main on the mirror apt already uses.
  have_kubernetes_source && return 0
  if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    local mirror
    mirror=$(grep -rhoE '^URIs: *[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 \
             | sed -E 's/^URIs: *//') || true
    if [ -z "$mirror" ]; then
      mirror=$(grep -hoE '^deb +(\[[^]]*\] +)?[^ ]+/debian/? +bookworm ' /etc/apt/sources.list 2>/dev/null \
               | head -n1 | awk '{print $(NF-1)}') || true
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    log "adding deb-src for bookworm main on $mirror"
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
      "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg \
      | $SUDO tee /etc/apt/sources.list.d/fleet-external-server-src.sources >/dev/null
  fi
  $SUDO apt-get update -qq
  have_kubernetes_source || { log "no kubernetes 1.20 source package visible to apt"; exit 1; }
}

if [ "${FLEET_ENVTEST_NO_APT:-0}" != 1 ]; then
  missing=()
  command -v go >/dev/null || missing+=(golang-go)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  command -v etcd >/dev/null || missing+=(etcd-server)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  ensure_deb_src
fi
command -v go >/dev/null || { log "go not found (apt-get install golang-go)"; exit 1; }
command -v etcd >/dev/null || { log "etcd not found (apt-get install etcd-server)"; exit 1; }
log "go: $(go version)"

mkdir -p "$WORK"/{src,debs,bin,gopath/src/k8s.io} "$DEST"

# --- 1. source + reflect2/json-iterator replacement ----------------------------------------
S=$WORK/src/kubernetes-$K8S_VERSION
TREE_ID=$(patches_id all)
if [ ! -f "$S/.fleet-patched" ] || [ "$(cat "$S/.fleet-patched")" != "$TREE_ID" ]; then
  rm -rf "$S" "$WORK"/src/kubernetes_* "$WORK"/debs/*
  (cd "$WORK/src" && apt-get source --download-only -qq kubernetes >/dev/null)
  dscs=("$WORK"/src/kubernetes_*.dsc)
  dsc=${dscs[0]}
  case "$dsc" in
    *"$K8S_VERSION"*) ;;
    *) log "unexpected kubernetes source package: $dsc (want $K8S_VERSION)"; exit 1 ;;
  esac
  dpkg-source -x "$dsc" "$S" >/dev/null
  (cd "$WORK/debs" && apt-get download -qq golang-github-modern-go-reflect2-dev \
     golang-github-json-iterator-go-dev >/dev/null)
  for d in "$WORK"/debs/*.deb; do dpkg-deb -x "$d" "$WORK/debs/x"; done
  D=$WORK/debs/x/usr/share/gocode/src/github.com
  R=$S/vendor/github.com/modern-go/reflect2
  J=$S/vendor/github.com/json-iterator/go
  rm -f "$R"/*.go "$R"/*.s "$J"/*.go
  cp "$D"/modern-go/reflect2/*.go "$D"/modern-go/reflect2/*.s "$R"/
  cp "$D"/json-iterator/go/*.go "$J"/
  rm -f "$R"/*_test.go "$J"/*_test.go
  for p in $(patch_files all); do
    log "applying $(basename "$p")"
    patch -d "$S" -p1 --forward --quiet <"$p"
  done
  echo "$TREE_ID" >"$S/.fleet-patched"
fi
T1=$(now); log "source + patch: $((T1 - T0))s"

# --- 2. GOPATH mode ------------------------------------------------------------------------
export GO111MODULE=off GOPATH=$WORK/gopath GOPROXY=off GOFLAGS='' CGO_ENABLED=0 GOCACHE=$WORK/gocache
ln -sfn "$S" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# --- 3. openapi-gen --------------------------------------------------------------------------
OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$OPENAPI" ]; then
  go build -o "$WORK/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  # Every package carrying a +k8s:openapi-gen= tag, staging/ seen through vendor/.
  pkgs=$(find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \
           -type f -name '*.go' \
         | sed 's|^\./||' \
         | grep -v -e '^staging/src/k8s.io/code-generator/' -e '^staging/src/k8s.io/sample-apiserver/' \
         | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
         | xargs -n1 dirname | sed 's|^staging/src|vendor|' | LC_ALL=C sort -u \
         | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  "$WORK/bin/openapi-gen" -i "$pkgs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi_violations.report" 2>/dev/null
  if ! diff -q "$WORK/openapi_violations.report" api/api-rules/violation_exceptions.list >/dev/null; then
    log "warning: openapi-gen API rule report differs from upstream's exception list"
  fi
fi
T2=$(now); log "openapi-gen: $((T2 - T1))s"

# --- 4. build with the version stamped --------------------------------------------------------
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LDF="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
         k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $V.gitVersion=v$K8S_VERSION -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
  LDF="$LDF -X $V.gitCommit=debian-$K8S_VERSION -X $V.buildDate=$BUILD_DATE"
done
for C in "${COMPONENTS[@]}"; do
  Ts=$(now)
  go build -trimpath -ldflags "$LDF" -o "$WORK/bin/$C" "./cmd/$C"
  install -m 0755 "$WORK/bin/$C" "$DEST/$C.tmp" && mv -f "$DEST/$C.tmp" "$DEST/$C"
  patches_id "$C" >"$DEST/.$C.patches"
  log "built $C: $(($(now) - Ts))s, $(stat -c %s "$DEST/$C") bytes"
done
install -m 0755 "$(command -v etcd)" "$DEST/etcd.tmp" && mv -f "$DEST/etcd.tmp" "$DEST/etcd"

"$DEST/${COMPONENTS[0]}" --version
log "done in $(($(now) - T0))s -> $DEST (Go build cache: $(du -sh "$GOCACHE" | cut -f1))"
