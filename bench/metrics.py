#!/usr/bin/env python3
"""Benchmark the broker's metrics (issue 13, item 5): brokered throughput with
`proxy --admin` on and /metrics scraped once a second, against the same broker
without `--admin`. Target: on >= 95% of off.

    python3 bench/metrics.py --bin target/release/agent-vault --oha bench/out/tools/bin/oha

Reuses bench/broker.py's set-up (nginx upstream over TLS that reflects the
credential, so every response is scrubbed; a fresh vault; the broker). Two
brokers on the same vault, one with `--admin`, one without; the rounds
alternate between them, so a busy machine weighs on both alike. At the end the
scraped request count is checked against what oha sent through the broker
with metrics. Prints figures and PASS/FAIL.
"""

import argparse
import os
import re
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker as bb  # noqa: E402


class Scraper:
    """GETs /metrics once a second while running; counts scrapes and bytes."""

    def __init__(self, admin):
        self.url = f"http://{admin}/metrics"
        self.stop = threading.Event()
        self.scrapes, self.bytes, self.ms = 0, 0, []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def get(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        t = time.perf_counter()
        body = opener.open(self.url, timeout=5).read().decode()
        self.ms.append((time.perf_counter() - t) * 1000)
        return body

    def run(self):
        while not self.stop.wait(1.0):
            self.bytes += len(self.get())
            self.scrapes += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def brokered(text):
    """agent_vault_requests_total{service="api",status="200"} in a scrape."""
    m = re.search(r'^agent_vault_requests_total\{service="api",status="200"\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--nginx-workers", default="1")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.oha_userinfo = False
    b = bb.Bench(a)
    ok = True
    try:
        b.start_nginx()
        b.start_broker()  # without --admin
        off_proxy, off_pid = b.broker_proxy, b.watch.pop("broker")
        port, admin_port = bb.free_port(), bb.free_port()
        admin = f"127.0.0.1:{admin_port}"
        p = b.spawn("broker-admin", [a.bin, "proxy", "--listen", f"127.0.0.1:{port}",
                                     "--allow-private-upstreams", "--upstream-ca", b.up_ca,
                                     "--admin", admin], cwd=b.vault, env=b.env)
        bb.wait_port(port)
        bb.wait_port(admin_port)
        on_proxy = f"http://bot:{b.token}@127.0.0.1:{port}"
        sides = {"off": (off_proxy, off_pid), "on": (on_proxy, p.pid)}
        for name, (proxy, pid) in sides.items():
            b.watch = {"broker": pid}
            r = b.oha(proxy, 4, n=200)
            bb.log(f"warm-up {name}: statuses {bb.status_dist(r)} errors {bb.errors(r)}")

        rps = {"off": [], "on": []}
        sent_on = 0
        scrapes = None
        for rnd in range(a.rounds):
            for name, (proxy, pid) in sides.items():
                b.watch = {"broker": pid}
                if name == "on":
                    with Scraper(admin) as s:
                        r = b.oha(proxy, a.conns, duration=a.duration)
                    scrapes = s
                    sent_on += bb.status_dist(r).get("200", 0)
                else:
                    r = b.oha(proxy, a.conns, duration=a.duration)
                rps[name].append(bb.ok_rps(r))
                cpu = r["_cpu"]["broker"]
                extra = (f"  {scrapes.scrapes} scrapes, {scrapes.bytes // max(1, scrapes.scrapes)}"
                         f" B each, median {statistics.median(scrapes.ms):.1f} ms"
                         if name == "on" and scrapes.ms else "")
                print(f"round {rnd + 1} metrics {name:3s}: {rps[name][-1]:8.0f} ok req/s"
                      f"  broker cpu {cpu:.1f} s  statuses {bb.status_dist(r)}{extra}",
                      flush=True)
        # The broker with metrics counted every 200 oha got (warm-up included).
        final = Scraper(admin).get()
        counted = brokered(final)
        ratio = sum(rps["on"]) / max(1.0, sum(rps["off"]))
        print(f"throughput metrics on / off: {100 * ratio:.1f}%  (off {statistics.mean(rps['off']):.0f},"
              f" on {statistics.mean(rps['on']):.0f} ok req/s; {a.rounds} rounds of {a.duration} s,"
              f" {a.conns} connections)")
        print(f"requests_total{{api,200}} scraped: {counted}; 200s oha got through it: "
              f"{sent_on} + 200 warm-up")
        checks = [("metrics on >= 95% of off", ratio >= 0.95, f"{100 * ratio:.1f}%"),
                  ("every 200 counted", counted >= sent_on, f"{counted} >= {sent_on}")]
        print()
        for name, passed, fig in checks:
            print(f"{'PASS' if passed else 'FAIL'}  {name:28s} {fig}")
            ok &= passed
    finally:
        b.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
