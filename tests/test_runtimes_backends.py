"""Every backend against eager torch and against each other, and each backend's own options and refusals."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_artifacts import INPUT_SIZE, random_label_map, shared_artifacts

from runtimes import BackendUnavailable, InputError, ManifestError, load_predictor
from runtimes.backends.onnxruntime_backend import CPU, CUDA, TENSORRT, select_providers
from runtimes.backends.openvino_backend import openvino_device
from runtimes.spec import file_entry, read_manifest, write_manifest

TARGETS = ("onnx", "openvino", "torch")
SEEDS = [5, 6, 7, 8, 9]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return shared_artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def predictors(built):
    opened = {t: load_predictor(built[1][t], device="cpu") for t in TARGETS}
    yield opened
    for p in opened.values():
        p.close()


@pytest.fixture(scope="module")
def case(built):
    """Five label maps (more than the max batch of 4) and the eager torch images for seeds 5..9."""
    generator = built[0]
    labels = random_label_map(np.random.default_rng(11), len(SEEDS))
    labels[0, :8, :8] = 255  # the ignore id: an all-zero one-hot pixel in every backend
    noise = np.concatenate([np.random.default_rng(s).standard_normal((1, 4, 8), dtype=np.float32) for s in SEEDS])
    with torch.no_grad():
        reference = generator(torch.from_numpy(labels.astype(np.int32)), torch.from_numpy(noise)).numpy()
    return labels, reference


def replace_file(artifact: Path, name: str, data: bytes) -> None:
    """Overwrite an artifact file and re-hash it in model.json (a consistent but hostile artifact)."""
    (artifact / name).write_bytes(data)
    manifest = read_manifest(artifact, verify=False)
    manifest.files = [file_entry(artifact, f.path) for f in manifest.files]
    write_manifest(manifest, artifact)


def rewrite_zip(path: Path, edit) -> bytes:
    """The zip at ``path`` with each member's bytes passed through ``edit(name, data)``."""
    out = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, edit(item.filename, src.read(item)))
    return out.read_bytes()


# -------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("target", TARGETS)
def test_backend_matches_eager_torch(predictors, case, target):
    labels, reference = case
    raw = predictors[target].generate_raw(labels, seed=SEEDS[0])
    assert raw.shape == reference.shape and raw.dtype == np.float32
    error = np.abs(raw - reference)
    assert error.mean() < 1e-3 and error.max() < 1e-2, (target, error.mean(), error.max())
    assert reference.std(axis=0).mean() > 1e-2  # different noise gives visibly different images (not a trivial test)


def test_backends_agree_with_each_other(predictors, case):
    labels, _ = case
    raws = {t: p.generate_raw(labels, seed=SEEDS[0]) for t, p in predictors.items()}
    images = {t: p.generate(labels, seed=SEEDS[0]) for t, p in predictors.items()}
    for a in TARGETS:
        for b in TARGETS:
            assert np.abs(raws[a] - raws[b]).mean() < 1e-3
            assert np.abs(images[a].astype(int) - images[b]).max() <= 1


@pytest.mark.parametrize("target", TARGETS)
def test_batch_matches_single_maps(predictors, case, target):
    labels, _ = case
    predictor = predictors[target]
    batch = predictor.generate_raw(labels, seed=SEEDS[0])
    singles = np.stack([predictor.generate_raw(m, seed=s) for m, s in zip(labels, SEEDS)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


# ------------------------------------------------------------------------------------------ openvino


def test_openvino_throughput_hint_uses_the_async_queue(built, predictors, case):
    labels, _ = case
    with load_predictor(built[1]["openvino"], device="cpu", performance_hint="throughput", num_threads=2) as p:
        assert p.info()["backend"]["performance_hint"] == "THROUGHPUT"
        assert p._backend._queue is not None
        np.testing.assert_allclose(p.generate_raw(labels, seed=SEEDS[0]),
                                   predictors["openvino"].generate_raw(labels, seed=SEEDS[0]), atol=1e-5)


def test_openvino_precision_hint(built, predictors, case):
    assert "32" in predictors["openvino"].info()["backend"]["inference_precision"]  # f32 for an FP32 artifact
    labels, reference = case
    with load_predictor(built[1]["openvino"], device="auto", inference_precision="bf16") as p:
        assert p.info()["backend"]["ov_device"] == "CPU"
        low = p.generate_raw(labels, seed=SEEDS[0])
    assert np.abs(low - reference).mean() < 0.05  # bf16 (or f32 where the CPU lacks it): close, not exact


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"performance_hint": "FAST"}, InputError, "performance_hint"),
        ({"inference_precision": "int8"}, InputError, "inference_precision"),
        ({"num_threads": -1}, InputError, "num_threads"),
        ({"device": "cuda"}, InputError, "not CUDA"),
        ({"device": "npu"}, BackendUnavailable, "no NPU device"),
    ],
)
def test_openvino_bad_options(built, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_predictor(built[1]["openvino"], **kwargs)


def test_openvino_device_names():
    assert openvino_device("auto", ["CPU"]) == "CPU"
    assert openvino_device("auto", ["CPU", "GPU"]) == "AUTO"
    assert openvino_device("gpu", ["CPU", "GPU.0", "GPU.1"]) == "GPU"
    assert openvino_device("GPU.1", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1"
    assert openvino_device("AUTO:GPU,CPU", ["CPU"]) == "AUTO:GPU,CPU"
    with pytest.raises(BackendUnavailable, match="has CPU"):
        openvino_device("gpu", ["CPU"])


# --------------------------------------------------------------------------------------- onnxruntime


def test_onnxruntime_provider_selection():
    gpu = [TENSORRT, CUDA, CPU]
    assert select_providers("cpu", gpu) == [CPU]
    assert [p[0] if isinstance(p, tuple) else p for p in select_providers("auto", gpu)] == gpu
    assert select_providers("auto", [CUDA, CPU]) == [(CUDA, {"device_id": 0}), CPU]
    assert select_providers("cuda:1", [CUDA, CPU]) == [(CUDA, {"device_id": 1}), CPU]
    trt = select_providers("tensorrt", gpu, trt_cache=Path("/tmp/cache"))
    assert trt[0] == (TENSORRT, {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": "/tmp/cache"})
    assert select_providers("auto", [CPU]) == [CPU]
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        select_providers("cuda", [CPU])
    with pytest.raises(InputError, match="'auto', 'cpu'"):
        select_providers("npu", gpu)


def test_onnxruntime_threads_option_gives_the_same_images(built, predictors, case):
    labels, _ = case
    with load_predictor(built[1]["onnx"], device="cpu", intra_op_num_threads=1) as p:
        np.testing.assert_allclose(p.generate_raw(labels, seed=1), predictors["onnx"].generate_raw(labels, seed=1), atol=1e-6)


def test_onnxruntime_refuses_a_model_off_the_contract(built, tmp_path):
    art = Path(shutil.copytree(built[1]["onnx"], tmp_path / "onnx"))
    module = torch.nn.Conv2d(1, 3, 1)
    torch.onnx.export(module, (torch.zeros(1, 1, *INPUT_SIZE),), str(tmp_path / "x.onnx"), input_names=["x"],
                      output_names=["image"], dynamo=False)
    replace_file(art, "model.onnx", (tmp_path / "x.onnx").read_bytes())
    with pytest.raises(ManifestError, match="graph contract"):
        load_predictor(art)
    replace_file(art, "model.onnx", b"\x08\x07garbage")
    with pytest.raises(ManifestError, match="onnxruntime .* cannot open"):
        load_predictor(art)


def test_onnxruntime_cuda_request_without_gpu_build(built):
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        load_predictor(built[1]["onnx"], device="cuda")


# --------------------------------------------------------------------------------------------- torch


def test_torch_devices(built):
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no such CUDA GPU"):
            load_predictor(built[1]["torch"], device="cuda")
    with pytest.raises(InputError, match="'auto', 'cpu' or 'cuda"):
        load_predictor(built[1]["torch"], device="mps")


class _TouchOnUnpickle:
    """Unpickling this creates a file: proof that code from the artifact ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_torch_refuses_pickled_sample_inputs_without_running_them(built, tmp_path):
    art = Path(shutil.copytree(built[1]["torch"], tmp_path / "torch"))
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_TouchOnUnpickle(marker))
    data = rewrite_zip(art / "model.pt2", lambda name, d: payload if "sample_inputs/" in name else d)
    replace_file(art, "model.pt2", data)
    with pytest.raises(ManifestError, match="refuses"):
        load_predictor(art)
    assert not marker.exists()


def test_torch_refuses_pickled_weights(built, tmp_path):
    art = Path(shutil.copytree(built[1]["torch"], tmp_path / "torch"))

    def mark_pickled(name: str, data: bytes) -> bytes:
        if not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()

    replace_file(art, "model.pt2", rewrite_zip(art / "model.pt2", mark_pickled))
    with pytest.raises(ManifestError, match="pickled payload"):
        load_predictor(art)
    replace_file(art, "model.pt2", b"not a zip")
    with pytest.raises(ManifestError, match="not a zip"):
        load_predictor(art)
