#!/usr/bin/env python3
"""Where the broker's own work goes, counted: user-space instructions per
brokered request, under callgrind (repeatable, unlike wall time on a shared
machine), and the functions that cost most (inclusive).

    python3 bench/broker_cg.py --bin target/release/agent-vault \\
        --oha bench/out/tools/bin/oha [--requests 3000]

Reuses bench/broker.py's set-up (nginx upstream over TLS reflecting the
credential, a fresh vault, the broker); only the broker runs under
valgrind. The counters are zeroed after a warm-up, so the figure is the
steady state plus the TLS handshakes of the measured oha run's connections.
Needs valgrind (Debian package).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker as bb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--nginx", default="nginx")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--top", type=int, default=40, help="functions listed")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("broker_cg.py: valgrind is required (apt-get install -y valgrind)")

    scratch = tempfile.mkdtemp(prefix="broker-cg-")
    out = os.path.join(scratch, "callgrind.out")
    # Only `proxy` runs under callgrind; the set-up commands run as they are.
    wrapper = os.path.join(scratch, "agent-vault")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\n"
                f'if [ "$1" = proxy ]; then exec valgrind --tool=callgrind -q '
                f'--callgrind-out-file={out} "{os.path.abspath(a.bin)}" "$@"; fi\n'
                f'exec "{os.path.abspath(a.bin)}" "$@"\n')
    os.chmod(wrapper, 0o755)
    args = argparse.Namespace(bin=wrapper, oha=a.oha, mitmdump="", nginx=a.nginx,
                              nginx_workers="1", keep=False, oha_userinfo=False)
    b = bb.Bench(args)
    try:
        b.start_nginx()
        b.start_broker()
        pid = str(b.watch["broker"])
        r = b.oha(b.broker_proxy, a.conns, n=a.warmup)
        bb.log(f"warm-up: statuses {bb.status_dist(r)}")
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        r = b.oha(b.broker_proxy, a.conns, n=a.requests)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        ok = bb.status_dist(r).get("200", 0)
        if ok != a.requests:
            sys.exit(f"broker_cg.py: {ok} of {a.requests} requests got a 200: "
                     f"{bb.status_dist(r)} {bb.errors(r)}")
        for _ in range(50):
            dumps = [f for f in os.listdir(scratch) if f.startswith("callgrind.out.")]
            if dumps:
                break
            time.sleep(0.1)
        dump = os.path.join(scratch, sorted(dumps)[-1])
        total = int(re.search(r"^summary: (\d+)", open(dump).read(), re.M).group(1))
        print(f"broker, user-space instructions: {total:,} for {a.requests} requests "
              f"({a.conns} connections) = {total / a.requests:,.0f} per request")
        rep = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=yes", dump],
                             capture_output=True, text=True).stdout
        shown = 0
        for line in rep.splitlines():
            m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S.*)", line)
            # The binary's own functions (libc's too); not the frames that
            # hold everything (thread start, the runtime's task loop).
            if (not m or "[" not in m.group(3) or "PROGRAM TOTALS" in line
                    or float(m.group(2)) > 95):
                continue
            name = re.sub(r"^.*?:(?=[A-Za-z_<])", "", m.group(3).split(" [")[0], count=1)
            per = int(m.group(1).replace(",", "")) / a.requests
            print(f"{per:10,.0f} /request {m.group(2):>6}%  {name[:140]}")
            shown += 1
            if shown == a.top:
                break
    finally:
        b.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
