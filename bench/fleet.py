#!/usr/bin/env python3
"""Benchmark brokers on many machines (issue 16). Prints figures.

  bench/fleet.sh [options]     e.g. --rounds 20 --duration 8 --conns 32

All on 127.0.0.1: an owner's vault pushed to a bare repository; two brokers,
each on its own clone, following it with `--pull-interval 1s`; Debian's
HAProxy in front of them with deploy/haproxy.cfg as it is; nginx upstream
(TLS, keep-alive) and oha as the load generator, as bench/broker.py does.

Figures:
  1. revocation: the owner revokes the agent's grant and pushes (`sync`);
     the time from the push returning to both replicas refusing a request,
     median and worst of --rounds, with a 1 s pull interval. The two
     replicas are polled in turn, a fresh tunnel each time (~10 ms apart).
  2. throughput through HAProxy to the two replicas, against one broker
     direct (oha, keep-alive, alternating rounds). Two replicas on one
     2-core machine add no CPU: this measures what the HAProxy hop costs.
  3. broker throughput with OTLP export on vs off (target >= 95%): the
     same broker setup, with `--audit-otlp` to a minimal OTLP/HTTP sink on
     the same machine, alternating. The sink is an nginx of its own that
     reads each batch and answers `{}` (a real collector runs elsewhere;
     this one costs the 2 shared cores under 1% of one). `--sink python`:
     a sink in this script that parses each batch and counts the records
     (parsing ~45 MB/s of JSON in Python takes a good part of a core from
     the broker, so its figure measures the sink as much as the broker).
"""

import argparse
import http.client
import http.server
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker as B  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


class Sink(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP logs receiver: counts records, answers {}."""

    records = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Sink.records += body.count(b'"timeUnixNano"')
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass


class Fleet(B.Bench):
    def setup_vault(self):
        home = os.path.join(self.tmp, "home")
        os.mkdir(home)
        self.env = dict(os.environ, AGENT_VAULT_HOME=home, GIT_CONFIG_NOSYSTEM="1",
                        GIT_CONFIG_GLOBAL=os.path.join(self.tmp, "gitconfig"),
                        GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.com",
                        GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.com")
        for k in ("AGENT_VAULT_KEY", "AGENT_VAULT_DIR"):
            self.env.pop(k, None)
        self.vault = self.tmp
        self.av("init", "V", "--owner", "o")
        self.vault = os.path.join(self.tmp, "V")
        self.av("set", "api/token", inp=B.TOKEN_VALUE)
        self.av("add-agent", "bot")
        self.av("grant", "bot", "api", "--mode", "use")
        self.av("broker", "init")
        self.av("service", "add", "api", "--bearer", "api/token",
                "--host", f"127.0.0.1:{self.up_port}")
        self.broker_ca = os.path.join(self.tmp, "broker-ca.pem")
        open(self.broker_ca, "w").write(self.av("ca", "cert"))
        self.token = self.av("token", "issue", "bot", "--ttl", "2h").strip()
        self.bare = os.path.join(self.tmp, "srv.git")
        subprocess.run(["git", "init", "--bare", "-q", self.bare], check=True, env=self.env)
        subprocess.run(["git", "remote", "add", "origin", "file://" + self.bare],
                       cwd=self.vault, check=True, env=self.env)
        self.av("push")

    def replica(self, name, *extra):
        clone = os.path.join(self.tmp, name)
        subprocess.run(["git", "clone", "-q", self.bare, clone], check=True, env=self.env)
        port, admin = B.free_port(), B.free_port()
        p = self.spawn(name, [self.a.bin, "proxy", "--listen", f"127.0.0.1:{port}",
                              "--admin", f"127.0.0.1:{admin}", "--allow-private-upstreams",
                              "--upstream-ca", self.up_ca, "--pull-interval", "1s", *extra],
                       cwd=clone, env=self.env)
        B.wait_port(port)
        self.watch[name] = p.pid
        return port, admin

    def haproxy(self, brokers):
        port = B.free_port()
        env = dict(os.environ, AV_LISTEN=f"127.0.0.1:{port}")
        for i, (p, admin) in enumerate(brokers, 1):
            env[f"AV_BROKER{i}"] = f"127.0.0.1:{p}"
            env[f"AV_BROKER{i}_ADMIN"] = str(admin)
        p = self.spawn("haproxy", [self.a.haproxy, "-db", "-f",
                                   os.path.join(REPO, "deploy", "haproxy.cfg")], env=env)
        B.wait_port(port)
        self.watch["haproxy"] = p.pid
        return port

    def status(self, port):
        """One GET through the broker on `port` on a fresh tunnel: the status
        (the CONNECT's, when the broker refused the tunnel)."""
        ctx = ssl.create_default_context(cafile=self.broker_ca)
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        import base64
        auth = base64.b64encode(f"bot:{self.token}".encode()).decode()
        c.set_tunnel("127.0.0.1", self.up_port, headers={"Proxy-Authorization": "Basic " + auth})
        try:
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            return r.status
        except OSError as e:
            return int(str(e).split()[-1]) if str(e).split()[-1].isdigit() else 0
        finally:
            c.close()

    def proxy(self, port):
        return f"http://bot:{self.token}@127.0.0.1:{port}"

    def nginx_sink(self):
        """An OTLP/HTTP sink in nginx (one worker): reads each batch, answers
        {}. Costs the shared cores less than the Python sink; it counts
        nothing, so the exporting broker's own count says what arrived."""
        d = os.path.join(self.tmp, "sink")
        os.mkdir(d)
        port = B.free_port()
        open(f"{d}/nginx.conf", "w").write(f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 10000000; keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 "{{}}"; }}
  }}
}}
""")
        p = self.spawn("nginx-sink", [self.a.nginx, "-c", f"{d}/nginx.conf", "-p", d,
                                      "-g", "daemon off;"])
        B.wait_port(port)
        self.watch["nginx-sink"] = p.pid
        return f"http://127.0.0.1:{port}/v1/logs"


def revocations(b, ports, rounds):
    took = []
    for i in range(rounds):
        # De-phase the push from the replicas' pull timers.
        time.sleep(0.37 * (i % 3))
        b.av("revoke", "bot", "api")
        b.av("sync")
        t0 = time.monotonic()
        refused = set()
        while len(refused) < len(ports):
            for p in ports:
                if p not in refused and b.status(p) != 200:
                    refused.add(p)
            if time.monotonic() - t0 > 30:
                raise RuntimeError("a replica never refused")
        took.append(time.monotonic() - t0)
        B.log(f"  revocation {i + 1}: {took[-1] * 1000:.0f} ms")
        b.av("grant", "bot", "api", "--mode", "use")
        b.av("sync")
        while any(b.status(p) != 200 for p in ports):
            time.sleep(0.05)
    return took


def throughput(b, named, a):
    """Alternating rounds of oha through each proxy (label: (port, the
    process whose CPU to count)); per label the median req/s and the median
    CPU that process spent per request (us)."""
    got = {n: [] for n in named}
    cpu = {n: [] for n in named}
    for _ in range(a.tp_rounds):
        for name, (port, proc) in named.items():
            r = b.oha(b.proxy(port), a.conns, duration=a.duration)
            errs = B.errors(r)
            if errs or set(B.status_dist(r)) - {"200"}:
                raise RuntimeError(f"{name}: {B.status_dist(r)} {errs}")
            got[name].append(B.ok_rps(r))
            n = r["summary"]["requestsPerSec"] * r["_cpu"]["_wall"]
            cpu[name].append(1e6 * r["_cpu"][proc] / n if n else 0)
            B.log(f"  {name}: {got[name][-1]:.0f} req/s, {proc} {cpu[name][-1]:.0f} us/request")
    return ({n: statistics.median(v) for n, v in got.items()},
            {n: statistics.median(v) for n, v in cpu.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--nginx", required=True)
    ap.add_argument("--haproxy", default="/usr/sbin/haproxy")
    ap.add_argument("--rounds", type=int, default=20, help="revocations timed")
    ap.add_argument("--tp-rounds", type=int, default=3, help="alternating throughput rounds")
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--sink", choices=["python", "nginx"], default="nginx",
                    help="the OTLP sink: an nginx of its own, or Python in this script "
                         "(counts the records it got)")
    ap.add_argument("--only", choices=["revocation", "haproxy", "otlp"],
                    help="run only this part (its replicas are started all the same)")
    a = ap.parse_args()
    a.oha_userinfo = False
    b = Fleet(a)
    try:
        b.start_nginx()
        b.setup_vault()
        r1, r2 = b.replica("replica-1"), b.replica("replica-2")
        lb = b.haproxy([r1, r2])
        if a.sink == "nginx":
            otlp = b.nginx_sink()
        else:
            sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
            threading.Thread(target=sink.serve_forever, daemon=True).start()
            otlp = f"http://127.0.0.1:{sink.server_address[1]}/v1/logs"
        r3, r3_admin = b.replica("replica-otlp", "--audit-otlp", otlp)

        part = lambda name: a.only in (None, name)  # noqa: E731
        if part("revocation"):
            B.log("revocation latency:")
            took = revocations(b, [r1[0], r2[0]], a.rounds)
        if part("haproxy"):
            B.log("throughput, HAProxy vs direct:")
            lb_tp, _ = throughput(b, {"haproxy -> 2 replicas": (lb, "haproxy"),
                                      "1 broker direct": (r1[0], "replica-1")}, a)
        if part("otlp"):
            B.log("throughput, OTLP export on vs off:")
            otlp_tp, otlp_cpu = throughput(b, {"otlp off": (r1[0], "replica-1"),
                                               "otlp on": (r3, "replica-otlp")}, a)
            time.sleep(1)  # the last batch

        if part("revocation"):
            print(f"== revocation, owner push -> both replicas refuse (pull interval 1 s, "
                  f"{len(took)} rounds)")
            print(f"   median {statistics.median(took) * 1000:.0f} ms, "
                  f"worst {max(took) * 1000:.0f} ms, best {min(took) * 1000:.0f} ms")
        if part("haproxy") or part("otlp"):
            print(f"== throughput (oha, keep-alive, {a.conns} connections, "
                  f"{a.tp_rounds}x{a.duration}s alternating, median)")
        if part("haproxy"):
            for n, v in lb_tp.items():
                print(f"   {n:24} {v:8.0f} req/s")
            ratio = lb_tp["haproxy -> 2 replicas"] / lb_tp["1 broker direct"]
            print(f"   haproxy / direct: {ratio:.1%}")
        if not part("otlp"):
            return
        for n, v in otlp_tp.items():
            print(f"   {n:24} {v:8.0f} req/s, broker CPU {otlp_cpu[n]:.0f} us/request")
        ratio = otlp_tp["otlp on"] / otlp_tp["otlp off"]
        print(f"   otlp on / off: {ratio:.1%} (target >= 95%: "
              f"{'PASS' if ratio >= 0.95 else 'FAIL'}); broker CPU per request on / off: "
              f"{otlp_cpu['otlp on'] / otlp_cpu['otlp off']:.1%}; records the sink got: "
              + (f"{Sink.records} (the sink runs in this script, on the same 2 cores)"
                 if a.sink == "python" else "not counted (nginx sink)"))
        # A record dropped (queue full) would cost the broker less: say so.
        metrics = http.client.HTTPConnection("127.0.0.1", r3_admin, timeout=10)
        metrics.request("GET", "/metrics")
        counts = {k: v for line in metrics.getresponse().read().decode().splitlines()
                  for k, v in [line.rsplit(" ", 1)] if line.startswith("agent_vault_audit_export")}
        print(f"   the otlp broker's own count: {counts}")
    finally:
        b.close()


if __name__ == "__main__":
    main()
