#!/usr/bin/env bash
# Stop the local cluster started by cluster/up.sh (used by `just cluster-down`).
# For every data/cluster/*.pid: SIGTERM, wait up to 5 s, then SIGKILL.
# Safe to run again when nothing is running.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# is_districhat PID
source cluster/lib.sh

stop_process() {
    local pidfile="$1" name pid i
    name="$(basename "$pidfile" .pid)"
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! is_districhat "$pid"; then
        echo "$name: not running (removed stale pid file)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 25; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        echo "$name: did not exit within 5s of SIGTERM; sent SIGKILL (pid $pid)"
    else
        echo "$name: stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

shopt -s nullglob
# Nodes first, then controls, so nodes do not log a dead control plane.
pidfiles=(data/cluster/n*.pid data/cluster/*.pid)
if [ "${#pidfiles[@]}" -eq 0 ]; then
    echo "nothing to stop (no pid files under data/cluster/)"
    exit 0
fi
for pidfile in "${pidfiles[@]}"; do
    [ -f "$pidfile" ] || continue   # n*.pid appear twice; the second is gone
    stop_process "$pidfile"
done
