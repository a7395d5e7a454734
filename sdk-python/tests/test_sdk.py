"""The Python SDK against vaults the CLI writes, in the same test."""

import concurrent.futures
import datetime
import os
import subprocess
import threading

import pytest

import agent_vault
from agent_vault import (
    InvalidNameError,
    ManifestError,
    NotAuthorizedError,
    SecretNotFoundError,
    Vault,
    VaultError,
    VaultNotFoundError,
)


def iso(s):
    """RFC 3339 with nanoseconds (as the CLI prints) to a datetime (microseconds, truncated)."""
    head, _, frac = s.rstrip("Z").partition(".")
    frac = (frac + "000000")[:6]
    return datetime.datetime.fromisoformat(f"{head}.{frac}+00:00")


def test_exceptions_are_exported_and_related():
    for cls in (VaultNotFoundError, SecretNotFoundError, NotAuthorizedError, ManifestError, InvalidNameError):
        assert issubclass(cls, VaultError)
        assert cls.__name__ in agent_vault.__all__
    assert issubclass(VaultError, Exception)


def test_reads_what_the_cli_wrote_a_moment_earlier(made):
    v = Vault(made.root, auto_pull=False)  # owner key found in AGENT_VAULT_HOME
    assert v.whoami().role == "owner" and v.whoami().name == "alice"
    assert v.get("app/api-key") == "sk_live_first"
    made.run("set", "app/api-key", "sk_live_second")
    assert v.get("app/api-key") == "sk_live_second"
    made.run("set", "app/new-one", "fresh")
    assert v.get("app/new-one") == "fresh"
    assert v.get("ops/token") == "ops-secret"


def test_agent_reads_granted_group_only(made):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    assert (v.whoami().role, v.whoami().name) == ("agent", "bot")
    assert v.get("app/db/password") == "hunter2"
    with pytest.raises(NotAuthorizedError) as e:
        v.get("ops/token")
    assert str(e.value) == "bot is not granted group ops: an owner can run `agent-vault grant bot ops`"
    assert e.value.code == "NOT_AUTHORIZED"


def test_use_only_agent_cannot_read(made):
    v = Vault(made.root, key_path=made.viewer_key, auto_pull=False)
    with pytest.raises(NotAuthorizedError, match="may use group app but not read it") as e:
        v.get("app/api-key")
    assert "broker" in e.value.hint


def test_revoked_agent_loses_access(made):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    assert v.get("app/api-key") == "sk_live_first"
    made.run("revoke", "bot", "app")
    # The same open Vault sees the new manifest on its next read.
    with pytest.raises(NotAuthorizedError, match="bot is not granted group app"):
        v.get("app/api-key")
    with pytest.raises(NotAuthorizedError):
        Vault(made.root, key_path=made.bot_key, auto_pull=False).get("app/api-key")
    # Re-granted: the rotated group key is readable again.
    made.run("grant", "bot", "app")
    assert v.get("app/api-key") == "sk_live_first"


def test_key_resolution_like_the_cli(made, monkeypatch):
    key_text = open(made.bot_key).read()
    raw = [l for l in key_text.splitlines() if l.startswith("AGE-SECRET-KEY-")][0]
    assert Vault(made.root, key_str=raw, auto_pull=False).whoami().name == "bot"
    assert Vault(made.root, key_str=made.bot_key, auto_pull=False).whoami().name == "bot"
    monkeypatch.setenv("AGENT_VAULT_KEY", raw)
    assert Vault(made.root, auto_pull=False).whoami().name == "bot"
    monkeypatch.setenv("AGENT_VAULT_KEY", made.bot_key)
    assert Vault(made.root, auto_pull=False).whoami().name == "bot"
    # key_path wins over AGENT_VAULT_KEY, as --key does.
    assert Vault(made.root, key_path=made.owner_key, auto_pull=False).whoami().role == "owner"
    monkeypatch.delenv("AGENT_VAULT_KEY")
    assert Vault(made.root, auto_pull=False).whoami().role == "owner"
    with pytest.raises(VaultError, match="not both"):
        Vault(made.root, key_path=made.bot_key, key_str=raw)


def test_key_material_never_shown(made, tmp_path):
    raw = [l for l in open(made.bot_key).read().splitlines() if l.startswith("AGE-SECRET-KEY-")][0]
    v = Vault(made.root, key_str=raw, auto_pull=False)
    assert "AGE-SECRET-KEY" not in repr(v) and raw not in repr(v)
    assert "AGE-SECRET-KEY" not in str(v)
    # A key that belongs to nobody.
    other = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    other_raw = [l for l in other.splitlines() if l.startswith("AGE-SECRET-KEY-")][0]
    with pytest.raises(NotAuthorizedError) as e:
        Vault(made.root, key_str=other_raw)
    assert other_raw not in str(e.value) and "AGE-SECRET-KEY" not in repr(e.value)
    with pytest.raises(VaultError) as e:
        Vault(made.root, key_str="AGE-SECRET-KEY-1NOTAKEY")
    assert "NOTAKEY" not in str(e.value)


def test_values_never_in_errors(made):
    made.run("set", "app/bin", "--from-file", "/dev/stdin", input=b"\xff\xfe-sensitive")
    v = Vault(made.root, auto_pull=False)
    with pytest.raises(VaultError) as e:
        v.get("app/bin")
    assert type(e.value) is VaultError and e.value.code == "VAULT"
    assert "sensitive" not in str(e.value)
    assert "not UTF-8" in str(e.value)
    assert v.get_bytes("app/bin") == b"\xff\xfe-sensitive"


def test_binary_round_trip(made, tmp_path):
    data = bytes(range(256)) * 4
    f = tmp_path / "blob"
    f.write_bytes(data)
    made.run("set", "app/blob", "--from-file", f)
    assert Vault(made.root, auto_pull=False).get_bytes("app/blob") == data


def test_errors(made, tmp_path):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    with pytest.raises(SecretNotFoundError, match="^no secret app/nope$") as e:
        v.get("app/nope")
    assert e.value.code == "SECRET_NOT_FOUND" and "agent-vault list" in e.value.hint
    with pytest.raises(SecretNotFoundError):
        v.get_bytes("nogroup/x")
    for bad in ["../etc/passwd", "app", "app//x", "/app/x", "App/x", "app/.hidden", ""]:
        with pytest.raises(InvalidNameError) as e:
            v.get(bad)
        assert e.value.code == "INVALID_NAME"
    with pytest.raises(InvalidNameError):
        v.list_secrets("Bad Group")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VaultNotFoundError) as e:
        Vault(empty)
    assert e.value.code == "VAULT_NOT_FOUND"
    with pytest.raises(VaultError):
        Vault(made.root, key_path=tmp_path / "no-such.key")


def test_tampered_manifest(made):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    m = made.root / ".agent-vault" / "manifest.yaml"
    m.write_text(m.read_text().replace("viewer:\n    app: use", "viewer:\n    app: read"))
    with pytest.raises(ManifestError, match="not trusted") as e:
        v.get("app/api-key")
    assert e.value.code == "MANIFEST"
    with pytest.raises(ManifestError):
        Vault(made.root, key_path=made.bot_key)


def test_list_secrets_matches_cli(made):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    got = v.list_secrets()
    want = made.cli.json("list", cwd=made.root)
    assert [s.path for s in got] == [w["path"] for w in want]
    for s, w in zip(got, want):
        assert (s.group, s.name, s.description, s.generation) == (w["group"], w["name"], w["description"], w["generation"])
        assert s.created.tzinfo is not None
        assert s.created == iso(w["created"]) and s.updated == iso(w["updated"])
        assert s.error is None
    ops = v.list_secrets("ops")
    assert [s.path for s in ops] == ["ops/token"]
    assert ops[0].expires == datetime.datetime(2099, 12, 31, tzinfo=datetime.timezone.utc)
    assert v.list_secrets("nogroup") == []


def test_list_agents_and_whoami(made):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    agents = {a.name: a for a in v.list_agents()}
    assert agents["bot"].grants == {"app": "read"}
    assert agents["viewer"].grants == {"app": "use"}
    assert agents["bot"].recipient.startswith("age1")
    want = made.cli.json("list-agents", cwd=made.root)
    assert [(a["name"], a["grants"], a["recipient"]) for a in want] == [
        (a.name, a.grants, a.recipient) for a in v.list_agents()
    ]


def test_context_manager_drops_the_key(made):
    with Vault(made.root, key_path=made.bot_key, auto_pull=False) as v:
        assert v.get("app/api-key") == "sk_live_first"
        assert not v.closed
    assert v.closed
    assert "closed" in repr(v)
    with pytest.raises(VaultError, match="closed"):
        v.get("app/api-key")
    with pytest.raises(VaultError, match="closed"):
        v.whoami()
    # An exception inside the block propagates, and the key is dropped too.
    with pytest.raises(RuntimeError):
        with Vault(made.root, auto_pull=False) as w:
            raise RuntimeError("boom")
    assert w.closed


def test_one_vault_shared_by_threads(made):
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    paths = ["app/api-key", "app/db/password"] * 100
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        got = list(ex.map(v.get, paths))
    assert got == ["sk_live_first", "hunter2"] * 100

    # Reads while the manifest changes under them: every read either
    # succeeds with the value or fails with NotAuthorizedError, never anything else.
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            try:
                seen.append(v.get("app/api-key"))
            except NotAuthorizedError:
                seen.append("denied")
            except Exception as e:  # noqa: BLE001 - the test reports it
                seen.append(repr(e))

    ts = [threading.Thread(target=reader) for _ in range(4)]
    for t in ts:
        t.start()
    try:
        made.run("revoke", "bot", "app")
        made.run("grant", "bot", "app")
    finally:
        stop.set()
        for t in ts:
            t.join()
    assert seen and set(seen) <= {"sk_live_first", "denied"}, set(seen)


def test_reads_release_the_gil(made):
    """While one thread reads in a loop, another Python thread keeps running."""
    v = Vault(made.root, key_path=made.bot_key, auto_pull=False)
    counter = 0
    stop = threading.Event()

    def spin():
        nonlocal counter
        while not stop.is_set():
            counter += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        for _ in range(300):
            v.get("app/api-key")
    finally:
        stop.set()
        t.join()
    assert counter > 0


def test_git_url_vault(made, cli, tmp_path, home):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--bare", "-q", bare], check=True)
    subprocess.run(["git", "-C", made.root, "remote", "add", "origin", bare.as_uri()], check=True)
    made.run("push")
    url = bare.as_uri()

    v = Vault(url, key_path=made.bot_key)
    import hashlib

    clone = home / "clones" / hashlib.sha256(url.encode()).hexdigest()
    assert (clone / ".agent-vault" / "config.yaml").is_file()
    assert os.path.samefile(v.root, clone)
    assert v.get("app/api-key") == "sk_live_first"

    made.run("set", "app/api-key", "sk_live_pushed")
    made.run("push")
    assert v.pull() == "fast-forward"
    assert v.get("app/api-key") == "sk_live_pushed"
    assert v.pull() == "up-to-date"

    # A later open of the same URL pulls.
    made.run("set", "app/api-key", "sk_live_third")
    made.run("push")
    w = Vault(url, key_path=made.bot_key)
    assert w.get("app/api-key") == "sk_live_third"

    # Revoked upstream: the next pull takes access away.
    made.run("revoke", "bot", "app")
    made.run("push")
    w.pull()
    with pytest.raises(NotAuthorizedError):
        w.get("app/api-key")

    # An unreachable remote: the open warns, the read goes on from the clone.
    subprocess.run(["git", "-C", clone, "remote", "set-url", "origin", (tmp_path / "gone.git").as_uri()], check=True)
    with pytest.warns(RuntimeWarning, match="using the local copy"):
        x = Vault(url, key_path=made.owner_key)
    assert x.get("ops/token") == "ops-secret"


def test_bad_git_url(home, tmp_path):
    with pytest.raises(VaultNotFoundError, match="git clone"):
        Vault((tmp_path / "nothing.git").as_uri())
