#!/usr/bin/env bash
# A Docker engine for this project's images, e2e suite and real-node tests, on a Debian machine.
#
#   tools/docker/engine.sh ensure   install Debian's docker.io if dockerd is missing, then start a
#                                   daemon unless one already answers `docker info`
#   tools/docker/engine.sh stop     stop the daemon this script started (by its PID file) and
#                                   nothing else
#   tools/docker/engine.sh status   say on stderr whether a daemon answers and who started it
#
# Nothing is printed on stdout; progress goes to stderr. Exit status 0 when a daemon answers.
#
# The daemon it starts:
#   - runs containers through a runc wrapper registered as the default runtime `fleet-runc`
#     (tools/docker/fleet-runc, copied to $CACHE/docker/bin/). Some machines refuse negative OOM
#     score adjustments (`echo -1 > /proc/self/oom_score_adj` fails); runc then fails with "can't
#     get final child's PID from pipe" for `docker run --oom-score-adj=-998` and for every pod
#     sandbox a kubelet creates (it asks for -998). The wrapper raises a negative
#     process.oomScoreAdj in the OCI bundle to 0 and execs the real runc. Elsewhere it changes nothing
#     that was not negative.
#   - uses the cgroupfs cgroup driver (no systemd here) and its own OOM score 0;
#   - logs to $CACHE/docker/dockerd.log, PID file $CACHE/docker/dockerd.pid.
#
# Environment: FLEET_CACHE_DIR (default ~/.cache/fleet-external-server), DOCKERD_EXTRA_ARGS (more
# dockerd flags, word-split), DOCKER_ENGINE_TIMEOUT (seconds to wait for the daemon, default 60).
# Root is needed to install and to start the daemon.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FLEET_CACHE_DIR:-$HOME/.cache/fleet-external-server}
DIR=$CACHE/docker
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
WRAPPER=$DIR/bin/fleet-runc
RUNTIME=fleet-runc
TIMEOUT=${DOCKER_ENGINE_TIMEOUT:-60}

say() { echo "engine.sh: $*" >&2; }

docker_cli() {
    # The client on PATH may be newer than Debian's daemon (API 1.41); the client negotiates the
    # API version down, so any docker on PATH works.
    if command -v docker >/dev/null 2>&1; then docker "$@"; else /usr/bin/docker "$@"; fi
}

answers() { docker_cli info >/dev/null 2>&1; }

our_pid() {
    # The PID in our PID file if that process is still a dockerd.
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = dockerd ] || return 1
    echo "$pid"
}

install_engine() {
    command -v dockerd >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || { say "dockerd is missing and installing docker.io needs root"; return 1; }
    command -v apt-get >/dev/null 2>&1 || { say "dockerd is missing and there is no apt-get"; return 1; }
    say "installing Debian's docker.io (apt-get update, then install)"
    # Another apt may hold the lock (other scripts install packages too): wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || say "apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends docker.io iptables >&2
    command -v dockerd >/dev/null 2>&1 || { say "docker.io installed but dockerd is not on PATH"; return 1; }
}

install_wrapper() {
    local real tmp
    real=${FLEET_REAL_RUNC:-}
    if [ -z "$real" ]; then
        for c in /usr/sbin/runc /usr/bin/runc "$(command -v runc 2>/dev/null || true)"; do
            if [ -n "$c" ] && [ -x "$c" ]; then real=$c; break; fi
        done
    fi
    [ -n "$real" ] || { say "no runc found (Debian's docker.io depends on runc)"; return 1; }
    mkdir -p "$DIR/bin"
    tmp=$(mktemp "$DIR/bin/.fleet-runc.XXXXXX")
    # Clamp only where negative scores are refused (probed in a throwaway subshell).
    local clamp=0
    if ! (echo -1 >/proc/self/oom_score_adj) 2>/dev/null; then clamp=1; fi
    sed -e "s|@REAL_RUNC@|$real|" -e "s|@CLAMP@|$clamp|" "$HERE/fleet-runc" >"$tmp"
    chmod 0755 "$tmp"
    if cmp -s "$tmp" "$WRAPPER"; then rm -f "$tmp"; else mv -f "$tmp" "$WRAPPER"; fi
}

start_daemon() {
    local pid waited=0
    [ "$(id -u)" = 0 ] || { say "starting dockerd needs root"; return 1; }
    mkdir -p "$DIR"
    # A stale PID file from a daemon that died would make dockerd refuse to start.
    if [ -e "$PIDFILE" ] && ! our_pid >/dev/null; then rm -f "$PIDFILE"; fi
    local oom_flag=()
    if dockerd --help 2>/dev/null | grep -q -- '--oom-score-adjust'; then oom_flag=(--oom-score-adjust=0); fi
    # shellcheck disable=SC2206
    local extra=(${DOCKERD_EXTRA_ARGS:-})
    say "starting dockerd (log: $LOG)"
    {
        echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) engine.sh starts dockerd"
    } >>"$LOG"
    setsid dockerd \
        --pidfile "$PIDFILE" \
        --add-runtime "$RUNTIME=$WRAPPER" \
        --default-runtime "$RUNTIME" \
        --exec-opt native.cgroupdriver=cgroupfs \
        "${oom_flag[@]}" \
        "${extra[@]}" \
        </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
    # Poll the daemon (observable state), bounded by TIMEOUT; stop early if it died.
    while ! answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "dockerd exited during start; the end of $LOG:"
            tail -n 20 "$LOG" >&2
            return 1
        fi
        if [ "$waited" -ge $((TIMEOUT * 5)) ]; then
            say "dockerd did not answer within ${TIMEOUT}s (pid $pid still running); see $LOG"
            return 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    say "dockerd answers (pid $pid, default runtime $RUNTIME)"
}

cmd_ensure() {
    mkdir -p "$DIR"
    # Fast path: the engine is installed and a daemon answers.
    if command -v dockerd >/dev/null 2>&1 && answers; then
        install_wrapper
        check_runtime
        return 0
    fi
    # One installer/starter at a time (several scripts may call ensure together). Bounded: apt may
    # wait for another apt's lock first.
    exec 9>"$DIR/.lock"
    flock -w 900 9 || { say "another engine.sh ensure holds $DIR/.lock for 15 minutes"; return 1; }
    install_engine
    install_wrapper
    if answers; then
        check_runtime
    else
        start_daemon
    fi
    exec 9>&-
}

check_runtime() {
    local rt
    rt=$(docker_cli info --format '{{.DefaultRuntime}}' 2>/dev/null || true)
    if [ "$rt" != "$RUNTIME" ]; then
        say "a Docker daemon not started by this script answers (default runtime '$rt');" \
            "using it as it is (negative --oom-score-adj may fail on this machine)"
    fi
}

cmd_stop() {
    local pid waited=0
    if ! pid=$(our_pid); then
        say "no dockerd started by this script is running"
        rm -f "$PIDFILE"
        return 0
    fi
    say "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    # dockerd stops its containers first (up to their stop timeouts); bounded wait.
    while [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; do
        if [ "$waited" -ge 300 ]; then
            say "dockerd (pid $pid) did not stop within 60s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    rm -f "$PIDFILE"
    say "dockerd stopped"
}

cmd_status() {
    local pid
    if pid=$(our_pid); then say "dockerd started by this script: pid $pid"; fi
    if answers; then say "a Docker daemon answers"; return 0; fi
    say "no Docker daemon answers"
    return 1
}

case "${1:-}" in
    ensure) cmd_ensure ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 ensure|stop|status" >&2
        exit 2
        ;;
esac
