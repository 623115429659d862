#!/usr/bin/env bash
# What one message costs the cluster (issue 15): a fresh local cluster of BIN pinned to
# core 1, `bench` pinned to core 0, and while the load runs, the CPU time the six
# processes spent (user + system, from /proc/PID/stat) and the system calls and context
# switches of the three nodes (`perf stat`, root), each per acknowledged send. CPU time
# per send is what a lever changes even when other work shares the machine; latencies
# are not. Run from a directory holding `cluster/` (the repository's root).
#
# usage: scripts/bench-cost.sh BIN [bench flags...]
#   BENCH=other-binary runs that binary's bench instead; SECONDS_MEASURED (8) is how
#   long the counters run once the first message is acknowledged.
set -euo pipefail

bin="$(realpath "$1")"
shift
bench="${BENCH:-$bin}"
seconds="${SECONDS_MEASURED:-8}"
control="http://$(awk -F'"' '/^listen/{print $2}' cluster/c1.toml)"
nodes=()
for name in n1 n2 n3; do nodes+=("$(awk -F'"' '/^listen/{print $2}' "cluster/$name.toml")"); done

bash cluster/down.sh >/dev/null 2>&1 || true
rm -rf data/cluster
taskset -c 1 env DISTRICHAT_BIN="$bin" bash cluster/up.sh >/dev/null
trap 'bash cluster/down.sh >/dev/null 2>&1 || true' EXIT

acked() {
    local total=0 n
    for node in "${nodes[@]}"; do
        n=$(curl -sf "http://$node/metrics" | awk '/^districhat_messages_acked_total /{print $2}')
        total=$(awk -v a="$total" -v b="${n:-0}" 'BEGIN{print a + b}')
    done
    echo "$total"
}
cpu_ticks() {
    local total=0 fields
    for pidfile in data/cluster/*.pid; do
        read -r -a fields <"/proc/$(cat "$pidfile")/stat"
        total=$((total + fields[13] + fields[14]))
    done
    echo "$total"
}

report=$(mktemp)
taskset -c 0 "$bench" bench --control "$control" "$@" >"$report" 2>/dev/null &
bench_pid=$!
for _ in $(seq 1 3000); do
    [ "$(acked)" != "0" ] && break
    sleep 0.2
done
ticks_before=$(cpu_ticks)
acked_before=$(acked)
node_pids=$(cat data/cluster/n*.pid | paste -sd,)
counters=$(mktemp)
perf stat -x, -p "$node_pids" -o "$counters" \
    -e syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_fdatasync,syscalls:sys_enter_futex,context-switches \
    -- sleep "$seconds" >/dev/null 2>&1
ticks_after=$(cpu_ticks)
acked_after=$(acked)
wait "$bench_pid" || true
sends=$(awk -v a="$acked_before" -v b="$acked_after" 'BEGIN{print b - a}')
cpu_ms=$(( (ticks_after - ticks_before) * 1000 / $(getconf CLK_TCK) ))
echo "measured ${seconds} s of load: ${sends} sends acknowledged; the cluster's CPU: ${cpu_ms} ms," \
    "$(awk -v c="$cpu_ms" -v s="$sends" 'BEGIN{printf "%.0f", c * 1000 / s}') ms per 1,000 sends"
awk -F, -v s="$sends" '/^[0-9]/{printf "  %-34s %9d  %6.2f per send\n", $3, $1, $1 / s}' "$counters"
grep -E '^(sends|deliveries|ack latency|  of the attempt acked[^:]*|delivery latency|lost|errors):' "$report" || cat "$report"
