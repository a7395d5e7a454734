#!/usr/bin/env python3
"""Benchmark the broker's rate limits (issue 13): throughput with limits
configured but not reached is within 5% of the same without limits.

    python3 bench/limits.py --bin target/release/agent-vault --oha bench/out/tools/bin/oha

Reuses bench/broker.py's set-up (nginx upstream over TLS, a fresh vault, the
broker, oha through it). One broker throughout; between runs the service's
limits are switched with `agent-vault service limits` (the broker reads the
signed list within 250 ms): `--rps 1000000 --burst 1000000 --in-flight
10000`, far above what oha reaches, or none. The two alternate in every
round, so a busy machine weighs on both alike. Prints figures and PASS/FAIL.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker as bb  # noqa: E402

LIMITS = ["--rps", "1000000", "--burst", "1000000", "--in-flight", "10000"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--nginx-workers", default="1")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.oha_userinfo = False
    b = bb.Bench(a)
    ok = True
    try:
        b.start_nginx()
        b.start_broker()
        bb.wait_port(b.broker_port)
        sides = {"no limits": [], "limits, not reached": []}
        for rnd in range(a.rounds):
            # Each round starts from the other side, so neither always goes first.
            order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
            for side in order:
                if side == "no limits":
                    b.av("service", "limits", "api", "--clear")
                else:
                    b.av("service", "limits", "api", *LIMITS)
                time.sleep(1.0)  # the broker re-reads the list within 250 ms
                shown = b.av("service", "limits", "api").strip().splitlines()[0]
                r = b.oha(b.broker_proxy, a.conns, duration=a.duration)
                sides[side].append(bb.ok_rps(r))
                print(f"round {rnd + 1}: {side:20s} {sides[side][-1]:8.0f} ok req/s   "
                      f"statuses {bb.status_dist(r)}   ({shown})")
        base = statistics.median(sides["no limits"])
        lim = statistics.median(sides["limits, not reached"])
        ratio = lim / max(1.0, base)
        print(f"median: no limits {base:.0f} ok req/s, limits not reached {lim:.0f} ok req/s: "
              f"{100 * ratio:.1f}%")
        print()
        passed = ratio >= 0.95
        print(f"{'PASS' if passed else 'FAIL'}  limits not reached >= 95% of none   {100 * ratio:.1f}%")
        ok &= passed
    finally:
        b.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
