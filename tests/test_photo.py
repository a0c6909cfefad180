"""The photographic built-in scenes (train/data/photo.py): painting, the fitted label-consistency classifier,
and the paths that carry the dataset name (data, calibration, config, model card)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dpsims.errors import DataError
from train.data import build_dataset, scenes_of
from train.data.synthetic import SyntheticScenes

pytest.importorskip("skimage", reason="the synthetic-photo scenes need scikit-image: pip install 'dp-sims[photo]'")

from train.data import photo  # noqa: E402
from train.data.photo import PhotoScenes  # noqa: E402


@pytest.fixture(scope="module")
def scenes() -> PhotoScenes:
    return PhotoScenes(8, (64, 64), seed=3)


def test_layouts_match_the_procedural_scenes_and_painting_is_deterministic(scenes):
    procedural = SyntheticScenes(8, (64, 64), seed=3)
    image, label = scenes.render(5)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label, procedural.label(5))
    np.testing.assert_array_equal(image, PhotoScenes(8, (64, 64), seed=3).render(5)[0])
    # another scene index draws other texture offsets: the same layout is painted differently
    assert np.abs(scenes.paint(label, 6).astype(int) - image.astype(int)).mean() > 5


def test_each_class_region_takes_its_own_photograph(scenes):
    label = np.repeat(np.arange(8), 8)[None, :].repeat(64, 0)  # eight vertical bands of 8 pixels
    image = scenes.paint(label).astype(np.float32)
    tiles = photo.texture_tiles(64)
    for k in range(8):
        band = image[:, 8 * k : 8 * k + 8].reshape(-1, 3)
        # every pixel of band k is a pixel of tile k (its colours occur in that photograph's tile)
        assert np.isin(band[:, 1], tiles[k][..., 1].round()).all(), scenes.class_names[k]
    # photographs, not flat colours: the bands carry texture
    assert min(image[:, 8 * k : 8 * k + 8].std() for k in range(1, 8)) > 3


def test_classifier_reads_the_photographs_of_real_scenes(scenes):
    ceiling = scenes.real_consistency(24)
    assert ceiling > 0.8
    # the same layouts painted with the procedural textures are not read as these classes
    from train.metrics import label_consistency

    procedural = SyntheticScenes(8, (64, 64), seed=3)
    pairs = [procedural.render(i) for i in range(24)]
    wrong = label_consistency(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), scenes)
    assert wrong < 0.5 * ceiling
    # a blurred photograph loses texture and scores lower than the sharp one, but above the wrong paint
    from PIL import Image, ImageFilter

    sharp = [scenes.render(i) for i in range(24)]
    blurred = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5))) for im, _ in sharp])
    lc_blur = label_consistency(blurred, np.stack([lb for _, lb in sharp]), scenes)
    assert wrong < lc_blur < ceiling


def test_class_count_and_missing_package_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="2..8"):
        PhotoScenes(9, (64, 64))
    from train.config import DataConfig

    with pytest.raises(DataError, match="2..8"):
        build_dataset(DataConfig(dataset="synthetic-photo", image_size=[64, 64], num_classes=12))
    photo.texture_tiles.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage", None)
    try:
        with pytest.raises(DataError, match=r"dp-sims\[photo\]"):
            PhotoScenes(4, (32, 32))
    finally:
        photo.texture_tiles.cache_clear()


def test_dataset_calibration_and_preset_carry_the_photo_scenes():
    from calibration import load_calibration_set
    from train.config import DataConfig, load_config

    cfg = load_config("synthetic-photo")
    assert cfg.data.dataset == "synthetic-photo" and cfg.model.discriminator.weights == "pip:efficientnet-lite0"
    ds = build_dataset(DataConfig(dataset="synthetic-photo", image_size=[32, 48], num_classes=5, val_length=3), "val")
    assert ds.name == "synthetic-photo" and isinstance(ds.scenes, PhotoScenes) and len(ds) == 3
    assert ds.class_names == [t.name for t in photo.TEXTURES[:5]]
    image, label = ds[0]
    assert tuple(image.shape) == (3, 32, 48) and tuple(label.shape) == (32, 48)
    a = load_calibration_set("synthetic-photo", 5, (32, 48), (4,), samples=6)
    b = load_calibration_set("synthetic", 5, (32, 48), (4,), samples=6)
    np.testing.assert_array_equal(a.labels, b.labels)  # the same layouts ...
    assert isinstance(a.scenes, PhotoScenes) and not isinstance(b.scenes, PhotoScenes)  # ... scored differently
    assert isinstance(scenes_of("synthetic", 5, (32, 48), 0), SyntheticScenes)
    with pytest.raises(DataError, match="built-in"):
        scenes_of("ade20k", 5, (32, 48), 0)
