#!/usr/bin/env bash
# Rebuilds the fixture vault of tests/vectors with the agent-vault CLI.
#
#   tests/vectors/make.sh            # uses target/debug/agent-vault (built if absent)
#
# The vault is made in a scratch directory (so `init` never touches this
# repository's git), then its .agent-vault/ is copied to vault/ and the keys
# (AGENT_VAULT_HOME) to home/. The keys are TEST-ONLY: see README.md.
# list.json is what `agent-vault list --json` printed right after.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${AGENT_VAULT_BIN:-$repo/target/debug/agent-vault}
[[ -x $bin ]] || (cd "$repo" && cargo build -p agent-vault)

work=$(mktemp -d "${TMPDIR:-/tmp}/agent-vault-vectors.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset AGENT_VAULT_KEY AGENT_VAULT_DIR
export AGENT_VAULT_HOME="$work/home"
export GIT_AUTHOR_NAME=vectors GIT_AUTHOR_EMAIL=vectors@example.invalid
export GIT_COMMITTER_NAME=vectors GIT_COMMITTER_EMAIL=vectors@example.invalid

av() { "$bin" --vault "$work/vault" --offline "$@"; }

"$bin" init "$work/vault" --owner vector-owner >/dev/null
av set app/api-key 'sk_test_vector_0001' >/dev/null
av set app/db/password 'correct horse battery staple' --description 'database password' >/dev/null
av set app/unicode 'héllo wörld ✓ 秘密' >/dev/null
printf '\000\001\376\377binary\n' | av set app/binary >/dev/null
av set ops/deploy-key 'ops-only-value' --expires 2099-01-31 --description 'deploy key' >/dev/null
av add-agent reader >/dev/null
av add-agent user >/dev/null
av add-agent outsider >/dev/null
av grant reader app --mode read >/dev/null
av grant user app --mode use >/dev/null

rm -rf "$here/vault" "$here/home"
mkdir -p "$here/vault" "$here/home"
cp -a "$work/vault/.agent-vault" "$here/vault/"
rm -rf "$here/vault/.agent-vault/.local"
cp -a "$work/home/keys" "$here/home/"
# The pins are made by each reader on first use, not shipped.
find "$here/home" -name trust.yaml -delete
av list --json >"$here/list.json"
av list-agents --json >"$here/agents.json"
echo "vectors rebuilt in $here (vault id $(sed -n 's/^vault_id: *//p' "$here/vault/.agent-vault/config.yaml"))"
