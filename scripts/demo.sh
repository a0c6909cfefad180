#!/usr/bin/env bash
# README command (a): set up, train the built-in synthetic-tiny preset on the CPU, export an INT8 OpenVINO
# artifact calibrated on synthetic label maps, generate images from an example label map, print where it all is.
# Re-running continues the same run (it resumes, and stops at once when training already finished).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${DPSIMS_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
RUN="${DPSIMS_RUN:-runs/synthetic-tiny}"
ART="artifacts/synthetic-tiny-openvino-int8"
OUT="outputs"

bash scripts/setup.sh train,pretrained,onnx,openvino,runtime

echo "[demo] 1/3 training the synthetic-tiny preset (5 to 15 minutes on 2 CPU cores, depending on the CPU)"
if [ -f "$RUN/checkpoints/last" ]; then
  "$PY" -m train --resume "$RUN" "$@"
else
  "$PY" -m train --config synthetic-tiny --out "$RUN" "$@"
fi

echo "[demo] 2/3 exporting the generator to OpenVINO INT8 (calibrated on synthetic label maps)"
rm -rf "$ART"
"$PY" -m export --checkpoint "$RUN" --target openvino --precision int8 --calib synthetic --calib-samples 64 --out "$ART"

echo "[demo] 3/3 generating images from an example label map"
mkdir -p "$OUT"
"$PY" -m runtimes generate --model "$ART" --label examples/label_maps/synthetic_64.png --seed 0 --n 4 --grid --out "$OUT/generated.png"

echo
echo "Everything the demo wrote:"
echo "  training run:      $ROOT/$RUN  (config.yaml, metrics.jsonl, checkpoints/, samples/)"
echo "  sample grids:      $(ls -1 "$RUN"/samples/*.png | tail -n 1)"
echo "  INT8 artifact:     $ROOT/$ART  (model.xml, model.bin, model.json, MODEL_CARD.md)"
echo "  generated image:   $ROOT/$OUT/generated.png"
