#!/usr/bin/env bash
# The test command from the README: unit, property and integration tests of the whole
# workspace, including the pika cross-language test (which sets up its own venv).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace "$@"
