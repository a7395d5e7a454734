"""One behaviour in three languages: the CLI, the Python SDK and the Node SDK
read the fixture vault of tests/vectors and must agree on every value, every
piece of metadata and every failure (code and message)."""

import base64
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from agent_vault import Vault, VaultError

from conftest import VECTORS, cli_bin

EXPECTED = json.loads((VECTORS / "expected.json").read_text(encoding="utf-8"))
NODE_READER = VECTORS / "read.js"


@pytest.fixture
def vec(tmp_path, monkeypatch):
    """A copy of the vectors (readers write trust pins; some cases tamper)."""
    root = tmp_path / "vault"
    home = tmp_path / "home"
    shutil.copytree(VECTORS / "vault", root)
    shutil.copytree(VECTORS / "home", home)
    # git does not keep 0600: restore what the key store expects.
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
        **{a: home / "keys" / vault_id / "agents" / f"{a}.key" for a in ("reader", "user", "outsider")},
    }
    stranger = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    keys["stranger"] = tmp_path / "stranger.key"
    keys["stranger"].write_text(stranger)
    keys["stranger"].chmod(0o600)
    return {"root": root, "home": home, "keys": keys}


def tamper(root: pathlib.Path, how: str):
    d = root / ".agent-vault"
    if how == "manifest":
        m = d / "manifest.yaml"
        text = m.read_text()
        assert "user:\n    app: use" in text
        m.write_text(text.replace("user:\n    app: use", "user:\n    app: read"))
    elif how.startswith("flip-byte:"):
        f = d / how.split(":", 1)[1]
        b = bytearray(f.read_bytes())
        b[-1] ^= 0x01
        f.write_bytes(bytes(b))
    elif how.startswith("truncate:"):
        f = d / how.split(":", 1)[1]
        f.write_bytes(f.read_bytes()[:40])
    else:
        raise AssertionError(how)


def via_cli(vec, key, path):
    p = subprocess.run(
        [cli_bin(), "--vault", vec["root"], "--key", vec["keys"][key], "--offline", "get", path],
        capture_output=True,
        env=dict(os.environ),
    )
    if p.returncode == 0:
        return {"ok": True, "base64": base64.b64encode(p.stdout).decode()}
    first = p.stderr.decode().splitlines()[0]
    assert first.startswith("agent-vault: error: "), first
    return {"ok": False, "message": first[len("agent-vault: error: "):]}


def via_python(vec, key, path):
    try:
        v = Vault(vec["root"], key_path=vec["keys"][key], auto_pull=False)
    except VaultError as e:
        return {"ok": False, "code": e.code, "message": str(e), "cls": type(e).__name__}
    with v:
        try:
            return {"ok": True, "base64": base64.b64encode(v.get_bytes(path)).decode()}
        except VaultError as e:
            return {"ok": False, "code": e.code, "message": str(e), "cls": type(e).__name__}


def via_node(vec, cases, list_with=None):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the cross-language vectors")
    inp = {
        "vault": str(vec["root"]),
        "cases": [{"keyPath": str(vec["keys"][k]), "path": p} for k, p in cases],
        "listWith": str(vec["keys"][list_with]) if list_with else None,
    }
    p = subprocess.run([node, NODE_READER], input=json.dumps(inp), capture_output=True, text=True, env=dict(os.environ))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


CLASS_OF = {
    "NOT_AUTHORIZED": "NotAuthorizedError",
    "SECRET_NOT_FOUND": "SecretNotFoundError",
    "INVALID_NAME": "InvalidNameError",
    "MANIFEST": "ManifestError",
    "VAULT_NOT_FOUND": "VaultNotFoundError",
    "VAULT": "VaultError",
}


def expected_b64(item):
    if "base64" in item:
        return item["base64"]
    return base64.b64encode(item["utf8"].encode("utf-8")).decode()


def test_values_alike(vec):
    cases = [(k, item["path"]) for item in EXPECTED["values"] for k in item["readers"]]
    node = via_node(vec, cases, list_with="reader")["results"]
    i = 0
    for item in EXPECTED["values"]:
        for k in item["readers"]:
            want = expected_b64(item)
            assert via_cli(vec, k, item["path"]) == {"ok": True, "base64": want}, (k, item)
            assert via_python(vec, k, item["path"]) == {"ok": True, "base64": want}, (k, item)
            assert node[i]["ok"] and node[i]["base64"] == want, (k, item, node[i])
            assert node[i]["whoami"] == EXPECTED["whoami"][k]
            i += 1


def test_text_values_alike(vec):
    with Vault(vec["root"], key_path=vec["keys"]["owner"], auto_pull=False) as v:
        for item in EXPECTED["values"]:
            if "utf8" in item:
                assert v.get(item["path"]) == item["utf8"]
        with pytest.raises(VaultError, match="not UTF-8"):
            v.get("app/binary")


def test_metadata_alike(vec):
    # The CLI now, the CLI when make.sh ran, Python, Node: one listing.
    p = subprocess.run([cli_bin(), "--vault", vec["root"], "--offline", "--json", "list"], capture_output=True, check=True)
    cli_list = json.loads(p.stdout)
    assert cli_list == json.loads((VECTORS / "list.json").read_text())
    node = via_node(vec, [], list_with="reader")
    keys = ("path", "group", "name", "created", "updated", "expires", "description", "generation")
    node_list = [{k: s.get(k) for k in keys} for s in node["list"]]
    assert node_list == [{k: s.get(k) for k in keys} for s in cli_list]
    # Written before descriptions and expiry were signed: shown as unverified.
    assert all(s["metadata_signed"] is False for s in cli_list)

    from test_sdk import iso

    with Vault(vec["root"], key_path=vec["keys"]["reader"], auto_pull=False) as v:
        py_list = v.list_secrets()
        assert len(py_list) == len(cli_list)
        for s, w in zip(py_list, cli_list):
            assert (s.path, s.group, s.name, s.description, s.generation) == (
                w["path"], w["group"], w["name"], w["description"], w["generation"])
            assert s.created == iso(w["created"]) and s.updated == iso(w["updated"])
            assert s.expires == (iso(w["expires"]) if w["expires"] else None)
        agents = [(a.name, a.recipient, a.grants) for a in v.list_agents()]
    cli_agents = json.loads((VECTORS / "agents.json").read_text())
    assert agents == [(a["name"], a["recipient"], a["grants"]) for a in cli_agents]
    assert [(a["name"], a["recipient"], a["grants"]) for a in node["agents"]] == agents


@pytest.mark.parametrize("case", EXPECTED["failures"], ids=lambda c: c["name"])
def test_failures_alike(vec, case):
    if "tamper" in case:
        tamper(vec["root"], case["tamper"])
    key, path = case["key"], case["path"]
    c = via_cli(vec, key, path)
    py = via_python(vec, key, path)
    (nd,) = via_node(vec, [(key, path)])["results"]
    assert not c["ok"] and not py["ok"] and not nd["ok"], (c, py, nd)
    # Same message in all three; the same code and class in both SDKs.
    assert py["message"] == c["message"] == nd["message"], (c, py, nd)
    assert py["code"] == nd["code"] == case["code"], (py, nd)
    assert py["cls"] == nd["cls"] == CLASS_OF[case["code"]]
    if "message" in case:
        assert c["message"] == case["message"]
    # No value of the vault appears in any message.
    for item in EXPECTED["values"]:
        if "utf8" in item:
            assert item["utf8"] not in c["message"]
