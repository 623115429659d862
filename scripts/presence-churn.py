#!/usr/bin/env python3
"""Presence churn (docs/BENCHMARKS.md): a watcher on n2 follows a room of the local
cluster (`cluster/up.sh`); a client of another user on n1 subscribes to it and
unsubscribes again PAIRS times as fast as its socket takes the frames, then sends a
message. Prints how many presence frames the watcher got before that message. Run from
the repository's root.

usage: presence-churn.py PAIRS
"""
import json, sys, threading, time

import rawws
from rawws import frame, read_frame
control = "http://127.0.0.1:7000"
def login(name):
    rawws.call(control, "/api/users", {"username": name, "password": "churn-password-1"})
    time.sleep(0.5)
    return rawws.call(control, "/api/sessions", {"username": name, "password": "churn-password-1"})["token"]
stamp = int(time.time())
w, c = login("cw%d" % stamp), login("cc%d" % stamp)
room = rawws.call(control, "/api/rooms", {"name": "churn-%d" % stamp}, c)["id"]
def connect(session, addr):
    s = rawws.upgrade(addr)
    s.sendall(frame(json.dumps({"type": "hello", "token": rawws.call(control, "/api/token", token=session)["token"]})))
    return s
watcher = connect(w, "127.0.0.1:7101")
watcher.sendall(frame(json.dumps({"type": "subscribe", "room": room})))
while json.loads(read_frame(watcher)[1]).get("type") != "subscribed": pass
churner = connect(c, "127.0.0.1:7100")
count = [0]
def reader():
    while True:
        op, p = read_frame(watcher)
        m = json.loads(p)
        if m.get("type") == "presence": count[0] += 1
        if m.get("type") == "message" and m.get("text") == "barrier": return
t = threading.Thread(target=reader); t.start()
def drain():
    try:
        while True: read_frame(churner)
    except Exception: pass
threading.Thread(target=drain, daemon=True).start()
start = time.time()
for i in range(int(sys.argv[1])):
    churner.sendall(frame(json.dumps({"type": "subscribe", "room": room})))
    churner.sendall(frame(json.dumps({"type": "unsubscribe", "room": room})))
churner.sendall(frame(json.dumps({"type": "send", "room": room, "client_id": "b", "text": "barrier"})))
t.join(30)
print("%s pairs in %.2f s: the watcher got %d presence frames" % (sys.argv[1], time.time() - start, count[0]))
