"""``python -m train.evaluate``: FID, KID, mIoU and diversity of a generator on a validation set.

    python -m train.evaluate --run RUN_DIR [--data PRESET_OR_YAML] [--set key=value ...]
    python -m train.evaluate --model ARTIFACT_DIR --data PRESET_OR_YAML
        [--fid-weights weights-inception-2015-12-05-6726825d.pth] [--segmenter seg.onnx]
        [--seeds 3] [--limit N] [--batch-size 16] [--device auto] [--out report.json]

The images come either from the EMA generator of a run, checkpoint folder or generator file (``--run``), or from
an exported artifact through ``runtimes.load_predictor(dir).generate_raw`` (``--model``), so that an INT8
artifact's drift is measured by the very same code as its FP32 checkpoint. Every label map of the validation
split (``--limit``: the first N) is generated once per seed 0..S-1; seed ``s`` draws the noise of the whole set
as ``numpy.random.default_rng(s).standard_normal((N, *noise_shape), float32)``, image ``i`` taking row ``i``
(so ``--limit`` keeps the noise of the images it keeps, and both sources see the same noise).

Metrics (per seed, then mean and std over seeds):

- ``fid`` / ``kid``: generated vs real validation images, Inception-v3 pool features (torchmetrics); needs
  ``--fid-weights`` (see :mod:`train.eval_metrics`), skipped with a message otherwise;
- ``label_consistency``: synthetic data only, the mIoU of the dataset's fixed classifier on the generated images
  against their label maps (:func:`train.metrics.label_consistency`); ``real`` is the same on the real images;
- ``miou``: with ``--segmenter FILE.onnx`` (graph: :class:`train.eval_metrics.OnnxSegmenter`), the segmenter's
  mIoU on the generated images, pooled over the set, the dataset's ignore id left out; ``real``: on the real ones;
- ``pixel_diversity``: mean absolute difference in [0, 1] between the images of two seeds, over all seed pairs.
  LPIPS diversity is not computed: torchmetrics' LPIPS downloads its backbone weights.

It prints a table and writes the JSON report to ``--out`` (default: ``eval.json`` in the run folder, beside the
generator file, or in the artifact folder). Errors in the user's input exit with code 2 and one message.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.errors import ConfigError, DpSimsError

LPIPS_SKIPPED = "LPIPS is not computed: torchmetrics' LPIPS downloads its backbone weights; pixel_diversity stands in."


@dataclass
class ImageSource:
    """Where generated images come from: ``generate(labels int64 [N, H, W], noise float32 [N, *noise_shape])``
    returns float32 [N, 3, H, W] in [-1, 1]."""

    kind: str  # "checkpoint" or "artifact"
    path: Path
    num_classes: int
    size: tuple[int, int]
    noise_shape: tuple[int, ...]
    generate: Callable[[np.ndarray, np.ndarray], np.ndarray]
    default_out: Path
    default_config: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def open_checkpoint(path: str | Path, device: str = "auto", batch_size: int = 16) -> ImageSource:
    """The EMA generator of a run folder, checkpoint folder or generator .safetensors file."""
    import torch

    from train.checkpoint import load_generator, resolve_generator_file

    path = Path(path)
    file = resolve_generator_file(path)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    generator, info = load_generator(file, device=dev)

    @torch.no_grad()
    def generate(labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(labels), batch_size):
            lab = torch.from_numpy(np.ascontiguousarray(labels[i:i + batch_size])).to(dev)
            z = torch.from_numpy(np.ascontiguousarray(noise[i:i + batch_size])).to(dev)
            out.append(generator(lab, z).float().cpu().numpy())
        return np.concatenate(out)

    config = path / "config.yaml" if path.is_dir() and (path / "config.yaml").exists() else None
    return ImageSource(
        kind="checkpoint", path=file, num_classes=info.num_classes, size=(int(info.image_size[0]), int(info.image_size[1])),
        noise_shape=tuple(int(v) for v in generator.noise_shape), generate=generate,
        default_out=(path if path.is_dir() else path.parent) / "eval.json", default_config=config,
        details={"dataset": info.dataset, "step": info.step, "device": dev},
    )


def open_artifact(path: str | Path, device: str = "auto", batch_size: int | None = None) -> ImageSource:
    """An exported artifact (directory or its model.json) through the runtimes predictor."""
    from runtimes import load_predictor

    path = Path(path)
    predictor = load_predictor(path, device=device)
    root = path.parent if path.is_file() else path

    def generate(labels: np.ndarray, noise: np.ndarray) -> np.ndarray:
        bs = None if batch_size is None else min(batch_size, predictor.max_batch)
        return np.asarray(predictor.generate_raw(labels, noise=noise, batch_size=bs), dtype=np.float32)

    m = predictor.manifest
    return ImageSource(
        kind="artifact", path=root, num_classes=predictor.num_classes, size=tuple(predictor.input_size),
        noise_shape=tuple(predictor.noise_shape), generate=generate, default_out=root / "eval.json",
        details={"target": m.target, "precision": m.precision, "trained_on": m.trained_on},
        close=predictor.close,
    )


def seed_noise(seed: int, n: int, noise_shape: tuple[int, ...]) -> np.ndarray:
    """The noise of seed ``seed`` for ``n`` images: float32 [n, *noise_shape], row i for image i."""
    return np.random.default_rng(int(seed)).standard_normal((n, *noise_shape), dtype=np.float32)


def load_val_set(data_cfg, limit: int | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """(dataset, real images uint8 [N, H, W, 3], labels int64 [N, H, W]) of the validation split."""
    from train.data import build_dataset
    from train.metrics import to_uint8_nhwc

    dataset = build_dataset(data_cfg, "val")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n < 1:
        raise ConfigError(f"The validation split of {data_cfg.dataset} holds no image.")
    images, labels = [], []
    for i in range(n):
        image, label = dataset[i]
        images.append(to_uint8_nhwc(image))
        labels.append(np.asarray(label, dtype=np.int64))
    return dataset, np.stack(images), np.stack(labels)


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "per_seed": [float(v) for v in arr]}


def evaluate(
    source: ImageSource,
    data_cfg,
    *,
    seeds: int = 3,
    limit: int | None = None,
    fid_weights: str | Path | None = None,
    segmenter: str | Path | None = None,
    feature_extractor: Callable | None = None,
    feature_name: str = "custom",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Generate the validation set ``seeds`` times and measure it (module docstring); returns the report dict.

    ``feature_extractor``: use this ``uint8 [N, 3, H, W] torch tensor -> [N, D]`` instead of the Inception-v3 of
    ``fid_weights`` (tests, or another feature space: the report names it ``feature_name``)."""
    from train.eval_metrics import (
        INCEPTION_SHA256_PREFIX,
        OnnxSegmenter,
        extract_features,
        fid_kid,
        fid_weights_hint,
        load_inception,
        pixel_diversity,
        sha256,
    )
    from train.metrics import label_consistency, miou, to_uint8_nhwc

    started = time.perf_counter()
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}.")
    size = (int(data_cfg.image_size[0]), int(data_cfg.image_size[1]))
    if size != tuple(source.size):
        raise ConfigError(
            f"The data config gives {size[0]}x{size[1]} images, the {source.kind} makes {source.size[0]}x{source.size[1]}: "
            f"evaluate at the model's size with --set data.image_size=[{source.size[0]},{source.size[1]}]."
        )
    # the Inception and the segmenter are opened before the slow part, so that a bad file fails at once
    skipped: dict[str, str] = {}
    extractor, feature_info = feature_extractor, None
    if extractor is None and fid_weights is not None:
        extractor = load_inception(fid_weights)
        digest = sha256(Path(fid_weights))
        feature_name = "inception-v3-compat pool3 (2048)"
        feature_info = {"weights": str(fid_weights), "sha256": digest, "standard": digest.startswith(INCEPTION_SHA256_PREFIX)}
        if not feature_info["standard"]:
            log(f"[eval] warning: {fid_weights} is not the standard FID Inception file; FIDs are not comparable to published ones.")
    elif extractor is None:
        skipped["fid"] = skipped["kid"] = "FID and KID skipped: no --fid-weights. " + fid_weights_hint()
    seg = OnnxSegmenter(segmenter) if segmenter is not None else None

    dataset, real, labels = load_val_set(data_cfg, limit)
    n = len(labels)
    if dataset.num_classes != source.num_classes:
        raise ConfigError(
            f"The data config has {dataset.num_classes} classes, the {source.kind} {source.num_classes}: give the "
            f"data config the model was trained on (--data, --set data.num_classes=...)."
        )
    if seg is not None and seg.num_classes() not in (None, dataset.num_classes):
        raise ConfigError(f"The segmenter {segmenter} predicts {seg.num_classes()} classes, the data has {dataset.num_classes}.")
    log(f"[eval] {source.kind} {source.path}: {n} validation maps of {dataset.name} x {seeds} seeds")

    fakes: list[np.ndarray] = []
    for s in range(seeds):
        t0 = time.perf_counter()
        fakes.append(to_uint8_nhwc(source.generate(labels, seed_noise(s, n, source.noise_shape))))
        log(f"[eval] seed {s}: generated {n} images in {time.perf_counter() - t0:.1f} s")

    metrics: dict[str, Any] = {}
    if extractor is not None:
        real_f = extract_features(extractor, real)
        per = [fid_kid(real_f, extract_features(extractor, f)) for f in fakes]
        metrics["fid"] = _stats([p["fid"] for p in per])
        metrics["kid"] = _stats([p["kid"] for p in per])
        metrics["kid"]["subset_std_per_seed"] = [p["kid_std"] for p in per]
        if n < 2048:
            log(f"[eval] note: FID over {n} images is biased upwards; compare only runs evaluated on the same set.")

    scenes = getattr(dataset, "scenes", None)
    if scenes is not None:
        metrics["label_consistency"] = _stats([label_consistency(f, labels, scenes) for f in fakes])
        metrics["label_consistency"]["real"] = label_consistency(real, labels, scenes)
    if seg is not None:
        k, ignore = dataset.num_classes, dataset.ignore_id
        metrics["miou"] = _stats([miou(seg.predict(f), labels, k, ignore) for f in fakes])
        metrics["miou"]["real"] = miou(seg.predict(real), labels, k, ignore)
    else:
        skipped["miou"] = (
            "mIoU skipped: no --segmenter (an ONNX segmenter: float [N,3,H,W] ImageNet-normalised RGB -> [N,C,H,W] logits)."
            + (" label_consistency measures the same on the synthetic data." if scenes is not None else "")
        )
    metrics["pixel_diversity"] = pixel_diversity(fakes)
    if seeds < 2:
        skipped["pixel_diversity"] = "pixel_diversity needs --seeds 2 or more."
    skipped["lpips_diversity"] = LPIPS_SKIPPED

    return _clean({
        "source": {"kind": source.kind, "path": str(source.path), **source.details},
        "data": {"dataset": dataset.name, "split": "val", "images": n, "image_size": list(size),
                 "num_classes": dataset.num_classes, "ignore_id": dataset.ignore_id},
        "seeds": list(range(seeds)),
        "noise": "numpy.random.default_rng(seed).standard_normal((N, *noise_shape), float32), row i for image i",
        "features": None if extractor is None else {"name": feature_name, **(feature_info or {})},
        "segmenter": None if seg is None else str(segmenter),
        "metrics": metrics,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 2),
        "versions": _versions(),
    })


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("dp-sims", "torch", "torchmetrics", "torch-fidelity", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def format_table(report: dict[str, Any]) -> str:
    m, rows = report["metrics"], []

    def add(name: str, key: str, scale: float = 1.0, digits: int = 3) -> None:
        if key in m and m[key] is not None and m[key].get("mean") is not None:
            v = m[key]
            real = f"   (real images: {v['real'] * scale:.{digits}f})" if v.get("real") is not None else ""
            rows.append(f"{name:<22}{v['mean'] * scale:>10.{digits}f} ± {v['std'] * scale:.{digits}f}{real}")

    add("FID", "fid", digits=2)
    add("KID x 1000", "kid", scale=1000.0, digits=2)
    add("label consistency", "label_consistency")
    add("mIoU (segmenter)", "miou")
    if m.get("pixel_diversity") is not None:
        rows.append(f"{'pixel diversity':<22}{m['pixel_diversity']:>10.4f}")
    d, s = report["data"], report["source"]
    head = (f"{s['kind']} {s['path']}  |  {d['dataset']} val, {d['images']} maps x {len(report['seeds'])} seeds "
            f"(± is the std over seeds)")
    notes = [f"  - {v}" for v in dict.fromkeys(report["skipped"].values())]
    return "\n".join([head, *rows, *(["skipped:", *notes] if notes else [])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="FID, KID, mIoU / label consistency and diversity of a generator on a validation set.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder, checkpoint folder or generator .safetensors file (EMA generator)")
    src.add_argument("--model", type=Path, metavar="ARTIFACT_DIR", help="exported artifact folder (or its model.json)")
    p.add_argument("--data", help="data preset or YAML config (default: the run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.root=/data/ade (repeatable)")
    p.add_argument("--fid-weights", type=Path, metavar="FILE",
                   help="FID Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth from torch-fidelity's "
                        "releases, or a .safetensors of it); without it FID and KID are skipped")
    p.add_argument("--segmenter", type=Path, metavar="FILE.onnx",
                   help="ONNX segmenter for mIoU: input float [N,3,H,W] RGB in [0,1] normalised by the ImageNet "
                        "mean/std, output [N,C,H,W] logits in the dataset's class numbering")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds 0..S-1 per label map (default 3)")
    p.add_argument("--limit", type=int, help="evaluate the first N validation maps only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    p.add_argument("--out", type=Path, help="JSON report (default: eval.json beside the run or in the artifact)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from train.config import load_config

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.run is not None:
        if not args.run.exists():
            raise ConfigError(f"--run {args.run} does not exist.")
        source = open_checkpoint(args.run, args.device, args.batch_size)
    else:
        if not args.model.exists():
            raise ConfigError(f"--model {args.model} does not exist; give an artifact folder written by `python -m export`.")
        source = open_artifact(args.model, args.device, args.batch_size)
    try:
        data = args.data or source.default_config
        if data is None:
            raise ConfigError("Give --data PRESET_OR_YAML: the data config of the validation set (e.g. --data synthetic-tiny).")
        cfg = load_config(data, args.overrides)
        report = evaluate(source, cfg.data, seeds=args.seeds, limit=args.limit, fid_weights=args.fid_weights,
                          segmenter=args.segmenter, log=log)
        report["data"]["config"] = str(data)
    finally:
        source.close()
    out = args.out or source.default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    log(format_table(report))
    log(f"[eval] report: {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from runtimes.errors import RuntimeErrorBase
    except ImportError:  # pragma: no cover - runtimes ships with this package
        RuntimeErrorBase = DpSimsError  # noqa: N806
    try:
        run(args)
    except (DpSimsError, RuntimeErrorBase) as e:
        print("error: " + textwrap.fill(str(e), width=110, subsequent_indent="  "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
