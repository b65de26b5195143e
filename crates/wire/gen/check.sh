#!/usr/bin/env bash
# Fails (exit 1) if the checked-in generated files differ from what
# generate.py produces now. CI runs this; fix a failure by running
#   python3 crates/wire/gen/generate.py
# and committing the result.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
spec="${1:-$repo/../shared/spec/amqp0-9-1.json}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 "$here/generate.py" "$spec" --out-dir "$tmp"
status=0
for f in generated.rs arbitrary.rs oracle.rs; do
    if ! diff -u "$repo/crates/wire/src/method/$f" "$tmp/$f"; then
        echo "crates/wire/src/method/$f is stale: run python3 crates/wire/gen/generate.py" >&2
        status=1
    fi
done
exit $status
