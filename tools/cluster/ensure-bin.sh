#!/usr/bin/env bash
# Print the directory holding the Kubernetes v1.20.2 binaries of the local test cluster
# (tools/cluster/up.sh): etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
# and kube-proxy, building the missing ones first.
#
#   BIN=$(tools/cluster/ensure-bin.sh)
#
# They are built from Debian's `kubernetes` source package by tools/envtest/build.sh (the same
# recipe as the cluster tests' API server: GOPATH mode, CGO_ENABLED=0, static binaries) and cached
# in ${XDG_CACHE_HOME:-~/.cache}/fleet-external-server/envtest/1.20.2/, next to the envtest
# binaries, so one build serves both: on a cold machine, calling this script (or
# `FLEET_ENVTEST_NODE=1 tools/envtest/ensure.sh`) first builds all five components from one
# unpacked source tree and one Go cache (about 8 minutes on 2 cores, apt included). When only the
# node binaries are missing (the envtest ones were built earlier and the work tree was deleted),
# the sources are fetched again and the node binaries alone are built.
#
# Environment: as tools/envtest/ensure.sh (FLEET_ENVTEST_DIR, FLEET_ENVTEST_KEEP_WORK,
# FLEET_ENVTEST_KEEP_GOCACHE, FLEET_ENVTEST_GOCACHE_MAX_MB). Progress on stderr, the directory on
# stdout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLEET_ENVTEST_NODE=1 exec "$HERE/../envtest/ensure.sh"
