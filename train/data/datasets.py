"""torch Datasets over the synthetic scenes and over dataset folders. Items are
``(image float32 [3, H, W] in [-1, 1], label int64 [H, W])``; build them with :func:`train.data.build_dataset`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from dpsims.errors import DataError
from train.data.sources import Source
from train.data.synthetic import SyntheticScenes
from train.data.transforms import PairTransform


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H, W, 3] + int [H, W] -> float32 [3, H, W] in [-1, 1] + int64 [H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    return x.contiguous(), torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


class LabeledImages(Dataset):
    """What every dataset exposes besides its items."""

    name: str
    class_names: list[str]
    palette: list[list[int]]
    ignore_id: int | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, items={len(self)}, num_classes={self.num_classes})"


class SyntheticDataset(LabeledImages):
    """``length`` procedural scenes rendered on the fly at the scenes' size (no augmentation: data is unlimited,
    and the classifier that scores label consistency expects the textures in their painted orientation)."""

    def __init__(self, scenes: SyntheticScenes, length: int, name: str = "synthetic"):
        if length < 1:
            raise DataError(f"length must be >= 1, got {length}.")
        self.scenes = scenes
        self.length = length
        self.name = name
        self.class_names = list(scenes.class_names)
        self.palette = [list(c) for c in scenes.palette]
        self.ignore_id = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes.")
        return to_tensors(*self.scenes.render(index))


class FolderDataset(LabeledImages):
    """Pairs read from a dataset folder (:mod:`train.data.sources`) and transformed (:class:`PairTransform`).

    The crop/flip randomness comes from one draw of torch's generator per item, so it follows
    ``torch.manual_seed`` and differs between DataLoader workers (each has its own torch seed)."""

    def __init__(self, source: Source, transform: PairTransform):
        self.source = source
        self.transform = transform
        self.name = source.name
        self.class_names = list(source.classes.names)
        self.palette = [list(c) for c in source.classes.palette]
        self.ignore_id = source.classes.ignore_id

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self.source):
            raise IndexError(f"index {index} out of range for {len(self.source)} items.")
        image, label = self.source.read(index)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return to_tensors(*self.transform(image, label, rng))
