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

echo "[demo] 1/3 training the synthetic-tiny preset (about 5 minutes on 2 cores of an AVX-512 CPU, longer on older ones)"
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
"$PY" -m runtimes generate --model "$ART" --label examples/label_maps/synthetic_64.png --seed 0 --n 4 --grid --scale 4 \
  --out "$OUT/generated.png"

echo
echo "Everything the demo wrote:"
echo "  training run:      $ROOT/$RUN  (config.yaml, metrics.jsonl, checkpoints/, samples/)"
echo "  sample grids:      $(ls -1 "$RUN"/samples/*.png | tail -n 1)"
echo "  INT8 artifact:     $ROOT/$ART  (model.xml, model.bin, model.json, MODEL_CARD.md)"
echo "  generated image:   $ROOT/$OUT/generated.png"
echo
echo "generated.png shows, left to right: the example label map (each colour a class), then the INT8 artifact's"
echo "images of that map for seeds 0, 1, 2 and 3 (64x64 each, shown 4x larger). The layout and each region's class"
echo "come from the label map; only the seed's noise, injected through cross-attention, differs between them (by how"
echo "much: the 'differ by' line above; the preset's diversity term, on from step 300, asks for about 0.04 of the"
echo "value range per pixel). Stripe phase and shading change with the seed; classes and layout do not."
# a loaded machine can reach the preset's time cap (train.max_minutes) before the last step: say so, and how to go on
DONE="$("$PY" - "$RUN" <<'PY'
import sys, yaml
from pathlib import Path
run = Path(sys.argv[1])
step = int((run / "checkpoints" / "last").read_text().strip().removeprefix("step_"))
steps = int(yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"])
print(f"{step} {steps}")
PY
)"
read -r STEP STEPS <<< "$DONE"
if [ "$STEP" -lt "$STEPS" ]; then
  echo
  echo "Training stopped at step $STEP of $STEPS (the preset's train.max_minutes time cap; this machine was slower or"
  echo "busier than expected), so the images are rougher than a finished run's. Run the same command again to"
  echo "continue from step $STEP; it re-exports and regenerates at the end."
fi
