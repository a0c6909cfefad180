"""The ten-line app: load an exported artifact, turn a label map into images, save them.

    python examples/generate.py ARTIFACT_DIR examples/label_maps/synthetic_64.png out.png
"""

import sys

import numpy as np

import runtimes
from runtimes import DpSimsError, image_grid, load_predictor, save_png

if sys.argv[1:] == ["--version"]:
    sys.exit(f"dp-sims {runtimes.__version__}")
if len(sys.argv) != 4:
    sys.exit(__doc__)
artifact, label_png, out_png = sys.argv[1:4]
try:
    with load_predictor(artifact) as predictor:  # any target: onnx, openvino, tensorrt, coreml, torch
        images = predictor.generate_variations(label_png, n=4, seed=0)  # (4, H, W, 3) uint8, same on every backend
        shown = predictor.colorize(label_png)  # the label map in the artifact's class colours
        save_png(out_png, image_grid(np.stack([shown, *images])))
except DpSimsError as e:  # a bad artifact or label map, a missing runtime: the message says what to do
    sys.exit(f"error: {e}")
print(f"{predictor.target} {predictor.precision}: wrote {out_png}")
