"""A client of the broker's listener hand-off (`run --isolate`'s supervisor,
played by hand), honest and hostile. Prints one `name=result` line per step.

usage: handoff_client.py SOCKET TOKEN URL

Hostile hand-offs (no descriptor, two, a connected socket, a file, a
non-loopback listener, a bad token, a flood of bytes) must each get a
`refused: ...` line or a closed connection. An honest one must get `ok`,
serve requests with no token from the client (and ignore a wrong one),
and stop serving once its control connection closes.
"""
import array, os, socket, sys, time, urllib.request, ssl

sock_path, token, url = sys.argv[1:4]
MARK = b"\0"


def handoff(fds, line=None, first=MARK):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect(sock_path)
    if fds:
        socket.send_fds(c, [first], fds)
    else:
        c.sendall(first)
    try:
        c.sendall((token if line is None else line).encode() + b"\n")
    except OSError:
        pass  # refused already: the answer is waiting
    try:
        answer = c.makefile("rb").readline().decode(errors="replace").strip()
    except OSError as e:
        answer = f"closed ({e.__class__.__name__})"
    return c, answer or "closed"


def listener(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(16)
    return s


def fetch(port, auth=None):
    handler = urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{port}"})
    # The broker's leaf is not what is tested here.
    ctx = ssl._create_unverified_context()
    opener = urllib.request.build_opener(handler, urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Proxy-Authorization", auth)
    try:
        with opener.open(req, timeout=10) as r:
            return f"{r.status}:{'REDACTED' in r.read().decode()}"
    except Exception as e:  # noqa: BLE001
        return f"error:{e}"


# ---- hostile
c, a = handoff([])
print(f"no-fd={a}")
l1, l2 = listener(), listener()
c, a = handoff([l1.fileno(), l2.fileno()])
print(f"two-fds={a}")
pair = socket.socketpair()
c, a = handoff([pair[0].fileno()])
print(f"socketpair={a}")
with open(__file__, "rb") as f:
    c, a = handoff([f.fileno()])
    print(f"file={a}")
unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c, a = handoff([unbound.fileno()])
print(f"unlistened={a}")
try:
    wide = listener("0.0.0.0")
    c, a = handoff([wide.fileno()])
    print(f"not-loopback={a}")
except OSError:
    print("not-loopback=refused: (cannot bind)")
c, a = handoff([l1.fileno()], line="not-a-token")
print(f"bad-token={a}")
c, a = handoff([l1.fileno()], line="x" * 70000)
print(f"long-line={a}")
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect(sock_path)
c.sendall(MARK + os.urandom(4096))
c.settimeout(10)
try:
    print(f"garbage={c.recv(100).decode(errors='replace').strip() or 'closed'}")
except OSError as e:
    print(f"garbage=closed ({e.__class__.__name__})")

# ---- honest
good = listener()
port = good.getsockname()[1]
control, a = handoff([good.fileno()])
good.close()  # only the broker holds it now
print(f"honest={a}")
print(f"fetch={fetch(port)}")
print(f"fetch-wrong-auth={fetch(port, 'Basic ' + 'Ym90Om5vdC1hLXRva2Vu')}")
control.close()
time.sleep(0.5)
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.sendall(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
    s.settimeout(3)
    print(f"after-close={s.recv(100).decode(errors='replace').splitlines()[0:1] or 'closed'}")
except OSError as e:
    print(f"after-close=refused ({e.__class__.__name__})")

# ---- a renewal that speaks for another agent ends the session
if len(sys.argv) > 4:
    second = listener()
    port2 = second.getsockname()[1]
    control2, a = handoff([second.fileno()])
    second.close()
    print(f"second={a}")
    print(f"second-fetch={fetch(port2)}")
    control2.sendall(sys.argv[4].encode() + b"\n")
    time.sleep(0.5)
    try:
        socket.create_connection(("127.0.0.1", port2), timeout=3).close()
        print("other-agent-renewal=still listening")
    except OSError as e:
        print(f"other-agent-renewal=refused ({e.__class__.__name__})")
