"""OpenVINO target: ``model.xml`` + ``model.bin`` (IR) at fp32, fp16 or int8, for Intel CPUs, GPUs and NPUs.

The IR is converted from the FP32 ONNX of :mod:`export.onnx` (one graph for every target, same node names):
fp16 compresses the weights to float16 (``save_model(compress_to_fp16=True)``; the device picks its compute
precision), int8 runs ``nncf.quantize`` on the calibration set (convolutions and matmuls; elementwise ops stay float unless
``-o quantize_elementwise=true``) with an ignored scope that export.api's accuracy gate (:mod:`export.gate`)
widens until the held-out PSNR reaches the bar. The gate measures each IR through the predictor's OpenVINO
backend on the CPU, whose default there is f32 inference precision, so the numbers show the artifact's own
error, not bf16 compute of this CPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import ConfigError
from dpsims.logs import quieted
from dpsims.optional import require
from export.base import Converted, ExportRequest, flag, one_of
from export.onnx import fp32_onnx
from runtimes.targets import METADATA_KEY, TARGETS

XML, BIN = TARGETS["openvino"].files
#: the -o options this target reads (checked by export.api.check_options)
OPTIONS = {"preset": one_of("performance", "mixed"), "quantize_elementwise": flag}
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


def convert(req: ExportRequest, keep_float: Sequence[str] = ()) -> Converted:
    """Write ``model.xml`` + ``model.bin`` at ``req.precision``; for int8, the ops named in ``keep_float`` stay
    float."""
    ov = require("openvino", "openvino")
    model = ov.convert_model(str(fp32_onnx(req)))
    xml = req.out_dir / XML
    method = None
    if req.precision == "int8":
        nncf = require("nncf", "openvino")
        from calibration.adapters import nncf_dataset

        data = req.calibration_data()
        preset = req.options.get("preset", "performance")
        types = [] if req.options.get("quantize_elementwise", False) else ELEMENTWISE_TYPES
        model = quantize(nncf, model, nncf_dataset(data), len(data), list(keep_float), preset, types)
        method = (f"nncf.quantize ({preset} preset: symmetric int8 weights and activations, per-channel weights), "
                  "fast bias correction" + ("" if types == [] else ", elementwise ops float"))
    model.set_rt_info(json.dumps(req.metadata, sort_keys=True), METADATA_KEY)
    ov.save_model(model, str(xml), compress_to_fp16=req.precision == "fp16")
    if req.precision == "fp16":
        float_lookup_tables(ov, xml)
    return Converted(target_options={"compressed_to_fp16": req.precision == "fp16"}, method=method)


def quantizable(req: ExportRequest) -> list[str]:
    """The convolutions and matmuls of the IR converted from the FP32 ONNX: the layers the gate may keep float."""
    ov = require("openvino", "openvino")
    model = ov.convert_model(str(fp32_onnx(req)))
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in QUANTIZED_TYPES]


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
