#!/usr/bin/env python3
"""A quiet chat measured by a client that shares no code with the project (issue 15):
raw sockets and a hand-written WebSocket framing (rawws.py), standard library only.

CLIENTS clients spread over the nodes follow ROOMS rooms; RATE messages a second go out,
round robin over the clients, each carrying its send time. Prints the ack latency (send
to ack) and the delivery latency (send to each subscriber's copy), p50/p90/p99/max.

usage: quiet-chat.py CONTROL_URL NODE_HOST:PORT[,NODE_HOST:PORT...] [CLIENTS] [ROOMS] [RATE] [SECONDS]
"""
import json, sys, threading, time

import rawws
from rawws import frame, read_frame

control, nodes = sys.argv[1], sys.argv[2].split(",")
clients, rooms, rate, seconds = (int(a) for a in (sys.argv[3:] + ["20", "2", "20", "20"][len(sys.argv) - 3:])[:4])


def call(path, body=None, token=None):
    return rawws.call(control, path, body, token)


user = "quiet%d" % int(time.time() * 1000)
call("/api/users", {"username": user, "password": "quiet-password-1"})
time.sleep(0.5)
session = call("/api/sessions", {"username": user, "password": "quiet-password-1"})["token"]
room_ids = [call("/api/rooms", {"name": "%s-%d" % (user, i)}, session)["id"] for i in range(rooms)]

sent, acks, deliveries, lock = {}, [], [], threading.Lock()
sockets = []
for i in range(clients):
    sock = rawws.upgrade(nodes[i % len(nodes)])
    token = call("/api/token", token=session)["token"]
    sock.sendall(frame(json.dumps({"type": "hello", "token": token})))
    room = room_ids[i % rooms]
    sock.sendall(frame(json.dumps({"type": "subscribe", "room": room})))
    while True:
        _, payload = read_frame(sock)
        if json.loads(payload).get("type") == "subscribed":
            break
    sockets.append((sock, room))


def reader(sock):
    try:
        while True:
            opcode, payload = read_frame(sock)
            now = time.perf_counter_ns()
            if opcode != 1:
                continue
            message = json.loads(payload)
            kind = message.get("type")
            if kind == "ack":
                with lock:
                    started = sent.get(message["client_id"])
                    if started:
                        acks.append(now - started)
            elif kind == "message" and message["text"].startswith("t="):
                with lock:
                    deliveries.append(now - int(message["text"][2:]))
    except (EOFError, OSError):
        return


for sock, _ in sockets:
    threading.Thread(target=reader, args=(sock,), daemon=True).start()
time.sleep(1)
begin = time.perf_counter()
count = 0
while time.perf_counter() - begin < seconds:
    sock, room = sockets[count % clients]
    client_id = "q%d" % count
    started = time.perf_counter_ns()
    with lock:
        sent[client_id] = started
    sock.sendall(frame(json.dumps({"type": "send", "room": room, "client_id": client_id, "text": "t=%d" % started})))
    count += 1
    time.sleep(max(0.0, begin + count / rate - time.perf_counter()))
time.sleep(2)


def summary(name, values):
    values = sorted(v / 1e6 for v in values)
    if not values:
        return "%s: none" % name
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return "%s: %d, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        name, len(values), pick(0.5), pick(0.9), pick(0.99), values[-1])


print("%d clients, %d rooms, %d sends/s for %d s (%d sent)" % (clients, rooms, rate, seconds, count))
with lock:
    print(summary("acks", acks))
    print(summary("deliveries", deliveries))
