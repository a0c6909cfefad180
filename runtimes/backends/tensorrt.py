"""TensorRT backend: the engine built from the artifact's ONNX for this GPU (cached beside it), run on one stream.

On open, :func:`runtimes.trt_engine.load_or_build` deserializes the cached engine when its sidecar matches this GPU
and TensorRT version, and builds it otherwise (seconds on a desktop GPU, minutes on a Jetson). Device and page-locked
host buffers are allocated once, for the artifact's max batch. Each ``infer``: set every input's shape, then the
tensor addresses, copy the inputs in, ``execute_async_v3``, copy the output back, synchronize the stream, return.

CUDA memory goes through :mod:`runtimes.cuda` (cuda-python or pycuda, whichever is installed).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import DpSimsError, InputError, ManifestError, PredictorClosed
from runtimes.backends.base import Backend, int_option
from runtimes.cuda import CudaApi, open_cuda
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest
from runtimes.trt_engine import GPU_ONLY, LoadedEngine, import_tensorrt, load_or_build, numpy_dtype

__all__ = ["TensorRTBackend", "TensorRTRunError", "parse_device", "open_cuda", "CudaApi"]


class TensorRTRunError(DpSimsError, RuntimeError):
    """TensorRT could not set up or run the engine (no memory for an execution context, a refused address...)."""


def parse_device(device: str) -> tuple[int, int | None]:
    """"auto" -> (0, None): where the artifact says (its DLA core, if export gave one, else the GPU);
    "cuda" / "cuda:N" / "gpu[:N]" -> (GPU index, GPU_ONLY): the GPU even for an artifact built for DLA;
    "dla:N" -> (0, DLA core N)."""
    match = re.fullmatch(r"(auto|cuda|gpu|dla)(?::(\d+))?", device.lower())
    if match is None:
        raise InputError(f"The tensorrt backend runs on 'auto', 'cuda[:N]' or 'dla:N' (a Jetson DLA core), not {device!r}.")
    kind, index = match.group(1), match.group(2)
    if kind == "dla":
        if index is None:
            raise InputError("Name the DLA core: device='dla:0' or 'dla:1'.")
        return 0, int(index)
    if kind == "auto":
        return int(index or 0), None
    return int(index or 0), GPU_ONLY


# ------------------------------------------------------------------------------------------------ backend


class TensorRTBackend(Backend):
    extra = "tensorrt"
    accepted_options = frozenset({"cache_dir", "workspace_gb", "dla_core", "rebuild", "cuda_api"})
    """cache_dir: where engines are cached (default: beside the ONNX when writable, else ~/.cache/dp-sims/tensorrt);
    workspace_gb: builder workspace; dla_core: build for and run on that DLA core (Jetson AGX Orin / Orin NX; as
    device='dla:N'); rebuild: ignore the cached engine; cuda_api: a :class:`runtimes.cuda.CudaApi` instance
    (default: cuda-python or pycuda). device='cuda' runs an artifact exported for DLA on the GPU."""

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        super().__init__(artifact_dir, manifest, device, **options)
        gpu_index, dla_core = parse_device(device)
        if "dla_core" in options:
            dla_core = int_option("dla_core", options["dla_core"])
        trt = import_tensorrt()
        self._trt = trt
        self._cuda: CudaApi | None = options.get("cuda_api") or open_cuda(gpu_index)
        self._buffers: dict[str, tuple[int, np.ndarray]] = {}
        self._stream = None
        self._context = None
        self._loaded: LoadedEngine | None = None
        try:
            self._gpu = self._cuda.device_info()
            with self._cuda.activate():
                self._loaded = load_or_build(
                    artifact_dir,
                    manifest,
                    self._gpu,
                    cache_dir=options.get("cache_dir"),
                    workspace_gb=options.get("workspace_gb"),
                    dla_core=dla_core,
                    rebuild=bool(options.get("rebuild", False)),
                    trt=trt,
                )
                self._open_context()
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to report
                self.close()
            raise

    def _open_context(self) -> None:
        engine, trt = self._loaded.engine, self._trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if set(self._inputs) != {INPUT_LABEL, INPUT_NOISE} or self._outputs != [OUTPUT_IMAGE]:
            raise ManifestError(
                f"The engine {self._loaded.path} has inputs {self._inputs} and outputs {self._outputs}; the graph "
                f"contract wants {INPUT_LABEL!r}, {INPUT_NOISE!r} -> {OUTPUT_IMAGE!r}. Rebuild it (rebuild=True)."
            )
        self._dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n)) for n in names}
        h, w = self.manifest.input_size
        per_sample = {INPUT_LABEL: (h, w), INPUT_NOISE: tuple(self.manifest.noise_shape), OUTPUT_IMAGE: (3, h, w)}
        for name, shape in per_sample.items():  # once, for the largest batch
            nbytes = self.max_batch * int(np.prod(shape)) * self._dtypes[name].itemsize
            self._buffers[name] = (self._cuda.malloc(nbytes), self._cuda.host_buffer(nbytes))
        self._stream = self._cuda.stream_create()
        self._context = engine.create_execution_context()
        if self._context is None:  # TensorRT returns None when it cannot allocate the context's activation memory
            raise TensorRTRunError(
                f"TensorRT could not create an execution context for {self._loaded.path}: most likely the GPU is out "
                "of memory (an Orin Nano shares its 4-8 GB with the CPU). Close other GPU programs, export with a "
                "smaller max batch (--batch 1,1,4) or size, and load the artifact again."
            )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise PredictorClosed("This TensorRT backend is closed.")
        cuda, ctx, stream = self._cuda, self._context, self._stream
        arrays = {n: np.ascontiguousarray(inputs[n], dtype=self._dtypes[n]) for n in self._inputs}
        n = len(arrays[INPUT_LABEL])
        if not self.min_batch <= n <= self.max_batch:
            raise InputError(f"This engine takes batches of {self.min_batch}..{self.max_batch}, got {n}.")
        with cuda.activate():
            for name, array in arrays.items():  # every input shape first: output shapes follow from them
                if not ctx.set_input_shape(name, array.shape):
                    raise InputError(f"TensorRT refused the shape {array.shape} for {name!r} (outside the engine's profile).")
            for name, (ptr, _) in self._buffers.items():
                if not ctx.set_tensor_address(name, ptr):
                    raise TensorRTRunError(f"TensorRT refused the device address of {name!r}; its log above says why.")
            for name, array in arrays.items():
                ptr, host = self._buffers[name]
                staged = host[: array.nbytes].view(array.dtype).reshape(array.shape)
                staged[...] = array
                cuda.copy_htod_async(ptr, staged, stream)
            if not ctx.execute_async_v3(cuda.stream_handle(stream)):
                raise TensorRTRunError("TensorRT's execute_async_v3 failed; its log above says why.")
            shape = tuple(ctx.get_tensor_shape(OUTPUT_IMAGE))
            ptr, host = self._buffers[OUTPUT_IMAGE]
            dtype = self._dtypes[OUTPUT_IMAGE]
            image = host[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
            cuda.copy_dtoh_async(image, ptr, stream)
            cuda.synchronize(stream)  # only now does the host buffer hold the image
        return {OUTPUT_IMAGE: image.astype(np.float32, copy=True)}  # a copy: the buffer is reused by the next call

    def close(self) -> None:
        cuda, self._cuda = self._cuda, None
        if cuda is None:
            return
        with cuda.activate():
            if self._stream is not None:
                cuda.synchronize(self._stream)  # nothing may still write into the buffers freed below
            self._context = None  # before the engine, which it belongs to
            self._loaded = None  # the engine and its runtime
            for ptr, host in self._buffers.values():
                cuda.free(ptr)
                cuda.free_host(host)
            self._buffers.clear()
            if self._stream is not None:
                cuda.stream_destroy(self._stream)
                self._stream = None
        if self.options.get("cuda_api") is None:
            cuda.close()

    def describe(self) -> dict[str, Any]:
        loaded = self._loaded
        info = {**super().describe(), "library": f"TensorRT {self._trt.__version__}"}
        if self._cuda is not None:
            info |= {"gpu": self._gpu.name, "compute_capability": self._gpu.compute_capability, "cuda_api": self._cuda.name}
        if loaded is not None:
            build = loaded.sidecar.get("build", {})
            info |= {
                "engine": str(loaded.path),
                "engine_cache": "hit" if loaded.cache_hit else f"built ({loaded.reason})",
                "build_seconds": loaded.sidecar.get("build_seconds"),
                "precision": build.get("precision"),
                "dla_core": build.get("dla_core"),
            }
        return info
