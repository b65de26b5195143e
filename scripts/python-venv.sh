#!/usr/bin/env bash
# Creates .venv in the repository (gitignored) with the pinned Python clients that the
# cross-language tests use. Idempotent and quiet: does nothing when they are installed.
set -euo pipefail

PIKA_VERSION="1.3.2"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi

installed="$("$venv/bin/python" -c 'import pika; print(pika.__version__)' 2>/dev/null || true)"
if [ "$installed" != "$PIKA_VERSION" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "pika==$PIKA_VERSION"
fi
