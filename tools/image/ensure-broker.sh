#!/usr/bin/env bash
# The development broker image for the chart (values devBroker.image), on machines with or without
# a registry.
#
#   tools/image/ensure-broker.sh
#
# Prints one line on stdout: the image reference to use (repository:tag; give the chart
# --set devBroker.image.repository=<before the last colon> --set devBroker.image.tag=<after it>).
# $BROKER_IMAGE (default eclipse-mosquitto:2) when it is present or can be pulled; otherwise
# $LOCAL_BROKER_IMAGE (default fleet-local/mosquitto:2), built from Debian's mosquitto on the local
# Debian base (tools/image/mosquitto/Dockerfile, tools/image/ensure-base.sh debian). Progress on
# stderr. FLEET_IMAGE_PULL=0 skips the pull attempt. The local image is rebuilt when its Dockerfile
# or the Debian base changed (a label records their digest).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BROKER_IMAGE=${BROKER_IMAGE:-eclipse-mosquitto:2}
LOCAL_BROKER_IMAGE=${LOCAL_BROKER_IMAGE:-fleet-local/mosquitto:2}

say() { echo "ensure-broker: $*" >&2; }
present() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null 2>&1 || { say "docker is not installed (tools/docker/engine.sh ensure)"; exit 1; }
docker info >/dev/null 2>&1 || { say "no Docker daemon answers (tools/docker/engine.sh ensure)"; exit 1; }

if present "$BROKER_IMAGE"; then echo "$BROKER_IMAGE"; exit 0; fi
if [ "${FLEET_IMAGE_PULL:-1}" != 0 ]; then
    say "$BROKER_IMAGE is not present locally; trying to pull it"
    if err=$(timeout 300 docker pull -q "$BROKER_IMAGE" 2>&1 >/dev/null); then
        echo "$BROKER_IMAGE"
        exit 0
    fi
    say "cannot pull $BROKER_IMAGE: ${err##*$'\n'}"
fi
# The local image is rebuilt when tools/image/mosquitto/Dockerfile or the Debian base changed since
# it was built.
debian=$("$HERE/ensure-base.sh" debian)
recipe=$({ cat "$HERE/mosquitto/Dockerfile"; docker image inspect -f '{{.Id}}' "$debian"; } | sha256sum | cut -c1-16)
built=$(docker image inspect -f '{{index .Config.Labels "io.fleet-external-server.recipe"}}' \
    "$LOCAL_BROKER_IMAGE" 2>/dev/null || true)
if [ "$built" = "$recipe" ]; then echo "$LOCAL_BROKER_IMAGE"; exit 0; fi
say "building $LOCAL_BROKER_IMAGE from $debian and Debian's mosquitto"
docker build -q --build-arg DEBIAN_IMAGE="$debian" --label "io.fleet-external-server.recipe=$recipe" \
    -t "$LOCAL_BROKER_IMAGE" - <"$HERE/mosquitto/Dockerfile" >/dev/null
echo "$LOCAL_BROKER_IMAGE"
