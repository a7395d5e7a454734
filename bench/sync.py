#!/usr/bin/env python3
"""agent-vault remote benchmark: automatic pull on `get`, `sync` of a
10,000-secret vault between two owners, and repository growth under
grant/revoke churn.  Standard library only; prints figures and a PASS/FAIL
table.  Run it through bench/sync.sh (builds the binary if it is missing).

  1. get with automatic pull ON (inside the pull interval) vs --offline:
     interleaved runs, medians; target ON - OFF <= 1 ms.
  2. sync of a 10,000-secret vault, one changed secret on each side: owner A
     (the original vault) sets and syncs, owner B (a clone, own key) sets, and
     B's `sync --key` is timed (fetch, merge, re-sign, push); target <= 1000 ms.
  3. growth: 1,000 rounds of grant + revoke (each revoke re-encrypts the
     group's 1,000 secrets) on one agent: .git size, commits, per-round growth,
     median grant and revoke times, and the size after `git gc`.  Rounds stop
     at the time budget; the figures for 1,000 are then extrapolated (and
     labelled so).

Everything is on loopback: the remote is a bare repository (`git init
--bare`) reached through file:// (default) or `git daemon` on 127.0.0.1
(--transport daemon).  The binary is copied into the scratch directory first,
so a rebuild during the run does not change what is measured.  Before every
timed command that writes, os.sync() runs untimed (the tool calls syncfs).

Exit status: 0 all targets pass, 1 some target fails, 2 the run broke.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

GET_TARGET_MS = 1.0      # ON may be at most this much slower than OFF
SYNC_TARGET_MS = 1000.0
PULL_INTERVAL_S = 60     # the tool's default pull_interval_seconds
WINDOW_MARGIN_S = 45     # refresh the pull stamp once it is older than this
BUSY_PCT = 10


class Failed(Exception):
    pass


def fmt_ms(x):
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def fmt_bytes(n):
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def linfit(xs, ys):
    """Least squares y = a + b x."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def du_sb(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.rows = []      # (figure, value, detail, n, target, result)
        self.verdicts = []
        self.notes = []
        self.t_start = time.perf_counter()
        self._mark = self.foreign_cpu()
        self.foreign_total = 0.0
        self.busy0 = self.machine_busy()
        self.daemon = None
        self.probe_traces = []

        os.makedirs(os.path.join(self.work, "bin"), exist_ok=True)
        self.bin = os.path.join(self.work, "bin", "agent-vault")
        shutil.copy2(args.bin, self.bin)
        home = os.path.join(self.work, "home")
        os.makedirs(home, exist_ok=True)
        gitcfg = os.path.join(self.work, "gitconfig")
        open(gitcfg, "a").close()
        base = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_VAULT_")}
        base.update(
            HOME=home,                        # libgit2 reads $HOME/.gitconfig, not GIT_CONFIG_GLOBAL
            GIT_CONFIG_GLOBAL=gitcfg, GIT_CONFIG_NOSYSTEM="1",
            GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
            GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
            GIT_TERMINAL_PROMPT="0", LC_ALL="C",
        )
        self.base_env = base
        self.env = {}
        for who in ("a", "b", "c"):
            d = os.path.join(self.work, f"home-{who}")
            os.makedirs(d, exist_ok=True)
            self.env[who] = dict(base, AGENT_VAULT_HOME=d)

    # ---- accounting ------------------------------------------------------
    # Other work on the machine inflates the figures.  Machine-wide busy time
    # (/proc/stat) also counts the kernel's writeback of what this benchmark
    # writes, so the load of *other* work is taken from the user processes that
    # are not ours: utime+stime+cutime+cstime of every process outside our
    # process tree (kernel threads excluded), summed; its growth between two
    # marks is their CPU use (an exited process's time moves to its parent's
    # cutime, so it is not lost).
    def foreign_cpu(self):
        tick = os.sysconf("SC_CLK_TCK")
        procs = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            v = st[st.rindex(")") + 2:].split()
            if int(v[6]) & 0x00200000:  # PF_KTHREAD
                continue
            procs[int(d)] = (int(v[1]), sum(int(x) for x in v[11:15]) / tick)
        me = os.getpid()
        ours = {me}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _) in procs.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        return sum(t for pid, (_, t) in procs.items() if pid not in ours)

    def machine_busy(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")

    def foreign_since_mark(self):
        now = self.foreign_cpu()
        d = max(0.0, now - self._mark)
        self._mark = now
        self.foreign_total += d
        return d

    def say(self, msg):
        other = self.foreign_since_mark()
        print(f"[{time.strftime('%H:%M:%S')} other procs {other:5.1f} cpu-s] {msg}", flush=True)

    # ---- running ---------------------------------------------------------
    def run(self, cmd, *, cwd, env, capture=False, stdin=None, check=True, timeout=None):
        """Runs once; returns (ms, stdout bytes or None, stderr bytes)."""
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=cwd, env=env, input=stdin, timeout=timeout,
                           stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        ms = (time.perf_counter() - t0) * 1000.0
        if check and p.returncode != 0:
            raise Failed(f"command failed ({p.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{p.stderr.decode(errors='replace')[-2000:]}")
        return ms, p.stdout, p.stderr

    def av(self, who, cwd, *a, capture=False, mutating=False, extra_env=None, check=True):
        if mutating:
            os.sync()
        env = self.env[who] if not extra_env else dict(self.env[who], **extra_env)
        return self.run([self.bin, *a], cwd=cwd, env=env, capture=capture, check=check)

    def av_json(self, who, cwd, *a, mutating=True):
        _, out, _ = self.av(who, cwd, "--json", *a, capture=True, mutating=mutating)
        return json.loads(out)

    def git(self, cwd, *a, capture=True):
        _, out, _ = self.run(["git", *a], cwd=cwd, env=self.base_env, capture=capture)
        return out.decode() if out is not None else ""

    # ---- rows ------------------------------------------------------------
    def row(self, figure, value, detail="", n="", target="(reference)", ok=None):
        res = "" if ok is None else ("PASS" if ok else "FAIL")
        if ok is not None:
            self.verdicts.append(ok)
        self.rows.append((figure, value, detail, str(n), target, res))

    # ---- fixtures ----------------------------------------------------------
    def dotenv(self, n, prefix):
        path = os.path.join(self.work, f"{prefix}-{n}.env")
        with open(path, "w") as f:
            for i in range(n):
                f.write(f"{prefix}_{i:05d}=value-{i:05d}-{'x' * 40}\n")
        return path

    def remote_url(self, bare):
        if self.args.transport == "file":
            return "file://" + bare
        if self.daemon is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            self.daemon = subprocess.Popen(
                ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
                 f"--base-path={self.work}", "--listen=127.0.0.1", f"--port={port}",
                 self.work],
                env=self.base_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.daemon_port = port
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise Failed("git daemon did not start")
        rel = os.path.relpath(bare, self.work)
        return f"git://127.0.0.1:{self.daemon_port}/{rel}"

    def stop_daemon(self):
        if self.daemon is not None:
            self.daemon.terminate()
            try:
                self.daemon.wait(5)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
            self.daemon = None

    # ---- setup shared by 1 and 2 ---------------------------------------------
    def setup_pair_vault(self):
        n = self.args.secrets
        self.vA = os.path.join(self.work, "vault-a")
        info = self.av_json("a", self.work, "init", self.vA, "--owner", "alice")
        self.a_key = info["owner_key"]
        env10k = self.dotenv(n, "KEY")
        ms, _, _ = self.av("a", self.vA, "import", "big", env10k, mutating=True)
        self.say(f"  imported {n:,} secrets into vault A in {ms:.0f} ms")
        self.bare = os.path.join(self.work, "vault.git")
        self.git(self.work, "init", "--quiet", "--bare", self.bare)
        self.url = self.remote_url(self.bare)
        self.git(self.vA, "remote", "add", "origin", self.url)
        ms, _, _ = self.av("a", self.vA, "push", mutating=True)
        self.say(f"  pushed vault A to {self.url} in {ms:.0f} ms")

    # ---- 1. get: automatic pull inside the interval vs --offline ---------------
    def stamp(self):
        return os.path.join(self.vA, ".agent-vault", ".local", "last-pull")

    def stamp_mtime(self):
        try:
            return os.stat(self.stamp()).st_mtime_ns
        except FileNotFoundError:
            return None

    def bench_get(self):
        runs = self.args.get_runs
        v = self.vA
        name = "big/KEY_00042"
        want = b"value-00042-" + b"x" * 40
        if os.path.exists(self.stamp()):
            raise Failed("a pull stamp exists before the first get")
        # The first get does the one pull and writes the stamp.
        ms, out, err = self.av("a", v, "get", name, capture=True)
        if out != want:
            raise Failed(f"get printed {out!r}, expected {want!r}")
        if err.strip():
            raise Failed(f"the first get warned: {err.decode(errors='replace')}")
        if self.stamp_mtime() is None:
            raise Failed("the first get did not write .agent-vault/.local/last-pull "
                         "(automatic pull not engaged?)")
        self.say(f"  first get (does the pull): {ms:.1f} ms; stamp written")
        _, out, _ = self.av("a", v, "--offline", "get", name, capture=True)
        if out != want:
            raise Failed(f"get --offline printed {out!r}, expected {want!r}")

        # Reference: a get that is due to pull (stamp aged past the interval
        # with os.utime; the tool then fetches and re-stamps).
        due = []
        for _ in range(self.args.due_runs):
            old = time.time() - PULL_INTERVAL_S - 5
            os.utime(self.stamp(), (old, old))
            before = self.stamp_mtime()
            ms, _, err = self.av("a", v, "get", name)
            if self.stamp_mtime() == before:
                raise Failed("a get after the interval did not pull (stamp unchanged)")
            if err.strip():
                raise Failed(f"get with a due pull warned: {err.decode(errors='replace')}")
            due.append(ms)

        on, off = [], []
        discarded = refreshed = 0
        cmd_on = [self.bin, "get", name]
        cmd_off = [self.bin, "--offline", "get", name]
        env = self.env["a"]

        def timed(cmd):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=v, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            ms = (time.perf_counter() - t0) * 1000.0
            if p.returncode != 0:
                raise Failed(f"{' '.join(cmd)} failed ({p.returncode})")
            return ms

        for _ in range(5):  # warm-up, untimed
            timed(cmd_on)
            timed(cmd_off)
        i = 0
        while len(on) < runs or len(off) < runs:
            age = time.time() - self.stamp_mtime() / 1e9
            if age > WINDOW_MARGIN_S:
                # Close to the end of the interval: let one un-timed get pull
                # again (aging the stamp instead of waiting out the interval).
                old = time.time() - PULL_INTERVAL_S - 5
                os.utime(self.stamp(), (old, old))
                timed(cmd_on)
                refreshed += 1
            before = self.stamp_mtime()
            pair = [("on", cmd_on), ("off", cmd_off)]
            if i % 2:
                pair.reverse()
            got = {}
            for k, cmd in pair:
                got[k] = timed(cmd)
            if self.stamp_mtime() != before:
                discarded += 1          # a pull happened inside the pair: drop it
            else:
                on.append(got["on"])
                off.append(got["off"])
            i += 1
            if discarded > runs:
                raise Failed("the gets with automatic pull keep pulling: is the stamp honoured?")

        m_on, m_off = statistics.median(on), statistics.median(off)
        diff = m_on - m_off
        paired = statistics.median([a - b for a, b in zip(on, off)])
        self.say(f"  get ON median {m_on:.2f} ms, OFF {m_off:.2f} ms over {runs} interleaved "
                 f"pairs (discarded {discarded}, stamp refreshed {refreshed}x)")
        self.row("get, auto-pull ON (within interval)", f"{fmt_ms(m_on)} ms",
                 f"{fmt_ms(min(on))}..{fmt_ms(max(on))}", len(on))
        self.row("get, --offline", f"{fmt_ms(m_off)} ms",
                 f"{fmt_ms(min(off))}..{fmt_ms(max(off))}", len(off))
        self.row("  ON - OFF (difference of medians)", f"{diff:+.2f} ms",
                 f"median of pairwise diffs {paired:+.2f} ms", "",
                 f"<= {GET_TARGET_MS:.0f} ms", diff <= GET_TARGET_MS)
        if due:
            self.row("get when a pull is due (fetch, up to date)",
                     f"{fmt_ms(statistics.median(due))} ms",
                     f"{fmt_ms(min(due))}..{fmt_ms(max(due))}", len(due))
        self.hyperfine_get(name, cmd_on, cmd_off)

    def hyperfine_get(self, name, cmd_on, cmd_off):
        hf = shutil.which("hyperfine")
        if not hf or self.args.no_hyperfine:
            return
        # Start with a fresh stamp so the whole hyperfine run is inside the interval.
        old = time.time() - PULL_INTERVAL_S - 5
        os.utime(self.stamp(), (old, old))
        self.run(cmd_on, cwd=self.vA, env=self.env["a"])
        before = self.stamp_mtime()
        out = os.path.join(self.work, "hyperfine-get.json")
        p = subprocess.run(
            [hf, "-N", "--warmup", "5", "--runs", str(self.args.get_runs),
             "--export-json", out, "--style", "none",
             " ".join(cmd_on), " ".join(cmd_off)],
            cwd=self.vA, env=self.env["a"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if p.returncode != 0:
            self.say(f"  hyperfine failed (ignored): {p.stderr.decode(errors='replace')[-300:]}")
            return
        if self.stamp_mtime() != before:
            self.say("  hyperfine run crossed the pull interval: cross-check dropped")
            return
        res = json.load(open(out))["results"]
        a, b = (statistics.median(r["times"]) * 1000 for r in res)
        self.hf_line = (f"cross-check, hyperfine -N ({self.args.get_runs} runs each, not "
                        f"interleaved): get ON {a:.2f} ms, --offline {b:.2f} ms, "
                        f"difference {a - b:+.2f} ms")

    # ---- 2. sync of the 10,000-secret vault between two owners ----------------
    def setup_second_owner(self):
        self.bob_key = os.path.join(self.work, "bob.key")
        kg = self.av_json("b", self.work, "keygen", "--out", self.bob_key)
        self.av("a", self.vA, "add-owner", "bob", kg["recipient"],
                "--signing-key", kg["signing_key"], mutating=True)
        r = self.av_json("a", self.vA, "sync")
        if not r.get("pushed"):
            raise Failed(f"A's sync after add-owner did not push: {r}")
        self.vB = os.path.join(self.work, "vault-b")
        t0 = time.perf_counter()
        self.git(self.work, "clone", "--quiet", self.url, self.vB)
        self.say(f"  cloned the remote as owner B's vault in "
                 f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        _, out, _ = self.av("b", self.vB, "--offline", "get", "big/KEY_00007",
                            "--key", self.bob_key, capture=True)
        if out != b"value-00007-" + b"x" * 40:
            raise Failed(f"B cannot read with its own key: {out!r}")

    def sync_round(self, i, trace=False):
        """A changes one secret and syncs; B changes another; B's sync is timed."""
        a_name, a_val = f"big/A_{i:03d}", f"from-a-{i}"
        b_name, b_val = f"big/B_{i:03d}", f"from-b-{i}"
        self.av("a", self.vA, "set", a_name, a_val, mutating=True)
        r = self.av_json("a", self.vA, "sync")
        if not r.get("pushed"):
            raise Failed(f"A's sync did not push: {r}")
        self.av("b", self.vB, "set", b_name, b_val, "--key", self.bob_key, mutating=True)
        os.sync()
        extra = {"AGENT_VAULT_TRACE": "1"} if trace else None
        ms, out, err = self.av("b", self.vB, "--json", "sync", "--key", self.bob_key,
                               capture=True, extra_env=extra)
        r = json.loads(out)
        if not r.get("pushed") or "merged" not in str(r.get("pull")) or r.get("conflicts"):
            raise Failed(f"B's sync did not merge and push cleanly: {r}")
        # Both changes are in B's vault and on the remote.
        for name, val in ((a_name, a_val), (b_name, b_val)):
            _, got, _ = self.av("b", self.vB, "--offline", "get", name, "--key", self.bob_key,
                                capture=True)
            if got != val.encode():
                raise Failed(f"after B's sync, {name} is {got!r}, expected {val!r}")
        head_b = self.git(self.vB, "rev-parse", "HEAD").strip()
        head_r = self.git(self.bare, "rev-parse", "HEAD").strip()
        if head_b != head_r:
            raise Failed("B's sync reported a push but the remote is not at B's HEAD")
        # A catches up (fast-forward) so the next round starts from the same commit.
        r = self.av_json("a", self.vA, "pull")
        return ms, err.decode(errors="replace")

    def bench_sync(self):
        reps = self.args.sync_reps
        ms, _ = self.sync_round(0)
        self.say(f"  warm-up round (untimed): B's sync {ms:.0f} ms")
        times = []
        for i in range(1, reps + 1):
            ms, _ = self.sync_round(i)
            times.append(ms)
            self.say(f"  round {i}/{reps}: B's sync {ms:.0f} ms")
        m = statistics.median(times)
        self.row(f"sync, {self.args.secrets:,} secrets, 1 change each side", f"{fmt_ms(m)} ms",
                 f"{fmt_ms(min(times))}..{fmt_ms(max(times))}", len(times),
                 f"<= {SYNC_TARGET_MS:.0f} ms", m <= SYNC_TARGET_MS)
        # One more round with AGENT_VAULT_TRACE=1: where the time goes.
        ms, err = self.sync_round(reps + 1, trace=True)
        self.trace = (ms, [ln for ln in err.splitlines() if "trace:" in ln])
        # And the git transport on its own, for scale.
        fetch = [self.run(["git", "fetch", "--quiet", "origin"], cwd=self.vB,
                          env=self.base_env)[0] for _ in range(5)]
        self.row("  (git fetch, nothing new, for scale)", f"{fmt_ms(statistics.median(fetch))} ms",
                 "", len(fetch))

    # ---- 3. repository growth under grant/revoke churn ------------------------
    def repo_stats(self, v):
        packs = len([f for f in os.listdir(os.path.join(v, ".git", "objects", "pack"))
                     if f.endswith(".pack")])
        commits = int(self.git(v, "rev-list", "--count", "HEAD").strip())
        return du_sb(os.path.join(v, ".git")), commits, packs

    def bench_growth(self):
        target = self.args.rounds
        budget = self.args.budget
        gsize = self.args.group_size
        v = os.path.join(self.work, "vault-growth")
        self.av_json("c", self.work, "init", v, "--owner", "carol")
        self.av("c", v, "import", "g", self.dotenv(gsize, "G"), mutating=True)
        self.av("c", v, "add-agent", "bot", mutating=True)
        size0, commits0, packs0 = self.repo_stats(v)
        self.say(f"  start: .git {fmt_bytes(size0)} ({size0} B), {commits0} commits, "
                 f"{packs0} packs; up to {target} rounds or {budget} s")
        grants, revokes = [], []
        t0 = time.perf_counter()
        checkpoints = []
        while len(revokes) < target and time.perf_counter() - t0 < budget:
            grants.append(self.av("c", v, "grant", "bot", "g", mutating=True)[0])
            revokes.append(self.av("c", v, "revoke", "bot", "g", mutating=True)[0])
            n = len(revokes)
            if n % self.args.report_every == 0:
                size, _, packs = self.repo_stats(v)
                last = slice(-self.args.report_every, None)
                checkpoints.append((n, size, statistics.median(revokes[last])))
                self.say(f"  round {n}: {time.perf_counter() - t0:.0f} s, .git {fmt_bytes(size)}, "
                         f"{packs} packs; last {self.args.report_every}: grant "
                         f"{statistics.median(grants[last]):.0f} ms, revoke "
                         f"{statistics.median(revokes[last]):.0f} ms")
        elapsed = time.perf_counter() - t0
        rounds = len(revokes)
        # Still the right values after all that churn.
        last_name, last_val = f"g/G_{gsize - 1:05d}", f"value-{gsize - 1:05d}-{'x' * 40}".encode()
        _, out, _ = self.av("c", v, "--offline", "get", last_name, capture=True)
        if out != last_val:
            raise Failed(f"after {rounds} rounds, get printed {out!r}")
        size1, commits1, packs1 = self.repo_stats(v)
        per_round = (size1 - size0) / rounds
        self.growth_rounds = rounds
        complete = rounds >= target
        label = f"{rounds} rounds" + ("" if complete else f" of {target} (time budget {budget} s)")
        self.row(f"growth: .git before ({gsize:,}-secret group)", fmt_bytes(size0), f"{size0} B")
        self.row(f"growth: .git after {label}", fmt_bytes(size1),
                 f"{size1} B; {packs1} packs", rounds)
        self.row("growth: commits", f"{commits1}", f"was {commits0}: +{commits1 - commits0}")
        self.row("growth: per round (grant+revoke)", fmt_bytes(int(per_round)),
                 f"{per_round:.0f} B; {per_round / gsize:.0f} B per secret")
        self.row("grant (median over rounds)", f"{fmt_ms(statistics.median(grants))} ms",
                 f"{fmt_ms(min(grants))}..{fmt_ms(max(grants))}", rounds)
        self.row(f"revoke, {gsize:,} secrets (median over rounds)",
                 f"{fmt_ms(statistics.median(revokes))} ms",
                 f"{fmt_ms(min(revokes))}..{fmt_ms(max(revokes))}", rounds)
        k = max(1, min(100, rounds // 10))
        self.row(f"  revoke: first {k} vs last {k} rounds",
                 f"{fmt_ms(statistics.median(revokes[:k]))} -> "
                 f"{fmt_ms(statistics.median(revokes[-k:]))} ms", "", "")
        self.row("growth: wall time of the rounds", f"{elapsed:.0f} s",
                 f"{elapsed / rounds * 1000:.0f} ms per round incl. harness")
        if not complete:
            ext = size0 + per_round * target
            self.row(f"EXTRAPOLATED: .git after {target} rounds", fmt_bytes(int(ext)),
                     f"linear in rounds, from {rounds} measured", "")
            self.row(f"EXTRAPOLATED: commits after {target} rounds",
                     f"{commits0 + 2 * target}", "2 per round", "")
            # Per-round time grows with the history: fit grant+revoke time
            # linearly against the round number and add up the missing rounds.
            xs = list(range(1, rounds + 1))
            ys = [g + r for g, r in zip(grants, revokes)]
            a, b = linfit(xs, ys)
            ar, br = linfit(xs, revokes)
            harness = elapsed * 1000 / rounds - statistics.mean(ys)
            rest = sum(a + b * x + harness for x in range(rounds + 1, target + 1)) / 1000
            self.row(f"EXTRAPOLATED: revoke time at round {target}",
                     f"{fmt_ms(ar + br * target)} ms",
                     f"linear fit: {ar:.0f} ms + {br:.2f} ms/round", "")
            self.row(f"EXTRAPOLATED: wall time of {target} rounds",
                     f"{elapsed + rest:.0f} s", f"{elapsed:.0f} s measured + {rest:.0f} s fitted", "")
            self.notes.append(f"growth: only {rounds} of {target} rounds fit in the {budget:.0f} s "
                              "budget; the EXTRAPOLATED rows are extrapolations (size: linear "
                              "per round; time: linear fit of per-round time), not measurements")
        # The same command now, untimed-loop free: revoke on the grown
        # repository (many packs), one traced; then again after git gc.
        self.probe(v, f"{rounds} rounds, {packs1} packs")
        # git gc for comparison (the tool never runs it).
        os.sync()
        t = time.perf_counter()
        self.run(["git", "gc", "--quiet"], cwd=v, env=self.base_env, timeout=3600)
        gc_s = time.perf_counter() - t
        size2, commits2, packs2 = self.repo_stats(v)
        self.row("growth: .git after git gc --quiet (same repo)", fmt_bytes(size2),
                 f"{size2} B; {packs2} pack(s); gc took {gc_s:.0f} s", "")
        _, out, _ = self.av("c", v, "--offline", "get", last_name, capture=True)
        if out != last_val:
            raise Failed(f"after git gc, get printed {out!r}")
        self.probe(v, f"after git gc, {packs2} pack(s)")

    def probe(self, v, label, n=3):
        """n grant+revoke rounds, timed, then one traced revoke."""
        g, r = [], []
        for _ in range(n):
            g.append(self.av("c", v, "grant", "bot", "g", mutating=True)[0])
            r.append(self.av("c", v, "revoke", "bot", "g", mutating=True)[0])
        self.av("c", v, "grant", "bot", "g", mutating=True)
        ms, _, err = self.av("c", v, "revoke", "bot", "g", mutating=True, capture=True,
                             extra_env={"AGENT_VAULT_TRACE": "1"})
        phases = {}
        for ln in err.decode(errors="replace").splitlines():
            if "trace:" in ln:
                t, name = ln.split("trace:", 1)[1].split("ms", 1)
                phases[name.strip()] = float(t)
        top = phases.get("complete: rotations", 0.0)
        self.row(f"  grant / revoke now ({label})",
                 f"{fmt_ms(statistics.median(g))} / {fmt_ms(statistics.median(r))} ms",
                 f"traced revoke {ms:.0f} ms: {top:.0f} ms in traced phases, "
                 f"{ms - top:.0f} ms untraced", n)
        self.probe_traces.append((label, ms, err.decode(errors="replace")))

    # ---- report ----------------------------------------------------------------
    def report(self):
        hdr = ("figure", "value", "detail", "n", "target", "result")
        rows = self.rows
        w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(6)]
        sep = "  ".join("-" * x for x in w)
        out = ["=" * len(sep),
               f"agent-vault remote benchmark ({os.cpu_count()} cpus; transport "
               f"{self.args.transport}; binary {self.args.bin})",
               "=" * len(sep),
               "  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)), sep]
        for r in rows:
            out.append("  ".join(str(c).rjust(w[i]) if i == 1 else str(c).ljust(w[i])
                                 for i, c in enumerate(r)).rstrip())
        if getattr(self, "hf_line", None):
            out += ["", self.hf_line]
        if getattr(self, "trace", None):
            ms, lines = self.trace
            out += ["", f"one traced sync (AGENT_VAULT_TRACE=1) took {ms:.0f} ms; "
                        "its phases (nested; fetch and push are not traced):"]
            out += ["  " + ln.replace("agent-vault trace:", "").strip() for ln in lines]
        for label, ms, err in self.probe_traces:
            out += ["", f"one traced revoke ({label}) took {ms:.0f} ms; its phases:"]
            out += ["  " + ln.replace("agent-vault trace:", "").strip()
                    for ln in err.splitlines() if "trace:" in ln]
        out += ["", *self.notes] if self.notes else []
        wall = time.perf_counter() - self.t_start
        self.foreign_since_mark()
        share = self.foreign_total / (wall * (os.cpu_count() or 1)) * 100
        out.append("")
        busy = self.machine_busy() - self.busy0
        out.append(f"other user processes used {self.foreign_total:.1f} CPU-s during the {wall:.0f} s "
                   f"run ({share:.0f}% of the machine; the machine as a whole, this run and the "
                   f"kernel included, was {busy / (wall * (os.cpu_count() or 1)) * 100:.0f}% busy)"
                   + ("  ** the machine was busy: figures are inflated **" if share > BUSY_PCT
                      else ""))
        npass = sum(self.verdicts)
        out.append(f"targets: {npass} passed, {len(self.verdicts) - npass} failed")
        print("\n" + "\n".join(out), flush=True)
        return all(self.verdicts)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("AGENT_VAULT_BIN")
                    or os.path.join(REPO, "target", "release", "agent-vault"),
                    help="binary to measure (copied into the scratch directory first)")
    ap.add_argument("--work", help="scratch directory (default: a new mktemp directory)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--transport", choices=("file", "daemon"), default="file",
                    help="file:// remote, or git daemon on 127.0.0.1")
    ap.add_argument("--only", default="get,sync,growth",
                    help="comma-separated parts to run: get, sync, growth")
    ap.add_argument("--secrets", type=int, default=10_000, help="vault size for get and sync")
    ap.add_argument("--get-runs", type=int, default=100, help="runs of each get variant (>= 40)")
    ap.add_argument("--due-runs", type=int, default=5, help="gets with a pull due (reference)")
    ap.add_argument("--sync-reps", type=int, default=7, help="timed sync rounds (>= 5)")
    ap.add_argument("--rounds", type=int, default=1000, help="grant+revoke rounds")
    ap.add_argument("--budget", type=float, default=720,
                    help="seconds the growth rounds may take before extrapolating")
    ap.add_argument("--group-size", type=int, default=1000)
    ap.add_argument("--report-every", type=int, default=100)
    ap.add_argument("--no-hyperfine", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=120,
                    help="wait up to this many seconds for a quiet machine before starting (0: don't)")
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"sync.py: {args.bin} is not an executable (run bench/sync.sh to build it)")
    for tool in ("git", "du"):
        if not shutil.which(tool):
            sys.exit(f"sync.py: {tool} is required")
    made = args.work is None
    if made:
        args.work = tempfile.mkdtemp(prefix="agent-vault-sync.")
    args.work = os.path.realpath(args.work)
    parts = set(args.only.split(","))

    b = Bench(args)
    if args.wait_quiet > 0:
        # Start in a quiet moment if one comes soon: 5 s in which other user
        # processes use < 5% of the machine.
        waited = 0
        while True:
            c0 = b.foreign_cpu()
            time.sleep(5)
            if b.foreign_cpu() - c0 <= 5 * (os.cpu_count() or 1) * 0.05:
                break
            waited += 5
            if waited >= args.wait_quiet:
                print(f"machine still busy after {waited} s of waiting; starting anyway", flush=True)
                break
        b._mark = b.foreign_cpu()
    print(f"agent-vault sync bench: binary {args.bin} "
          f"({subprocess.run([b.bin, '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"built {time.strftime('%F %T', time.localtime(os.path.getmtime(args.bin)))}), "
          f"scratch {args.work}", flush=True)
    failure = None
    try:
        if parts & {"get", "sync"}:
            b.say(f"setup: vault A with {args.secrets:,} secrets and a bare remote "
                  f"({args.transport})")
            b.setup_pair_vault()
        if "get" in parts:
            b.say("1. get: automatic pull within the interval vs --offline (interleaved)")
            b.bench_get()
        if "sync" in parts:
            b.say("2. sync: second owner B (own key, a clone); timed: B's sync --key")
            b.setup_second_owner()
            b.bench_sync()
        if "growth" in parts:
            b.say(f"3. growth: grant + revoke rounds on a {args.group_size:,}-secret group")
            b.bench_growth()
    except (Failed, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
        failure = str(e)
    finally:
        b.stop_daemon()
    b.say("done")
    ok = b.report()
    if made and not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    elif args.keep:
        print(f"scratch kept: {args.work}")
    if failure:
        print(f"\nABORTED: {failure}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
