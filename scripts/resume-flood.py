#!/usr/bin/env python3
"""Resume flood (docs/BENCHMARKS.md): CLIENTS raw WebSocket clients resume a room from seq 0
and never read; prints the owner node's RSS meanwhile and afterwards.

usage: resume-flood.py CONTROL_URL ROOM NODE_HOST:PORT NODE_PID CLIENTS
"""
import base64, json, os, socket, sys, time, urllib.request

control, room, node_addr, pid, clients = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

def post(path, body, token=None):
    req = urllib.request.Request(control + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))

def get(path, token):
    req = urllib.request.Request(control + path, headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req))

user = "flood%d" % int(time.time())
post("/api/users", {"username": user, "password": "flood-password-1"})
time.sleep(0.5)
session = post("/api/sessions", {"username": user, "password": "flood-password-1"})["token"]

def rss():
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

def frame(text):
    data = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    n = len(data)
    header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

host, port = node_addr.split(":")
print("node RSS before: %d MB" % rss(), flush=True)
sockets = []
for i in range(clients):
    ws_token = get("/api/token", session)["token"]
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (node_addr, key)).encode())
    s.recv(1024)  # the 101 answer
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
