#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need (the Debian `age` CLI for interop tests, git), then formatting, lints,
# docs and the test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v age >/dev/null 2>&1 || need+=(age)
command -v git >/dev/null 2>&1 || need+=(git)
# sync tests run a real sshd (key authentication) on loopback.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
# broker tests drive it with curl and Python requests against a Python HTTPS upstream.
command -v curl >/dev/null 2>&1 || need+=(curl)
# `run --isolate` tests run Debian's python3 with requests as an ordinary
# user (made with useradd), and look for what is left inside with pgrep.
/usr/bin/python3 -c 'import requests' >/dev/null 2>&1 || need+=(python3-requests)
# The scrubbing tests' upstream (tests/e2e/transform_server.py) sends brotli.
/usr/bin/python3 -c 'import brotli' >/dev/null 2>&1 || need+=(python3-brotli)
# SigV4 tests: boto3 is the agent's client, botocore checks signatures upstream.
[ -x /usr/bin/python3 ] && { /usr/bin/python3 -c 'import boto3' >/dev/null 2>&1 || need+=(python3-boto3); }
# Metrics tests parse /metrics with the Prometheus project's own Python parser.
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
command -v useradd >/dev/null 2>&1 || need+=(passwd)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
# ... and with Node's fetch (undici's ProxyAgent, from tests/e2e/node).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# hostile-broker tests use nginx as a real upstream (a location /admin, gzip on).
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
# `agent-vault ui` tests drive the owner's page with headless Chromium (Selenium).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Fleet tests: two brokers behind HAProxy (deploy/haproxy.cfg); the systemd
# unit checked with systemd-analyze verify.
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Audit export tests: Debian's rsyslog receives RFC 5424 over UDP, TCP and a Unix socket.
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -c 'import requests' >/dev/null 2>&1 || python3 -m pip install -q requests
# OAuth tests: a real OAuth 2.0 provider built with Authlib's Flask integration.
python3 -c 'import flask' >/dev/null 2>&1 || python3 -m pip install -q flask
python3 -c 'import authlib' >/dev/null 2>&1 || python3 -m pip install -q authlib
python3 -c 'import brotli' >/dev/null 2>&1 || python3 -m pip install -q brotli
python3 -c 'import boto3' >/dev/null 2>&1 || python3 -m pip install -q boto3
python3 -c 'import prometheus_client' >/dev/null 2>&1 || python3 -m pip install -q prometheus-client
python3 -c 'import selenium' >/dev/null 2>&1 || python3 -m pip install -q selenium
# The proposal loop's agent drives its MCP server with the Python `mcp` client.
python3 -c 'import mcp' >/dev/null 2>&1 || python3 -m pip install -q mcp
# Audit export tests: an OTLP/HTTP receiver built on the OpenTelemetry protobufs.
python3 -c 'import opentelemetry.proto' >/dev/null 2>&1 || python3 -m pip install -q opentelemetry-proto
(cd tests/e2e/node && npm install --no-audit --no-fund)

cargo fmt --all -- --check
# The shape ARCHITECTURE.md describes: no import cycle inside a crate, no
# source file over 600 lines, no function over 120 (outside tests).
python3 scripts/shape.py
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
# The SDK crates are built by maturin and napi below, not by `cargo test`.
cargo test

# SDKs (sdk-python: pyo3 + maturin; sdk-node: napi-rs), tested with pytest and
# `node --test` against vaults the CLI (target/debug/agent-vault, built above)
# writes, and the cross-language vectors of tests/vectors.
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x target/debug/agent-vault ] || cargo build -p agent-vault

# From here on, PATH holds only the system's own directories, the Rust
# toolchain's own bin/ (rustc --print sysroot, not ~/.cargo/bin, where a
# `cargo install`ed tool could hide), and what this script installs into
# target/sdk-venv: a maturin, pytest or napi left on this machine by earlier
# work cannot make a missing install step pass.
python=$(python3 -c 'import sys; print(sys.executable)')
toolchain_bin="$(rustc --print sysroot)/bin"
venv="$PWD/target/sdk-venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
export PATH="$venv/bin:$toolchain_bin:/usr/sbin:/usr/bin:/sbin:/bin"
hash -r
for tool in maturin pytest napi; do
  if found=$(command -v "$tool" 2>/dev/null) && [ "${found#"$venv"/}" = "$found" ]; then
    echo "test-all: $tool found at $found, outside what this script installs" >&2
    exit 1
  fi
done
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check maturin pytest
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./sdk-python
# `npm install`, not `npm ci`: npm 10/11 reject a lock file missing other
# platforms' optional packages of @napi-rs/cli (npm/cli#4828). The install
# script builds the addon (napi build --release, napi from node_modules).
(cd sdk-node && npm install --no-audit --no-fund)
"$venv/bin/python" -m pytest -q sdk-python/tests
(cd sdk-node && node --test tests/)

# MCP server (mcp/), driven over stdio by the Python `mcp` package's client
# against a vault the CLI writes, the real broker and a Python HTTPS upstream
# (its certificates made with openssl).
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check mcp pytest
"$venv/bin/python" -m pytest -q mcp/tests
