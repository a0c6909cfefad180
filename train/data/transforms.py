"""The one transform step of every file-based dataset: resize, crop, flip, applied identically to image and label.

1. Resize the image (bilinear; antialiased when shrinking, as pillow does) and the label (nearest neighbour,
   ids are never blended) to ``load_size`` if given, else straight to ``image_size``.
2. Crop ``image_size``: at a random offset for training, centred for validation.
3. Flip horizontally with probability 0.5 (training with ``flip`` only).

Crop offset and flip come from one draw (:func:`sample_params`) applied to both arrays (:func:`apply_params`),
so image and label can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpsims.errors import DataError


@dataclass(frozen=True)
class PairTransform:
    image_size: tuple[int, int]
    """[H, W] after the transform."""
    load_size: tuple[int, int] | None = None
    """[H, W] to resize to before cropping; None resizes straight to ``image_size``."""
    train: bool = True
    """Random crop and flip (training) or centre crop without flip (validation)."""
    flip: bool = True

    def __post_init__(self) -> None:
        h, w = self.image_size
        if self.load_size is not None and (self.load_size[0] < h or self.load_size[1] < w):
            raise DataError(f"load_size {list(self.load_size)} must be at least image_size {[h, w]} in each dimension.")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [H, W, 3] and int [H, W] of the same size -> the transformed pair."""
        if image.shape[:2] != label.shape:
            raise DataError(f"image {image.shape[:2]} and label {label.shape} sizes differ.")
        size = self.load_size or self.image_size
        image, label = resize_image(image, size), resize_label(label, size)
        top, left, flip = sample_params(rng, size, self.image_size, self.train, self.flip and self.train)
        return apply_params(image, top, left, self.image_size, flip), apply_params(label, top, left, self.image_size, flip)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> [h, w, 3], bilinear (pillow widens the filter when shrinking: antialiased)."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map [H, W] -> [h, w] (pixel centres map to source pixel centres)."""
    h, w = size
    src_h, src_w = label.shape
    if (src_h, src_w) == (h, w):
        return label
    rows = np.minimum(((np.arange(h) + 0.5) * src_h / h).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * src_w / w).astype(np.int64), src_w - 1)
    return label[rows[:, None], cols[None, :]]


def sample_params(
    rng: np.random.Generator, src: tuple[int, int], out: tuple[int, int], random_crop: bool, flip: bool
) -> tuple[int, int, bool]:
    """(top, left, flip) for cropping ``out`` from ``src``: one draw shared by image and label."""
    spare_h, spare_w = src[0] - out[0], src[1] - out[1]
    if random_crop:
        top, left = int(rng.integers(spare_h + 1)), int(rng.integers(spare_w + 1))
    else:
        top, left = spare_h // 2, spare_w // 2
    return top, left, bool(flip and rng.random() < 0.5)


def apply_params(array: np.ndarray, top: int, left: int, size: tuple[int, int], flip: bool) -> np.ndarray:
    """Crop [top:top+h, left:left+w] of an [H, W, ...] array, then mirror it left-right if ``flip``."""
    out = array[top : top + size[0], left : left + size[1]]
    return np.ascontiguousarray(out[:, ::-1] if flip else out)
