"""CoreML target: an ML Program package, ``model.mlpackage`` (a directory), for iOS, iPadOS and macOS.

The generator goes through ``torch.export`` (``run_decompositions({})``) into ``coremltools.convert``: converting a
``torch.jit.trace`` fails with coremltools 9 on recent torch as soon as the graph derives sizes from shapes.

Precisions
- ``fp32``: float32 compute (CPU/GPU; the Neural Engine computes in float16 only).
- ``fp16``: float16 compute and weights -- the default choice for Apple devices.
- ``int8w``: float16 compute, weights linearly quantized to int8 per output channel (``linear_quantize_weights``):
  about half the size of fp16, same speed or better where loading weights is the bottleneck.
- ``w8a8``: int8 weights and activations. Calibrated in torch with ``coremltools.optimize.torch`` on the calibration
  set (prediction, which activation calibration of a converted model needs, is macOS-only), then converted to
  int8 ``constexpr`` weights and ``quantize``/``dequantize`` activation ops; the Neural Engine of A17 Pro / M4 and
  later runs int8-int8 compute. Needs iOS 17 / macOS 14.

Graph contract: inputs ``label`` int32 [N, H, W] and ``noise`` float32 [N, T, D], output ``image`` float32
[N, 3, H, W] in [-1, 1]. N is flexible within the request's (min, opt, max) batch (``ct.RangeDim``, default = opt;
Core ML runs range-flexible models on the Neural Engine for the default shape only, on CPU/GPU for the others).
With ``image_output`` the graph maps the image to 0..255 and returns it as an RGB image (``ct.ImageType``), which
Core ML allows for batch 1 only: such packages have a fixed batch of 1.

Quality: the Core ML model cannot run off macOS, so :func:`convert` hands export.api a torch stand-in to measure
(``Target.measure == "converter"``; ``quality["measured_with"]`` says so), through the report every target shares
(:mod:`calibration.compare`) on the held-out part of the calibration set (the quantizer never sees it): for
``int8w`` the generator with its weights quantized the way ``linear_quantize_weights`` does, for ``w8a8`` the
calibrated, frozen int8 module that :func:`finish` converts, each against float32; w8a8 passes the accuracy
gate (one attempt: the calibration decides what stays float). Float16 compute on the device lowers the numbers a
little further; the notes say so. fp32 and fp16 packages carry no quality numbers. The coremltools conversion,
the slow step, runs in :func:`finish`, once the measured module has passed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dpsims.errors import DpSimsError
from dpsims.optional import require
from export.base import Converted, ExportRequest, flag, number, text
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE
from runtimes.targets import METADATA_KEY, TARGETS

(PACKAGE,) = TARGETS["coreml"].files
DEFAULT_DEPLOYMENT_TARGET = "iOS17"
#: the -o options this target reads (checked by export.api.check_options)
OPTIONS = {"deployment_target": text, "image_output": flag, "calib_batch": number(int, 1)}
#: weights with at most this many elements stay float16 in ``int8w`` (coremltools' default): per-channel scales
#: would cost more than they save
WEIGHT_THRESHOLD = 2048
#: where the quality numbers of int8w and w8a8 come from (``quality["measured_with"]`` in the manifest)
MEASURED_WITH = ("torch on the CPU, float32 compute, quantization simulated (Core ML predicts only on macOS; "
                 "float16 compute on the device lowers the PSNR a little)")


class CoreMLExportError(DpSimsError, ValueError):
    """A CoreML export that cannot be made as asked (precision, deployment target, missing calibration data)."""


class PixelOutput(nn.Module):
    """The generator with its [-1, 1] image mapped to 0..255, the value range of a Core ML image output."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, label: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (self.generator(label, noise).clamp(-1.0, 1.0) + 1.0) * 127.5


def convert(req: ExportRequest, keep_float: Sequence[str] = ()) -> Converted:
    """Check the deployment target and make the torch module to convert: for w8a8 calibrated on ``req.calib``,
    for int8w the generator with int8 weights; either is the stand-in export.api measures (``keep_float`` is
    unused: the calibration decides). The package itself is written by :func:`finish`."""
    ct = require("coremltools", "coreml", "coremltools")
    target_name = str(req.options.get("deployment_target", DEFAULT_DEPLOYMENT_TARGET))
    deployment_target(ct, target_name, req.precision)
    image_output = bool(req.options.get("image_output", False))
    batch = (1, 1, 1) if image_output else tuple(req.batch)
    converted = Converted(target_options={
        "package": PACKAGE,
        "deployment_target": target_name,
        "compute_precision": "float32" if req.precision == "fp32" else "float16",
        "image_output": image_output,
        "batch": list(batch),
    })
    if req.precision == "w8a8":
        from calibration.coreml import calibrate_w8a8, freeze_w8a8

        w8a8 = calibrate_w8a8(req.generator, req.calibration_data(), batch_size=int(req.options.get("calib_batch", 8)))
        method = ("coremltools.optimize.torch LinearQuantizer: int8 per-channel symmetric weights, 8-bit symmetric "
                  "activations from moving-average min/max observers")
        # what is converted, and so what is measured: the frozen module, not the fake-quantized one it came from
        return replace(converted, stand_in=freeze_w8a8(w8a8), kept_float=list(w8a8.kept_float), method=method,
                       measured_with=MEASURED_WITH)
    if req.precision == "int8w":
        kept = [f"weights with <= {WEIGHT_THRESHOLD} elements", "activations (float16)"]
        return replace(converted, stand_in=_with_int8_weights(req.generator), kept_float=kept,
                       measured_with=MEASURED_WITH)
    return converted


def finish(req: ExportRequest, converted: Converted) -> Converted:
    """Convert the module :func:`convert` made (w8a8: the measured stand-in; else the generator) into
    ``model.mlpackage``; int8w quantizes its weights in the package."""
    ct = require("coremltools", "coreml", "coremltools")
    options = converted.target_options
    target_name, image_output, batch = options["deployment_target"], options["image_output"], tuple(options["batch"])
    module = converted.stand_in if req.precision == "w8a8" else req.generator.eval()
    if image_output:
        module = PixelOutput(module).eval()

    start = time.perf_counter()
    program = export_program(module, req.input_size, req.noise_shape, batch)
    target = deployment_target(ct, target_name, req.precision)
    mlmodel = to_mlmodel(ct, program, req.input_size, req.noise_shape, batch, req.precision, target, image_output)
    if req.precision == "int8w":
        mlmodel = quantize_weights(ct, mlmodel)
    describe(mlmodel, req, image_output)
    mlmodel.save(str(Path(req.out_dir) / PACKAGE))
    seconds = time.perf_counter() - start

    notes = [
        f"Converted with coremltools {ct.__version__} in {seconds:.1f} s (deployment target {target_name}, "
        f"{'float32' if req.precision == 'fp32' else 'float16'} compute).",
        "The Core ML model itself was not run: Core ML prediction needs macOS. "
        + ("Its quality was measured in torch (see the manifest); float16 compute on the device lowers it a little."
           if converted.stand_in is not None else
           "Check it there with `python -m runtimes` against another target's output."),
    ]
    if not image_output and batch[0] != batch[2]:
        notes.append(f"Flexible batch {batch[0]}..{batch[2]}: the Neural Engine runs batch {batch[1]} (the default), "
                     "other batch sizes run on the CPU or GPU.")
    return replace(converted, notes=[*converted.notes, *notes])


# ------------------------------------------------------------------------------------------------ conversion


def deployment_target(ct: Any, name: str, precision: str) -> Any:
    """The ``ct.target`` member named ``name``: iOS16 / macOS13 at least (int8 weights), iOS17 for ``w8a8``."""
    target = getattr(ct.target, name, None)
    if target is None:
        known = ", ".join(t.name for t in ct.target)
        raise CoreMLExportError(f"Unknown deployment_target {name!r}; coremltools knows {known}.")
    minimum = ct.target.iOS17 if precision == "w8a8" else ct.target.iOS16
    if target < minimum:
        raise CoreMLExportError(
            f"--precision {precision} needs deployment_target {minimum.name} or later (macOS "
            f"{'14' if minimum == ct.target.iOS17 else '13'}); got {name}."
        )
    return target


def export_program(module: nn.Module, input_size, noise_shape, batch) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module(label, noise)`` with a dynamic batch when ``batch`` spans a range, decomposed
    to the ATen dialect coremltools reads."""
    low, _, high = batch
    example_batch = min(max(low, 2), high)  # torch.export specializes a dimension traced at size 1
    label = torch.zeros((example_batch, *input_size), dtype=torch.int32)
    noise = torch.zeros((example_batch, *noise_shape), dtype=torch.float32)
    dynamic = None
    if high > low:
        dim = torch.export.Dim("batch", min=low, max=high)
        dynamic = {"label": {0: dim}, "noise": {0: dim}}
    with torch.no_grad():
        program = torch.export.export(module, (label, noise), dynamic_shapes=dynamic)
    return program.run_decompositions({})


def to_mlmodel(ct: Any, program, input_size, noise_shape, batch, precision: str, target: Any, image_output: bool):
    """``coremltools.convert`` of ``program`` into an ML Program with the contract's names and types."""
    low, default, high = batch
    n = ct.RangeDim(lower_bound=low, upper_bound=high, default=default, symbol="batch") if high > low else low
    inputs = [
        ct.TensorType(name=INPUT_LABEL, shape=(n, *input_size), dtype=np.int32),
        ct.TensorType(name=INPUT_NOISE, shape=(n, *noise_shape), dtype=np.float32),
    ]
    if image_output:
        output = ct.ImageType(name=OUTPUT_IMAGE, color_layout=ct.colorlayout.RGB)
    else:
        output = ct.TensorType(name=OUTPUT_IMAGE, dtype=np.float32)
    return ct.convert(
        program,
        inputs=inputs,
        outputs=[output],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=target,
        skip_model_load=True,  # loading compiles the model, which needs macOS
    )


def quantize_weights(ct: Any, mlmodel: Any, weight_threshold: int = WEIGHT_THRESHOLD) -> Any:
    """int8 symmetric per-output-channel weights for every weight with more than ``weight_threshold`` elements."""
    config = ct.optimize.coreml.OptimizationConfig(
        global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=weight_threshold
        )
    )
    return ct.optimize.coreml.linear_quantize_weights(mlmodel, config=config)


def describe(mlmodel: Any, req: ExportRequest, image_output: bool) -> None:
    """Embed the manifest JSON (``user_defined_metadata[METADATA_KEY]``) and describe the inputs and outputs (Xcode
    shows these)."""
    h, w = req.input_size
    mlmodel.short_description = "DP-SIMS generator: semantic label map + noise -> RGB image"
    mlmodel.input_description[INPUT_LABEL] = f"class ids 0..{len(req.classes) - 1}, int32 [N, {h}, {w}]"
    mlmodel.input_description[INPUT_NOISE] = (
        f"standard normal noise, float32 [N, {', '.join(map(str, req.noise_shape))}]"
    )
    mlmodel.output_description[OUTPUT_IMAGE] = (
        f"RGB image {w}x{h}" if image_output else f"RGB image in [-1, 1], float32 [N, 3, {h}, {w}]"
    )
    mlmodel.user_defined_metadata[METADATA_KEY] = json.dumps(req.metadata, sort_keys=True)


# ------------------------------------------------------------------------------------------- quantized in torch


def _with_int8_weights(generator: nn.Module, weight_threshold: int = WEIGHT_THRESHOLD) -> nn.Module:
    import copy

    model = copy.deepcopy(generator).eval()
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (nn.Conv2d, nn.Linear)) and weight.numel() > weight_threshold:
                dims = tuple(range(1, weight.ndim))
                scale = weight.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
                weight.copy_(torch.clamp(torch.round(weight / scale), -127, 127) * scale)
    return model
