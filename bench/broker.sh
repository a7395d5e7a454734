#!/usr/bin/env bash
# Benchmark the broker (`agent-vault proxy`) against its speed targets (issue 4):
# throughput vs direct and vs mitmproxy, added median latency, RSS with 1,000
# open tunnels, leaf minted once.  Prints figures and a PASS/FAIL table.
#
#   bench/broker.sh [broker.py options]     e.g. --conns 32 --duration 8 --rounds 2
#
# Needs: nginx (Debian nginx-light), openssl, python3.  Installs, once, under
# bench/out/ (gitignored): oha (cargo install --locked) and mitmproxy (venv).
# AGENT_VAULT_BIN overrides the binary (default target/release/agent-vault).
# Exit status: 0 all targets pass, 1 some target fails, other: the run broke.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$here/out"
mkdir -p "$out"

bin=${AGENT_VAULT_BIN:-$repo/target/release/agent-vault}
[ -x "$bin" ] || (cd "$repo" && cargo build --release -p agent-vault)

oha="$out/tools/bin/oha"
[ -x "$oha" ] || cargo install oha --locked --root "$out/tools" >&2

venv="$out/mitm-venv"
[ -x "$venv/bin/mitmdump" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q mitmproxy >&2; }

nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || { echo "broker.sh: nginx is required (apt-get install -y nginx-light)" >&2; exit 2; }

echo "binary: $bin ($("$bin" --version), built $(date -r "$bin" '+%F %T'))"
echo "repo:   $(git -C "$repo" log -1 --format='%h %s' 2>/dev/null | cut -c1-90)"
echo "tools:  $("$oha" --version), mitmproxy $("$venv/bin/python" -c 'import mitmproxy.version as v; print(v.VERSION)'), $("$nginx" -v 2>&1)"
ulimit -n 65536 2>/dev/null || true
exec python3 "$here/broker.py" --bin "$bin" --oha "$oha" --mitmdump "$venv/bin/mitmdump" \
  --nginx "$nginx" "$@"
