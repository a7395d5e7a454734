#!/usr/bin/env bash
# Warm in-process `get` of one secret: this project's Python and Node SDKs,
# side by side with agent-vault-sdk 0.1.0 from PyPI (installed once into
# bench/out/sdk-old-venv) reading the same secret from a vault it understands.
#
#   bash bench/sdk.sh            # RUNS=5000 by default
#
# Needs: the SDKs built (pip install ./sdk-python; cd sdk-node && npm ci), the
# CLI (target/debug/agent-vault is enough: it only builds the vault), age, age-keygen.
# Figures: microseconds per get (median, p90, min, mean); target: median <= 100.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$here/out"
mkdir -p "$out"
runs=${RUNS:-5000}
py=${PYTHON:-python3}
[[ -x $repo/target/sdk-venv/bin/python ]] && py=${PYTHON:-$repo/target/sdk-venv/bin/python}
bin=${AGENT_VAULT_BIN:-$repo/target/release/agent-vault}
[[ -x $bin ]] || bin=$repo/target/debug/agent-vault

work=$(mktemp -d "${TMPDIR:-/tmp}/agent-vault-sdk-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset AGENT_VAULT_KEY AGENT_VAULT_DIR
export AGENT_VAULT_HOME="$work/home" AGENT_VAULT_OFFLINE=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
value="sk_live_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# --- ours: a vault made by the CLI, read by agent "bot" ------------------------
"$bin" init "$work/ours" --owner bench >/dev/null
av() { "$bin" --vault "$work/ours" "$@"; }
av set app/api-key "$value" >/dev/null
key=$(av --json add-agent bot | "$py" -c 'import json,sys; print(json.load(sys.stdin)["key_file"])')
av grant bot app >/dev/null

# --- 0.1.0: its layout (secrets/<group>/<name>.enc encrypted to the agent) ------
old_venv="$out/sdk-old-venv"
if [[ ! -x $old_venv/bin/python ]]; then
  echo "installing agent-vault-sdk 0.1.0 into $old_venv (once) ..."
  python3 -m venv "$old_venv"
  "$old_venv/bin/pip" install --quiet --disable-pip-version-check agent-vault-sdk==0.1.0
fi
mkdir -p "$work/old/.agent-vault/secrets/app"
age-keygen -o "$work/old-bot.key" 2>/dev/null
recipient=$(age-keygen -y "$work/old-bot.key")
printf '%s' "$value" | age -r "$recipient" -o "$work/old/.agent-vault/secrets/app/api-key.enc"
cat >"$work/old/.agent-vault/manifest.yaml" <<YAML
agents:
  - name: bot
    public_key: $recipient
    groups: [app]
groups:
  - name: app
    secrets: [app/api-key]
YAML

echo "warm get of one secret, $runs runs each (µs); cpus: $(nproc); $(date -u +%FT%TZ)"
"$py" "$here/sdk.py" --vault "$work/ours" --key "$key" --path app/api-key --runs "$runs" --label "python (agent_vault $(cd "$repo" && git rev-parse --short HEAD))"
env -u AGENT_VAULT_OFFLINE "$py" "$here/sdk.py" --vault "$work/ours" --key "$key" --path app/api-key --runs "$runs" --auto-pull --label "python, auto_pull=True (no remote)"
node "$here/sdk.mjs" --vault "$work/ours" --key "$key" --path app/api-key --runs "$runs"
"$old_venv/bin/python" "$here/sdk.py" --vault "$work/old" --key "$work/old-bot.key" --path app/api-key --runs "$runs" --label "python (agent-vault-sdk 0.1.0, auto_pull=False)"
