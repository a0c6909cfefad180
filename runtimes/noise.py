"""The noise of a seed, drawn in one place: every path that turns (label maps, seed) into images calls this module.

Image ``i`` of a batch uses ``numpy.random.default_rng(seed_i).standard_normal((1, *noise_shape), dtype=float32)``,
on the host, one generator per image. A single int ``seed`` for N maps means seeds ``seed, seed + 1, ...,
seed + N - 1``, so map ``i`` alone with ``seed + i`` gives the same image as in the batch, and the same seed gives
the same image on every backend (within its precision). The predictor (local and remote), training's sample grids
and label consistency, ``train.evaluate``, the calibration sets and the benchmarks draw their noise here, so seed
``s`` of a map is one image wherever it is generated. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dpsims.errors import InputError

Seed = int | Sequence[int] | None


def seed_list(seed: Seed, n: int) -> list[int]:
    """The ``n`` per-image seeds that ``seed`` stands for: an int gives ``seed .. seed + n - 1``; a sequence (or
    array) gives its own ``n`` seeds; None gives ``n`` consecutive seeds from a fresh random start. InputError for
    negative or non-integer seeds and for a sequence of another length."""
    if seed is None:
        seed = int(np.random.default_rng().integers(2**63 - n))
    if _is_int(seed):
        if seed < 0:
            raise InputError(f"A seed must be a non-negative integer, got {seed}.")
        return [int(seed) + i for i in range(n)]
    if isinstance(seed, (list, tuple, range, np.ndarray)):
        seeds = list(np.asarray(seed).reshape(-1)) if isinstance(seed, np.ndarray) else list(seed)
        if len(seeds) != n or not all(_is_int(s) and s >= 0 for s in seeds):
            raise InputError(f"seed must list {n} non-negative integers (one per map), got {seed!r}.")
        return [int(s) for s in seeds]
    raise InputError(f"seed must be an int, a list of ints (one per map) or None, got {type(seed).__name__}.")


def sample_noise(seeds: Sequence[int], noise_shape: Sequence[int]) -> np.ndarray:
    """Noise for one image per seed: float32 ``(len(seeds), *noise_shape)``, the same on every platform."""
    shape = (1, *(int(v) for v in noise_shape))
    if len(seeds) == 0:
        return np.empty((0, *shape[1:]), dtype=np.float32)
    return np.concatenate([np.random.default_rng(int(s)).standard_normal(shape, dtype=np.float32) for s in seeds])


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
