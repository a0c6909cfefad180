"""Build small, real artifacts for the `runtimes` tests without the `export` package.

Each artifact holds a tiny :class:`train.models.generator.Generator` exported the way the graph contract says
(inputs ``label`` int32 [N, H, W] and ``noise`` float32 [N, T, D], output ``image`` float32 [N, 3, H, W], dynamic
batch) plus a ``model.json`` written through :mod:`runtimes.spec`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from runtimes.spec import ClassInfo, Manifest, file_entry, write_manifest
from train.config import GeneratorConfig
from train.models.generator import Generator

NUM_CLASSES = 5
INPUT_SIZE = (32, 32)
BATCH = (1, 1, 4)  # (min, opt, max): small, so that the predictor's chunking is exercised
IGNORE_ID = 255
TINY = GeneratorConfig(
    base_channels=8, channel_mults=[2, 2, 1], label_channels=16, attn_levels=1, attn_heads=2, noise_tokens=4, noise_dim=8
)
FILES = {"onnx": ["model.onnx"], "openvino": ["model.xml", "model.bin"], "torch": ["model.pt2"]}


def tiny_classes(n: int = NUM_CLASSES) -> list[ClassInfo]:
    rng = np.random.default_rng(1234)
    colors = rng.choice(256, size=(n, 3), replace=True)
    return [ClassInfo(id=i, name=f"class{i}", color=[int(v) for v in colors[i]]) for i in range(n)]


def random_label_map(rng: np.random.Generator, n: int | None = None, size=INPUT_SIZE, classes=NUM_CLASSES) -> np.ndarray:
    """Blocky maps (regions, not salt and pepper), like real layouts; int64 so the predictor converts them."""
    shape = (size[0] // 4, size[1] // 4) if n is None else (n, size[0] // 4, size[1] // 4)
    coarse = rng.integers(0, classes, size=shape)
    return coarse.repeat(4, axis=-2).repeat(4, axis=-1)


def tiny_generator(num_classes: int = NUM_CLASSES, size=INPUT_SIZE, seed: int = 0) -> Generator:
    """The real generator, small, with non-trivial batch-norm statistics and a live noise path.

    The attention output projections start at zero (so a fresh generator ignores its noise); they get random
    weights here so that different noise gives different images, as it does after training.
    """
    torch.manual_seed(seed)
    g = Generator(num_classes, TINY)
    for name, p in g.named_parameters():
        if ".out." in name:
            torch.nn.init.normal_(p, std=0.3)
    g.train()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _ in range(3):
            label = torch.from_numpy(random_label_map(rng, 4, size, num_classes))
            g(label, torch.randn(4, *g.noise_shape) * 2.0 + 0.5)
    return g.eval()


def save_tiny_checkpoint(path: str | Path, size=INPUT_SIZE, seed: int = 0) -> Path:
    """:func:`tiny_generator` saved as training saves a generator (``path``: a .safetensors file), for tests of
    ``export``: 'synthetic' as its dataset, so calibration uses the synthetic scenes."""
    from train.checkpoint import GeneratorInfo, save_generator

    classes = tiny_classes()
    info = GeneratorInfo(num_classes=len(classes), generator=TINY, image_size=list(size),
                         class_names=[c.name for c in classes], palette=[c.color for c in classes], dataset="synthetic")
    return save_generator(path, tiny_generator(size=size, seed=seed), info)


def _example_inputs(generator: Generator, size) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.zeros(2, *size, dtype=torch.int32)
    return label, torch.zeros(2, *generator.noise_shape)


def _export_onnx(generator: Generator, size, path: Path) -> None:
    torch.onnx.export(
        generator,
        _example_inputs(generator, size),
        str(path),
        input_names=["label", "noise"],
        output_names=["image"],
        dynamic_axes={"label": {0: "batch"}, "noise": {0: "batch"}, "image": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def _export_openvino(generator: Generator, size, out_dir: Path, onnx_path: Path | None) -> None:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        if onnx_path is None:
            onnx_path = Path(tmp) / "model.onnx"
            _export_onnx(generator, size, onnx_path)
        model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=False)


def _export_torch(generator: Generator, size, path: Path, max_batch: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    program = torch.export.export(
        generator, _example_inputs(generator, size), dynamic_shapes={"label": {0: batch}, "noise": {0: batch}}
    )
    torch.export.save(program, str(path))


def build_artifact(
    tmp_dir: str | Path,
    target: str,
    generator: Generator,
    classes: list[ClassInfo],
    input_size=INPUT_SIZE,
    precision: str = "fp32",
    batch=BATCH,
    ignore_id: int | None = IGNORE_ID,
    onnx_path: Path | None = None,
) -> Path:
    """Export ``generator`` for ``target`` (onnx, openvino or torch) into ``tmp_dir/target`` and return that folder.

    ``onnx_path``: for openvino, convert this ONNX export of the same generator instead of exporting again."""
    out = Path(tmp_dir) / target
    out.mkdir(parents=True, exist_ok=False)
    size = tuple(input_size)
    if target == "onnx":
        _export_onnx(generator, size, out / "model.onnx")
    elif target == "openvino":
        _export_openvino(generator, size, out, onnx_path)
    elif target == "torch":
        _export_torch(generator, size, out / "model.pt2", batch[2])
    else:
        raise ValueError(f"build_artifact makes onnx, openvino or torch artifacts, not {target!r}")
    manifest = Manifest(
        target=target,
        precision=precision,
        input_size=list(size),
        num_classes=len(classes),
        classes=classes,
        noise_shape=list(generator.noise_shape),
        files=[file_entry(out, name) for name in FILES[target]],
        ignore_id=ignore_id,
        batch={"min": batch[0], "opt": batch[1], "max": batch[2]},
        library_versions={"torch": torch.__version__},
        trained_on={"dataset": "none (random weights, tests)"},
    )
    write_manifest(manifest, out)
    return out


_CACHE: dict[str, tuple[Generator, dict[str, Path]]] = {}


def shared_artifacts(tmp_path_factory) -> tuple[Generator, dict[str, Path]]:
    """One generator and its onnx, openvino and torch artifacts, built once per test process."""
    if "default" not in _CACHE:
        root = tmp_path_factory.mktemp("runtime_artifacts")
        generator = tiny_generator()
        classes = tiny_classes()
        paths = {"onnx": build_artifact(root, "onnx", generator, classes)}
        paths["openvino"] = build_artifact(root, "openvino", generator, classes, onnx_path=paths["onnx"] / "model.onnx")
        paths["torch"] = build_artifact(root, "torch", generator, classes)
        _CACHE["default"] = (generator, paths)
    return _CACHE["default"]
