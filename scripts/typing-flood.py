#!/usr/bin/env python3
"""Typing flood (docs/BENCHMARKS.md): WATCHERS raw WebSocket clients, spread over the local
cluster's nodes (`cluster/up.sh`), follow one room; one more client of another user sends
`typing` frames to it as fast as its socket takes them, for SECONDS. Prints the typing
frames sent and the ones the watchers got, and the CPU the six processes spent meanwhile.
Run from the repository's root.

usage: typing-flood.py WATCHERS SECONDS
"""
import json, sys, threading, time

import rawws
from rawws import frame, read_frame

watchers, seconds = int(sys.argv[1]), float(sys.argv[2])
control = "http://127.0.0.1:7000"
nodes = ["127.0.0.1:7100", "127.0.0.1:7101", "127.0.0.1:7102"]


def login(name):
    rawws.call(control, "/api/users", {"username": name, "password": "typing-flood-password-1"})
    time.sleep(0.5)
    return rawws.call(control, "/api/sessions", {"username": name, "password": "typing-flood-password-1"})["token"]


def connect(session, addr, room):
    sock = rawws.upgrade(addr)
    sock.sendall(frame(json.dumps({"type": "hello", "token": rawws.call(control, "/api/token", token=session)["token"]})))
    sock.sendall(frame(json.dumps({"type": "subscribe", "room": room})))
    while json.loads(read_frame(sock)[1]).get("type") != "subscribed":
        pass
    return sock


stamp = int(time.time())
watcher_session, flooder_session = login("tw%d" % stamp), login("tf%d" % stamp)
room = rawws.call(control, "/api/rooms", {"name": "typing-%d" % stamp}, flooder_session)["id"]
sockets = [connect(watcher_session, nodes[i % len(nodes)], room) for i in range(watchers)]
flooder = connect(flooder_session, nodes[0], room)
received, lock = [0], threading.Lock()


def reader(sock):
    try:
        while True:
            opcode, payload = read_frame(sock)
            if opcode == 1 and json.loads(payload).get("type") == "typing":
                with lock:
                    received[0] += 1
    except (EOFError, OSError):
        return


def drain(sock):
    try:
        while True:
            read_frame(sock)
    except (EOFError, OSError):
        return


for sock in sockets:
    threading.Thread(target=reader, args=(sock,), daemon=True).start()
threading.Thread(target=drain, args=(flooder,), daemon=True).start()
typing = frame(json.dumps({"type": "typing", "room": room}))
before = rawws.cluster_cpu_ms()
sent, deadline = 0, time.time() + seconds
while time.time() < deadline:
    flooder.sendall(typing)
    sent += 1
time.sleep(2)
spent = [b - a for a, b in zip(before, rawws.cluster_cpu_ms())]
print("%d watchers, %.0f s: %d typing frames sent, %d received by the watchers (%.0f/s)"
      % (watchers, seconds, sent, received[0], received[0] / seconds))
print("CPU: controls %s ms, nodes %s ms" % (spent[:3], spent[3:]))
