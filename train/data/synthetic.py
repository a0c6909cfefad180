"""Procedural scenes: the built-in dataset, and the fixed classifier that measures label consistency.

numpy only (no torch), so calibration and benchmarks can use it anywhere.

Scenes. ``label(index)`` draws a layout from ``numpy.random.default_rng([seed, index])``: a wavy horizon between
two bands, optionally hills behind it and a foreground band, a perspective road, a striped field, buildings
with roofs, star-shaped polygons and ellipses. Geometry is drawn in units of the image's short side, so a
layout keeps its look from 64x64 to 256x512 (wide images get proportionally more objects). Every element
takes a class drawn uniformly (other than the class under its centre), so all classes appear about equally.
Parts thinner than the texture period (slivers, sharp tips) are then absorbed by their neighbours
(:func:`min_feature_size`): every pixel lies in some single-class 4x4 window, which the classifier relies on.

Appearance. ``paint(label)`` gives class ``k`` its colour ``palette[k]`` plus a luminance texture that is
periodic with period 4 in x and y and has zero mean over a period (stripes, checkers, lines, dots... at two
amplitudes), plus weak pixel noise. Colours are spread out in RGB (:func:`distinct_colors`, kept inside
[40, 215] so texture and noise never clip).

Classifier. Any 4x4 window that lies inside one region averages the texture away exactly and gives that
class's colour. ``classify`` averages every 4x4 window, scores each window by the distance of its mean to the
nearest class colour, and gives each pixel the class of its best-scoring window among the 16 windows that
contain it. Pixels at a region boundary thus take the colour of a window on their own side, which keeps
boundaries sharp (a plain blur-then-nearest-colour misreads a band of pixels along every edge).
"""

from __future__ import annotations

import colorsys

import numpy as np

from dpsims.errors import DataError
from train.data.catalog import distinct_colors

PERIOD = 4
"""Texture period in pixels (x and y); the classifier's window size."""
MAX_CLASSES = 64
NOISE_STD = 2.0
"""Per-pixel, per-channel Gaussian noise of the painted images (0..255 scale)."""
_AMPLITUDES = (16.0, 28.0)  # classes 0-15 and 32-47 use the first, 16-31 and 48-63 the second
_COLOR_RANGE = (40, 215)


def _texture_bank() -> tuple[np.ndarray, list[str]]:
    """16 zero-mean 4x4 tiles scaled to a peak of 1, and their names."""
    y, x = np.mgrid[0:PERIOD, 0:PERIOD]
    masks = {
        "stripes": y % 4 < 2,
        "bars": x % 4 < 2,
        "checker": (x // 2 + y // 2) % 2 == 0,
        "fine checker": (x + y) % 2 == 0,
        "diagonal": (x + y) % 4 < 2,
        "antidiagonal": (x - y) % 4 < 2,
        "lines": y == 0,
        "columns": x == 0,
        "grid": (x == 0) | (y == 0),
        "dots": (x == 0) & (y == 0),
        "fine stripes": y % 2 == 0,
        "fine bars": x % 2 == 0,
        "diagonal lines": (x + y) % 4 == 0,
        "antidiagonal lines": (x - y) % 4 == 0,
        "blocks": (x < 2) & (y < 2),
        "holes": (x != 0) | (y != 0),
    }
    tiles = np.stack([m.astype(np.float32) for m in masks.values()])
    tiles -= tiles.mean(axis=(1, 2), keepdims=True)
    tiles /= np.abs(tiles).max(axis=(1, 2), keepdims=True)
    return tiles, list(masks)


def _color_name(rgb: list[int]) -> str:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    if s < 0.25:
        return "grey" if 0.3 < v < 0.75 else ("dark grey" if v <= 0.3 else "light grey")
    hues = ["red", "orange", "yellow", "lime", "green", "spring", "cyan", "azure", "blue", "violet", "magenta", "rose"]
    name = hues[int(round(h * 12)) % 12]
    return f"dark {name}" if v < 0.6 else (f"pale {name}" if s < 0.6 else name)


class SyntheticScenes:
    """Deterministic procedural scenes: ``(seed, index, size)`` always gives the same arrays."""

    def __init__(self, num_classes: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0):
        if not 2 <= num_classes <= MAX_CLASSES:
            raise DataError(f"num_classes must be within 2..{MAX_CLASSES}, got {num_classes}.")
        h, w = (int(v) for v in size)
        if h < 2 * PERIOD or w < 2 * PERIOD:
            raise DataError(f"size must be at least {2 * PERIOD}x{2 * PERIOD}, got {h}x{w}.")
        if seed < 0:
            raise DataError(f"seed must be >= 0, got {seed}.")
        self.num_classes = num_classes
        self.size = (h, w)
        self.seed = int(seed)
        self.palette: list[list[int]] = distinct_colors(num_classes, *_COLOR_RANGE)
        tiles, tile_names = _texture_bank()
        pattern = np.arange(num_classes) % len(tiles)
        amplitude = np.array([_AMPLITUDES[(k // len(tiles)) % 2] for k in range(num_classes)], np.float32)
        self._textures = tiles[pattern] * amplitude[:, None, None]  # [K, 4, 4]
        self._colors = np.asarray(self.palette, np.float32)  # [K, 3]
        names = []
        for k in range(num_classes):
            bold = "bold " if amplitude[k] == max(_AMPLITUDES) else ""
            name = f"{_color_name(self.palette[k])} {bold}{tile_names[pattern[k]]}"
            names.append(name if name not in names else f"{name} {k}")
        self.class_names: list[str] = names

    def __repr__(self) -> str:
        return f"SyntheticScenes(num_classes={self.num_classes}, size={self.size}, seed={self.seed})"

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        if index < 0:
            raise DataError(f"a scene index must be >= 0, got {index}.")
        return np.random.default_rng([self.seed, int(index), stream])

    # --------------------------------------------------------------------------------------------- layout
    def label(self, index: int) -> np.ndarray:
        """The label map of scene ``index``: int64 [H, W] with ids 0..num_classes-1."""
        return _Layout(self._rng(index, 0), self.size, self.num_classes).draw()

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], label int64 [H, W]) of scene ``index``."""
        label = self.label(index)
        return self.paint(label, index), label

    def paint(self, label: np.ndarray, index: int = 0) -> np.ndarray:
        """Paint any label map [H, W] (ids 0..num_classes-1): uint8 [H, W, 3]. ``index`` seeds the pixel noise."""
        label = self.check_label(label)
        h, w = label.shape
        texture = self._textures[label, np.arange(h)[:, None] % PERIOD, np.arange(w)[None, :] % PERIOD]
        noise = self._rng(index, 1).normal(0.0, NOISE_STD, (h, w, 3)).astype(np.float32)
        image = self._colors[label] + texture[..., None] + noise
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    def check_label(self, label: np.ndarray) -> np.ndarray:
        """``label`` as an integer array [H, W] with ids 0..num_classes-1, or ValueError saying what is wrong."""
        label = np.asarray(label)
        if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
            raise DataError(f"label must be an integer array [H, W], got {label.dtype} {label.shape}.")
        if label.size and (label.min() < 0 or label.max() >= self.num_classes):
            raise DataError(f"label ids must be within 0..{self.num_classes - 1}, got {label.min()}..{label.max()}.")
        return label

    # ------------------------------------------------------------------------------------------ classifier
    def classify(self, images: np.ndarray) -> np.ndarray:
        """The fixed per-class classifier: uint8 [N, H, W, 3] or [H, W, 3] -> int64 labels [N, H, W] or [H, W]."""
        images = np.asarray(images)
        single = images.ndim == 3
        batch = images[None] if single else images
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise DataError(f"images must be [N, H, W, 3] or [H, W, 3] RGB, got shape {images.shape}.")
        n, h, w, _ = batch.shape
        if h < PERIOD or w < PERIOD:
            raise DataError(f"images must be at least {PERIOD}x{PERIOD}, got {h}x{w}.")
        out = np.empty((n, h, w), np.int64)
        chunk = max(1, 8_000_000 // (h * w * self.num_classes))  # bounds the [chunk, H, W, K] distance array
        for start in range(0, n, chunk):
            out[start : start + chunk] = self._classify(batch[start : start + chunk].astype(np.float32))
        return out[0] if single else out

    def _classify(self, x: np.ndarray) -> np.ndarray:
        n, h, w, _ = x.shape
        p = PERIOD
        # mean of every p x p window (integral image); window (i, j) covers rows i..i+p-1, cols j..j+p-1
        s = np.zeros((n, h + 1, w + 1, 3), np.float64)
        s[:, 1:, 1:] = x.cumsum(1, dtype=np.float64).cumsum(2)
        means = (s[:, p:, p:] - s[:, :-p, p:] - s[:, p:, :-p] + s[:, :-p, :-p]).astype(np.float32) / (p * p)
        # squared distance of each window mean to each class colour, via |m|^2 - 2 m.c + |c|^2
        c = self._colors
        d2 = (means**2).sum(-1, keepdims=True) - 2.0 * means @ c.T + (c**2).sum(-1)
        best_class = d2.argmin(-1)
        best_dist = np.take_along_axis(d2, best_class[..., None], -1)[..., 0]
        # each pixel: the best of the p*p windows that contain it (windows past the border padded with +inf)
        pad = ((0, 0), (p - 1, p - 1), (p - 1, p - 1))
        dist = np.pad(best_dist, pad, constant_values=np.inf)
        cls = np.pad(best_class, pad)
        out_dist = np.full((n, h, w), np.inf, np.float32)
        out_cls = np.zeros((n, h, w), np.int64)
        for dy in range(p):
            for dx in range(p):
                # window starting at (y - dy, x - dx) sits at padded index (y - dy + p - 1, x - dx + p - 1)
                d = dist[:, p - 1 - dy : p - 1 - dy + h, p - 1 - dx : p - 1 - dx + w]
                better = d < out_dist
                out_dist = np.where(better, d, out_dist)
                out_cls = np.where(better, cls[:, p - 1 - dy : p - 1 - dy + h, p - 1 - dx : p - 1 - dx + w], out_cls)
        return out_cls


def covered(label: np.ndarray, p: int = PERIOD) -> np.ndarray:
    """bool [H, W]: pixels that lie in at least one p x p window holding a single class."""
    h, w = label.shape
    nh, nw = h - p + 1, w - p + 1  # number of window positions
    row_run = np.ones((h, nw), bool)  # row segment [x, x + p) holds one class
    for d in range(1, p):
        row_run &= label[:, d : d + nw] == label[:, :nw]
    uniform = row_run[:nh].copy()  # window starting at (y, x) holds one class
    for d in range(1, p):
        uniform &= row_run[d : d + nh] & (label[d : d + nh, :nw] == label[:nh, :nw])
    spread_x = np.zeros((nh, w), bool)
    for d in range(p):
        spread_x[:, d : d + nw] |= uniform
    out = np.zeros((h, w), bool)
    for d in range(p):
        out[d : d + nh] |= spread_x
    return out


def min_feature_size(label: np.ndarray, p: int = PERIOD, rounds: int = 4) -> np.ndarray:
    """Remove parts of regions thinner than ``p`` pixels (slivers, sharp tips): pixels outside every
    single-class p x p window take the majority class of their already settled 3x3 neighbours, growing in from
    the settled regions. Repeated until every pixel is covered (in practice one or two rounds)."""
    label = label.copy()
    h, w = label.shape
    num_classes = int(label.max()) + 1
    for _ in range(rounds):
        known = covered(label, p)
        if known.all() or not known.any():
            break
        while not known.all():
            ys, xs = np.nonzero(~known)
            votes = np.zeros(len(ys) * num_classes, np.int64)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
                    ok = known[yy, xx]
                    votes += np.bincount(np.nonzero(ok)[0] * num_classes + label[yy[ok], xx[ok]], minlength=votes.size)
            votes = votes.reshape(len(ys), num_classes)
            settle = votes.max(1) > 0
            label[ys[settle], xs[settle]] = votes[settle].argmax(1)
            known[ys[settle], xs[settle]] = True
    return label


class _Layout:
    """One scene's geometry. Coordinates are in units of the short side; pixel centres sit at (i + 0.5) / s."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], num_classes: int):
        self.rng = rng
        self.k = num_classes
        h, w = size
        s = min(h, w)
        self.h, self.w = h / s, w / s  # extent in units
        self.X = ((np.arange(w) + 0.5) / s)[None, :]
        self.Y = ((np.arange(h) + 0.5) / s)[:, None]
        self.label = np.zeros((h, w), np.int64)
        self.spread = max(self.h, self.w) / min(self.h, self.w)  # wide images get more objects

    # helpers
    def _count(self, low: int, high: int) -> int:
        return int(round(self.rng.integers(low, high + 1) * self.spread))

    def _pick(self, x: float, y: float) -> int:
        """A class uniformly drawn among those other than the one at (x, y), so the new element shows."""
        i = min(int(y / self.h * self.label.shape[0]), self.label.shape[0] - 1)
        j = min(int(x / self.w * self.label.shape[1]), self.label.shape[1] - 1)
        under = int(self.label[max(i, 0), max(j, 0)])
        c = int(self.rng.integers(self.k - 1))
        return c + (c >= under)

    def _fill(self, mask: np.ndarray, cls: int) -> None:
        self.label[np.broadcast_to(mask, self.label.shape)] = cls

    def _wave(self, amplitude: float) -> np.ndarray:
        """A smooth random function of x: [1, W]."""
        out = np.zeros_like(self.X)
        for _ in range(int(self.rng.integers(1, 4))):
            freq = self.rng.uniform(0.5, 2.5) / self.w
            out += self.rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * self.X + self.rng.uniform(0, 2 * np.pi))
        return amplitude * out / 2.0

    def _convex(self, pts: np.ndarray) -> np.ndarray:
        """Mask of the convex polygon with vertices ``pts`` [n, 2] (x, y), in order."""
        inside = np.ones(self.label.shape, bool)
        area2 = np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
        orient = 1.0 if area2 >= 0 else -1.0
        for (px, py), (qx, qy) in zip(pts, np.roll(pts, -1, axis=0)):
            inside &= orient * ((qx - px) * (self.Y - py) - (qy - py) * (self.X - px)) >= 0
        return inside

    # elements
    def draw(self) -> np.ndarray:
        rng = self.rng
        horizon = self.h * rng.uniform(0.3, 0.6) + self._wave(0.08)
        top = int(rng.integers(self.k))
        self.label[:] = top
        self._fill(self.Y >= horizon, self._pick(self.w / 2, self.h - 0.01))
        if rng.random() < 0.5:
            self._hills(horizon)
        if rng.random() < 0.4:
            line = self.h * rng.uniform(0.75, 0.9) + self._wave(0.05)
            self._fill(self.Y >= line, self._pick(self.w / 2, self.h - 0.01))
        if rng.random() < 0.45:
            self._road(horizon)
        if rng.random() < 0.35:
            self._field(horizon)
        for _ in range(self._count(0, 3) if rng.random() < 0.6 else 0):
            self._building(horizon)
        for _ in range(self._count(0, 2)):
            self._polygon()
        for _ in range(self._count(1, 4)):
            self._ellipse()
        return min_feature_size(self.label, PERIOD)

    def _hills(self, horizon: np.ndarray) -> None:
        phase, freq = self.rng.uniform(0, 1), self.rng.uniform(1.0, 3.0) / self.w
        peaks = np.abs(np.sin(np.pi * (freq * self.X + phase)))  # sharp valleys, round tops
        ridge = horizon - self.rng.uniform(0.1, 0.3) * peaks - 0.03
        self._fill((self.Y >= ridge) & (self.Y < horizon), self._pick(self.w / 2, float(ridge.min()) + 0.02))

    def _road(self, horizon: np.ndarray) -> None:
        rng = self.rng
        x_top = rng.uniform(0.25, 0.75) * self.w
        y_top = float(np.interp(x_top, self.X[0], horizon[0])) - 0.02
        half_top, half_bottom = rng.uniform(0.04, 0.08), rng.uniform(0.2, 0.45)
        x_bottom = x_top + rng.uniform(-0.4, 0.4) * self.w
        pts = np.array([[x_top - half_top, y_top], [x_top + half_top, y_top],
                        [x_bottom + half_bottom, self.h + 0.1], [x_bottom - half_bottom, self.h + 0.1]])
        self._fill(self._convex(pts) & (self.Y >= horizon), self._pick(x_bottom, self.h - 0.05))

    def _field(self, horizon: np.ndarray) -> None:
        """A patch of parallel stripes alternating two classes (crops, a fence, a pedestrian crossing)."""
        rng = self.rng
        cx, cy = rng.uniform(0.15, 0.85) * self.w, rng.uniform(0.7, 0.9) * self.h
        hw, hh = rng.uniform(0.15, 0.35), rng.uniform(0.1, 0.2)
        region = (np.abs(self.X - cx) <= hw) & (np.abs(self.Y - cy) <= hh) & (self.Y >= horizon + 0.02)
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.16, 0.3)
        phase = (self.X * np.cos(angle) + self.Y * np.sin(angle)) / period % 1.0
        a = self._pick(cx, cy)
        b = int(rng.integers(self.k))
        self._fill(region, a)
        if b != a:
            self._fill(region & (phase < 0.5), b)

    def _building(self, horizon: np.ndarray) -> None:
        rng = self.rng
        cx = rng.uniform(0.05, 0.95) * self.w
        half, height = rng.uniform(0.06, 0.15), rng.uniform(0.15, 0.4)
        base = float(np.interp(cx, self.X[0], horizon[0])) + rng.uniform(0.02, 0.08)
        body = (np.abs(self.X - cx) <= half) & (self.Y >= base - height) & (self.Y < base)
        self._fill(body, self._pick(cx, base - height / 2))
        if rng.random() < 0.5:
            top = base - height
            roof = np.array([[cx - half - 0.02, top], [cx + half + 0.02, top], [cx, top - rng.uniform(0.07, 0.15)]])
            self._fill(self._convex(roof), self._pick(cx, top - 0.03))

    def _polygon(self) -> None:
        """A star-shaped polygon (rock, bush): radius interpolated between random vertices around a centre."""
        rng = self.rng
        cx, cy = rng.uniform(0, self.w), rng.uniform(0.2, 1.0) * self.h
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.08, 0.22) * rng.uniform(0.6, 1.0, n)
        theta = np.arctan2(self.Y - cy, self.X - cx) % (2 * np.pi)
        r = np.interp(theta, angles, radii, period=2 * np.pi)
        self._fill(np.hypot(self.X - cx, self.Y - cy) <= r, self._pick(cx, cy))

    def _ellipse(self) -> None:
        rng = self.rng
        cx, cy = rng.uniform(0, self.w), rng.uniform(0, self.h)
        a, b = rng.uniform(0.07, 0.2), rng.uniform(0.07, 0.2)
        t = rng.uniform(0, np.pi)
        dx, dy = self.X - cx, self.Y - cy
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        self._fill((u / a) ** 2 + (v / b) ** 2 <= 1.0, self._pick(cx, cy))
