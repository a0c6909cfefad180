"""The model repositories of ``python -m export --target triton`` in a real Triton server, answered by Triton's own
onnxruntime and openvino backends (runtimes.serve.RepositoryServer), on 127.0.0.1 only.

Marked ``triton`` (and ``slow``: three exports, two of them INT8, take a few minutes). It needs a tritonserver
binary (the nvidia-pytriton wheel's, or DPSIMS_TRITONSERVER) and DPSIMS_TRITON_BACKENDS naming a backend
directory with ``onnxruntime/`` and ``openvino/`` built against this environment's onnxruntime and openvino (the
artifacts are made with those, so the repositories state them with ``-o backend_version``; README, Serving, says
how such a directory is built). Run it with

    DPSIMS_TRITON_BACKENDS=/path/to/backends pytest -m triton tests/test_triton_real.py

Each served answer is compared with the local predictor of the same artifact on the same maps and noise: bit for
bit for ONNX FP32; for INT8 within the artifact's own reported error (model.json ``quality.psnr_db``: served vs
local must be at least as close as the artifact is to the FP32 model). Triton's openvino backend cannot ask
OpenVINO for f32 compute (only ``HINT_BF16``), so OpenVINO picks its default precision (bf16 on CPUs with native
bf16); the local OpenVINO predictor is opened with ``inference_precision="auto"``, the same default, so both run
the same computation on any CPU.
"""

from __future__ import annotations

import math
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from runtime_artifacts import random_label_map, save_tiny_checkpoint

pytestmark = [pytest.mark.triton, pytest.mark.slow]

BACKENDS = os.environ.get("DPSIMS_TRITON_BACKENDS", "")
if not BACKENDS:
    pytest.skip("DPSIMS_TRITON_BACKENDS is not set: name a Triton backend directory holding onnxruntime/ and "
                "openvino/ backends built against this environment's runtimes (README, Serving)", allow_module_level=True)
_missing = [b for b in ("onnxruntime", "openvino") if not (Path(BACKENDS) / b).is_dir()]
if _missing:
    pytest.skip(f"DPSIMS_TRITON_BACKENDS={BACKENDS} has no {' or '.join(_missing)} backend folder", allow_module_level=True)
pytest.importorskip("tritonclient.http", reason="needs the serve extra: pip install 'dp-sims[serve]'")
pytest.importorskip("tritonclient.grpc", reason="needs the serve extra: pip install 'dp-sims[serve]'")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf", reason="the INT8 exports need nncf")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from export.api import export_generator  # noqa: E402
from export.triton import RUNTIME_LIBRARY, export_repository  # noqa: E402
from runtimes import load_predictor, read_manifest  # noqa: E402
from runtimes.serve import RepositoryServer, ServerNotFound, find_triton  # noqa: E402

try:
    find_triton(backends=BACKENDS)
except ServerNotFound as _none:
    pytest.skip(f"no tritonserver: {_none}", allow_module_level=True)

HOST = "127.0.0.1"
BATCH = (1, 2, 4)  # (min, opt, max) of every artifact
MODELS = {"onnx_fp32": ("onnx", "fp32"), "onnx_int8": ("onnx", "int8"), "openvino_int8": ("openvino", "int8")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR in [-1, 1] terms (peak-to-peak 2), as export reports it."""
    mse = float(np.mean((reference.astype(np.float64) - candidate.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton_real")
    checkpoint = save_tiny_checkpoint(root / "tiny.safetensors")
    return {key: export_generator(checkpoint, target, precision, calib_samples=16, batch=BATCH, out=root / key,
                                  log=quiet).out_dir
            for key, (target, precision) in MODELS.items()}


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton_repo")
    for key, artifact in artifacts.items():
        manifest = read_manifest(artifact)
        made_with = manifest.library_versions[RUNTIME_LIBRARY[manifest.target]]
        # the backends are built against this environment's runtime: say so, as for any hand-built backend
        export_repository(artifact, repo, {"name": key, "backend_version": made_with})
    srv = RepositoryServer(repo, host=HOST, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                           backend_directory=BACKENDS, drain_s=5, start_timeout_s=300,
                           server_log=tmp_path_factory.mktemp("triton_log") / "tritonserver.log")
    with srv:
        yield srv
    assert not srv.is_alive()


def local_predictor(artifact: Path):
    if read_manifest(artifact).target == "openvino":  # OpenVINO's default precision, as in the backend (module doc)
        return load_predictor(artifact, device="cpu", inference_precision="auto")
    return load_predictor(artifact, device="cpu")


def assert_same(key: str, artifact: Path, served: np.ndarray, local: np.ndarray) -> None:
    assert served.shape == local.shape and served.dtype == np.float32
    if key == "onnx_fp32":
        assert np.array_equal(served, local), f"max difference {np.abs(served - local).max()}"
    else:
        reported = read_manifest(artifact).quality["psnr_db"]
        assert psnr_db(local, served) >= reported, (key, psnr_db(local, served), reported)


def infer(module, client, name: str, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
    inputs = [module.InferInput("label", list(labels.shape), "INT32"), module.InferInput("noise", list(noise.shape), "FP32")]
    inputs[0].set_data_from_numpy(labels)
    inputs[1].set_data_from_numpy(noise)
    return client.infer(name, inputs, outputs=[module.InferRequestedOutput("image")]).as_numpy("image")


def test_every_repository_is_loaded_by_tritons_own_backend(server):
    client = httpclient.InferenceServerClient(f"{HOST}:{server.endpoints.http_port}", network_timeout=60)
    try:
        index = {m["name"]: m.get("state") for m in client.get_model_repository_index()}
        assert index == dict.fromkeys(MODELS, "READY")
        for key, (target, _) in MODELS.items():
            config = client.get_model_config(key)
            assert config.get("backend") == {"onnx": "onnxruntime", "openvino": "openvino"}[target]
            assert int(config.get("max_batch_size", 0)) == (BATCH[2] if target == "onnx" else 0)
    finally:
        client.close()


@pytest.mark.parametrize("key", list(MODELS))
def test_batches_of_1_2_and_the_max_equal_the_local_predictor(server, artifacts, key):
    http = httpclient.InferenceServerClient(f"{HOST}:{server.endpoints.http_port}", network_timeout=60)
    grpc = grpcclient.InferenceServerClient(f"{HOST}:{server.endpoints.grpc_port}")
    rng = np.random.default_rng(7)
    try:
        with local_predictor(artifacts[key]) as local:
            for n, (module, client) in zip((1, 2, BATCH[2]), ((httpclient, http), (grpcclient, grpc), (httpclient, http))):
                labels = random_label_map(rng, n).astype(np.int32)
                noise = local.sample_noise(range(10 * n, 11 * n))
                served = infer(module, client, key, labels, noise)
                assert_same(key, artifacts[key], served, local.generate_raw(labels, noise=noise))
            maps = random_label_map(rng, BATCH[2])
            served = infer(grpcclient, grpc, key, maps.astype(np.int32), local.sample_noise(range(BATCH[2])))
            assert_same(key, artifacts[key], served, local.generate_raw(maps, seed=list(range(BATCH[2]))))
    finally:
        http.close()
        grpc.close()


@pytest.mark.parametrize("key", list(MODELS))
def test_the_remote_predictor_on_tritons_backends_equals_the_local_one(server, artifacts, key):
    """load_predictor("http://...") reads the manifest from the repository's config and splits a batch larger
    than the server's; several threads send at once (Triton's dynamic batcher groups the ONNX requests)."""
    rng = np.random.default_rng(11)
    maps = random_label_map(rng, BATCH[2] + 3)
    with local_predictor(artifacts[key]) as local, \
            load_predictor(f"http://{HOST}:{server.endpoints.http_port}/{key}", timeout=60) as remote:
        assert remote.max_batch == BATCH[2] and remote.num_classes == local.num_classes
        assert_same(key, artifacts[key], remote.generate_raw(maps, seed=3), local.generate_raw(maps, seed=3))
        with ThreadPoolExecutor(4) as pool:
            served = list(pool.map(lambda i: remote.generate_raw(maps[i], seed=i), range(4)))
        for i, image in enumerate(served):
            assert_same(key, artifacts[key], image[None], local.generate_raw(maps[i], seed=i)[None])


def test_the_load_test_drives_tritons_backends(artifacts, tmp_path):
    """benchmarks/load_test.py --triton-backends: the repository served by Triton's own backends beside
    `runtimes serve`, no errors, the server's statistics read."""
    import json

    from benchmarks.load_test import main as load_test

    artifact = artifacts["onnx_fp32"]
    version = read_manifest(artifact).library_versions["onnxruntime"]
    assert load_test(["--model", str(artifact), "--clients", "1,2", "--requests", "3", "--local-batches", "1",
                      "--triton-backends", BACKENDS, "--backend-version", f"onnxruntime={version}",
                      "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "load_test.json").read_text())["results"][0]["rows"]
    triton = [r for r in rows if r["mode"].startswith("Triton backends")]
    assert [(r["clients"], r["images"], r["errors"]) for r in triton] == [(1, 3, 0), (2, 6, 0)]
    assert all(r["mean_batch"] >= 1 for r in triton)
