"""``export_generator``: a trained generator -> one artifact directory (model files + ``model.json``).

The function behind ``python -m export``. It loads the EMA generator of a run or checkpoint, builds the
calibration set, and in a temporary folder beside ``out`` calls the target's converter (``export/<target>.py``,
:mod:`export.base`) -- for the precisions that calibrate once per level of the accuracy gate
(:mod:`export.gate`) -- measuring every conversion against the torch generator on the held-out maps by opening
the staged artifact as users do (:func:`measure`: ``load_predictor`` with a provisional ``model.json``). It then
writes the manifest through :mod:`runtimes.spec` and the model card (:mod:`export.model_card`), and renames the
folder into place only when everything succeeded: a failed export writes nothing.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from dpsims.errors import ConfigError, DpSimsError
from dpsims.optional import require
from export.base import SCRATCH, Converted, ExportRequest, check_out_dir, staged_dir
from export.gate import exclusion_levels, run_gate
from export.model_card import write_model_card
from runtimes.spec import ClassInfo, Manifest, file_entry, write_manifest
from runtimes.targets import TARGETS, Target

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

    About 95 lines by design: the export's steps (check options, load, calibrate, convert and measure through
    the gate, finish, write the manifest and model card) in the order they run, each a call into its own module.

    ``calib``: 'synthetic', 'synthetic-photo', a folder of label maps, or a dataset config; default: the
    built-in scenes a model was trained on; for INT8 of other models the training run's own ``config.yaml`` (its dataset) when
    the checkpoint sits in a run folder, else ``calib`` is required; random block maps for the FP32/FP16 check. Returns an :class:`ExportReport`; raises a :class:`DpSimsError` subclass (or
    :class:`dpsims.errors.BackendUnavailable` for a missing library) and leaves nothing behind on failure."""
    started = time.perf_counter()
    precision = normalize_precision(target, precision)
    options = check_options(target, dict(options or {}))
    check_requirements(target, precision)
    importlib.import_module(TARGETS[target].exporter)  # a converter that cannot import fails before any work
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
        if TARGETS[target].calibrates(precision) and run_config is not None:
            calib = run_config  # its data.root: the dataset the generator was trained on
            log(f"[export] calibration maps from the run's own dataset ({run_config}; --calib to choose others)")
        elif TARGETS[target].calibrates(precision) and not builtin:
            raise ConfigError(
                f"INT8 calibration needs label maps like the ones the generator will see ({info.dataset or 'its dataset'}): "
                "give --calib RUN/config.yaml (the training run's config, which names its data.root), another "
                "YAML config whose data.root points at the dataset, or a folder of label PNGs."
            )
        else:
            calib = info.dataset if builtin else BLOCKS
    samples = calib_samples if TARGETS[target].calibrates(precision) else min(calib_samples, 16)
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
            distilled_from=info.teacher,
        )
        calib_part, held_out = calib_set.split()
        request = ExportRequest(
            generator=generator, classes=classes, precision=precision, out_dir=work, input_size=input_size,
            noise_shape=noise_shape, batch=batch, calib=calib_part if TARGETS[target].calibrates(precision) else None,
            options=dict(options or {}), metadata={k: v for k, v in manifest.to_dict().items() if k != "files"},
        )
        log(f"[export] exporting to {target} {precision} at {input_size[0]}x{input_size[1]}")
        converted, manifest.quality, manifest.calibration = convert_measured(TARGETS[target], request, held_out, min_psnr)
        finish = getattr(importlib.import_module(TARGETS[target].exporter), "finish", None)
        if finish is not None:  # once, on the conversion kept (TensorRT's engine, Core ML's package)
            converted = finish(request, converted)
        manifest.files = [file_entry(work, name) for name in TARGETS[target].artifact_files(work)]
        manifest.target_options = converted.target_options
        write_manifest(manifest, work)
        write_model_card(work, manifest, run_name=_run_name(source_file), run_config=run_config_of(source_file),
                         parameters=sum(p.numel() for p in generator.parameters()))
    size_bytes = sum(f.bytes for f in manifest.files)
    return ExportReport(out_dir, manifest, time.perf_counter() - started, size_bytes, list(converted.notes))


def convert_measured(target: Target, request: ExportRequest, held_out: Any, min_psnr: float = 30.0,
                     ) -> tuple[Converted, dict[str, Any] | None, dict[str, Any] | None]:
    """Convert ``request`` with ``target``'s converter and measure it against the torch generator on ``held_out``
    (a CalibrationSet the converter never sees): ``(converted, quality, calibration)`` for the manifest.

    Precisions that calibrate pass the accuracy gate: one conversion per level of :func:`export.gate.run_gate`
    (layers the converter's ``quantizable`` names kept float, more at each level) until the PSNR reaches
    ``min_psnr``; ExportQualityError with every measured number if none does. Other precisions convert once.
    The scratch folder is removed; the converter's ``finish``, if it has one, is the caller's to run."""
    from calibration import run_all, torch_runner

    module = importlib.import_module(target.exporter)
    reference = run_all(torch_runner(request.generator), held_out)
    try:
        if not target.calibrates(request.precision):
            converted = module.convert(request, [])
            quality, calibration = measure(target, request, converted, held_out, reference), None
        else:
            names = list(module.quantizable(request)) if hasattr(module, "quantizable") else []
            levels = exclusion_levels(names) if names else [("as calibrated", [])]

            def attempt(keep_float: list[str]) -> tuple[dict[str, Any], Converted]:
                conversion = module.convert(request, keep_float)
                return measure(target, request, conversion, held_out, reference), conversion

            quality, kept, converted = run_gate(attempt, levels, min_psnr, f"{target.name} {request.precision}",
                                                names=names or None)
            if names:
                quality["kept_high_precision"] = kept
            calibration = {**request.calibration_data().summary(), "held_out": len(held_out),
                           "method": converted.method}
    finally:
        shutil.rmtree(request.out_dir / SCRATCH, ignore_errors=True)
    return converted, quality, calibration


def measure(target: Target, request: ExportRequest, converted: Converted, held_out: Any,
            reference: Any) -> dict[str, Any] | None:
    """The quality report of one conversion against the torch ``reference`` images of ``held_out``.

    The staged artifact is opened the way users open it: a provisional ``model.json`` is written into
    ``request.out_dir`` and ``load_predictor`` (``Target.measure`` "backend"; another backend class where the
    target names one) generates the held-out maps from their noise on the CPU. A target measured by its converter
    reports on the converter's torch stand-in instead (None without one). FP32 reports ``max_abs_error_vs_torch``
    (a check, not a precision loss), other precisions :func:`calibration.compare_images`."""
    import numpy as np

    from calibration import compare_images, run_all, torch_runner

    if target.measure == "converter":
        if converted.stand_in is None:
            return None
        images, measured_with = run_all(torch_runner(converted.stand_in), held_out), converted.measured_with
    else:
        with open_staged(target, request, converted) as predictor:
            images = predictor.generate_raw(held_out.labels, noise=held_out.noise)
            measured_with = _measured_with(predictor.info()["backend"], target)
    if request.precision == "fp32":
        return {"max_abs_error_vs_torch": round(float(np.abs(images - reference).max()), 8), "measured_with": measured_with}
    quality = compare_images(reference, images, held_out)
    if converted.kept_float is not None:
        quality["kept_high_precision"] = converted.kept_float
    return {**quality, "measured_with": measured_with}


def open_staged(target: Target, request: ExportRequest, converted: Converted):
    """A :class:`runtimes.predictor.Predictor` on the CPU over the artifact staged in ``request.out_dir``, after a
    provisional ``model.json`` (its files hashed as the final one will be) is written there: ``load_predictor``
    itself, or, where ``target.measure`` names another backend class, the same steps with that class."""
    from runtimes.backends import open_backend
    from runtimes.loader import load_predictor
    from runtimes.predictor import Predictor
    from runtimes.spec import read_manifest

    work = request.out_dir
    files = [asdict(file_entry(work, name)) for name in target.artifact_files(work)]
    write_manifest(Manifest.from_dict({**request.metadata, "files": files,
                                       "target_options": converted.target_options}), work)
    if target.measure == "backend":
        return load_predictor(work, device="cpu")
    manifest = read_manifest(work)
    return Predictor(open_backend(work, manifest, "cpu", backend=target.measure), manifest, work)


def _measured_with(backend: dict[str, Any], target: Target) -> str:
    """What measured the numbers, from the predictor's own description of its backend."""
    what = f"{backend.get('library', backend.get('backend'))}, CPU"
    if backend.get("inference_precision"):
        what += f", inference precision {backend['inference_precision']}"
    if target.measure == "backend":
        return what + ", as load_predictor opens it"
    return what + f", {backend.get('backend')} on the artifact's files (the {target.name} backend runs on the device)"


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
