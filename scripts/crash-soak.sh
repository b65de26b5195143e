#!/usr/bin/env bash
# Many rounds of the crash test: publishers with confirms at full speed, SIGKILL at a
# random moment, restart, check that every confirmed message is there and no acked one
# came back. CRASH_ROUNDS (default 50) and CRASH_SEED (default: the time) vary it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_ROUNDS="${CRASH_ROUNDS:-50}"
export CRASH_SEED="${CRASH_SEED:-$(date +%s)}"
echo "crash soak: $CRASH_ROUNDS rounds, seed $CRASH_SEED"
exec cargo test --release --test crash -- --nocapture
