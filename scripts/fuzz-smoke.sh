#!/usr/bin/env bash
# Short fuzz runs of every target (CI): FUZZ_SECONDS each (default 30). Installs cargo-fuzz
# from crates.io if missing. Uses RUSTC_BOOTSTRAP so the stable toolchain accepts the
# sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
for target in $(cargo fuzz list); do
  echo "-- fuzz $target for ${seconds}s"
  log="$(mktemp)"
  # cargo fuzz exits non-zero on a crash: show the tail of its output and fail.
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -n 40 "$log"
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "$log" || tail -n 3 "$log"
  rm -f "$log"
done
