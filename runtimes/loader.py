"""``load_predictor``: a path or URL in, a :class:`runtimes.predictor.Predictor` out. It sits above both kinds of
predictor (an artifact folder opened by a local backend, a model served by Triton in ``runtimes.remote``), so that
neither predictor module imports the other."""

from __future__ import annotations

import os
from typing import Any

from runtimes.backends import open_backend
from runtimes.predictor import Predictor
from runtimes.spec import manifest_path, read_manifest


def load_predictor(path: str | os.PathLike, device: str = "auto", *, verify: bool = True, **options: Any) -> Predictor:
    """Open the artifact at ``path`` (its directory or its model.json) on ``device``.

    The manifest is validated and, with ``verify``, every file's sha256 is checked; the backend comes from the
    manifest's ``target``. ``device``: "auto" (the fastest available), "cpu", "cuda"/"cuda:N", or the backend's own
    names (OpenVINO: "GPU", "NPU", ...). ``options`` go to the backend, e.g. ``intra_op_num_threads=2`` (onnx),
    ``performance_hint="THROUGHPUT"`` or ``inference_precision="bf16"`` (openvino).

    ``path`` may also name a served model, ``http://HOST:PORT/MODEL`` or ``grpc://HOST:PORT/MODEL`` (Triton / KServe
    v2, see :mod:`runtimes.remote`): the same predictor, its graph run by the server; option ``timeout`` (seconds).
    """
    if isinstance(path, str) and "://" in path:
        from runtimes.remote import load_remote_predictor  # tritonclient is imported only here

        return load_remote_predictor(path, device, **options)
    manifest = read_manifest(path, verify=verify)
    artifact_dir = manifest_path(path).parent
    return Predictor(open_backend(artifact_dir, manifest, device, **options), manifest, artifact_dir)
