#!/usr/bin/env bash
# Benchmark brokers on many machines (issue 16): revocation latency across
# two replicas following a bare remote, throughput through HAProxy vs one
# broker direct, and throughput with OTLP audit export on vs off.
#
#   bench/fleet.sh [fleet.py options]     e.g. --rounds 20 --duration 6
#   bench/fleet.sh --only otlp --tp-rounds 5    (one part: revocation, haproxy, otlp)
#
# Needs: nginx, haproxy, openssl, git, python3. Installs oha once under
# bench/out/ (gitignored), as bench/broker.sh does.
# AGENT_VAULT_BIN overrides the binary (default target/release/agent-vault).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$here/out"
mkdir -p "$out"
bin=${AGENT_VAULT_BIN:-$repo/target/release/agent-vault}
[ -x "$bin" ] || (cd "$repo" && cargo build --release -p agent-vault)
oha="$out/tools/bin/oha"
[ -x "$oha" ] || cargo install oha --locked --root "$out/tools" >&2
nginx=$(command -v nginx || echo /usr/sbin/nginx)
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
echo "binary: $bin ($("$bin" --version))"
echo "repo:   $(git -C "$repo" log -1 --format='%h %s' 2>/dev/null | cut -c1-90)"
echo "tools:  $("$oha" --version), $("$haproxy" -v | head -1)"
ulimit -n 65536 2>/dev/null || true
exec python3 "$here/fleet.py" --bin "$bin" --oha "$oha" --nginx "$nginx" --haproxy "$haproxy" "$@"
