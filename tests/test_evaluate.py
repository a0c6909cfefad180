"""``python -m train.evaluate``: checkpoint and artifact give the same numbers, FID/KID code path with a stand-in
feature extractor, the skip messages, an ONNX segmenter's mIoU, and clean exit codes on bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from runtime_artifacts import save_tiny_checkpoint

from train import evaluate as ev
from train.config import load_config
from train.errors import ConfigError
from train.eval_metrics import (
    INCEPTION_URL,
    EvaluationError,
    OnnxSegmenter,
    extract_features,
    fid_kid,
    load_inception,
    pixel_diversity,
)

pytest.importorskip("torchmetrics")
pytest.importorskip("onnxruntime")

OVERRIDES = ["data.num_classes=5", "data.image_size=[32,32]", "data.val_length=8"]
CLI_DATA = ["--data", "synthetic-tiny", *[a for o in OVERRIDES for a in ("--set", o)]]


def quiet(*_: object) -> None:
    pass


def stand_in_features(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> 15 cheap features (2x2 pooled colour means, channel stds): FID without Inception."""
    x = x.float() / 255.0
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
    return torch.cat([pooled, x.flatten(2).std(-1)], 1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("eval_ckpt") / "generator_ema.safetensors")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, checkpoint) -> Path:
    from export.api import export_generator

    out = tmp_path_factory.mktemp("eval_artifact") / "onnx-fp32"
    return export_generator(checkpoint, "onnx", "fp32", calib_samples=4, out=out, log=quiet).out_dir


@pytest.fixture(scope="module")
def data_cfg():
    return load_config("synthetic-tiny", OVERRIDES).data


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    """A tiny conv net exported to ONNX with the accepted graph (dynamic batch, 5-class logits at input size)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1)).eval()
    path = tmp_path_factory.mktemp("segmenter") / "seg.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def test_checkpoint_and_artifact_agree(checkpoint, artifact, data_cfg):
    reports = {}
    for name, source in (("run", ev.open_checkpoint(checkpoint, "cpu")), ("model", ev.open_artifact(artifact, "cpu"))):
        try:
            reports[name] = ev.evaluate(source, data_cfg, seeds=2, feature_extractor=stand_in_features, log=quiet)
        finally:
            source.close()
    a, b = reports["run"]["metrics"], reports["model"]["metrics"]
    assert reports["run"]["data"]["images"] == reports["model"]["data"]["images"] == 8
    assert abs(a["label_consistency"]["mean"] - b["label_consistency"]["mean"]) < 1e-3
    assert a["label_consistency"]["real"] > 0.9
    assert abs(a["fid"]["mean"] - b["fid"]["mean"]) < 1e-2 * max(1.0, a["fid"]["mean"])
    assert abs(a["pixel_diversity"] - b["pixel_diversity"]) < 1e-3
    assert a["pixel_diversity"] > 0
    assert len(a["fid"]["per_seed"]) == len(a["kid"]["per_seed"]) == 2
    assert "fid" not in reports["run"]["skipped"]
    json.dumps(reports["run"], allow_nan=False)


def test_fid_kid_of_a_set_against_itself_and_against_noise():
    rng = np.random.default_rng(0)
    scenes_like = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8) // 4 + 100
    noise = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    f_set = extract_features(stand_in_features, scenes_like)
    f_noise = extract_features(stand_in_features, noise)
    same = fid_kid(f_set, f_set)
    other = fid_kid(f_set, f_noise)
    assert abs(same["fid"]) < 1e-6
    assert abs(same["kid"]) < 1e-3 < other["kid"]  # KID is unbiased: about 0, possibly below, for equal sets
    assert other["fid"] > 0.01 and other["kid"] > 0
    assert fid_kid(f_set, f_noise) == other  # KID subsets are drawn with a fixed seed
    with pytest.raises(EvaluationError):
        fid_kid(f_set[:1], f_noise)


def test_noise_prefix_is_stable_and_diversity_units():
    assert np.array_equal(ev.seed_noise(1, 3, (4, 8)), ev.seed_noise(1, 8, (4, 8))[:3])
    zeros, full = np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 255, np.uint8)
    assert pixel_diversity([zeros, zeros]) == 0.0
    assert pixel_diversity([zeros, full]) == 1.0
    assert pixel_diversity([zeros, full, zeros]) == pytest.approx(2 / 3)
    assert np.isnan(pixel_diversity([zeros]))


@pytest.mark.parametrize("flag", ["--run", "--model"])
def test_cli_without_fid_weights_skips_with_the_download_hint(flag, checkpoint, artifact, tmp_path, capsys):
    out = tmp_path / "report.json"
    path = checkpoint if flag == "--run" else artifact
    assert ev.main([flag, str(path), *CLI_DATA, "--seeds", "2", "--limit", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "fid" not in report["metrics"] and report["features"] is None
    for text in (printed, report["skipped"]["fid"]):
        assert INCEPTION_URL in text and "--fid-weights" in text
    assert report["data"]["images"] == 4 and report["seeds"] == [0, 1]
    assert report["source"]["kind"] == ("checkpoint" if flag == "--run" else "artifact")
    assert 0.0 <= report["metrics"]["label_consistency"]["mean"] <= 1.0
    assert "label consistency" in printed and "mIoU skipped" in printed


def test_run_folder_defaults_to_its_config_and_report_location(checkpoint, tmp_path):
    """A folder with generator_ema.safetensors and config.yaml: no --data needed, eval.json written there."""
    from train.config import save_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "generator_ema.safetensors").write_bytes(Path(checkpoint).read_bytes())
    save_config(load_config("synthetic-tiny", OVERRIDES), run / "config.yaml")
    assert ev.main(["--run", str(run), "--seeds", "1", "--limit", "2"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["data"]["config"] == str(run / "config.yaml") and report["data"]["images"] == 2
    assert report["metrics"]["pixel_diversity"] is None and "pixel_diversity" in report["skipped"]


def test_onnx_segmenter_miou(checkpoint, segmenter, data_cfg, tmp_path):
    source = ev.open_checkpoint(checkpoint, "cpu")
    report = ev.evaluate(source, data_cfg, seeds=2, limit=4, segmenter=segmenter, log=quiet)
    m = report["metrics"]["miou"]
    assert 0.0 <= m["mean"] <= 1.0 and 0.0 <= m["real"] <= 1.0 and len(m["per_seed"]) == 2
    assert "miou" not in report["skipped"]
    # a fixed-size, fixed-batch segmenter: images resized to its input, logits back to the label size
    net = torch.nn.Conv2d(3, 5, 1).eval()
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), str(fixed), opset_version=17, dynamo=False)
    seg = OnnxSegmenter(fixed)
    pred = seg.predict(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    assert pred.shape == (3, 32, 32) and pred.min() >= 0 and pred.max() < 5


def test_segmenter_with_other_classes_is_refused(checkpoint, data_cfg, tmp_path):
    bad = tmp_path / "seg7.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 7, 1).eval(), (torch.zeros(1, 3, 32, 32),), str(bad), opset_version=17, dynamo=False)
    with pytest.raises(ConfigError, match="7 classes"):
        ev.evaluate(ev.open_checkpoint(checkpoint, "cpu"), data_cfg, seeds=1, segmenter=bad, log=quiet)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--run", "/nonexistent/run"], "does not exist"),
        (["--model", "/nonexistent/artifact"], "does not exist"),
        (["--model", "{empty}"], "model.json"),
        (["--run", "{ckpt}", "--data", "no-such-preset"], "not found"),
        (["--run", "{ckpt}", "--data", "synthetic-tiny"], "image_size"),
        (["--run", "{ckpt}", *CLI_DATA, "--fid-weights", "/nonexistent/inception.pth"], "does not exist"),
        (["--run", "{ckpt}", *CLI_DATA, "--segmenter", "/nonexistent/seg.onnx"], "does not exist"),
        (["--run", "{ckpt}"], "--data"),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(argv, needle, checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [a.format(ckpt=checkpoint, empty=tmp_path / "empty") for a in argv]
    assert ev.main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert needle in err.replace("\n  ", " ")
    assert not (tmp_path / "r.json").exists()


def _random_inception_state() -> dict[str, torch.Tensor]:
    """A state dict with the FID Inception's keys and shapes, random values (no download)."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_inception_weights_are_read_without_unpickling_code(tmp_path):
    pytest.importorskip("torch_fidelity")
    state = _random_inception_state()
    good = tmp_path / "inception.pth"
    torch.save(state, str(good))
    inception = load_inception(good)
    feats = extract_features(inception, np.zeros((1, 32, 32, 3), np.uint8))
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all()

    class Payload:  # a pickle that would run code: refused by the weights-only reader
        def __reduce__(self):
            return (print, ("owned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(EvaluationError, match="not a readable weights file"):
        load_inception(evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, str(wrong))
    with pytest.raises(EvaluationError, match="does not fit"):
        load_inception(wrong)


@pytest.mark.slow
def test_cli_with_fid_weights_end_to_end(checkpoint, tmp_path, capsys):
    """The real Inception-v3 graph (random weights: the numbers mean nothing) through the CLI, safetensors file."""
    from safetensors.torch import save_file

    weights = tmp_path / "inception.safetensors"
    save_file(_random_inception_state(), str(weights))
    out = tmp_path / "report.json"
    argv = ["--run", str(checkpoint), *CLI_DATA, "--seeds", "2", "--limit", "4", "--fid-weights", str(weights), "--out", str(out)]
    assert ev.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["features"]["standard"] is False and report["metrics"]["fid"]["mean"] >= 0
    assert "not the standard FID Inception file" in capsys.readouterr().out
