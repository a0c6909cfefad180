"""Datasets: synthetic scenes, the folder layouts and their errors, the shared transform, class lists, grids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpsims.errors import DataError
from train.config import DataConfig
from train.data import build_dataset, synthetic_seed
from train.data.catalog import distinct_colors, load_builtin, read_classes_file
from train.data.synthetic import SyntheticScenes, covered
from train.data.transforms import PairTransform
from train.data.visualize import colorize, make_grid, save_grid

torch = pytest.importorskip("torch")

# ---------------------------------------------------------------------------------------------- helpers


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def blocks(rng: np.random.Generator, values: list[int], h: int, w: int, cell: int = 4) -> np.ndarray:
    """A label map of cell x cell blocks drawn from ``values`` (every value used at least once)."""
    grid = rng.choice(values, size=(h // cell, w // cell))
    grid.flat[: len(values)] = values
    return np.kron(grid, np.ones((cell, cell), np.int64)).astype(np.int64)


def data_cfg(dataset: str, root: Path, size=(16, 24), **kw) -> DataConfig:
    return DataConfig(dataset=dataset, root=str(root), image_size=list(size), **kw)


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_index_and_size():
    a, b = SyntheticScenes(8, (48, 80), seed=5), SyntheticScenes(8, (48, 80), seed=5)
    for i in (0, 7, 123):
        img_a, lab_a = a.render(i)
        img_b, lab_b = b.render(i)
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(lab_a, lab_b)
        np.testing.assert_array_equal(a.label(i), lab_a)
    assert not np.array_equal(a.label(0), a.label(1))
    assert not np.array_equal(a.label(0), SyntheticScenes(8, (48, 80), seed=6).label(0))


def test_synthetic_arrays_and_class_metadata():
    sc = SyntheticScenes(32, (64, 96), seed=1)
    image, label = sc.render(4)
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8
    assert label.shape == (64, 96) and label.dtype == np.int64
    assert 0 <= label.min() and label.max() < 32
    assert len(sc.class_names) == len(set(sc.class_names)) == 32
    assert len({tuple(c) for c in sc.palette}) == 32
    assert all(0 <= v <= 255 for c in sc.palette for v in c)
    assert sc.palette[:8] == SyntheticScenes(8).palette  # class k keeps its colour whatever the class count


def test_synthetic_scenes_use_every_class_and_several_per_image(scenes, scene_batch):
    _, labels = scene_batch
    per_image = [len(np.unique(lab)) for lab in labels]
    assert np.mean(per_image) >= 4 and min(per_image) >= 2
    share = np.bincount(labels.ravel(), minlength=scenes.num_classes) / labels.size
    assert share.min() > 0.25 / scenes.num_classes, share  # no class starves
    images_with = np.array([[c in np.unique(lab) for c in range(scenes.num_classes)] for lab in labels]).mean(0)
    assert images_with.min() > 0.3, images_with


def test_synthetic_regions_are_at_least_one_texture_period_wide(scene_batch):
    _, labels = scene_batch
    assert np.mean([covered(lab).mean() for lab in labels]) > 0.99


def test_synthetic_scales_to_wide_images():
    sc = SyntheticScenes(32, (256, 512), seed=0)
    image, label = sc.render(0)
    assert image.shape == (256, 512, 3) and label.shape == (256, 512)
    assert len(np.unique(label)) >= 4
    assert (sc.classify(image) == label).mean() > 0.98


def test_paint_and_classify_any_label_map(rng):
    sc = SyntheticScenes(16, (32, 32), seed=0)
    label = blocks(rng, list(range(16)), 40, 56, cell=8)
    image = sc.paint(label, index=3)
    assert image.shape == (40, 56, 3)
    np.testing.assert_array_equal(sc.classify(image), label)
    with pytest.raises(ValueError, match="0..15"):
        sc.paint(label + 1)


def test_synthetic_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticScenes(1)
    with pytest.raises(ValueError, match="size"):
        SyntheticScenes(8, (4, 64))
    with pytest.raises(DataError, match="index"):
        SyntheticScenes(8).label(-1)


def test_build_synthetic_dataset_splits():
    cfg = DataConfig(dataset="synthetic", image_size=[32, 48], num_classes=6, synthetic_length=10, val_length=3, seed=2)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (10, 3)
    assert train.num_classes == 6 and train.ignore_id is None and train.name == "synthetic"
    assert train.class_names == train.scenes.class_names and len(train.palette) == 6
    image, label = train[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 48)
    assert label.dtype == torch.int64 and label.shape == (32, 48)
    assert -1.0 <= image.min() and image.max() <= 1.0
    np.testing.assert_array_equal(label.numpy(), SyntheticScenes(6, (32, 48), seed=2).label(1))
    assert val.scenes.seed == synthetic_seed(2, "val") != 2
    assert not torch.equal(val[1][1], label)  # held-out maps
    with pytest.raises(IndexError):
        train[10]
    with pytest.raises(DataError, match="split"):
        build_dataset(cfg, "test")


# ------------------------------------------------------------------------------------- real layouts: ok


def make_ade20k(parent: Path, rng, n: int = 2, split: str = "training", values=(0, 5, 150)) -> list[np.ndarray]:
    base = parent / "ADEChallengeData2016"
    labels = []
    for i in range(n):
        label = blocks(rng, list(values), 16, 24)
        write_image(base / "images" / split / f"ADE_{split}_{i:08d}.jpg", rng.integers(0, 256, (16, 24, 3)))
        write_image(base / "annotations" / split / f"ADE_{split}_{i:08d}.png", label)
        labels.append(label)
    return labels


def test_ade20k_reads_ids_and_keeps_other_as_class_0(tmp_path, rng):
    labels = make_ade20k(tmp_path, rng)
    ds = build_dataset(data_cfg("ade20k", tmp_path), "train")  # root = the parent folder
    assert len(ds) == 2 and ds.num_classes == 151 and ds.ignore_id == 0 and ds.name == "ade20k"
    assert ds.class_names[:3] == ["other", "wall", "building"] and ds.class_names[150] == "flag"
    ds.transform = PairTransform((16, 24), train=False)  # no crop or flip: compare ids exactly
    image, label = ds[0]
    np.testing.assert_array_equal(label.numpy(), labels[0])
    assert image.shape == (3, 16, 24)
    # the root may also be the dataset folder itself
    assert len(build_dataset(data_cfg("ade20k", tmp_path / "ADEChallengeData2016"))) == 2


def test_coco_stuff_maps_255_to_unlabeled_class(tmp_path, rng):
    base = tmp_path / "cocostuff"
    label = blocks(rng, [0, 181, 255, 96], 16, 24)
    write_image(base / "images" / "val2017" / "000000000139.jpg", rng.integers(0, 256, (16, 24, 3)))
    write_image(base / "annotations" / "val2017" / "000000000139.png", label)
    ds = build_dataset(data_cfg("coco-stuff", tmp_path), "val")
    assert ds.num_classes == 183 and ds.ignore_id == 182
    assert ds.class_names[0] == "person" and ds.class_names[181] == "wood" and ds.class_names[182] == "unlabeled"
    _, got = ds[0]
    np.testing.assert_array_equal(got.numpy(), np.where(label == 255, 182, label))


def test_cityscapes_reads_label_ids(tmp_path, rng):
    base = tmp_path / "cityscapes"
    labels = {}
    for city, frame in (("aachen", "aachen_000000_000019"), ("bremen", "bremen_000001_000019")):
        label = blocks(rng, [0, 7, 26, 33], 16, 24)
        write_image(base / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png", rng.integers(0, 256, (16, 24, 3)))
        write_image(base / "gtFine" / "train" / city / f"{frame}_gtFine_labelIds.png", label)
        write_image(base / "gtFine" / "train" / city / f"{frame}_gtFine_color.png", rng.integers(0, 256, (16, 24, 3)))
        labels[city] = label
    ds = build_dataset(data_cfg("cityscapes", tmp_path, flip=False), "train")
    assert len(ds) == 2 and ds.num_classes == 35 and ds.ignore_id == 0
    assert ds.class_names[7] == "road" and ds.class_names[26] == "car" and ds.class_names[34] == "license plate"
    assert ds.palette[26] == [0, 0, 142]
    for i, city in enumerate(["aachen", "bremen"]):
        np.testing.assert_array_equal(ds[i][1].numpy(), labels[city])


def test_folder_with_classes_txt_and_void_value(tmp_path, rng):
    (tmp_path / "classes.txt").write_text("# my classes\nsky 70 130 180\ntall grass\n\nignore_id: 255\n")
    label = blocks(rng, [0, 1, 255], 16, 24)
    write_image(tmp_path / "images" / "a.png", rng.integers(0, 256, (16, 24, 3)))
    write_image(tmp_path / "labels" / "a.png", label)
    with pytest.warns(UserWarning, match="no val/"):
        ds = build_dataset(data_cfg("folder", tmp_path), "val")
    assert ds.class_names == ["sky", "tall grass", "unlabeled"] and ds.ignore_id == 2
    assert ds.palette[0] == [70, 130, 180] and len({tuple(c) for c in ds.palette}) == 3
    np.testing.assert_array_equal(ds[0][1].numpy(), np.where(label == 255, 2, label))


def test_folder_with_classes_json_and_val_split(tmp_path, rng):
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["void", {"name": "road", "color": [1, 2, 3]}], "ignore_id": 0}))
    for sub in ("", "val/"):
        write_image(tmp_path / f"{sub}images" / "x.jpg", rng.integers(0, 256, (16, 24, 3)))
        write_image(tmp_path / f"{sub}labels" / "x.png", blocks(rng, [0, 1], 16, 24))
    ds = build_dataset(data_cfg("folder", tmp_path), "val")
    assert ds.source.pairs[0][0] == tmp_path / "val" / "images" / "x.jpg"
    assert ds.class_names == ["void", "road"] and ds.ignore_id == 0 and ds.palette[1] == [1, 2, 3]


# --------------------------------------------------------------------------------- real layouts: errors


def test_missing_layout_fails_at_construction_with_the_expected_layout(tmp_path):
    (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        build_dataset(data_cfg("ade20k", tmp_path))
    msg = str(e.value)
    assert "Found no *.jpg under" in msg and "images/training" in msg
    assert "annotations/{training,validation}/*.png" in msg and "\n" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Found no 'images' folder in .*empty or .*empty/ADEChallengeData2016"):
        build_dataset(data_cfg("ade20k", tmp_path / "empty"))


def test_cityscapes_without_label_ids_names_the_folder(tmp_path, rng):
    write_image(tmp_path / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png", rng.integers(0, 256, (8, 8, 3)))
    write_image(tmp_path / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_color.png", rng.integers(0, 256, (8, 8, 3)))
    with pytest.raises(DataError, match=r"Found no \*_gtFine_labelIds.png under .*gtFine/train"):
        build_dataset(data_cfg("cityscapes", tmp_path))


def test_image_without_label_names_both(tmp_path, rng):
    make_ade20k(tmp_path, rng, n=2)
    (tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "ADE_training_00000001.png").unlink()
    with pytest.raises(DataError) as e:
        build_dataset(data_cfg("ade20k", tmp_path))
    msg = str(e.value)
    assert "images/training/ADE_training_00000001.jpg" in msg
    assert "annotations/training/ADE_training_00000001.png" in msg


def test_label_without_image_is_reported(tmp_path, rng):
    make_ade20k(tmp_path, rng, n=1)
    write_image(tmp_path / "ADEChallengeData2016" / "annotations" / "training" / "stray.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match="stray.png"):
        build_dataset(data_cfg("ade20k", tmp_path))


def test_label_id_beyond_classes_fails_on_read_with_file_and_value(tmp_path, rng):
    make_ade20k(tmp_path, rng, n=1, values=(0, 3, 200))
    ds = build_dataset(data_cfg("ade20k", tmp_path))  # construction does not read pixels
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert "ADE_training_00000000.png" in msg and "200" in msg and "0..150" in msg


def test_folder_errors(tmp_path, rng):
    write_image(tmp_path / "images" / "a.png", rng.integers(0, 256, (8, 8, 3)))
    write_image(tmp_path / "labels" / "a.png", rng.integers(0, 256, (8, 8, 3)))  # colour-coded label
    with pytest.raises(DataError, match="classes.txt"):
        build_dataset(data_cfg("folder", tmp_path))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="single-channel"):
        build_dataset(data_cfg("folder", tmp_path, size=(8, 8)))[0]
    write_image(tmp_path / "labels" / "a.png", np.zeros((8, 6)))
    with pytest.raises(DataError, match="same size"):
        build_dataset(data_cfg("folder", tmp_path, size=(8, 8)))[0]
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(data_cfg("folder", tmp_path, classes_file=str(tmp_path / "missing.txt")))
    (tmp_path / "classes.json").write_text('{"classes": [{"name": "a", "color": 5}, "b"]}')
    with pytest.raises(DataError, match="colour of class 'a' must be three integers"):
        build_dataset(data_cfg("folder", tmp_path, classes_file=str(tmp_path / "classes.json")))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\nb\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        build_dataset(data_cfg("folder", tmp_path, classes_file=str(tmp_path / "latin1.txt")))


# --------------------------------------------------------------------------------------------- transform


def test_crop_and_flip_keep_image_and_label_aligned(tmp_path, rng):
    """Images painted from their labels with one known colour per id stay exactly that colour after many random
    crops and flips; an asymmetric map makes a flip or crop applied to one of the two show."""
    colors = np.array(distinct_colors(5))
    (tmp_path / "classes.txt").write_text("".join(f"c{i} {r} {g} {b}\n" for i, (r, g, b) in enumerate(colors)))
    for i in range(3):
        label = blocks(rng, list(range(5)), 40, 48, cell=4)
        write_image(tmp_path / "images" / f"{i}.png", colors[label])
        write_image(tmp_path / "labels" / f"{i}.png", label)
    ds = build_dataset(data_cfg("folder", tmp_path, size=(32, 32), load_size=[40, 48]), "train")
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        image, label = ds[1]
        pixels = np.rint((image.numpy().transpose(1, 2, 0) + 1) * 127.5).astype(int)
        np.testing.assert_array_equal(pixels, colors[label.numpy()])
        seen.add(label.numpy().tobytes())
    assert len(seen) > 10  # crops and flips did vary


def test_resize_keeps_alignment_away_from_edges(rng):
    colors = np.array(distinct_colors(4))
    label = blocks(rng, [0, 1, 2, 3], 48, 64, cell=8)
    transform = PairTransform((24, 24), load_size=(30, 40), train=True, flip=True)
    for seed in range(20):
        image, small = transform(colors[label].astype(np.uint8), label, np.random.default_rng(seed))
        assert image.shape == (24, 24, 3) and small.shape == (24, 24)
        interior = np.ones_like(small, bool)  # pixels whose 3x3 neighbourhood is one class
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= np.roll(small, (dy, dx), (0, 1)) == small
        interior[[0, -1]] = interior[:, [0, -1]] = False
        assert interior.sum() > 100
        np.testing.assert_allclose(image[interior], colors[small[interior]], atol=2)


def test_validation_transform_is_a_deterministic_centre_crop(rng):
    label = rng.integers(0, 5, (10, 12))
    image = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    transform = PairTransform((6, 8), load_size=(10, 12), train=False)
    out_image, out_label = transform(image, label, np.random.default_rng(1))
    np.testing.assert_array_equal(out_label, label[2:8, 2:10])
    np.testing.assert_array_equal(out_image, image[2:8, 2:10])
    with pytest.raises(ValueError, match="load_size"):
        PairTransform((16, 16), load_size=(8, 32))


# ------------------------------------------------------------------------------------------ class lists


def test_builtin_class_lists():
    ade, coco, city = load_builtin("ade20k"), load_builtin("coco-stuff"), load_builtin("cityscapes")
    assert (len(ade), len(coco), len(city)) == (151, 183, 35)
    assert ade.names[2] == "building" and ade.palette[1] == (120, 120, 120)
    assert coco.names[11] == "street sign" and coco.names[91] == "banner" and coco.lut()[255] == 182
    assert city.names[23] == "sky" and city.palette[23] == (70, 130, 180) and city.raw[34] is None
    assert (city.lut()[:34] == np.arange(34)).all() and (city.lut()[34:] == -1).all()
    with pytest.raises(DataError, match="known"):
        load_builtin("pascal")


def test_read_classes_file_formats(tmp_path):
    txt = tmp_path / "classes.txt"
    txt.write_text("traffic light 250 170 30\ncar\nignore_id = 1\n")
    cl = read_classes_file(txt)
    assert cl.names == ("traffic light", "car") and cl.ignore_id == 1 and cl.palette[0] == (250, 170, 30)
    js = tmp_path / "classes.json"
    js.write_text(json.dumps({"classes": [{"name": "a", "color": [0, 0, 300]}]}))
    with pytest.raises(DataError, match="0..255"):
        read_classes_file(js)
    js.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_classes_file(js)


def test_distinct_colors_are_spread_and_stable():
    c = np.array(distinct_colors(32, 40, 215))
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(32) * 1e9
    assert d.min() > 50 and c.min() >= 40 and c.max() <= 215
    assert distinct_colors(40)[:10] == distinct_colors(10)


# ------------------------------------------------------------------------------------------- visualize


def test_colorize_and_grid(tmp_path, scenes):
    image, label = scenes.render(0)
    colored = colorize(label, scenes.palette)
    np.testing.assert_array_equal(colored[5, 7], scenes.palette[label[5, 7]])
    with pytest.raises(ValueError, match="palette"):
        colorize(label, scenes.palette[:2])
    path = save_grid([[image, colored], [image]], tmp_path / "grid" / "g.png", pad=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 + 2 * 66, 2 + 2 * 66, 3)
    np.testing.assert_array_equal(grid[2:66, 68:132], colored)
    np.testing.assert_array_equal(grid[68:132, 68:132], 255)  # the missing cell stays background
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temporary file left behind
    np.testing.assert_array_equal(make_grid([[image]], pad=0), image)


def test_sample_grid_of_16_scenes(scenes):
    """Writes /tmp/synthetic_grid.png (image | colourised label, 16 scenes) for a person to look at."""
    rows = []
    for r in range(4):
        row = []
        for c in range(4):
            image, label = scenes.render(r * 4 + c)
            row += [image, colorize(label, scenes.palette)]
        rows.append(row)
    path = save_grid(rows, Path("/tmp/synthetic_grid.png"))
    assert Image.open(path).size == (2 + 8 * 66, 2 + 4 * 66)


def test_numpy_only_modules_import_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import train.data, train.data.synthetic, train.data.sources, train.data.transforms, train.data.visualize, "
        "train.metrics\n"
        "scenes = train.data.SyntheticScenes()\n"
        "image, label = scenes.render(0)\n"
        "assert train.metrics.label_consistency(image, label, scenes) > 0.9\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
