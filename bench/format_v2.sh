#!/usr/bin/env bash
# Format version 2 benchmark (issue 17): builds the release binary, then
# prints revoke/grant/set/get figures and .git growth side by side.
#   bench/format_v2.sh [--runs N] [--rounds N]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v age >/dev/null || { echo "the age CLI is needed (apt-get install age)" >&2; exit 1; }
(cd "$repo" && nice cargo build --release -q -p agent-vault)
exec python3 "$repo/bench/format_v2.py" --bin "$repo/target/release/agent-vault" "$@"
