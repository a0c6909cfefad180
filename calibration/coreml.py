"""Calibration data in the two forms coremltools takes, made from a calibration set's arrays.

- :func:`sample_data`: a list of ``{"label": int32 [1, H, W], "noise": float32 [1, T, D]}`` dicts, one per
  sample -- the ``sample_data`` of ``coremltools.optimize.coreml.experimental.linear_quantize_activations``,
  which calibrates a converted model by running it, so it works on macOS only.
- :func:`torch_batches`: ``(label, noise)`` tensor batches to run through a torch model prepared by
  ``coremltools.optimize.torch`` (its observers record the activation ranges); this works anywhere and is what
  ``python -m export --target coreml --precision w8a8`` uses.

Both take the arrays of a :class:`calibration.CalibrationSet` (``labels`` int32 [N, H, W], ``noise`` float32
[N, T, D]); importing this module needs numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from runtimes.spec import INPUT_LABEL, INPUT_NOISE

if TYPE_CHECKING:
    import torch


def checked_arrays(labels: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` as int32 [N, H, W] and ``noise`` as float32 [N, ...] with one noise row per label map."""
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    noise = np.ascontiguousarray(noise, dtype=np.float32)
    if labels.ndim != 3 or noise.ndim < 2 or len(noise) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"Calibration data must be labels [N, H, W] with one noise row each (N >= 1); got labels "
            f"{labels.shape} and noise {noise.shape}."
        )
    return labels, noise


def sample_data(labels: np.ndarray, noise: np.ndarray, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """One ``{"label": [1, H, W], "noise": [1, ...]}`` dict per sample (the first ``limit`` samples if given)."""
    labels, noise = checked_arrays(labels, noise)
    n = len(labels) if limit is None else min(limit, len(labels))
    return [{INPUT_LABEL: labels[i : i + 1], INPUT_NOISE: noise[i : i + 1]} for i in range(n)]


def torch_batches(
    labels: np.ndarray, noise: np.ndarray, batch_size: int = 8
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(label int32, noise float32)`` CPU tensor batches in order, the last one possibly smaller."""
    import torch

    labels, noise = checked_arrays(labels, noise)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    for start in range(0, len(labels), batch_size):
        stop = start + batch_size
        yield torch.from_numpy(labels[start:stop]), torch.from_numpy(noise[start:stop])
