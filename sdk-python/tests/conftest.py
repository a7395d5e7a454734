"""Shared fixtures: a private AGENT_VAULT_HOME per test, the CLI binary, and
vaults the CLI writes for the SDK to read."""

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
VECTORS = REPO / "tests" / "vectors"


def cli_bin() -> str:
    b = os.environ.get("AGENT_VAULT_BIN") or str(REPO / "target" / "debug" / "agent-vault")
    if not os.access(b, os.X_OK):
        pytest.fail(f"the agent-vault CLI is needed at {b} (cargo build -p agent-vault, or set AGENT_VAULT_BIN)")
    return b


class Cli:
    """Runs the agent-vault binary with the test's AGENT_VAULT_HOME."""

    def __init__(self, home: pathlib.Path):
        self.bin = cli_bin()
        self.home = home

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_VAULT_")}
        env["AGENT_VAULT_HOME"] = str(self.home)
        return env

    def run(self, *args, cwd=None, input=None, check=True):
        p = subprocess.run(
            [self.bin, *map(str, args)],
            cwd=cwd,
            env=self.env(),
            input=input,
            capture_output=True,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"agent-vault {' '.join(map(str, args))} failed: {p.stderr.decode()}")
        return p

    def json(self, *args, cwd=None):
        return json.loads(self.run("--json", *args, cwd=cwd).stdout)


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    for k in list(os.environ):
        if k.startswith("AGENT_VAULT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AGENT_VAULT_HOME", str(h))
    for k, v in {
        "GIT_AUTHOR_NAME": "sdk-test",
        "GIT_AUTHOR_EMAIL": "sdk-test@example.invalid",
        "GIT_COMMITTER_NAME": "sdk-test",
        "GIT_COMMITTER_EMAIL": "sdk-test@example.invalid",
    }.items():
        monkeypatch.setenv(k, v)
    return h


@pytest.fixture
def cli(home):
    return Cli(home)


class Made:
    """A vault the CLI made: owner alice; agent bot reads app; agent viewer uses app."""

    def __init__(self, cli: Cli, root: pathlib.Path):
        self.cli = cli
        self.root = root
        cli.run("init", root, "--owner", "alice")
        self.run("set", "app/api-key", "sk_live_first")
        self.run("set", "app/db/password", "hunter2", "--description", "db")
        self.run("set", "ops/token", "ops-secret", "--expires", "2099-12-31")
        self.bot_key = cli.json("add-agent", "bot", cwd=root)["key_file"]
        self.viewer_key = cli.json("add-agent", "viewer", cwd=root)["key_file"]
        self.run("grant", "bot", "app")
        self.run("grant", "viewer", "app", "--mode", "use")
        cfg = (root / ".agent-vault" / "config.yaml").read_text()
        self.vault_id = [l.split(":", 1)[1].strip() for l in cfg.splitlines() if l.startswith("vault_id:")][0]
        self.owner_key = str(cli.home / "keys" / self.vault_id / "owner.key")

    def run(self, *args, **kw):
        return self.cli.run(*args, cwd=self.root, **kw)


@pytest.fixture
def made(cli, tmp_path):
    return Made(cli, tmp_path / "vault")
