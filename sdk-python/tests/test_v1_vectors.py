"""A format version 1 vault (tests/vectors/v1, made by agent-vault 0.2.0) is
read alike by the CLI, the Python SDK and the Node SDK as it is, and again
after an owner's first write moved it to format 2 (issue 17)."""

import base64
import json
import os
import shutil
import subprocess

import pytest

from agent_vault import Vault, VaultError

from conftest import VECTORS, cli_bin

V1 = VECTORS / "v1"
EXPECTED = json.loads((V1 / "expected.json").read_text(encoding="utf-8"))
NODE_READER = VECTORS / "read.js"


@pytest.fixture
def v1(tmp_path, monkeypatch):
    root = tmp_path / "vault"
    home = tmp_path / "home"
    shutil.copytree(V1 / "vault", root)
    shutil.copytree(V1 / "home", home)
    for dirpath, dirs, files in os.walk(home):
        os.chmod(dirpath, 0o700)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o600)
    for k in list(os.environ):
        if k.startswith("AGENT_VAULT_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AGENT_VAULT_HOME", str(home))
    monkeypatch.setenv("AGENT_VAULT_OFFLINE", "1")
    (vault_id,) = os.listdir(home / "keys")
    keys = {
        "owner": home / "keys" / vault_id / "owner.key",
        **{a: home / "keys" / vault_id / "agents" / f"{a}.key" for a in ("reader", "user", "gone")},
    }
    return {"root": root, "keys": keys}


def cli(v1, *args, key="owner", input=None):
    return subprocess.run(
        [cli_bin(), "--vault", v1["root"], "--key", v1["keys"][key], "--offline", *args],
        capture_output=True,
        input=input,
        env=dict(os.environ),
    )


def node_reads(v1, cases):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the cross-language vectors")
    inp = {
        "vault": str(v1["root"]),
        "cases": [{"keyPath": str(v1["keys"][k]), "path": p} for k, p in cases],
        "listWith": None,
    }
    p = subprocess.run([node, NODE_READER], input=json.dumps(inp), capture_output=True, text=True, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["results"]


def config_format(v1):
    text = (v1["root"] / ".agent-vault" / "config.yaml").read_text()
    return next(line for line in text.splitlines() if line.startswith("format:"))


def all_read_alike(v1):
    values = EXPECTED["values"]
    cases = [("owner", p) for p in values] + [("reader", p) for p in EXPECTED["reader_may_read"]]
    node = node_reads(v1, cases + [("gone", p) for p in EXPECTED["gone_may_not_read"]])
    for i, (key, path) in enumerate(cases):
        want = values[path]
        c = cli(v1, "get", path, key=key)
        assert c.returncode == 0, c.stderr
        assert base64.b64encode(c.stdout).decode() == want, (key, path)
        with Vault(v1["root"], key_path=v1["keys"][key], auto_pull=False) as v:
            assert base64.b64encode(v.get_bytes(path)).decode() == want, (key, path)
        assert node[i]["ok"] and node[i]["base64"] == want, (key, path, node[i])
    # The revoked agent reads nothing, in all three.
    for j, path in enumerate(EXPECTED["gone_may_not_read"]):
        assert cli(v1, "get", path, key="gone").returncode != 0
        with pytest.raises(VaultError):
            with Vault(v1["root"], key_path=v1["keys"]["gone"], auto_pull=False) as v:
                v.get_bytes(path)
        assert not node[len(cases) + j]["ok"]


def test_v1_read_as_it_is_then_after_migration(v1):
    assert config_format(v1) == "format: 1"
    all_read_alike(v1)
    assert config_format(v1) == "format: 1", "a read migrated the vault"
    # The first owner write moves it to format 2.
    p = cli(v1, "set", "ops/after", input=b"after-migration")
    assert p.returncode == 0, p.stderr
    assert config_format(v1) == "format: 2"
    all_read_alike(v1)
    with Vault(v1["root"], key_path=v1["keys"]["owner"], auto_pull=False) as v:
        assert v.get("ops/after") == "after-migration"
    # A lazy revoke after migration: the reader is out, the values stay.
    assert cli(v1, "revoke", "reader", "app").returncode == 0
    with Vault(v1["root"], key_path=v1["keys"]["owner"], auto_pull=False) as v:
        for path, want in EXPECTED["values"].items():
            assert base64.b64encode(v.get_bytes(path)).decode() == want
    with pytest.raises(VaultError):
        with Vault(v1["root"], key_path=v1["keys"]["reader"], auto_pull=False) as v:
            v.get_bytes("app/api-key")
