#!/usr/bin/env python3
"""Miss flood (docs/BENCHMARKS.md): CLIENTS raw WebSocket clients of one user subscribe, one
request at a time each, to room ids that do not exist, for SECONDS; prints the answers
(codes, latency p50/p99), the routing tables the controls served meanwhile (whole tables and
delta fetches, from each control's /metrics) and the CPU the six processes of the local
cluster (`cluster/up.sh`) spent. Run from the repository's root.

usage: miss-flood.py NODE_HOST:PORT CLIENTS SECONDS
"""
import collections, json, re, sys, threading, time, urllib.request

import rawws
from rawws import frame, read_frame

node_addr, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
controls = []
for name in rawws.CLUSTER[:3]:
    listen = re.search(r'^listen\s*=\s*"([^"]+)"', open("cluster/%s.toml" % name).read(), re.M).group(1)
    controls.append("http://" + listen)
control = controls[0]


def post(path, body, token=None):
    return rawws.call(control, path, body, token)


def get(path, token):
    return rawws.call(control, path, token=token)


def routes_sent():
    """(whole tables, delta fetches) served by the three controls so far."""
    table = delta = 0
    for url in controls:
        text = urllib.request.urlopen(url + "/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith('districhat_routes_sent_total{kind="table"}'):
                table += int(float(line.split()[-1]))
            if line.startswith('districhat_routes_sent_total{kind="delta_fetch"}'):
                delta += int(float(line.split()[-1]))
    return table, delta


user = "miss%d" % int(time.time())
post("/api/users", {"username": user, "password": "miss-flood-password-1"})
time.sleep(0.5)
session = post("/api/sessions", {"username": user, "password": "miss-flood-password-1"})["token"]
latencies, codes, lock = [], collections.Counter(), threading.Lock()
deadline = None


def client(index):
    ws_token = get("/api/token", session)["token"]
    s = rawws.upgrade(node_addr)
    s.sendall(frame(json.dumps({"type": "hello", "token": ws_token})))
    while json.loads(read_frame(s)[1]).get("type") != "welcome":
        pass
    room = 10_000_000 + index * 1_000_000
    while deadline is None:
        time.sleep(0.01)
    while time.time() < deadline:
        room += 1
        sent = time.time()
        s.sendall(frame(json.dumps({"type": "subscribe", "room": room})))
        while True:
            opcode, payload = read_frame(s)
            if opcode != 1:
                continue
            reply = json.loads(payload)
            if reply.get("type") in ("error", "subscribed"):
                break
        with lock:
            latencies.append(time.time() - sent)
            codes[reply.get("code", reply.get("type"))] += 1
    s.close()


threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
time.sleep(2)  # every client has said hello
before_routes, before_cpu = routes_sent(), rawws.cluster_cpu_ms()
deadline = time.time() + seconds
for t in threads:
    t.join()
after_routes, after_cpu = routes_sent(), rawws.cluster_cpu_ms()
latencies.sort()
q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0
spent = [b - a for a, b in zip(before_cpu, after_cpu)]
print("%d clients, %.0f s: %d answers (%.0f/s) %s; latency p50 %.1f ms, p99 %.1f ms"
      % (clients, seconds, len(latencies), len(latencies) / seconds, dict(codes), q(0.5), q(0.99)))
print("controls served %d whole tables and %d delta fetches"
      % (after_routes[0] - before_routes[0], after_routes[1] - before_routes[1]))
print("CPU: controls %s ms, nodes %s ms" % (spent[:3], spent[3:]))
