"""The image-quality metrics of ``python -m train.evaluate``: FID/KID, a segmenter's mIoU, seed diversity.

- FID and KID come from torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``) on the 2048-d
  pool features of the standard FID Inception-v3 (torch-fidelity's ``FeatureExtractorInceptionV3``, the port of
  the TensorFlow 2015-12-05 graph that every published FID uses). Its weights are never downloaded: give the file
  (:data:`INCEPTION_URL`) with ``--fid-weights``. Features are extracted once per image and fed to both metrics,
  so any feature extractor ``uint8 [N, 3, H, W] -> float [N, D]`` can stand in (the tests inject a tiny one).
- The weights file is read without unpickling code: a ``.safetensors`` file, or a ``.pth`` state dict read with
  ``torch.load(weights_only=True)``. (torch-fidelity itself would unpickle the file with ``weights_only=False``;
  it is handed a copy re-saved from the checked tensors instead.)
- :class:`OnnxSegmenter`: an ONNX segmentation model run in onnxruntime, for the mIoU of generated images on real
  datasets (see its docstring for the accepted graph).
- :func:`pixel_diversity`: mean pairwise absolute difference between the images of different seeds.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from train.errors import DpSimsError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
#: the sha256 of the standard file starts with these digits (torch.hub's naming convention)
INCEPTION_SHA256_PREFIX = "6726825d"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


class EvaluationError(DpSimsError):
    """A file given to the evaluation is missing, unreadable, or does not fit the data or the model."""


def fid_weights_hint() -> str:
    return (
        f"Download the standard FID Inception weights once ({INCEPTION_URL}, {INCEPTION_FILE}, about 92 MB) "
        f"on a machine with internet access and pass the file with --fid-weights FILE; nothing is downloaded here."
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ Inception


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, without unpickling code: safetensors, or a weights-only torch state dict."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist. {fid_weights_hint()}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise EvaluationError(
            f"{path} is not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Give a .safetensors file or a .pth state dict of tensors. {fid_weights_hint()}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvaluationError(f"{path} does not hold a state dict of tensors. {fid_weights_hint()}")
    return state


def load_inception(path: str | Path) -> torch.nn.Module:
    """The FID Inception-v3 (2048-d pool features, uint8 NCHW input of any size) with the weights in ``path``."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError:
        raise EvaluationError("FID needs torchmetrics and torch-fidelity: pip install 'dp-sims[eval]'.") from None
    if not _TORCH_FIDELITY_AVAILABLE:
        raise EvaluationError("FID needs torch-fidelity (its Inception-v3 port): pip install 'dp-sims[eval]'.")
    state = read_state_dict(path)
    with tempfile.TemporaryDirectory(prefix="dpsims-inception-") as tmp:
        copy = Path(tmp) / "weights.pth"
        torch.save(state, str(copy))  # only tensors we checked: safe for torch-fidelity's full unpickler
        try:
            model = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                       feature_extractor_weights_path=str(copy))
        except RuntimeError as e:
            raise EvaluationError(
                f"{path} does not fit the FID Inception-v3 ({str(e).splitlines()[0]}). {fid_weights_hint()}"
            ) from None
    return model.eval()


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """float64 [N, D] features of uint8 NHWC images (the extractor takes uint8 NCHW torch tensors)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).contiguous()
        f = extractor(x)
        out.append(f.reshape(f.shape[0], -1).double().cpu())
    return torch.cat(out)


class _Precomputed(torch.nn.Module):
    """Identity 'feature extractor' for torchmetrics: the features were extracted beforehand, once per image."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two feature sets [N, D] and [M, D], by torchmetrics.

    The KID subset size is capped at the smaller set; its subsets are drawn with a fixed torch seed."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise EvaluationError(f"FID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}.")
    dim = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(dim))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=kid_subsets,
                                      subset_size=min(kid_subset_size, len(real), len(fake)))
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


# ------------------------------------------------------------------------------------------ segmenter


class OnnxSegmenter:
    """A semantic segmentation model in ONNX, run in onnxruntime on the CPU.

    Accepted graph: one input, float32 ``[N, 3, H, W]`` RGB images scaled to [0, 1] and normalised by the
    ImageNet mean/std; first output ``[N, C, h, w]`` class logits (or scores) in the dataset's own contiguous class
    numbering, ``C`` = the dataset's number of classes. N may be fixed or dynamic; a fixed H, W other than the
    images' gets the images resized (bilinear) to it; logits of another size are resized (bilinear) to the label
    maps before the argmax. Any model (timm backbone + decoder, mmseg, ...) exported this way fits."""

    def __init__(self, path: str | Path, threads: int = 0):
        path = Path(path)
        if not path.is_file():
            raise EvaluationError(f"Segmenter {path} does not exist; give an ONNX file (see `--help` for its graph).")
        try:
            import onnxruntime as ort
        except ImportError:
            raise EvaluationError("--segmenter needs onnxruntime: pip install 'dp-sims[onnx]'.") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise EvaluationError(f"Segmenter {path} is not a loadable ONNX model ({str(e).splitlines()[0]}).") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise EvaluationError(f"Segmenter {path} must take one [N, 3, H, W] image input, it takes "
                                  f"{[(i.name, i.shape) for i in inputs]}.")
        self.input_name = inputs[0].name
        n, _, h, w = inputs[0].shape
        self.fixed_batch = isinstance(n, int) and n > 0
        self.batch = n if self.fixed_batch else 16
        self.size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
        self.path = path

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> int64 class ids [N, H, W]."""
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        h, w = images.shape[1:3]
        out = []
        for i in range(0, len(images), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch])).permute(0, 3, 1, 2).float() / 255.0
            real_n = len(x)
            if self.size is not None and tuple(x.shape[2:]) != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
            x = (x - mean) / std
            if self.fixed_batch and real_n < self.batch:  # pad the last chunk
                x = torch.cat([x, x[-1:].expand(self.batch - real_n, -1, -1, -1)])
            logits = torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: x.numpy()})[0]))[:real_n]
            if logits.ndim != 4:
                raise EvaluationError(f"Segmenter {self.path} must output [N, C, H, W] logits, got shape {tuple(logits.shape)}.")
            if tuple(logits.shape[2:]) != (h, w):
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            out.append(logits.argmax(1).numpy().astype(np.int64))
        return np.concatenate(out)

    def num_classes(self) -> int | None:
        c = self.session.get_outputs()[0].shape
        return c[1] if len(c) == 4 and isinstance(c[1], int) else None


# ------------------------------------------------------------------------------------------ diversity


def pixel_diversity(images_by_seed: list[np.ndarray]) -> float:
    """Mean absolute difference, in [0, 1] units, between the images of every pair of seeds (same label maps),
    averaged over pairs, maps and pixels; NaN for a single seed. Images: uint8 [N, H, W, 3] per seed."""
    if len(images_by_seed) < 2:
        return float("nan")
    total, pairs = 0.0, 0
    for a in range(len(images_by_seed)):
        for b in range(a + 1, len(images_by_seed)):
            diff = np.abs(images_by_seed[a].astype(np.int16) - images_by_seed[b].astype(np.int16))
            total += float(diff.mean()) / 255.0
            pairs += 1
    return total / pairs
