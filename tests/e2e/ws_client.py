"""A WebSocket client through the broker, stdlib only: CONNECT with a token,
TLS trusting the broker's CA, the upgrade, one masked text frame out, one
message back (its frames joined, printed; "closed" if the connection ends
first). An optional sixth argument is the path (default /ws)."""
import base64, os, socket, ssl, struct, sys

proxy_port, token, ca, host, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
path = sys.argv[6] if len(sys.argv) > 6 else "/ws"
s = socket.create_connection(("127.0.0.1", int(proxy_port)), timeout=10)
auth = base64.b64encode(f"bot:{token}".encode()).decode()
s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
resp = b""
while b"\r\n\r\n" not in resp:
    resp += s.recv(4096)
assert resp.startswith(b"HTTP/1.1 200"), resp
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
t.sendall(
    (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer agent-made-up\r\n\r\n").encode()
)
head = b""
while b"\r\n\r\n" not in head:
    head += t.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
msg = b"hello"
mask = os.urandom(4)
t.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))


def read(n):
    data = b""
    while len(data) < n:
        try:
            more = t.recv(n - len(data))
        except (ssl.SSLError, OSError):
            more = b""
        if not more:
            print("closed")
            sys.exit(0)
        data += more
    return data


message = b""
while True:
    hdr = read(2)
    n = hdr[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", read(2))[0]
    message += read(n)
    if hdr[0] & 0x80:
        break
print(message.decode())
