#!/usr/bin/env python3
"""Benchmark `agent-vault run --isolate` against its targets (issue 12):
start-up adds at most 30 ms to `run -- true`, and brokered throughput from
inside the isolation is at least 90% of the same from outside.

    python3 bench/isolate.py --bin target/release/agent-vault --oha bench/out/tools/bin/oha

Reuses bench/broker.py's set-up (nginx upstream over TLS, a fresh vault, the
broker, here also on a Unix socket). Alternates the two sides in each round,
so a busy machine weighs on both alike. Prints figures and PASS/FAIL.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker as bb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--nginx-workers", default="1")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--starts", type=int, default=20, help="runs of each start-up")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.oha_userinfo = False
    b = bb.Bench(a)
    b.unix = os.path.join(b.tmp, "broker.sock")
    ok = True
    try:
        b.start_nginx()
        b.start_broker()
        bb.wait_port(b.broker_port)
        base = [a.bin, "run", "--agent", "bot", "--proxy", f"127.0.0.1:{b.broker_port}",
                "--socket", b.unix]

        def run(extra, cmd):
            return subprocess.run(base + extra + ["--"] + cmd, cwd=b.vault, env=b.env,
                                  capture_output=True, text=True)

        # ---- start-up: `run -- true` and `run --isolate -- true`, alternating
        plain, iso = [], []
        for _ in range(a.starts):
            for side, extra in ((plain, []), (iso, ["--isolate"])):
                t = time.perf_counter()
                r = run(extra, ["true"])
                side.append((time.perf_counter() - t) * 1000)
                if r.returncode:
                    raise RuntimeError(f"run {extra}: {r.stderr.strip()}")
        p50p, p50i = statistics.median(plain), statistics.median(iso)
        print(f"start-up  run -- true: {p50p:6.1f} ms   run --isolate -- true: {p50i:6.1f} ms"
              f"   added: {p50i - p50p:5.1f} ms (medians of {a.starts})")

        # ---- throughput through the broker: outside (TCP) and inside (the
        # listener handed to the broker; HTTPS_PROXY inside holds no token)
        url = f"https://127.0.0.1:{b.up_port}/"
        oha = [a.oha, "--no-tui", "--output-format", "json", "--insecure",
               "-c", str(a.conns), "-z", f"{a.duration}s"]
        out_rps, in_rps = [], []
        for rnd in range(a.rounds):
            r = b.oha(b.broker_proxy, a.conns, duration=a.duration)
            out_rps.append(bb.ok_rps(r))
            script = " ".join(oha) + ' -x "$HTTPS_PROXY" ' + url
            r = run(["--isolate"], ["sh", "-c", script])
            if r.returncode:
                raise RuntimeError(f"oha inside: {r.stderr.strip()[-2000:]}")
            j = json.loads(r.stdout)
            in_rps.append(bb.ok_rps(j))
            print(f"round {rnd + 1}: outside {out_rps[-1]:8.0f} ok req/s   inside "
                  f"{in_rps[-1]:8.0f} ok req/s   statuses inside {bb.status_dist(j)}")
        ratio = sum(in_rps) / max(1.0, sum(out_rps))
        print(f"throughput inside / outside: {100 * ratio:.1f}%")
        print()
        checks = [("start-up added <= 30 ms", p50i - p50p <= 30.0, f"{p50i - p50p:.1f} ms"),
                  ("inside >= 90% of outside", ratio >= 0.9, f"{100 * ratio:.1f}%")]
        for name, passed, fig in checks:
            print(f"{'PASS' if passed else 'FAIL'}  {name:28s} {fig}")
            ok &= passed
    finally:
        b.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
