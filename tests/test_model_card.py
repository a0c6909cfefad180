"""MODEL_CARD.md: written into every artifact by export, from the run's config and metrics and the manifest; the
training data's terms follow the dataset (Cityscapes: non-commercial)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_artifacts import TINY, tiny_classes, tiny_generator

from export.api import export_generator
from export.model_card import CARD_NAME, DATA_TERMS, model_card, read_run
from runtimes import load_predictor
from runtimes.spec import ClassInfo, FileEntry, Manifest
from train.checkpoint import GeneratorInfo, save_generator
from train.config import load_config, save_config


def manifest(dataset: str = "cityscapes", precision: str = "int8", target: str = "openvino", **extra) -> Manifest:
    classes = [ClassInfo(0, "unlabeled", [0, 0, 0]), ClassInfo(1, "road", [128, 64, 128]),
               ClassInfo(2, "sky", [70, 130, 180])]
    fields = dict(
        target=target, precision=precision, input_size=[256, 512], num_classes=3, classes=classes,
        noise_shape=[16, 64], files=[FileEntry("model.xml", "0" * 64, 10), FileEntry("model.bin", "1" * 64, 20)],
        ignore_id=0, batch={"min": 1, "opt": 1, "max": 8},
        quality={"psnr_db": 38.61, "max_abs_error": 0.21, "samples": 64,
                 "kept_high_precision": {"level": "+ context MLPs", "layers": ["a", "b", "c"], "attempts": []},
                 "measured_with": "OpenVINO CPU, INFERENCE_PRECISION_HINT=f32"},
        calibration={"source": "dataset:/runs/city/config.yaml", "samples": 192, "held_out": 64, "seed": 1009,
                     "method": "nncf.quantize (performance preset)"},
        trained_on={"dataset": dataset, "step": 200000, "image_size": [256, 512],
                    "checkpoint": "generator_ema.safetensors"})
    fields.update(extra)
    return Manifest(**fields)


def test_a_cityscapes_artifact_inherits_the_non_commercial_terms():
    card = model_card(manifest("cityscapes"), run_name="city")
    terms = card.split("## Training data and its licence")[1].split("## ")[0]
    assert "Non-commercial use only" in terms and "https://www.cityscapes-dataset.com/license/" in terms
    intended = card.split("## Intended use")[1].split("## ")[0]
    assert "images of cityscapes scenes" in intended and "Out of scope" in intended


@pytest.mark.parametrize("dataset, words", [
    ("ade20k", ["BSD 3-Clause", "SUN and Places", "owners' copyright"]),
    ("coco-stuff", ["Creative Commons Attribution 4.0", "Flickr", "non-commercial"]),
    ("synthetic", ["no licence constraints", "procedural"]),
    ("synthetic-photo", ["skimage.data", "public domain", "CC0"]),
    ("folder", ["not known to dp-sims"]),
    ("mystery", ["Unknown to dp-sims"]),
])
def test_each_dataset_names_its_own_terms(dataset, words):
    terms = model_card(manifest(dataset), run_name="r").split("## Training data and its licence")[1].split("## ")[0]
    for word in words:
        assert word in terms, (dataset, word, terms)
    assert "Non-commercial use only" not in terms


def test_the_card_holds_the_quality_numbers_limits_and_how_to_run():
    card = model_card(manifest(), run_name="city", parameters=54_321_000,
                      last_eval={"step": 200000, "label_consistency": 0.4321})
    quality = card.split("## Quality")[1].split("## ")[0]
    assert "**38.61 dB** on 64 held-out label maps from dataset:/runs/city/config.yaml" in quality
    assert "OpenVINO CPU, INFERENCE_PRECISION_HINT=f32" in quality and "max abs error 0.21" in quality
    assert 'passed at level "+ context MLPs" with 3 layers kept in float' in quality
    assert "192 label maps" in quality and "at step 200000: 0.4321" in quality
    assert "54.32 M parameters" in card
    assert "label maps must be 256x512" in card and "id 0 is the dataset's ignore/unlabeled class" in card
    assert "Reduced precision (int8)" in card
    assert "pip install 'dp-sims[openvino,runtime]'" in card and "python -m runtimes generate --model" in card
    assert "| 1 | road | #804080 |" in card and "`model.xml`, `model.bin`" in card
    assert "noise` float32 [N, 16, 64]" in card and "batch 1..8" in card


def test_a_synthetic_label_consistency_report_and_an_fp32_check():
    card = model_card(manifest("synthetic", precision="int8", target="onnx", quality={
        "psnr_db": None, "max_abs_error": 0.0, "samples": 4, "label_consistency": 0.9, "label_consistency_reference": 0.91,
        "label_consistency_delta": -0.01}), run_name="tiny")
    assert "**identical**" in card and "0.9000, FP32 0.9100 (delta -0.0100)" in card
    assert "A demonstration and test model" in card and "fixed classifier of the synthetic classes" in card
    photo = model_card(manifest("synthetic-photo", precision="int8", target="onnx", quality={
        "psnr_db": 30.7, "samples": 4, "label_consistency": 0.84, "label_consistency_reference": 0.84,
        "label_consistency_delta": 0.0}, calibration={"source": "synthetic-photo", "held_out": 4}), run_name="photo")
    assert "classifier of the photographic classes fitted on real scenes" in photo and "textures cut from" in photo
    fp32 = model_card(manifest("synthetic", precision="fp32", target="onnx",
                               quality={"max_abs_error_vs_torch": 2e-6, "measured_with": "ONNX Runtime CPU"}),
                      run_name="tiny")
    assert "max abs error 2e-06 (ONNX Runtime CPU)" in fp32 and "Reduced precision" not in fp32


def test_read_run_tolerates_missing_and_broken_files(tmp_path):
    assert read_run(None) == ({}, None)
    assert read_run(tmp_path / "config.yaml") == ({}, None)
    (tmp_path / "config.yaml").write_text("name: x\n  bad: [\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss_d": 1}\n{"step": 10, "label_consistency": 0.5}\nnot json\n')
    assert read_run(tmp_path / "config.yaml") == ({}, {"step": 10, "label_consistency": 0.5})


def test_export_writes_the_card_from_the_run_folder_and_leaves_it_out_of_the_hashes(tmp_path):
    """A Cityscapes run folder (config.yaml, metrics.jsonl, checkpoints/) exported to ONNX FP32: the card names the
    run, its config and terms, the measured error and the run's label consistency; editing the card does not
    break the artifact (the manifest does not hash it)."""
    run = tmp_path / "run-city"
    ckpt = run / "checkpoints" / "step_0000042"
    ckpt.mkdir(parents=True)
    classes = tiny_classes()
    info = GeneratorInfo(num_classes=len(classes), generator=TINY, image_size=[32, 32],
                         class_names=[c.name for c in classes], palette=[c.color for c in classes],
                         dataset="cityscapes", step=42)
    save_generator(ckpt / "generator_ema.safetensors", tiny_generator(), info)
    (ckpt / "state.json").write_text("{}")
    (run / "checkpoints" / "last").write_text(ckpt.name)
    save_config(load_config("synthetic-tiny", ["model.generator.base_channels=8"]), run / "config.yaml")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 42, "loss_d": 1.0, "label_consistency": 0.125}) + "\n")

    out = tmp_path / "art"
    report = export_generator(run, "onnx", "fp32", calib_samples=4, out=out, log=lambda m: None)
    card = (out / CARD_NAME).read_text()
    assert card.startswith("# Model card: run-city: onnx fp32, 32x32")
    assert "(config `synthetic-tiny`)" in card and "42 steps, dataset `cityscapes`" in card
    assert DATA_TERMS["cityscapes"][1] in card
    assert "`base_channels=8`" in card and "M parameters" in card
    assert "Against the float torch model: max abs error" in card
    assert "Training run's label consistency at step 42: 0.1250" in card
    assert "pip install 'dp-sims[onnx,runtime]'" in card
    assert CARD_NAME not in {f.path for f in report.manifest.files}
    (out / CARD_NAME).write_text(card + "\nEdited by hand.\n")
    with load_predictor(out) as predictor:  # verifies every hashed file
        assert predictor.generate(np.zeros((32, 32), np.int32), seed=0).shape == (32, 32, 3)
