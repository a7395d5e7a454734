"""An HTTPS git server for broker tests: `git http-backend` (smart HTTP) run
as CGI for each request, serving the repositories under a directory. It
answers 401 unless the request carries `Authorization: <expected>`, so a
clone that works proves the broker injected the credential, and it logs each
request's method, path and Authorization (one JSON line each). Prints its
port, then serves until killed.

usage: git_https_server.py CERT KEY PROJECT_ROOT LOG EXPECTED_AUTHORIZATION
"""
import json, os, ssl, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

cert, key, root, log_path, expected = sys.argv[1:6]


class Git(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers (none expected), up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        body = self.body()
        auth = self.headers.get("Authorization", "")
        with open(log_path, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "authorization": auth}) + "\n")
        if auth != expected:
            return self.reply(401, [("WWW-Authenticate", 'Bearer realm="git"')], b"unauthorized\n")
        path, _, query = self.path.partition("?")
        env = dict(os.environ)
        env.update(
            GIT_PROJECT_ROOT=root,
            GIT_HTTP_EXPORT_ALL="1",
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL="HTTP/1.1",
            REQUEST_METHOD=self.command,
            PATH_INFO=unquote(path),
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER="agent",
            REMOTE_ADDR=self.client_address[0],
        )
        for k, v in self.headers.items():
            if k.lower() not in ("content-type", "content-length", "transfer-encoding", "authorization"):
                env["HTTP_" + k.upper().replace("-", "_")] = v
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, sep, rest = out.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, rest = out.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        if out.returncode != 0 and not sep:
            return self.reply(500, [], out.stderr)
        self.reply(status, headers, rest)

    do_GET = do_POST = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Git)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
