"""One label map and one seed give one image, whichever path generates it: a training run's sample grid, its
label consistency, ``train.evaluate`` of the checkpoint, the export's calibration reference, and the exported
generator opened with ``load_predictor`` (ONNX Runtime here; the torch.export artifact in the slow variant).

Map ``i`` of a batch generated with ``seed=s`` is the image of seed ``s + i`` (runtimes.noise), everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_artifacts import save_tiny_checkpoint

from runtimes import load_predictor, to_uint8

pytest.importorskip("onnxruntime")

OVERRIDES = ["data.num_classes=5", "data.image_size=[32,32]", "data.val_length=8"]
PAD = 2  # train.data.visualize.save_grid's padding and border
SEEDS = [3, 4]  # the sample grid's eval.sample_seeds
MAPS = 3


def quiet(*_: object) -> None:
    pass


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("generation_path") / "generator_ema.safetensors")


@pytest.fixture(scope="module")
def val_set():
    from train.config import load_config
    from train.data import build_dataset

    return build_dataset(load_config("synthetic-tiny", OVERRIDES).data, "val")


@pytest.fixture(scope="module")
def run_predictor(checkpoint):
    """What the training loop samples with: the EMA generator in memory behind a Predictor."""
    from train.checkpoint import load_generator
    from train.predictor import generator_predictor

    return generator_predictor(*load_generator(checkpoint))


def export(checkpoint: Path, target: str, out: Path) -> Path:
    from export.api import export_generator

    return export_generator(checkpoint, target, "fp32", calib_samples=4, out=out, log=quiet).out_dir


def grid_cell(grid: np.ndarray, row: int, column: int, size: tuple[int, int]) -> np.ndarray:
    y, x = PAD + row * (size[0] + PAD), PAD + column * (size[1] + PAD)
    return grid[y : y + size[0], x : x + size[1]]


def test_one_map_and_seed_give_one_image_on_every_path(checkpoint, val_set, run_predictor, tmp_path):
    from PIL import Image

    from train import evaluate as ev
    from train.config import EvalConfig
    from train.samples import held_out_labels, write_sample_grid

    labels = held_out_labels(val_set, MAPS)
    size = run_predictor.input_size
    # the run's sample path: the grid the training loop writes (row i: label | seed s of map i = seed s + i)
    path = write_sample_grid(run_predictor, val_set, tmp_path / "grid.png", EvalConfig(sample_seeds=SEEDS, sample_maps=MAPS))
    grid = np.asarray(Image.open(path).convert("RGB"))
    # train.evaluate's generation of the checkpoint file (the function its streamed passes call)
    evaluated = ev.open_checkpoint(checkpoint, "cpu")
    onnx = load_predictor(export(checkpoint, "onnx", tmp_path / "onnx"), device="cpu")
    try:
        for column, s in enumerate(SEEDS, start=1):
            by_evaluate = evaluated.generate(labels, s)
            for i in range(MAPS):
                seed = s + i
                reference = run_predictor.generate_raw(labels[i], seed=seed)  # one map, its own seed
                assert np.abs(run_predictor.generate_raw(labels[i], seed=seed + 100) - reference).max() > 1e-2, \
                    "another seed must give another image, or this test could not tell seeds apart"
                cell = grid_cell(grid, i, column, size)
                assert np.abs(cell.astype(int) - to_uint8(reference).astype(int)).max() <= 1  # rounding, batch of 3
                np.testing.assert_allclose(by_evaluate[i], reference, rtol=0, atol=1e-5)
                np.testing.assert_allclose(onnx.generate_raw(labels[i], seed=seed), reference, rtol=0, atol=1e-4)
        # within one batch the sample path and the predictor are the same computation: bit for bit
        np.testing.assert_array_equal(grid_cell(grid, 1, 2, size), run_predictor.generate(labels, seed=SEEDS[1])[1])
    finally:
        evaluated.close()
        onnx.close()


def test_training_label_consistency_is_the_evaluation_of_the_same_maps_and_seed(run_predictor, val_set):
    """The score the loop logs as label_consistency and train.evaluate's score of seed 0 on the same maps."""
    from train import evaluate as ev
    from train.config import load_config
    from train.samples import label_consistency_of_generator

    logged = label_consistency_of_generator(run_predictor, val_set, samples=6, seed=0)
    evaluation = ev.Evaluation(load_config("synthetic-tiny", OVERRIDES).data, seeds=1, limit=6, features=None, log=quiet)
    source = ev.predictor_source(run_predictor, "checkpoint", Path("memory"), Path("unused.json"))
    measured = evaluation(source)["metrics"]["label_consistency"]["per_seed"][0]
    assert logged == pytest.approx(measured, abs=1e-12)
    assert label_consistency_of_generator(run_predictor, val_set, samples=6, seed=1) != pytest.approx(logged, abs=1e-6)


def test_calibration_samples_are_the_predictors_images_of_their_seeds(checkpoint, run_predictor):
    """The export's quality reference runs the FP32 generator on calibration sample k: that is the image of its
    map with seed calibration_seed + k."""
    from calibration import load_calibration_set, torch_runner
    from train.checkpoint import load_generator

    generator, info = load_generator(checkpoint)
    data = load_calibration_set("synthetic", info.num_classes, tuple(info.image_size), generator.noise_shape,
                                samples=4, seed=11)
    reference = torch_runner(generator)({"label": data.labels, "noise": data.noise})
    for k in range(len(data)):
        np.testing.assert_allclose(reference[k], run_predictor.generate_raw(data.labels[k], seed=11 + k),
                                   rtol=0, atol=1e-5)


def test_the_run_predictor_runs_the_live_module_as_it_is(val_set):
    """The in-memory backend uses the module itself: a weight the training step changes shows in the next
    image, the module keeps its mode, and closing the predictor leaves the module to its owner."""
    import torch
    from runtime_artifacts import tiny_classes, tiny_generator

    from train.checkpoint import GeneratorInfo
    from train.predictor import generator_predictor
    from train.samples import held_out_labels

    generator, classes = tiny_generator(), tiny_classes()
    info = GeneratorInfo(num_classes=len(classes), generator=generator.cfg, image_size=[32, 32],
                         class_names=[c.name for c in classes], palette=[c.color for c in classes])
    predictor = generator_predictor(generator, info, max_batch=2)
    labels = held_out_labels(val_set, 3)
    before = predictor.generate_raw(labels, seed=0)
    with torch.no_grad():
        expected = generator(torch.from_numpy(labels).int(), torch.from_numpy(predictor.sample_noise([0, 1, 2])))
    np.testing.assert_allclose(before, expected.numpy(), rtol=0, atol=1e-5)
    with torch.no_grad():
        generator.to_rgb.bias.add_(0.5)  # what an optimiser step does to the module in place
    assert np.abs(predictor.generate_raw(labels, seed=0) - before).max() > 1e-2
    assert not generator.training
    predictor.close()
    assert generator(torch.from_numpy(labels[:1]), torch.zeros(1, *generator.noise_shape)).shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_the_torch_export_artifact_gives_the_same_image(checkpoint, val_set, run_predictor, tmp_path):
    """torch.export (about 20 s): load_predictor's torch backend on the .pt2 gives the run's image."""
    from train.samples import held_out_labels

    labels = held_out_labels(val_set, MAPS)
    with load_predictor(export(checkpoint, "torch", tmp_path / "torch"), device="cpu") as program:
        assert program.info()["backend"]["backend"] == "TorchBackend"
        for i in range(MAPS):
            np.testing.assert_allclose(program.generate_raw(labels[i], seed=7 + i),
                                       run_predictor.generate_raw(labels[i], seed=7 + i), rtol=0, atol=1e-5)
        np.testing.assert_allclose(program.generate_raw(labels, seed=7), run_predictor.generate_raw(labels, seed=7),
                                   rtol=0, atol=1e-5)
