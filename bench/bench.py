#!/usr/bin/env python3
"""agent-vault benchmark driver (run it through bench/run.sh).

Times whole CLI invocations (process start to exit) with time.perf_counter
around subprocess.run, N runs each, and prints medians in ms.  Commands that
change state (set, grant, revoke, import) get a fresh secret / agent / vault
on every timed run, so no run is a no-op.  Where two things are compared
(get vs `age -d`, grant on 10k vs on 100, ours vs 0.1.0) the runs are
interleaved, so drift on the machine hits both sides alike.  Before every
command that writes, os.sync() runs untimed: the tool calls syncfs, which would
otherwise also pay for whatever the benchmark itself wrote just before.
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time

BIG = 10_000
SMALL = 100
OLD_N = 1_000
BUSY_PCT = 10
BUSY_FLOOR_S = 0.1
MUTATING = {"set", "import", "grant", "revoke", "add-agent", "init"}


class Bench:
    def __init__(self, args):
        self.args = args
        self.ours = args.ours
        self.old = args.old
        self.work = args.work
        self.log = open(args.log, "a", encoding="utf-8")
        self.results = {}  # key -> list of ms
        self.foreign = {}  # key -> other processes' CPU-s during each run
        self.last_foreign = 0.0
        self._cpu_mark = self.cpu_seconds()
        self.foreign_total = 0.0
        self.t_start = time.perf_counter()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("AGENT_VAULT_")}
        self.env_ours = dict(base, AGENT_VAULT_HOME=os.path.join(self.work, "home-ours"))
        self.env_old = dict(base, HOME=os.path.join(self.work, "home-old"))
        os.makedirs(self.env_ours["AGENT_VAULT_HOME"], exist_ok=True)
        os.makedirs(self.env_old["HOME"], exist_ok=True)

    # ---- running -------------------------------------------------------
    @staticmethod
    def cpu_seconds():
        """(CPU-seconds the whole machine spent busy, CPU-seconds we and our
        children spent): their difference is other processes' load."""
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0))
        busy /= os.sysconf("SC_CLK_TCK")
        ours = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            ours += r.ru_utime + r.ru_stime
        return busy, ours

    def foreign_cpu(self):
        """CPU-seconds used by other processes since the last call."""
        busy, ours = self.cpu_seconds()
        b0, o0 = self._cpu_mark
        self._cpu_mark = (busy, ours)
        d = max(0.0, (busy - b0) - (ours - o0))
        self.foreign_total += d
        return d

    def say(self, msg):
        other = self.foreign_cpu()
        line = (f"[{time.strftime('%H:%M:%S')} other procs {other:5.1f} cpu-s] {msg}")
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, cmd, *, cwd, env, stdin=None, capture=False):
        """Run once, fail loudly on a non-zero exit. Returns (ms, stdout)."""
        c0 = self.cpu_seconds()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=env, input=stdin,
                           stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        ms = (time.perf_counter() - t0) * 1000.0
        c1 = self.cpu_seconds()
        # other processes' CPU-seconds while this command ran (tick-granular)
        self.last_foreign = max(0.0, (c1[0] - c0[0]) - (c1[1] - c0[1]))
        if p.returncode != 0:
            self.log.write(f"FAILED ({p.returncode}): {cmd}\n{p.stderr.decode(errors='replace')}\n")
            self.log.flush()
            raise SystemExit(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
                             f"{p.stderr.decode(errors='replace')[-2000:]}")
        return ms, (p.stdout if capture else None)

    def ours_cmd(self, vault, *a, stdin=None, capture=False):
        if a and a[0] in MUTATING:
            # The tool syncs the filesystem (syncfs) on writes: flush the
            # benchmark's own earlier writes first, untimed, so each run pays
            # only for its own data.
            os.sync()
        return self.run([self.ours, *a], cwd=vault, env=self.env_ours, stdin=stdin, capture=capture)

    def old_cmd(self, vault, *a, stdin=None, capture=False):
        if a and a[0] in MUTATING:
            os.sync()
        return self.run([self.old, *a], cwd=vault, env=self.env_old, stdin=stdin, capture=capture)

    def record(self, key, ms):
        self.results.setdefault(key, []).append(ms)
        self.foreign.setdefault(key, []).append(self.last_foreign)

    def busy_pct(self, key):
        """Share of the machine other processes used during this figure's runs."""
        ms, fc = self.results.get(key), self.foreign.get(key)
        if not ms or not fc:
            return None
        # /proc/stat counts in 10 ms ticks, and each process's exit leaves the
        # kernel some deferred work: below ~10 ticks in all, it is noise.
        # Short commands (a few ms) are too short for that accounting: judge
        # them by the per-phase "other procs" lines and the whole-run figure.
        if sum(fc) < BUSY_FLOOR_S or statistics.median(ms) < 20:
            return 0.0
        return sum(fc) / (sum(ms) / 1000.0 * (os.cpu_count() or 1)) * 100

    def med(self, key):
        v = self.results.get(key)
        return statistics.median(v) if v else None

    # ---- fixtures ------------------------------------------------------
    def dotenv(self, n, prefix="KEY"):
        path = os.path.join(self.work, f"{prefix}-{n}.env")
        if not os.path.exists(path):
            with open(path, "w") as f:
                for i in range(n):
                    f.write(f"{prefix}_{i:05d}=value-{i:05d}-{'x' * 40}\n")
        return path

    def new_vault(self, name):
        d = os.path.join(self.work, name)
        _, out = self.ours_cmd(self.work, "init", d, "--owner", "bench", "--json", capture=True)
        info = json.loads(out)
        return d, info["owner_key"]

    def add_agent(self, vault, name):
        _, out = self.ours_cmd(vault, "add-agent", name, "--json", capture=True)
        return json.loads(out)["key_file"]

    # ---- the 10k targets ----------------------------------------------
    def bench_import_and_build(self):
        env10k = self.dotenv(BIG)
        runs = self.args.import_runs
        main = None
        spare = []
        for r in range(runs):
            vault, owner_key = self.new_vault(f"v10k-{r}")
            ms, _ = self.ours_cmd(vault, "import", "big", env10k)
            self.record("import10k", ms)
            self.say(f"  import 10k run {r + 1}/{runs}: {ms:.0f} ms")
            if main is None:
                main = (vault, owner_key)
            else:
                spare.append(vault)
        self.spare_vaults = spare  # deleted at the end, not between timed runs
        vault, owner_key = main
        self.ours_cmd(vault, "import", "small", self.dotenv(SMALL, "SMALL"))
        return vault, owner_key

    def bench_get(self, vault, owner_key):
        n = self.args.get_runs
        reader_key = self.add_agent(vault, "reader")
        self.ours_cmd(vault, "grant", "reader", "big")
        names = [f"KEY_{i:05d}" for i in random.Random(1).sample(range(BIG), 10)]
        # correctness first: all three ways must print the same bytes
        name = names[0]
        gk = os.path.join(vault, ".agent-vault", "groups", "big.key.age")
        age_sh = 'age -d -i <(age -d -i "$1" "$2") "$3"'

        def age_cmd(nm):
            return ["bash", "--norc", "--noprofile", "-c", age_sh, "_", owner_key, gk,
                    os.path.join(vault, ".agent-vault", "secrets", "big", f"{nm}.age")]

        want = f"value-{int(name[4:]):05d}-{'x' * 40}".encode()
        _, a = self.ours_cmd(vault, "get", f"big/{name}", capture=True)
        _, b = self.ours_cmd(vault, "get", f"big/{name}", "--key", reader_key, capture=True)
        _, c = self.run(age_cmd(name), cwd=vault, env=self.env_ours, capture=True)
        for label, got in (("get owner", a), ("get agent", b), ("age -d", c)):
            if got != want:
                raise SystemExit(f"{label} printed {got!r}, expected {want!r}")

        variants = {
            "get_owner": lambda nm: self.ours_cmd(vault, "get", f"big/{nm}")[0],
            "get_agent": lambda nm: self.ours_cmd(vault, "get", f"big/{nm}", "--key", reader_key)[0],
            "age_2step": lambda nm: self.run(age_cmd(nm), cwd=vault, env=self.env_ours)[0],
        }
        for nm in names[:3]:  # warm-up, untimed
            for f in variants.values():
                f(nm)
        keys = list(variants)
        for i in range(n):
            nm = names[i % len(names)]
            random.Random(i).shuffle(keys)
            for k in keys:
                self.record(k, variants[k](nm))
        # hyperfine cross-check (optional, reported only)
        self.hyperfine_get(vault, owner_key, reader_key, gk, names[0])

    def hyperfine_get(self, vault, owner_key, reader_key, gk, name):
        hf = shutil.which("hyperfine")
        if not hf or self.args.no_hyperfine:
            return
        sec = os.path.join(vault, ".agent-vault", "secrets", "big", f"{name}.age")
        out = os.path.join(self.work, "hyperfine-get.json")
        cmds = [
            f"{self.ours} get big/{name}",
            f"{self.ours} get big/{name} --key {reader_key}",
            f"bash --norc --noprofile -c 'age -d -i <(age -d -i {owner_key} {gk}) {sec}'",
        ]
        p = subprocess.run([hf, "-N", "--warmup", "5", "--runs", str(self.args.get_runs),
                            "--export-json", out, "--style", "none", *cmds],
                           cwd=vault, env=self.env_ours,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode != 0:
            self.say(f"  hyperfine failed (ignored): {p.stderr.decode(errors='replace')[-300:]}")
            return
        res = json.load(open(out))["results"]
        for key, r in zip(("hf_get_owner", "hf_get_agent", "hf_age_2step"), res):
            self.results[key] = [t * 1000.0 for t in r["times"]]

    def bench_list(self, vault):
        for _ in range(2):
            self.ours_cmd(vault, "list", "--json")
        _, out = self.ours_cmd(vault, "list", "--json", capture=True)
        count = len(json.loads(out))
        if count < BIG:
            raise SystemExit(f"list --json returned {count} entries, expected >= {BIG}")
        for _ in range(self.args.list_runs):
            self.record("list_json", self.ours_cmd(vault, "list", "--json")[0])

    def bench_set(self, vault, key="set10k", group="big"):
        for i in range(self.args.set_runs):
            ms, _ = self.ours_cmd(vault, "set", f"{group}/SET_{key}_{i:04d}", f"v{i}-{'y' * 32}")
            self.record(key, ms)

    def bench_grant(self, vault):
        n = self.args.grant_runs
        agents = [f"ga{i:02d}" for i in range(n)]
        for a in agents:
            self.add_agent(vault, a)
        for i, a in enumerate(agents):
            order = [("big", "grant10k"), ("small", "grant100")]
            if i % 2:
                order.reverse()
            for group, key in order:
                self.record(key, self.ours_cmd(vault, "grant", a, group)[0])
        return agents

    def bench_revoke(self, vault, agents):
        for r in range(self.args.revoke_runs):
            ms, _ = self.ours_cmd(vault, "revoke", agents[r], "big")
            self.record("revoke10k", ms)
            self.say(f"  revoke on 10k run {r + 1}/{self.args.revoke_runs}: {ms:.0f} ms")

    # ---- ours vs 0.1.0 on 1,000 secrets --------------------------------
    def build_1k(self):
        # ours: import (one commit)
        vo, _ = self.new_vault("v1k-ours")
        self.ours_cmd(vo, "import", "big", self.dotenv(OLD_N, "K1K"))
        # 0.1.0: no import, no --vault; needs a git repo first; keys in $HOME/.agent-vault
        vd = os.path.join(self.work, "v1k-old")
        os.makedirs(vd)
        self.run(["git", "init", "-q", "."], cwd=vd, env=self.env_old)
        self.old_cmd(vd, "init")
        t0 = time.perf_counter()
        for i in range(OLD_N):
            self.old_cmd(vd, "set", f"big/K1K_{i:05d}", f"value-{i:05d}-{'x' * 40}")
        self.say(f"  0.1.0 vault filled by {OLD_N} sets in {time.perf_counter() - t0:.1f} s")
        return vo, vd

    def bench_vs_old(self):
        vo, vd = self.build_1k()
        ours = lambda *a: self.ours_cmd(vo, *a)[0]
        old = lambda *a: self.old_cmd(vd, *a)[0]
        names = [f"K1K_{i:05d}" for i in random.Random(2).sample(range(OLD_N), 10)]
        # the same bytes from both
        _, a = self.ours_cmd(vo, "get", f"big/{names[0]}", capture=True)
        _, b = self.old_cmd(vd, "get", f"big/{names[0]}", capture=True)
        if a != b:
            raise SystemExit(f"ours printed {a!r}, 0.1.0 printed {b!r}")
        for nm in names[:3]:
            ours("get", f"big/{nm}")
            old("get", f"big/{nm}")
        for i in range(self.args.get_runs):
            nm = names[i % len(names)]
            self.record("cmp_get_ours", ours("get", f"big/{nm}"))
            self.record("cmp_get_old", old("get", f"big/{nm}"))
        for i in range(self.args.set_runs):
            self.record("cmp_set_ours", ours("set", f"big/SET_{i:04d}", f"v{i}"))
            self.record("cmp_set_old", old("set", f"big/SET_{i:04d}", f"v{i}"))
        n = self.args.cmp_grant_runs
        agents = [f"ca{i:02d}" for i in range(n)]
        for a in agents:
            self.ours_cmd(vo, "add-agent", a)
            self.old_cmd(vd, "add-agent", a)
        for a in agents:
            self.record("cmp_grant_ours", ours("grant", a, "big"))
            self.record("cmp_grant_old", old("grant", a, "big"))
        for a in agents[: self.args.cmp_revoke_runs]:
            self.record("cmp_revoke_ours", ours("revoke", a, "big"))
            self.record("cmp_revoke_old", old("revoke", a, "big"))

    # ---- report --------------------------------------------------------
    def report(self):
        def f(x):
            if x is None:
                return "-"
            return f"{x:.1f}" if x < 100 else f"{x:.0f}"

        def stat(key):
            v = self.results.get(key) or []
            if not v:
                return "-", "-", "-"
            b = self.busy_pct(key)
            n = str(len(v)) + (f" *{b:.0f}%" if b is not None and b > BUSY_PCT else "")
            return f(statistics.median(v)), f"{f(min(v))}..{f(max(v))}", n

        rows = []  # (figure, median, range, n, target, result)
        verdicts = []

        def target_ms(label, key, limit):
            m = self.med(key)
            ok = m is not None and m <= limit
            verdicts.append(ok)
            med, rng, n = stat(key)
            over = "" if ok or m is None else f" ({m / limit:.1f}x over)"
            rows.append((label, med + " ms", rng, n, f"<= {f(limit)} ms",
                         ("PASS" if ok else "FAIL") + over))

        def target_ratio(label, num, den, limit):
            a, b = self.med(num), self.med(den)
            r = a / b if a and b else None
            ok = r is not None and r <= limit
            verdicts.append(ok)
            rows.append((label, f"{r:.2f}x" if r else "-", "", "", f"<= {limit}x",
                         "PASS" if ok else "FAIL"))

        def info(label, key):
            med, rng, n = stat(key)
            rows.append((label, med + " ms", rng, n, "(reference)", ""))

        if "get_owner" in self.results:
            info("age -d two-step (bash <(...))", "age_2step")
            target_ms("get, owner key", "get_owner", 5)
            target_ratio("  get owner / age two-step", "get_owner", "age_2step", 1.5)
            target_ms("get, agent key (--key)", "get_agent", 5)
            target_ratio("  get agent / age two-step", "get_agent", "age_2step", 1.5)
        if "set10k" in self.results:
            target_ms("set one secret", "set10k", 25)
        if "import10k" in self.results:
            target_ms("import 10,000 (fresh vault)", "import10k", 3000)
        if "grant10k" in self.results:
            info("grant on group of 100", "grant100")
            target_ms("grant on group of 10,000", "grant10k", 25)
            target_ratio("  grant 10k / grant 100", "grant10k", "grant100", 1.5)
        if "revoke10k" in self.results:
            target_ms("revoke on group of 10,000", "revoke10k", 3000)
        if "list_json" in self.results:
            target_ms("list --json", "list_json", 200)

        out = []
        hdr = ("figure (10k-secret vault)", "median", "min..max", "n", "target", "result")
        w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(6)]
        line = "  ".join("-" * x for x in w)
        out.append("=" * len(line))
        out.append(f"agent-vault benchmark  ({os.cpu_count()} cpus; ours: {self.ours})")
        out.append("=" * len(line))
        out.append("  ".join(str(h).ljust(w[i]) for i, h in enumerate(hdr)))
        out.append(line)
        for r in rows:
            out.append("  ".join(str(c).ljust(w[i]) if i != 1 else str(c).rjust(w[i])
                                 for i, c in enumerate(r)).rstrip())
        if "hf_get_owner" in self.results:
            out.append("")
            out.append("cross-check with hyperfine -N (median ms): "
                       f"get owner {f(self.med('hf_get_owner'))}, "
                       f"get agent {f(self.med('hf_get_agent'))}, "
                       f"age two-step {f(self.med('hf_age_2step'))}")
        if "cmp_get_ours" in self.results:
            out.append("")
            out.append(f"ours vs agent-vault 0.1.0, vault of {OLD_N:,} secrets in one group "
                       "(median ms)")
            h2 = ("operation", "ours", "0.1.0", "ours/0.1.0", "n")
            rows2 = []
            for op, label in (("get", "get (owner key)"), ("set", "set one secret"),
                              ("grant", "grant (new agent)"), ("revoke", "revoke")):
                a, b = self.med(f"cmp_{op}_ours"), self.med(f"cmp_{op}_old")
                n = str(len(self.results.get(f"cmp_{op}_ours", [])))
                busy = [self.busy_pct(f"cmp_{op}_{w}") or 0 for w in ("ours", "old")]
                if max(busy) > BUSY_PCT:
                    n += f" *{max(busy):.0f}%"
                rows2.append((label, f(a), f(b), f"{a / b:.2f}x" if a and b else "-", n))
            w2 = [max(len(r[i]) for r in rows2 + [h2]) for i in range(5)]
            out.append("  ".join(h.ljust(w2[i]) if i == 0 else h.rjust(w2[i])
                                 for i, h in enumerate(h2)))
            out.append("  ".join("-" * x for x in w2))
            for r in rows2:
                out.append("  ".join(c.ljust(w2[i]) if i == 0 else c.rjust(w2[i])
                                     for i, c in enumerate(r)))
        out.append("")
        out.append(f"n *P%: other processes used P% of the machine during that figure's "
                   f"runs (flagged above {BUSY_PCT}%, for runs of 20 ms or more): "
                   "treat it as inflated")
        wall = time.perf_counter() - self.t_start
        share = self.foreign_total / (wall * (os.cpu_count() or 1)) * 100
        out.append(f"other processes used {self.foreign_total:.1f} CPU-s during the "
                   f"{wall:.0f} s run ({share:.0f}% of the machine)"
                   + ("  ** WARNING: the machine was busy; figures are inflated **"
                      if share > 5 else ""))
        npass = sum(verdicts)
        out.append(f"targets: {npass} passed, {len(verdicts) - npass} failed")
        text = "\n".join(out)
        print("\n" + text, flush=True)
        self.log.write(text + "\n")
        with open(self.args.json_out, "w") as fj:
            json.dump({"results_ms": self.results, "bin": self.ours}, fj, indent=1)
        return all(verdicts)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--old", help="agent-vault 0.1.0 binary (omit to skip the comparison)")
    ap.add_argument("--work", required=True, help="scratch directory (vaults, key stores)")
    ap.add_argument("--log", required=True)
    ap.add_argument("--json-out", required=True)
    ap.add_argument("--get-runs", type=int, default=40)
    ap.add_argument("--list-runs", type=int, default=10)
    ap.add_argument("--set-runs", type=int, default=15)
    ap.add_argument("--import-runs", type=int, default=5)
    ap.add_argument("--grant-runs", type=int, default=9)
    ap.add_argument("--revoke-runs", type=int, default=3)
    ap.add_argument("--cmp-grant-runs", type=int, default=5)
    ap.add_argument("--cmp-revoke-runs", type=int, default=3)
    ap.add_argument("--no-hyperfine", action="store_true")
    args = ap.parse_args()

    b = Bench(args)
    t0 = time.perf_counter()
    failure = None
    try:
        b.say(f"building the 10k vault: import of {BIG:,} secrets x{args.import_runs} (timed)")
        vault, owner_key = b.bench_import_and_build()
        b.say("get: owner key, agent key, age two-step (interleaved)")
        b.bench_get(vault, owner_key)
        b.say("list --json")
        b.bench_list(vault)
        b.say("set")
        b.bench_set(vault)
        b.say("grant on 10k vs 100 (interleaved, a new agent each time)")
        agents = b.bench_grant(vault)
        b.say("revoke on 10k")
        b.bench_revoke(vault, agents)
        if args.old:
            b.say(f"ours vs 0.1.0 on {OLD_N:,} secrets")
            b.bench_vs_old()
    except SystemExit as e:  # a command failed: still print what was measured
        failure = str(e)
    b.say(f"benchmark phases took {time.perf_counter() - t0:.0f} s (other procs: cpu-s since the previous line)")
    for v in getattr(b, "spare_vaults", []):
        shutil.rmtree(v, ignore_errors=True)
    ok = b.report()
    if failure:
        print(f"\nABORTED: {failure}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
