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

Quality: the Core ML model cannot run off macOS, so the numbers in the manifest come from torch
(``quality["measured_with"]`` says so), through the report every target shares (:mod:`calibration.compare`) on
the held-out part of the calibration set (``CalibrationSet.split()``; the quantizer never sees it): for ``int8w``
the generator with its weights quantized the way ``linear_quantize_weights`` does, for ``w8a8`` the calibrated,
frozen int8 module that is converted, each against float32. Float16 compute on the device lowers them a little
further; the notes say so. fp32 and fp16 packages carry no quality numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calibration import CalibrationSet, compare, torch_runner
from dpsims.errors import DpSimsError
from dpsims.optional import require
from export.base import ExportRequest, ExportResult, flag, number, text
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE
from runtimes.targets import TARGETS

PACKAGE = "model.mlpackage"
METADATA_KEY = "dp_sims"
PRECISIONS = TARGETS["coreml"].precisions
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


def export(req: ExportRequest) -> ExportResult:
    """Write ``model.mlpackage`` into ``req.out_dir``; see the module docstring for precisions and options
    (``image_output``: bool, ``deployment_target``: e.g. "iOS17", "iOS18", "macOS14", ``calib_batch``: int)."""
    ct = require("coremltools", "coreml", "coremltools")
    if req.precision not in PRECISIONS:
        raise CoreMLExportError(f"The coreml target exports {', '.join(PRECISIONS)}, not {req.precision!r}.")
    target_name = str(req.options.get("deployment_target", DEFAULT_DEPLOYMENT_TARGET))
    target = deployment_target(ct, target_name, req.precision)
    image_output = bool(req.options.get("image_output", False))
    batch = (1, 1, 1) if image_output else tuple(req.batch)

    module, quality, calibration = req.generator.eval(), None, None
    if req.precision == "w8a8":
        module, quality, calibration = _quantize_w8a8(req)
    elif req.precision == "int8w" and req.calib is not None:
        quality = _int8w_quality(req.generator, req.calib.split()[1])
    if image_output:
        module = PixelOutput(module).eval()

    start = time.perf_counter()
    program = export_program(module, req.input_size, req.noise_shape, batch)
    mlmodel = convert(ct, program, req.input_size, req.noise_shape, batch, req.precision, target, image_output)
    if req.precision == "int8w":
        mlmodel = quantize_weights(ct, mlmodel)
    describe(mlmodel, req, image_output)
    package = Path(req.out_dir) / PACKAGE
    mlmodel.save(str(package))
    seconds = time.perf_counter() - start

    notes = [
        f"Converted with coremltools {ct.__version__} in {seconds:.1f} s (deployment target {target_name}, "
        f"{'float32' if req.precision == 'fp32' else 'float16'} compute).",
        "The Core ML model itself was not run: Core ML prediction needs macOS. "
        + ("Its quality was measured in torch (see the manifest); float16 compute on the device lowers it a little."
           if quality else "Check it there with `python -m runtimes` against another target's output."),
    ]
    if not image_output and batch[0] != batch[2]:
        notes.append(f"Flexible batch {batch[0]}..{batch[2]}: the Neural Engine runs batch {batch[1]} (the default), "
                     "other batch sizes run on the CPU or GPU.")
    return ExportResult(
        files=package_files(req.out_dir),
        quality=quality,
        calibration=calibration,
        target_options={
            "package": PACKAGE,
            "deployment_target": target_name,
            "compute_precision": "float32" if req.precision == "fp32" else "float16",
            "image_output": image_output,
            "batch": list(batch),
        },
        notes=notes,
    )


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


def convert(ct: Any, program, input_size, noise_shape, batch, precision: str, target: Any, image_output: bool):
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
    """Embed the manifest JSON (``user_defined_metadata["dp_sims"]``) and describe the inputs and outputs (Xcode
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


def package_files(out_dir: Path) -> list[str]:
    """Every file inside the package, relative to ``out_dir`` (the manifest hashes each one)."""
    root = Path(out_dir)
    return sorted(p.relative_to(root).as_posix() for p in (root / PACKAGE).rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- quantized in torch


def _quantize_w8a8(req: ExportRequest) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Calibrate W8A8 in torch on the calibration part of ``req.calib``; return the module to convert, its quality
    against float32 on the held-out part, and the calibration summary."""
    from calibration.coreml import calibrate_w8a8, freeze_w8a8

    if req.calib is None:
        raise CoreMLExportError("--precision w8a8 calibrates activations: give calibration data with --calib.")
    calib_part, held_out = req.calib.split()
    w8a8 = calibrate_w8a8(req.generator, calib_part, batch_size=int(req.options.get("calib_batch", 8)))
    frozen = freeze_w8a8(w8a8)  # what is converted: measure it, not the fake-quantized module it came from
    quality = _torch_quality(req.generator, frozen, held_out, w8a8.kept_float)
    psnr = quality.get("psnr_db")
    if psnr is not None and psnr < req.min_psnr:
        from export.gate import ExportQualityError

        raise ExportQualityError(
            f"coreml w8a8: PSNR {psnr:.2f} dB against FP32 on {len(held_out)} held-out maps, below --min-psnr "
            f"{req.min_psnr:.1f} (kept float: {', '.join(w8a8.kept_float)}). Ship int8 weights (--precision int8) or "
            "fp16, or calibrate on maps from the training data (--calib, more --calib-samples)."
        )
    calibration = {
        **calib_part.summary(),
        "held_out": len(held_out),
        "method": "coremltools.optimize.torch LinearQuantizer: int8 per-channel symmetric weights, 8-bit "
        "symmetric activations from moving-average min/max observers",
    }
    return frozen, quality, calibration


def _int8w_quality(generator: nn.Module, held_out: CalibrationSet) -> dict[str, Any]:
    """The generator with its weights quantized as :func:`quantize_weights` does, against float32."""
    kept = [f"weights with <= {WEIGHT_THRESHOLD} elements", "activations (float16)"]
    return _torch_quality(generator, _with_int8_weights(generator), held_out, kept)


def _torch_quality(reference: nn.Module, candidate: nn.Module, held_out: CalibrationSet, kept: list[str]) -> dict[str, Any]:
    """The shared quality report (:func:`calibration.compare`) of ``candidate`` against ``reference``, both run in
    torch: Core ML itself predicts only on macOS."""
    quality = compare(torch_runner(reference), torch_runner(candidate), held_out)
    return {**quality, "kept_high_precision": kept, "measured_with": MEASURED_WITH}


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
