#!/usr/bin/env python3
"""Benchmark `agent-vault proxy` (the broker) against its speed targets (issue 4).

Driven by bench/broker.sh, which installs the tools.  Prints figures and a
PASS/FAIL table; nothing is written outside a scratch directory.

Setup (all on 127.0.0.1, side by side in one run):
  * upstream: nginx, TLS with a self-signed cert, keep-alive, tiny fixed body;
    it answers 401 unless `Authorization: Bearer tok_123` arrives, so every 200
    through a proxy proves the header was injected, and it reflects the
    Authorization header in `X-Echo-Auth`, so the broker scrubs every response;
  * the broker: a fresh vault, service `api` = bearer api/token for the upstream;
  * mitmproxy (mitmdump) with a 3-line addon that sets Authorization;
  * load generator: oha (crates.io), keep-alive, through `-x http://bot:TOKEN@...`.

Figures: throughput direct / broker / mitmproxy (alternating rounds), median
latency at 1 connection, RSS with 1,000 open TLS tunnels, distinct leaf
certificates seen over those tunnels (the leaf-mint count is not exposed by the
CLI; a cached leaf shows up as one identical certificate), CPU per request of
each process, and how busy the rest of the machine was.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

TOKEN_VALUE = "tok_123"
HZ = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# ---------------------------------------------------------------- CPU accounting
def total_jiffies():
    """(busy, total) jiffies of the whole machine."""
    f = open("/proc/stat").readline().split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def proc_jiffies(pids):
    t = 0
    for pid in pids:
        try:
            s = open(f"/proc/{pid}/stat").read()
            f = s[s.rindex(")") + 2:].split()
            t += int(f[11]) + int(f[12])  # utime + stime
        except (OSError, ValueError):
            pass
    return t


def tree(pid):
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                kids = open(f"/proc/{p}/task/{t}/children").read().split()
                todo += [int(k) for k in kids]
        except OSError:
            pass
    return out


def rss_kb(pid):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"):
            d[k] = int(v.split()[0])
    return d


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------- processes
class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="broker-bench-")
        self.procs = []
        self.watch = {}  # name -> root pid

    def spawn(self, name, args, **kw):
        kw.setdefault("stdout", open(os.path.join(self.tmp, name + ".out"), "w"))
        kw.setdefault("stderr", subprocess.STDOUT)
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not self.a.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")

    # -- upstream
    def start_nginx(self):
        d = self.tmp
        self.up_cert, self.up_key = f"{d}/up.pem", f"{d}/up.key"
        # a CA and a leaf signed by it: rustls (webpki) refuses a self-signed
        # end-entity certificate used as its own trust anchor
        self.up_ca = f"{d}/up-ca.pem"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run = lambda *c: subprocess.run(c, check=True, capture_output=True)  # noqa: E731
        run("openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=bench upstream CA",
            "-keyout", f"{d}/up-ca.key", "-out", self.up_ca)
        run("openssl", "req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", self.up_key,
            "-out", f"{d}/up.csr")
        open(f"{d}/up.ext", "w").write(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        run("openssl", "x509", "-req", "-in", f"{d}/up.csr", "-CA", self.up_ca, "-CAkey",
            f"{d}/up-ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{d}/up.ext",
            "-out", self.up_cert)
        self.up_port = free_port()
        # `reuseport`: the kernel spreads connections over both workers; without
        # it one worker sometimes takes all of oha's connections at once and
        # the direct figure drops by a third (seen: 75k vs 107k req/s).
        conf = f"""
worker_processes {self.a.nginx_workers};
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/ngx-body; proxy_temp_path {d}/ngx-proxy;
  fastcgi_temp_path {d}/ngx-fcgi; uwsgi_temp_path {d}/ngx-uwsgi; scgi_temp_path {d}/ngx-scgi;
  keepalive_requests 10000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{self.up_port} ssl reuseport;
    ssl_certificate {self.up_cert}; ssl_certificate_key {self.up_key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      default_type text/plain;
      # The credential reflected in a response header (as echo and debug
      # endpoints do): every response through the broker must be scrubbed.
      add_header X-Echo-Auth $http_authorization always;
      if ($http_authorization != "Bearer {TOKEN_VALUE}") {{ return 401 "no auth\\n"; }}
      return 200 "hello from upstream\\n";
    }}
  }}
}}
"""
        open(f"{d}/nginx.conf", "w").write(conf)
        p = self.spawn("nginx", [self.a.nginx, "-c", f"{d}/nginx.conf", "-p", d,
                                 "-g", "daemon off;"])
        wait_port(self.up_port)
        self.watch["nginx"] = p.pid

    # -- the broker
    def av(self, *args, inp=None):
        r = subprocess.run([self.a.bin, *args], cwd=self.vault, env=self.env, input=inp,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"agent-vault {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def start_broker(self):
        home = os.path.join(self.tmp, "home")
        os.mkdir(home)
        self.env = dict(os.environ, AGENT_VAULT_HOME=home, GIT_CONFIG_NOSYSTEM="1",
                        GIT_CONFIG_GLOBAL=os.path.join(self.tmp, "gitconfig"))
        for k in ("AGENT_VAULT_KEY", "AGENT_VAULT_DIR"):
            self.env.pop(k, None)
        self.vault = self.tmp
        self.av("init", "V", "--owner", "o")
        self.vault = os.path.join(self.tmp, "V")
        self.av("set", "api/token", inp=TOKEN_VALUE)
        self.av("add-agent", "bot")
        self.av("grant", "bot", "api", "--mode", "use")
        self.av("broker", "init")
        self.av("service", "add", "api", "--bearer", "api/token",
                "--host", f"127.0.0.1:{self.up_port}")
        self.broker_ca = os.path.join(self.tmp, "broker-ca.pem")
        open(self.broker_ca, "w").write(self.av("ca", "cert"))
        self.token = self.av("token", "issue", "bot", "--ttl", "2h").strip()
        self.broker_port = free_port()
        # bench/isolate.py also listens on a Unix socket (for `run --isolate`).
        unix = ["--unix", self.unix] if getattr(self, "unix", None) else []
        p = self.spawn("broker", [self.a.bin, "proxy", "--listen",
                                  f"127.0.0.1:{self.broker_port}", "--allow-private-upstreams",
                                  "--upstream-ca", self.up_ca, *unix],
                       cwd=self.vault, env=self.env)
        wait_port(self.broker_port)
        self.watch["broker"] = p.pid
        self.broker_proxy = f"http://bot:{self.token}@127.0.0.1:{self.broker_port}"

    # -- mitmproxy
    def start_mitm(self):
        addon = os.path.join(self.tmp, "inject.py")
        open(addon, "w").write(
            "def request(flow):\n"
            f"    flow.request.headers['Authorization'] = 'Bearer {TOKEN_VALUE}'\n")
        self.mitm_port = free_port()
        p = self.spawn("mitmdump", [
            self.a.mitmdump, "-q", "--listen-host", "127.0.0.1", "-p", str(self.mitm_port),
            "--set", f"confdir={self.tmp}/mitm-conf",
            "--set", f"ssl_verify_upstream_trusted_ca={self.up_ca}",
            "--set", "connection_strategy=lazy",
            "-s", addon])
        wait_port(self.mitm_port, 60)
        self.watch["mitmproxy"] = p.pid
        self.mitm_proxy = f"http://127.0.0.1:{self.mitm_port}"

    # -- load
    def oha(self, proxy, conns, duration=None, n=None, direct_auth=False):
        url = f"https://127.0.0.1:{self.up_port}/"
        args = [self.a.oha, "--no-tui", "--output-format", "json", "--insecure",
                "-c", str(conns)]
        args += ["-z", f"{duration}s"] if duration else ["-n", str(n)]
        if proxy:
            m = re.match(r"http://([^:@/]+):([^@/]+)@(.*)", proxy)
            if m and not self.a.oha_userinfo:
                # send Proxy-Authorization explicitly (on the CONNECT)
                cred = base64.b64encode(f"{m.group(1)}:{m.group(2)}".encode()).decode()
                args += ["-x", "http://" + m.group(3),
                         "--proxy-header", f"Proxy-Authorization: Basic {cred}"]
            else:
                args += ["-x", proxy]
        if direct_auth:
            args += ["-H", f"Authorization: Bearer {TOKEN_VALUE}"]
        args.append(url)
        watch = {k: tree(v) for k, v in self.watch.items()}
        j0 = {k: proc_jiffies(v) for k, v in watch.items()}
        b0, t0 = total_jiffies()
        w0 = time.time()
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate()
        wall = time.time() - w0
        b1, t1 = total_jiffies()
        j1 = {k: proc_jiffies(v) for k, v in watch.items()}
        if p.returncode:
            raise RuntimeError(f"oha failed ({p.returncode}): {err.decode()[-2000:]}")
        r = json.loads(out)
        cpu = {k: (j1[k] - j0[k]) / HZ for k in watch}
        cpu["_machine_busy"] = (b1 - b0) / HZ
        cpu["_machine_total"] = (t1 - t0) / HZ
        cpu["_wall"] = wall
        r["_cpu"] = cpu
        return r


# ---------------------------------------------------------------- result helpers
def status_dist(r):
    return {str(k): v for k, v in (r.get("statusCodeDistribution") or {}).items()}


def errors(r):
    e = dict(r.get("errorDistribution") or {})
    e.pop("aborted due to deadline", None)  # requests in flight when -z ends
    return e


def ok_rps(r):
    """Successful (200) requests per second."""
    s = r["summary"]
    total = s["total"]
    n200 = status_dist(r).get("200", 0)
    return n200 / total if total else 0.0


def p50_ms(r):
    lp = r.get("latencyPercentiles") or {}
    v = lp.get("p50")
    return v * 1000 if v is not None else None


# ---------------------------------------------------------------- 1,000 tunnels
async def tunnels(b, n, hold_s):
    """Open n CONNECT tunnels + TLS through the broker, one GET on each, hold them.

    Returns (rss after handshakes, rss after one request each, distinct leaf
    certs, handshake timings, failures)."""
    auth = base64.b64encode(f"bot:{b.token}".encode()).decode()
    ctx = ssl.create_default_context(cafile=b.broker_ca)
    host = f"127.0.0.1:{b.up_port}"
    conns, leaves, times, fails = [], {}, [], []
    sem = asyncio.Semaphore(64)

    async def one(i):
        async with sem:
            t0 = time.perf_counter()
            try:
                r, w = await asyncio.open_connection("127.0.0.1", b.broker_port)
                w.write(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"
                        f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
                head = await r.readuntil(b"\r\n\r\n")
                if b" 200" not in head.split(b"\r\n")[0]:
                    raise RuntimeError(head.split(b"\r\n")[0].decode())
                await w.start_tls(ctx, server_hostname="127.0.0.1")
                der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
                leaves[hashlib.sha256(der).hexdigest()] = leaves.get(
                    hashlib.sha256(der).hexdigest(), 0) + 1
                times.append((i, time.perf_counter() - t0))
                conns.append((r, w))
            except Exception as e:  # noqa: BLE001 - report every kind of failure
                fails.append(f"tunnel {i}: {type(e).__name__}: {e}")

    # the first tunnel alone (a cold leaf cache), then the rest
    await one(0)
    await asyncio.gather(*(one(i) for i in range(1, n)))
    await asyncio.sleep(1)
    pid = b.watch["broker"]
    after_hs = dict(rss_kb(pid), fds=fds(pid), open=len(conns))

    async def get(rw):
        r, w = rw
        w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        m = re.search(rb"content-length:\s*(\d+)", head, re.I)
        body = await r.readexactly(int(m.group(1))) if m else b""
        line = head.split(b"\r\n")[0].decode()
        if " 200" not in line and not bad_body:
            bad_body.append(body[:300].decode(errors="replace"))
        return line

    sem2 = asyncio.Semaphore(64)
    bad_body = []

    async def get_limited(rw):
        async with sem2:
            try:
                return await get(rw)
            except Exception as e:  # noqa: BLE001
                return f"error: {type(e).__name__}: {e}"

    statuses = await asyncio.gather(*(get_limited(c) for c in conns))
    await asyncio.sleep(hold_s)
    after_req = dict(rss_kb(pid), fds=fds(pid), open=len(conns))
    st = {}
    for s in statuses:
        st[s] = st.get(s, 0) + 1
    for _, w in conns:
        w.close()
    if bad_body:
        st["first non-200 body"] = bad_body[0]
    return after_hs, after_req, leaves, times, fails, st


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--mitmdump", required=True)
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--nginx-workers", default="auto")
    ap.add_argument("--conns", type=int, default=32, help="oha connections for throughput")
    ap.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating direct/broker/mitm rounds")
    ap.add_argument("--lat-n", type=int, default=2000, help="sequential requests for latency")
    ap.add_argument("--tunnels", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--perf", type=int, default=0,
                    help="profile the broker with perf for this many seconds (0: don't)")
    ap.add_argument("--oha-userinfo", action="store_true",
                    help="pass the token as -x http://bot:TOKEN@... instead of --proxy-header")
    a = ap.parse_args()

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    b = Bench(a)
    res = {}
    try:
        # how busy is the machine before we start anything (3 s window)
        b0, t0 = total_jiffies()
        time.sleep(3)
        b1, t1 = total_jiffies()
        res["idle_busy_pct"] = 100.0 * (b1 - b0) / max(1, t1 - t0)
        res["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
        log(f"machine before start: {res['idle_busy_pct']:.0f}% busy (of {os.cpu_count()} cpus), "
            f"loadavg {' '.join(res['loadavg_start'])}")

        b.start_nginx()
        b.start_broker()
        b.start_mitm()
        log(f"upstream nginx :{b.up_port}  broker :{b.broker_port}  mitmdump :{b.mitm_port}")

        # smoke + warm-up (also checks the injection: upstream 401s without it)
        for name, proxy, da in (("direct", None, True), ("broker", b.broker_proxy, False),
                                ("mitmproxy", b.mitm_proxy, False)):
            r = b.oha(proxy, 4, n=200, direct_auth=da)
            log(f"warm-up {name}: statuses {status_dist(r)} errors {errors(r)}")

        # ---- throughput, alternating rounds
        tp = {"direct": [], "broker": [], "mitmproxy": []}
        for rnd in range(a.rounds):
            for name, proxy, da in (("direct", None, True), ("broker", b.broker_proxy, False),
                                    ("mitmproxy", b.mitm_proxy, False)):
                r = b.oha(proxy, a.conns, duration=a.duration, direct_auth=da)
                tp[name].append(r)
                c = r["_cpu"]
                log(f"round {rnd + 1} {name:9s}: {ok_rps(r):8.0f} ok req/s  statuses "
                    f"{status_dist(r)} errors {errors(r)}  cpu-s {{"
                    + ", ".join(f"{k}: {v:.1f}" for k, v in c.items() if not k.startswith('_'))
                    + f"}} machine busy {c['_machine_busy']:.1f}/{c['_machine_total']:.1f} cpu-s")
        res["throughput"] = {}
        for name, rs in tp.items():
            n200 = sum(status_dist(r).get("200", 0) for r in rs)
            secs = sum(r["summary"]["total"] for r in rs)
            tot_req = sum(sum(status_dist(r).values()) for r in rs)
            cpu = {}
            for r in rs:
                for k, v in r["_cpu"].items():
                    cpu[k] = cpu.get(k, 0) + v
            res["throughput"][name] = dict(
                rps=n200 / secs, per_round=[round(ok_rps(r)) for r in rs],
                non200=tot_req - n200,
                statuses={k: sum(status_dist(r).get(k, 0) for r in rs)
                          for k in set().union(*(status_dist(r) for r in rs))},
                errors=[errors(r) for r in rs if errors(r)],
                cpu_s=cpu, requests=n200)

        # ---- optional: where the broker's CPU goes (perf, during an extra broker run)
        if a.perf:
            data = os.path.join(b.tmp, "perf.data")
            pp = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", data, "-p",
                                   str(b.watch["broker"])], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            b.oha(b.broker_proxy, a.conns, duration=a.perf)
            pp.send_signal(2)
            pp.wait()
            for sort in ("dso", "symbol"):
                rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort,
                                      "--stdio", "-g", "none", "--percent-limit", "1.5"],
                                     capture_output=True, text=True).stdout
                res.setdefault("perf", []).extend(
                    l for l in rep.splitlines() if l.strip() and not l.startswith("#"))

        # ---- latency at 1 connection, sequential (alternating, 2 halves each)
        lat = {"direct": [], "broker": []}
        for _ in range(2):
            for name, proxy, da in (("direct", None, True), ("broker", b.broker_proxy, False)):
                r = b.oha(proxy, 1, n=a.lat_n // 2, direct_auth=da)
                lat[name].append(r)
        res["latency"] = {}
        for name, rs in lat.items():
            p50s = [p50_ms(r) for r in rs]
            res["latency"][name] = dict(
                p50_ms=statistics.median(p50s), p50_rounds=p50s,
                p99_ms=max((r.get("latencyPercentiles") or {}).get("p99", 0) * 1000 for r in rs),
                statuses=[status_dist(r) for r in rs], errors=[errors(r) for r in rs if errors(r)])

        # ---- 1,000 tunnels
        pid = b.watch["broker"]
        res["rss_before_tunnels"] = rss_kb(pid)
        after_hs, after_req, leaves, times, fails, st = asyncio.run(
            tunnels(b, a.tunnels, a.hold))
        res["tunnels"] = dict(after_handshakes=after_hs, after_one_request_each=after_req,
                              distinct_leaves=len(leaves), leaf_uses=sorted(leaves.values()),
                              failures=len(fails), failure_samples=fails[:5], get_statuses=st,
                              first_handshake_ms=next((t * 1000 for i, t in times if i == 0), None),
                              median_handshake_ms=statistics.median(t * 1000 for i, t in times if i)
                              if len(times) > 1 else None)
        time.sleep(1)
        res["rss_after_close"] = rss_kb(pid)
        res["broker_alive"] = b.procs[1].poll() is None
        b1, t1 = total_jiffies()
        res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    finally:
        # stop the broker first: on SIGTERM it says how many leaves it minted
        broker = b.procs[1] if len(b.procs) > 1 else None
        if broker is not None and broker.poll() is None:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            m = re.search(r"\((\d+) leaf certificate", open(os.path.join(b.tmp, "broker.out")).read())
            res["leaves_minted"] = int(m.group(1)) if m else None
        except OSError:
            res["leaves_minted"] = None
        # the broker's own stderr (errors under load)
        try:
            tail = open(os.path.join(b.tmp, "broker.out")).read().splitlines()
            res["broker_log_lines"] = len(tail)
            res["broker_log_tail"] = tail[-8:]
        except OSError:
            pass
        b.close()

    report(res, a)


def report(res, a):
    t = res["throughput"]
    d, br, m = t["direct"]["rps"], t["broker"]["rps"], t["mitmproxy"]["rps"]
    L = res["latency"]
    added = L["broker"]["p50_ms"] - L["direct"]["p50_ms"]
    tun = res["tunnels"]
    rss_mb = tun["after_one_request_each"]["VmRSS"] / 1024
    hwm_mb = tun["after_one_request_each"]["VmHWM"] / 1024

    print()
    print(f"== throughput (oha, keep-alive, {a.conns} connections, {a.rounds}x{a.duration}s "
          f"each, alternating; only 200s counted)")
    for name in ("direct", "broker", "mitmproxy"):
        x = t[name]
        c = x["cpu_s"]
        n = max(1, x["requests"])
        own = {k: v for k, v in c.items() if not k.startswith("_")}
        others = c["_machine_busy"] - sum(own.values())  # oha + other users of the machine
        print(f"  {name:10s} {x['rps']:9.0f} req/s  rounds {x['per_round']}  statuses "
              f"{x['statuses']}  errors {x['errors'] or 'none'}")
        print(f"  {'':10s} cpu us/request: " + ", ".join(
            f"{k} {1e6 * v / n:.0f}" for k, v in own.items())
              + f"; machine busy {100 * c['_machine_busy'] / max(1e-9, c['_machine_total']):.0f}%"
              f" (oha + other users: {1e6 * others / n:.0f} us/request)")
    print("== latency, 1 connection, sequential "
          f"({a.lat_n} requests each, 2 alternating halves)")
    for name in ("direct", "broker"):
        x = L[name]
        print(f"  {name:10s} p50 {x['p50_ms']:.3f} ms (halves {', '.join(f'{v:.3f}' for v in x['p50_rounds'])})"
              f"  p99 {x['p99_ms']:.3f} ms  statuses {x['statuses']}  errors {x['errors'] or 'none'}")
    print(f"== {a.tunnels} tunnels (CONNECT + TLS, then one GET each, held)")
    print(f"  broker RSS before: {res['rss_before_tunnels']['VmRSS'] / 1024:.1f} MB")
    for k in ("after_handshakes", "after_one_request_each"):
        x = tun[k]
        print(f"  {k:22s} open {x['open']}  VmRSS {x['VmRSS'] / 1024:.1f} MB  VmHWM "
              f"{x['VmHWM'] / 1024:.1f} MB  threads {x['Threads']}  fds {x['fds']}")
    print(f"  after close: VmRSS {res['rss_after_close']['VmRSS'] / 1024:.1f} MB")
    print(f"  GET statuses {tun['get_statuses']}  failures {tun['failures']} {tun['failure_samples']}")
    print(f"  handshake (CONNECT+TLS) first {tun['first_handshake_ms']:.2f} ms, median of the "
          f"rest {tun['median_handshake_ms']:.2f} ms")
    print(f"  distinct leaf certificates seen over {tun['after_handshakes']['open']} tunnels: "
          f"{tun['distinct_leaves']}")
    print(f"== machine: {os.cpu_count()} cpus; {res['idle_busy_pct']:.0f}% busy before start; "
          f"loadavg start {' '.join(res['loadavg_start'])}, end {' '.join(res['loadavg_end'])}")
    print(f"  broker alive at end: {res['broker_alive']}; broker log lines {res.get('broker_log_lines')}"
          f"; tail: {res.get('broker_log_tail')}")

    if res.get("perf"):
        print("== perf: broker CPU under load (self time, by dso then by symbol, >= 1.5%)")
        for line in res["perf"]:
            print("  " + line[:150])

    rows = [
        ("throughput broker / direct", f"{100 * br / d:.1f}% ({br:.0f} / {d:.0f} req/s)",
         ">= 40%", br / d >= 0.40),
        ("added median latency (1 conn)", f"{added:.3f} ms ({L['broker']['p50_ms']:.3f} - "
         f"{L['direct']['p50_ms']:.3f})", "<= 1 ms", added <= 1.0),
        ("broker / mitmproxy throughput", f"{br / m:.1f}x ({br:.0f} / {m:.0f} req/s)",
         ">= 5x", br / m >= 5),
        (f"RSS, {tun['after_one_request_each']['open']} open tunnels",
         f"{rss_mb:.1f} MB (peak {hwm_mb:.1f})", "<= 100 MB",
         rss_mb <= 100 and tun['after_one_request_each']['open'] == a.tunnels),
        ("leaf minted once per host", f"{res.get('leaves_minted')} minted (broker's count), "
         f"{tun['distinct_leaves']} distinct over {tun['after_handshakes']['open']} tunnels",
         "1", res.get("leaves_minted") == 1 and tun["distinct_leaves"] == 1),
    ]
    print()
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    print(f"{'figure':{w}s}  {'value':{v}s}  {'target':12s}  result")
    for name, val, tgt, ok in rows:
        print(f"{name:{w}s}  {val:{v}s}  {tgt:12s}  {'PASS' if ok else 'FAIL'}")
    print("(leaves: the broker prints how many it minted when it stops; one host is used\n"
          " throughout the run, by every tunnel)")
    sys.exit(0 if all(r[3] for r in rows) else 1)


if __name__ == "__main__":
    main()
