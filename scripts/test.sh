#!/usr/bin/env bash
# README command (b): install what the tests need into .venv and run the default test suite.
# Extra arguments go to pytest (e.g. -m slow, -k export).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test
VENV="${DPSIMS_VENV:-$ROOT/.venv}"
# The serving tests start a real tritonserver: the binary inside the nvidia-pytriton wheel (Linux x86-64/arm64),
# installed without its dependencies: its Python package pins numpy<2 and is never imported (docs/design.md, Serving).
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64) "$VENV/bin/python" -m pip install -q --no-deps 'nvidia-pytriton>=0.7' ;;
esac
# The browser test (tests/test_web_painter.py) drives Debian's Chromium. Install it when we can (root with apt-get,
# best effort, quiet); otherwise, or if that fails, the test skips and says so. DPSIMS_NO_CHROMIUM=1 skips this step.
if [ ! -x /usr/bin/chromium ] && [ -z "${DPSIMS_NO_CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser test (apt-get)"
  { timeout 900 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "[test] chromium did not install: the browser test will skip"
fi
# One pytest-xdist worker per core, a test file per worker (tests/conftest.py gives each its share of the threads):
# 3 min 13 s instead of 4 min 45 s on 2 cores. DPSIMS_TEST_WORKERS=0 runs in one process.
exec "$VENV/bin/python" -m pytest -q -n "${DPSIMS_TEST_WORKERS:-auto}" --dist loadfile "$@"
