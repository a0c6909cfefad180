"""Label-map and image IO for the predictor: numpy always, pillow only when a file or PIL image is involved.

The graph's float output becomes uint8 pixels here too (:func:`to_uint8`), so the predictor, training's samples and
metrics and the evaluation convert images one way without importing each other.

Label maps arrive as palette PNGs (mode ``P``: the palette indices are the class ids, as ADE20K, VOC and
Cityscapes store them), grey PNGs (mode ``L``/``I``: the values are the ids), colour-coded PNGs (mode ``RGB``:
each colour is a class colour of the artifact's palette) or ``.npy`` arrays.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import InputError
from dpsims.optional import require

PILLOW_EXTRA = "runtime"
_ID_MODES = ("P", "L", "I", "1", "F", "I;16", "I;16L", "I;16B", "I;16N")  # "F" is read, then refused as float


def _pil_image_module() -> Any:
    return require("PIL.Image", PILLOW_EXTRA, what="pillow (needed to read and write PNG files)")


def is_pil_image(obj: Any) -> bool:
    """True for a PIL image, without importing pillow (an image exists only if pillow was imported already)."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(obj, module.Image)


def pil_to_array(image: Any) -> tuple[np.ndarray, bool]:
    """``(array, is_rgb)``: class ids [H, W] for P/L/I images, colours [H, W, 3] for RGB(A) images."""
    if image.mode in _ID_MODES:
        array = np.asarray(image)
        return (array.astype(np.uint8) if array.dtype == bool else array), False
    if image.mode in ("RGB", "RGBA"):
        return np.asarray(image)[..., :3], True
    raise InputError(
        f"A label image must have mode P (palette indices), L or I (class ids) or RGB (class colours); "
        f"got mode {image.mode!r}. Convert it first, e.g. image.convert('RGB') for colour-coded maps."
    )


def read_label_file(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read a label map file: ``.npy`` (class ids, never unpickled) or any image pillow reads (see pil_to_array)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give one label map file (.png or .npy).")
    if not path.is_file():
        raise InputError(f"No label map file at {path}.")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False), False
        except ValueError as e:
            raise InputError(f"{path} is not a plain numpy array file ({e}).") from None
    pil = _pil_image_module()
    try:
        with pil.open(path) as image:
            image.load()
            return pil_to_array(image)
    except (pil.UnidentifiedImageError, OSError) as e:
        raise InputError(f"Cannot read {path} as an image ({e}). Give a PNG label map or a .npy array.") from None


IGNORE_COLOR = (0, 0, 0)
"""Colour of ignored pixels in colourised maps (when no class has it)."""


def colors_to_ids(rgb: np.ndarray, palette: np.ndarray, ignore_id: int | None = None) -> np.ndarray:
    """Map an [..., 3] colour image to class ids through ``palette`` [C, 3] (exact colours only). With an
    ``ignore_id``, pixels of IGNORE_COLOR map to it unless a class has that colour."""
    rgb = np.asarray(rgb)
    if rgb.ndim < 2 or rgb.shape[-1] != 3 or not np.issubdtype(rgb.dtype, np.integer):
        raise InputError(f"A colour-coded label map must be an integer [H, W, 3] array, got {rgb.dtype} {rgb.shape}.")
    if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise InputError("A colour-coded label map must hold colours in 0..255.")
    palette_keys = _color_keys(palette)
    if np.unique(palette_keys).size != palette_keys.size:
        raise InputError("The artifact's palette gives two classes the same colour, so RGB label maps are ambiguous; "
                         "give class ids (a palette-mode PNG or an integer array) instead.")
    ids = np.arange(len(palette_keys))
    ignore_key = _color_keys(np.array(IGNORE_COLOR))
    if ignore_id is not None and ignore_key not in palette_keys:
        palette_keys, ids = np.append(palette_keys, ignore_key), np.append(ids, ignore_id)
    keys = _color_keys(rgb)
    order = np.argsort(palette_keys, kind="stable")
    sorted_keys = palette_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    unknown = sorted_keys[pos] != keys
    if unknown.any():
        where = tuple(int(i) for i in np.argwhere(unknown)[0])
        color = [int(v) for v in rgb[where]]
        raise InputError(
            f"The label map holds the colour {color} at {where} ({int(unknown.sum())} such pixels), which is not a class "
            "colour of this artifact (see predictor.classes). Anti-aliased or resized colour maps lose exact colours: "
            "draw them without smoothing or give class ids."
        )
    return ids[order[pos]].astype(np.int32)


def _color_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [..., H, W] class ids to ``size`` (pixel centres, as pillow's NEAREST)."""
    h, w = labels.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [N, H, W, 3] uint8 images into one image, ``columns`` per row (default: all in one row)."""
    columns = columns or len(images)
    return tile_rows([images[i : i + columns] for i in range(0, len(images), columns)], pad=pad)


def tile_rows(rows, pad: int = 2, border: int = 0, background: int = 255) -> np.ndarray:
    """Tile rows of uint8 [H, W, 3] images (rows may differ in length, images in size: each sits at the top left
    of a cell as large as the largest) into one image, ``pad`` pixels between cells and ``border`` around."""
    cells = [list(row) for row in rows]
    if not any(cells):
        raise InputError("a grid needs at least one image.")
    cell_h = max(img.shape[0] for row in cells for img in row)
    cell_w = max(img.shape[1] for row in cells for img in row)
    ncols = max(len(row) for row in cells)
    grid = np.full((2 * border - pad + len(cells) * (cell_h + pad), 2 * border - pad + ncols * (cell_w + pad), 3),
                   background, np.uint8)
    for i, row in enumerate(cells):
        for j, img in enumerate(row):
            y, x = border + i * (cell_h + pad), border + j * (cell_w + pad)
            grid[y : y + img.shape[0], x : x + img.shape[1]] = img
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an [H, W, 3] uint8 image as a PNG (needs pillow) and return its path."""
    pil = _pil_image_module()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise InputError(f"save_png writes [H, W, 3] uint8 images, got {image.dtype} {image.shape}.")
    path = Path(path)
    pil.fromarray(image).save(path, format="PNG")
    return path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1], channels first ([3, H, W] or [N, 3, H, W]) -> uint8 channels last (round, clip)."""
    if not np.isfinite(images).all():
        warnings.warn("The model produced NaN or infinite pixels; they are written as mid-grey.", RuntimeWarning, stacklevel=3)
        images = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=-1.0)
    pixels = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(pixels, -3, -1))


def pixel_diversity(images_by_seed: list[np.ndarray]) -> float:
    """How different the images of several seeds are (``train.evaluate``'s pixel_diversity, and ``python -m
    runtimes generate --n``'s): the mean absolute difference, in [0, 1] units, between the images of every pair of
    seeds (same label maps), averaged over pairs, maps and pixels; NaN for a single seed. Images: uint8
    [N, H, W, 3] per seed."""
    acc = PixelDiversity(len(images_by_seed))
    acc.add(images_by_seed)
    return acc.value()


class PixelDiversity:
    """:func:`pixel_diversity` summed chunk by chunk (``add`` the images of each seed for the same maps)."""

    def __init__(self, seeds: int):
        self.seeds = seeds
        self.sums = np.zeros((seeds, seeds), dtype=np.float64)  # exact: integer sums below 2**53
        self.values = 0

    def add(self, images_by_seed: list[np.ndarray]) -> None:
        if len(images_by_seed) != self.seeds:
            raise InputError(f"expected the images of {self.seeds} seeds, got {len(images_by_seed)}.")
        for a in range(self.seeds):
            for b in range(a + 1, self.seeds):
                diff = np.abs(images_by_seed[a].astype(np.int16) - images_by_seed[b].astype(np.int16))
                self.sums[a, b] += float(diff.sum(dtype=np.int64))
        self.values += images_by_seed[0].size if self.seeds else 0

    def value(self) -> float:
        if self.seeds < 2 or not self.values:
            return float("nan")
        pairs = [self.sums[a, b] / self.values / 255.0 for a in range(self.seeds) for b in range(a + 1, self.seeds)]
        return float(np.mean(pairs))


def psnr(reference: np.ndarray, candidate: np.ndarray, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of ``candidate`` against ``reference`` (images in [-1, 1]: peak-to-peak 2); inf when equal. The
    one definition the export's quality check, the benchmarks and distillation's student-vs-teacher fidelity use."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(candidate, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak_to_peak**2 / mse)
