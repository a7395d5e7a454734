#!/usr/bin/env bash
# Rebuilds the FORMAT VERSION 1 fixture vault with an agent-vault build that
# writes version 1 (0.2.0 or the last commit before format 2):
#
#   AGENT_VAULT_BIN=/path/to/agent-vault-0.2 tests/vectors/v1/make.sh
#
# A build of today's code would write format 2, so this script refuses one.
# The keys under home/ are TEST-ONLY (see ../README.md).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${AGENT_VAULT_BIN:?set AGENT_VAULT_BIN to a build that writes format 1}

work=$(mktemp -d "${TMPDIR:-/tmp}/agent-vault-v1.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset AGENT_VAULT_KEY AGENT_VAULT_DIR
export AGENT_VAULT_HOME="$work/home"
export GIT_AUTHOR_NAME=vectors GIT_AUTHOR_EMAIL=vectors@example.invalid
export GIT_COMMITTER_NAME=vectors GIT_COMMITTER_EMAIL=vectors@example.invalid

av() { "$bin" --vault "$work/vault" --offline "$@"; }

"$bin" init "$work/vault" --owner vector-owner >/dev/null
grep -q '^format: 1$' "$work/vault/.agent-vault/config.yaml" || {
  echo "$bin does not write format 1" >&2
  exit 1
}
av set app/api-key 'sk_test_v1_0001' >/dev/null
av set app/db/password 'v1 horse battery staple' --description 'database password' >/dev/null
printf '\000\001\376\377v1-binary\n' | av set app/binary >/dev/null
av set ops/deploy-key 'v1-ops-only' --expires 2099-01-31 >/dev/null
av add-agent reader >/dev/null
av add-agent gone >/dev/null
av add-agent user >/dev/null
av grant reader app --mode read >/dev/null
av grant gone app --mode read >/dev/null
av grant user app --mode use >/dev/null
# Version 1 revocation: the group key rotated and every value re-encrypted
# (app is at generation 2).
av revoke gone app >/dev/null
av set app/after-revoke 'v1-set-after-revoke' >/dev/null

rm -rf "$here/vault" "$here/home"
mkdir -p "$here/vault" "$here/home"
cp -a "$work/vault/.agent-vault" "$here/vault/"
rm -rf "$here/vault/.agent-vault/.local"
cp -a "$work/home/keys" "$here/home/"
find "$here/home" -name trust.yaml -delete
echo "version 1 vectors rebuilt in $here"
