"""TensorRT backend: the engine built from the artifact's ONNX for this GPU (cached beside it), run on one stream.

On open, :func:`runtimes.trt_engine.load_or_build` deserializes the cached engine when its sidecar matches this GPU
and TensorRT version, and builds it otherwise (seconds on a desktop GPU, minutes on a Jetson). Device and page-locked
host buffers are allocated once, for the artifact's max batch. Each ``infer``: set every input's shape, then the
tensor addresses, copy the inputs in, ``execute_async_v3``, copy the output back, synchronize the stream, return.

CUDA memory goes through a small adapter (:class:`CudaApi`) with two implementations: cuda-python (NVIDIA's
bindings, the ``tensorrt`` extra) and pycuda (often already on Jetsons); whichever is installed.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.base import Backend, int_option
from runtimes.errors import BackendUnavailable, InputError, ManifestError
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest
from runtimes.trt_engine import GpuInfo, LoadedEngine, import_tensorrt, load_or_build

NO_GPU_HINT = (
    "TensorRT needs an NVIDIA GPU with its driver; on this machine run the onnx or openvino artifact instead "
    "(python -m export --target onnx ...)."
)

# --------------------------------------------------------------------------------------------- CUDA memory


class CudaApi(ABC):
    """The few CUDA calls the backend and the INT8 calibrator make: one device, one stream, raw pointers."""

    name: str = ""

    @abstractmethod
    def device_info(self) -> GpuInfo: ...

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Make this adapter's device (context) current on the calling thread for the ``with`` block."""
        yield

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def host_buffer(self, nbytes: int) -> np.ndarray:
        """A page-locked uint8 host buffer (fast, truly asynchronous copies)."""

    def free_host(self, buffer: np.ndarray) -> None:  # noqa: B027 - pycuda frees with the array
        """Release a buffer from :meth:`host_buffer`."""

    @abstractmethod
    def stream_create(self) -> Any: ...

    @abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` as an int, for ``execute_async_v3``."""

    @abstractmethod
    def stream_destroy(self, stream: Any) -> None: ...

    @abstractmethod
    def copy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...

    @abstractmethod
    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...

    @abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the adapter's own resources (a pushed context)."""


class CudaPythonApi(CudaApi):
    """NVIDIA's cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6): the CUDA runtime API."""

    def __init__(self, device_index: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self.name = "cuda-python"
        self.index = device_index
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or count == 0:
            raise BackendUnavailable(f"No CUDA GPU is visible ({self._message(err) if count is None else 'no device'}). {NO_GPU_HINT}")
        if device_index >= count:
            raise InputError(f"cuda:{device_index} was asked for; this machine has {count} CUDA device(s).")
        self._check(cudart.cudaSetDevice(device_index))

    def _message(self, err: Any) -> str:
        _, text = self.rt.cudaGetErrorString(err)
        return text.decode() if isinstance(text, bytes) else str(text)

    def _check(self, result: tuple) -> Any:
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error {err}: {self._message(err)}")
        return values[0] if len(values) == 1 else values

    def device_info(self) -> GpuInfo:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.index))
        name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(name=name, compute_capability=f"{prop.major}.{prop.minor}")

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._check(self.rt.cudaSetDevice(self.index))  # the current device is per thread
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def host_buffer(self, nbytes: int) -> np.ndarray:
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes)))
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def free_host(self, buffer: np.ndarray) -> None:
        self._check(self.rt.cudaFreeHost(buffer.ctypes.data))

    def stream_create(self) -> Any:
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream))

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))


class PyCudaApi(CudaApi):
    """pycuda on the device's primary context (the one TensorRT's runtime API uses), pushed per call."""

    def __init__(self, device_index: int = 0):
        import pycuda.driver as cuda

        self.cuda = cuda
        self.name = "pycuda"
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as e:
            raise BackendUnavailable(f"No CUDA GPU is visible ({e}). {NO_GPU_HINT}") from None
        if count == 0:
            raise BackendUnavailable(f"No CUDA GPU is visible. {NO_GPU_HINT}")
        if device_index >= count:
            raise InputError(f"cuda:{device_index} was asked for; this machine has {count} CUDA device(s).")
        self.device = cuda.Device(device_index)
        self._allocations: dict[int, Any] = {}
        self.context = self.device.retain_primary_context()
        self.context.push()  # current for the allocations made while the backend opens

    def device_info(self) -> GpuInfo:
        major, minor = self.device.compute_capability()
        return GpuInfo(name=self.device.name(), compute_capability=f"{major}.{minor}")

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def malloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation  # freed with free(), not by the garbage collector
        return int(allocation)

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def host_buffer(self, nbytes: int) -> np.ndarray:
        return self.cuda.pagelocked_empty(nbytes, np.uint8)

    def stream_create(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_destroy(self, stream: Any) -> None:
        del stream

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src, stream)

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cuda.Context.pop()


def open_cuda(device_index: int = 0) -> CudaApi:
    """cuda-python when installed, else pycuda; BackendUnavailable naming the extra when neither is."""
    for module, api in (("cuda", CudaPythonApi), ("pycuda.driver", PyCudaApi)):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return api(device_index)
    raise BackendUnavailable(
        "TensorRT needs CUDA Python bindings to move data: pip install 'dp-sims[tensorrt]' (cuda-python), "
        "or pycuda (on Jetson: pip install pycuda, with JetPack's CUDA toolkit)."
    )


def parse_device(device: str) -> tuple[int, int | None]:
    """"auto" / "cuda" / "cuda:N" / "gpu[:N]" -> (GPU index, None); "dla:N" -> (0, DLA core N)."""
    match = re.fullmatch(r"(auto|cuda|gpu|dla)(?::(\d+))?", device.lower())
    if match is None:
        raise InputError(f"The tensorrt backend runs on 'auto', 'cuda[:N]' or 'dla:N' (a Jetson DLA core), not {device!r}.")
    kind, index = match.group(1), match.group(2)
    if kind == "dla":
        if index is None:
            raise InputError("Name the DLA core: device='dla:0' or 'dla:1'.")
        return 0, int(index)
    return int(index or 0), None


# ------------------------------------------------------------------------------------------------ backend


class TensorRTBackend(Backend):
    extra = "tensorrt"
    accepted_options = frozenset({"cache_dir", "workspace_gb", "dla_core", "rebuild", "cuda_api"})
    """cache_dir: where engines are cached (default: beside the ONNX when writable, else ~/.cache/dp-sims/tensorrt);
    workspace_gb: builder workspace; dla_core: build for that DLA core (Jetson AGX Orin / Orin NX); rebuild: ignore
    the cached engine; cuda_api: a :class:`CudaApi` instance (default: cuda-python or pycuda)."""

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
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        h, w = self.manifest.input_size
        per_sample = {INPUT_LABEL: (h, w), INPUT_NOISE: tuple(self.manifest.noise_shape), OUTPUT_IMAGE: (3, h, w)}
        for name, shape in per_sample.items():  # once, for the largest batch
            nbytes = self.max_batch * int(np.prod(shape)) * self._dtypes[name].itemsize
            self._buffers[name] = (self._cuda.malloc(nbytes), self._cuda.host_buffer(nbytes))
        self._stream = self._cuda.stream_create()
        self._context = engine.create_execution_context()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError("This TensorRT backend is closed.")
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
                ctx.set_tensor_address(name, ptr)
            for name, array in arrays.items():
                ptr, host = self._buffers[name]
                staged = host[: array.nbytes].view(array.dtype).reshape(array.shape)
                staged[...] = array
                cuda.copy_htod_async(ptr, staged, stream)
            if not ctx.execute_async_v3(cuda.stream_handle(stream)):
                raise RuntimeError("TensorRT's execute_async_v3 failed; its log above says why.")
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
