"""ONNX target: ``model.onnx`` at fp32, fp16 or int8 (Q/DQ), the hub the OpenVINO and TensorRT targets build on.

- fp32: the TorchScript-based exporter (opset 17, the newest TensorRT 8.6 parses; it gives plain named nodes such as
  ``/blocks.0.0/conv0/Conv``, which the INT8 exclusion patterns rely on), ``onnx.checker`` full check and shape
  inference. export.api runs it through the predictor's ONNX Runtime backend against torch
  (``max_abs_error_vs_torch``).
- fp16: float16 weights and compute with float32 inputs/outputs; normalisations, softmax and the label one-hot
  stay float32 (``onnxruntime.transformers.float16``).
- int8: ONNX Runtime's static quantizer in QDQ form: int8 symmetric per-channel weights, int8 symmetric activations
  (``qdq_for="tensorrt"``, the form TensorRT reads; the default; Q/DQ on the inputs and weights of Conv/MatMul/Gemm,
  not on their outputs: :data:`TENSORRT_QDQ_OPTIONS`) or uint8 asymmetric activations
  (``qdq_for="cpu"``, faster in ONNX Runtime on CPUs), Conv/MatMul/Gemm only; NVIDIA ModelOpt's ONNX PTQ makes
  the TensorRT form instead where it is installed (``-o quantizer=auto|modelopt|onnxruntime``); with ModelOpt,
  ``-o high_precision=fp16`` computes the layers INT8 leaves float in FP16 (else FP32 in a strongly typed build).
  Calibrated on the calibration set; export.api's accuracy gate (:mod:`export.gate`) calls :func:`convert` with
  more layers kept float (:func:`quantizable` names the candidates) until the held-out PSNR reaches the bar.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibration import CalibrationSet
from dpsims.errors import ConfigError
from dpsims.optional import require
from export.base import QDQ_OPTIONS, Converted, ExportRequest
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE
from runtimes.targets import METADATA_KEY, TARGETS

(MODEL,) = TARGETS["onnx"].files
DEFAULT_OPSET = 17
#: the -o options this target reads (checked by export.api.check_options)
OPTIONS = QDQ_OPTIONS
#: op types kept float32 in fp16 models: normalisation statistics, softmax, and the one-hot comparison
FP16_KEEP = ["BatchNormalization", "InstanceNormalization", "LayerNormalization", "Softmax", "Equal", "Erf",
             "ReduceMean", "Pow", "Sqrt"]
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
#: ONNX Runtime's quantize_static options for the TensorRT form, after TensorRT's Q/DQ placement guidance and
#: ModelOpt's ONNX settings (modelopt.onnx.quantization.ort_utils.configure_ort): Q/DQ on the inputs and weights of
#: the weighted ops only, never on their outputs (TensorRT fuses a Conv with what follows it and quantizes the
#: next weighted op's input itself); weights as float + a Q/DQ pair; per-channel on the output channels.
TENSORRT_QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": False,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "MatMul": 1},
}
#: the CPU form: uint8 asymmetric activations, int32 biases, outputs quantized (ONNX Runtime fuses QLinearConv)
CPU_QDQ_OPTIONS = {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True}


def convert(req: ExportRequest, keep_float: Sequence[str] = ()) -> Converted:
    """Write ``model.onnx`` at ``req.precision``; for int8, the nodes named in ``keep_float`` stay float."""
    require("onnx", "onnx")
    require("onnxruntime", "onnx")
    opset = int(req.options.get("opset", DEFAULT_OPSET))
    high_precision = check_high_precision(req)
    path = req.out_dir / MODEL
    method = None
    if req.precision == "fp32":
        export_fp32(req.generator, req.input_size, path, opset, req.batch)
    elif req.precision == "fp16":
        convert_fp16(fp32_onnx(req), path)
    else:
        data = req.calibration_data()
        activations = "int8" if req.options.get("qdq_for", "tensorrt") == "tensorrt" else "uint8"
        quantizer = choose_quantizer(str(req.options.get("quantizer", "auto")), activations)
        calibrate = req.options.get("calibrate_method", "minmax")
        if quantizer == "modelopt":
            quantize_modelopt(fp32_onnx(req), path, data, list(keep_float), calibrate, high_precision)
        else:
            quantize_qdq(fp32_onnx(req), path, data, list(keep_float), activations, calibrate)
        how = ("NVIDIA ModelOpt ONNX PTQ (TensorRT explicit-quantization rules)" if quantizer == "modelopt"
               else "onnxruntime quantize_static QDQ")
        method = (f"{how}, {calibrate}, int8 symmetric per-channel weights, {activations} activations"
                  + (" symmetric, float biases" if activations == "int8" else " asymmetric")
                  + (", float layers in FP16" if high_precision == "fp16" else ""))
    embed_metadata(path, req.metadata)
    return Converted(target_options={"opset": opset, "onnx_precision": req.precision}, method=method)


def quantizable(req: ExportRequest) -> list[str]:
    """The Conv/MatMul/Gemm node names of the FP32 graph, the layers the accuracy gate may keep float."""
    check_high_precision(req)
    return node_names(fp32_onnx(req))


def fp32_onnx(req: ExportRequest) -> Path:
    """The FP32 ONNX of ``req``'s generator in its scratch folder, exported on the first call of an export (every
    reduced precision and gate attempt starts from it)."""
    path = req.scratch / "fp32.onnx"
    if not path.is_file():
        export_fp32(req.generator, req.input_size, path, int(req.options.get("opset", DEFAULT_OPSET)), req.batch)
    return path


def export_fp32(generator: Any, input_size: tuple[int, int], path: Path, opset: int = DEFAULT_OPSET,
                batch: tuple[int, int, int] = (1, 1, 16)) -> None:
    """The graph contract in ONNX: label int32 [N, H, W], noise float32 [N, ...], image float32 [N, 3, H, W]."""
    import warnings

    import onnx
    import torch

    n = max(2, min(int(batch[1]), 4))  # a batch of 2+ keeps the exporter from specialising on batch 1
    label = torch.zeros(n, *input_size, dtype=torch.int32)
    noise = torch.zeros(n, *generator.noise_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        torch.onnx.export(
            generator.eval(), (label, noise), str(path), input_names=[INPUT_LABEL, INPUT_NOISE],
            output_names=[OUTPUT_IMAGE], opset_version=opset, do_constant_folding=True, dynamo=False,
            dynamic_axes={INPUT_LABEL: {0: "batch"}, INPUT_NOISE: {0: "batch"}, OUTPUT_IMAGE: {0: "batch"}},
        )
    model = onnx.load(str(path))
    # The exporter's own shape guesses lose the static H, W after a Pad (they come out as symbols, also on the
    # 'image' output). The contract fixes them per artifact: declare them and let ONNX's inference, which folds
    # constant pads, redo the intermediate shapes.
    del model.graph.value_info[:]
    for output in model.graph.output:
        if output.name == OUTPUT_IMAGE:
            dims = output.type.tensor_type.shape.dim
            for dim, value in zip(list(dims)[1:], (3, *input_size)):
                dim.dim_value = int(value)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.save(model, str(path))


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP16_KEEP)
    wrapped = OnnxModel(model)
    wrapped.topological_sort()  # the converter appends its casts after their consumers
    model = wrapped.model
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def quantize_qdq(src: Path, dst: Path, data: CalibrationSet, exclude: list[str], activations: str = "int8",
                 method: str = "minmax") -> None:
    """Static Q/DQ quantization of ``src`` into ``dst`` calibrated on ``data``; ``exclude`` node names stay float.

    ``activations="int8"`` is the TensorRT form: symmetric int8 everywhere and float biases (TensorRT's
    DequantizeLinear reads int8 only, so ONNX Runtime's int32 bias Q/DQ would not parse); ``"uint8"`` is the CPU
    form with asymmetric uint8 activations and int32 biases (what ONNX Runtime fuses into QLinearConv)."""
    from onnxruntime import quantization as q

    from calibration.adapters import ort_reader

    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    if method not in methods:
        raise ConfigError(f"calibrate_method must be one of {', '.join(methods)}, got {method!r}.")
    symmetric = activations == "int8"
    with quiet_quantizer_log():  # its "consider pre-processing" hint, logged on the root logger
        q.quantize_static(
            str(src), str(dst), ort_reader(data, batch_size=1), quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=exclude, calibrate_method=methods[method],
            extra_options=dict(TENSORRT_QDQ_OPTIONS if symmetric else CPU_QDQ_OPTIONS),
        )


@contextlib.contextmanager
def quiet_quantizer_log() -> Iterator[None]:
    """Drop the warnings ONNX Runtime's quantizer logs through the root logger (``logging.warning``) while the block
    runs, and nothing else: the root logger's level, handlers and other records are left as they are. A NullHandler
    is added for the block when the root has none, so that ``logging.warning`` does not call basicConfig."""
    root = logging.getLogger()
    marker = f"onnxruntime{os.sep}quantization"

    def keep(record: logging.LogRecord) -> bool:
        return marker not in record.pathname

    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if placeholder is not None:
            root.removeHandler(placeholder)


def choose_quantizer(name: str, activations: str) -> str:
    """'modelopt' or 'onnxruntime'. 'auto': ModelOpt for the TensorRT form where it is installed (the ``tensorrt``
    extra; it brings onnxruntime-gpu, so it lives in the device's environment), ONNX Runtime otherwise."""
    import importlib.util

    if name not in ("auto", "modelopt", "onnxruntime"):
        raise ConfigError(f"-o quantizer must be auto, modelopt or onnxruntime, got {name!r}.")
    if name == "modelopt" and activations != "int8":
        raise ConfigError("ModelOpt writes the TensorRT form (int8 activations); drop -o qdq_for=cpu or use -o quantizer=onnxruntime.")
    if name == "auto":
        found = importlib.util.find_spec("modelopt") is not None and activations == "int8"
        return "modelopt" if found else "onnxruntime"
    return name


def check_high_precision(req: ExportRequest) -> str:
    """``-o high_precision``: what the layers INT8 leaves float compute in. fp32 (default) or fp16, which only
    ModelOpt writes (its AutoCast casts them with the Q/DQ scales TensorRT fuses; a strongly typed build keeps
    them FP32 otherwise). Checked before any work."""
    high = str(req.options.get("high_precision", "fp32")).lower()
    if high == "fp32":
        return high
    if req.precision != "int8":
        raise ConfigError("-o high_precision=fp16 is for --precision int8 (the layers INT8 keeps float); "
                          "--precision fp16 makes a whole FP16 model.")
    activations = "int8" if req.options.get("qdq_for", "tensorrt") == "tensorrt" else "uint8"
    if choose_quantizer(str(req.options.get("quantizer", "auto")), activations) != "modelopt":
        raise ConfigError("-o high_precision=fp16 needs NVIDIA ModelOpt (pip install 'dp-sims[tensorrt]', "
                          "-o quantizer=modelopt): its AutoCast writes FP16 float layers TensorRT fuses with the Q/DQ. "
                          "ONNX Runtime's converter would put casts between DequantizeLinear and Conv.")
    return high


def quantize_modelopt(src: Path, dst: Path, data: CalibrationSet, exclude: list[str], method: str = "minmax",
                      high_precision: str = "fp32") -> None:
    """ModelOpt's ONNX PTQ (``modelopt.onnx.quantization.quantize``) of ``src`` into ``dst``: int8 Q/DQ placed by
    TensorRT's rules, calibrated on the CPU; layers not quantized stay float32 (the graph contract's dtypes), or
    float16 with ``high_precision="fp16"`` (inputs and outputs stay float32)."""
    mq = require("modelopt.onnx.quantization", "tensorrt", "nvidia-modelopt")
    from calibration.adapters import modelopt_arrays

    methods = {"minmax": "max", "entropy": "entropy"}
    if method not in methods:
        raise ConfigError(f"ModelOpt calibrates with {', '.join(methods)}, not {method!r}.")
    mq.quantize(
        onnx_path=str(src), quantize_mode="int8", calibration_data=modelopt_arrays(data),
        calibration_method=methods[method], calibration_eps=["cpu"], op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_exclude=list(exclude), output_path=str(dst), high_precision_dtype=high_precision, log_level="WARNING",
    )


def node_names(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in QUANTIZED_OPS]


def session_runner(path: Path, threads: int | None = None):
    """A runner (see calibration.compare) over an ONNX Runtime CPU session of ``path`` (the benchmarks' peer
    comparisons; export measures artifacts through the predictor instead)."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([OUTPUT_IMAGE], batch)[0]

    return run


def embed_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """The manifest's known fields as JSON in ``metadata_props`` (key ``runtimes.targets.METADATA_KEY``)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    model.producer_name, model.producer_version = "dp-sims", metadata.get("library_versions", {}).get("dp-sims", "")
    onnx.save(model, str(path))

