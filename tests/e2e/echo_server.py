"""An HTTPS upstream for broker tests: echoes what it receives, streams
server-sent events, and logs every request it got (so a test can check
what the broker injected). Prints its port, then serves until killed."""
import base64, hashlib, json, ssl, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

cert, key, log_path = sys.argv[1], sys.argv[2], sys.argv[3]


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: without this, Nagle and
    # delayed ACKs add ~40 ms to every response.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def websocket(self, auth):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        head = self.rfile.read(2)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", self.rfile.read(2))[0]
        mask = self.rfile.read(4)
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
        reply = ("echo: " + data.decode() + " auth=" + auth).encode()
        if "fragment" in self.path:
            # One message in 7-byte frames: the value is split across them.
            pieces = [reply[i:i + 7] for i in range(0, len(reply), 7)]
            for i, p in enumerate(pieces):
                first = 0x80 if i == len(pieces) - 1 else 0
                self.wfile.write(bytes([first | (1 if i == 0 else 0), len(p)]) + p)
        else:
            # "/ws-rsv1": the compressed bit set though nothing was negotiated.
            b0 = 0xC1 if "rsv1" in self.path else 0x81
            frame = bytes([b0, len(reply)]) if len(reply) < 126 else bytes([b0, 126]) + struct.pack(">H", len(reply))
            self.wfile.write(frame + reply)
        self.wfile.flush()
        self.close_connection = True

    def handle_any(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            with open(log_path, "a") as f:
                f.write(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
            return self.websocket(self.headers.get("Authorization", ""))
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        record = {
            "peer": self.client_address[1],
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        }
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"data: event {i} auth={record['headers'].get('authorization', '')}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.4)
            self.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Echo-Auth", record["headers"].get("authorization", ""))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
if cert != "-":  # "-": plain http
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
