"""TensorRT: build plans per version, engine cache, backend, CUDA adapters and export, against fakes of TensorRT's
Python API and of cuda-python / pycuda (tests/fake_tensorrt.py) whose engines compute with onnxruntime; plus one test
with the real library."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import PLAN_MAGIC, FakeCuda, FakeDevice, make_cudart, make_pycuda, make_tensorrt
from onnx import TensorProto, helper
from runtime_artifacts import random_label_map, save_tiny_checkpoint, tiny_classes, tiny_generator

from dpsims.errors import BackendUnavailable, InputError, PredictorClosed
from runtimes import load_predictor
from runtimes.spec import Manifest, file_entry, read_manifest, write_manifest
from runtimes.trt_engine import (
    BuildOptions,
    EngineBuildError,
    GpuInfo,
    build_engine,
    cache_key,
    detect_onnx_precision,
    load_or_build,
    plan_network,
    sidecar_path,
)

SIZE = (32, 32)
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory) -> tuple[Path, tuple[int, ...]]:
    """A tiny real generator exported the way the graph contract says (dynamic batch, opset 17)."""
    generator = tiny_generator(size=SIZE)
    path = tmp_path_factory.mktemp("trt_onnx") / "model.onnx"
    example = (torch.zeros(2, *SIZE, dtype=torch.int32), torch.zeros(2, *generator.noise_shape))
    torch.onnx.export(
        generator, example, str(path), input_names=["label", "noise"], output_names=["image"], opset_version=17,
        dynamic_axes={"label": {0: "batch"}, "noise": {0: "batch"}, "image": {0: "batch"}}, dynamo=False,
    )
    return path, tuple(generator.noise_shape)


def make_artifact(
    directory: Path, onnx_fp32, batch=(1, 2, 4), precision="fp32", onnx_precision="fp32", target="tensorrt", **target_options
) -> Path:
    src, noise_shape = onnx_fp32
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, directory / "model.onnx")
    manifest = Manifest(
        target=target,
        precision=precision,
        input_size=list(SIZE),
        num_classes=5,
        classes=tiny_classes(),
        noise_shape=list(noise_shape),
        files=[file_entry(directory, "model.onnx")],
        batch=dict(zip(("min", "opt", "max"), batch)),
        target_options={"onnx": "model.onnx", "precision": precision, "onnx_precision": onnx_precision, **target_options},
    )
    write_manifest(manifest, directory)
    return directory


@pytest.fixture(autouse=True)
def _dp_sims_logger_restored():
    """run_jetson.py configures the dpsims logger (a stderr handler): undo it after each test."""
    logger = logging.getLogger("dpsims")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.fixture
def fake(monkeypatch):
    """Install a fake `tensorrt` of the given version on one FakeDevice: fake(version) -> (trt, device)."""

    def install(version: str = "10.3.0", device: FakeDevice | None = None):
        trt = make_tensorrt(version, device)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt, trt.dev

    return install


def build(trt, onnx_fp32, tmp_path, precision="fp16", onnx_precision="fp32", **kwargs):
    path, noise_shape = onnx_fp32
    return build_engine(
        path, tmp_path / "model.engine", precision, kwargs.pop("batch", (1, 2, 4)), input_size=SIZE,
        noise_shape=noise_shape, onnx_precision=onnx_precision, trt=trt, **kwargs,
    )


def use_fake_cuda(monkeypatch, dev: FakeDevice) -> None:
    """open_cuda() gives a FakeCuda on ``dev``: in the backend and for export's engine build."""
    import runtimes.backends.tensorrt as backend
    import runtimes.cuda as cuda

    for module in (backend, cuda):
        monkeypatch.setattr(module, "open_cuda", lambda index=0: FakeCuda(dev))


def calls(dev: FakeDevice, name: str) -> list[tuple]:
    return [c[1:] for c in dev.calls if c[0] == name]


def onnxruntime_reference(onnx_path: Path, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["image"], {"label": labels.astype(np.int32), "noise": noise})[0]


# ------------------------------------------------------------------------------------- plan per version


@pytest.mark.parametrize(
    ("major", "precision", "onnx_precision", "explicit", "strong", "flags"),
    [
        (8, "fp32", "fp32", True, False, ()),
        (8, "fp16", "fp16", True, False, ("FP16",)),
        (8, "int8", "int8", True, False, ("INT8",)),
        (8, "fp16", "fp32", True, False, ("FP16",)),
        (10, "fp32", "fp32", False, True, ()),
        (10, "fp16", "fp16", False, True, ()),
        (10, "int8", "int8", False, True, ()),
        (10, "fp16", "fp32", False, False, ("FP16",)),
        (11, "fp16", "fp16", False, True, ()),
        (11, "int8", "int8", False, True, ()),
    ],
)
def test_plan_per_version(major, precision, onnx_precision, explicit, strong, flags):
    plan = plan_network(major, precision, onnx_precision)
    assert (plan.explicit_batch, plan.strongly_typed, plan.builder_flags) == (explicit, strong, flags)


def test_plan_refuses_what_a_version_cannot_build():
    with pytest.raises(EngineBuildError, match="strongly typed.*AutoCast"):
        plan_network(11, "fp16", "fp32")
    with pytest.raises(EngineBuildError, match="Q/DQ"):
        plan_network(11, "int8", "fp32")
    with pytest.raises(EngineBuildError, match="already fp16"):
        plan_network(10, "int8", "fp16")
    with pytest.raises(EngineBuildError, match="DLA runs FP16 and INT8"):
        plan_network(10, "fp32", "fp32", dla=True)


@pytest.mark.parametrize("major", [8, 10])
def test_implicit_int8_is_gone(major):
    """INT8 engines come from the Q/DQ ONNX only: an FP32 ONNX at int8 would need a calibrator (removed in 11)."""
    with pytest.raises(EngineBuildError, match="Q/DQ ONNX.*Implicit INT8"):
        plan_network(major, "int8", "fp32")


@pytest.mark.parametrize(
    ("version", "precision", "strong", "flags"),
    [
        ((8, 6, 2), "int8", False, ("INT8", "FP16", "GPU_FALLBACK")),  # JetPack 6.0
        ((10, 3, 0), "int8", False, ("INT8", "FP16", "GPU_FALLBACK")),  # JetPack 6.1/6.2: builder-flag builds for DLA
        ((10, 3, 0), "fp16", False, ("FP16", "GPU_FALLBACK")),
        ((10, 7, 0), "fp16", False, ("FP16", "GPU_FALLBACK")),
        ((11, 4, 1), "int8", True, ("GPU_FALLBACK",)),  # AGX Orin, JetPack 7.2.2+: strongly typed DLA
    ],
)
def test_dla_plan_per_version(version, precision, strong, flags):
    plan = plan_network(version, precision, precision, dla=True)
    assert (plan.strongly_typed, plan.builder_flags) == (strong, flags)


@pytest.mark.parametrize("version", [(10, 8, 0), (10, 13, 0), (11, 0, 0), (11, 3, 0), (11, 4, 0)])
def test_versions_without_dla_refuse_it(version):
    with pytest.raises(EngineBuildError, match="no DLA on Jetson.*11.4.1"):
        plan_network(version, "int8", "int8", dla=True)


# ------------------------------------------------------------------------------------------- building


@pytest.mark.parametrize(
    ("version", "onnx_precision", "network_flags", "builder_flags"),
    [
        ("8.6.1", "fp16", 1, ["FP16"]),  # EXPLICIT_BATCH, weakly typed + FP16
        ("8.6.1", "fp32", 1, ["FP16"]),
        ("10.3.0", "fp16", 2, []),  # STRONGLY_TYPED, no precision flag
        ("10.3.0", "fp32", 0, ["FP16"]),  # weakly typed: the flag does the conversion
        ("11.0.0", "fp16", 0, []),  # always strongly typed; no flags exist
    ],
)
def test_build_uses_the_right_network_and_flags(fake, onnx_fp32, tmp_path, version, onnx_precision, network_flags, builder_flags):
    trt, dev = fake(version)
    meta = build(trt, onnx_fp32, tmp_path, precision="fp16", onnx_precision=onnx_precision, workspace_gb=1.5)
    assert calls(dev, "builder.create_network") == [(network_flags,)]
    assert [c[0] for c in calls(dev, "config.set_flag")] == builder_flags
    assert calls(dev, "parser.set_flag") == [("NATIVE_INSTANCENORM",)]
    assert calls(dev, "config.set_memory_pool_limit") == [("WORKSPACE", int(1.5 * 2**30))]
    (profile,) = calls(dev, "config.add_optimization_profile")
    noise = onnx_fp32[1]
    assert profile[0] == {
        "label": ((1, *SIZE), (2, *SIZE), (4, *SIZE)),
        "noise": ((1, *noise), (2, *noise), (4, *noise)),
    }
    engine = (tmp_path / "model.engine").read_bytes()
    assert engine.startswith(PLAN_MAGIC)  # TensorRT's plan, byte for byte: nothing prepended
    sidecar = json.loads(sidecar_path(tmp_path / "model.engine").read_text())
    assert sidecar == meta
    assert sidecar["tensorrt"] == version and sidecar["engine_sha256"] == hashlib.sha256(engine).hexdigest()
    assert sidecar["network"]["strongly_typed"] == (network_flags == 2 or version.startswith("11"))


def test_tensorrt_10_rejects_precision_flags_on_a_strongly_typed_network(fake, onnx_fp32, tmp_path):
    """The fake behaves like TensorRT here, so the plan above is what keeps builds working."""
    trt, dev = fake("10.3.0")
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, None).parse_from_file(str(onnx_fp32[0]))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.add_optimization_profile(builder.create_optimization_profile())
    assert builder.build_serialized_network(network, config) is None


def test_tensorrt_11_has_no_precision_flags(fake, onnx_fp32, tmp_path):
    trt, _ = fake("11.0.0")
    assert not hasattr(trt.BuilderFlag, "FP16")
    with pytest.raises(EngineBuildError, match="strongly typed networks only"):
        build(trt, onnx_fp32, tmp_path, precision="fp16", onnx_precision="fp32")
    assert not (tmp_path / "model.engine").exists()


def test_dla_settings(fake, onnx_fp32, tmp_path):
    trt, dev = fake("10.3.0", FakeDevice("Orin", "8.7", dla_cores=2))
    build(trt, onnx_fp32, tmp_path, precision="fp16", onnx_precision="fp16", dla_core=1, batch=(2, 2, 2))
    (header,) = [c[0] for c in calls(dev, "builder.build_serialized_network")]
    assert header["dla_core"] == 1 and header["flags"] == ["FP16", "GPU_FALLBACK"] and not header["strongly_typed"]
    assert header["runs_on_dla"]  # FP16 kernels and a static batch: DLA can take the layers

    trt, _ = fake("10.3.0", FakeDevice("NVIDIA H100", "9.0", dla_cores=0))
    with pytest.raises(EngineBuildError, match="0 DLA core.*Orin"):
        build(trt, onnx_fp32, tmp_path, precision="fp16", onnx_precision="fp16", dla_core=0, batch=(1, 1, 1))


def test_dla_needs_a_static_batch(fake, onnx_fp32, tmp_path):
    trt, dev = fake("10.3.0", FakeDevice("Orin", "8.7", dla_cores=2))
    with pytest.raises(EngineBuildError, match="static shapes.*--batch 2,2,2"):
        build(trt, onnx_fp32, tmp_path, precision="fp16", onnx_precision="fp16", dla_core=0, batch=(1, 2, 4))
    assert not calls(dev, "builder.build_serialized_network")


def test_timing_cache_is_written_and_reused(fake, onnx_fp32, tmp_path):
    trt, dev = fake("10.3.0")
    cache = tmp_path / "model.timing.10.3.0.cache"
    build(trt, onnx_fp32, tmp_path, timing_cache=cache)
    assert cache.is_file() and calls(dev, "config.create_timing_cache") == [(0,)]
    first = calls(dev, "builder.build_serialized_network")[0][0]
    assert first["timing_reused"] == 0

    dev.calls.clear()
    build(trt, onnx_fp32, tmp_path, timing_cache=cache, batch=(1, 4, 8))  # another profile: same layers
    assert calls(dev, "config.create_timing_cache")[0][0] == cache.stat().st_size
    assert calls(dev, "config.set_timing_cache")[0][1] is True
    assert calls(dev, "builder.build_serialized_network")[0][0]["timing_reused"] > 0

    trt, dev = fake("10.3.0", FakeDevice("another GPU"))  # a cache from another GPU is not used
    build(trt, onnx_fp32, tmp_path, timing_cache=cache)
    assert [c[1] for c in calls(dev, "config.set_timing_cache")] == [False, True]
    assert b'"gpu": "another GPU"' in cache.read_bytes()


def test_a_timing_cache_of_another_tensorrt_version_does_not_stop_the_build(fake, onnx_fp32, tmp_path):
    """After a JetPack upgrade TensorRT cannot read the old cache ("Magic tag does not match"): the rebuild the
    runtime promises must still happen, with a fresh cache."""
    trt_old, _ = fake("8.6.2")
    cache = tmp_path / "shared.cache"
    build(trt_old, onnx_fp32, tmp_path, timing_cache=cache)
    trt, dev = fake("10.3.0")
    build(trt, onnx_fp32, tmp_path, timing_cache=cache)
    assert any("Magic tag does not match" in m for m in trt.messages)
    assert trt.builds == 1 and cache.read_bytes().startswith(b"FAKETRTCACHE 10.3.0")

    cache.write_bytes(b"garbage")  # a damaged file: the same
    build(trt, onnx_fp32, tmp_path, timing_cache=cache)
    assert trt.builds == 2


def test_the_runtime_keys_its_timing_cache_by_tensorrt_version(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    manifest = read_manifest(artifact)
    trt_old, _ = fake("8.6.2")
    load_or_build(artifact, manifest, GpuInfo("NVIDIA Fake GPU", "8.7"), trt=trt_old)
    trt_new, _ = fake("10.3.0")  # the JetPack upgrade: the engine is rebuilt
    rebuilt = load_or_build(artifact, manifest, GpuInfo("NVIDIA Fake GPU", "8.7"), trt=trt_new)
    assert not rebuilt.cache_hit and trt_new.builds == 1
    assert sorted(p.name for p in artifact.glob("model.timing.*")) == ["model.timing.10.3.0.cache", "model.timing.8.6.2.cache"]


def test_engine_build_reports_progress(fake, onnx_fp32, tmp_path, caplog):
    """TensorRT >= 10 reports build phases to an IProgressMonitor set on the config; minutes on a Jetson must not
    pass in silence. 8.6 has none: the build goes on without one."""
    import logging

    from runtimes.trt_engine import make_progress_monitor

    trt, dev = fake("10.3.0")
    assert isinstance(make_progress_monitor(trt), trt.IProgressMonitor)
    with caplog.at_level(logging.INFO, logger="dpsims.runtimes.trt_engine"):
        build(trt, onnx_fp32, tmp_path)
    assert calls(dev, "builder.progress") and trt.builds == 1
    assert "TensorRT build: Timing layers" in caplog.text  # not a terminal here: log lines, not bars

    trt8, dev8 = fake("8.6.1")
    assert make_progress_monitor(trt8) is None
    build(trt8, onnx_fp32, tmp_path)
    assert not calls(dev8, "builder.progress") and trt8.builds == 1


def test_progress_without_tqdm_goes_to_the_log(fake, onnx_fp32, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setitem(sys.modules, "tqdm", None)
    trt, dev = fake("10.3.0")
    with caplog.at_level(logging.INFO, logger="dpsims.runtimes.trt_engine"):
        build(trt, onnx_fp32, tmp_path)
    assert "TensorRT build: Building engine (2 steps)" in caplog.text


def test_parser_errors_are_listed(fake, onnx_fp32, tmp_path):
    trt, _ = fake("8.6.1")
    trt.unsupported_ops = {"Softmax"}
    with pytest.raises(EngineBuildError, match=r"rejected(.|\n)*No importer registered for op: Softmax"):
        build(trt, onnx_fp32, tmp_path)


def test_onnx_that_breaks_the_graph_contract_is_refused(fake, onnx_fp32, tmp_path):
    trt, _ = fake("10.3.0")
    with pytest.raises(EngineBuildError, match="'label' has shape"):
        build_engine(onnx_fp32[0], tmp_path / "m.engine", "fp32", input_size=(64, 64), noise_shape=onnx_fp32[1],
                     onnx_precision="fp32", trt=trt)


def _tiny_onnx(path: Path, kind: str, zero_point=(TensorProto.INT8, 0)) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if kind == "int8":
        scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
        zero = helper.make_tensor("z", zero_point[0], [], [zero_point[1]])
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        inits = [scale, zero]
    elif kind == "fp16":
        nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
        inits = []
    else:
        nodes, inits = [helper.make_node("Relu", ["x"], ["y"])], []
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits)), str(path))
    return path


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
def test_detect_onnx_precision(tmp_path, kind):
    assert detect_onnx_precision(_tiny_onnx(tmp_path / "m.onnx", kind)) == kind


# --------------------------------------------------------------------------------------------- caching


def test_cache_key_covers_gpu_version_onnx_and_options():
    options = BuildOptions("fp16", "fp16", SIZE, (4, 8))
    gpu = GpuInfo("Orin", "8.7")
    key = cache_key("a" * 64, options, "10.3.0", gpu)
    assert key == cache_key("a" * 64, BuildOptions("fp16", "fp16", SIZE, (4, 8)), "10.3.0", GpuInfo("Orin", "8.7"))
    variants = [
        cache_key("b" * 64, options, "10.3.0", gpu),
        cache_key("a" * 64, replace(options, batch=(1, 1, 8)), "10.3.0", gpu),
        cache_key("a" * 64, replace(options, batch=(1, 1, 1)), "10.3.0", gpu),
        cache_key("a" * 64, replace(options, batch=(1, 1, 1), dla_core=0), "10.3.0", gpu),
        cache_key("a" * 64, options, "10.3.0.1", gpu),
        cache_key("a" * 64, options, "10.3.0", GpuInfo("Thor", "8.7")),
        cache_key("a" * 64, options, "10.3.0", GpuInfo("Orin", "8.9")),
    ]
    assert len({key, *variants}) == 1 + len(variants)


def test_load_or_build_reuses_the_engine_only_for_the_same_gpu_and_version(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32, precision="fp16", onnx_precision="fp32")
    manifest = read_manifest(artifact)
    trt, dev = fake("10.3.0", FakeDevice("Orin"))
    first = load_or_build(artifact, manifest, GpuInfo("Orin", "8.7"), trt=trt)
    assert not first.cache_hit and first.reason == "no cached engine" and trt.builds == 1
    second = load_or_build(artifact, manifest, GpuInfo("Orin", "8.7"), trt=trt)
    assert second.cache_hit and trt.builds == 1 and second.engine is not None

    trt_thor, _ = fake("10.3.0", FakeDevice("Thor"))  # another GPU: its engine cannot run here
    rebuilt = load_or_build(artifact, manifest, GpuInfo("Thor", "11.0"), trt=trt_thor)
    assert not rebuilt.cache_hit and "built on Orin, this GPU is Thor" in rebuilt.reason and trt_thor.builds == 1

    trt_new, _ = fake("10.13.0", FakeDevice("Thor"))  # another TensorRT: same
    rebuilt = load_or_build(artifact, manifest, GpuInfo("Thor", "11.0"), trt=trt_new)
    assert "built with TensorRT 10.3.0, this is TensorRT 10.13.0" in rebuilt.reason and trt_new.builds == 1
    assert load_or_build(artifact, manifest, GpuInfo("Thor", "11.0"), trt=trt_new).cache_hit

    engine = artifact / "model.engine"
    engine.write_bytes(engine.read_bytes()[:-10])  # damaged: the sidecar's sha256 no longer matches
    damaged = load_or_build(artifact, manifest, GpuInfo("Thor", "11.0"), trt=trt_new)
    assert not damaged.cache_hit and "sha256" in damaged.reason and trt_new.builds == 2
    forced = load_or_build(artifact, manifest, GpuInfo("Thor", "11.0"), rebuild=True, trt=trt_new)
    assert forced.reason == "rebuild requested" and trt_new.builds == 3
    other = load_or_build(artifact, manifest, GpuInfo("Thor", "11.0"), workspace_gb=4, trt=trt_new)
    assert other.reason == "built from another ONNX or with other build options"


def test_engine_cache_goes_to_the_user_cache_when_the_artifact_is_read_only(fake, onnx_fp32, tmp_path, monkeypatch):
    artifact = make_artifact(tmp_path / "ro", onnx_fp32)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != artifact)  # also when running as root
    trt, _ = fake("10.3.0")
    loaded = load_or_build(artifact, read_manifest(artifact), GpuInfo("NVIDIA Fake GPU", "8.7"), trt=trt)
    assert loaded.path.parent.parent == tmp_path / "cache" / "dp-sims" / "tensorrt"
    assert not (artifact / "model.engine").exists()


# ---------------------------------------------------------------------------------------------- backend


def test_backend_matches_onnxruntime_and_keeps_the_call_order(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32, batch=(1, 2, 4))
    trt, dev = fake("10.3.0")
    labels = random_label_map(np.random.default_rng(0), 6, SIZE)
    with load_predictor(artifact, cuda_api=FakeCuda(dev)) as predictor:
        dev.calls.clear()
        images = predictor.generate_raw(labels, seed=7)  # 6 maps: chunks of 4 and 2
        noise = predictor.sample_noise(range(7, 13))
        info = predictor.info()["backend"]
    reference = onnxruntime_reference(artifact / "model.onnx", labels, noise)
    np.testing.assert_allclose(images, reference, atol=1e-6)
    assert images.std() > 0.01  # a real image, not zeros
    assert info["engine_cache"] == "built (no cached engine)" and info["gpu"] == "NVIDIA Fake GPU"

    names = dev.names()
    runs = [i for i, n in enumerate(names) if n == "context.execute_async_v3"]
    assert len(runs) == 2
    start = 0
    for run in runs:
        call = names[start:]
        shapes = [start + i for i, n in enumerate(call) if n == "context.set_input_shape"][:2]
        addresses = [start + i for i, n in enumerate(call) if n == "context.set_tensor_address"][:3]
        dtoh = start + call.index("cuda.dtoh")
        sync = start + call.index("cuda.synchronize")
        assert max(shapes) < min(addresses) < run < dtoh < sync
        start = sync + 1
    assert [c[1] for c in calls(dev, "context.set_input_shape") if c[0] == "label"] == [(4, *SIZE), (2, *SIZE)]


def test_backend_pads_to_the_profile_minimum(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32, batch=(2, 2, 4))
    trt, dev = fake("8.6.1")
    labels = random_label_map(np.random.default_rng(1), 1, SIZE)
    with load_predictor(artifact, cuda_api=FakeCuda(dev)) as predictor:
        image = predictor.generate_raw(labels[0], seed=3)
        noise = predictor.sample_noise([3])
    assert calls(dev, "context.set_input_shape")[0][1] == (2, *SIZE)
    np.testing.assert_allclose(image, onnxruntime_reference(artifact / "model.onnx", labels, noise)[0], atol=1e-6)


def test_backend_close_frees_everything(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    trt, dev = fake("10.3.0")
    cuda = FakeCuda(dev)
    predictor = load_predictor(artifact, cuda_api=cuda)
    assert dev.memory and dev.streams
    predictor.close()
    assert not dev.memory and not dev.streams
    assert len(calls(dev, "cuda.free_host")) == len(calls(dev, "cuda.host_buffer")) == 3
    with pytest.raises(PredictorClosed):
        predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0)


def _executed_on(dev: FakeDevice) -> set:
    return {c[2] for c in calls(dev, "context.execute_async_v3")}


def test_backend_device_strings(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32, precision="fp16", onnx_precision="fp16", batch=(1, 1, 1))
    trt, dev = fake("10.3.0", FakeDevice("Orin", dla_cores=2))
    with load_predictor(artifact, device="dla:0", cuda_api=FakeCuda(dev)) as predictor:
        assert predictor.info()["backend"]["dla_core"] == 0
    with pytest.raises(InputError, match="dla:N"):
        load_predictor(artifact, device="cpu", cuda_api=FakeCuda(dev))
    with pytest.raises(EngineBuildError, match="DLA core 2 was asked for, this device has 2"):
        load_predictor(artifact, device="dla:2", cuda_api=FakeCuda(dev))


def test_dla_engine_runs_on_the_core_it_was_built_for(fake, onnx_fp32, tmp_path):
    """The runtime must be told the core before it deserializes: otherwise a dla:1 engine runs on core 0."""
    artifact = make_artifact(tmp_path / "a", onnx_fp32, precision="fp16", onnx_precision="fp16", batch=(1, 1, 1))
    trt, dev = fake("10.3.0", FakeDevice("Orin", dla_cores=2))
    for _ in range(2):  # built, then loaded from the engine cache
        with load_predictor(artifact, device="dla:1", cuda_api=FakeCuda(dev)) as predictor:
            predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0)
    assert trt.builds == 1 and _executed_on(dev) == {1}


def test_device_cuda_runs_a_dla_artifact_on_the_gpu(fake, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32, precision="fp16", onnx_precision="fp16", batch=(1, 1, 1),
                             dla_core=1)
    trt, dev = fake("10.3.0", FakeDevice("Orin", dla_cores=2))
    with load_predictor(artifact, device="auto", cuda_api=FakeCuda(dev)) as predictor:  # what export asked for
        assert predictor.info()["backend"]["dla_core"] == 1
        predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0)
    assert _executed_on(dev) == {1}
    dev.calls.clear()
    with load_predictor(artifact, device="cuda", cuda_api=FakeCuda(dev)) as predictor:  # GPU only, as asked
        assert predictor.info()["backend"]["dla_core"] is None
        predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0)
    assert _executed_on(dev) == {None}


def test_an_execution_context_that_cannot_be_created_is_a_clear_error(fake, onnx_fp32, tmp_path):
    """create_execution_context returns None when the activation memory cannot be allocated (an Orin Nano)."""
    from runtimes.backends.tensorrt import TensorRTRunError

    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    trt, dev = fake("10.3.0")
    dev.out_of_memory = True
    with pytest.raises(TensorRTRunError, match="execution context.*out of memory"):
        load_predictor(artifact, cuda_api=FakeCuda(dev))
    assert not dev.memory and not dev.streams  # what was allocated before is freed


def test_a_refused_tensor_address_is_an_error(fake, onnx_fp32, tmp_path):
    """set_tensor_address returns False for an address TensorRT cannot use: say so, not "execute_async_v3 failed"."""
    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    trt, dev = fake("10.3.0")
    with load_predictor(artifact, cuda_api=FakeCuda(dev)) as predictor:
        backend = predictor._backend
        ptr, host = backend._buffers["image"]
        backend._buffers["image"] = (ptr + 1, host)  # not an address TensorRT accepts
        with pytest.raises(RuntimeError, match="refused the device address of 'image'"):
            predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0)
        backend._buffers["image"] = (ptr, host)


# ------------------------------------------------------------------------------- CUDA adapters (runtimes.cuda)


@pytest.fixture
def fake_bindings(monkeypatch):
    """Install fakes of cuda-python (cuda.bindings.runtime) or pycuda (pycuda.driver) on one FakeDevice; the
    other binding is made unimportable, so open_cuda() takes the installed one, as on a Jetson."""
    import types

    def install(kind: str, device: FakeDevice, device_count: int = 1):
        if kind == "cuda-python":
            cudart = make_cudart(device, device_count)
            package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
            package.__path__, bindings.__path__ = [], []
            bindings.runtime = cudart
            for name, module in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
                monkeypatch.setitem(sys.modules, name, module)
            monkeypatch.setitem(sys.modules, "pycuda", None)
            monkeypatch.setitem(sys.modules, "pycuda.driver", None)
            return cudart
        driver = make_pycuda(device, device_count)
        package = types.ModuleType("pycuda")
        package.__path__, package.driver = [], driver
        for name, module in (("pycuda", package), ("pycuda.driver", driver)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setitem(sys.modules, "cuda", None)
        return driver

    return install


@pytest.mark.parametrize("kind", ["cuda-python", "pycuda"])
def test_backend_runs_through_the_real_cuda_adapters(fake, fake_bindings, onnx_fp32, tmp_path, kind):
    """The cuda-python and pycuda code of runtimes.cuda, against fakes with the bindings' real call shapes:
    images match onnxruntime, and closing frees every device and page-locked buffer and the stream."""
    artifact = make_artifact(tmp_path / "a", onnx_fp32, batch=(1, 2, 4))
    trt, dev = fake("10.3.0", FakeDevice("Orin"))
    binding = fake_bindings(kind, dev)
    labels = random_label_map(np.random.default_rng(0), 5, SIZE)
    predictor = load_predictor(artifact)  # open_cuda() picks the installed binding
    info = predictor.info()["backend"]
    images = predictor.generate_raw(labels, seed=7)
    noise = predictor.sample_noise(range(7, 12))
    predictor.close()
    np.testing.assert_allclose(images, onnxruntime_reference(artifact / "model.onnx", labels, noise), atol=1e-6)
    assert info["cuda_api"] == kind and info["gpu"] == "Orin" and info["compute_capability"] == "8.7"
    assert not dev.memory and not dev.streams
    assert len(calls(dev, "cuda.host_buffer")) == 3
    if kind == "cuda-python":
        assert not binding.host  # every cudaMallocHost buffer went back through cudaFreeHost
    else:
        assert binding.stack == []  # every context push was popped


def test_cuda_python_reports_the_driver_error_by_code_and_name(fake_bindings):
    """JetPack 6.1/6.2 with a cuda-python newer than its CUDA: cudaGetDeviceCount fails with error 35."""
    from runtimes.cuda import open_cuda

    dev = FakeDevice("Orin")
    dev.driver_error = 35
    fake_bindings("cuda-python", dev)
    with pytest.raises(BackendUnavailable, match=r"error 35 cudaErrorInsufficientDriver \(CUDA driver version is "
                                                 r"insufficient.*cuda-python==12\.6\.\*.*JetPack 6\.1/6\.2"):
        open_cuda()
    dev.driver_error = 100
    with pytest.raises(BackendUnavailable, match="error 100 cudaErrorNoDevice.*onnx or openvino"):
        open_cuda()
    dev.driver_error = None
    fake_bindings("cuda-python", dev, device_count=0)
    with pytest.raises(BackendUnavailable, match="reports 0 devices"):
        open_cuda()
    fake_bindings("cuda-python", dev, device_count=1)
    with pytest.raises(InputError, match="cuda:1 was asked for; this machine has 1"):
        open_cuda(1)


def test_the_cudart_fake_has_the_real_bindings_call_shapes():
    """Where cuda-python is installed (the test environment has cuda-bindings, without a GPU driver), the fake's
    answers have the real module's shapes: (cudaError_t, value-or-None) tuples, bytes from the error queries."""
    real = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    fake = make_cudart(FakeDevice())
    used = ["cudaGetDeviceCount", "cudaSetDevice", "cudaGetDeviceProperties", "cudaGetErrorName", "cudaGetErrorString",
            "cudaMalloc", "cudaFree", "cudaMallocHost", "cudaFreeHost", "cudaStreamCreateWithFlags", "cudaStreamDestroy",
            "cudaStreamSynchronize", "cudaMemcpyAsync", "cudaStreamNonBlocking", "cudaMemcpyKind", "cudaError_t"]
    assert all(hasattr(real, name) and hasattr(fake, name) for name in used)
    err = real.cudaError_t.cudaErrorInsufficientDriver
    for name in ("cudaGetErrorName", "cudaGetErrorString"):
        (r_ok, r_text), (f_ok, f_text) = getattr(real, name)(err), getattr(fake, name)(int(err))
        assert r_ok == real.cudaError_t.cudaSuccess and int(f_ok) == 0 and r_text == f_text
    r_err, r_count = real.cudaGetDeviceCount()
    if r_err != real.cudaError_t.cudaSuccess:  # no driver here: the error comes with None, as the fake's
        assert r_count is None
    assert int(real.cudaStreamNonBlocking) == fake.cudaStreamNonBlocking
    assert int(real.cudaMemcpyKind.cudaMemcpyDeviceToHost) == int(fake.cudaMemcpyKind.cudaMemcpyDeviceToHost)


def test_cuda_python_errors_name_the_call(fake_bindings):
    from runtimes.cuda import CudaError, open_cuda

    dev = FakeDevice("Orin")
    fake_bindings("cuda-python", dev)
    cuda = open_cuda()
    dev.out_of_memory = True
    with pytest.raises(CudaError, match="cudaMalloc failed: CUDA error 2 cudaErrorMemoryAllocation"):
        cuda.malloc(1024)
    with pytest.raises(ValueError, match="host_buffer returned"):
        cuda.free_host(np.zeros(4, np.uint8))


def test_pycuda_driver_errors_are_backend_unavailable(fake_bindings):
    from runtimes.cuda import open_cuda

    dev = FakeDevice("Orin")
    dev.driver_error = 35
    fake_bindings("pycuda", dev)
    with pytest.raises(BackendUnavailable, match="cuInit failed: CUDA driver version is insufficient"):
        open_cuda()


def test_tensorrt_8_5_is_refused(monkeypatch):
    """JetPack 5 (TensorRT 8.5, Python 3.8) is not supported: dp-sims needs Python 3.10 and TensorRT 8.6."""
    from runtimes.trt_engine import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("8.5.3"))
    with pytest.raises(BackendUnavailable, match="TensorRT 8.5.3 is too old.*8.6.*JetPack 6"):
        import_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("8.6.2"))
    assert import_tensorrt().__version__ == "8.6.2"


def test_backend_does_not_need_trt_nptype(fake, onnx_fp32, tmp_path):
    """TensorRT 8.5's trt.nptype used np.bool (gone in numpy 1.24): the backend maps DataType names itself."""
    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    trt, dev = fake("8.6.1")
    del trt.nptype
    with load_predictor(artifact, cuda_api=FakeCuda(dev)) as predictor:
        assert predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0).shape == (*SIZE, 3)


def test_missing_tensorrt_names_the_extra(monkeypatch, onnx_fp32, tmp_path):
    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'dp-sims\[tensorrt\]'.*python3-libnvinfer"):
        load_predictor(artifact)


def test_no_gpu_is_a_clear_error():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from cuda.bindings import runtime as cudart

    from runtimes.cuda import open_cuda

    err, count = cudart.cudaGetDeviceCount()
    if err == cudart.cudaError_t.cudaSuccess and count:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendUnavailable, match="CUDA cannot start|No CUDA GPU is visible"):
        open_cuda()


def test_tensorrt_modules_import_without_torch_or_tensorrt():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n"
        "import runtimes.trt_engine\n"
        "assert 'runtimes.backends.tensorrt' not in sys.modules, 'trt_engine needs the backend'\n"
        "import runtimes.cuda, runtimes.backends.tensorrt\n"
        "assert 'onnx' not in sys.modules and 'cuda' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -------------------------------------------------------------------------------------------- export


def test_tensorrt_needs_symmetric_int8_qdq(tmp_path):
    from export.tensorrt import check_qdq_for_tensorrt

    check_qdq_for_tensorrt(_tiny_onnx(tmp_path / "ok.onnx", "int8"))
    with pytest.raises(EngineBuildError, match="symmetric signed int8"):
        check_qdq_for_tensorrt(_tiny_onnx(tmp_path / "u8.onnx", "int8", zero_point=(TensorProto.UINT8, 128)))


def test_tensorrt_refuses_int32_bias_dequantize(tmp_path):
    """ONNX Runtime's default Q/DQ dequantizes int32 biases; TensorRT's DequantizeLinear reads int8 only."""
    from export.tensorrt import check_qdq_for_tensorrt

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [helper.make_tensor("b", TensorProto.INT32, [4], [1, 2, 3, 4]), helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("z", TensorProto.INT32, [], [0])]
    nodes = [helper.make_node("DequantizeLinear", ["b", "s", "z"], ["bias"], name="bias_DQ"), helper.make_node("Add", ["x", "bias"], ["y"])]
    path = tmp_path / "bias.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits)), str(path))
    with pytest.raises(EngineBuildError, match="'bias_DQ' dequantizes int32 values.*keep biases float"):
        check_qdq_for_tensorrt(path)


def _conv_qdq_onnx(path: Path, *, weight_axis: int = 0, activation_channels: bool = False, opset: int = 17,
                   q_zero_point: bool = True) -> Path:
    """x -> Q -> DQ -> Conv(W: int8 -> DQ per channel) -> y: the layout TensorRT reads, with one thing to break."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    act_scale = [0.1, 0.1] if activation_channels else [0.1]
    inits = [
        helper.make_tensor("xs", TensorProto.FLOAT, [len(act_scale)] if activation_channels else [], act_scale),
        helper.make_tensor("xz", TensorProto.INT8, [len(act_scale)] if activation_channels else [], [0] * len(act_scale)),
        helper.make_tensor("w", TensorProto.INT8, [3, 2, 1, 1], [1, 2, 3, 4, 5, 6]),
        helper.make_tensor("ws", TensorProto.FLOAT, [3], [0.01, 0.02, 0.03]),
        helper.make_tensor("wz", TensorProto.INT8, [3], [0, 0, 0]),
    ]
    q_inputs = ["x", "xs", "xz"] if q_zero_point else ["x", "xs"]
    act_axis = {"axis": 1} if activation_channels else {}
    nodes = [
        helper.make_node("QuantizeLinear", q_inputs, ["xq"], name="x_Q", **act_axis),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="x_DQ", **act_axis),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_DQ", axis=weight_axis),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def test_qdq_check_covers_axes_opset_and_missing_zero_points(tmp_path):
    from export.tensorrt import check_qdq_for_tensorrt

    assert check_qdq_for_tensorrt(_conv_qdq_onnx(tmp_path / "ok.onnx")) == []
    with pytest.raises(EngineBuildError, match="'x_Q' has no zero point, so it quantizes to uint8"):
        check_qdq_for_tensorrt(_conv_qdq_onnx(tmp_path / "u8.onnx", q_zero_point=False))
    with pytest.raises(EngineBuildError, match="weight of Conv 'conv' is quantized per channel on axis 1.*axis 0"):
        check_qdq_for_tensorrt(_conv_qdq_onnx(tmp_path / "axis.onnx", weight_axis=1))
    with pytest.raises(EngineBuildError, match="activation with per-channel scales"):
        check_qdq_for_tensorrt(_conv_qdq_onnx(tmp_path / "act.onnx", activation_channels=True))
    with pytest.raises(EngineBuildError, match="opset 10; per-channel Q/DQ needs opset 13"):
        check_qdq_for_tensorrt(_conv_qdq_onnx(tmp_path / "old.onnx", opset=10))
    (note,) = check_qdq_for_tensorrt(_conv_qdq_onnx(tmp_path / "new.onnx", opset=19))
    assert "TensorRT 8.6 (JetPack 6.0) parses opsets up to 17" in note


def test_the_fake_parser_refuses_what_tensorrt_refuses(fake, onnx_fp32, tmp_path):
    """So that a Q/DQ layout, opset or dtype TensorRT cannot read fails here too."""
    trt, _ = fake("10.3.0")
    with pytest.raises(EngineBuildError, match="QuantizeLinear without a zero point"):
        build_engine(_conv_qdq_onnx(tmp_path / "u8.onnx", q_zero_point=False), tmp_path / "e", "int8", input_size=SIZE,
                     noise_shape=(4, 8), onnx_precision="int8", trt=trt)
    model = onnx.load(str(onnx_fp32[0]))
    model.opset_import[0].version = 18
    onnx.save(model, str(tmp_path / "opset18.onnx"))
    trt8, _ = fake("8.6.1")
    with pytest.raises(EngineBuildError, match="Unsupported ONNX opset 18"):
        build_engine(tmp_path / "opset18.onnx", tmp_path / "e", "fp32", input_size=SIZE, noise_shape=onnx_fp32[1],
                     onnx_precision="fp32", trt=trt8)
    assert not hasattr(trt8.DataType, "INT64") and hasattr(trt.DataType, "INT64")


def test_export_for_dla_needs_one_batch_size(tmp_path, onnx_fp32):
    from dpsims.errors import ConfigError
    from export.base import ExportRequest
    from export.tensorrt import convert, export_from_onnx

    req = ExportRequest(generator=None, classes=tiny_classes(), precision="int8", out_dir=tmp_path / "x",
                        input_size=SIZE, noise_shape=onnx_fp32[1], batch=(1, 2, 8), options={"dla": 0})
    with pytest.raises(ConfigError, match="--dla needs one batch size.*--batch 2,2,2"):
        convert(req)  # before any ONNX export or calibration
    source = make_artifact(tmp_path / "onnx", onnx_fp32, target="onnx", batch=(1, 2, 4))
    with pytest.raises(ConfigError, match="--batch 2,2,2"):
        export_from_onnx(source / "model.onnx", tmp_path / "bad", precision="fp16", batch=(1, 2, 4), dla=0)
    export_from_onnx(source / "model.onnx", tmp_path / "dla", precision="fp16", dla=0)  # no --batch: the opt size
    manifest = read_manifest(tmp_path / "dla")
    assert manifest.batch == {"min": 2, "opt": 2, "max": 2} and manifest.target_options["dla_core"] == 0


def test_quantizing_leaves_the_root_logger_as_it_was(tmp_path, onnx_fp32, caplog):
    import logging

    from calibration import CalibrationSet
    from export.onnx import quantize_qdq

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    rng = np.random.default_rng(0)
    data = CalibrationSet(random_label_map(rng, 2, SIZE).astype(np.int32),
                          rng.standard_normal((2, *onnx_fp32[1]), dtype=np.float32), "test", 0)
    quantize_qdq(onnx_fp32[0], tmp_path / "q.onnx", data, [], "int8")
    assert root.level == level and root.handlers == handlers and not root.filters
    with caplog.at_level(logging.WARNING):
        logging.getLogger("someone.else").warning("still heard")
    assert "still heard" in caplog.text


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("trt_ckpt") / "generator_ema.safetensors", SIZE)


def test_export_generator_int8_writes_a_qdq_onnx_whose_psnr_holds_in_onnxruntime(tiny_checkpoint, tmp_path, monkeypatch):
    from calibration import load_calibration_set, psnr
    from calibration.sets import DEFAULT_SEED
    from export.api import export_generator
    from export.tensorrt import check_qdq_for_tensorrt
    from train.checkpoint import load_generator

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # the same path on a machine that has TensorRT
    report = export_generator(tiny_checkpoint, "tensorrt", "int8", calib_samples=8, batch=(1, 2, 4), out=tmp_path / "trt",
                              log=lambda m: None)
    out = report.out_dir
    manifest = read_manifest(out, verify=True)
    assert [f.path for f in manifest.files] == ["model.onnx"] and {"model.json", "model.onnx"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("model.engine*")) and not list(out.glob("model.timing*"))  # no TensorRT here: no engine
    assert manifest.target_options == {"onnx": "model.onnx", "precision": "int8", "onnx_precision": "int8", "batch": [1, 2, 4],
                                       "opset": 17, "dla_core": None, "workspace_gb": 2.0}
    assert any("built on the device" in n for n in report.notes)

    model = onnx.load(str(out / "model.onnx"))
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17)}  # export.onnx honours the opset option
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and detect_onnx_precision(out / "model.onnx") == "int8"
    check_qdq_for_tensorrt(out / "model.onnx")  # int8, zero points 0, no int32 bias: qdq_for="tensorrt" honoured
    assert qdq_outside_weighted_inputs(model) == 0  # TensorRT's placement: no Q/DQ on Conv/MatMul outputs
    assert "int8 activations symmetric" in manifest.calibration["method"] and manifest.calibration["held_out"] == 2

    generator, info = load_generator(tiny_checkpoint)  # re-measure: the held-out maps, in onnxruntime
    held_out = load_calibration_set("synthetic", info.num_classes, SIZE, generator.noise_shape, 8, DEFAULT_SEED).split()[1]
    with torch.no_grad():
        reference = generator(torch.from_numpy(held_out.labels), torch.from_numpy(held_out.noise)).numpy()
    images = onnxruntime_reference(out / "model.onnx", held_out.labels, held_out.noise)
    assert manifest.quality["samples"] == len(held_out) == 2
    assert abs(psnr(reference, images) - manifest.quality["psnr_db"]) < 0.5
    assert manifest.quality["psnr_db"] >= 30.0  # the gate's bar


def qdq_outside_weighted_inputs(model) -> int:
    """Activation Q/DQ pairs whose output feeds no Conv/MatMul/Gemm input: output quantization."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {t.name for t in model.graph.initializer}
    stray = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        producer = next((n for n in model.graph.node if node.input[0] in n.output), None)
        if node.input[0] in constants or (producer is not None and producer.input[0] in constants):
            continue  # a weight
        if not any(c.op_type in ("Conv", "MatMul", "Gemm") for c in consumers.get(node.output[0], [])):
            stray += 1
    return stray


def _stub_onnx_target(seen: dict, onnx_fp32):
    """Stands in for export.onnx in these tests: records the options, writes the FP32 ONNX."""
    import types

    from export.base import Converted

    def convert(req, keep_float=()):
        seen["options"] = dict(req.options)
        shutil.copy(onnx_fp32[0], req.out_dir / "model.onnx")
        return Converted(target_options={"opset": req.options["opset"]}, notes=["onnx ok"])

    return types.SimpleNamespace(convert=convert)


@pytest.mark.parametrize("with_tensorrt", [False, True])
def test_export_request(fake, onnx_fp32, tmp_path, monkeypatch, with_tensorrt):
    import export as export_package
    from export.base import ExportRequest
    from export.tensorrt import convert, finish

    seen: dict = {}
    stub = _stub_onnx_target(seen, onnx_fp32)
    monkeypatch.setitem(sys.modules, "export.onnx", stub)
    monkeypatch.setattr(export_package, "onnx", stub, raising=False)
    if with_tensorrt:
        trt, dev = fake("8.6.1")
        use_fake_cuda(monkeypatch, dev)
    else:
        monkeypatch.setitem(sys.modules, "tensorrt", None)
    req = ExportRequest(
        generator=None, classes=tiny_classes(), precision="fp16", out_dir=tmp_path,
        input_size=SIZE, noise_shape=onnx_fp32[1], batch=(1, 2, 8), options={"dla": None},
    )
    result = finish(req, convert(req))  # one conversion, then the engine (export.api calls them so)
    assert seen["options"] == {"dla": None, "opset": 17, "qdq_for": "tensorrt"}
    assert (tmp_path / "model.onnx").is_file() and result.notes[0] == "onnx ok"
    assert result.target_options == {
        "onnx": "model.onnx", "precision": "fp16", "onnx_precision": "fp32", "batch": [1, 2, 8], "opset": 17,
        "dla_core": None, "workspace_gb": 2.0,
    }
    if with_tensorrt:
        assert "Built model.engine for NVIDIA Fake GPU" in result.notes[1]
        assert [c[0] for c in calls(dev, "config.set_flag")] == ["FP16"]
    else:
        assert "No TensorRT engine built here" in result.notes[1] and "built on the device" in result.notes[2]
        assert not (tmp_path / "model.engine").exists()


@pytest.mark.parametrize("via", ["function", "cli"])
def test_export_from_onnx_without_tensorrt_and_without_torch(onnx_fp32, tmp_path, via):
    """On a machine without TensorRT (and without torch): the artifact is written and the output names what is
    missing and says the device builds the engine; ``python -m export --from`` exits 0."""
    source, out = make_artifact(tmp_path / "onnx", onnx_fp32, target="onnx") / "model.onnx", tmp_path / "trt"
    (source.parent / "MODEL_CARD.md").write_text("# Model card\n\n## Quality\n\n- PSNR 40 dB\n")
    call = {
        "function": "from export.tensorrt import export_from_onnx\n"
                    f"print('\\n'.join(export_from_onnx({str(source)!r}, {str(out)!r}, batch=(1, 1, 8)).notes))\n",
        "cli": "from export.__main__ import main\n"
               f"sys.exit(main(['--target', 'tensorrt', '--from', {str(source)!r}, '--out', {str(out)!r}, '--batch', '1,1,8']))\n",
    }[via]
    code = "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None\n" + call
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "built on the device" in run.stdout and "--from model.onnx" in run.stdout
    assert "TensorRT's Python package is not installed" in run.stdout and "dp-sims[tensorrt]" in run.stdout
    manifest = read_manifest(out)
    assert manifest.target == "tensorrt" and manifest.precision == "fp32" and manifest.batch == {"min": 1, "opt": 1, "max": 8}
    assert manifest.target_options["onnx_precision"] == "fp32" and [f.path for f in manifest.files] == ["model.onnx"]
    assert not (out / "model.engine").exists()
    card = (out / "MODEL_CARD.md").read_text()  # the source's card travels, saying what the rebuild changed
    assert card.startswith("# Model card") and "PSNR 40 dB" in card
    assert "## Rebuilt for TensorRT" in card and "precision **fp32**, batch 1..8 (opt 1)" in card
    assert "measured on that ONNX, which this engine runs" in card


def test_export_from_onnx_builds_the_engine_the_runtime_then_reuses(fake, onnx_fp32, tmp_path, monkeypatch):
    from export.tensorrt import export_from_onnx

    source = make_artifact(tmp_path / "onnx", onnx_fp32, target="onnx", batch=(1, 1, 1))
    trt, dev = fake("10.3.0", FakeDevice("Orin", dla_cores=2))
    use_fake_cuda(monkeypatch, dev)
    out = tmp_path / "trt"
    result = export_from_onnx(source / "model.onnx", out, precision="fp16", dla=1)  # batch 1,1,1: static
    assert "Built model.engine for Orin" in result.notes[0]
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model.json", "model.engine", "model.engine.json", "model.timing.10.3.0.cache"}
    (header,) = [c[0] for c in calls(dev, "builder.build_serialized_network")]
    assert header["dla_core"] == 1 and header["flags"] == ["FP16", "GPU_FALLBACK"]  # fp32 ONNX, weakly typed on 10
    with load_predictor(out, cuda_api=FakeCuda(dev)) as predictor:
        assert predictor.info()["backend"]["engine_cache"] == "hit" and trt.builds == 1
        assert predictor.generate(np.zeros(SIZE, dtype=np.int32), seed=0).shape == (*SIZE, 3)

    trt11, _ = fake("11.0.0", dev)
    with pytest.raises(EngineBuildError, match="strongly typed networks only"):
        export_from_onnx(source / "model.onnx", tmp_path / "trt11", precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "trt"], "a failed build leaves nothing behind"


def test_export_from_onnx_needs_the_artifact_manifest(tmp_path, onnx_fp32):
    from dpsims.errors import ManifestError
    from export.tensorrt import export_from_onnx

    shutil.copy(onnx_fp32[0], tmp_path / "model.onnx")
    with pytest.raises(ManifestError, match="not the model.onnx of a dp-sims artifact"):
        export_from_onnx(tmp_path / "model.onnx", tmp_path / "out")


@pytest.mark.parametrize("given, expected", [([], {"min": 1, "opt": 2, "max": 4}),
                                             (["--batch", "1,1,16"], {"min": 1, "opt": 1, "max": 16}),
                                             (["--batch", "8"], {"min": 1, "opt": 8, "max": 8})])
def test_cli_from_onnx_builds_the_batch_given_else_the_sources(tmp_path, onnx_fp32, monkeypatch, capsys, given, expected):
    """--from keeps the source artifact's batch unless --batch is given, also when the given one is 1,1,16 (the
    batch of a checkpoint export without --batch)."""
    from export.__main__ import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    source = make_artifact(tmp_path / "onnx", onnx_fp32, target="onnx", batch=(1, 2, 4))
    out = tmp_path / "trt"
    assert main(["--target", "tensorrt", "--from", str(source / "model.onnx"), "--out", str(out), *given]) == 0
    assert read_manifest(out).batch == expected
    assert read_manifest(out).target_options["batch"] == [expected["min"], expected["opt"], expected["max"]]
    assert f"artifact: {out}" in capsys.readouterr().out


def test_export_from_onnx_keeps_other_artifacts_and_takes_only_onnx(tmp_path, onnx_fp32):
    """--from never overwrites a folder without --overwrite, never turns the onnx artifact itself into a tensorrt
    one silently, and takes only the model.onnx of an onnx/tensorrt artifact."""
    from dpsims.errors import ConfigError, ManifestError
    from export.tensorrt import export_from_onnx

    source = make_artifact(tmp_path / "onnx", onnx_fp32, target="onnx")
    other = tmp_path / "openvino"
    other.mkdir()
    (other / "model.xml").write_text("<net/>")
    with pytest.raises(ConfigError, match="exists and is not empty.*--overwrite"):
        export_from_onnx(source / "model.onnx", other)
    assert [p.name for p in other.iterdir()] == ["model.xml"]
    with pytest.raises(ConfigError, match="would turn it into a tensorrt artifact"):
        export_from_onnx(source / "model.onnx", source)
    assert read_manifest(source).target == "onnx"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_from_onnx(source / "model.onnx", tmp_path / "afile")
    shutil.copy(source / "model.json", other / "model.json")
    with pytest.raises(ManifestError, match="not the model.onnx"):
        export_from_onnx(other / "model.xml", tmp_path / "x")
    export_from_onnx(source / "model.onnx", other, overwrite=True)  # replaces the folder whole
    assert read_manifest(other).target == "tensorrt" and not (other / "model.xml").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------- Jetson example


def _jetson_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_jetson", ROOT / "examples" / "jetson" / "run_jetson.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _label_pngs(folder: Path, manifest: Manifest) -> Path:
    from PIL import Image

    folder.mkdir()
    labels = random_label_map(np.random.default_rng(2), 2, SIZE).astype(np.uint8)
    Image.fromarray(labels[0], mode="L").save(folder / "ids.png")  # class ids as grey levels
    palette = np.asarray(manifest.palette, dtype=np.uint8)
    Image.fromarray(palette[labels[1]], mode="RGB").save(folder / "colours.png")  # class colours
    return folder


def test_jetson_script_stops_with_2_where_tensorrt_is_missing(onnx_fp32, tmp_path, monkeypatch, capsys):
    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    labels = _label_pngs(tmp_path / "maps", read_manifest(artifact))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code = _jetson_script().main(["--model", str(artifact), "--labels", str(labels), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "dp-sims[tensorrt]" in err and "2 label map(s) were read" in err


def test_jetson_script_checks_class_ids_and_counts_before_the_engine(onnx_fp32, tmp_path, monkeypatch, capsys):
    from PIL import Image

    artifact = make_artifact(tmp_path / "a", onnx_fp32)
    labels = _label_pngs(tmp_path / "maps", read_manifest(artifact))
    Image.fromarray(np.full(SIZE, 200, np.uint8), mode="L").save(labels / "bad.png")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    script = _jetson_script()
    code = script.main(["--model", str(artifact), "--labels", str(labels), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "bad.png holds the class id 200" in err and "TensorRT" not in err
    assert script.main(["--model", str(artifact), "--labels", str(labels), "--runs", "0"]) == 1
    assert "--runs must be >= 1" in capsys.readouterr().err


def test_jetson_script_runs_with_tensorrt(fake, onnx_fp32, tmp_path, monkeypatch, capsys):

    artifact = make_artifact(tmp_path / "a", onnx_fp32, batch=(1, 1, 2))
    labels = _label_pngs(tmp_path / "maps", read_manifest(artifact))
    trt, dev = fake("10.3.0")
    use_fake_cuda(monkeypatch, dev)
    argv = ["--model", str(artifact), "--labels", str(labels), "--out", str(tmp_path / "out"), "--runs", "3", "--warmup", "1"]
    assert _jetson_script().main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    # the engine build does not sit silent: why it builds, and its phases (TensorRT's progress monitor)
    assert "Building the TensorRT engine" in captured.err and "TensorRT build: Timing layers" in captured.err
    report = json.loads(out[out.rindex("\n{") + 1 :])  # the last JSON object: the report
    assert report["latency_ms"]["samples"] == 6 and report["latency_ms"]["median"] <= report["latency_ms"]["p90"]
    assert report["engine_cache"] == "built (no cached engine)" and report["batch"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["colours.png", "ids.png"]


# --------------------------------------------------------------------------------------- real TensorRT


@pytest.mark.tensorrt
def test_real_tensorrt_round_trip(onnx_fp32, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package is not installed (pip install 'dp-sims[tensorrt]')")
    from runtimes.cuda import open_cuda

    try:
        cuda = open_cuda()
    except BackendUnavailable as e:
        pytest.skip(f"TensorRT {trt.__version__} is installed but there is no usable GPU: {e}")
    cuda.close()
    artifact = make_artifact(tmp_path / "a", onnx_fp32, batch=(1, 2, 4))
    labels = random_label_map(np.random.default_rng(0), 3, SIZE)
    with load_predictor(artifact) as predictor:
        images = predictor.generate_raw(labels, seed=0)
        noise = predictor.sample_noise([0, 1, 2])
        assert predictor.info()["backend"]["engine_cache"].startswith("built")
    np.testing.assert_allclose(images, onnxruntime_reference(artifact / "model.onnx", labels, noise), atol=2e-3)
    with load_predictor(artifact) as predictor:
        assert predictor.info()["backend"]["engine_cache"] == "hit"
