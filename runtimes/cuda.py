"""CUDA memory for the TensorRT path: one device, one stream, raw pointers, behind a small adapter (:class:`CudaApi`).

Two implementations, whichever is installed: cuda-python (NVIDIA's bindings of the CUDA runtime API,
``cuda.bindings.runtime``, ``cuda.cudart`` before 12.6; every call returns a tuple ``(cudaError_t, *values)``) and
pycuda (often already on Jetsons; calls raise ``pycuda.driver.Error``). Used by the runtime's TensorRT backend
(:mod:`runtimes.backends.tensorrt`) and by the engine build (:mod:`runtimes.trt_engine`, which asks it for the GPU's
name and compute capability). Only numpy is imported here; ``cuda`` or ``pycuda`` when an adapter is opened.

Polygraphy (NVIDIA's ``polygraphy.cuda``) offers the same pieces over ctypes; this module stays because the
adapter is about 150 lines, the JetPack images ship cuda-python or pycuda and not polygraphy, and both bindings'
real call shapes are tested here (tests/fake_tensorrt.py fakes cudart's and pycuda's calls, not this adapter).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpsims.errors import BackendUnavailable, DpSimsError, InputError

NO_GPU_HINT = (
    "TensorRT needs an NVIDIA GPU with its driver; on this machine run the onnx or openvino artifact instead "
    "(python -m export --target onnx ...)."
)
#: cudaErrorInsufficientDriver: the bindings' CUDA is newer than the driver (on a Jetson: not JetPack's CUDA)
INSUFFICIENT_DRIVER = 35
DRIVER_HINT = (
    "The NVIDIA driver is missing, or older than the CUDA the bindings were built for. " + NO_GPU_HINT + " On a "
    "Jetson install the cuda-python of "
    "the JetPack's CUDA: pip install 'cuda-python==12.2.*' on JetPack 6.0, 'cuda-python==12.6.*' on JetPack 6.1/6.2, "
    "'cuda-python==13.0.*' on JetPack 7 (or pycuda built against /usr/local/cuda); see examples/jetson/README.md."
)


class CudaError(DpSimsError, RuntimeError):
    """A CUDA call failed; the message has the error code and name (e.g. 2 cudaErrorMemoryAllocation)."""


@dataclass(frozen=True)
class GpuInfo:
    """The identity of the GPU an engine is built for (engines are tied to it)."""

    name: str
    compute_capability: str  # "8.7"


class CudaApi(ABC):
    """The few CUDA calls the TensorRT backend makes: one device, one stream, raw pointers."""

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


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


class CudaPythonApi(CudaApi):
    """NVIDIA's cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6): the CUDA runtime API."""

    def __init__(self, device_index: int = 0, cudart: Any = None):
        self.rt = cudart or _import_cudart()
        self.name = "cuda-python"
        self.index = device_index
        self._hosts: set[int] = set()  # cudaMallocHost pointers not yet freed
        err, count = self.rt.cudaGetDeviceCount()
        if err != self.rt.cudaError_t.cudaSuccess:  # the driver's own reason (35: bindings newer than the driver)
            hint = DRIVER_HINT if int(err) == INSUFFICIENT_DRIVER else NO_GPU_HINT
            raise BackendUnavailable(f"CUDA cannot start: cudaGetDeviceCount failed with {self.describe(err)}. {hint}")
        if not count:
            raise BackendUnavailable(f"No CUDA GPU is visible (the driver reports 0 devices). {NO_GPU_HINT}")
        if not 0 <= device_index < count:
            raise InputError(f"cuda:{device_index} was asked for; this machine has {count} CUDA device(s).")
        self._check(self.rt.cudaSetDevice(device_index), "cudaSetDevice")

    def describe(self, err: Any) -> str:
        """``35 cudaErrorInsufficientDriver (CUDA driver version is insufficient for CUDA runtime version)``."""
        name = self._text(self.rt.cudaGetErrorName(err))
        text = self._text(self.rt.cudaGetErrorString(err))
        return f"error {int(err)} {name} ({text})"

    @staticmethod
    def _text(result: tuple) -> str:
        _, text = result  # (cudaError_t.cudaSuccess, bytes)
        return text.decode(errors="replace") if isinstance(text, bytes) else str(text)

    def _check(self, result: tuple, call: str) -> Any:
        err, *values = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{call} failed: CUDA {self.describe(err)}.")
        return values[0] if len(values) == 1 else values

    def device_info(self) -> GpuInfo:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.index), "cudaGetDeviceProperties")
        name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(name=name, compute_capability=f"{prop.major}.{prop.minor}")

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._check(self.rt.cudaSetDevice(self.index), "cudaSetDevice")  # the current device is per thread
        yield

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def host_buffer(self, nbytes: int) -> np.ndarray:
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._hosts.add(ptr)
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def free_host(self, buffer: np.ndarray) -> None:
        ptr = int(buffer.ctypes.data)
        if ptr not in self._hosts:
            raise InputError("free_host takes a buffer that host_buffer returned (and not a view of it).")
        self._hosts.discard(ptr)
        self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def stream_create(self) -> Any:
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync")

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


class PyCudaApi(CudaApi):
    """pycuda on the device's primary context (the one TensorRT's runtime API uses), pushed per call."""

    def __init__(self, device_index: int = 0, driver: Any = None):
        if driver is None:
            import pycuda.driver as driver
        cuda = driver
        self.cuda = cuda
        self.name = "pycuda"
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as e:  # e.g. "cuInit failed: CUDA driver version is insufficient"
            raise BackendUnavailable(f"CUDA cannot start: {e}. {NO_GPU_HINT}") from None
        if count == 0:
            raise BackendUnavailable(f"No CUDA GPU is visible (the driver reports 0 devices). {NO_GPU_HINT}")
        if not 0 <= device_index < count:
            raise InputError(f"cuda:{device_index} was asked for; this machine has {count} CUDA device(s).")
        self.device = cuda.Device(device_index)
        self._allocations: dict[int, Any] = {}
        self.context = self.device.retain_primary_context()  # made current by activate()

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
        "or pycuda (on Jetson: the cuda-python of the JetPack's CUDA, see examples/jetson/README.md)."
    )
