"""CoreML export of a tiny generator (32x32) through export_generator: the package, its manifest, the graph
contract in its spec, the embedded metadata and the quality numbers measured in torch. Core ML predicts only on
macOS: the prediction test is skipped elsewhere, and elsewhere loading the package must say so."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_artifacts import random_label_map, save_tiny_checkpoint, tiny_classes

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'dp-sims[coreml]')")

from dpsims.errors import BackendUnavailable  # noqa: E402
from runtimes import load_predictor  # noqa: E402
from runtimes.spec import read_manifest  # noqa: E402

SIZE = (32, 32)
BATCH = (1, 1, 4)
IS_MACOS = sys.platform == "darwin"
NOT_MACOS = "Core ML prediction needs macOS; coremltools only converts models on this OS"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny generator saved the way training saves one (5 classes, 32x32, 'synthetic' calibration maps)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("coreml_ckpt") / "generator_ema.safetensors", SIZE)


def _export(checkpoint: Path, out: Path, precision: str, **kwargs):
    from export.api import export_generator

    return export_generator(checkpoint, "coreml", precision, calib_samples=8, batch=BATCH, out=out, log=lambda m: None,
                            **kwargs)


@pytest.fixture(scope="module", params=["fp16", "int8"])
def exported(request, checkpoint, tmp_path_factory):
    """(asked precision, ExportReport) of one export (about 20 s each on 2 cores)."""
    return request.param, _export(checkpoint, tmp_path_factory.mktemp(f"coreml_{request.param}") / "art", request.param)


def _spec(out_dir: Path):
    return ct.utils.load_spec(str(out_dir / "model.mlpackage"))


def _op_counts(spec) -> dict[str, int]:
    counts: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def _array(feature) -> tuple[str, list[int], list[tuple[int, int]]]:
    array = feature.type.multiArrayType
    dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
    return dtype, list(array.shape), [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]


# -------------------------------------------------------------------------------------- package + manifest


def test_package_files_are_listed_and_hashed(exported):
    asked, report = exported
    out = report.out_dir
    manifest = read_manifest(out, verify=True)  # verify: every listed file's sha256
    assert manifest.target == "coreml" and manifest.precision == {"fp16": "fp16", "int8": "int8w"}[asked]
    assert (out / "model.mlpackage").is_dir() and (out / "model.json").is_file()
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "model.mlpackage").rglob("*") if p.is_file())
    assert [f.path for f in manifest.files] == on_disk and "model.mlpackage/Manifest.json" in on_disk
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256((out / entry.path).read_bytes()).hexdigest()
    assert manifest.target_options == {"package": "model.mlpackage", "deployment_target": "iOS17",
                                       "compute_precision": "float16", "image_output": False, "batch": list(BATCH)}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_spec_follows_the_graph_contract(exported):
    _, report = exported
    spec = _spec(report.out_dir)
    inputs = {f.name: f for f in spec.description.input}
    outputs = {f.name: f for f in spec.description.output}
    assert sorted(inputs) == ["label", "noise"] and list(outputs) == ["image"]
    batch_range = (BATCH[0], BATCH[2])
    assert _array(inputs["label"]) == ("INT32", [BATCH[1], *SIZE], [batch_range, *((s, s) for s in SIZE)])
    noise_shape = report.manifest.noise_shape
    assert _array(inputs["noise"]) == ("FLOAT32", [BATCH[1], *noise_shape], [batch_range, *((s, s) for s in noise_shape)])
    assert _array(outputs["image"])[0] == "FLOAT32"


def test_metadata_embeds_the_manifest(exported):
    _, report = exported
    embedded = json.loads(_spec(report.out_dir).description.metadata.userDefined["dp_sims"])
    manifest = json.loads((report.out_dir / "model.json").read_text())
    # what was known before the export (everything but files and the export's own results) equals model.json
    after_export = {"quality", "calibration", "target_options"}
    for key, value in embedded.items():
        assert key in after_export or manifest[key] == value, key
    assert {"target", "precision", "input_size", "classes", "noise_shape"} <= set(embedded)
    assert "files" not in embedded


def test_quality_per_precision(exported):
    asked, report = exported
    quality, ops = report.manifest.quality, _op_counts(_spec(report.out_dir))
    if asked == "fp16":
        assert quality is None  # nothing quantized; float16 compute is checked on macOS
        assert "constexpr_affine_dequantize" not in ops and "quantize" not in ops
        return
    assert ops.get("constexpr_affine_dequantize", 0) > 0 and "quantize" not in ops  # int8 weights only
    assert quality["psnr_db"] is not None and quality["psnr_db"] > 30.0
    assert quality["samples"] == 2  # the held-out quarter of 8 calibration maps
    assert quality["label_consistency_delta"] is not None  # synthetic maps: label consistency is measured
    assert "macOS" in quality["measured_with"] and "torch" in quality["measured_with"]


# ----------------------------------------------------------------------------------------------- W8A8


def w8a8_gated(checkpoint: Path, out: Path, samples: int, min_psnr: float = 30.0):
    """export.api's gate on the coreml w8a8 converter (calibration in torch, the frozen module measured), without
    the (slow) coremltools conversion that ``finish`` runs afterwards."""
    from calibration import load_calibration_set
    from export.api import convert_measured
    from export.base import ExportRequest
    from runtimes.targets import TARGETS
    from train.checkpoint import load_generator

    generator, info = load_generator(checkpoint)
    calib_part, held_out = load_calibration_set("synthetic", info.num_classes, SIZE, generator.noise_shape,
                                                samples).split()
    req = ExportRequest(generator=generator, classes=tiny_classes(), precision="w8a8", out_dir=out,
                        input_size=SIZE, noise_shape=generator.noise_shape, calib=calib_part)
    return convert_measured(TARGETS["coreml"], req, held_out, min_psnr)


def test_w8a8_quality_is_measured_on_held_out_samples(checkpoint, tmp_path):
    """W8A8 calibration and its quality report, without the (slow) conversion."""
    converted, quality, calibration = w8a8_gated(checkpoint, tmp_path, 8)
    frozen = converted.stand_in
    assert calibration["samples"] == 6 and calibration["held_out"] == 2 and calibration["source"] == "synthetic"
    assert quality["samples"] == 2 and 25.0 < quality["psnr_db"] < 90.0  # quantized: close to, not equal to FP32
    assert "to_rgb" in quality["kept_high_precision"] and "macOS" in quality["measured_with"]
    quantize_ops = [n for n in frozen.graph.nodes if "quantize_per_tensor" in str(n.target)]
    assert quantize_ops  # activations really pass through int8


def test_w8a8_below_the_bar_fails_with_its_number(checkpoint, tmp_path):
    from export.gate import ExportQualityError

    with pytest.raises(ExportQualityError, match=r"PSNR \d+\.\d\d dB .* below --min-psnr 150"):
        w8a8_gated(checkpoint, tmp_path, 4, min_psnr=150.0)


@pytest.mark.slow
def test_w8a8_export(checkpoint, tmp_path):
    report = _export(checkpoint, tmp_path / "art", "w8a8")
    manifest = read_manifest(report.out_dir, verify=True)
    assert manifest.precision == "w8a8" and manifest.quality["psnr_db"] > 25.0
    assert manifest.calibration["held_out"] == manifest.quality["samples"] == 2
    ops = _op_counts(_spec(report.out_dir))
    assert ops.get("quantize", 0) > 0 and ops.get("dequantize", 0) > 0 and ops.get("constexpr_affine_dequantize", 0) > 0
    assert "PSNR vs FP32" in report.table() and f"{manifest.quality['psnr_db']:.2f} dB" in report.table()


def test_w8a8_needs_a_recent_deployment_target(checkpoint, tmp_path):
    from export.coreml import CoreMLExportError

    with pytest.raises(CoreMLExportError, match="needs deployment_target iOS17"):
        _export(checkpoint, tmp_path / "art", "w8a8", options={"deployment_target": "iOS16"})
    with pytest.raises(CoreMLExportError, match="Unknown deployment_target 'iOS99'"):
        _export(checkpoint, tmp_path / "art", "fp16", options={"deployment_target": "iOS99"})
    assert not (tmp_path / "art").exists() and not list(tmp_path.iterdir())  # a failed export writes nothing


def test_sample_data_comes_from_the_calibration_set():
    from calibration import CalibrationSet
    from calibration.coreml import sample_data

    rng = np.random.default_rng(0)
    data = CalibrationSet(random_label_map(rng, 3, SIZE), rng.standard_normal((3, 4, 8)), "test", 0)
    samples = sample_data(data, limit=2)
    assert len(samples) == 2 and samples[1]["label"].shape == (1, *SIZE) and samples[1]["label"].dtype == np.int32
    np.testing.assert_array_equal(samples[1]["noise"][0], data.noise[1])


# ------------------------------------------------------------------------------------------- prediction


@pytest.mark.macos
@pytest.mark.skipif(not IS_MACOS, reason=NOT_MACOS)
def test_prediction_matches_torch(exported, checkpoint):  # pragma: no cover - macOS only
    import torch

    from calibration import psnr
    from train.checkpoint import load_generator

    _, report = exported
    labels = random_label_map(np.random.default_rng(0), 2, SIZE).astype(np.int32)
    with load_predictor(report.out_dir, device="cpu") as predictor:
        noise = predictor.sample_noise([0, 1])
        images = predictor.generate_raw(labels, noise=noise)
    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        reference = generator(torch.from_numpy(labels), torch.from_numpy(noise)).numpy()
    assert psnr(reference, images) > 30.0  # float16 compute (and int8 weights) against float32


@pytest.mark.skipif(IS_MACOS, reason="on macOS Core ML loads the package")
def test_loading_off_macos_says_macos_is_needed(exported):
    _, report = exported
    with pytest.raises(BackendUnavailable, match="CoreML prediction needs macOS"):
        load_predictor(report.out_dir)
