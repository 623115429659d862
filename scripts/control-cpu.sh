#!/usr/bin/env bash
# What the control plane's writes and a large catalog cost the cluster (issue 15): a fresh
# local cluster of BIN pinned to core 1, `bench-control --writers 64 --seconds 10` pinned
# to core 0 (RUNS times, 2 by default), then the CPU time (user + system, from
# /proc/PID/stat) of each of the six processes while the cluster is idle: first right
# after the load, then once the nodes have settled (under 0.3 s of CPU in 2 s, waiting at
# most 120 s). The settled idle figure is what the catalog's size costs every second
# (heartbeats); the first is the backlog the writes left. Run from the repository's root.
#
# usage: scripts/control-cpu.sh BIN
#   BENCH=other-binary runs that binary's bench-control instead.
set -euo pipefail

bin="$(realpath "$1")"
bench="${BENCH:-$bin}"
runs="${RUNS:-2}"
control="http://$(awk -F'"' '/^listen/{print $2}' cluster/c1.toml)"
names=(c1 c2 c3 n1 n2 n3)

# CPU milliseconds of each process, in the order of `names`.
cpu_ms() {
    local name
    for name in "${names[@]}"; do
        awk '{printf "%d ", ($14 + $15) * 1000 / 100}' "/proc/$(cat "data/cluster/$name.pid")/stat"
    done
}

# report LABEL BEFORE AFTER: per-process CPU between two readings of cpu_ms.
report() {
    python3 - "$@" <<'PY'
import sys
label, before, after = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
spent = [int(b) - int(a) for a, b in zip(before, after)]
print(f"{label}: controls {spent[:3]} ms, nodes {spent[3:]} ms; "
      f"controls {sum(spent[:3])} ms, nodes {sum(spent[3:])} ms")
PY
}

bash cluster/down.sh >/dev/null
rm -rf data/cluster
taskset -c 1 env DISTRICHAT_BIN="$bin" bash cluster/up.sh >/dev/null
trap 'bash cluster/down.sh >/dev/null' EXIT
for _ in $(seq 1 "$runs"); do
    taskset -c 0 "$bench" bench-control --control "$control" --writers 64 --seconds 10 | grep 'writers\|p50'
done
before="$(cpu_ms)"
sleep 10
report "idle 10 s right after the load" "$before" "$(cpu_ms)"
for waited in $(seq 2 2 120); do
    before="$(cpu_ms)"
    sleep 2
    nodes_ms="$(python3 -c 'import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); print(sum(int(y) - int(x) for x, y in zip(a[3:], b[3:])))' "$before" "$(cpu_ms)")"
    [ "$nodes_ms" -lt 300 ] && break
done
echo "settled after ${waited} s"
before="$(cpu_ms)"
sleep 20
report "settled idle 20 s" "$before" "$(cpu_ms)"
