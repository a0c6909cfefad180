"""The one source of calibration data: label maps from a chosen source plus noise drawn from a fixed seed.

Sample ``i`` of a set of seed ``s`` carries the noise of seed ``s + i`` as the runtimes draw it
(:mod:`runtimes.noise`), so a calibration or held-out sample is the image ``generate(map_i, seed=s + i)`` of any
backend, and the quality report compares what users get for that map and seed.

Every quantizer (ONNX Runtime, NNCF, ModelOpt, TensorRT, coremltools) and every quality report reads the same
:class:`CalibrationSet`, so the numbers in two manifests are comparable. Sources:

- ``synthetic`` / ``synthetic-photo``: the built-in scenes (the model's class count, the artifact's size; the two
  draw the same layouts and differ in how they are painted, which is what label consistency reads); the only
  sources on which label consistency can be measured without a segmentation network;
- a folder of label-map PNGs (palette/grey ids, or RGB class colours mapped through the model's palette) or
  ``.npy`` arrays, resized with nearest-neighbour to the artifact's size;
- ``blocks``: random rectangles of every class (quality checks of models with no calibration data given);
- a dataset preset or YAML config (``ade20k-256``, ``my-config.yaml``): its validation labels.

Only numpy and (for PNG folders) pillow are needed, except for dataset configs, which read through ``train.data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import DataError, InputError
from runtimes.noise import sample_noise, seed_list
from runtimes.spec import INPUT_LABEL, INPUT_NOISE
from train.data import BUILTIN_SCENES

#: a source value that means the built-in procedural scenes (``synthetic-photo``, train.data.BUILTIN_SCENES, draws
#: the same layouts and scores them with the photographic scenes' classifier)
SYNTHETIC = "synthetic"
#: a source value that means random block layouts (any class count; for quality checks, not for calibration)
BLOCKS = "blocks"
#: seed of the calibration scenes: not a training seed, so calibration maps are not training maps
DEFAULT_SEED = 1009
#: the last quarter of every set is held out for the quality report, never fed to a quantizer
HELD_OUT_FRACTION = 0.25
LABEL_SUFFIXES = (".png", ".npy")


@dataclass
class CalibrationSet:
    """``labels`` int32 [S, H, W] in the model's class ids, ``noise`` float32 [S, *noise_shape] (standard normal)."""

    labels: np.ndarray
    noise: np.ndarray
    source: str
    seed: int
    scenes: Any = field(default=None, repr=False)
    """The :class:`train.data.SyntheticScenes` that drew the maps (synthetic source only): label consistency."""

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int32)
        self.noise = np.ascontiguousarray(self.noise, dtype=np.float32)
        if self.labels.ndim != 3 or len(self.labels) != len(self.noise) or len(self.labels) == 0:
            raise DataError(f"A calibration set needs labels [S, H, W] and noise [S, ...] with S >= 1; got "
                            f"{self.labels.shape} and {self.noise.shape}.")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    def subset(self, start: int, stop: int | None = None) -> CalibrationSet:
        return CalibrationSet(self.labels[start:stop], self.noise[start:stop], self.source, self.seed, self.scenes)

    def split(self, held_out_fraction: float = HELD_OUT_FRACTION) -> tuple[CalibrationSet, CalibrationSet]:
        """(samples for the quantizer, held-out samples for the quality report); needs at least 2 samples."""
        if len(self) < 2:
            raise DataError(f"Calibration needs at least 2 label maps (a quarter is held out for the quality check); "
                            f"{self.source} gave {len(self)}: add maps or raise --calib-samples.")
        cut = len(self) - max(1, int(round(len(self) * held_out_fraction)))
        return self.subset(0, cut), self.subset(cut)

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """``{"label": int32 [B, H, W], "noise": float32 [B, ...]}`` dicts in the graph contract's names."""
        for i in range(0, len(self), max(1, int(batch_size))):
            yield {INPUT_LABEL: self.labels[i : i + batch_size], INPUT_NOISE: self.noise[i : i + batch_size]}

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self), "seed": self.seed}


def draw_noise(samples: int, noise_shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The noise of samples ``0 .. samples-1``: sample ``i`` gets the noise of seed ``seed + i``, exactly what
    ``predictor.generate(map_i, seed=seed + i)`` feeds the graph (:func:`runtimes.noise.sample_noise`)."""
    return sample_noise(seed_list(seed, samples), noise_shape)


def load_calibration_set(
    source: str | Path,
    num_classes: int,
    input_size: tuple[int, int],
    noise_shape: tuple[int, ...],
    samples: int = 256,
    seed: int = DEFAULT_SEED,
    palette: list[list[int]] | None = None,
    ignore_id: int | None = None,
) -> CalibrationSet:
    """Build the calibration set of ``samples`` label maps at ``input_size`` from ``source`` (see module doc).

    ``palette``/``ignore_id``: the model's, to read RGB-coded label PNGs and to map ignored pixels."""
    if samples < 1:
        raise DataError(f"--calib-samples must be at least 1, got {samples}.")
    size = (int(input_size[0]), int(input_size[1]))
    text = str(source)
    if text in BUILTIN_SCENES:
        labels, scenes = _synthetic(text, num_classes, size, samples, seed)
        return CalibrationSet(labels, draw_noise(samples, noise_shape, seed), text, seed, scenes)
    if text == BLOCKS:
        return CalibrationSet(_blocks(num_classes, size, samples, seed), draw_noise(samples, noise_shape, seed), BLOCKS, seed)
    path = Path(text)
    if path.is_dir():
        labels = _folder(path, num_classes, size, samples, palette, ignore_id)
        return CalibrationSet(labels, draw_noise(len(labels), noise_shape, seed), f"folder:{path}", seed)
    labels = _dataset(text, num_classes, size, samples)
    return CalibrationSet(labels, draw_noise(len(labels), noise_shape, seed), f"dataset:{text}", seed)


def _synthetic(dataset: str, num_classes: int, size: tuple[int, int], samples: int, seed: int):
    from train.data import scenes_of

    try:
        scenes = scenes_of(dataset, num_classes, size, seed)
    except ValueError as e:
        raise DataError(f"Synthetic calibration maps cannot be drawn for this model: {e} Give --calib a folder "
                        "of label maps or a dataset config instead.") from None
    return np.stack([scenes.label(i) for i in range(samples)]), scenes


def _blocks(num_classes: int, size, samples: int, seed: int) -> np.ndarray:
    """Layouts of 8x8-pixel-or-larger rectangles of random classes: every class, no semantics."""
    rng = np.random.default_rng([seed, 0xB10C])
    cell = max(1, min(size) // 8)
    coarse = rng.integers(0, num_classes, size=(samples, -(-size[0] // cell), -(-size[1] // cell)))
    return coarse.repeat(cell, axis=1).repeat(cell, axis=2)[:, : size[0], : size[1]]


def _folder(path: Path, num_classes: int, size, samples: int, palette, ignore_id) -> np.ndarray:
    from runtimes.imaging import colors_to_ids, read_label_file, resize_nearest

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in LABEL_SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no label maps (*.png or *.npy). Give a folder of label-map PNGs, a dataset "
                        "preset such as ade20k-256, or 'synthetic'.")
    from dpsims.progress import progress

    maps = []
    for file in progress(files[:samples], f"calibration maps from {path}", unit="map"):
        try:
            ids, is_rgb = read_label_file(file)
            if is_rgb:
                if palette is None:
                    raise InputError(f"{file} is colour-coded, but the model has no palette to read it.")
                ids = colors_to_ids(ids, np.asarray(palette), ignore_id)
        except InputError as e:
            raise DataError(f"Calibration label map {file}: {e}") from None
        if ids.ndim != 2:
            raise DataError(f"Calibration label map {file} has shape {ids.shape}; a map is [H, W].")
        maps.append(_checked_ids(resize_nearest(ids, size), num_classes, ignore_id, str(file)))
    return np.stack(maps)


def _dataset(spec: str, num_classes: int, size, samples: int) -> np.ndarray:
    from dpsims.errors import ConfigError
    from runtimes.imaging import resize_nearest
    from train.config import load_config
    from train.data import build_dataset

    if Path(spec).is_file() and Path(spec).suffix.lower() not in (".yaml", ".yml"):
        raise DataError(f"--calib {spec} is a file: give a folder of label maps ({', '.join(LABEL_SUFFIXES)}), "
                        "'synthetic', or a dataset config (.yaml).")
    try:
        cfg = load_config(spec, [])
    except ConfigError as e:
        hint = (" (python -m export has no --set: give the training run's RUN/config.yaml, or a YAML whose data.root "
                "points at the dataset)" if "data.root" in str(e) else "")
        raise DataError(f"--calib {spec!r} is not 'synthetic', an existing folder, or a dataset config: {e}{hint}") from None
    dataset = build_dataset(cfg.data, "val")
    if dataset.num_classes != num_classes:
        raise DataError(f"--calib {spec} has {dataset.num_classes} classes, the generator {num_classes}: calibrate on "
                        "label maps of the dataset the generator was trained on.")
    count = min(samples, len(dataset))
    from dpsims.progress import progress

    maps = [resize_nearest(np.asarray(dataset[i][1]), size)
            for i in progress(range(count), f"calibration maps from {spec}", unit="map")]
    return np.stack([_checked_ids(m, num_classes, dataset.ignore_id, f"{spec}[{i}]") for i, m in enumerate(maps)])


def _checked_ids(ids: np.ndarray, num_classes: int, ignore_id: int | None, where: str) -> np.ndarray:
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"{where}: label maps hold integer class ids, got {ids.dtype}.")
    bad = (ids < 0) | (ids >= num_classes)
    if bad.any():
        raise DataError(f"{where}: class ids must lie in 0..{num_classes - 1}; found {[int(v) for v in np.unique(ids[bad])[:5]]}."
                        + (f" (ignore id {ignore_id} is a class of the model's own numbering)" if ignore_id is not None else ""))
    return ids.astype(np.int32)
