"""A calibration set in the form each quantizer takes. Each function imports its library when called.

- :func:`nncf_dataset`: ``nncf.Dataset`` of input dicts (OpenVINO models, ``nncf.quantize``);
- :func:`ort_reader`: an ONNX Runtime ``CalibrationDataReader`` (``quantize_static``);
- :func:`modelopt_arrays`: the ``calibration_data`` dict NVIDIA ModelOpt's ONNX PTQ takes;
- coremltools ``sample_data`` and W8A8 calibration in torch: :mod:`calibration.coreml`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calibration.sets import CalibrationSet
from dpsims.optional import require
from runtimes.spec import INPUT_LABEL, INPUT_NOISE


def nncf_dataset(data: CalibrationSet, batch_size: int = 1) -> Any:
    nncf = require("nncf", "openvino", "nncf")
    return nncf.Dataset(list(data.batches(batch_size)))


def ort_reader(data: CalibrationSet, batch_size: int = 1) -> Any:
    """A fresh ``CalibrationDataReader`` over ``data`` (rewindable: ONNX Runtime may read it more than once)."""
    quantization = require("onnxruntime.quantization", "onnx", "onnxruntime")

    from dpsims.progress import bar

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = list(data.batches(batch_size))
            self._next = 0
            self._bar = None

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next == 0 and self._bar is None:
                self._bar = bar("calibration (ONNX Runtime)", total=len(self._batches), unit="batch")
            if self._next >= len(self._batches):
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
                return None
            self._next += 1
            self._bar.update()
            return self._batches[self._next - 1]

        def rewind(self) -> None:
            self._next = 0

        def __len__(self) -> int:
            return len(self._batches)

    return Reader()


def modelopt_arrays(data: CalibrationSet) -> dict[str, np.ndarray]:
    """``{"label": int32 [S, H, W], "noise": float32 [S, ...]}`` for ``modelopt.onnx.quantization.quantize``."""
    return {INPUT_LABEL: data.labels, INPUT_NOISE: data.noise}
