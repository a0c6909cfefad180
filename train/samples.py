"""Things the loop does with the EMA generator on held-out maps: sample grids and the label-consistency score.

Both run the generator through a :class:`runtimes.predictor.Predictor` (:func:`train.predictor.generator_predictor`)
with ``seed=s``: map ``i`` of the held-out batch gets the noise of seed ``s + i`` (:mod:`runtimes.noise`), so a
cell of a sample grid is the image ``load_predictor(artifact).generate(map_i, seed=s + i)`` gives for the export
of that generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.predictor import Predictor
from train.config import EvalConfig


def held_out_labels(dataset, count: int) -> np.ndarray:
    """The label maps of the first ``count`` items of ``dataset`` (int64 [N, H, W])."""
    return np.stack([np.asarray(dataset[i][1], dtype=np.int64) for i in range(min(count, len(dataset)))])


def label_consistency_of_generator(predictor: Predictor, val_set, samples: int, seed: int = 1234) -> float | None:
    """mIoU of the dataset's fixed classifier on generated images vs the input maps (synthetic data only)."""
    scenes = getattr(val_set, "scenes", None)
    if scenes is None:
        return None
    from train.metrics import label_consistency

    labels = held_out_labels(val_set, samples)
    return float(label_consistency(predictor.generate(labels, seed=seed), labels, scenes))


def write_sample_grid(predictor: Predictor, val_set, path: Path, cfg: EvalConfig) -> Path:
    """PNG grid, one row per held-out map: colourised label | generated with each of cfg.sample_seeds (row ``i``,
    column of seed ``s``: the predictor's image of map ``i`` with seed ``s + i``)."""
    from train.data.visualize import colorize, save_grid

    labels = held_out_labels(val_set, cfg.sample_maps)
    columns = [predictor.generate(labels, seed=s) for s in cfg.sample_seeds]
    rows = [[colorize(labels[i], val_set.palette)] + [c[i] for c in columns] for i in range(len(labels))]
    save_grid(rows, path)
    return path
