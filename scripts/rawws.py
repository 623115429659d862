"""What the measuring scripts share (quiet-chat.py, resume-flood.py, miss-flood.py,
typing-flood.py): JSON calls to a control, a hand-written WebSocket client (raw sockets,
standard library only, so that what they measure is not measured through the project's
own code), and the CPU time of the local cluster's processes."""
import base64, json, os, socket, urllib.request

# The processes of the local cluster (`cluster/up.sh`), as `cluster_cpu_ms` lists them.
CLUSTER = ["c1", "c2", "c3", "n1", "n2", "n3"]


def cluster_cpu_ms():
    """CPU time (user + system) of each process of the local cluster, in ms; run from the
    repository's root (pid files in data/cluster)."""
    spent = []
    for name in CLUSTER:
        pid = open("data/cluster/%s.pid" % name).read().strip()
        fields = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
        spent.append((int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK"))
    return spent


def call(control, path, body=None, token=None):
    """A JSON request to `control` (POST when `body` is given), with a Bearer session."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(control + path, data, {"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    return json.load(urllib.request.urlopen(req))


def frame(text):
    """A masked text frame, as a client must send it."""
    data, mask = text.encode(), os.urandom(4)
    n = len(data)
    header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_frame(sock):
    """(opcode, payload) of the next frame from the server (unmasked)."""
    first, second = read_exact(sock, 2)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(read_exact(sock, 2), "big")
    elif n == 127:
        n = int.from_bytes(read_exact(sock, 8), "big")
    return first & 0x0F, read_exact(sock, n)


def upgrade(addr, receive_buffer=None):
    """A socket to `addr` (host:port) upgraded to a WebSocket on /ws."""
    host, port = addr.split(":")
    sock = socket.create_connection((host, int(port)))
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (addr, key)).encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    return sock
