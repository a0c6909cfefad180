"""One predictor over every backend: validation, noise, batching and conversion to uint8 happen here, once.

>>> from runtimes import load_predictor                       # runtimes/loader.py
>>> with load_predictor("artifacts/ade20k-onnx-fp32") as predictor:
...     image = predictor.generate("label.png", seed=0)          # (H, W, 3) uint8

Noise is sampled on the host by :mod:`runtimes.noise`, one generator per image: image ``i`` of a batch uses
``np.random.default_rng(seed_i).standard_normal((1, *noise_shape), dtype=np.float32)``. A single int ``seed`` for a
batch of N maps means seeds ``seed, seed + 1, ..., seed + N - 1``, so map ``i`` alone with ``seed + i`` gives the
same image as in the batch, and the same seed gives the same image on every backend (within its precision).
Label maps are checked against the artifact's manifest by :func:`prepare_labels`, which needs no backend (a device
script can check its maps before minutes of engine building).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import InputError, ManifestError, PredictorClosed
from runtimes import imaging
from runtimes.backends import BACKENDS
from runtimes.backends.base import Backend
from runtimes.imaging import to_uint8
from runtimes.noise import Seed, sample_noise, seed_list
from runtimes.spec import (
    INPUT_LABEL,
    INPUT_NOISE,
    OUTPUT_IMAGE,
    ClassInfo,
    Manifest,
)

LabelMap = Any  # np.ndarray | PIL.Image.Image | str | os.PathLike | Sequence of those (one per map)


def check_class_ids(labels: np.ndarray, num_classes: int, ignore_id: int | None, what: str = "The label map") -> None:
    """InputError naming the first pixel whose id is neither a class of the artifact nor its ignore id."""
    lo, hi = labels.min(), labels.max()
    if lo >= 0 and hi < num_classes:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_id is not None:
        bad &= labels != ignore_id
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        ignore = f" or the ignore id {ignore_id}" if ignore_id is not None else ""
        raise InputError(
            f"{what} holds the class id {int(labels[where])} at {where} ({int(bad.sum())} such pixels); "
            f"this artifact knows ids 0..{num_classes - 1}{ignore}."
        )


def prepare_labels(
    label_map: LabelMap, manifest: Manifest, resize: bool = False, check_size: bool = True
) -> tuple[np.ndarray, bool]:
    """Validate and convert any accepted label map to int32 (N, H, W) for the artifact ``manifest`` describes; also
    says whether it was a batch. ``label_map``: an integer (H, W) or (N, H, W) array of class ids, a PIL image (mode
    P, L/I or RGB in the artifact's palette colours), a path to a PNG or .npy file, or a list of such maps.
    ``resize``: resize maps of another size to the artifact's input size (nearest); without it (and with
    ``check_size``) another size is an InputError. A path is named in the error for an unknown class id."""
    if isinstance(label_map, (list, tuple)) and label_map and _is_map_object(label_map[0]):
        maps = [_single_map(m, manifest, resize, check_size) for m in label_map]
        if len({m.shape for m in maps}) > 1:
            raise InputError(f"The label maps of a batch differ in size: {sorted({m.shape for m in maps})}.")
        return np.stack(maps), True
    labels = _to_id_array(label_map, manifest)
    batched = labels.ndim == 3
    labels = _validate(labels, manifest, resize, check_size, _what(label_map))
    return (labels if batched else labels[None]), batched


def ids_from_colors(rgb: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Class ids [..., H, W] of a colour-coded map [..., H, W, 3] drawn in the artifact's palette colours (black is
    the ignore id, as :meth:`Predictor.colorize` draws it, when the artifact has one and no class is black)."""
    return imaging.colors_to_ids(rgb, _palette_of(manifest), manifest.ignore_id)


def _palette_of(manifest: Manifest) -> np.ndarray:
    return np.asarray(manifest.palette, dtype=np.uint8).reshape(-1, 3)


def _what(label_map: Any) -> str:
    return str(label_map) if isinstance(label_map, (str, os.PathLike)) else "The label map"


def _single_map(label_map: Any, manifest: Manifest, resize: bool, check_size: bool) -> np.ndarray:
    labels = _to_id_array(label_map, manifest)
    if labels.ndim != 2:
        raise InputError(f"Each map of a list must be one (H, W) map, got shape {labels.shape}.")
    return _validate(labels, manifest, resize, check_size, _what(label_map))


def _to_id_array(label_map: Any, manifest: Manifest) -> np.ndarray:
    if isinstance(label_map, (str, os.PathLike)):
        array, is_rgb = imaging.read_label_file(label_map)
    elif imaging.is_pil_image(label_map):
        array, is_rgb = imaging.pil_to_array(label_map)
    elif isinstance(label_map, (np.ndarray, list, tuple)) or hasattr(label_map, "__array__") or np.isscalar(label_map):
        try:
            array, is_rgb = np.asarray(label_map), False
        except ValueError as e:  # ragged nested lists
            raise InputError(f"The label map is not a rectangular array ({e}).") from None
    else:
        raise InputError(
            f"label_map must be an integer array, a PIL image, a path to a PNG/.npy file or a list of those; "
            f"got {type(label_map).__name__}."
        )
    return ids_from_colors(array, manifest) if is_rgb else array


def _validate(labels: np.ndarray, manifest: Manifest, resize: bool, check_size: bool, what: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"A label map must hold integer class ids, got dtype {labels.dtype}. Floats are refused even when "
            "integral (they usually mean an image or a normalised map); convert with .astype(np.int32)."
        )
    if labels.ndim not in (2, 3):
        raise InputError(f"A label map must be (H, W) or (N, H, W), got {labels.ndim} dimensions {labels.shape}.")
    if labels.size == 0:
        raise InputError(f"The label map is empty (shape {labels.shape}).")
    check_class_ids(labels, manifest.num_classes, manifest.ignore_id, what)
    size = (int(manifest.input_size[0]), int(manifest.input_size[1]))
    if labels.shape[-2:] != size and check_size:
        if not resize:
            raise InputError(
                f"This artifact takes {size[0]}x{size[1]} label maps, got {labels.shape[-2]}x{labels.shape[-1]}. "
                "Pass resize=True (command line: --resize) to resize (nearest) or resize the map yourself."
            )
        labels = imaging.resize_nearest(labels, size)
    return labels.astype(np.int32)


class Predictor:
    """Label maps in, uint8 RGB images out, on whichever backend opened the artifact. Thread-safe; close it
    (or use ``with``) to release the engine."""

    def __init__(self, backend: Backend, manifest: Manifest, artifact_dir: str | os.PathLike | None = None):
        self._backend: Backend | None = backend
        self._manifest = manifest
        self._artifact_dir = Path(artifact_dir) if artifact_dir is not None else backend.artifact_dir
        self._palette = _palette_of(manifest)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- properties
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def classes(self) -> list[ClassInfo]:
        """The artifact's classes (id, name, RGB colour), ordered by id."""
        return sorted(self._manifest.classes, key=lambda c: c.id)

    @property
    def num_classes(self) -> int:
        return self._manifest.num_classes

    @property
    def ignore_id(self) -> int | None:
        return self._manifest.ignore_id

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the label maps the artifact takes (and of the images it returns)."""
        return (int(self._manifest.input_size[0]), int(self._manifest.input_size[1]))

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """Per-image noise shape, without the batch dimension."""
        return tuple(int(v) for v in self._manifest.noise_shape)

    @property
    def target(self) -> str:
        return self._manifest.target

    @property
    def precision(self) -> str:
        return self._manifest.precision

    @property
    def max_batch(self) -> int:
        return self._open_backend().max_batch

    # ----------------------------------------------------------------------------------------- generation
    def generate(self, label_map: LabelMap, seed: Seed = None, noise: np.ndarray | None = None,
                 batch_size: int | None = None, resize: bool = False) -> np.ndarray:
        """Synthesize images for one label map (-> (H, W, 3) uint8) or a batch (-> (N, H, W, 3) uint8).

        label_map: an integer (H, W) or (N, H, W) array of class ids, a PIL image (mode P, L/I or RGB in the
            artifact's palette colours), a path to a PNG or .npy file, or a list of such maps (a batch).
        seed: an int (a batch uses seed, seed+1, ...), one seed per map, or None for fresh random seeds.
        noise: explicit standard-normal noise of shape noise_shape (one map) or (N, *noise_shape); not with seed.
        batch_size: maps per backend call, at most the artifact's max batch (default: that max).
        resize: resize maps of another size to the artifact's input size (nearest); the images come out at the
            artifact's size. Without it a map of another size is an InputError.
        """
        return to_uint8(self.generate_raw(label_map, seed=seed, noise=noise, batch_size=batch_size, resize=resize))

    def generate_raw(self, label_map: LabelMap, seed: Seed = None, noise: np.ndarray | None = None,
                     batch_size: int | None = None, resize: bool = False) -> np.ndarray:
        """As :meth:`generate`, but the model's own output: float32 (3, H, W) or (N, 3, H, W) in [-1, 1]."""
        labels, batched = self.prepare_labels(label_map, resize=resize)
        if noise is not None and seed is not None:
            raise InputError("Give either seed or noise, not both.")
        if noise is None:
            noise = self.sample_noise(seed_list(seed, len(labels)))
        else:
            noise = self._check_noise(noise, len(labels), batched)
        images = self._run(labels, noise, batch_size)
        return images if batched else images[0]

    def generate_variations(
        self, label_map: LabelMap, n: int, seed: int | None = 0, batch_size: int | None = None, resize: bool = False
    ) -> np.ndarray:
        """``n`` images of one label map with seeds ``seed .. seed+n-1`` -> (n, H, W, 3) uint8."""
        labels, _ = self.prepare_labels(label_map, resize=resize)
        if len(labels) != 1:
            raise InputError(f"generate_variations takes one label map, got a batch of {len(labels)}.")
        if not _is_int(n) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}.")
        seeds = seed_list(seed, n)
        return to_uint8(self._run(np.repeat(labels, n, axis=0), self.sample_noise(seeds), batch_size))

    def sample_noise(self, seeds: Sequence[int]) -> np.ndarray:
        """Noise for one image per seed: float32 (len(seeds), *noise_shape), the same on every platform
        (:func:`runtimes.noise.sample_noise`)."""
        return sample_noise(seeds, self.noise_shape)

    # --------------------------------------------------------------------------------------- label maps
    def prepare_labels(self, label_map: LabelMap, resize: bool = False, check_size: bool = True) -> tuple[np.ndarray, bool]:
        """Validate and convert any accepted label map to int32 (N, H, W); also says whether it was a batch
        (:func:`prepare_labels` with this artifact's manifest)."""
        return prepare_labels(label_map, self._manifest, resize, check_size)

    def ids_from_colors(self, rgb: np.ndarray) -> np.ndarray:
        """Class ids [..., H, W] of a colour-coded map [..., H, W, 3] drawn in the artifact's palette colours
        (black is the ignore id, as :meth:`colorize` draws it, when the artifact has one and no class is black)."""
        return ids_from_colors(rgb, self._manifest)

    def colorize(self, label_map: LabelMap) -> np.ndarray:
        """The label map in its class colours: (H, W, 3) or (N, H, W, 3) uint8; ignored pixels are black."""
        labels, batched = self.prepare_labels(label_map, check_size=False)
        ignored = labels >= self.num_classes
        colors = self._palette[np.where(ignored, 0, labels)]
        colors[ignored] = imaging.IGNORE_COLOR
        return colors if batched else colors[0]

    # ------------------------------------------------------------------------------------------ running
    def _check_noise(self, noise: Any, n: int, batched: bool) -> np.ndarray:
        noise = np.asarray(noise)
        expected = (n, *self.noise_shape)
        if not batched and noise.shape == self.noise_shape:
            noise = noise[None]
        if noise.shape != expected or not np.issubdtype(noise.dtype, np.floating):
            raise InputError(f"noise must be a float array of shape {expected}, got {noise.dtype} {noise.shape}.")
        if not np.isfinite(noise).all():
            raise InputError("noise holds NaN or infinite values.")
        return noise.astype(np.float32, copy=False)

    def _open_backend(self) -> Backend:
        if self._backend is None:
            raise PredictorClosed("This predictor is closed; open the artifact again with runtimes.load_predictor().")
        return self._backend

    def _run(self, labels: np.ndarray, noise: np.ndarray, batch_size: int | None) -> np.ndarray:
        with self._lock:
            backend = self._open_backend()
            if batch_size is None:
                batch_size = backend.max_batch
            elif not _is_int(batch_size) or not 1 <= batch_size <= backend.max_batch:
                raise InputError(f"batch_size must be an integer in 1..{backend.max_batch} (this artifact's max batch), got {batch_size!r}.")
            n = len(labels)
            out = np.empty((n, 3, *self.input_size), dtype=np.float32)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                out[start:stop] = self._infer_chunk(backend, labels[start:stop], noise[start:stop])
        return out

    def _infer_chunk(self, backend: Backend, labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
        n = len(labels)
        pad = max(0, backend.min_batch - n)
        if pad:  # e.g. a TensorRT profile that starts above 1: repeat the last map, drop the extra images
            labels = np.concatenate([labels, np.repeat(labels[-1:], pad, axis=0)])
            noise = np.concatenate([noise, np.repeat(noise[-1:], pad, axis=0)])
        result = backend.infer({INPUT_LABEL: np.ascontiguousarray(labels), INPUT_NOISE: np.ascontiguousarray(noise)})
        image = np.asarray(result.get(OUTPUT_IMAGE))
        expected = (n + pad, 3, *self.input_size)
        if image.shape != expected:
            raise ManifestError(
                f"The {self.target} model returned {OUTPUT_IMAGE!r} of shape {image.shape}, the graph contract says "
                f"{expected}: the artifact does not match its model.json. Export it again."
            )
        return image[:n]

    # ------------------------------------------------------------------------------------------ the rest
    def info(self) -> dict[str, Any]:
        """What the artifact is and what runs it (manifest summary + the backend's own description)."""
        m = self._manifest
        return {
            "artifact": str(self._artifact_dir),
            "target": m.target,
            "precision": m.precision,
            "input_size": list(self.input_size),
            "num_classes": m.num_classes,
            "ignore_id": m.ignore_id,
            "noise_shape": list(self.noise_shape),
            "batch": dict(m.batch),
            "quality": m.quality,
            "calibration": m.calibration,
            "trained_on": m.trained_on,
            "library_versions": m.library_versions,
            "backend": {"class": BACKENDS.get(m.target, ""), **self._open_backend().describe()},
        }

    def close(self) -> None:
        """Release the engine (idempotent); the predictor cannot generate afterwards."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.input_size
        state = "closed" if self._backend is None else type(self._backend).__name__
        return f"Predictor({self.target} {self.precision}, {h}x{w}, {self.num_classes} classes, {state}, {self._artifact_dir})"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_map_object(obj: Any) -> bool:
    """A list whose items are maps (arrays, images, paths) is a batch; a list of numbers is one nested array."""
    return isinstance(obj, (np.ndarray, str, os.PathLike)) or imaging.is_pil_image(obj)
