"""The export package for real: a tiny trained-like generator file -> onnx / openvino / torch artifacts at every
precision, checked against eager torch with numbers measured here (not only the ones the manifest reports), the
failures a user can cause (each leaves nothing behind), the CLI's exit code, and the INT8 accuracy gate.

Slow (-m slow): the torch target (torch.export takes ~20 s here), openvino fp16 and a successful CLI run.

Artifacts are exported once per module (the ``artifact`` factory fixture caches them) with 16 synthetic
calibration maps at 32x32: 12 for the quantizers, the last 4 held out for the quality report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_artifacts import TINY, tiny_classes, tiny_generator

from dpsims.errors import CheckpointError, ConfigError
from export.api import ExportReport, export_generator
from export.gate import LEVELS, ExportQualityError, exclusion_levels, run_gate
from runtimes import BackendUnavailable, load_predictor
from runtimes.predictor import to_uint8
from runtimes.spec import SCHEMA_VERSION, read_manifest
from train.checkpoint import GeneratorInfo, save_generator
from train.config import GeneratorConfig
from train.data.synthetic import SyntheticScenes

REPO = Path(__file__).resolve().parents[1]
SIZE = (32, 32)
NUM_CLASSES = 5
CALIB_SAMPLES = 16
HELD_OUT = 4  # the last quarter of CALIB_SAMPLES
CALIB_SEED = 1009  # calibration.sets.DEFAULT_SEED, restated: the held-out maps are rebuilt here independently
FILES = {"onnx": {"model.onnx"}, "openvino": {"model.xml", "model.bin"}, "torch": {"model.pt2"}}


def quiet(_message: str) -> None:
    pass


def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR in [-1, 1] terms (peak-to-peak 2), computed here without the calibration package."""
    mse = float(np.mean((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_leftovers(parent: Path, out: Path) -> None:
    """``out`` does not exist and no temporary ``.NAME.*`` folder of it remains beside it."""
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test machines have 2 shared cores: torch's thread pool only adds contention for a 32x32 generator."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def generator():
    """The tiny generator (non-trivial BN statistics, live noise path), float32, eval mode."""
    return tiny_generator()


def generator_info(dataset: str = "synthetic", config: GeneratorConfig = TINY) -> GeneratorInfo:
    classes = tiny_classes()
    return GeneratorInfo(num_classes=NUM_CLASSES, generator=config, image_size=list(SIZE),
                         class_names=[c.name for c in classes], palette=[c.color for c in classes], ignore_id=None,
                         dataset=dataset, step=1234)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, generator) -> Path:
    """One generator .safetensors file (weights + GeneratorInfo metadata), trained on the synthetic scenes."""
    return save_generator(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", generator, generator_info())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, checkpoint):
    """``artifact(target, precision) -> ExportReport``, each exported once per module."""
    root = tmp_path_factory.mktemp("artifacts")
    cache: dict[tuple[str, str], ExportReport] = {}

    def get(target: str, precision: str) -> ExportReport:
        if (target, precision) not in cache:
            out = root / f"{target}-{precision}"
            if (target, precision) == ("onnx", "fp32"):
                # a stale non-empty --out: overwrite=True must replace it entirely (checked in a test below)
                out.mkdir()
                (out / "stale.txt").write_text("from an earlier export")
            cache[target, precision] = export_generator(
                checkpoint, target, precision, calib_samples=CALIB_SAMPLES, out=out, overwrite=True, log=quiet
            )
        return cache[target, precision]

    return get


@pytest.fixture(scope="module")
def held_out(generator):
    """The held-out calibration maps rebuilt without the calibration package, with torch's images of them."""
    scenes = SyntheticScenes(NUM_CLASSES, SIZE, CALIB_SEED)
    labels = np.stack([scenes.label(i) for i in range(CALIB_SAMPLES - HELD_OUT, CALIB_SAMPLES)]).astype(np.int32)
    # sample i of the calibration set has the noise of seed CALIB_SEED + i (the predictor's convention)
    noise = np.stack([np.random.default_rng(CALIB_SEED + i).standard_normal(generator.noise_shape, dtype=np.float32)
                      for i in range(CALIB_SAMPLES - HELD_OUT, CALIB_SAMPLES)])
    with torch.no_grad():
        reference = generator(torch.from_numpy(labels), torch.from_numpy(noise)).numpy()
    return labels, noise, reference


@pytest.fixture(scope="module")
def fresh(generator):
    """Maps never seen by any quantizer (another scene seed), with seeds 100.. as the predictor draws noise."""
    labels = np.stack([SyntheticScenes(NUM_CLASSES, SIZE, 77).label(i) for i in range(4)]).astype(np.int32)
    seeds = list(range(100, 104))
    noise = np.concatenate([np.random.default_rng(s).standard_normal((1, *generator.noise_shape), dtype=np.float32)
                            for s in seeds])
    with torch.no_grad():
        reference = generator(torch.from_numpy(labels), torch.from_numpy(noise)).numpy()
    return labels, seeds, reference


def ort_images(model: Path, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(["image"], {"label": labels, "noise": noise})[0]


def ov_images(xml: Path, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.array(compiled({"label": labels, "noise": noise})["image"], copy=True)


# ONNX Runtime kernels that compute on, or produce, int8/uint8 tensors. Which of them a CPU runs depends on its
# instruction set (QDQ fusion into QLinearConv, MatMulIntegerToFloat, ...), so tests count them together.
ORT_INTEGER_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                   "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearAdd",
                   "QLinearMul", "QLinearAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid"}


def ort_executed_ops(model: Path, labels: np.ndarray, noise: np.ndarray, tmp_path: Path) -> dict[str, int]:
    """How many times ONNX Runtime ran each kernel (by op type) for one run of ``model``: its own profile."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort-profile")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    session.run(["image"], {"label": labels, "noise": noise})
    events = json.loads(Path(session.end_profiling()).read_text())
    counts: dict[str, int] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            counts[op] = counts.get(op, 0) + 1
    return counts


def ov_runtime_precisions(xml: Path, layer_type: str) -> list[str]:
    """The precision OpenVINO's CPU plugin runs each ``layer_type`` layer of ``xml`` in, as compiled for the
    predictor's default (f32 float parts): its runtime model, not the IR's declared types."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_rt_info()["layerType"].astype(str) == layer_type]


# ------------------------------------------------------------------------------------- manifest, every target


@pytest.mark.parametrize("target,precision", [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
                                              ("openvino", "fp32"), ("openvino", "int8"),
                                              pytest.param("torch", "fp32", marks=pytest.mark.slow)])
def test_manifest_describes_the_artifact(artifact, generator, target, precision):
    report = artifact(target, precision)
    out = report.out_dir
    assert {p.name for p in out.iterdir()} == FILES[target] | {"model.json", "MODEL_CARD.md"}  # no temp files, nothing stale
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left

    raw = json.loads((out / "model.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 1
    assert (raw["target"], raw["precision"]) == (target, precision)
    assert raw["input_size"] == [32, 32] and raw["num_classes"] == NUM_CLASSES
    assert raw["noise_shape"] == list(generator.noise_shape) == [TINY.noise_tokens, TINY.noise_dim]
    assert raw["classes"] == [{"id": c.id, "name": c.name, "color": c.color} for c in tiny_classes()]
    assert raw["batch"] == {"min": 1, "opt": 1, "max": 16}
    assert raw["trained_on"]["dataset"] == "synthetic" and raw["trained_on"]["step"] == 1234
    assert "torch" in raw["library_versions"]
    assert {f["path"] for f in raw["files"]} == FILES[target]
    for f in raw["files"]:
        assert f["sha256"] == sha256(out / f["path"]) and f["bytes"] == (out / f["path"]).stat().st_size
    read_manifest(out, verify=True)  # the runtimes' own reader accepts it
    assert report.bytes == sum(f["bytes"] for f in raw["files"]) and report.seconds > 0

    quality = raw["quality"]
    if precision == "fp32":
        assert quality["max_abs_error_vs_torch"] <= 1e-4
        assert "psnr_db" not in quality
    else:
        assert quality["samples"] == HELD_OUT
        assert quality["psnr_db"] >= (40.0 if precision == "fp16" else 30.0)
        # synthetic maps: label consistency is measured (a fixed classifier knows their classes)
        assert isinstance(quality["label_consistency_delta"], float)
        assert quality["label_consistency_delta"] == pytest.approx(
            quality["label_consistency"] - quality["label_consistency_reference"], abs=2e-4)
    if precision == "int8":
        calib = raw["calibration"]
        assert calib["source"] == "synthetic" and calib["seed"] == CALIB_SEED
        assert calib["samples"] == CALIB_SAMPLES - HELD_OUT and calib["held_out"] == HELD_OUT
        kept = quality["kept_high_precision"]
        assert kept["layers"] and kept["level"] in [d for d, _ in LEVELS]
        assert kept["attempts"][-1] == f"{kept['level']}: {quality['psnr_db']:.2f} dB"  # the passing attempt is last
    else:
        assert raw["calibration"] is None


def test_report_table_shows_the_numbers(artifact):
    report = artifact("onnx", "int8")
    table = report.table()
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ["target", "precision"]
    assert lines[2].split()[:2] == ["onnx", "int8"]
    assert f"{report.manifest.quality['psnr_db']:.2f} dB" in lines[2]
    assert f"{report.manifest.quality['label_consistency_delta']:+.4f}" in lines[2]
    assert "-" in artifact("onnx", "fp32").table().splitlines()[2].split()  # no PSNR for fp32


def test_overwrite_replaces_a_stale_out_dir(artifact):
    out = artifact("onnx", "fp32").out_dir
    assert not (out / "stale.txt").exists()
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.json", "MODEL_CARD.md"}


# --------------------------------------------------------------------------------------------------- onnx


def test_onnx_fp32_matches_torch(artifact, generator, fresh):
    import onnx

    out = artifact("onnx", "fp32").out_dir
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert inputs["label"].elem_type == onnx.TensorProto.INT32 and inputs["noise"].elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inputs["label"].shape.dim] == ["batch", 32, 32]
    assert [o.name for o in model.graph.output] == ["image"]
    embedded = json.loads({p.key: p.value for p in model.metadata_props}["dp_sims"])
    assert (embedded["target"], embedded["precision"], embedded["input_size"]) == ("onnx", "fp32", [32, 32])
    assert "files" not in embedded

    labels, seeds, reference = fresh
    with load_predictor(out, device="cpu", intra_op_num_threads=1) as predictor:
        raw = predictor.generate_raw(labels, seed=seeds[0])  # seeds 100..103, as ``fresh`` drew them
        uint8 = predictor.generate(labels, seed=seeds[0])
        one = predictor.generate_raw(labels[2], seed=seeds[2])
    assert raw.shape == reference.shape == (4, 3, 32, 32)
    assert np.abs(raw - reference).max() <= 1e-4
    assert np.abs(one - reference[2]).max() <= 1e-4  # image i alone with seed+i: the same image
    assert uint8.dtype == np.uint8 and uint8.shape == (4, 32, 32, 3)
    assert np.abs(uint8.astype(int) - to_uint8(reference).astype(int)).max() <= 1
    assert reference.std() > 0.05  # a real image, not a constant that any backend would match


def test_onnx_fp16_is_half_precision_with_40db(artifact, held_out, fresh):
    import onnx

    fp16 = artifact("onnx", "fp16")
    path = fp16.out_dir / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    types = [t.data_type for t in model.graph.initializer]
    assert types.count(onnx.TensorProto.FLOAT16) > types.count(onnx.TensorProto.FLOAT)  # weights are fp16
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.INT32, onnx.TensorProto.FLOAT}
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 io kept
    assert path.stat().st_size < 0.7 * (artifact("onnx", "fp32").out_dir / "model.onnx").stat().st_size

    labels, noise, reference = held_out
    measured = psnr_db(reference, ort_images(path, labels, noise))
    assert measured >= 40.0
    assert measured == pytest.approx(fp16.manifest.quality["psnr_db"], abs=0.5)
    labels, seeds, reference = fresh
    with load_predictor(fp16.out_dir, device="cpu", intra_op_num_threads=1) as predictor:
        assert psnr_db(reference, predictor.generate_raw(labels, seed=seeds[0])) >= 40.0


def test_onnx_int8_qdq_runs_in_onnxruntime_with_the_psnr_it_reports(artifact, held_out, fresh, tmp_path):
    import onnx
    from onnx import numpy_helper

    int8 = artifact("onnx", "int8")
    path = int8.out_dir / "model.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    # symmetric int8 everywhere (the form TensorRT reads): every QuantizeLinear and DequantizeLinear zero point
    # is an int8 zero -- activations and weights; biases stay float (no int32 bias Q/DQ)
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(quantize) >= 10 and len(dequantize) == len(quantize)  # weights too: float + a Q/DQ pair
    for node in quantize + dequantize:
        zero = init[node.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8, node.name
        assert not numpy_helper.to_array(zero).any(), node.name

    # quantized layers read float weights through a per-channel Q/DQ pair (TensorRT's form, as ModelOpt writes it);
    # the layers the gate kept float read float weights directly
    kept = set(int8.manifest.quality["kept_high_precision"]["layers"])
    assert "/to_rgb/Conv" in kept
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    # the label stem is a table lookup in exported graphs (no conv over the one-hot map), float like its weights
    assert not any("/encoder/stem" in name for name in convs)
    assert any(n.op_type == "Gather" and "/encoder/" in n.name for n in model.graph.node)
    assert kept <= {n.name for n in model.graph.node}
    for name in kept & set(convs):
        assert convs[name].input[1] in init and init[convs[name].input[1]].data_type == onnx.TensorProto.FLOAT, name
    quantized = [n for name, n in convs.items() if name not in kept]
    assert quantized
    for conv in quantized:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q = producer[dq.input[0]]
        assert q.op_type == "QuantizeLinear" and init[q.input[0]].data_type == onnx.TensorProto.FLOAT
        out_channels = init[q.input[0]].dims[0]
        assert numpy_helper.to_array(init[dq.input[1]]).shape == (out_channels,)  # per-channel scales

    # the PSNR measured here, on the held-out maps, with onnxruntime and eager torch, is the one the manifest says
    labels, noise, reference = held_out
    measured = psnr_db(reference, ort_images(path, labels, noise))
    reported = int8.manifest.quality["psnr_db"]
    assert reported >= 30.0
    assert measured == pytest.approx(reported, abs=0.5)
    # really quantized, whatever kernels this CPU has: ONNX Runtime executed integer kernels for the activations
    # (each activation QuantizeLinear runs alone or fused into a QLinear* / *Integer* kernel)
    executed = ort_executed_ops(path, labels, noise, tmp_path)
    activations = [n for n in quantize if n.input[0] not in init]
    assert len(activations) >= 10
    assert sum(executed.get(op, 0) for op in ORT_INTEGER_OPS) >= len(activations) // 2, executed
    # ... and it holds on maps no quantizer saw, through the predictor, within 3 dB of what the manifest reports
    # (the held-out maps it was measured on are 4 of the same distribution)
    labels, seeds, reference = fresh
    with load_predictor(int8.out_dir, device="cpu", intra_op_num_threads=1) as predictor:
        assert psnr_db(reference, predictor.generate_raw(labels, seed=seeds[0])) >= reported - 3.0


# ----------------------------------------------------------------------------------------------- openvino


def test_openvino_fp32_matches_torch(artifact, fresh):
    import openvino as ov

    out = artifact("openvino", "fp32").out_dir
    model = ov.Core().read_model(str(out / "model.xml"))
    embedded = json.loads(model.get_rt_info(["dp_sims"]).astype(str))
    assert (embedded["target"], embedded["precision"]) == ("openvino", "fp32")
    assert sorted(i.get_any_name() for i in model.inputs) == ["label", "noise"]

    labels, seeds, reference = fresh
    with load_predictor(out, device="cpu") as predictor:
        raw = predictor.generate_raw(labels, seed=seeds[0])
        uint8 = predictor.generate(labels, seed=seeds[0])
    assert np.abs(raw - reference).max() <= 1e-4
    assert np.abs(uint8.astype(int) - to_uint8(reference).astype(int)).max() <= 1


@pytest.mark.slow
def test_openvino_fp16_compresses_weights_with_40db(artifact, held_out, fresh):
    fp16 = artifact("openvino", "fp16")
    assert fp16.manifest.target_options["compressed_to_fp16"] is True
    bin16 = (fp16.out_dir / "model.bin").stat().st_size
    import openvino as ov

    model = ov.Core().read_model(str(fp16.out_dir / "model.xml"))
    assert model.get_rt_info()  # the metadata survives the table rewrite
    gathers = [op for op in model.get_ordered_ops() if op.get_type_name() == "Gather" and "/encoder/" in op.get_friendly_name()]
    assert len(gathers) == 9  # the label stem's lookups read f32 tables (f16 ones run a slow reference kernel)
    assert all(g.input(0).get_source_output().get_node().get_element_type() == ov.Type.f32 for g in gathers)
    assert bin16 < 0.7 * (artifact("openvino", "fp32").out_dir / "model.bin").stat().st_size
    labels, noise, reference = held_out
    measured = psnr_db(reference, ov_images(fp16.out_dir / "model.xml", labels, noise))
    assert measured >= 40.0
    assert measured == pytest.approx(fp16.manifest.quality["psnr_db"], abs=0.5)
    assert fp16.manifest.quality["label_consistency_delta"] is not None
    labels, seeds, reference = fresh
    with load_predictor(fp16.out_dir, device="cpu") as predictor:
        assert "32" in predictor.info()["backend"]["inference_precision"]
        assert psnr_db(reference, predictor.generate_raw(labels, seed=seeds[0])) >= 40.0


def test_openvino_int8_reports_the_psnr_it_has(artifact, held_out, fresh):
    import openvino as ov

    int8 = artifact("openvino", "int8")
    xml = int8.out_dir / "model.xml"
    model = ov.Core().read_model(str(xml))
    ops = list(model.get_ordered_ops())
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) >= 10
    kept = set(int8.manifest.quality["kept_high_precision"]["layers"])
    convs = {op.get_friendly_name(): op for op in ops if op.get_type_name() == "Convolution"}
    assert "/to_rgb/Conv/WithoutBiases" in kept and not any("/encoder/stem" in n for n in convs)
    for name in kept & set(convs):  # float weights: a plain f32 constant feeds the kept layers
        weight = convs[name].input(1).get_source_output().get_node()
        assert weight.get_type_name() == "Constant" and weight.get_element_type() == ov.Type.f32, name
    # quantized layers: the weight comes out of an int8 constant (decompressed) or a FakeQuantize
    assert any(convs[n].input(1).get_source_output().get_node().get_type_name() != "Constant"
               for n in set(convs) - kept)

    labels, noise, reference = held_out
    measured = psnr_db(reference, ov_images(xml, labels, noise))
    reported = int8.manifest.quality["psnr_db"]
    assert reported >= 30.0
    assert measured == pytest.approx(reported, abs=0.5)
    # really quantized, whatever kernels this CPU has: the CPU plugin runs the quantized convolutions in int8
    # (the one kept float, to_rgb, in f32)
    convolutions = ov_runtime_precisions(xml, "Convolution")
    integer = [p for p in convolutions if p.lower() in ("i8", "u8")]
    assert len(integer) >= len(set(convs) - kept) // 2 >= 5, convolutions
    labels, seeds, reference = fresh
    # the predictor's CPU default is the precision the report was measured with (f32 float parts), also on CPUs
    # whose OpenVINO default would be bf16 (AMX): the user gets the quality the manifest states (within 3 dB on
    # maps no quantizer saw)
    with load_predictor(int8.out_dir, device="cpu") as predictor:
        assert "32" in predictor.info()["backend"]["inference_precision"]
        assert psnr_db(reference, predictor.generate_raw(labels, seed=seeds[0])) >= reported - 3.0


# -------------------------------------------------------------------------------------------------- torch


@pytest.mark.slow  # torch.export of even the tiny generator takes ~20 s on 2 shared cores
def test_torch_fp32_program_matches_torch(artifact, fresh):
    out = artifact("torch", "fp32").out_dir
    assert artifact("torch", "fp32").manifest.quality["max_abs_error_vs_torch"] <= 1e-5
    labels, seeds, reference = fresh
    with load_predictor(out, device="cpu") as predictor:
        raw = predictor.generate_raw(labels, seed=seeds[0])
        single = predictor.generate_raw(labels[1], seed=seeds[1])
    assert np.abs(raw - reference).max() <= 1e-5
    assert np.abs(single - reference[1]).max() <= 1e-5


# ----------------------------------------------------------------------------- the manifest's numbers, reproduced


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_manifest_psnr_is_what_load_predictor_gives_on_the_held_out_maps(artifact, held_out, target):
    """model.json's INT8 PSNR is reproduced by opening the artifact with load_predictor and comparing its images
    with eager torch on the held-out calibration maps and their noise: the export measured it on that same code
    path, so the numbers agree to the manifest's rounding (0.01 dB), not within a tolerance."""
    int8 = artifact(target, "int8")
    labels, noise, reference = held_out
    with load_predictor(int8.out_dir, device="cpu") as predictor:
        images = predictor.generate_raw(labels, noise=noise)
    reported = read_manifest(int8.out_dir).quality
    assert reported["samples"] == len(labels) == HELD_OUT
    assert abs(psnr_db(reference, images) - reported["psnr_db"]) <= 0.01
    assert float(np.abs(images - reference).max()) == pytest.approx(reported["max_abs_error"], abs=2e-6)
    assert "load_predictor" in reported["measured_with"]


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("target,precision,blocked,extra", [
    ("openvino", "fp32", "openvino", "openvino"),
    ("openvino", "int8", "nncf", "openvino"),
    ("onnx", "fp32", "onnxruntime", "onnx"),
    ("coreml", "fp16", "coremltools", "coreml"),
])
def test_missing_package_names_the_pip_extra(tmp_path, monkeypatch, checkpoint, target, precision, blocked, extra):
    monkeypatch.setitem(sys.modules, blocked, None)
    out = tmp_path / "out"
    with pytest.raises(BackendUnavailable, match=re.escape(f"pip install 'dp-sims[{extra}]'")) as info:
        export_generator(checkpoint, target, precision, calib_samples=4, out=out, log=quiet)
    assert blocked in str(info.value)
    no_leftovers(tmp_path, out)


@pytest.mark.parametrize("damage", ["truncated", "random", "no_metadata", "missing"])
def test_unreadable_checkpoint_is_a_checkpoint_error(tmp_path, checkpoint, damage):
    bad = tmp_path / "ckpt" / "generator.safetensors"
    bad.parent.mkdir()
    if damage == "truncated":
        data = checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "no_metadata":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(bad))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        export_generator(bad, "onnx", "fp32", out=out, log=quiet)
    message = str(info.value)
    assert str(bad) in message
    assert {"truncated": "not a readable safetensors", "random": "not a readable safetensors",
            "no_metadata": "no dp-sims metadata", "missing": "No generator checkpoint"}[damage] in message
    no_leftovers(tmp_path, out)


def test_checkpoint_of_another_architecture(tmp_path, generator):
    from train.models.generator import Generator

    wider = GeneratorConfig(**{**TINY.__dict__, "base_channels": 12})
    # the file's tensors come from a wider generator, its metadata claims the tiny config
    file = save_generator(tmp_path / "mixed.safetensors", Generator(NUM_CLASSES, wider), generator_info())
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"does not fit this architecture: .*of another shape \(e\.g\. "):
        export_generator(file, "onnx", "fp32", out=out, log=quiet)
    no_leftovers(tmp_path, out)


def test_gate_failure_lists_every_attempt_and_writes_nothing(tmp_path, checkpoint, caplog):
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="dpsims.export.gate")  # the gate reports each level and probe through logging
    with pytest.raises(ExportQualityError) as info:
        export_generator(checkpoint, "onnx", "int8", calib_samples=4, min_psnr=200.0, out=out, log=quiet)
    message = str(info.value)
    assert "PSNR 200.0 dB" in message
    attempts = message.split("against FP32 (", 1)[1].rsplit("). Try", 1)[0].split("; ")
    fixed = attempts[: len(LEVELS)]
    assert [a.rsplit(": ", 1)[0] for a in fixed] == [description for description, _ in LEVELS]
    # then the sensitivity stage: module groups kept float worst-first, cumulatively
    later = [a.rsplit(": ", 1)[0] for a in attempts[len(LEVELS):]]
    assert later and all(d.startswith("+ most sensitive: ") for d in later)
    assert all(b.startswith(a) for a, b in zip(later, later[1:]))
    values = [float(re.fullmatch(r"(\d+\.\d\d) dB", a.rsplit(": ", 1)[1]).group(1)) for a in attempts]
    assert all(20.0 < v < 200.0 for v in values)  # real measurements of a quantized model, each below the bar
    assert values[-1] >= values[0] - 1.0  # keeping more layers float does not make it much worse
    no_leftovers(tmp_path, out)
    printed = caplog.text
    assert printed.count("[onnx int8] gate step") == len(LEVELS)
    assert printed.count("[onnx int8] gate sensitivity step") == len(later)


def test_size_not_a_multiple_of_the_stride(tmp_path, checkpoint):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"--size 30x32: .*total stride 4"):
        export_generator(checkpoint, "onnx", "fp32", size=(30, 32), out=out, log=quiet)
    no_leftovers(tmp_path, out)


def test_existing_out_is_not_overwritten(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty.*--overwrite"):
        export_generator(checkpoint, "onnx", "fp32", calib_samples=2, out=out, log=quiet)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("target,precision,batch,match", [
    ("torch", "int8", (1, 1, 16), "torch target exports fp32, fp16, bf16"),
    ("tflite", "fp32", (1, 1, 16), "Unknown target 'tflite'"),
    ("onnx", "fp32", (2, 1, 4), "--batch is min,opt,max"),
])
def test_bad_options_are_config_errors(tmp_path, checkpoint, target, precision, batch, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        export_generator(checkpoint, target, precision, batch=batch, out=tmp_path / "out", log=quiet)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, options, match", [
    ("onnx", {"opset": "abc"}, "-o opset must be an integer within 14..20, got 'abc'"),
    ("onnx", {"opset": 5}, "within 14..20"),
    ("onnx", {"calibrate_method": "bogus"}, "-o calibrate_method must be one of minmax, entropy, percentile"),
    ("openvino", {"preset": "bogus"}, "-o preset must be one of performance, mixed"),
    ("openvino", {"quantize_elementwise": "yes"}, "-o quantize_elementwise must be true or false"),
    ("onnx", {"dla": 0}, "does not use --dla"),
    ("onnx", {"workspace_gb": 4}, "does not use -o workspace_gb: it reads calibrate_method, high_precision, opset, qdq_for, quantizer"),
    ("torch", {"opset": 17}, "takes no -o option"),
])
def test_bad_target_options_fail_before_any_work(tmp_path, checkpoint, target, options, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        export_generator(checkpoint, target, "fp32", options=options, out=tmp_path / "out", log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_target_options_are_normalised():
    from export.api import check_options

    assert check_options("onnx", {"qdq_for": "TensorRT", "opset": "17"}) == {"qdq_for": "tensorrt", "opset": 17}
    assert check_options("tensorrt", {"dla": 1, "workspace_gb": 4}) == {"dla": 1, "workspace_gb": 4.0}


def test_int8_of_a_real_dataset_model_needs_calib(tmp_path, generator):
    file = save_generator(tmp_path / "ade.safetensors", generator, generator_info(dataset="ade20k"))
    with pytest.raises(ConfigError, match="--calib"):
        export_generator(file, "onnx", "int8", out=tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists()


def test_int8_of_a_run_folder_calibrates_on_the_runs_own_dataset(tmp_path, generator):
    """No --calib: a checkpoint inside a run folder takes its label maps from the run's config.yaml (data.root)."""
    from train.config import load_config, save_config

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_0001234"
    ckpt.mkdir(parents=True)
    save_generator(ckpt / "generator_ema.safetensors", generator, generator_info(dataset="folder"))
    (run / "checkpoints" / "last").write_text(ckpt.name)  # as train writes it
    (ckpt / "state.json").write_text("{}")
    # the run's data: here the synthetic scenes at the model's size and class count, as a config file
    save_config(load_config("synthetic-tiny", [f"data.num_classes={NUM_CLASSES}",
                                               f"data.image_size=[{SIZE[0]}, {SIZE[1]}]"]), run / "config.yaml")
    report = export_generator(run, "onnx", "int8", calib_samples=8, out=tmp_path / "out", log=quiet)
    assert report.manifest.calibration["source"] == f"dataset:{(run / 'config.yaml').resolve()}"
    assert report.manifest.quality["psnr_db"] >= 30.0


def test_non_synthetic_model_is_checked_on_block_maps(tmp_path, generator):
    """fp16 of a model trained on real data without --calib: PSNR on random block maps, no label consistency."""
    file = save_generator(tmp_path / "ade.safetensors", generator, generator_info(dataset="ade20k"))
    report = export_generator(file, "onnx", "fp16", calib_samples=8, out=tmp_path / "out", log=quiet)
    quality = report.manifest.quality
    assert quality["samples"] == 2 and quality["psnr_db"] >= 40.0
    assert quality["label_consistency_delta"] is None and "label_consistency_note" in quality
    assert report.manifest.trained_on["dataset"] == "ade20k"


def test_cli_user_error_exits_2_without_traceback(tmp_path, checkpoint):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(checkpoint.read_bytes()[:1000])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(bad), "--target", "onnx",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m export: error: ") and "not a readable safetensors file" in last
    no_leftovers(tmp_path, out)


@pytest.mark.parametrize("flag, value, words", [("--size", "16x32x64", "--size is HxW"),
                                               ("--min-psnr", "nan", "--min-psnr is a PSNR bar in dB")])
def test_cli_malformed_numbers_are_refused(tmp_path, checkpoint, capsys, flag, value, words):
    from export.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(checkpoint), "--target", "onnx", flag, value, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and words in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_in_process_bad_size_is_one_paragraph(tmp_path, checkpoint, capsys):
    from export.__main__ import main

    code = main(["--checkpoint", str(checkpoint), "--target", "onnx", "--size", "30x30", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ": error: --size 30x30" in err[-1] and "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_exports_and_prints_the_table(tmp_path, checkpoint):
    out = tmp_path / "art"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--target", "onnx",
                           "--precision", "fp16", "--calib-samples", "8", "--size", "32", "--batch", "1,2,4",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^onnx\s+fp16\s+\S+ KB\s+\d+\.\d\d dB", proc.stdout, re.M), proc.stdout
    assert f"artifact: {out}" in proc.stdout
    manifest = read_manifest(out)
    assert manifest.batch == {"min": 1, "opt": 2, "max": 4} and manifest.input_size == [32, 32]


# ---------------------------------------------------------------------------------------------- the gate

GRAPH = [
    "/encoder/stem/stem.0/Conv",
    "/encoder/down.0/down.0.0/Conv",
    "/encoder/context.0/attn_self/q/MatMul",
    "/encoder/context.0/attn_self/MatMul",
    "/encoder/context.0/attn_self/MatMul_1",
    "/encoder/context.0/attn_self/out/MatMul",
    "/encoder/context.0/mlp/mlp.0/MatMul",
    "/head/Conv",
    "/blocks.0.0/shared/shared.0/Conv",
    "/blocks.0.0/norm0/gamma/Conv",
    "/blocks.0.0/conv0/Conv",
    "/blocks.1.0/skip_norm/beta/Conv",
    "/blocks.1.0/skip/Conv",
    "/blocks.1.0/conv0/Conv",
    "/to_rgb/Conv",
]


def level(prefix: str) -> str:
    """The description of the gate level starting with ``prefix`` (the first level: ``""`` gives LEVELS[0])."""
    return next(d for d, _ in LEVELS if d.startswith(prefix))


def test_exclusion_levels_are_cumulative():
    levels = exclusion_levels(GRAPH)
    assert [d for d, _ in levels] == [d for d, _ in LEVELS]  # every level adds layers of this graph
    added = {}
    previous: set[str] = set()
    for description, names in levels:
        assert previous < set(names), description  # each level keeps everything the previous one kept, and more
        assert names == [n for n in GRAPH if n in set(names)]  # in graph order
        added[description] = set(names) - previous
        previous = set(names)
    first = set(levels[0][1])
    assert {"/encoder/stem/stem.0/Conv", "/to_rgb/Conv"} <= first  # the first and last convolutions, always
    assert {"/encoder/context.0/attn_self/MatMul", "/encoder/context.0/attn_self/MatMul_1"} <= first  # scores
    assert first == {"/encoder/stem/stem.0/Conv", "/to_rgb/Conv", "/encoder/context.0/attn_self/MatMul",
                     "/encoder/context.0/attn_self/MatMul_1"}
    assert added[level("+ context MLPs")] == {"/encoder/context.0/mlp/mlp.0/MatMul"}
    assert added[level("+ attention projections")] == {
        "/encoder/context.0/attn_self/q/MatMul", "/encoder/context.0/attn_self/out/MatMul", "/head/Conv"}
    assert added[level("+ label encoder")] == {"/encoder/down.0/down.0.0/Conv"}
    assert added[level("+ SPADE")] == {"/blocks.0.0/shared/shared.0/Conv", "/blocks.0.0/norm0/gamma/Conv",
                                       "/blocks.1.0/skip_norm/beta/Conv"}
    assert added[level("+ finest block")] == {"/blocks.1.0/skip/Conv", "/blocks.1.0/conv0/Conv"}  # the last block
    assert "/blocks.0.0/conv0/Conv" not in previous  # a main conv of a coarse block is always quantized


def test_exclusion_levels_skip_empty_steps_and_sort_blocks_numerically():
    names = ["/encoder/stem/stem.0/Conv", "/blocks.2.0/conv0/Conv", "/blocks.10.0/conv0/Conv",
             "/blocks.10.0/norm0/beta/Conv", "/to_rgb/Conv"]
    levels = exclusion_levels(names)
    # no attention, head or other encoder layer here: those steps would add nothing and are left out
    assert [d for d, _ in levels] == [LEVELS[0][0], level("+ SPADE"), level("+ finest block")]
    assert levels[0][1] == ["/encoder/stem/stem.0/Conv", "/to_rgb/Conv"]
    assert set(levels[-1][1]) - set(levels[-2][1]) == {"/blocks.10.0/conv0/Conv"}  # block 10 is the last, not 2
    assert exclusion_levels(["/encoder/stem/stem.0/Conv"]) == [(LEVELS[0][0], ["/encoder/stem/stem.0/Conv"])]
    assert exclusion_levels(["/x/Conv"]) == [(LEVELS[0][0], [])]


def test_run_gate_stops_at_the_first_passing_level():
    levels = exclusion_levels(GRAPH)
    psnrs = iter([24.5, 29.99, 31.25, 45.0])
    seen, lines = [], []

    def attempt(kept):
        seen.append(list(kept))
        return {"psnr_db": next(psnrs), "samples": 4}, f"model-{len(seen)}"

    quality, kept, extra = run_gate(attempt, levels, 30.0, "fake int8", progress=lines.append)
    assert seen == [names for _, names in levels[:3]]  # stopped after the third attempt
    assert quality == {"psnr_db": 31.25, "samples": 4} and extra == "model-3"
    assert kept["level"] == levels[2][0] and kept["layers"] == levels[2][1]
    assert kept["attempts"] == [f"{levels[0][0]}: 24.50 dB", f"{levels[1][0]}: 29.99 dB", f"{levels[2][0]}: 31.25 dB"]
    assert len(lines) == 3 and lines[0].startswith(f"[fake int8] gate step 1/{len(levels)} ({levels[0][0]}, ")
    assert lines[0].endswith("PSNR 24.50 dB (bar 30.0)")


def test_run_gate_identical_output_passes_and_total_failure_raises():
    levels = exclusion_levels(GRAPH)
    quality, kept, _ = run_gate(lambda k: ({"psnr_db": None}, None), levels, 30.0, "x", progress=None)
    assert kept["level"] == levels[0][0] and kept["attempts"] == [f"{levels[0][0]}: inf dB"]
    with pytest.raises(ExportQualityError) as info:
        run_gate(lambda k: ({"psnr_db": 12.0 + len(k) / 100}, None), levels, 30.0, "fake int8", progress=None)
    message = str(info.value)
    assert message.startswith("fake int8: no quantization reached PSNR 30.0 dB")
    assert [float(v) for v in re.findall(r": (\d+\.\d\d) dB", message)] == [
        round(12.0 + len(names) / 100, 2) for _, names in levels]
