"""MCP server figures (issue 5): 1,000 sequential agent_vault_get calls over
one stdio session, and agent_vault_request (through the broker) against a
direct HTTPS request to the same local upstream. Prints medians.

Run: target/sdk-venv/bin/python bench/mcp_bench.py   (needs the `mcp` package and a
release build: cargo build --release -p agent-vault)
"""
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
from pathlib import Path


import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = os.environ.get("AGENT_VAULT_BIN", str(ROOT / "target" / "release" / "agent-vault"))
ECHO = ROOT / "tests" / "e2e" / "echo_server.py"
GETS = int(os.environ.get("GETS", "1000"))
REQUESTS = int(os.environ.get("REQUESTS", "200"))


def main():
    td = tempfile.TemporaryDirectory()
    tmp = Path(td.name)
    home, vault = tmp / "home", tmp / "vault"
    vault.mkdir()
    env = {"AGENT_VAULT_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": str(tmp / "gc"),
           "PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}

    def av(*args, stdin=b""):
        out = subprocess.run([BIN, *args], cwd=vault, env=env, input=stdin, capture_output=True)
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout

    procs = []
    try:
        av("init", ".", "--owner", "bench")
        av("set", "docs/key", stdin=b"docs-value")
        av("set", "api/token", stdin=b"tok_value")
        key = json.loads(av("add-agent", "bot", "--json"))["key_file"]
        av("grant", "bot", "docs")
        av("grant", "bot", "api", "--mode", "use")
        av("broker", "init")
        # An HTTPS upstream with its own CA (the broker's Minter makes certificates too,
        # but openssl keeps this script free of Rust).
        ca, ca_key, cert, ukey, csr, ext = (tmp / n for n in ["ca.pem", "ca.key", "up.pem", "up.key", "up.csr", "up.ext"])
        ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=bench-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", *ec, "-keyout", str(ukey), "-out", str(csr), "-subj", "/CN=127.0.0.1")
        run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))
        up = subprocess.Popen([sys.executable, str(ECHO), str(cert), str(ukey), str(tmp / "up.log")], stdout=subprocess.PIPE)
        procs.append(up)
        up_port = int(up.stdout.readline().strip())
        av("service", "add", "api", "--bearer", "api/token", "--host", f"127.0.0.1:{up_port}")
        broker = subprocess.Popen([BIN, "proxy", "--listen", "127.0.0.1:0", "--allow-private-upstreams", "--upstream-ca", str(ca)],
                                  cwd=vault, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(broker)
        broker_addr = broker.stderr.readline().decode().strip().rsplit(" ", 1)[-1]
        threading.Thread(target=broker.stderr.read, daemon=True).start()
        token = json.loads(av("token", "issue", "bot", "--ttl", "1h", "--json"))["token"]
        senv = dict(env, AGENT_VAULT_KEY=key, AGENT_VAULT_TOKEN=token)
        params = StdioServerParameters(command=BIN, args=["--offline", "mcp", "--broker", broker_addr], env=senv, cwd=str(vault))
        url = f"https://127.0.0.1:{up_port}/bench"
        gets, via, direct = [], [], []

        async def session():
            async with stdio_client(params) as (r, w):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    for _ in range(20):
                        await s.call_tool("agent_vault_get", {"secret": "docs/key"})
                    for _ in range(GETS):
                        t = time.perf_counter()
                        res = await s.call_tool("agent_vault_get", {"secret": "docs/key"})
                        gets.append(time.perf_counter() - t)
                        assert not res.is_error
                    ctx = ssl.create_default_context(cafile=str(ca))
                    for i in range(REQUESTS + 10):
                        t = time.perf_counter()
                        res = await s.call_tool("agent_vault_request", {"method": "GET", "url": url})
                        dt = time.perf_counter() - t
                        assert not res.is_error, res
                        t = time.perf_counter()
                        c = http.client.HTTPSConnection("127.0.0.1", up_port, context=ctx)
                        c.request("GET", "/bench", headers={"Authorization": "Bearer tok_value"})
                        c.getresponse().read()
                        c.close()
                        dd = time.perf_counter() - t
                        if i >= 10:
                            via.append(dt)
                            direct.append(dd)

        anyio.run(session)
        ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
        print(f"agent_vault_get: {GETS} sequential calls, one session: median {ms(gets):.3f} ms (target <= 1 ms)")
        print(f"agent_vault_request via broker: median {ms(via):.2f} ms; direct HTTPS (new connection each): median {ms(direct):.2f} ms;"
              f" added {ms(via) - ms(direct):+.2f} ms (target <= 2 ms)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        td.cleanup()


if __name__ == "__main__":
    main()
