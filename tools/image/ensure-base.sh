#!/usr/bin/env bash
# The base image to build the project's images FROM, on machines with or without a registry.
#
#   tools/image/ensure-base.sh [python|debian]      (default: python)
#   tools/image/ensure-base.sh recipe               the recipe label the local Python base carries
#
# Prints one line on stdout: the image reference to use (--build-arg PYTHON_IMAGE=<it>, or
# FROM <it>); progress goes to stderr. Exit status non-zero when no base can be had.
#
#   python  $PYTHON_IMAGE (default python:3.11-slim-bookworm) when it is present locally or can be
#           pulled; otherwise the local $LOCAL_PYTHON_IMAGE (default
#           fleet-local/python:3.11-bookworm): the Debian base below plus Debian's python3
#           python3-venv python3-pip python-is-python3 (tools/image/base/python.Dockerfile).
#   debian  $DEBIAN_IMAGE (default debian:bookworm-slim) when present or pullable; otherwise the
#           local $LOCAL_DEBIAN_IMAGE (default fleet-local/debian:bookworm): `debootstrap
#           --variant=minbase bookworm` from $DEBIAN_MIRROR (default http://deb.debian.org/debian),
#           with bookworm-updates and bookworm-security in its sources, imported with `docker import`.
#
# Cache (FLEET_CACHE_DIR, default ~/.cache/fleet-external-server): images/debian-bookworm-rootfs-*.tar
# (the debootstrap tree) and images/python-3.11-bookworm-*.image.tar (`docker save` of the local
# Python base), so a fresh Docker engine gets both back in seconds (docker import / docker load).
# Delete them to rebuild from Debian. The local images and tarballs carry the recipe they were made
# with (RECIPE below); another recipe's are rebuilt. FLEET_IMAGE_PULL=0 skips the pull attempt. Building the local
# base needs root (debootstrap; installed with apt when missing) and a running engine
# (tools/docker/engine.sh ensure).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FLEET_CACHE_DIR:-$HOME/.cache/fleet-external-server}
IMAGES=$CACHE/images
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-debian:bookworm-slim}
LOCAL_PYTHON_IMAGE=${LOCAL_PYTHON_IMAGE:-fleet-local/python:3.11-bookworm}
LOCAL_DEBIAN_IMAGE=${LOCAL_DEBIAN_IMAGE:-fleet-local/debian:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Bumped when the recipe of the local bases changes: a local image or cached tarball of another
# recipe is rebuilt (the images carry it as the label io.fleet-external-server.recipe).
RECIPE=2-$(sha256sum <"$HERE/base/python.Dockerfile" | cut -c1-12)
ROOTFS_TAR=$IMAGES/debian-bookworm-rootfs-${RECIPE%%-*}.tar
PYTHON_TAR=$IMAGES/python-3.11-bookworm-$RECIPE.image.tar
LABEL=io.fleet-external-server.recipe

say() { echo "ensure-base: $*" >&2; }
present() { docker image inspect "$1" >/dev/null 2>&1; }
# Whether a local base is present and of this recipe ($2: the recipe to expect).
current() {
    [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)" = "$2" ]
}

pullable() {
    [ "${FLEET_IMAGE_PULL:-1}" != 0 ] || return 1
    say "$1 is not present locally; trying to pull it"
    if timeout 300 docker pull -q "$1" >/dev/null 2>"$IMAGES/pull.err"; then return 0; fi
    say "cannot pull $1: $(tail -n 1 "$IMAGES/pull.err")"
    return 1
}

# A public image when it is there or can be pulled; otherwise nothing (status 1).
public_or_nothing() {
    if present "$1" || pullable "$1"; then echo "$1"; return 0; fi
    return 1
}

debootstrap_rootfs() {
    local root tmp
    [ "$(id -u)" = 0 ] || { say "building a Debian base with debootstrap needs root"; return 1; }
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap (apt)"
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends debootstrap >&2
    fi
    root=$(mktemp -d "$IMAGES/rootfs.XXXXXX")
    tmp=$ROOTFS_TAR.tmp.$$
    say "debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR (about a minute)"
    if ! debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$IMAGES/debootstrap.log" 2>&1; then
        say "debootstrap failed; the end of $IMAGES/debootstrap.log:"
        tail -n 20 "$IMAGES/debootstrap.log" >&2
        rm -rf "$root"
        return 1
    fi
    cat >"$root/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY_MIRROR bookworm-security main
SOURCES
    # As in Debian's official images: no package cache left behind by apt in image layers, and (slim)
    # no man pages, docs or translations, now and in later installs.
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    cat >"$root/etc/dpkg/dpkg.cfg.d/01-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
SLIM
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
        "$root"/var/log/* "$root"/debootstrap "$root"/usr/share/locale/* "$root"/usr/share/man/* \
        "$root"/usr/share/info/* "$root"/usr/share/lintian/*
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    # The build host's resolver is not the containers' (docker supplies /etc/resolv.conf).
    : >"$root/etc/resolv.conf"
    tar --numeric-owner -C "$root" -cf "$tmp" .
    mv -f "$tmp" "$ROOTFS_TAR"
    rm -rf "$root"
}

local_debian() {
    if current "$LOCAL_DEBIAN_IMAGE" "${RECIPE%%-*}"; then echo "$LOCAL_DEBIAN_IMAGE"; return 0; fi
    if [ ! -s "$ROOTFS_TAR" ]; then debootstrap_rootfs; else say "using the cached $ROOTFS_TAR"; fi
    say "importing $LOCAL_DEBIAN_IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL $LABEL=${RECIPE%%-*}" \
        "$ROOTFS_TAR" "$LOCAL_DEBIAN_IMAGE" >/dev/null
    echo "$LOCAL_DEBIAN_IMAGE"
}

local_python() {
    local debian tmp
    if current "$LOCAL_PYTHON_IMAGE" "$RECIPE"; then echo "$LOCAL_PYTHON_IMAGE"; return 0; fi
    if [ -s "$PYTHON_TAR" ]; then
        say "loading the cached $PYTHON_TAR"
        if docker load -q -i "$PYTHON_TAR" >/dev/null && current "$LOCAL_PYTHON_IMAGE" "$RECIPE"; then
            echo "$LOCAL_PYTHON_IMAGE"
            return 0
        fi
        say "the cached image did not load as $LOCAL_PYTHON_IMAGE; rebuilding it"
    fi
    debian=$(local_debian)
    say "building $LOCAL_PYTHON_IMAGE from $debian and Debian's python3"
    # No build context: the Dockerfile alone, on stdin.
    docker build -q --build-arg DEBIAN_IMAGE="$debian" --label "$LABEL=$RECIPE" -t "$LOCAL_PYTHON_IMAGE" - \
        <"$HERE/base/python.Dockerfile" >/dev/null
    tmp=$PYTHON_TAR.tmp.$$
    docker save -o "$tmp" "$LOCAL_PYTHON_IMAGE"
    mv -f "$tmp" "$PYTHON_TAR"
    echo "$LOCAL_PYTHON_IMAGE"
}

main() {
    if [ "${1:-}" = recipe ]; then echo "$RECIPE"; return 0; fi
    command -v docker >/dev/null 2>&1 || { say "docker is not installed (tools/docker/engine.sh ensure)"; return 1; }
    docker info >/dev/null 2>&1 || { say "no Docker daemon answers (tools/docker/engine.sh ensure)"; return 1; }
    mkdir -p "$IMAGES"
    # One builder at a time: the e2e runner and make image may ask together.
    exec 8>"$IMAGES/.lock"
    flock -w 900 8 || { say "another ensure-base.sh holds $IMAGES/.lock for 15 minutes"; return 1; }
    case "${1:-python}" in
        python) public_or_nothing "$PYTHON_IMAGE" || local_python ;;
        debian) public_or_nothing "$DEBIAN_IMAGE" || local_debian ;;
        *)
            echo "usage: $0 [python|debian|recipe]" >&2
            return 2
            ;;
    esac
}

main "$@"
