"""TensorRT target: ``model.onnx`` at the requested precision + a build plan, and the engine where TensorRT is here.

The ONNX is the portable part of a TensorRT artifact: FP16 as float16 casts, INT8 as explicit Q/DQ nodes
(symmetric int8, what TensorRT reads), converted by the onnx target (:mod:`export.onnx`). The engine cannot be
built on every exporting machine, so export.api measures the artifact's ONNX in ONNX Runtime
(``Target.measure``), the same numbers an onnx artifact of the same options reports. TensorRT 11 builds only such strongly typed networks; 8.6 and 10 build them
too. The engine (``model.engine``, TensorRT's plan, byte for byte) is tied to a GPU model and TensorRT version: it
is built here when ``tensorrt`` and a GPU are present, otherwise on the device -- by the runtime on first load,
or ahead of time by ``python -m export --target tensorrt --from model.onnx`` (:func:`export_from_onnx`, no torch).
Engines are device caches (validated by their sidecar ``model.engine.json``), not listed in the manifest's files.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpsims.errors import BackendUnavailable, ManifestError
from export.base import QDQ_OPTIONS, Converted, ExportRequest, check_out_dir, number, staged_dir
from runtimes.spec import file_entry, read_manifest, write_manifest
from runtimes.targets import TARGETS
from runtimes.trt_engine import (
    ENGINE_NAME,
    EngineBuildError,
    build_engine,
    detect_onnx_precision,
    import_tensorrt,
    timing_cache_name,
)

(ONNX_NAME,) = TARGETS["tensorrt"].files
DEFAULT_OPSET = 17  # the newest opset TensorRT 8.6 (JetPack 6.0) parses
MIN_QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)
PRECISIONS = TARGETS["tensorrt"].precisions
#: the -o options this target reads (checked by export.api.check_options): the ONNX quantizer's, plus the engine's
OPTIONS = {**QDQ_OPTIONS, "dla": number(int, 0), "workspace_gb": number(float, 0.01)}
#: the weight input and its output-channel axis, per weighted op (TensorRT quantizes weights per output channel)
WEIGHT_AXIS = {"Conv": (1, 0), "ConvTranspose": (1, 1), "MatMul": (1, 1)}


def check_dla_batch(dla: Any, batch: tuple[int, int, int]) -> None:
    """DLA runs static shapes: an artifact for DLA has one batch size (min = max)."""
    from dpsims.errors import ConfigError  # torch-free

    if dla is not None and batch[0] != batch[2]:
        opt = batch[1]
        raise ConfigError(
            f"--dla needs one batch size (DLA runs static shapes; with a dynamic batch {','.join(map(str, batch))} "
            f"the layers fall back to the GPU): give --batch {opt},{opt},{opt}."
        )


def onnx_request(req: ExportRequest) -> ExportRequest:
    """``req`` as the onnx converter takes it: the TensorRT opset and symmetric int8 Q/DQ (the form TensorRT reads)
    unless the options say otherwise; a DLA request with a dynamic batch is refused first."""
    options = dict(req.options)
    check_dla_batch(options.get("dla"), req.batch)
    options.setdefault("opset", DEFAULT_OPSET)
    options.setdefault("qdq_for", "tensorrt")
    return replace(req, options=options)


def quantizable(req: ExportRequest) -> list[str]:
    from export import onnx as onnx_target

    return onnx_target.quantizable(onnx_request(req))


def convert(req: ExportRequest, keep_float: Sequence[str] = ()) -> Converted:
    """Write ``model.onnx`` through the onnx converter and check that TensorRT can read its quantization; the build
    plan goes into ``target_options``."""
    from export import onnx as onnx_target

    request = onnx_request(req)
    converted = onnx_target.convert(request, keep_float)
    onnx_path = req.out_dir / ONNX_NAME
    onnx_precision = detect_onnx_precision(onnx_path)
    notes = list(converted.notes)
    if onnx_precision == "int8":
        notes += check_qdq_for_tensorrt(onnx_path)
    plan = build_plan(req.precision, onnx_precision, req.batch, int(request.options["opset"]), request.options)
    return replace(converted, target_options={**converted.target_options, **plan}, notes=notes)


def finish(req: ExportRequest, converted: Converted) -> Converted:
    """Build the engine of the ONNX the gate kept when TensorRT and a GPU are here (else say the device will)."""
    notes = build_here(req.out_dir, converted.target_options, req.input_size, req.noise_shape)
    return replace(converted, notes=[*converted.notes, *notes])


def build_plan(precision: str, onnx_precision: str, batch: tuple[int, int, int], opset: int | None, options: dict) -> dict:
    """``target_options`` of the manifest: what the device builds (the runtime reads it in load_or_build)."""
    dla = options.get("dla")
    return {
        "onnx": ONNX_NAME,
        "precision": precision,
        "onnx_precision": onnx_precision,
        "batch": list(batch),
        "opset": opset,
        "dla_core": None if dla is None else int(dla),
        "workspace_gb": float(options.get("workspace_gb", 2.0)),
    }


def build_here(out_dir: Path, plan: dict[str, Any], input_size, noise_shape) -> list[str]:
    """Build ``model.engine`` (+ sidecar, timing cache) in ``out_dir`` when TensorRT and a GPU are present here;
    return the lines that tell the user what happened and what the device will do."""
    on_device = (
        "The engine will be built on the device: by the runtime on first load (cached beside model.onnx), or "
        f"ahead of time there with: python -m export --target tensorrt --from {ONNX_NAME} --out DIR"
        + (f" --dla {plan['dla_core']}" if plan["dla_core"] is not None else "")
        + " (no torch needed)."
    )
    try:
        trt = import_tensorrt()
        from runtimes.cuda import open_cuda

        cuda = open_cuda()
    except BackendUnavailable as e:
        return [f"No TensorRT engine built here: {e}", on_device]
    try:
        gpu = cuda.device_info()
        with cuda.activate():
            meta = build_engine(
                out_dir / plan["onnx"],
                out_dir / ENGINE_NAME,
                plan["precision"],
                tuple(plan["batch"]),
                input_size=tuple(input_size),
                noise_shape=tuple(noise_shape),
                workspace_gb=plan["workspace_gb"],
                dla_core=plan["dla_core"],
                timing_cache=out_dir / timing_cache_name(trt.__version__),
                onnx_precision=plan["onnx_precision"],
                gpu=gpu,
                trt=trt,
            )
    finally:
        cuda.close()
    return [
        f"Built {ENGINE_NAME} for {gpu.name} (compute {gpu.compute_capability}) with TensorRT {trt.__version__} "
        f"in {meta['build_seconds']:.1f} s; other GPUs or TensorRT versions rebuild it on first load.",
    ]


def check_qdq_for_tensorrt(onnx_path: Path) -> list[str]:
    """Refuse (EngineBuildError, with the reason) a Q/DQ ONNX TensorRT would not build as int8 (one pass over the
    graph, one rule per paragraph below, hence its length):

    - an opset below 13 (no per-channel axis);
    - a zero point that is not int8 0, or a QuantizeLinear without one (it then quantizes to uint8);
    - DequantizeLinear of a non-int8 constant (an int32 bias Q/DQ, as ONNX Runtime writes by default);
    - a per-channel weight scale on another axis than the output channels (Conv 0, ConvTranspose 1, MatMul 1;
      ONNX's default axis is 1, wrong for Conv weights);
    - a per-channel scale on an activation (TensorRT quantizes activations per tensor).

    Returns notes (an opset above 17 cannot be parsed by TensorRT 8.6 / JetPack 6.0). Zero points or scales
    computed in the graph (not initializers) are not checked."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    fix = "Quantize with int8 activations, symmetric, and float biases (export.onnx.quantize_qdq for TensorRT)."
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_QDQ_OPSET:
        raise EngineBuildError(f"{onnx_path}: opset {opset}; per-channel Q/DQ needs opset {MIN_QDQ_OPSET} or newer "
                               f"(export with --opset {DEFAULT_OPSET}).")
    notes = []
    if opset > DEFAULT_OPSET:
        notes.append(f"The ONNX is opset {opset}: TensorRT 8.6 (JetPack 6.0) parses opsets up to {DEFAULT_OPSET}, "
                     "TensorRT 10 and newer read it.")

    def scale_size(node: Any) -> int:
        scale = constants.get(node.input[1])
        return 1 if scale is None else int(numpy_helper.to_array(scale).size)

    def axis(node: Any) -> int:
        return next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX's default axis is 1

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        quantized = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantized is not None and quantized.data_type != onnx.TensorProto.INT8:
            kind = onnx.helper.tensor_dtype_to_np_dtype(quantized.data_type)
            raise EngineBuildError(
                f"{onnx_path}: DequantizeLinear {node.name!r} dequantizes {kind} values ({node.input[0]}); TensorRT's "
                f"DequantizeLinear reads int8 only (int32 is a quantized bias: keep biases float). {fix}"
            )
        if len(node.input) < 3 or not node.input[2]:
            if node.op_type == "QuantizeLinear":
                raise EngineBuildError(
                    f"{onnx_path}: QuantizeLinear {node.name!r} has no zero point, so it quantizes to uint8; TensorRT "
                    f"needs int8 (an int8 zero point of 0). {fix}"
                )
            continue
        zero = constants.get(node.input[2])
        if zero is None:
            continue
        values = numpy_helper.to_array(zero)
        if zero.data_type != onnx.TensorProto.INT8 or values.any():
            raise EngineBuildError(
                f"{onnx_path}: {node.op_type} {node.name!r} has a {values.dtype} zero point {values.ravel()[:4].tolist()}; "
                f"TensorRT needs symmetric signed int8 quantization (zero point 0) for activations and weights. {fix}"
            )

    for node in graph.node:  # per-channel scales: weights on the output-channel axis, activations per tensor
        if node.op_type not in WEIGHT_AXIS and node.op_type != "Gemm":
            continue
        for index, name in enumerate(node.input[:2]):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or scale_size(dq) == 1:
                continue
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                weight_index, channel_axis = 1, 0 if trans_b else 1
            else:
                weight_index, channel_axis = WEIGHT_AXIS[node.op_type]
            if index != weight_index:
                raise EngineBuildError(
                    f"{onnx_path}: {node.op_type} {node.name!r} reads an activation with per-channel scales "
                    f"({dq.name!r}); TensorRT quantizes activations per tensor (one scale). {fix}"
                )
            if axis(dq) != channel_axis:
                raise EngineBuildError(
                    f"{onnx_path}: the weight of {node.op_type} {node.name!r} is quantized per channel on axis "
                    f"{axis(dq)} ({dq.name!r}); TensorRT needs the output-channel axis {channel_axis}. {fix}"
                )
    return notes


def _carry_model_card(source_dir: Path, work: Path, manifest, onnx_precision: str) -> None:
    """The source artifact's MODEL_CARD.md, with a section saying what this rebuild changed (no card, no copy)."""
    from dpsims.files import atomic_write
    from export.model_card import CARD_NAME

    card = source_dir / CARD_NAME
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8").split("\n## Rebuilt for TensorRT")[0].rstrip("\n")
    b = manifest.batch
    lines = ["", "", "## Rebuilt for TensorRT", "",
             f"- Made on the device by `python -m export --target tensorrt --from` from the {onnx_precision} ONNX "
             f"above: precision **{manifest.precision}**, batch {b['min']}..{b['max']} (opt {b['opt']})"
             + (f", DLA core {manifest.target_options['dla_core']}" if manifest.target_options.get("dla_core") is not None else "")
             + ".",
             "- " + ("The quality numbers above were measured on that ONNX, which this engine runs."
                    if manifest.precision == onnx_precision else
                    "The quality numbers above measured the ONNX, not this engine (built at another precision by "
                    "TensorRT's builder flags): compare its images with the FP32 artifact before shipping it."), ""]
    atomic_write(work / CARD_NAME, text + "\n".join(lines))


def export_from_onnx(
    onnx_path: str | Path,
    out_dir: str | Path,
    precision: str | None = None,
    batch: tuple[int, int, int] | None = None,
    dla: int | None = None,
    *,
    workspace_gb: float = 2.0,
    overwrite: bool = False,
) -> Converted:
    """Make a TensorRT artifact in ``out_dir`` from the ``model.onnx`` of a dp-sims artifact (onnx or tensorrt
    target; its ``model.json`` gives classes, sizes and quality) and build its engine when TensorRT is here.

    For ``python -m export --target tensorrt --from model.onnx --out DIR [--precision P] [--batch 1,1,16]
    [--dla N]`` on the device: no torch is imported. ``precision`` defaults to the ONNX's own; an FP32 ONNX can
    be built at fp16 on TensorRT <= 10 (builder flags); TensorRT 11 needs the precision in the ONNX. Writes
    ``model.json`` itself (there is no ExportRequest) and returns what the CLI prints.
    """
    from dpsims.errors import ConfigError  # torch-free

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    source_dir = onnx_path.parent
    if onnx_path.suffix.lower() != ".onnx" or not (source_dir / "model.json").is_file():
        raise ManifestError(
            f"{onnx_path} is not the model.onnx of a dp-sims artifact. Give the model.onnx of an artifact made by "
            "python -m export --target onnx or tensorrt: the model.json beside it holds the classes and sizes."
        )
    source = read_manifest(source_dir)
    if source.target not in ("onnx", "tensorrt"):
        raise ManifestError(f"{source_dir} is a {source.target} artifact; --from takes the model.onnx of an onnx or "
                            "tensorrt artifact.")
    source.file(onnx_path.name)  # a ManifestError unless the manifest lists it
    in_place = out_dir.exists() and out_dir.resolve() == source_dir.resolve()
    if in_place and source.target != "tensorrt" and not overwrite:
        raise ConfigError(f"--out {out_dir} is the onnx artifact itself: building there would turn it into a "
                          "tensorrt artifact. Give another --out, or pass --overwrite to convert it in place.")
    if not in_place:
        check_out_dir(out_dir, overwrite)
    onnx_precision = source.target_options.get("onnx_precision", source.precision)
    precision = precision or onnx_precision
    if precision not in PRECISIONS:
        raise EngineBuildError(f"The tensorrt target builds {', '.join(PRECISIONS)}, not {precision!r}.")
    dla = dla if dla is not None else source.target_options.get("dla_core")
    if not batch and dla is not None:  # DLA runs one batch size: the source's opt unless --batch says otherwise
        batch = (source.batch["opt"],) * 3
    batch = tuple(batch) if batch else (source.batch["min"], source.batch["opt"], source.batch["max"])
    check_dla_batch(dla, batch)
    opts = {"dla": dla, "workspace_gb": workspace_gb}
    plan = build_plan(precision, onnx_precision, batch, source.target_options.get("opset"), opts)
    plan["onnx"] = onnx_path.name

    onnx_files = [f.path for f in source.files]  # model.onnx and its external weights, if any
    # a new artifact is written into a temporary folder renamed into place (a failure leaves nothing); in place,
    # the engine and its sidecar are the only new files
    with contextlib.nullcontext(source_dir) if in_place else staged_dir(out_dir) as work:
        if not in_place:
            for name in onnx_files:
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source_dir / name, work / name)
        notes = build_here(work, plan, source.input_size, source.noise_shape)
        manifest = replace(
            source,
            target="tensorrt",
            precision=precision,
            batch=dict(zip(("min", "opt", "max"), (int(b) for b in batch))),
            files=[file_entry(work, name) for name in onnx_files],
            target_options={**source.target_options, **plan},
        )
        if precision != onnx_precision:  # the source's quality report measured the ONNX, not this engine
            manifest.quality = None
            notes.append(f"The {onnx_precision} ONNX is built at {precision} by TensorRT's builder flags: its "
                         "quality was not measured; compare its images with the FP32 artifact before shipping it.")
        write_manifest(manifest, work)
        _carry_model_card(source_dir, work, manifest, onnx_precision)
    return Converted(target_options=plan, notes=notes)
