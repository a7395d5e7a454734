#!/usr/bin/env python3
"""Warm in-process `get` of one secret through a Python SDK: prints figures.

    python3 bench/sdk.py --vault DIR --key FILE --path app/api-key [--runs 5000]

Works with this project's `agent_vault` (pyo3) and with agent-vault-sdk 0.1.0
from PyPI (same import name: run each from its own environment; bench/sdk.sh
does). Each run is one `get`, timed alone with perf_counter_ns; the first
`--warmup` runs are not counted.
"""

import argparse
import json
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vault", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--auto-pull", action="store_true")
    ap.add_argument("--label", default="python")
    a = ap.parse_args()

    import agent_vault

    v = agent_vault.Vault(a.vault, key_path=a.key, auto_pull=a.auto_pull)
    expect = v.get(a.path)
    for _ in range(a.warmup):
        v.get(a.path)
    ns = []
    get = v.get
    for _ in range(a.runs):
        t0 = time.perf_counter_ns()
        val = get(a.path)
        ns.append(time.perf_counter_ns() - t0)
        assert val == expect
    us = sorted(x / 1000 for x in ns)
    out = {
        "label": a.label,
        "sdk": getattr(agent_vault, "__version__", "?"),
        "runs": a.runs,
        "median_us": round(statistics.median(us), 1),
        "p90_us": round(us[int(len(us) * 0.9)], 1),
        "min_us": round(us[0], 1),
        "mean_us": round(statistics.fmean(us), 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
