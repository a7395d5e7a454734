#!/usr/bin/env bash
# Remote benchmark (auto-pull get, two-owner sync, grant/revoke growth): bench/sync.sh [sync.py options]
set -euo pipefail; repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); cd "$repo"; [[ -x target/release/agent-vault ]] || cargo build --release -p agent-vault; exec python3 bench/sync.py "$@"
