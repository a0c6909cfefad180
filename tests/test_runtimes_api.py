"""The predictor API: inputs, seeds, batching, errors, manifest checks, the CLI and the numpy-only import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_artifacts import IGNORE_ID, INPUT_SIZE, NUM_CLASSES, random_label_map, shared_artifacts

import runtimes
from runtimes import (
    BackendUnavailable,
    ClassInfo,
    InputError,
    Manifest,
    ManifestError,
    Predictor,
    PredictorClosed,
    load_predictor,
    prepare_labels,
    read_manifest,
    to_uint8,
)
from runtimes.__main__ import main as cli_main
from runtimes.backends import BACKENDS
from runtimes.backends.base import Backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return shared_artifacts(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def predictor(artifacts):
    with load_predictor(artifacts["onnx"], device="cpu") as p:
        yield p


@pytest.fixture
def label():
    return random_label_map(np.random.default_rng(7))


def copy_artifact(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / src.name))


def edit_manifest(artifact: Path, **changes) -> None:
    path = artifact / "model.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ seeds and noise


def test_same_seed_same_image_and_different_seeds_differ(predictor, label):
    a = predictor.generate(label, seed=5)
    b = predictor.generate(label, seed=5)
    c = predictor.generate(label, seed=6)
    assert a.shape == (*INPUT_SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 0.5


def test_batch_uses_seed_plus_index(predictor):
    labels = random_label_map(np.random.default_rng(1), 6)  # 6 > max batch 4: two backend calls
    batch = predictor.generate(labels, seed=10)
    assert batch.shape == (6, *INPUT_SIZE, 3)
    for i in (0, 3, 5):
        np.testing.assert_array_equal(batch[i], predictor.generate(labels[i], seed=10 + i))
    np.testing.assert_array_equal(batch, predictor.generate(labels, seed=list(range(10, 16)), batch_size=1))


def test_noise_is_host_sampled_standard_normal_per_seed(predictor, label):
    noise = predictor.sample_noise([3, 4])
    assert noise.dtype == np.float32 and noise.shape == (2, *predictor.noise_shape)
    np.testing.assert_array_equal(noise[1], np.random.default_rng(4).standard_normal(predictor.noise_shape, dtype=np.float32))
    np.testing.assert_array_equal(predictor.generate(label, noise=noise[0]), predictor.generate(label, seed=3))
    with pytest.raises(InputError, match="either seed or noise"):
        predictor.generate(label, seed=1, noise=noise[0])


def test_seed_none_draws_fresh_noise(predictor, label):
    assert not np.array_equal(predictor.generate_raw(label), predictor.generate_raw(label))


def test_generate_variations_match_single_seeds(predictor, label):
    variations = predictor.generate_variations(label, 3, seed=20)
    assert variations.shape == (3, *INPUT_SIZE, 3)
    np.testing.assert_array_equal(variations[2], predictor.generate(label, seed=22))
    with pytest.raises(InputError, match="one label map"):
        predictor.generate_variations(np.stack([label, label]), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "non-negative"),
        ({"seed": 1.5}, "seed must be"),
        ({"seed": True}, "seed must be"),
        ({"seed": [1, 2]}, "one per map"),
        ({"noise": np.zeros((4, 4))}, "noise must be"),
        ({"noise": np.full((4, 8), np.nan)}, "NaN"),
        ({"noise": np.zeros((4, 8), dtype=np.int64)}, "float"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 5}, "max batch"),
    ],
)
def test_bad_seed_noise_and_batch_size(predictor, label, kwargs, match):
    with pytest.raises(InputError, match=match):
        predictor.generate(label, **kwargs)


# ------------------------------------------------------------------------------------- label map forms


def test_pil_png_npy_and_list_inputs_match_the_array(predictor, label, tmp_path):
    expected = predictor.generate(label, seed=1)
    palette_image = Image.fromarray(label.astype(np.uint8), mode="P")
    palette_image.putpalette([v for c in predictor.classes for v in c.color])
    rgb_image = Image.fromarray(predictor.colorize(label), mode="RGB")
    grey_image = Image.fromarray(label.astype(np.uint8), mode="L")
    palette_image.save(tmp_path / "map.png")
    rgb_image.save(tmp_path / "rgb.png")
    np.save(tmp_path / "map.npy", label)
    for form in (palette_image, rgb_image, grey_image, tmp_path / "map.png", str(tmp_path / "rgb.png"), tmp_path / "map.npy",
                 label.tolist(), label.astype(np.uint16)):
        np.testing.assert_array_equal(predictor.generate(form, seed=1), expected, err_msg=repr(type(form)))
    batch = predictor.generate([palette_image, tmp_path / "map.npy"], seed=[1, 1])
    np.testing.assert_array_equal(batch, np.stack([expected, expected]))


def test_colorize_and_colors_roundtrip(predictor, label):
    label = label.copy()
    label[0, :3] = IGNORE_ID
    colors = predictor.colorize(label)
    palette = {c.id: c.color for c in predictor.classes}
    for (y, x) in [(0, 0), (5, 7), (31, 31)]:
        expected = [0, 0, 0] if label[y, x] == IGNORE_ID else palette[label[y, x]]
        assert colors[y, x].tolist() == expected
    assert predictor.colorize(label[None]).shape == (1, *INPUT_SIZE, 3)
    np.testing.assert_array_equal(predictor.ids_from_colors(colors), label)


def test_rgb_with_unknown_colour_is_refused(predictor, label):
    colors = predictor.colorize(label)
    colors[3, 4] = [1, 2, 3] if [1, 2, 3] not in [c.color for c in predictor.classes] else [4, 5, 6]
    with pytest.raises(InputError, match=r"at \(3, 4\)"):
        predictor.generate(Image.fromarray(colors, mode="RGB"))


def test_ignore_id_is_accepted(predictor, label):
    label[:4] = IGNORE_ID
    assert predictor.generate(label, seed=0).shape == (*INPUT_SIZE, 3)


def test_resize_is_nearest_like_pillow(predictor):
    small = random_label_map(np.random.default_rng(3), size=(12, 20)).astype(np.uint8)
    reference = np.asarray(Image.fromarray(small, mode="L").resize(INPUT_SIZE[::-1], Image.Resampling.NEAREST))
    labels, batched = predictor.prepare_labels(small, resize=True)
    assert not batched and labels.dtype == np.int32
    np.testing.assert_array_equal(labels[0], reference)
    np.testing.assert_array_equal(predictor.generate(small, seed=2, resize=True), predictor.generate(reference, seed=2))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(INPUT_SIZE, dtype=np.float32), "integer class ids"),
        (np.zeros(INPUT_SIZE, dtype=np.float64), "Floats are refused even when integral"),
        (np.zeros(INPUT_SIZE, dtype=bool), "integer class ids"),
        (np.full(INPUT_SIZE, -1), "class id -1"),
        (np.full(INPUT_SIZE, NUM_CLASSES), rf"class id {NUM_CLASSES} .*ids 0..{NUM_CLASSES - 1} or the ignore id {IGNORE_ID}"),
        (np.zeros((16, 32), dtype=np.int64), "takes 32x32 label maps, got 16x32"),
        (np.zeros((1, 1, *INPUT_SIZE), dtype=np.int64), "4 dimensions"),
        (np.zeros((0, *INPUT_SIZE), dtype=np.int64), "empty"),
        (np.zeros((32,), dtype=np.int64), "1 dimensions"),
        (np.array(3), "0 dimensions"),
        ([[1, 2], [3]], "rectangular"),
        ({"label": 1}, "got dict"),
        (None, "got NoneType"),
        ("/nonexistent/map.png", "No label map file"),
    ],
)
def test_bad_label_maps_raise_input_error(predictor, bad, match):
    with pytest.raises(InputError, match=match):
        predictor.generate(bad, seed=0)


def test_unreadable_files_raise_input_error(predictor, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Cannot read"):
        predictor.generate(tmp_path / "junk.png")
    with pytest.raises(InputError, match="plain numpy array"):
        predictor.generate(tmp_path / "objects.npy")
    Image.new("CMYK", INPUT_SIZE).save(tmp_path / "cmyk.jpg")
    with pytest.raises(InputError, match="mode P"):
        predictor.generate(tmp_path / "cmyk.jpg")


def test_prepare_labels_checks_maps_against_a_manifest_without_a_backend(artifacts, predictor, label, tmp_path):
    """What a device script does before minutes of engine building: the maps checked and converted from model.json
    alone, as the predictor would; a bad file is named in the error."""
    manifest = read_manifest(artifacts["onnx"])
    colours = tmp_path / "colours.png"
    Image.fromarray(predictor.colorize(label), mode="RGB").save(colours)
    small = label[::2, ::2]
    for given, kwargs in ((label, {}), (str(colours), {}), ([label, label], {}), (small, {"resize": True})):
        ours, batched = prepare_labels(given, manifest, **kwargs)
        theirs, batched_too = predictor.prepare_labels(given, **kwargs)
        assert ours.dtype == np.int32 and batched == batched_too
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(prepare_labels(str(colours), manifest)[0][0], label)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full(INPUT_SIZE, 200, np.uint8), mode="L").save(bad)
    with pytest.raises(InputError, match=f"{bad} holds the class id 200"):
        prepare_labels(bad, manifest)
    with pytest.raises(InputError, match="Pass resize=True"):
        prepare_labels(small, manifest)


# ---------------------------------------------------------------------- predictor logic (fake backend)


class AffineBackend(Backend):
    """image = tanh(label / 4 + mean(noise)), so the predictor's bookkeeping can be checked exactly."""

    accepted_options = frozenset({"output_shape_bug"})

    def __init__(self, artifact_dir, manifest, device="auto", **options):
        super().__init__(artifact_dir, manifest, device, **options)
        self.calls: list[int] = []
        self.closed = False

    def infer(self, inputs):
        label, noise = inputs["label"], inputs["noise"]
        assert label.dtype == np.int32 and noise.dtype == np.float32 and len(label) >= self.min_batch
        self.calls.append(len(label))
        image = np.tanh(label[:, None].astype(np.float32) / 4 + noise.mean(axis=(1, 2))[:, None, None, None])
        image = np.repeat(image, 3, axis=1)
        return {"image": image[:, :, :-1] if self.options.get("output_shape_bug") else image}

    def close(self):
        self.closed = True


def fake_predictor(batch=(2, 2, 3), **options) -> Predictor:
    classes = [ClassInfo(i, f"c{i}", [i * 40, 0, 0]) for i in range(NUM_CLASSES)]
    manifest = Manifest("onnx", "fp32", list(INPUT_SIZE), NUM_CLASSES, classes, [4, 8],
                        batch=dict(zip(("min", "opt", "max"), batch)))
    return Predictor(AffineBackend(Path("."), manifest, **options), manifest)


def test_chunks_follow_max_batch_and_pad_to_min_batch():
    predictor = fake_predictor()
    labels = random_label_map(np.random.default_rng(0), 7)
    raw = predictor.generate_raw(labels, seed=0)
    assert predictor._backend.calls == [3, 3, 2]  # the last chunk of 1 is padded to the min batch 2
    noise_mean = predictor.sample_noise(range(7)).mean(axis=(1, 2))
    np.testing.assert_allclose(raw[:, 0], np.tanh(labels / 4 + noise_mean[:, None, None]), atol=1e-6)
    predictor.generate_raw(labels, seed=0, batch_size=2)
    assert predictor._backend.calls[3:] == [2, 2, 2, 2]


def test_wrong_output_shape_is_a_manifest_error():
    with pytest.raises(ManifestError, match="graph contract"):
        fake_predictor(output_shape_bug=True).generate(np.zeros(INPUT_SIZE, dtype=np.int32), seed=0)


def test_to_uint8_rounds_clips_and_moves_channels():
    images = np.array([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=np.float32).reshape(1, 1, 1, 6).repeat(3, axis=1)
    out = to_uint8(images)
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert to_uint8(np.full((3, 1, 1), np.nan, dtype=np.float32)).tolist() == [[[128, 128, 128]]]


def test_close_and_context_manager():
    predictor = fake_predictor()
    backend = predictor._backend
    with predictor as p:
        assert p.generate(np.zeros(INPUT_SIZE, dtype=np.int32), seed=0).shape == (*INPUT_SIZE, 3)
    assert backend.closed
    predictor.close()  # idempotent
    with pytest.raises(PredictorClosed, match="load_predictor"):
        predictor.generate(np.zeros(INPUT_SIZE, dtype=np.int32), seed=0)
    assert "closed" in repr(predictor)


def test_properties_and_info(predictor):
    assert predictor.target == "onnx" and predictor.precision == "fp32"
    assert predictor.input_size == INPUT_SIZE and predictor.noise_shape == (4, 8)
    assert [c.id for c in predictor.classes] == list(range(NUM_CLASSES))
    info = predictor.info()
    assert info["backend"]["class"] == BACKENDS["onnx"]
    assert info["backend"]["providers"] == ["CPUExecutionProvider"]
    assert info["batch"] == {"min": 1, "opt": 1, "max": 4} and predictor.max_batch == 4
    json.dumps(info)


# ---------------------------------------------------------------------------- manifest and loading


def test_load_from_model_json_path(artifacts):
    with load_predictor(artifacts["onnx"] / "model.json", device="cpu") as p:
        assert p.target == "onnx"


def test_corrupted_model_file_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path)
    data = bytearray((art / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="does not match its sha256"):
        load_predictor(art)


def test_missing_model_file_is_refused(artifacts, tmp_path):
    art = copy_artifact(artifacts["onnx"], tmp_path)
    (art / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_predictor(art)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"schema_version": 99}, "schema_version 99, this dp-sims reads version 1"),
        ({"target": "tflite"}, "unknown target 'tflite'"),
        ({"precision": "int4"}, "unknown precision"),
        ({"input_size": [32]}, "input_size"),
        ({"noise_shape": [0, 8]}, "noise_shape"),
        ({"ignore_id": -1}, "ignore_id"),
        ({"batch": {"min": 4, "opt": 1, "max": 2}}, "batch"),
        ({"files": [{"path": "../escape.onnx", "sha256": "0", "bytes": 1}]}, "inside the artifact"),
    ],
)
def test_bad_manifests_are_refused(artifacts, tmp_path, changes, match):
    art = copy_artifact(artifacts["onnx"], tmp_path)
    edit_manifest(art, **changes)
    with pytest.raises(ManifestError, match=match):
        load_predictor(art)


@pytest.mark.parametrize("target", ["onnx", "openvino"])
@pytest.mark.parametrize("changes, name", [({"noise_shape": [3, 7]}, "noise"), ({"input_size": [64, 64]}, "label")])
def test_a_manifest_that_does_not_describe_its_model_is_refused_at_load(artifacts, tmp_path, target, changes, name):
    """A model.json edited by hand (shapes that are valid but not the model's): a ManifestError at load that
    names the input, instead of an engine error at the first generate()."""
    art = copy_artifact(artifacts[target], tmp_path)
    edit_manifest(art, **changes)
    with pytest.raises(ManifestError, match=rf"input '{name}' has shape \[N, .*model.json states"):
        load_predictor(art, verify=False)


def test_bad_paths_are_refused(artifacts, tmp_path):
    with pytest.raises(ManifestError, match="No model.json"):
        load_predictor(tmp_path)
    with pytest.raises(ManifestError, match="is a file, not an artifact"):
        load_predictor(artifacts["onnx"] / "model.onnx")
    art = copy_artifact(artifacts["onnx"], tmp_path)
    (art / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_predictor(art)


@pytest.mark.parametrize("target, module, extra", [("onnx", "onnxruntime", "onnx"), ("openvino", "openvino", "openvino"),
                                                   ("torch", "torch", "train")])
def test_missing_backend_library_names_the_extra(artifacts, monkeypatch, target, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendUnavailable, match=rf"pip install 'dp-sims\[{extra}\]'"):
        load_predictor(artifacts[target])


def test_missing_backend_module_and_unknown_options(artifacts, monkeypatch):
    monkeypatch.setitem(BACKENDS, "onnx", "runtimes.backends.not_written_yet:Nothing")
    with pytest.raises(BackendUnavailable, match="has no onnx backend"):
        load_predictor(artifacts["onnx"])
    monkeypatch.undo()
    with pytest.raises(InputError, match="accepts: inter_op_num_threads, intra_op_num_threads"):
        load_predictor(artifacts["onnx"], threads=2)
    with pytest.raises(InputError, match="integer >= 0"):
        load_predictor(artifacts["onnx"], intra_op_num_threads="two")
    with pytest.raises(InputError, match="device must be"):
        load_predictor(artifacts["onnx"], device=None)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_generate_single_variations_and_grid(artifacts, predictor, label, tmp_path, capsys):
    Image.fromarray(label.astype(np.uint8), mode="L").save(tmp_path / "map.png")
    args = ["generate", "--model", str(artifacts["onnx"]), "--label", str(tmp_path / "map.png"), "--device", "cpu"]
    assert cli_main([*args, "--seed", "4", "--out", str(tmp_path / "one.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one.png")), predictor.generate(label, seed=4))
    assert cli_main([*args, "--seed", "4", "--n", "2", "--out", str(tmp_path / "v.png"), "-o", "intra_op_num_threads=1"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "v-5.png")), predictor.generate(label, seed=5))
    assert cli_main([*args, "--seed", "4", "--n", "3", "--grid", "--out", str(tmp_path / "grid.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (32, 4 * 32 + 3 * 2, 3)
    np.testing.assert_array_equal(grid[:, :32], predictor.colorize(label))
    np.testing.assert_array_equal(grid[:, 34:66], predictor.generate(label, seed=4))
    printed = capsys.readouterr().out
    assert "seeds 4..6" in printed
    images = np.stack([predictor.generate(label, seed=s) for s in (4, 5, 6)]).astype(float) / 255
    pairs = [np.abs(images[a] - images[b]).mean() for a, b in ((0, 1), (0, 2), (1, 2))]
    assert f"differ by {np.mean(pairs):.3f} per pixel" in printed and np.mean(pairs) > 0
    # --scale 2: every pixel of every tile a 2x2 block
    assert cli_main([*args, "--seed", "4", "--n", "2", "--grid", "--scale", "2", "--out", str(tmp_path / "big.png")]) == 0
    big = np.asarray(Image.open(tmp_path / "big.png"))
    assert big.shape == (64, 3 * 64 + 2 * 2, 3)
    np.testing.assert_array_equal(big[::2, :64:2], predictor.colorize(label))
    np.testing.assert_array_equal(big[1::2, 66 + 1 : 130 : 2], predictor.generate(label, seed=4))


def test_cli_user_errors_exit_2(artifacts, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.full((8, 8), 9))
    code = cli_main(["generate", "--model", str(artifacts["onnx"]), "--label", str(tmp_path / "bad.npy"),
                     "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and ": error: " in err.splitlines()[0] and "class id 9" in err and "Traceback" not in err
    assert cli_main(["info", "--model", str(tmp_path)]) == 2
    with pytest.raises(SystemExit) as exc:
        cli_main(["generate", "--model", "x", "--label", "y", "--out", "z", "--n", "0"])
    assert exc.value.code == 2
    base = ["generate", "--model", str(artifacts["onnx"]), "--label", str(tmp_path / "bad.npy")]
    capsys.readouterr()
    assert cli_main([*base, "--out", str(tmp_path / "o.jpg")]) == 2 and "give a .png file name" in capsys.readouterr().err
    assert cli_main([*base, "--out", str(tmp_path / "o.png"), "--grid"]) == 2 and "--n 2 or more" in capsys.readouterr().err
    assert cli_main(["generate", "--model", str(artifacts["onnx"]), "--label", str(tmp_path), "--out", str(tmp_path / "o.png")]) == 2
    assert "is a folder; give one label map file" in capsys.readouterr().err
    assert not (tmp_path / "o.jpg").exists() and not (tmp_path / "o.png").exists()


def test_cli_info_json(artifacts, capsys):
    assert cli_main(["info", "--model", str(artifacts["openvino"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["artifact"]["target"] == "openvino"
    assert report["backend"]["ov_device"] == "CPU"
    assert report["libraries"]["openvino"]["devices"] == ["CPU"]
    assert report["libraries"]["onnxruntime"]["installed"] is True


# ------------------------------------------------------------------------------ numpy-only import


def test_runtimes_imports_and_runs_onnx_without_torch_openvino_pil(artifacts):
    """A device that ships runtimes + onnxruntime alone: import, open, generate; the rest fails cleanly."""
    script = textwrap.dedent(f"""
        import json, sys
        for name in ("torch", "openvino", "PIL", "coremltools", "tensorrt"):
            sys.modules[name] = None
        import numpy as np
        import runtimes, runtimes.__main__, runtimes.backends.onnxruntime_backend, runtimes.backends.openvino_backend
        import runtimes.backends.torch_backend
        from runtimes import load_predictor, BackendUnavailable
        out = {{}}
        with load_predictor({str(artifacts["onnx"])!r}) as p:
            out["shape"] = list(p.generate(np.zeros((32, 32), dtype=np.int32), seed=0).shape)
            try:
                p.generate({str(artifacts["onnx"] / "model.json")!r})  # any existing non-.npy file needs pillow
            except BackendUnavailable as e:
                out["pil"] = str(e)
        for target, path in {{"openvino": {str(artifacts["openvino"])!r}, "torch": {str(artifacts["torch"])!r}}}.items():
            try:
                load_predictor(path)
            except BackendUnavailable as e:
                out[target] = str(e)
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["shape"] == [32, 32, 3]
    assert "pip install 'dp-sims[runtime]'" in out["pil"]
    assert "pip install 'dp-sims[openvino]'" in out["openvino"]
    assert "pip install 'dp-sims[train]'" in out["torch"]


def test_public_names():
    assert runtimes.load_predictor is load_predictor and issubclass(runtimes.InputError, ValueError)
    assert all(hasattr(runtimes, name) for name in runtimes.__all__)


def test_examples_import_only_the_public_api():
    """The programs users copy import the project through ``from runtimes import NAME`` with NAME exported by
    the package (runtimes.__all__), never a submodule or another package of the project."""
    import ast

    project = {"runtimes", "dpsims", "train", "export", "calibration", "benchmarks"}
    files = sorted((ROOT / "examples").rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [(node.module, a.name) for a in node.names]
            else:
                continue
            for module, name in names:
                if module.split(".")[0] in project:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    assert module == "runtimes", f"{where} imports {module}: use the runtimes package's exports"
                    assert name is None or name in runtimes.__all__, f"{where} imports {name}, not in runtimes.__all__"


def test_generate_example_writes_the_grid_and_reports_bad_input_in_one_line(artifacts, tmp_path):
    """examples/generate.py, the app README points users to: label map + 4 seeds in one PNG; errors without a
    traceback."""
    from PIL import Image

    from runtimes import load_predictor

    root = Path(__file__).resolve().parents[1]
    label = tmp_path / "label.png"
    with load_predictor(artifacts["onnx"]) as predictor:
        h, w = predictor.input_size
    Image.fromarray(np.arange(h * w, dtype=np.uint8).reshape(h, w) % 5, mode="L").save(label)
    out = tmp_path / "grid.png"
    r = subprocess.run([sys.executable, "examples/generate.py", str(artifacts["onnx"]), str(label), str(out)], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grid = np.asarray(Image.open(out))
    assert grid.shape[2] == 3 and grid.size > 5 * h * w * 3 * 0.9  # the map and four images
    Image.fromarray(np.full((h, w), 99, np.uint8), mode="L").save(label)
    r = subprocess.run([sys.executable, "examples/generate.py", str(artifacts["onnx"]), str(label), str(out)], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "class id 99" in r.stderr
