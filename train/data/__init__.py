"""Datasets: the procedural synthetic scenes (the built-in default) and the ADE20K, COCO-Stuff, Cityscapes and
folder layouts, all yielding ``(image float32 [3, H, W] in [-1, 1], label int64 [H, W])`` in the model's
contiguous class numbering.

Modules: ``synthetic`` (scenes + fixed classifier, numpy), ``catalog`` (class lists, ``classes/*.json``),
``sources`` (folder layouts and label reading), ``transforms`` (resize/crop/flip), ``visualize`` (colourised
labels, PNG grids), ``datasets`` (the torch Datasets; torch is imported only by :func:`build_dataset`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from train.data.synthetic import SyntheticScenes
from train.errors import DataError

if TYPE_CHECKING:
    from train.config import DataConfig
    from train.data.datasets import LabeledImages

__all__ = ["DATASETS", "SyntheticScenes", "build_dataset", "synthetic_seed"]

DATASETS = ("synthetic", "ade20k", "coco-stuff", "cityscapes", "folder")


def synthetic_seed(seed: int, split: str) -> int:
    """The scene seed of a split: ``seed`` itself for train, a value derived from it for the held-out val maps."""
    if split == "train":
        return seed
    return int(np.random.SeedSequence([seed, 0x76616C]).generate_state(1)[0])  # "val"


def build_dataset(cfg: DataConfig, split: str = "train") -> LabeledImages:
    """The torch Dataset of ``split`` ('train' or 'val') described by ``cfg``.

    It exposes ``name``, ``num_classes``, ``class_names``, ``palette`` (RGB lists), ``ignore_id`` (model id or
    None); the synthetic one also ``scenes`` (:class:`SyntheticScenes`, for :func:`train.metrics.label_consistency`).
    synthetic: ``synthetic_length`` (train) or ``val_length`` (val) scenes of ``num_classes`` classes at
    ``image_size``. Others: the files under ``root`` (see :mod:`train.data.sources`), resized to ``load_size`` or
    ``image_size``, randomly cropped and flipped for train, centre-cropped for val."""
    from train.data.datasets import FolderDataset, SyntheticDataset

    if split not in ("train", "val"):
        raise DataError(f"Unknown split {split!r}; use 'train' or 'val'.")
    if cfg.dataset not in DATASETS:
        raise DataError(f"Unknown dataset {cfg.dataset!r}; known: {', '.join(DATASETS)}.")
    size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    if cfg.dataset == "synthetic":
        scenes = SyntheticScenes(cfg.num_classes, size, synthetic_seed(cfg.seed, split))
        return SyntheticDataset(scenes, cfg.synthetic_length if split == "train" else cfg.val_length)

    from train.data.sources import open_source
    from train.data.transforms import PairTransform

    load = (int(cfg.load_size[0]), int(cfg.load_size[1])) if cfg.load_size else None
    if load is not None and (load[0] < size[0] or load[1] < size[1]):
        raise DataError(f"data.load_size {list(load)} must be at least data.image_size {list(size)} in each dimension.")
    source = open_source(cfg.dataset, cfg.root, split, cfg.classes_file)
    return FolderDataset(source, PairTransform(size, load, train=split == "train", flip=cfg.flip))
