"""Photographic scenes: the procedural layouts of :mod:`train.data.synthetic` painted with textures cut from
real photographs, and the classifier that measures label consistency on them.

Why: the procedural textures of ``synthetic-tiny`` are flat colours with 4x4 patterns, far from anything an
ImageNet backbone was trained on. These scenes give the pre-trained discriminator something photographic to
recognise (grass, gravel, brick, wood grain, cat fur, a night sky, the Hubble deep field, stained tissue), with
no download: the photographs ship inside the scikit-image wheel (``skimage.data``; the ``[photo]`` extra).

Appearance. Each class is one texture: a crop of a photograph (grey ones tinted), resized so that its grain
is a few pixels at a 64-pixel short side, and mirrored into a seamless periodic tile. ``paint(label, index)``
gives every class region the tile at a random offset drawn from ``(seed, index)``, so the same class looks
different from scene to scene and the generator cannot memorise positions.

Classifier. Photographic textures have no closed-form classifier, so the label consistency here works as the
paper's evaluation protocol does, on a smaller scale: a segmenter fitted on real scenes, then applied to
generated images. Per pixel it reads 24 local statistics (box means of the three colour channels, the standard
deviation of luminance and the mean absolute horizontal and vertical luminance gradient, each over 3x3, 7x7
and 15x15 windows; the spread and gradients in log scale) and a Gaussian classifier (one mean and covariance
per class, fitted in closed form on :data:`FIT_SCENES` rendered scenes of a fixed seed) picks the class. Its
own mIoU on real held-out scenes (:meth:`PhotoScenes.real_consistency`, about 0.9 at 64x64) is the ceiling a
generator can reach; the tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dpsims.errors import DataError
from train.data.synthetic import SyntheticScenes

FIT_SCENES = 192
"""Real scenes the label-consistency classifier is fitted on (fixed seed :data:`FIT_SEED`, the scenes' size)."""
FIT_SEED = 7919
BOXES = (3, 7, 15)
"""Window sizes of the classifier's local statistics (pixels)."""
REFERENCE_SHORT_SIDE = 64
"""The short side at which the textures have the scale given in :data:`TEXTURES`; larger images scale them up."""


@dataclass(frozen=True)
class Texture:
    name: str
    image: str
    """The ``skimage.data`` function that loads the photograph."""
    crop: tuple[int, int, int, int]
    """(top, bottom, left, right) in the photograph's pixels."""
    scale: float
    """Resize factor of the crop at :data:`REFERENCE_SHORT_SIDE`."""
    tint: tuple[int, int, int] | None = None
    """RGB of a grey photograph's mean level; None for colour photographs."""


TEXTURES: tuple[Texture, ...] = (
    Texture("night sky", "rocket", (10, 250, 345, 435), 0.5),
    Texture("deep field", "hubble_deep_field", (0, 600, 0, 600), 0.3),
    Texture("grass", "grass", (0, 512, 0, 512), 0.25, (92, 136, 60)),
    Texture("gravel", "gravel", (0, 512, 0, 512), 0.25, (150, 140, 124)),
    Texture("brick", "brick", (0, 512, 0, 512), 0.25, (176, 92, 72)),
    Texture("wood", "coffee", (10, 390, 490, 600), 0.5),
    Texture("fur", "chelsea", (0, 100, 140, 330), 0.5),
    Texture("tissue", "immunohistochemistry", (0, 512, 430, 512), 0.4),
)
MAX_CLASSES = len(TEXTURES)


@lru_cache(maxsize=8)
def texture_tiles(short_side: int) -> tuple[np.ndarray, ...]:
    """float32 RGB tiles [2h, 2w, 3] (0..255), seamless when repeated, for images with this short side."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise DataError("The synthetic-photo scenes cut their textures from the photographs in scikit-image's wheel; "
                        "install it with: pip install 'dp-sims[photo]'") from None
    from PIL import Image

    tiles = []
    for t in TEXTURES:
        top, bottom, left, right = t.crop
        photo = getattr(skdata, t.image)()[top:bottom, left:right]
        factor = t.scale * short_side / REFERENCE_SHORT_SIDE
        size = (max(4, round(photo.shape[1] * factor)), max(4, round(photo.shape[0] * factor)))
        img = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS), np.float32)
        if t.tint is not None:  # grey photograph: its level modulates the tint around the tint itself
            grey = img if img.ndim == 2 else img.mean(-1)
            img = np.clip(np.asarray(t.tint, np.float32) * (grey / grey.mean())[..., None], 0, 255)
        tile = np.concatenate([img, img[:, ::-1]], axis=1)
        tiles.append(np.ascontiguousarray(np.concatenate([tile, tile[::-1]], axis=0)))
    return tuple(tiles)


def _box_mean(x: np.ndarray, box: int) -> np.ndarray:
    """Mean over ``box`` x ``box`` windows centred on each pixel (edge-replicated): [N, H, W, C] -> same."""
    r = box // 2
    p = np.pad(x, ((0, 0), (r + 1, r), (r + 1, r), (0, 0)), mode="edge").astype(np.float64)
    s = p.cumsum(1).cumsum(2)
    h, w = x.shape[1:3]
    out = s[:, box:box + h, box:box + w] - s[:, :h, box:box + w] - s[:, box:box + h, :w] + s[:, :h, :w]
    return (out / (box * box)).astype(np.float32)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, H, W, 6 * len(BOXES)]: the classifier's local statistics."""
    x = images.astype(np.float32) / 255.0
    lum = x @ np.float32([0.299, 0.587, 0.114])
    gx = np.abs(np.diff(lum, axis=2, append=lum[:, :, -1:]))
    gy = np.abs(np.diff(lum, axis=1, append=lum[:, -1:]))
    stack = np.concatenate([x, lum[..., None], (lum**2)[..., None], gx[..., None], gy[..., None]], -1)
    out = []
    for box in BOXES:
        m = _box_mean(stack, box)
        std = np.sqrt(np.maximum(m[..., 4] - m[..., 3] ** 2, 0.0))
        out += [m[..., :3], np.log(std + 1e-3)[..., None], np.log(m[..., 5:7] + 1e-3)]
    return np.concatenate(out, -1)


class PhotoScenes(SyntheticScenes):
    """:class:`SyntheticScenes` layouts painted with photographic textures; same interface, own classifier."""

    def __init__(self, num_classes: int = MAX_CLASSES, size: tuple[int, int] = (64, 64), seed: int = 0):
        if not 2 <= num_classes <= MAX_CLASSES:
            raise DataError(f"num_classes must be within 2..{MAX_CLASSES} for the photographic scenes "
                             f"({MAX_CLASSES} textures), got {num_classes}.")
        super().__init__(num_classes, size, seed)
        self._tiles = texture_tiles(min(self.size))[:num_classes]
        self.class_names = [t.name for t in TEXTURES[:num_classes]]

    def __repr__(self) -> str:
        return f"PhotoScenes(num_classes={self.num_classes}, size={self.size}, seed={self.seed})"

    def paint(self, label: np.ndarray, index: int = 0) -> np.ndarray:
        label = self.check_label(label)
        h, w = label.shape
        rng = self._rng(index, 1)
        image = np.empty((h, w, 3), np.float32)
        for k, tile in enumerate(self._tiles):
            oy, ox = int(rng.integers(tile.shape[0])), int(rng.integers(tile.shape[1]))  # drawn for every class
            ys, xs = np.nonzero(label == k)
            if ys.size:
                image[ys, xs] = tile[(ys + oy) % tile.shape[0], (xs + ox) % tile.shape[1]]
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------------------------------ classifier
    def _classify(self, x: np.ndarray) -> np.ndarray:
        means, inv, logdet = _fit(self.num_classes, self.size)
        f = pixel_features(x)
        n, h, w, d = f.shape
        f = f.reshape(-1, d)
        score = np.empty((f.shape[0], self.num_classes), np.float32)
        for k in range(self.num_classes):
            z = f - means[k]
            score[:, k] = -0.5 * np.einsum("nd,de,ne->n", z, inv[k], z) - 0.5 * logdet[k]
        return score.argmax(1).reshape(n, h, w)

    def real_consistency(self, samples: int = 64) -> float:
        """Label consistency of this split's own real images (the ceiling of a generator's)."""
        from train.metrics import label_consistency

        pairs = [self.render(i) for i in range(samples)]
        return label_consistency(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), self)


@lru_cache(maxsize=4)
def _fit(num_classes: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means [K, F], inverse covariances [K, F, F], log-determinant terms [K]) of the Gaussian classifier of
    ``num_classes`` classes at ``size``, fitted once per process on :data:`FIT_SCENES` scenes of :data:`FIT_SEED`."""
    scenes = PhotoScenes(num_classes, size, FIT_SEED)
    images, labels = zip(*(scenes.render(i) for i in range(FIT_SCENES)))
    f = pixel_features(np.stack(images))
    labels = np.stack(labels).ravel()
    f = f.reshape(-1, f.shape[-1]).astype(np.float64)
    d = f.shape[1]
    means = np.zeros((num_classes, d))
    inv = np.zeros((num_classes, d, d))
    logdet = np.zeros(num_classes)
    for k in range(num_classes):
        fk = f[labels == k]
        if len(fk) < 2 * d:
            raise DataError(f"Too few pixels of class {k} in the classifier's fitting scenes ({len(fk)}).")
        means[k] = fk.mean(0)
        cov = np.cov(fk, rowvar=False) + 1e-4 * np.eye(d)
        inv[k] = np.linalg.inv(cov)
        logdet[k] = np.linalg.slogdet(cov)[1]
    return means.astype(np.float32), inv.astype(np.float32), logdet.astype(np.float32)
