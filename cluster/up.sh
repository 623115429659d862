#!/usr/bin/env bash
# Start the local cluster as background processes (used by `just cluster`).
# Each process NAME reads cluster/NAME.toml, logs to data/cluster/NAME/ROLE.log
# and has its pid in data/cluster/NAME.pid. Safe to run again: processes that
# are already running are left alone.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
BIN="${DISTRICHAT_BIN:-$target_dir/release/districhat}"
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
if [ ! -x "$BIN" ]; then
    echo "error: $BIN not found; build it first (just build, or cargo build --release)" >&2
    exit 1
fi

CONTROL_URL="http://127.0.0.1:7000"
WAIT_SECS=60

# Names of processes started by this run (watched while waiting).
started=()

# is_districhat PID
source cluster/lib.sh

# start_process NAME ROLE [ARGS...]: run `$BIN ROLE ARGS...` in the background
# unless NAME is already running.
start_process() {
    local name="$1" role="$2"
    shift 2
    local dir="data/cluster/$name" pidfile="data/cluster/$name.pid"
    mkdir -p "$dir"
    if [ -f "$pidfile" ]; then
        local pid
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -n "$pid" ] && is_districhat "$pid"; then
            echo "$name: already running (pid $pid)"
            return 0
        fi
        echo "$name: removing stale pid file ($pidfile, pid ${pid:-none})"
        rm -f "$pidfile"
    fi
    nohup "$BIN" "$role" "$@" >>"$dir/$role.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    started+=("$name")
    echo "$name: started $role (pid $!, log $dir/$role.log)"
}

# Print the tail of every log under data/cluster/.
show_logs() {
    local log
    for log in data/cluster/*/*.log; do
        [ -f "$log" ] || continue
        echo "----- last 20 lines of $log -----"
        tail -n 20 "$log"
    done
}

# wait_http URL: poll until URL answers 2xx, at most WAIT_SECS seconds. Fails
# early if a process started by this run has exited.
wait_http() {
    local url="$1" deadline=$((SECONDS + WAIT_SECS)) name pid
    echo "waiting for $url (up to ${WAIT_SECS}s)..."
    until curl -sf -o /dev/null --max-time 2 "$url"; do
        for name in ${started[@]+"${started[@]}"}; do
            pid="$(cat "data/cluster/$name.pid" 2>/dev/null || true)"
            if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
                echo "error: $name exited during startup" >&2
                show_logs
                echo "stop the rest with: just cluster-down (or cluster/down.sh)" >&2
                exit 1
            fi
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: $url not healthy after ${WAIT_SECS}s" >&2
            show_logs
            echo "stop the rest with: just cluster-down (or cluster/down.sh)" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# Controls. `--init` only bootstraps a fresh Raft group, so passing it on
# every start is harmless.
start_process c1 control --config cluster/c1.toml --init
start_process c2 control --config cluster/c2.toml
start_process c3 control --config cluster/c3.toml

# /healthz on a control is 200 once a leader is elected.
wait_http "$CONTROL_URL/healthz"

# Chat nodes register with the control plane as they start.
start_process n1 node --config cluster/n1.toml
start_process n2 node --config cluster/n2.toml
start_process n3 node --config cluster/n3.toml
wait_http "http://127.0.0.1:7100/healthz"
wait_http "http://127.0.0.1:7101/healthz"
wait_http "http://127.0.0.1:7102/healthz"

echo
"$BIN" status --control "$CONTROL_URL"
