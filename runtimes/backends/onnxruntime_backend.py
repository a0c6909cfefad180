"""ONNX Runtime backend: the artifact's ONNX (``model.onnx``) on the CPU, CUDA or TensorRT execution provider."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import BackendUnavailable, InputError, ManifestError
from dpsims.optional import require
from runtimes.backends.base import Backend, check_input_shapes, int_option
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest
from runtimes.targets import target_of

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def select_providers(device: str, available: list[str], trt_cache: Path | None = None) -> list[Any]:
    """Execution providers for ``device``: "cpu"; "cuda"/"cuda:N"; "tensorrt"/"tensorrt:N"; "auto" = TensorRT,
    then CUDA when this onnxruntime has them, CPU always last."""
    match = re.fullmatch(r"(auto|cpu|cuda|gpu|tensorrt)(?::(\d+))?", device.lower())
    if match is None:
        raise InputError(f"The onnx backend runs on 'auto', 'cpu', 'cuda[:N]' or 'tensorrt[:N]', not {device!r}.")
    kind, index = match.group(1), int(match.group(2) or 0)
    kind = "cuda" if kind == "gpu" else kind
    cuda = (CUDA, {"device_id": index})
    trt_options: dict[str, Any] = {"device_id": index}
    if trt_cache is not None:  # TensorRT EP builds an engine per session: keep it between runs
        trt_options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}
    tensorrt = (TENSORRT, trt_options)
    if kind == "cpu":
        return [CPU]
    if kind == "auto":
        return [p for p in (tensorrt, cuda) if p[0] in available] + [CPU]
    wanted = [tensorrt, cuda] if kind == "tensorrt" else [cuda]
    if wanted[0][0] not in available:
        raise BackendUnavailable(
            f"device {device!r} needs onnxruntime's {wanted[0][0]}, which this onnxruntime lacks (it has "
            f"{', '.join(available)}). Install onnxruntime-gpu instead of onnxruntime, or use device='cpu'."
        )
    return [p for p in wanted if p[0] in available] + [CPU]


def _trt_cache_dir(manifest: Manifest) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "dp-sims" / "onnxruntime-tensorrt" / manifest.file(target_of(manifest.target).files[0]).sha256[:16]


class OnnxRuntimeBackend(Backend):
    extra = "onnx"
    accepted_options = frozenset({"intra_op_num_threads", "inter_op_num_threads"})

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        super().__init__(artifact_dir, manifest, device, **options)
        ort = require("onnxruntime", self.extra)
        self._version = ort.__version__
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3  # errors only: no per-node warnings on the console
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            if name in options:
                setattr(session_options, name, int_option(name, options[name]))  # 0: onnxruntime's default
        available = ort.get_available_providers()
        trt_cache = _trt_cache_dir(manifest) if TENSORRT in available else None
        providers = select_providers(device, available, trt_cache)
        if trt_cache is not None and any(p[0] == TENSORRT for p in providers if isinstance(p, tuple)):
            trt_cache.mkdir(parents=True, exist_ok=True)
        path = self.model_files()[0]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise ManifestError(
                f"onnxruntime {self._version} cannot open {path}: {e}. The file is damaged, or needs a newer onnxruntime."
            ) from None
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {INPUT_LABEL, INPUT_NOISE} or OUTPUT_IMAGE not in outputs:
            raise ManifestError(
                f"{path} has inputs {sorted(inputs)} and outputs {outputs}; the graph contract wants inputs "
                f"{INPUT_LABEL!r}, {INPUT_NOISE!r} and output {OUTPUT_IMAGE!r}. Export it again with `python -m export`."
            )
        unknown = {n: t for n, t in inputs.items() if t not in _NUMPY_TYPES}
        if unknown:
            raise ManifestError(f"{path} has inputs of unsupported types {unknown}.")
        self._input_types = {n: _NUMPY_TYPES[t] for n, t in inputs.items()}
        check_input_shapes(path, {i.name: [d if isinstance(d, int) else None for d in i.shape]
                                  for i in self.session.get_inputs()}, manifest)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: inputs[name].astype(dtype, copy=False) for name, dtype in self._input_types.items()}
        (image,) = self.session.run([OUTPUT_IMAGE], feeds)
        return {OUTPUT_IMAGE: image.astype(np.float32, copy=False)}

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "library": f"onnxruntime {self._version}",
            "providers": self.session.get_providers() if self.session is not None else [],
        }

