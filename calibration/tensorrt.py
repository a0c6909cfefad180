"""TensorRT's implicit INT8 calibration (an ``IInt8EntropyCalibrator2``), fed from a calibration set's arrays.

This is the legacy path: TensorRT 10.1 deprecated implicit INT8 and TensorRT 11 removed it. dp-sims' default INT8
path for TensorRT is explicit quantization (a Q/DQ ONNX made and quality-checked by ``python -m export``), which
every TensorRT version builds the same way. Use this calibrator to build INT8 from an FP32 ONNX on TensorRT <= 10,
e.g. to compare with the Q/DQ engine; measure the result either way (image models can come out dark or distorted
after a calibration that "succeeded").

The calibrator class derives from ``tensorrt.IInt8EntropyCalibrator2``, so it is defined when first asked for,
with the ``tensorrt`` module at hand; importing this module needs numpy only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runtimes.spec import INPUT_LABEL, INPUT_NOISE
from runtimes.trt_engine import EngineBuildError, atomic_write_bytes, import_tensorrt


def make_entropy_calibrator(
    labels: np.ndarray,
    noise: np.ndarray,
    *,
    batch_size: int = 8,
    cache_path: str | Path | None = None,
    cuda: Any = None,
    trt: ModuleType | None = None,
) -> Any:
    """An IInt8EntropyCalibrator2 that feeds ``labels`` int32 [N, H, W] and ``noise`` float32 [N, ...] in batches
    (a :class:`calibration.CalibrationSet`'s arrays: ``make_entropy_calibrator(calib.labels, calib.noise)``).

    ``cache_path``: TensorRT's calibration cache, read back when it was made from the same arrays (a sidecar
    ``<cache_path>.json`` holds their sha256) so that a rebuild skips calibration. ``cuda``: a
    :class:`runtimes.backends.tensorrt.CudaApi` (default: cuda-python or pycuda). Pass the result as
    ``calibrator=`` to :func:`runtimes.trt_engine.build_engine`; call ``close()`` after the build.
    """
    trt = trt or import_tensorrt()
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    noise = np.ascontiguousarray(noise, dtype=np.float32)
    if labels.ndim != 3 or len(noise) != len(labels):
        raise ValueError(f"labels must be [N, H, W] with one noise row each; got {labels.shape} and {noise.shape}.")
    if not 1 <= batch_size <= len(labels):
        raise ValueError(f"batch_size must be in 1..{len(labels)} (the number of calibration samples), got {batch_size}.")
    if cuda is None:
        from runtimes.backends.tensorrt import open_cuda

        cuda = open_cuda()
    return _calibrator_class(trt)(labels, noise, batch_size, Path(cache_path) if cache_path else None, cuda)


def data_digest(labels: np.ndarray, noise: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in (labels, noise):
        h.update(str((array.dtype.str, array.shape)).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


@functools.cache
def _calibrator_class(trt: ModuleType) -> type:
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibrators (removed in TensorRT 11). Build INT8 from the "
            "Q/DQ ONNX that `python -m export --target tensorrt --precision int8` writes."
        )

    class EntropyCalibrator(base):
        """Batches of the calibration arrays, copied to the GPU when TensorRT asks for them."""

        def __init__(self, labels: np.ndarray, noise: np.ndarray, batch_size: int, cache_path: Path | None, cuda: Any):
            base.__init__(self)  # TensorRT's pybind base must be initialised explicitly
            self.arrays = {INPUT_LABEL: labels, INPUT_NOISE: noise}
            self.batch_size = batch_size
            self.cache_path = cache_path
            self.digest = data_digest(labels, noise)
            self.cuda = cuda
            self.batches_fed = 0
            self._next = 0
            self._stream = cuda.stream_create()
            self._device = {name: cuda.malloc(a[:batch_size].nbytes) for name, a in self.arrays.items()}

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            start, stop = self._next, self._next + self.batch_size
            if stop > len(self.arrays[INPUT_LABEL]):  # only whole batches: the profile's batch is fixed
                return None
            with self.cuda.activate():
                for name in names:
                    chunk = np.ascontiguousarray(self.arrays[name][start:stop])
                    self.cuda.copy_htod_async(self._device[name], chunk, self._stream)
                self.cuda.synchronize(self._stream)  # TensorRT reads the buffers as soon as we return
            self._next = stop
            self.batches_fed += 1
            return [self._device[name] for name in names]

        def read_calibration_cache(self) -> bytes | None:
            if self.cache_path is None or not self.cache_path.is_file():
                return None
            meta_path = self.cache_path.with_name(self.cache_path.name + ".json")
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                return None
            if meta.get("data_sha256") != self.digest or meta.get("tensorrt") != trt.__version__:
                return None  # made from other data or by another TensorRT: calibrate again
            return self.cache_path.read_bytes()

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache_path is None:
                return
            atomic_write_bytes(self.cache_path, bytes(cache))
            meta = {"data_sha256": self.digest, "tensorrt": trt.__version__, "batch_size": self.batch_size}
            atomic_write_bytes(self.cache_path.with_name(self.cache_path.name + ".json"), json.dumps(meta).encode())

        def close(self) -> None:
            """Free the device buffers (after the build)."""
            with self.cuda.activate():
                for ptr in self._device.values():
                    self.cuda.free(ptr)
                self._device.clear()
                if self._stream is not None:
                    self.cuda.stream_destroy(self._stream)
                    self._stream = None

    return EntropyCalibrator
