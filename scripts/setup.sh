#!/usr/bin/env bash
# Create (or reuse) .venv and install dp-sims with the given extras, torch pinned by constraints.txt.
# usage: bash scripts/setup.sh EXTRAS      e.g.  bash scripts/setup.sh train,onnx,openvino
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-train}"
VENV="${DPSIMS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
echo "[setup] installing dp-sims[$EXTRAS] (torch pinned by constraints.txt)"
"$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRAS]"
echo "[setup] ready: $VENV"
