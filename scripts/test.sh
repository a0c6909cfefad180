#!/usr/bin/env bash
# README command (b): install what the tests need into .venv and run the default test suite.
# Extra arguments go to pytest (e.g. -m slow, -k export).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test
VENV="${DPSIMS_VENV:-$ROOT/.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
