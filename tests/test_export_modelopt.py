"""The ModelOpt ONNX PTQ path of the onnx/tensorrt targets, against a small stand-in of
``modelopt.onnx.quantization`` (the real package brings onnxruntime-gpu, which replaces onnxruntime, so it is kept
out of the test environment). The stand-in records the call and quantizes with ONNX Runtime's static QDQ
quantizer, so the export's quality gate measures a real Q/DQ model."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_artifacts import save_tiny_checkpoint

from dpsims.errors import ConfigError
from export.api import export_generator


@pytest.fixture
def fake_modelopt(monkeypatch):
    calls = []

    def quantize(**kwargs):
        from calibration import CalibrationSet
        from export.onnx import quantize_qdq

        calls.append(kwargs)
        data = kwargs["calibration_data"]
        quantize_qdq(Path(kwargs["onnx_path"]), Path(kwargs["output_path"]),
                     CalibrationSet(data["label"], data["noise"], "fake", 0), kwargs["nodes_to_exclude"], "int8")

    root, sub, leaf = (types.ModuleType(n) for n in ("modelopt", "modelopt.onnx", "modelopt.onnx.quantization"))
    leaf.quantize = quantize
    root.__path__, sub.__path__ = [], []  # packages, so find_spec("modelopt") sees them
    root.__spec__ = types.SimpleNamespace(name="modelopt", submodule_search_locations=[], loader=None, origin=None,
                                          parent="", has_location=False, cached=None)
    for name, module in (("modelopt", root), ("modelopt.onnx", sub), ("modelopt.onnx.quantization", leaf)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_auto_uses_modelopt_with_the_calibration_set_and_gate_exclusions(tmp_path, fake_modelopt):
    ckpt = save_tiny_checkpoint(tmp_path / "g.safetensors")
    report = export_generator(ckpt, "tensorrt", "int8", calib_samples=8, out=tmp_path / "art", log=lambda m: None)
    assert len(fake_modelopt) >= 1
    call = fake_modelopt[0]
    assert call["quantize_mode"] == "int8" and call["high_precision_dtype"] == "fp32"
    assert call["calibration_data"]["label"].shape == (6, 32, 32) and call["calibration_data"]["label"].dtype == np.int32
    assert call["calibration_data"]["noise"].dtype == np.float32
    assert any("/to_rgb/" in n for n in call["nodes_to_exclude"])
    assert any("/to_rgb/" in n for n in call["nodes_to_exclude"])
    manifest = report.manifest
    assert "ModelOpt" in manifest.calibration["method"]
    assert manifest.quality["psnr_db"] >= 30
    ops = {n.op_type for n in onnx.load(str(report.out_dir / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_onnxruntime_can_be_forced_and_bad_choices_are_config_errors(tmp_path, fake_modelopt):
    ckpt = save_tiny_checkpoint(tmp_path / "g.safetensors")
    report = export_generator(ckpt, "onnx", "int8", calib_samples=8, out=tmp_path / "ort",
                              options={"quantizer": "onnxruntime"}, log=lambda m: None)
    assert not fake_modelopt and "onnxruntime" in report.manifest.calibration["method"]
    with pytest.raises(ConfigError, match="quantizer"):
        export_generator(ckpt, "onnx", "int8", calib_samples=8, out=tmp_path / "bad", options={"quantizer": "x"}, log=lambda m: None)
    with pytest.raises(ConfigError, match="TensorRT form"):
        export_generator(ckpt, "onnx", "int8", calib_samples=8, out=tmp_path / "bad2",
                         options={"quantizer": "modelopt", "qdq_for": "cpu"}, log=lambda m: None)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_float_layers_in_fp16_go_through_modelopt_only(tmp_path, fake_modelopt):
    """-o high_precision=fp16: the layers INT8 leaves float computed in FP16 (ModelOpt's AutoCast); refused before
    any work where ModelOpt does not write it."""
    ckpt = save_tiny_checkpoint(tmp_path / "g.safetensors")
    report = export_generator(ckpt, "tensorrt", "int8", calib_samples=8, out=tmp_path / "fp16",
                              options={"high_precision": "FP16"}, log=lambda m: None)
    assert fake_modelopt[0]["high_precision_dtype"] == "fp16"
    assert "float layers in FP16" in report.manifest.calibration["method"]
    default = export_generator(ckpt, "tensorrt", "int8", calib_samples=8, out=tmp_path / "fp32", log=lambda m: None)
    assert fake_modelopt[-1]["high_precision_dtype"] == "fp32" and "FP16" not in default.manifest.calibration["method"]
    with pytest.raises(ConfigError, match="needs NVIDIA ModelOpt"):
        export_generator(ckpt, "tensorrt", "int8", calib_samples=8, out=tmp_path / "ort",
                         options={"high_precision": "fp16", "quantizer": "onnxruntime"}, log=lambda m: None)
    with pytest.raises(ConfigError, match="is for --precision int8"):
        export_generator(ckpt, "onnx", "fp16", out=tmp_path / "half", options={"high_precision": "fp16"}, log=lambda m: None)
    with pytest.raises(ConfigError, match="high_precision must be one of fp32, fp16"):
        export_generator(ckpt, "onnx", "int8", calib_samples=8, out=tmp_path / "bf", options={"high_precision": "bf16"},
                         log=lambda m: None)
    assert not any((tmp_path / d).exists() for d in ("ort", "half", "bf"))
