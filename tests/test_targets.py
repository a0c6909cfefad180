"""What a target is, by behaviour: each declaration points at code that exists, precisions, aliases and -o options
are checked against it, and the adding-a-target recipe of docs/design.md ("Targets") works as written: one
declaration (registered through ``runtimes.targets.register_target``), one converter and one backend -- this
module is the converter and holds the backend of a small target, exported with ``export_generator`` and loaded
with ``load_predictor``."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from dpsims.errors import ConfigError, ManifestError
from dpsims.optional import require
from runtimes.backends.base import Backend
from runtimes.targets import TARGETS, Target, register_target, target_of, unregister_target

torch = pytest.importorskip("torch")


def test_every_declaration_points_at_existing_code():
    from pathlib import Path

    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, t in TARGETS.items():
        assert t.name == name and t.summary and t.files
        for backend in {t.backend, *([t.measure] if ":" in t.measure else [])}:
            module, _, cls = backend.partition(":")
            assert importlib.util.find_spec(module) is not None, backend
        assert t.measure in ("backend", "converter") or ":" in t.measure, name
        converter = importlib.import_module(t.exporter)
        assert callable(converter.convert) and all(callable(c) for c in converter.OPTIONS.values()), name
        assert t.extra in extras, (name, t.extra)
        for _, extra in (*t.needs, *(n for needs in t.precision_needs.values() for n in needs)):
            assert extra in extras, (name, extra)
        assert set(t.aliases.values()) <= set(t.precisions) and set(t.precision_needs) <= set(t.precisions)
        assert set(t.calibrated) <= set(t.precisions)
    with pytest.raises(KeyError, match="known targets: torch, onnx"):
        target_of("tflite")


@pytest.mark.parametrize("target", list(TARGETS))
def test_precisions_aliases_and_options_are_checked(target):
    from export.api import check_options, normalize_precision

    t = TARGETS[target]
    for p in t.precisions:
        assert normalize_precision(target, p) == p
    for alias, meaning in t.aliases.items():
        assert normalize_precision(target, alias) == meaning
    with pytest.raises(ConfigError, match=f"The {target} target exports {', '.join(t.precisions)}"):
        normalize_precision(target, "int3")
    with pytest.raises(ConfigError, match="does not use -o no_such_option"):
        check_options(target, {"no_such_option": 1})


def test_calibration_follows_the_precision_after_aliases():
    assert TARGETS["coreml"].calibrates("w8a8") and not TARGETS["coreml"].calibrates("int8")  # int8 = int8w there
    assert TARGETS["onnx"].calibrates("int8") and not TARGETS["onnx"].calibrates("fp16")


def test_option_checks_normalise_and_refuse():
    from export.api import check_options

    assert check_options("tensorrt", {"workspace_gb": "4", "qdq_for": "CPU"}) == {"workspace_gb": 4.0, "qdq_for": "cpu"}
    with pytest.raises(ConfigError, match="opset must be an integer within 14..20"):
        check_options("onnx", {"opset": 21})
    with pytest.raises(ConfigError, match="image_output must be true or false"):
        check_options("coreml", {"image_output": "yes"})


# ------------------------------------------------------------------------ the adding-a-target recipe, tried once
# A target "onnx-minimal": its artifact is one file, generator.onnx, at fp32 or int8, run by the backend below.

NAME = "onnx-minimal"
#: the -o options this converter reads: none
OPTIONS: dict[str, Any] = {}


def convert(req, keep_float: Sequence[str] = ()):
    """The converter: the request's generator -> ``generator.onnx`` in ``req.out_dir``, int8 with ``keep_float``
    left float (the calibration, the gate and the measurement are export.api's)."""
    from export.base import Converted
    from export.onnx import export_fp32, fp32_onnx, quantize_qdq

    (path,) = (req.out_dir / name for name in TARGETS[NAME].files)
    if req.precision == "fp32":
        export_fp32(req.generator, req.input_size, path, batch=req.batch)
        return Converted()
    quantize_qdq(fp32_onnx(req), path, req.calibration_data(), list(keep_float))
    return Converted(method="onnxruntime quantize_static, int8 Q/DQ")


def quantizable(req) -> list[str]:
    """The layers the gate may keep float: the FP32 graph's Conv/MatMul/Gemm nodes."""
    from export.onnx import fp32_onnx, node_names

    return node_names(fp32_onnx(req))


class MinimalBackend(Backend):
    """The backend: the declared file in an ONNX Runtime CPU session, nothing else."""

    extra = "onnx"
    accepted_options = frozenset()

    def __init__(self, artifact_dir, manifest, device: str = "auto", **options: Any):
        super().__init__(artifact_dir, manifest, device, **options)
        ort = require("onnxruntime", self.extra)
        (path,) = self.model_files()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image": self.session.run(["image"], inputs)[0]}


DECLARATION = Target(NAME, ("fp32", "int8"), f"{__name__}:MinimalBackend", "onnx", __name__, ("generator.onnx",),
                     calibrated=("int8",), needs=(("onnx", "onnx"), ("onnxruntime", "onnx")),
                     summary="one generator.onnx run by a minimal ONNX Runtime backend (tests/test_targets.py)")


@pytest.fixture
def minimal_target():
    target = register_target(DECLARATION)
    try:
        yield target
    finally:
        if NAME in TARGETS:
            unregister_target(NAME)


def test_a_target_added_by_the_recipe_exports_gates_and_loads(minimal_target, tmp_path):
    from runtime_artifacts import random_label_map, save_tiny_checkpoint

    from calibration import load_calibration_set, psnr
    from export.__main__ import build_parser
    from export.api import export_generator
    from export.gate import LEVELS
    from runtimes import load_predictor
    from train.checkpoint import load_generator

    checkpoint = save_tiny_checkpoint(tmp_path / "generator.safetensors")
    generator, _ = load_generator(checkpoint)
    fp32 = export_generator(checkpoint, NAME, "fp32", calib_samples=8, out=tmp_path / "fp32", log=lambda m: None)
    int8 = export_generator(checkpoint, NAME, "int8", calib_samples=8, out=tmp_path / "int8", log=lambda m: None)
    for report in (fp32, int8):
        assert sorted(p.name for p in report.out_dir.iterdir()) == ["MODEL_CARD.md", "generator.onnx", "model.json"]
        assert [f.path for f in report.manifest.files] == ["generator.onnx"] and report.manifest.target == NAME

    labels = random_label_map(np.random.default_rng(0), 3).astype(np.int32)
    with load_predictor(fp32.out_dir, device="cpu") as predictor:
        assert predictor.info()["backend"]["backend"] == "MinimalBackend"
        images, noise = predictor.generate_raw(labels, seed=0), predictor.sample_noise([0, 1, 2])
    with torch.no_grad():
        reference = generator(torch.from_numpy(labels), torch.from_numpy(noise)).numpy()
    assert reference.std() > 0.05 and np.abs(images - reference).max() <= 1e-4
    assert fp32.manifest.quality["max_abs_error_vs_torch"] <= 1e-4

    # int8: calibrated on the calibration maps and gated by export.api, measured through MinimalBackend; its
    # PSNR is what load_predictor gives on the held-out maps
    quality, calibration = int8.manifest.quality, int8.manifest.calibration
    assert quality["psnr_db"] >= 30.0 and quality["kept_high_precision"]["level"] in [d for d, _ in LEVELS]
    assert "MinimalBackend" in quality["measured_with"]
    assert calibration["method"] == "onnxruntime quantize_static, int8 Q/DQ" and calibration["held_out"] == 2
    held_out = load_calibration_set("synthetic", 5, (32, 32), generator.noise_shape, 8).split()[1]
    with load_predictor(int8.out_dir, device="cpu") as predictor:
        images = predictor.generate_raw(held_out.labels, noise=held_out.noise)
    with torch.no_grad():
        reference = generator(torch.from_numpy(held_out.labels), torch.from_numpy(held_out.noise)).numpy()
    assert abs(psnr(reference, images) - quality["psnr_db"]) <= 0.01

    target_arg = next(a for a in build_parser()._actions if a.dest == "target")
    assert NAME in target_arg.choices and DECLARATION.summary in target_arg.help

    unregister_target(NAME)  # gone from every reader: its artifacts no longer open, it no longer exports
    with pytest.raises(ManifestError, match=f"unknown target '{NAME}'"):
        load_predictor(fp32.out_dir)
    with pytest.raises(ConfigError, match=f"Unknown target '{NAME}'"):
        export_generator(checkpoint, NAME, "fp32", out=tmp_path / "again", log=lambda m: None)


def test_register_target_refuses_what_it_cannot_honour(minimal_target):
    with pytest.raises(ConfigError, match="already declared"):
        register_target(DECLARATION)
    with pytest.raises(ConfigError, match="already declared"):
        register_target(TARGETS["onnx"])
    with pytest.raises(ConfigError, match=r"\['w8a8'\] are not among its precisions"):
        register_target(Target("other", ("fp32",), f"{__name__}:MinimalBackend", "onnx", __name__, ("g.onnx",),
                               calibrated=("w8a8",)))
    with pytest.raises(ConfigError, match="built-in target"):
        unregister_target("onnx")
    assert "other" not in TARGETS and TARGETS["onnx"].name == "onnx"
