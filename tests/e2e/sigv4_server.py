"""An HTTPS upstream that checks AWS Signature Version 4 as AWS does, with
botocore's own signer: it rebuilds the request from the headers the
Authorization header says were signed, signs it again with the real test
credentials (SigV4Auth, or S3SigV4Auth for s3) at the request's X-Amz-Date,
and refuses a mismatch (or a declared body hash that is not the body's)
with 403. Logs every request as a JSON line. Prints its port, then serves
until killed.

    sigv4_server.py CERT KEY LOG    (credentials in SIGV4_KEY_ID, SIGV4_SECRET)
"""
import hashlib, hmac, json, os, re, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

cert, key, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
KEY_ID, SECRET = os.environ["SIGV4_KEY_ID"], os.environ["SIGV4_SECRET"]
TOKEN = os.environ.get("SIGV4_TOKEN") or None

AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
    r"SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$"
)


def read_body(handler):
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n else b""


def verify(handler, body):
    """None if the signature is the real key's, else why not."""
    m = AUTH.match(handler.headers.get("Authorization", ""))
    if not m:
        return "no SigV4 Authorization header"
    key_id, day, region, service, signed, signature = m.groups()
    if key_id != KEY_ID:
        return "InvalidAccessKeyId"
    amz_date = handler.headers.get("X-Amz-Date", "")
    if not amz_date.startswith(day):
        return "X-Amz-Date does not match the credential scope"
    if TOKEN is not None and handler.headers.get("X-Amz-Security-Token") != TOKEN:
        return "InvalidToken"
    names = signed.split(";")
    headers = {}
    for name in names:
        value = handler.headers.get_all(name)
        if value is None:
            return f"signed header {name} missing"
        headers[name] = ",".join(v.strip() for v in value)
    request = AWSRequest(
        method=handler.command,
        url=f"https://{handler.headers['Host']}{handler.path}",
        headers=headers,
        data=body,
    )
    request.context["timestamp"] = amz_date
    auth_class = S3SigV4Auth if service == "s3" else SigV4Auth
    auth = auth_class(Credentials(KEY_ID, SECRET, TOKEN), service, region)
    if sorted(auth.headers_to_sign(request).keys()) != sorted(names):
        return "SignedHeaders do not match the request"
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if not hmac.compare_digest(expected, signature):
        return "SignatureDoesNotMatch"
    declared = handler.headers.get("X-Amz-Content-SHA256")
    if declared and re.fullmatch(r"[0-9a-f]{64}", declared) and declared != hashlib.sha256(body).hexdigest():
        return "XAmzContentSHA256Mismatch"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def handle_any(self):
        body = read_body(self)
        refused = verify(self, body)
        record = {
            "method": self.command,
            "path": self.path,
            "ok": refused is None,
            "refused": refused,
            "payload": self.headers.get("X-Amz-Content-SHA256"),
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if refused:
            out = f"<Error><Code>{refused}</Code></Error>".encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
        elif self.command == "PUT":
            out = b""
            self.send_response(200)
            self.send_header("ETag", '"%s"' % hashlib.md5(body).hexdigest())
        else:
            # Reflects what it got: the broker must scrub the access key id
            # (in Authorization) and, at /leak, the secret key itself.
            reflected = dict(record)
            if self.path.startswith("/leak"):
                reflected["leak"] = SECRET
            out = json.dumps(reflected).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Echo-Auth", self.headers.get("Authorization", ""))
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
