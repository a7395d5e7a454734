#!/usr/bin/env python3
"""Benchmark OAuth credentials in the broker (issue 15). The issue names no
speed target; this prints figures to watch:

  * warm request latency through the broker, static bearer vs OAuth bearer
    (median of N sequential requests, one tunnel kept alive each);
  * 50 concurrent requests when the access token is due (one refresh at
    the provider, which takes ~0.3 s in the test provider) vs when it is not.

Everything on 127.0.0.1: the Authlib provider of the e2e tests
(tests/e2e/oauth_provider.py, its API echoing the token), a fresh vault, the
broker. Needs python3 with requests, flask and authlib, and openssl.

  python3 bench/oauth.py [--bin target/debug/agent-vault] [--runs 200]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(repo, "target/debug/agent-vault"))
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(a, tmp)


def run(a, tmp):
    env = dict(os.environ, AGENT_VAULT_HOME=os.path.join(tmp, "home"),
               GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.path.join(tmp, "gitconfig"))
    env.pop("AGENT_VAULT_KEY", None)
    vault = os.path.join(tmp, "vault")
    os.makedirs(vault)

    def av(*args, stdin=b""):
        r = subprocess.run([a.bin, *args], cwd=vault, env=env, input=stdin, capture_output=True)
        if r.returncode:
            sys.exit(f"agent-vault {args[:2]} failed: {r.stderr.decode()}")
        return r.stdout

    # A CA of the bench's own and a leaf for 127.0.0.1 (webpki refuses a CA
    # certificate as the server's own).
    cert, key = os.path.join(tmp, "ca.pem"), os.path.join(tmp, "ca.key")
    leaf, leaf_key = os.path.join(tmp, "leaf.pem"), os.path.join(tmp, "leaf.key")
    ext = os.path.join(tmp, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for cmd in (
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=bench-ca",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", leaf_key, "-out", leaf + ".csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", leaf + ".csr", "-CA", cert, "-CAkey", key, "-CAcreateserial",
         "-out", leaf, "-days", "1", "-extfile", ext],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    provider = subprocess.Popen([sys.executable, os.path.join(repo, "tests/e2e/oauth_provider.py"),
                                 leaf, leaf_key, os.path.join(tmp, "provider.log")],
                                stdout=subprocess.PIPE)
    broker = None
    try:
        port = int(provider.stdout.readline())
        base = f"https://127.0.0.1:{port}"
        ctl = lambda m, p: requests.request(m, base + p, verify=cert).json()
        refresh = first_refresh_token(base, cert)
        av("init", ".", "--owner", "bench")
        secret_file = os.path.join(tmp, "secret")
        with open(secret_file, "w") as f:
            f.write("test-client-secret")
        ctl("POST", "/control/ttl/302")
        av("oauth", "set", "api/gh", "--client-id", "agent-vault-test", "--client-secret-file",
           secret_file, "--token-url", base + "/token", "--upstream-ca", cert,
           "--allow-private-endpoints", stdin=refresh.encode())
        av("set", "static/tok", "static-bearer-value", )
        av("add-agent", "bot")
        av("grant", "bot", "api", "--mode", "use")
        av("grant", "bot", "static", "--mode", "use")
        av("broker", "init")
        host = f"127.0.0.1:{port}"
        av("service", "add", "api", "--bearer", "api/gh", "--host", host, "--path", "/api/")
        av("service", "add", "plain", "--bearer", "static/tok", "--host", host,
           "--path", "/control/")
        ca = os.path.join(tmp, "broker-ca.pem")
        with open(ca, "wb") as f:
            f.write(av("ca", "cert"))
        token = json.loads(av("--json", "token", "issue", "bot", "--ttl", "30m"))["token"]
        broker = subprocess.Popen([a.bin, "proxy", "--listen", "127.0.0.1:0",
                                   "--allow-private-upstreams", "--upstream-ca", cert],
                                  cwd=vault, env=env, stderr=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL)
        bport = int(broker.stderr.readline().decode().strip().rsplit(":", 1)[1])
        proxy = {"https": f"http://bot:{token}@127.0.0.1:{bport}"}

        def session():
            s = requests.Session()
            s.trust_env = False
            s.proxies, s.verify = proxy, ca
            return s

        # 50 at expiry: the pasted token is due 2 s after it was issued.
        time.sleep(2.5)
        ctl("POST", "/control/ttl/3600")
        burst_due, refreshes_due = burst(session, base, ctl)
        burst_fresh, refreshes_fresh = burst(session, base, ctl)

        lat = {}
        for name, path in (("static", "/control/stats"), ("oauth", "/api/echo")):
            s = session()
            s.get(base + path).raise_for_status()
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                s.get(base + path).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            lat[name] = statistics.median(times)
        print(f"binary: {a.bin}")
        print(f"warm request, static bearer: median {lat['static']:.2f} ms ({a.runs} runs)")
        print(f"warm request, OAuth bearer:  median {lat['oauth']:.2f} ms ({a.runs} runs)")
        print(f"50 concurrent, token due:     {burst_due * 1000:.0f} ms, "
              f"{refreshes_due} refresh(es) at the provider")
        print(f"50 concurrent, token fresh:   {burst_fresh * 1000:.0f} ms, "
              f"{refreshes_fresh} refresh(es) at the provider")
    finally:
        for p in (broker, provider):
            if p:
                p.kill()
                p.wait()


def burst(session, base, ctl):
    before = ctl("GET", "/control/stats")["refreshes"]
    t = time.perf_counter()
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda _: session().get(base + "/api/echo").status_code, range(50)))
    took = time.perf_counter() - t
    assert codes == [200] * 50, codes
    return took, ctl("GET", "/control/stats")["refreshes"] - before


def first_refresh_token(base, ca):
    import base64, hashlib, secrets
    from urllib.parse import urlparse, parse_qs
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect = "http://127.0.0.1:9/callback"
    r = requests.get(base + "/authorize", params=dict(
        response_type="code", client_id="agent-vault-test", redirect_uri=redirect, state="s",
        code_challenge=challenge, code_challenge_method="S256"), verify=ca, allow_redirects=False)
    code = parse_qs(urlparse(r.headers["Location"]).query)["code"][0]
    t = requests.post(base + "/token", data=dict(
        grant_type="authorization_code", code=code, redirect_uri=redirect, code_verifier=verifier,
        client_id="agent-vault-test", client_secret="test-client-secret"), verify=ca)
    t.raise_for_status()
    return t.json()["refresh_token"]


if __name__ == "__main__":
    main()
