"""Run DP-SIMS generator artifacts (ONNX, OpenVINO, TensorRT, CoreML, torch.export) behind one predictor API.

    from runtimes import load_predictor

    with load_predictor("artifacts/my-model") as predictor:     # the folder holding model.json
        image = predictor.generate("label.png", seed=0)          # (H, W, 3) uint8 RGB

Importing this package needs numpy only; each backend imports its inference library when an artifact opens.

Also public, for apps and device scripts: ``read_manifest`` (model.json, checked), ``prepare_labels(label_map,
manifest, resize=False)`` (a label map checked and converted to int32 ids for an artifact, without opening it),
``sample_noise(seeds, noise_shape)`` and ``seed_list(seed, n)`` (the noise of a seed, as every backend receives
it), ``to_uint8`` (the graph's float image -> uint8 RGB), ``image_grid`` and ``save_png`` (tile images, write a
PNG; pillow), and the errors, all deriving from ``DpSimsError``.
"""

from dpsims._version import __version__
from dpsims.errors import BackendUnavailable, DpSimsError, InputError, ManifestError, PredictorClosed
from runtimes.imaging import image_grid, save_png, to_uint8
from runtimes.loader import load_predictor
from runtimes.noise import sample_noise, seed_list
from runtimes.predictor import Predictor, prepare_labels
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
    "image_grid",
    "load_predictor",
    "prepare_labels",
    "read_manifest",
    "sample_noise",
    "save_png",
    "seed_list",
    "to_uint8",
]
