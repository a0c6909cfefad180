"""Colourised label maps and PNG grids (numpy + pillow), e.g. the training loop's sample grids:
``save_grid([[colorize(label, palette), image_seed0, image_seed1, image_seed2], ...], path)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dpsims.errors import InputError


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Integer ids [..., H, W] -> uint8 RGB [..., H, W, 3] using ``palette[id]``."""
    label = np.asarray(label)
    table = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if not np.issubdtype(label.dtype, np.integer):
        raise InputError(f"label must hold integer ids, got {label.dtype}.")
    if label.size and (label.min() < 0 or label.max() >= len(table)):
        raise InputError(f"label ids {label.min()}..{label.max()} do not fit a palette of {len(table)} colours.")
    return table[label]


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile uint8 HxWx3 images row by row (rows may differ in length, images in size) into one uint8 image."""
    from runtimes.imaging import tile_rows

    if not rows or not any(len(r) for r in rows):
        raise InputError("make_grid needs at least one image.")
    return tile_rows([[_rgb(img) for img in row] for row in rows], pad=pad, border=pad, background=background)


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, pad: int = 2) -> Path:
    """Write :func:`make_grid` as a PNG, atomically (a temporary file in the same folder, then a rename)."""
    from PIL import Image

    from dpsims.files import atomic_path

    path = Path(path)
    grid = make_grid(rows, pad=pad)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    return path


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise InputError(f"grid images must be uint8, got {img.dtype} (convert with train.metrics.to_uint8_nhwc).")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise InputError(f"grid images must be [H, W, 3] (or [H, W] grey), got {img.shape}.")
    return img
