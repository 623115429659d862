#!/usr/bin/env bash
# What idle rooms cost the chat nodes' memory (issue 15): a fresh local cluster of BIN
# pinned to core 1; the nodes' RSS; `bench-control` (64 writers, SECS seconds, default
# 20) pinned to core 0, which creates rooms nobody uses; the nodes' RSS and owned rooms
# once their CPU settled; then n1 restarted: how long until its owners are parked
# (`districhat_node_owner_tasks` at 0) and its RSS for 20 s after. Run from the
# repository's root. See docs/BENCHMARKS.md, "The memory of an idle room".
#
# usage: scripts/room-memory.sh BIN
set -uo pipefail

bin="$(realpath "$1")"
seconds="${SECS:-20}"
control="http://$(awk -F'"' '/^listen/{print $2}' cluster/c1.toml)"
n1="http://$(awk -F'"' '/^listen/{print $2}' cluster/n1.toml)"

bash cluster/down.sh >/dev/null 2>&1 || true
rm -rf data/cluster
taskset -c 1 env DISTRICHAT_BIN="$bin" bash cluster/up.sh >/dev/null || exit 1
trap 'bash cluster/down.sh >/dev/null 2>&1 || true' EXIT

pid() { cat "data/cluster/$1.pid"; }
rss() { for n in n1 n2 n3; do awk '/^VmRSS/{printf "%d ", $2/1024}' "/proc/$(pid "$n")/status"; done; }
ticks() { for n in n1 n2 n3; do awk '{print $14+$15}' "/proc/$(pid "$n")/stat"; done | paste -sd+ | bc; }
metric() { curl -sf "$1/metrics" | awk -v name="$2" 'index($0, name) == 1 {print $2}'; }

echo "before: nodes' RSS (MB) $(rss)"
taskset -c 0 "$bin" bench-control --control "$control" --writers 64 --seconds "$seconds" 2>&1 | grep writers
# Settled: the three nodes used less than 0.15 s of CPU in a second.
for waited in $(seq 1 60); do
    before=$(ticks); sleep 1
    [ $(($(ticks) - before)) -lt 15 ] && break
done
owned=""
for n in n1 n2 n3; do
    owned+="$(metric "http://$(awk -F'"' '/^listen/{print $2}' "cluster/$n.toml")" districhat_node_rooms_owned) "
done
echo "after the load (settled in ${waited} s): nodes' RSS (MB) $(rss); rooms owned $owned"

old=$(pid n1)
kill "$old"
while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
started=$(date +%s.%N)
taskset -c 1 env DISTRICHAT_BIN="$bin" bash cluster/up.sh >/dev/null || exit 1
for _ in $(seq 1 600); do
    owned=$(metric "$n1" districhat_node_rooms_owned)
    tasks=$(metric "$n1" districhat_node_owner_tasks)
    [ "${owned%.*}" -gt 0 ] 2>/dev/null && [ "${tasks:-0}" = 0 ] && break
    sleep 0.2
done
echo "n1 restarted: $owned rooms owned, owner tasks ${tasks:-(no such metric)} $(echo "$(date +%s.%N) - $started" | bc | cut -c1-4) s after its start; nodes' RSS (MB) $(rss)"
for k in 1 2 3 4 5; do sleep 4; echo "  +$((k * 4)) s: nodes' RSS (MB) $(rss)"; done
