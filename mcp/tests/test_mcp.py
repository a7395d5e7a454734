"""The MCP server driven by a client this project did not write: the Python
`mcp` package's stdio client. A vault built with the CLI, the real broker, and
a Python HTTPS upstream that echoes what it receives.

Run: target/sdk-venv/bin/python -m pytest -q mcp/tests
Update the schema snapshots: AGENT_VAULT_UPDATE_SCHEMAS=1 (also `cargo test -p agent-vault-mcp`).
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[2]
BIN = str(ROOT / "target" / "debug" / "agent-vault")
ECHO = ROOT / "tests" / "e2e" / "echo_server.py"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

TOKEN_VALUE = "tok_REAL_VALUE_123"
USER_VALUE = "user-1-secret"
DOCS_VALUE = "docs-readable-value"
OTHER_VALUE = "not-for-bot"


class World:
    pass


def _env(w):
    return {
        "AGENT_VAULT_HOME": str(w.home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(w.tmp / "gitconfig"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(w.tmp),
    }


def av(w, *args, stdin=b""):
    out = subprocess.run(
        [BIN, *args], cwd=w.vault, env=_env(w), input=stdin, capture_output=True
    )
    assert out.returncode == 0, f"agent-vault {' '.join(args)}: {out.stderr.decode()}"
    return out.stdout


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def world():
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"{BIN} is missing: run `cargo build -p agent-vault` first")
    td = tempfile.TemporaryDirectory()
    w = World()
    w.tmp = Path(td.name)
    w.home = w.tmp / "home"
    w.vault = w.tmp / "vault"
    w.vault.mkdir()
    procs = []
    try:
        av(w, "init", ".", "--owner", "alice")
        av(w, "set", "api/token", stdin=TOKEN_VALUE.encode())
        av(w, "set", "api/user", stdin=USER_VALUE.encode())
        av(w, "set", "docs/key", stdin=DOCS_VALUE.encode())
        av(w, "set", "other/x", stdin=OTHER_VALUE.encode())
        w.key = json.loads(av(w, "add-agent", "bot", "--json"))["key_file"]
        av(w, "grant", "bot", "api", "--mode", "use")
        av(w, "grant", "bot", "docs", "--mode", "read")
        av(w, "broker", "init")

        # An HTTPS echo upstream with its own CA.
        ca, ca_key = w.tmp / "up-ca.pem", w.tmp / "up-ca.key"
        cert, key, csr = w.tmp / "up.pem", w.tmp / "up.key", w.tmp / "up.csr"
        ext = w.tmp / "up.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
                "-subj", "/CN=mcp-test-ca",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
        w.upstream_log = w.tmp / "upstream.log"
        up = subprocess.Popen(
            [sys.executable, str(ECHO), str(cert), str(key), str(w.upstream_log)],
            stdout=subprocess.PIPE,
        )
        procs.append(up)
        w.up_port = int(up.stdout.readline().strip())
        av(w, "service", "add", "api", "--bearer", "api/token",
           "--host", f"127.0.0.1:{w.up_port}", "--substitute", "api/user")

        broker = subprocess.Popen(
            [BIN, "proxy", "--listen", "127.0.0.1:0", "--allow-private-upstreams",
             "--upstream-ca", str(ca)],
            cwd=w.vault, env=_env(w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        procs.append(broker)
        line = broker.stderr.readline().decode()
        assert "listening on" in line, f"broker did not start: {line}"
        w.broker = line.strip().rsplit(" ", 1)[-1]
        threading.Thread(target=broker.stderr.read, daemon=True).start()
        w.token = json.loads(av(w, "token", "issue", "bot", "--ttl", "10m", "--json"))["token"]
        w.audit = w.tmp / "mcp-audit.jsonl"
        yield w
    finally:
        for p in procs:
            p.kill()
            p.wait()
        td.cleanup()


def server(w, *extra):
    env = _env(w)
    env["AGENT_VAULT_KEY"] = w.key
    env["AGENT_VAULT_TOKEN"] = w.token
    return StdioServerParameters(
        command=BIN,
        args=["--offline", "mcp", "--broker", w.broker, "--audit", str(w.audit), *extra],
        env=env,
        cwd=str(w.vault),
    )


def session_run(w, fn, *extra):
    """Starts the server, initializes, and runs `fn(session)`."""
    result = {}

    async def main():
        async with stdio_client(server(w, *extra)) as (read, write):
            async with ClientSession(read, write) as s:
                result["init"] = await s.initialize()
                result["value"] = await fn(s)

    anyio.run(main)
    return result


def call(w, name, args=None, *extra):
    async def fn(s):
        return await s.call_tool(name, args or {})

    return session_run(w, fn, *extra)["value"]


def text(r):
    return "".join(c.text for c in r.content if getattr(c, "type", "") == "text")


def ok_json(r):
    assert not r.is_error, text(r)
    return json.loads(text(r))


def err_text(r):
    assert r.is_error, text(r)
    t = text(r)
    for v in (TOKEN_VALUE, USER_VALUE, DOCS_VALUE, OTHER_VALUE):
        assert v not in t
    return t


def test_initialize_and_tools_list(world):
    async def fn(s):
        return await s.list_tools()

    r = session_run(world, fn)
    assert r["init"].server_info.name == "agent-vault"
    tools = {t.name: t for t in r["value"].tools}
    assert sorted(tools) == [
        "agent_vault_get", "agent_vault_list", "agent_vault_proposal_status",
        "agent_vault_propose", "agent_vault_request", "agent_vault_whoami",
    ]
    for name, t in tools.items():
        assert len(t.description) > 80, name
        got = t.input_schema
        path = SCHEMAS / f"{name}.json"
        if os.environ.get("AGENT_VAULT_UPDATE_SCHEMAS"):
            path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        assert json.loads(path.read_text()) == got, (
            f"{name}'s schema changed; AGENT_VAULT_UPDATE_SCHEMAS=1 updates {path}"
        )


def test_whoami(world):
    v = ok_json(call(world, "agent_vault_whoami"))
    assert v["agent"] == "bot"
    assert v["groups"] == {"api": "use", "docs": "read"}
    assert [s["service"] for s in v["services"]] == ["api"]
    assert v["services"][0]["hosts"] == [f"127.0.0.1:{world.up_port}"]


def test_list(world):
    v = ok_json(call(world, "agent_vault_list"))
    got = {s["secret"]: s["access"] for s in v["secrets"]}
    assert got == {"api/token": "use", "api/user": "use", "docs/key": "read"}
    assert all(val not in json.dumps(v) for val in (TOKEN_VALUE, USER_VALUE, DOCS_VALUE))
    v = ok_json(call(world, "agent_vault_list", {"group": "docs"}))
    assert [s["secret"] for s in v["secrets"]] == ["docs/key"]
    assert "no grant" in err_text(call(world, "agent_vault_list", {"group": "other"}))


def test_get_allowed(world):
    r = call(world, "agent_vault_get", {"secret": "docs/key"})
    assert not r.is_error
    assert text(r) == DOCS_VALUE


def test_get_use_only_points_to_request(world):
    t = err_text(call(world, "agent_vault_get", {"secret": "api/token"}))
    assert "use-only" in t and "agent_vault_request" in t


def test_get_not_granted(world):
    t = err_text(call(world, "agent_vault_get", {"secret": "other/x"}))
    assert "no grant" in t


def test_get_not_found(world):
    t = err_text(call(world, "agent_vault_get", {"secret": "docs/missing"}))
    assert "no secret docs/missing" in t


def test_get_no_reveal(world):
    t = err_text(call(world, "agent_vault_get", {"secret": "docs/key"}, "--no-reveal"))
    assert "--no-reveal" in t


def test_malformed_arguments(world):
    t = err_text(call(world, "agent_vault_get", {}))
    assert "invalid arguments" in t and "secret" in t
    t = err_text(call(world, "agent_vault_get", {"secret": 42}))
    assert "invalid arguments" in t
    t = err_text(call(world, "agent_vault_get", {"secret": "no-slash"}))
    assert "GROUP/NAME" in t
    t = err_text(call(world, "agent_vault_request", {"method": "GET"}))
    assert "invalid arguments" in t and "url" in t
    t = err_text(call(world, "agent_vault_request", {"method": "GET", "url": "ftp://x/"}))
    assert "https://" in t


def test_request_through_broker_scrubs(world):
    r = call(world, "agent_vault_request", {
        "method": "POST",
        "url": f"https://127.0.0.1:{world.up_port}/echo",
        "headers": {"X-User": "{{secret:api/user}}", "Content-Type": "application/json"},
        "query": {"u": "{{secret:api/user}}", "plain": "a b"},
        "body": '{"who": "{{secret:api/user}}"}',
    })
    v = ok_json(r)
    assert v["status"] == 200
    everything = json.dumps(v)
    assert TOKEN_VALUE not in everything and USER_VALUE not in everything
    # The upstream did get the real values: the broker injected them.
    seen = [json.loads(l) for l in world.upstream_log.read_text().splitlines()]
    last = seen[-1]
    assert last["headers"]["authorization"] == f"Bearer {TOKEN_VALUE}"
    assert last["headers"]["x-user"] == USER_VALUE
    assert USER_VALUE in last["body"] and USER_VALUE in last["path"]
    assert "plain=a%20b" in last["path"]
    # The echo came back with the values scrubbed out.
    echoed = json.loads(v["body"])
    assert echoed["method"] == "POST"
    assert v["truncated"] is False


def test_request_body_cut(world):
    v = ok_json(call(world, "agent_vault_request", {
        "method": "POST",
        "url": f"https://127.0.0.1:{world.up_port}/big",
        "body": "x" * 5000,
    }, "--max-body", "100"))
    assert v["truncated"] is True and len(v["body"]) == 100


def test_request_host_not_allowed(world):
    t = err_text(call(world, "agent_vault_request", {
        "method": "GET", "url": "https://example.com/",
    }))
    assert "not a host any vault service names" in t and f"127.0.0.1:{world.up_port}" in t
    assert "type: urn:agent-vault:problem:host-not-covered" in t


def test_request_refused_by_the_broker_has_its_problem(world):
    # A placeholder the service does not list: the broker refuses it inside
    # the tunnel, with problem+json; the tool's error carries its details.
    t = err_text(call(world, "agent_vault_request", {
        "method": "GET",
        "url": f"https://127.0.0.1:{world.up_port}/x",
        "headers": {"X-Try": "{{secret:other/x}}"},
    }))
    assert "the broker refused the request (403)" in t
    assert "type: urn:agent-vault:problem:placeholder-refused" in t
    assert "title: Placeholder or credential refused" in t
    assert "may not use" in t


def test_unknown_tool(world):
    assert "no tool" in err_text(call(world, "agent_vault_nope"))


def test_audit_lines(world):
    call(world, "agent_vault_get", {"secret": "docs/key"})
    lines = [json.loads(l) for l in world.audit.read_text().splitlines()]
    assert lines, "no audit lines"
    last = lines[-1]
    assert last["tool"] == "agent_vault_get" and last["agent"] == "bot"
    assert last["secret"] == "docs/key" and last["ok"] is True and "time" in last
    assert any(l.get("host") == f"127.0.0.1:{world.up_port}" for l in lines)
    raw = world.audit.read_text()
    for v in (TOKEN_VALUE, USER_VALUE, DOCS_VALUE, OTHER_VALUE):
        assert v not in raw


def test_propose_then_an_owner_approves(world):
    # Last in the file: approving adds a service and a grant for bot.
    wx = "wx-key-9f8e7d"
    r = ok_json(call(world, "agent_vault_propose", {
        "message": "I need the weather API <b>for the forecast task</b>",
        "services": [{"name": "weather", "hosts": ["api.weather.test"],
                      "auth": "bearer", "secret": "weather/key"}],
        "slots": [{"secret": "weather/key", "description": "weather API key",
                   "obtain": "https://weather.test/account/keys"}],
    }))
    assert r["status"] == "pending"
    pid = r["id"]
    assert ok_json(call(world, "agent_vault_proposal_status", {"id": pid}))["status"] == "pending"
    assert pid in av(world, "proposals", "list").decode()
    # Only an owner approves: the value on standard input, never in argv.
    av(world, "proposals", "approve", pid, stdin=(wx + "\n").encode())
    st = ok_json(call(world, "agent_vault_proposal_status", {"id": pid}))
    assert st["status"] == "approved", st
    v = ok_json(call(world, "agent_vault_whoami"))
    assert v["groups"].get("weather") == "use", v
    assert "weather" in [s["service"] for s in v["services"]]
    # A use grant: the agent still cannot read the value.
    t = err_text(call(world, "agent_vault_get", {"secret": "weather/key"}))
    assert wx not in t
    assert wx not in world.audit.read_text()
