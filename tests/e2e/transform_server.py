"""A hostile HTTPS upstream for the scrubbing tests: it takes the credential
the broker injected (from `Authorization: Bearer ...`) and hands it back
transformed, in response headers, in the body and in trailers, the body
plain, chunked (the value split across chunk boundaries), compressed.

GET /t/<transform>/<mode>: one transformation, one way of sending the body.
GET /ws: a WebSocket whose one reply frame holds every transformation.

Prints its port, then one line of JSON: the transformations and the modes.
The first time it sees a transformation it appends to the log a line
{"transform": name, "needles": [...]}: what must never reach the client
(the encoded value, or for base64 the characters that encode the value's
bits alone, in the alphabet used). Serves until killed."""
import base64, gzip, hashlib, html.entities, json, re, ssl, struct, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus

import brotli

cert, key, log_path = sys.argv[1], sys.argv[2], sys.argv[3]

# Text around the value inside what gets base64- or hex-encoded: 34 bytes
# before it, plus 0-2 more, so the value starts at every offset mod 3 and
# its encoding straddles a line break at 60 and at 76 characters.
PREFIX = b"config: the deploy token is here: "
SUFFIX = b" and that is all there is.\n"


def b64_core(text, start, n, alphabet):
    """The characters of base64(text) that depend on text[start:start+n]
    alone (bits 8*start .. 8*(start+n)), in `alphabet` ('std' or 'url')."""
    enc = base64.b64encode(text).decode()
    core = enc[-(-8 * start // 6) : (8 * (start + n)) // 6]
    return core.translate(str.maketrans("+/", "-_")) if alphabet == "url" else core


def wrap(s, width, sep):
    return sep.join(s[i : i + width] for i in range(0, len(s), width))


def html_named_all(v):
    """Every character that has a named reference written as one."""
    names = {}
    for name, ch in html.entities.html5.items():
        if len(ch) == 1 and ord(ch) < 128 and name.endswith(";"):
            best = names.get(ch)
            # Prefer the common lower-case spelling (&amp; over &AMP;).
            if best is None or (name.islower(), -len(name)) > (best.islower(), -len(best)):
                names[ch] = name
    return "".join("&" + names[c] if c in names else c for c in v)


def transforms(v):
    """name -> (header form, body form, needles)."""
    vb = v.encode()
    out = {"raw": (v, v, [v])}
    alone = base64.b64encode(vb).decode()
    out["b64-alone"] = (alone, alone, [alone.rstrip("=")])
    for o in range(3):
        text = b"#" * o + PREFIX + vb + SUFFIX
        start = o + len(PREFIX)
        std = base64.b64encode(text).decode()
        url = base64.urlsafe_b64encode(text).decode()
        core_std = b64_core(text, start, len(vb), "std")
        core_url = b64_core(text, start, len(vb), "url")
        # The value last, so padding (or its absence) follows it.
        std_end = base64.b64encode(text[: start + len(vb)]).decode()
        url_end = base64.urlsafe_b64encode(text[: start + len(vb)]).decode()
        for alpha, enc, end, core in (("std", std, std_end, core_std), ("url", url, url_end, core_url)):
            out[f"b64-{alpha}-{o}"] = (enc, enc, [core])
            out[f"b64-{alpha}-pad-end-{o}"] = (end, end, [core])
            out[f"b64-{alpha}-nopad-end-{o}"] = (end.rstrip("="), end.rstrip("="), [core])
        # MIME: 76-character lines; GitHub's contents API: 60-character
        # lines, inside JSON (so each break is the two characters \n).
        out[f"b64-mime76-{o}"] = (std, base64.encodebytes(text).decode(), [core_std])
        github = json.dumps({"type": "file", "encoding": "base64", "content": wrap(std, 60, "\n") + "\n"})
        out[f"b64-github60-{o}"] = (std, github, [core_std])
    every = lambda fmt: "".join(fmt % b for b in vb)
    pct = {
        "pct-all-upper": every("%%%02X"),
        "pct-all-lower": every("%%%02x"),
        "pct-reserved-upper": quote(v, safe=""),
        "pct-plus": quote_plus(v, safe=""),
        "pct-minimal": quote(v, safe="/+=&\"<>~?!"),
    }
    # The hex digits in lower case (the letters left as they are).
    pct["pct-reserved-lower"] = re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(v, safe=""))
    for name, f in pct.items():
        out[name] = (f, f, [f])
    hexed = (b"#" + PREFIX + vb + SUFFIX).hex()
    out["hex-lower"] = (hexed, hexed, [vb.hex()])
    out["hex-upper"] = (hexed.upper(), hexed.upper(), [vb.hex().upper()])
    j = {
        "json-u-lower": "".join("\\u%04x" % ord(c) for c in v),
        "json-u-upper": "".join("\\u%04X" % ord(c) for c in v),
        "json-dumps": json.dumps(v)[1:-1],
        "json-slash": json.dumps(v)[1:-1].replace("/", "\\/"),
    }
    for name, f in j.items():
        out[name] = (f, '{"token": "%s"}' % f, [f])
    h = {
        "html-escape": html.escape(v, quote=True),
        "html-named-all": html_named_all(v),
        "html-decimal": "".join("&#%d;" % ord(c) for c in v),
        "html-hex-lower": "".join("&#x%x;" % ord(c) for c in v),
        "html-hex-upper": "".join("&#X%X;" % ord(c) for c in v),
    }
    for name, f in h.items():
        out[name] = (f, "<p title=\"%s\">%s</p>" % (f, f), [f])
    return out


# Every transformation's name (the value only changes what they hold).
TRANSFORMS = list(transforms("x"))
MODES = [
    "plain", "chunked", "chunked-bytes", "gzip", "deflate", "deflate-raw", "br",
    "gzip-chunked", "deflate-chunked", "br-chunked", "gzip-br", "trailer",
    "te-gzip", "ce-split", "reason", "early-hints", "until-close", "header-name",
    "unknown-zstd", "unknown-x-custom",
]
seen, lock = set(), threading.Lock()


def record(name, needles):
    with lock:
        if name in seen:
            return
        seen.add(name)
        with open(log_path, "a") as f:
            f.write(json.dumps({"transform": name, "needles": needles}) + "\n")


def splits(body, needle):
    """Pieces of `body` cut at several places inside the value's encoding
    (found by the needle's ends; else the middle of the body)."""
    s = body.find(needle[:6].encode())
    e = body.find(needle[-6:].encode(), max(s, 0)) + 6
    if s < 0 or e < s + 6:
        s, e = len(body) // 3, 2 * len(body) // 3
    cuts = sorted({s + 1, s + (e - s) // 3, s + (e - s) // 2, e - 1})
    bounds = [0] + cuts + [len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:])]


def streamed(pieces, mode):
    """Each piece compressed and flushed on its own, so the decoded stream
    arrives cut where the pieces are."""
    if mode.startswith("br"):
        c = brotli.Compressor()
        out = [c.process(p) + c.flush() for p in pieces]
        return out + [c.finish()]
    c = zlib.compressobj(wbits=31 if mode.startswith("gzip") else 15)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    return out + [c.flush()]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def value(self):
        return self.headers.get("Authorization", "").removeprefix("Bearer ")

    def chunks(self, parts, trailers=None):
        for p in parts:
            if p:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
        self.wfile.write(b"0\r\n")
        for k, v in (trailers or {}).items():
            self.wfile.write(f"{k}: {v}\r\n".encode())
        self.wfile.write(b"\r\n")

    def do_GET(self):
        if self.path == "/ws":
            return self.websocket()
        _, _, name, mode = self.path.split("/")
        header, form, needles = transforms(self.value())[name]
        record(name, needles)
        body = f"case {name} {mode}: ".encode() + form.encode() + b" -- end of case\n"
        if mode == "early-hints":
            self.send_response_only(103)
            self.send_header("Link", "</style.css?t=%s>; rel=preload" % header)
            self.send_header("X-Leak-Early", header)
            self.end_headers()
        # In the status line's reason phrase too.
        self.send_response(200, header if mode == "reason" else None)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-Leak", header)
        self.send_header("Location", "https://example.invalid/cb?t=" + header)
        # As a header's name, where it may be one (a token) and says the
        # same in lower case (names are case-insensitive: HTTP/2 and hyper
        # lower-case them, so base64 or a value's letters lose their case).
        # Any form that is a valid header name, whatever its case: the
        # client's parser lower-cases it, and that must not hide it.
        if mode == "header-name" and re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", header):
            self.send_header("X-" + header, "1")
        if mode == "until-close":
            # Neither a length nor chunks: the body ends when the connection does.
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            # The end of the body is the end of TLS: say so (close_notify),
            # or the broker rightly takes it for a cut-off body.
            try:
                self.connection.settimeout(2)
                self.connection.unwrap()
            except OSError:
                pass
            return
        if mode in ("plain", "gzip", "deflate", "deflate-raw", "br", "gzip-br", "ce-split", "reason", "early-hints", "header-name") or mode.startswith("unknown"):
            if mode == "gzip":
                body = gzip.compress(body)
            elif mode == "deflate":
                body = zlib.compress(body)
            elif mode == "deflate-raw":
                c = zlib.compressobj(wbits=-15)
                body = c.compress(body) + c.flush()
            elif mode == "br":
                body = brotli.compress(body)
            elif mode == "gzip-br":
                body = brotli.compress(gzip.compress(body))
            elif mode == "ce-split":
                # Two header lines: the second one is the real encoding.
                self.send_header("Content-Encoding", "identity")
                body = gzip.compress(body)
            if mode not in ("plain", "reason", "early-hints", "header-name"):
                enc = {"deflate-raw": "deflate", "gzip-br": "gzip, br", "ce-split": "gzip"}.get(mode, mode)
                self.send_header("Content-Encoding", enc.removeprefix("unknown-"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "gzip, chunked" if mode == "te-gzip" else "chunked")
        pieces = splits(body, needles[0])
        trailers = None
        if mode == "chunked-bytes":
            pieces = [body[i : i + 1] for i in range(len(body))]
        elif mode == "te-gzip":
            pieces = [gzip.compress(body)]
        elif mode.endswith("-chunked"):
            self.send_header("Content-Encoding", mode.removesuffix("-chunked"))
            pieces = streamed(pieces, mode)
        elif mode == "trailer":
            self.send_header("Trailer", "X-Leak-Trailer")
            trailers = {"X-Leak-Trailer": header}
        self.end_headers()
        self.chunks(pieces, trailers)

    def websocket(self):
        ws_key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((ws_key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
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
        self.rfile.read(4 + n)  # mask and payload: not used
        reply = "\n".join(f"{name}: {form}" for name, (_, form, _) in transforms(self.value()).items()).encode()
        self.wfile.write(bytes([0x81, 126]) + struct.pack(">H", len(reply)) + reply)
        self.wfile.flush()
        self.close_connection = True


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
print(json.dumps({"transforms": TRANSFORMS, "modes": MODES}), flush=True)
server.serve_forever()
