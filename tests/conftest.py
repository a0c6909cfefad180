"""Shared fixtures: small and generic (ask the lead before adding to this file)."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.synthetic import SyntheticScenes


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, fixed-seed numpy generator."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def scenes() -> SyntheticScenes:
    """The default synthetic scenes: 8 classes, 64x64, seed 0 (what the synthetic-tiny preset trains on)."""
    return SyntheticScenes(num_classes=8, size=(64, 64), seed=0)


@pytest.fixture(scope="session")
def scene_batch(scenes: SyntheticScenes) -> tuple[np.ndarray, np.ndarray]:
    """64 rendered scenes of ``scenes``: (images uint8 [64, 64, 64, 3], labels int64 [64, 64, 64])."""
    pairs = [scenes.render(i) for i in range(64)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
