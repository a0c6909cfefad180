"""The calibration package: sets from every source (synthetic, blocks, folders of PNG/.npy maps, dataset presets),
their noise and split, the quality numbers (PSNR, label consistency) and the adapters each quantizer reads.
numpy, pillow, onnxruntime and nncf only: no model is exported here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from calibration import (
    CalibrationSet,
    compare,
    compare_images,
    draw_noise,
    load_calibration_set,
    psnr,
    run_all,
)
from calibration.adapters import modelopt_arrays, nncf_dataset, ort_reader
from calibration.sets import BLOCKS, DEFAULT_SEED, SYNTHETIC
from dpsims.errors import DataError
from train.data.synthetic import SyntheticScenes

NOISE_SHAPE = (4, 8)
SIZE = (32, 32)


def synthetic(samples: int = 8, seed: int = 3, classes: int = 5, size=SIZE) -> CalibrationSet:
    return load_calibration_set(SYNTHETIC, classes, size, NOISE_SHAPE, samples, seed)


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_set_is_the_seeded_scenes():
    data = synthetic(samples=6, seed=3)
    assert len(data) == 6 and data.input_size == SIZE and data.source == SYNTHETIC and data.seed == 3
    assert data.labels.dtype == np.int32 and data.labels.shape == (6, 32, 32)
    scenes = SyntheticScenes(5, SIZE, 3)
    np.testing.assert_array_equal(data.labels, np.stack([scenes.label(i) for i in range(6)]))
    assert data.labels.min() >= 0 and data.labels.max() <= 4 and len(np.unique(data.labels)) >= 3
    assert data.scenes is not None and data.scenes.num_classes == 5  # label consistency is measurable
    assert data.summary() == {"source": SYNTHETIC, "samples": 6, "seed": 3}


def test_synthetic_set_is_deterministic_per_seed():
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.noise, b.noise)
    assert (a.labels != c.labels).mean() > 0.2
    assert not np.allclose(a.noise, c.noise)
    # a longer set starts with the shorter one (scene i depends on (seed, i) only)
    np.testing.assert_array_equal(synthetic(samples=12, seed=3).labels[:8], a.labels)


@pytest.mark.parametrize("seed", [0, 3, DEFAULT_SEED])
def test_sample_i_has_the_noise_the_predictor_draws_for_seed_plus_i(seed):
    """Sample i of a set of seed s is fed what predictor.generate(map_i, seed=s + i) feeds the graph."""
    data = synthetic(samples=5, seed=seed)
    expected = np.stack([np.random.default_rng(seed + i).standard_normal(NOISE_SHAPE, dtype=np.float32) for i in range(5)])
    assert data.noise.dtype == np.float32 and data.noise.shape == (5, 4, 8)
    np.testing.assert_array_equal(data.noise, expected)
    np.testing.assert_array_equal(draw_noise(5, NOISE_SHAPE, seed), expected)
    np.testing.assert_array_equal(synthetic(samples=3, seed=seed + 2).noise, expected[2:])  # a shifted seed, shifted rows
    assert abs(float(data.noise.mean())) < 0.3 and 0.7 < float(data.noise.std()) < 1.3


@pytest.mark.parametrize("classes,size", [(1, SIZE), (65, SIZE), (5, (4, 4))])
def test_synthetic_refuses_what_the_scenes_cannot_draw(classes, size):
    with pytest.raises(DataError, match="Synthetic calibration maps cannot be drawn"):
        synthetic(classes=classes, size=size)


def test_samples_must_be_positive():
    with pytest.raises(DataError, match="at least 1"):
        synthetic(samples=0)


# ------------------------------------------------------------------------------------------ split, batches


@pytest.mark.parametrize("samples,held", [(16, 4), (8, 2), (10, 2), (4, 1), (2, 1), (256, 64)])
def test_split_holds_out_the_last_quarter(samples, held):
    data = CalibrationSet(np.arange(samples)[:, None, None].repeat(2, 1).repeat(2, 2),
                          np.arange(samples, dtype=np.float32)[:, None], "test", 0)
    calib, held_out = data.split()
    assert (len(calib), len(held_out)) == (samples - held, held)
    np.testing.assert_array_equal(np.concatenate([calib.labels, held_out.labels]), data.labels)
    np.testing.assert_array_equal(held_out.noise[:, 0], np.arange(samples - held, samples))  # noise stays paired
    assert held_out.source == "test" and held_out.seed == 0


def test_split_keeps_the_scenes_and_needs_two_samples():
    data = synthetic(samples=8)
    assert data.split()[1].scenes is data.scenes
    with pytest.raises(DataError, match="at least 2 label maps.*gave 1"):
        synthetic(samples=1).split()


def test_batches_follow_the_graph_contract():
    data = synthetic(samples=7)
    batches = list(data.batches(3))
    assert [len(b["label"]) for b in batches] == [3, 3, 1]
    assert all(set(b) == {"label", "noise"} for b in batches)
    assert all(b["label"].dtype == np.int32 and b["noise"].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), data.labels)
    np.testing.assert_array_equal(np.concatenate([b["noise"] for b in batches]), data.noise)


def test_calibration_set_validates_its_arrays():
    with pytest.raises(DataError):
        CalibrationSet(np.zeros((2, 4, 4)), np.zeros((3, 2)), "x", 0)  # one noise row per map
    with pytest.raises(DataError):
        CalibrationSet(np.zeros((4, 4)), np.zeros((1, 2)), "x", 0)  # maps are [S, H, W]
    with pytest.raises(DataError):
        CalibrationSet(np.zeros((0, 4, 4)), np.zeros((0, 2)), "x", 0)


# ---------------------------------------------------------------------------------------------------- blocks


def test_blocks_cover_every_class_in_range():
    data = load_calibration_set(BLOCKS, 7, SIZE, NOISE_SHAPE, 8, seed=5)
    assert data.source == BLOCKS and data.scenes is None and data.labels.shape == (8, 32, 32)
    assert set(np.unique(data.labels)) == set(range(7))
    # 4x4-pixel cells (32 // 8) of one class each
    cells = data.labels.reshape(8, 8, 4, 8, 4)
    assert (cells == cells[:, :, :1, :, :1]).all()
    np.testing.assert_array_equal(data.noise, draw_noise(8, NOISE_SHAPE, 5))
    again = load_calibration_set(BLOCKS, 7, SIZE, NOISE_SHAPE, 8, seed=5)
    np.testing.assert_array_equal(again.labels, data.labels)
    other = load_calibration_set(BLOCKS, 7, SIZE, NOISE_SHAPE, 8, seed=6)
    assert not np.array_equal(other.labels, data.labels)


def test_blocks_with_many_classes_and_odd_size():
    data = load_calibration_set(BLOCKS, 151, (24, 40), NOISE_SHAPE, 4, seed=0)
    assert data.labels.shape == (4, 24, 40) and data.labels.min() >= 0 and data.labels.max() <= 150
    assert len(np.unique(data.labels)) > 50


# ---------------------------------------------------------------------------------------------------- folder


PALETTE = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 20], [10, 10, 10]]


def test_folder_reads_png_and_npy_and_resizes_nearest(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 5, (16, 16)).astype(np.uint8)  # palette PNG, upsampled x2
    image = Image.fromarray(small, mode="P")
    image.putpalette([v for color in PALETTE for v in color])
    image.save(tmp_path / "a.png")
    grey = rng.integers(0, 5, (32, 32)).astype(np.uint8)  # L-mode PNG at the input size
    Image.fromarray(grey, mode="L").save(tmp_path / "b.png")
    big = rng.integers(0, 5, (64, 64)).astype(np.int64)  # .npy, downsampled x2
    np.save(tmp_path / "c.npy", big)
    coloured = rng.integers(0, 5, (32, 32))  # RGB PNG in the model's palette colours
    Image.fromarray(np.asarray(PALETTE, np.uint8)[coloured], mode="RGB").save(tmp_path / "d.png")
    (tmp_path / "notes.txt").write_text("not a label map")

    data = load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, samples=10, seed=2, palette=PALETTE)
    assert len(data) == 4 and data.source == f"folder:{tmp_path}" and data.scenes is None
    assert data.labels.dtype == np.int32 and data.labels.shape == (4, 32, 32)
    np.testing.assert_array_equal(data.labels[0], small.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(data.labels[1], grey)
    np.testing.assert_array_equal(data.labels[2], big[1::2, 1::2])  # nearest: pixel centres 1, 3, 5, ...
    np.testing.assert_array_equal(data.labels[3], coloured)
    np.testing.assert_array_equal(data.noise, draw_noise(4, NOISE_SHAPE, 2))  # one noise row per map found

    first_two = load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, samples=2, seed=2, palette=PALETTE)
    np.testing.assert_array_equal(first_two.labels, data.labels[:2])  # sorted by name, the first `samples`
    non_square = load_calibration_set(tmp_path, 5, (8, 16), NOISE_SHAPE, samples=1, seed=2)
    np.testing.assert_array_equal(non_square.labels[0], small[1::2, :])  # 16x16 -> 8x16: odd rows, every column


@pytest.mark.parametrize("bad_id", [5, 255])
def test_folder_rejects_ids_out_of_range(tmp_path, bad_id):
    labels = np.zeros((8, 8), np.uint8)
    labels[3, 4] = bad_id
    Image.fromarray(labels, mode="L").save(tmp_path / "x.png")
    with pytest.raises(DataError, match=rf"x\.png: class ids must lie in 0\.\.4; found \[{bad_id}\]"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0)


def test_folder_rejects_negative_npy_ids_and_float_maps(tmp_path):
    np.save(tmp_path / "neg.npy", np.full((8, 8), -1, np.int32))
    with pytest.raises(DataError, match="class ids must lie in 0..4"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0)
    (tmp_path / "neg.npy").unlink()
    np.save(tmp_path / "float.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match="integer class ids"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0)


def test_folder_rejects_colours_outside_the_palette(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:] = PALETTE[1]
    rgb[0, 0] = [1, 2, 3]
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png.*\[1, 2, 3\]"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0, palette=PALETTE)
    with pytest.raises(DataError, match="no palette"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0, palette=None)


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="holds no label maps"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "photo.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="holds no label maps"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0)


def test_unreadable_png_is_a_data_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_calibration_set(tmp_path, 5, SIZE, NOISE_SHAPE, 4, 0)


# --------------------------------------------------------------------------------------------------- dataset


def test_dataset_preset_reads_its_validation_labels():
    data = load_calibration_set("synthetic-tiny", 8, SIZE, NOISE_SHAPE, samples=3, seed=1)
    assert len(data) == 3 and data.source == "dataset:synthetic-tiny" and data.labels.shape == (3, 32, 32)
    assert data.labels.min() >= 0 and data.labels.max() <= 7
    with pytest.raises(DataError, match="has 8 classes, the generator 5"):
        load_calibration_set("synthetic-tiny", 5, SIZE, NOISE_SHAPE, samples=3)


def test_unknown_source_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not 'synthetic', an existing folder, or a dataset config"):
        load_calibration_set(tmp_path / "no-such-folder", 5, SIZE, NOISE_SHAPE, 4)
    (tmp_path / "map.png").write_bytes(b"")
    with pytest.raises(DataError, match="map.png is a file: give a folder of label maps"):
        load_calibration_set(tmp_path / "map.png", 5, SIZE, NOISE_SHAPE, 4)
    with pytest.raises(DataError, match="python -m export has no --set: give the training run's RUN/config.yaml"):
        load_calibration_set("ade20k-256", 151, SIZE, NOISE_SHAPE, 4)


# ------------------------------------------------------------------------------------------------- compare


def test_psnr_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    assert psnr(a, a.copy()) == math.inf
    assert psnr(np.zeros(16), np.full(16, 0.1)) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)  # 26.0206
    assert psnr(np.zeros(16), np.full(16, 0.1)) == pytest.approx(26.0206, abs=1e-4)
    noise = rng.normal(0, 0.02, a.shape)
    mse = float(np.mean(noise**2))
    assert psnr(a, a + noise) == pytest.approx(10 * math.log10(4 / mse), abs=1e-6)
    assert 39.0 < psnr(a, a + noise) < 41.0  # sigma 0.02 of a peak-to-peak 2: ~40 dB
    assert psnr(np.zeros(4), np.full(4, 25.5), peak_to_peak=255.0) == pytest.approx(20.0)


def test_compare_images_reports_errors():
    ref = np.zeros((3, 3, 4, 4), np.float32)
    cand = ref.copy()
    cand[0, 0, 0, 0] = 0.5
    report = compare_images(ref, cand)
    assert report["max_abs_error"] == 0.5 and report["samples"] == 3
    assert report["mean_abs_error"] == pytest.approx(0.5 / ref.size, abs=1e-6)
    assert report["psnr_db"] == pytest.approx(10 * math.log10(4 / (0.25 / ref.size)), abs=0.01)
    assert report["label_consistency_delta"] is None  # no synthetic scenes given
    assert compare_images(ref, ref)["psnr_db"] is None  # identical: no finite PSNR (JSON has no inf)
    with pytest.raises(ValueError, match="differ in shape"):
        compare_images(ref, ref[:2])


def painter(scenes: SyntheticScenes):
    """A runner that paints each map as the synthetic scenes do: label consistency near 1."""

    def run(batch):
        images = np.stack([scenes.paint(label) for label in batch["label"]])
        return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0

    return run


def test_compare_measures_label_consistency_on_synthetic_maps():
    data = synthetic(samples=4, seed=3)
    calls = []

    def grey(batch):
        calls.append(len(batch["label"]))
        return np.zeros((len(batch["label"]), 3, *SIZE), np.float32)

    report = compare(painter(data.scenes), grey, data, batch_size=3)
    assert calls == [3, 1]
    assert report["label_consistency_reference"] > 0.9
    assert report["label_consistency"] < 0.5
    assert report["label_consistency_delta"] == pytest.approx(
        report["label_consistency"] - report["label_consistency_reference"], abs=1e-4)
    same = compare(painter(data.scenes), painter(data.scenes), data)
    assert same["psnr_db"] is None and same["label_consistency_delta"] == 0.0


def test_run_all_concatenates_batches_in_order():
    data = synthetic(samples=5)
    out = run_all(lambda b: b["label"][:, None].astype(np.float64).repeat(3, 1), data, batch_size=2)
    assert out.dtype == np.float32 and out.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(out[:, 1], data.labels)


def test_torch_runner_runs_a_module_without_grad():
    import torch

    from calibration import torch_runner

    class Echo(torch.nn.Module):
        def forward(self, label, noise):
            assert not torch.is_grad_enabled()
            return (label[:, None].float() + noise.mean()).repeat(1, 3, 1, 1).double()

    data = synthetic(samples=2)
    out = torch_runner(Echo())(next(data.batches(2)))
    assert out.dtype == np.float32 and out.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(out[:, 0], data.labels + data.noise.mean(), rtol=1e-5)


# -------------------------------------------------------------------------------------------------- adapters


def test_ort_reader_yields_every_batch_and_rewinds():
    data = synthetic(samples=5)
    reader = ort_reader(data, batch_size=2)
    from onnxruntime.quantization import CalibrationDataReader

    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3

    def drain():
        out = []
        while (item := reader.get_next()) is not None:
            out.append(item)
        return out

    first = drain()
    assert [len(b["label"]) for b in first] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in first]), data.labels)
    np.testing.assert_array_equal(np.concatenate([b["noise"] for b in first]), data.noise)
    assert reader.get_next() is None  # stays exhausted
    reader.rewind()
    second = drain()
    assert len(second) == 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["noise"], b["noise"])
    single = ort_reader(data)
    assert len(single) == 5 and single.get_next()["label"].shape == (1, 32, 32)


def test_nncf_dataset_has_one_item_per_batch():
    data = synthetic(samples=6)
    dataset = nncf_dataset(data)
    assert dataset.get_length() == 6
    items = list(dataset.get_inference_data())
    assert len(items) == 6 and all(set(i) == {"label", "noise"} and len(i["label"]) == 1 for i in items)
    np.testing.assert_array_equal(np.concatenate([i["label"] for i in items]), data.labels)
    assert nncf_dataset(data, batch_size=4).get_length() == 2


def test_modelopt_arrays_are_the_whole_set():
    data = synthetic(samples=3)
    arrays = modelopt_arrays(data)
    assert set(arrays) == {"label", "noise"}
    assert arrays["label"].dtype == np.int32 and arrays["noise"].dtype == np.float32
    np.testing.assert_array_equal(arrays["label"], data.labels)
    np.testing.assert_array_equal(arrays["noise"], data.noise)
