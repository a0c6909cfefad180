"""OpenVINO target: ``model.xml`` + ``model.bin`` (IR) at fp32, fp16 or int8, for Intel CPUs, GPUs and NPUs.

The IR is converted from the FP32 ONNX of :mod:`export.onnx` (one graph for every target, same node names):
fp16 compresses the weights to float16 (``save_model(compress_to_fp16=True)``; the device picks its compute
precision), int8 runs ``nncf.quantize`` on the calibration set (convolutions and matmuls; elementwise ops stay float unless
``-o quantize_elementwise=true``) with an ignored scope that the accuracy gate
(:mod:`export.gate`) widens until the held-out PSNR reaches the bar. Quality is measured on the CPU with
``INFERENCE_PRECISION_HINT=f32``, so the numbers show the artifact's own error, not bf16 compute of this CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from calibration import compare_images, run_all, torch_runner
from dpsims.errors import ConfigError
from dpsims.logs import quieted
from dpsims.optional import require
from export.base import ExportRequest, ExportResult, flag, one_of
from export.gate import ExportQualityError, exclusion_levels, run_gate
from export.onnx import export_fp32
from runtimes.spec import OUTPUT_IMAGE
from runtimes.targets import TARGETS

XML, BIN = "model.xml", "model.bin"
PRECISIONS = TARGETS["openvino"].precisions
#: the -o options this target reads (checked by export.api.check_options)
OPTIONS = {"preset": one_of("performance", "mixed"), "quantize_elementwise": flag}
RT_INFO_KEY = "dp_sims"
QUANTIZED_TYPES = ("Convolution", "GroupConvolution", "MatMul")
#: elementwise ops NNCF would also quantize on CPUs (SPADE's scale/shift products, residual sums); kept float, as
#: in the ONNX Q/DQ path: on the synthetic-tiny generator this lifts INT8 from 29.9 to 31.2 dB with 64 maps
ELEMENTWISE_TYPES = ["Multiply", "Add", "Subtract", "Divide"]


def float_lookup_tables(ov, xml: Path) -> int:
    """Put the label stem's lookup tables of a compressed FP16 IR back to f32, in place; returns how many.

    OpenVINO's CPU plugin runs a Gather on an f16 table with its reference kernel: 18 of 35 ms of the 128x128
    synthetic-tiny FP16 model, against 0.7 ms for an f32 table. The tables are a few KB to 0.7 MB."""
    import openvino.opset13 as ops

    model = ov.Core().read_model(str(xml))
    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        convert = op.input(0).get_source_output().get_node()
        if convert.get_type_name() != "Convert":
            continue
        const = convert.input(0).get_source_output().get_node()
        if const.get_type_name() == "Constant" and const.get_element_type() == ov.Type.f16:
            op.input(0).replace_source_output(ops.constant(const.get_data().astype(np.float32)).output(0))
            replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
        tmp = xml.with_name(xml.stem + ".tables.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=False)  # the other weights stay the f16 they are
        tmp.replace(xml)
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    return replaced


def export(req: ExportRequest) -> ExportResult:
    ov = require("openvino", "openvino")
    if req.precision not in PRECISIONS:
        raise ConfigError(f"The openvino target exports {', '.join(PRECISIONS)}, not {req.precision!r}.")
    onnx_path = req.out_dir / "fp32.onnx.tmp"
    export_fp32(req.generator, req.input_size, onnx_path, batch=req.batch)
    model = ov.convert_model(str(onnx_path))
    onnx_path.unlink()
    model.set_rt_info(json.dumps(req.metadata, sort_keys=True), RT_INFO_KEY)
    xml = req.out_dir / XML

    data = req.calib
    held_out = data.split()[1] if data is not None else None
    reference = run_all(torch_runner(req.generator), held_out) if held_out is not None else None
    quality, calibration = None, None
    if req.precision in ("fp32", "fp16"):
        ov.save_model(model, str(xml), compress_to_fp16=req.precision == "fp16")
        if req.precision == "fp16":
            float_lookup_tables(ov, xml)
        if held_out is not None:
            quality = compare_images(reference, run_all(compiled_runner(xml), held_out), held_out)
            if req.precision == "fp32":
                quality = {"max_abs_error_vs_torch": quality["max_abs_error"]}  # fp32: a check, not a precision loss
    else:
        if data is None:
            raise ExportQualityError("INT8 needs calibration data: give --calib (synthetic, a folder of label maps, or a dataset config).")
        nncf = require("nncf", "openvino")
        from calibration.adapters import nncf_dataset

        calib_part, _ = data.split()
        names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZED_TYPES]
        preset = req.options.get("preset", "performance")
        types = [] if req.options.get("quantize_elementwise", False) else ELEMENTWISE_TYPES

        def attempt(kept: list[str]) -> tuple[dict[str, Any], Any]:
            quantized = quantize(nncf, model, nncf_dataset(calib_part), len(calib_part), kept, preset, types)
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
            return compare_images(reference, run_all(compiled_runner(xml), held_out), held_out), None

        quality, kept, _ = run_gate(attempt, exclusion_levels(names), req.min_psnr, "openvino int8", names=names)
        quality["kept_high_precision"] = kept
        calibration = {**calib_part.summary(), "held_out": len(held_out),
                       "method": f"nncf.quantize ({preset} preset: symmetric int8 weights and activations, "
                                 "per-channel weights), fast bias correction"
                                 + ("" if types == [] else ", elementwise ops float")}
    if quality is not None:
        quality["measured_with"] = "OpenVINO CPU, INFERENCE_PRECISION_HINT=f32"
    return ExportResult(files=[XML, BIN], quality=quality, calibration=calibration,
                        target_options={"compressed_to_fp16": req.precision == "fp16"})


def quantize(nncf: Any, model: Any, dataset: Any, subset_size: int, kept_float: list[str], preset: str = "performance",
             float_types: list[str] | None = None) -> Any:
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise ConfigError(f"openvino preset must be one of {', '.join(presets)}, got {preset!r}.")
    with quieted("nncf"):  # its INFO chatter is not this package's progress
        return nncf.quantize(
            model, dataset, preset=presets[preset], subset_size=subset_size, fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=list(kept_float), types=list(float_types or []), validate=False),
        )


def compiled_runner(xml: Path, device: str = "CPU"):
    """A runner (see calibration.compare) over the IR compiled at float32 inference precision."""
    ov = require("openvino", "openvino")
    compiled = ov.Core().compile_model(str(xml), device, {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return np.array(request.infer(batch)[OUTPUT_IMAGE], copy=True)

    return run
