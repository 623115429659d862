#!/usr/bin/env python3
"""Resume flood (docs/BENCHMARKS.md): CLIENTS raw WebSocket clients resume a room from seq 0
and never read; prints the owner node's RSS meanwhile and afterwards.

usage: resume-flood.py CONTROL_URL ROOM NODE_HOST:PORT NODE_PID CLIENTS
"""
import json, sys, time

import rawws
from rawws import frame

control, room, node_addr, pid, clients = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def post(path, body, token=None):
    return rawws.call(control, path, body, token)


def get(path, token):
    return rawws.call(control, path, token=token)


user = "flood%d" % int(time.time())
post("/api/users", {"username": user, "password": "flood-password-1"})
time.sleep(0.5)
session = post("/api/sessions", {"username": user, "password": "flood-password-1"})["token"]

def rss():
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

print("node RSS before: %d MB" % rss(), flush=True)
sockets = []
for i in range(clients):
    ws_token = get("/api/token", session)["token"]
    s = rawws.upgrade(node_addr, receive_buffer=65536)
    s.sendall(frame(json.dumps({"type": "hello", "token": ws_token})))
    s.sendall(frame(json.dumps({"type": "subscribe", "room": room, "since": 0})))
    sockets.append(s)
start = time.time()
peak = 0
while time.time() - start < 40:
    r = rss()
    peak = max(peak, r)
    time.sleep(0.25)
print("node RSS peak while %d clients resumed without reading: %d MB; after 40 s: %d MB" % (clients, peak, rss()), flush=True)
for s in sockets:
    s.close()
time.sleep(5)
print("node RSS 5 s after the clients left: %d MB" % rss(), flush=True)
