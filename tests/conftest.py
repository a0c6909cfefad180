"""Shared fixtures: small and generic (ask the lead before adding to this file)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from train.data.synthetic import SyntheticScenes

ROOT = Path(__file__).resolve().parent.parent
# Folders the README's commands write in the checkout (scripts/demo.sh: runs/, artifacts/, outputs/). Tests never
# read or write them: each test runs in its own empty working folder, and a test that adds an entry to one of them
# fails. Subprocesses started from that folder find the checkout's packages through PYTHONPATH.
CHECKOUT_OUTPUTS = ("runs", "artifacts", "outputs")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _share_the_cores() -> None:
    """Under pytest-xdist (scripts/test.sh runs ``-n auto``), each worker takes its share of the cores for torch's
    and OpenMP's threads instead of all of them, so that N workers do not run N times the cores' threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        import torch

        torch.set_num_threads(share)


_share_the_cores()


def _checkout_outputs() -> set[str]:
    return {f"{top}/{entry.name}" if entry else top
            for top in CHECKOUT_OUTPUTS if (ROOT / top).is_dir()
            for entry in [None, *(ROOT / top).iterdir()]}


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Run every test in a fresh empty working folder; fail it if it added to the checkout's runs/, artifacts/ or
    outputs/ (a relative default path such as ``python -m train``'s runs/NAME would otherwise land there)."""
    before = _checkout_outputs()
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    added = _checkout_outputs() - before
    assert not added, f"the test wrote into the checkout: {sorted(added)}; write under tmp_path instead"


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
