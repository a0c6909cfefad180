"""Datasets: the procedural synthetic scenes (the built-in default) and the ADE20K, COCO-Stuff, Cityscapes and
folder layouts, all yielding ``(image float32 [3, H, W] in [-1, 1], label int64 [H, W])`` in the model's
contiguous class numbering.

Built-in scenes (no files): ``synthetic``, procedural textures (:mod:`train.data.synthetic`), and
``synthetic-photo``, the same layouts painted with textures cut from photographs (:mod:`train.data.photo`).

Modules: ``synthetic`` (scenes + fixed classifier, numpy), ``photo`` (photographic textures + fitted
classifier, numpy and scikit-image's photographs), ``catalog`` (class lists, ``classes/*.json``),
``sources`` (folder layouts and label reading), ``transforms`` (resize/crop/flip), ``visualize`` (colourised
labels, PNG grids), ``datasets`` (the torch Datasets; torch is imported only by :func:`build_dataset`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dpsims.errors import DataError
from train.data.synthetic import SyntheticScenes

if TYPE_CHECKING:
    from train.config import DataConfig
    from train.data.datasets import LabeledImages

__all__ = ["BUILTIN_SCENES", "DATASETS", "SyntheticScenes", "build_dataset", "scenes_of", "synthetic_seed"]

DATASETS = ("synthetic", "synthetic-photo", "ade20k", "coco-stuff", "cityscapes", "folder")
#: the datasets drawn by the package itself (no files), each with a classifier for label consistency
BUILTIN_SCENES = ("synthetic", "synthetic-photo")


def scenes_of(dataset: str, num_classes: int, size: tuple[int, int], seed: int) -> SyntheticScenes:
    """The scenes of a built-in dataset (:data:`BUILTIN_SCENES`): :class:`SyntheticScenes` or
    :class:`train.data.photo.PhotoScenes` (which needs the ``[photo]`` extra)."""
    if dataset == "synthetic":
        return SyntheticScenes(num_classes, size, seed)
    if dataset == "synthetic-photo":
        from train.data.photo import PhotoScenes

        return PhotoScenes(num_classes, size, seed)
    raise DataError(f"{dataset!r} is not a built-in dataset; those are {', '.join(BUILTIN_SCENES)}.")


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
    if cfg.dataset in BUILTIN_SCENES:
        try:
            scenes = scenes_of(cfg.dataset, cfg.num_classes, size, synthetic_seed(cfg.seed, split))
        except ValueError as e:
            raise DataError(f"data: {e}") from None
        return SyntheticDataset(scenes, cfg.synthetic_length if split == "train" else cfg.val_length, cfg.dataset)

    from train.data.sources import open_source
    from train.data.transforms import PairTransform

    load = (int(cfg.load_size[0]), int(cfg.load_size[1])) if cfg.load_size else None
    if load is not None and (load[0] < size[0] or load[1] < size[1]):
        raise DataError(f"data.load_size {list(load)} must be at least data.image_size {list(size)} in each dimension.")
    source = open_source(cfg.dataset, cfg.root, split, cfg.classes_file)
    return FolderDataset(source, PairTransform(size, load, train=split == "train", flip=cfg.flip))
