"""Calibration for CoreML: the data forms coremltools takes, and W8A8 quantization in torch.

Data, from a :class:`calibration.CalibrationSet` (the one source every target reads; its ``split()`` keeps the
held-out samples of the quality report away from the quantizer):

- :func:`sample_data`: one ``{"label": [1, H, W], "noise": [1, T, D]}`` dict per sample -- the ``sample_data`` of
  ``coremltools.optimize.coreml.experimental.linear_quantize_activations``, which calibrates a *converted* model
  by running it, so it works on macOS only.
- :func:`torch_inputs`: one ``CalibrationSet.batches`` dict as the ``(label, noise)`` tensors a torch model takes.

W8A8 (what ``python -m export --target coreml --precision w8a8`` uses, on any OS): :func:`calibrate_w8a8` inserts
``coremltools.optimize.torch`` fake quantization (int8 per-channel weights, 8-bit activations) into a copy of the
generator and records activation ranges on the calibration batches; the result runs in torch, so its quality can
be measured (with :mod:`calibration.compare`) before conversion. :func:`freeze_w8a8` turns it into a plain module
whose weights are int8 constants and whose activations pass through quantize/dequantize pairs -- the form ``coremltools.convert`` reads from a
``torch.export`` program (int8 ``constexpr`` weights, ``quantize``/``dequantize`` ops, iOS 17+).

Importing this module needs numpy only; torch and coremltools are imported by the functions that use them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration.sets import CalibrationSet
from dpsims.errors import BackendUnavailable, ConfigError
from dpsims.progress import progress
from runtimes.spec import INPUT_LABEL, INPUT_NOISE

if TYPE_CHECKING:
    import torch

#: Kept in float by default (docs/design.md, "INT8 and the accuracy gate"): the first and last convolutions, and
#: attention (its projections, scores and softmax). Normalisation statistics stay float anyway: batch norm is folded into the preceding conv and
#: layer norm is not an op coremltools quantizes.
DEFAULT_FLOAT_MODULES = ("encoder.stem.0", "head", "to_rgb")
DEFAULT_FLOAT_TYPES = ("Attention",)


# ------------------------------------------------------------------------------------------------ data forms


def sample_data(data: CalibrationSet, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """One ``{"label": [1, H, W], "noise": [1, ...]}`` dict per sample (the first ``limit`` samples if given):
    the ``sample_data`` of ``coremltools.optimize.coreml.experimental.linear_quantize_activations`` (macOS)."""
    return list(data.subset(0, limit).batches(1))


def torch_inputs(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label int32, noise float32)`` CPU tensors of one :meth:`CalibrationSet.batches` dict."""
    import torch

    return torch.from_numpy(batch[INPUT_LABEL]), torch.from_numpy(batch[INPUT_NOISE])


# ------------------------------------------------------------------------------------------------------ W8A8


@dataclass
class W8A8Model:
    """A generator with calibrated fake quantization (runs in torch) and what :func:`freeze_w8a8` needs."""

    module: torch.nn.Module
    """The prepared ``torch.fx.GraphModule``: forward(label, noise) -> image, with int8 simulation."""
    quantizer: Any
    """The ``coremltools.optimize.torch.quantization.LinearQuantizer`` that prepared ``module``."""
    samples: int
    kept_float: list[str] = field(default_factory=list)


def calibrate_w8a8(
    generator: torch.nn.Module,
    data: CalibrationSet,
    batch_size: int = 8,
    float_modules: Iterable[str] = DEFAULT_FLOAT_MODULES,
    float_types: Iterable[str] = DEFAULT_FLOAT_TYPES,
) -> W8A8Model:
    """Quantize a copy of ``generator`` (int8 per-channel symmetric weights, 8-bit symmetric activations) with
    ``coremltools.optimize.torch`` and calibrate its activation ranges on ``data`` (the calibration part of a
    :class:`CalibrationSet`, never its held-out samples), fed in batches of ``batch_size``.

    ``float_modules`` (qualified names) and ``float_types`` (class names) stay in float: everything inside them,
    functional ops (matmul, softmax) included. Names that match nothing are ignored, so the defaults fit any
    generator size. ``generator`` itself is not modified."""
    import torch
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    model = _with_affine_batchnorm(copy.deepcopy(generator).eval())
    names = {name for name, _ in model.named_modules()}
    kept = [n for n in float_modules if n in names]
    types = {type(m) for m in model.modules() if type(m).__name__ in set(float_types)}
    kept += sorted(f"{t.__name__} (every instance)" for t in types)
    config = LinearQuantizerConfig(
        # milestones=None: observers and fake quantization are on from the start (calibration, not QAT)
        global_config=ModuleLinearQuantizerConfig(quantization_scheme="symmetric", milestones=None),
        module_type_configs={t: None for t in types},
        module_name_configs={n: None for n in float_modules if n in names},
    )
    quantizer = LinearQuantizer(model, config)
    batches = [torch_inputs(b) for b in data.batches(batch_size)]
    prepared = quantizer.prepare(example_inputs=batches[0])
    prepared.eval()  # batch norm keeps its running statistics; the observers still record (they ignore the mode)
    with torch.no_grad():
        for label, noise in progress(batches, "calibration (W8A8 observers)", unit="batch"):
            prepared(label, noise)
    prepared.apply(torch.ao.quantization.disable_observer)  # freeze the ranges: later forwards only simulate
    return W8A8Model(prepared, quantizer, len(data), kept)


def freeze_w8a8(model: W8A8Model) -> torch.nn.Module:
    """A module computing the same as ``model.module`` whose weights are int8 buffers dequantized per channel in
    the graph and whose activations go through ``quantized_decomposed`` quantize/dequantize ops: what
    ``torch.export`` + ``coremltools.convert`` turn into int8 weights and int8 activation ops."""
    from coremltools.optimize.torch.quantization._backend_config import get_backend_config
    from torch.ao.nn.quantized.reference.modules.utils import ReferenceQuantizedModule

    try:  # torch's converter to the decomposed (plain int8 tensor) representation; private, so guard it
        from torch.ao.quantization.quantize_fx import _convert_to_reference_decomposed_fx
    except ImportError as e:  # pragma: no cover - depends on the torch version
        raise BackendUnavailable(
            f"This torch version lacks torch.ao.quantization.quantize_fx._convert_to_reference_decomposed_fx ({e}); "
            "W8A8 CoreML export needs it. Use --precision int8w, or a torch version that has it."
        ) from None

    reference = _convert_to_reference_decomposed_fx(
        copy.deepcopy(model.module),
        qconfig_mapping=model.quantizer._qconfig_mapping,  # the mapping prepare() used
        backend_config=get_backend_config(),
    )
    layer_class = int8_weight_layer_class()
    for name, module in list(reference.named_modules()):
        if isinstance(module, ReferenceQuantizedModule):
            parent, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent) if parent else reference, child, layer_class(module))
    return reference.eval()


@functools.cache
def int8_weight_layer_class() -> type:
    """The ``Int8WeightLayer`` module class (defined on first use, so that importing this module needs no torch)."""
    import torch
    import torch.nn.functional as F

    class Int8WeightLayer(torch.nn.Module):
        """A conv or linear layer whose weight is an int8 buffer, dequantized per output channel in forward."""

        def __init__(self, reference: torch.nn.Module):
            super().__init__()
            if reference.weight_qscheme not in (torch.per_channel_affine, torch.per_channel_symmetric):
                raise ConfigError(f"Expected per-channel weight quantization, got {reference.weight_qscheme}.")
            self.register_buffer("qweight", reference.get_quantized_weight().to(torch.int8))
            self.register_buffer("scale", reference.weight_scale.to(torch.float32))
            self.register_buffer("zero_point", reference.weight_zero_point.to(torch.int32))
            self.axis = reference.weight_axis_int
            self.qrange = (reference.weight_quant_min, reference.weight_quant_max)
            self.bias = reference.bias
            if isinstance(reference, torch.nn.Conv2d):
                if reference.padding_mode != "zeros":
                    raise ConfigError(f"Only zero padding is supported, got {reference.padding_mode!r}.")
                self.op = functools.partial(
                    F.conv2d, stride=reference.stride, padding=reference.padding,
                    dilation=reference.dilation, groups=reference.groups,
                )
            elif isinstance(reference, torch.nn.Linear):
                self.op = F.linear
            else:
                raise ConfigError(f"No int8 weight layer for {type(reference).__name__}.")

        def dequantized_weight(self) -> torch.Tensor:
            return torch.ops.quantized_decomposed.dequantize_per_channel(
                self.qweight, self.scale, self.zero_point, self.axis, *self.qrange, torch.int8
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.op(x, self.dequantized_weight(), self.bias)

    return Int8WeightLayer


def _with_affine_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter-free batch norm identity scale and shift (same outputs), so that the conv + batch norm
    fusion of torch's FX quantization, which expects an affine norm, can fold it into the conv."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not module.affine:
            module.affine = True
            module.weight = torch.nn.Parameter(torch.ones(module.num_features))
            module.bias = torch.nn.Parameter(torch.zeros(module.num_features))
    return model
