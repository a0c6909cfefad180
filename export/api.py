"""``export_generator``: a trained generator -> one artifact directory (model files + ``model.json``).

The function behind ``python -m export``. It loads the EMA generator of a run or checkpoint, builds the
calibration set, calls the target module (``export/<target>.py``: ``export(ExportRequest) -> ExportResult``) in a
temporary folder beside ``out``, writes the manifest through :mod:`runtimes.spec` and the model card
(:mod:`export.model_card`), and renames the folder into place only when everything succeeded: a failed export
writes nothing.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from dpsims.errors import ConfigError, DpSimsError
from dpsims.optional import require
from export.base import ExportRequest, ExportResult, check_out_dir, staged_dir
from export.model_card import write_model_card
from runtimes.spec import ClassInfo, Manifest, file_entry, write_manifest
from runtimes.targets import TARGETS

VERSIONED = ("torch", "timm", "onnx", "onnxruntime", "openvino", "nncf", "coremltools", "tensorrt", "dp-sims")


@dataclass
class ExportReport:
    """What ``export_generator`` made: the artifact directory, its manifest, and the numbers for the table."""

    out_dir: Path
    manifest: Manifest
    seconds: float
    bytes: int
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        q = self.manifest.quality or {}
        psnr = q.get("psnr_db")
        lc = q.get("label_consistency_delta")
        rows = [
            ("target", "precision", "size", "PSNR vs FP32", "label consistency vs FP32", "time"),
            (self.manifest.target, self.manifest.precision, _size(self.bytes),
             "-" if "psnr_db" not in q else ("identical" if psnr is None else f"{psnr:.2f} dB"),
             "-" if lc is None else f"{lc:+.4f}", f"{self.seconds:.1f} s"),
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def normalize_precision(target: str, precision: str) -> str:
    """``precision`` after ``target``'s aliases, checked against what the target exports."""
    if target not in TARGETS:
        raise ConfigError(f"Unknown target {target!r}; choose one of {', '.join(TARGETS)}.")
    spec = TARGETS[target]
    precision = spec.precision(precision)
    if precision not in spec.precisions:
        raise ConfigError(f"The {target} target exports {', '.join(spec.precisions)}; got {precision!r}.")
    return precision


def target_options(target: str) -> dict[str, Any]:
    """The ``-o`` checks ``target``'s exporter declares (its module's ``OPTIONS``)."""
    return dict(importlib.import_module(TARGETS[target].exporter).OPTIONS)


def check_options(target: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against what ``target`` reads (names, types, ranges), values normalised."""
    accepted = target_options(target)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hint = f"it reads {', '.join(sorted(accepted))}" if accepted else "it takes no -o option"
        what = {"dla": "--dla", "image_output": "--image-output"}
        names = ", ".join(what.get(k, f"-o {k}") for k in unknown)
        raise ConfigError(f"The {target} target does not use {names}: {hint}.")
    return {k: accepted[k](k, v) for k, v in options.items()}


def check_requirements(target: str, precision: str) -> None:
    """Fail before any work when a library of the target is missing (the error names the pip extra)."""
    spec = TARGETS[target]
    for module, extra in (*spec.needs, *spec.precision_needs.get(precision, ())):
        require(module, extra)


def run_config_of(generator_file: Path) -> Path | None:
    """The ``config.yaml`` of the training run that holds ``generator_file`` (RUN/checkpoints/step_*/...), if any."""
    for folder in Path(generator_file).resolve().parents[:3]:
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder / "config.yaml"
    return None


def export_generator(
    checkpoint: str | Path,
    target: str,
    precision: str = "fp32",
    *,
    calib: str | Path | None = None,
    calib_samples: int = 256,
    calib_seed: int | None = None,
    size: tuple[int, int] | None = None,
    batch: tuple[int, int, int] = (1, 1, 16),
    min_psnr: float = 30.0,
    out: str | Path | None = None,
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
    log=print,
) -> ExportReport:
    """Export the EMA generator of ``checkpoint`` (a run folder, checkpoint folder or generator file).

    About 85 lines by design: the export's steps (check options, load, calibrate, convert, gate, write the
    manifest and model card) in the order they run, each a call into its own module.

    ``calib``: 'synthetic', 'synthetic-photo', a folder of label maps, or a dataset config; default: the
    built-in scenes a model was trained on; for INT8 of other models the training run's own ``config.yaml`` (its dataset) when
    the checkpoint sits in a run folder, else ``calib`` is required; random block maps for the FP32/FP16 check. Returns an :class:`ExportReport`; raises a :class:`DpSimsError` subclass (or
    :class:`dpsims.errors.BackendUnavailable` for a missing library) and leaves nothing behind on failure."""
    started = time.perf_counter()
    precision = normalize_precision(target, precision)
    options = check_options(target, dict(options or {}))
    check_requirements(target, precision)
    module = importlib.import_module(TARGETS[target].exporter)
    batch = _check_batch(batch)

    from calibration import load_calibration_set
    from calibration.sets import BLOCKS, DEFAULT_SEED
    from train.checkpoint import load_generator, resolve_generator_file
    from train.data import BUILTIN_SCENES

    source_file = resolve_generator_file(checkpoint)
    out_dir = Path(out) if out is not None else Path("artifacts") / f"{_run_name(source_file)}-{target}-{precision}"
    check_out_dir(out_dir, overwrite)
    log(f"[export] loading the {'EMA generator' if source_file.name == 'generator_ema.safetensors' else 'generator'} from {source_file}")
    generator, info = load_generator(source_file)
    input_size = check_size(size or tuple(info.image_size), generator.stride)
    noise_shape = tuple(int(v) for v in generator.noise_shape)

    if calib is None:
        builtin = info.dataset in BUILTIN_SCENES
        run_config = run_config_of(source_file) if not builtin else None
        if precision in ("int8", "w8a8") and run_config is not None:
            calib = run_config  # its data.root: the dataset the generator was trained on
            log(f"[export] calibration maps from the run's own dataset ({run_config}; --calib to choose others)")
        elif precision in ("int8", "w8a8") and not builtin:
            raise ConfigError(
                f"INT8 calibration needs label maps like the ones the generator will see ({info.dataset or 'its dataset'}): "
                "give --calib RUN/config.yaml (the training run's config, which names its data.root), another "
                "YAML config whose data.root points at the dataset, or a folder of label PNGs."
            )
        else:
            calib = info.dataset if builtin else BLOCKS
    samples = calib_samples if precision in ("int8", "w8a8") else min(calib_samples, 16)
    calib_set = load_calibration_set(calib, info.num_classes, input_size, noise_shape, samples,
                                     DEFAULT_SEED if calib_seed is None else calib_seed, info.palette, info.ignore_id)
    log(f"[export] calibration set: {len(calib_set)} label maps from {calib_set.source} "
        f"({len(calib_set.split()[1])} held out for the quality check)")

    with staged_dir(out_dir) as work:
        classes = [ClassInfo(id=i, name=n, color=[int(c) for c in col])
                   for i, (n, col) in enumerate(zip(info.class_names, info.palette))]
        manifest = Manifest(
            target=target, precision=precision, input_size=list(input_size), num_classes=info.num_classes,
            classes=classes, noise_shape=list(noise_shape), ignore_id=info.ignore_id,
            batch={"min": batch[0], "opt": batch[1], "max": batch[2]}, library_versions=library_versions(),
            trained_on={"dataset": info.dataset, "step": info.step, "image_size": list(info.image_size),
                        "checkpoint": source_file.name},
        )
        request = ExportRequest(
            generator=generator, info=info, classes=classes, precision=precision, out_dir=work,
            input_size=input_size, noise_shape=noise_shape, batch=batch, calib=calib_set, min_psnr=min_psnr,
            options=dict(options or {}), metadata={k: v for k, v in manifest.to_dict().items() if k != "files"},
        )
        log(f"[export] exporting to {target} {precision} at {input_size[0]}x{input_size[1]}")
        result: ExportResult = module.export(request)
        manifest.files = [file_entry(work, name) for name in result.files]
        manifest.quality = result.quality
        manifest.calibration = result.calibration
        manifest.target_options = result.target_options
        write_manifest(manifest, work)
        write_model_card(work, manifest, run_name=_run_name(source_file), run_config=run_config_of(source_file),
                         parameters=sum(p.numel() for p in generator.parameters()))
    size_bytes = sum(f.bytes for f in manifest.files)
    return ExportReport(out_dir, manifest, time.perf_counter() - started, size_bytes, list(result.notes))


def library_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _check_batch(batch) -> tuple[int, int, int]:
    b = tuple(int(v) for v in batch)
    if len(b) != 3 or not 1 <= b[0] <= b[1] <= b[2]:
        raise ConfigError(f"--batch is min,opt,max with 1 <= min <= opt <= max, got {','.join(map(str, b))}.")
    return b  # type: ignore[return-value]


def check_size(size, stride: int) -> tuple[int, int]:
    """``size`` as (H, W), or a ConfigError unless it is two positive multiples of the generator's ``stride``."""
    if len(size) != 2:
        raise ConfigError(f"--size {'x'.join(map(str, size))}: give HxW, e.g. 256x512.")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % stride or w % stride:
        raise ConfigError(f"--size {h}x{w}: height and width must be positive multiples of the generator's "
                          f"total stride {stride}.")
    return h, w


def _run_name(source_file: Path) -> str:
    # runs/NAME/checkpoints/step_X/generator_ema.safetensors -> NAME; a lone file -> its stem
    parts = source_file.resolve().parts
    if "checkpoints" in parts:
        return parts[parts.index("checkpoints") - 1]
    return source_file.stem


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


__all__ = ["ExportReport", "export_generator", "DpSimsError"]
