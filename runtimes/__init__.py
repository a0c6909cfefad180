"""Run DP-SIMS generator artifacts (ONNX, OpenVINO, TensorRT, CoreML, torch.export) behind one predictor API.

    from runtimes import load_predictor

    with load_predictor("artifacts/my-model") as predictor:     # the folder holding model.json
        image = predictor.generate("label.png", seed=0)          # (H, W, 3) uint8 RGB

Importing this package needs numpy only; each backend imports its inference library when an artifact opens.
"""

from dpsims._version import __version__
from dpsims.errors import BackendUnavailable, DpSimsError, InputError, ManifestError, PredictorClosed
from runtimes.loader import load_predictor
from runtimes.predictor import Predictor, to_uint8
from runtimes.spec import ClassInfo, Manifest, read_manifest

__all__ = [
    "__version__",
    "BackendUnavailable",
    "ClassInfo",
    "InputError",
    "Manifest",
    "ManifestError",
    "Predictor",
    "PredictorClosed",
    "DpSimsError",
    "load_predictor",
    "read_manifest",
    "to_uint8",
]
