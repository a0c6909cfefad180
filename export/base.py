"""What every converter receives and returns, and the converter protocol.

A target's converter module (``Target.exporter`` in runtimes/targets.py, e.g. ``export/onnx.py``) only converts:

- ``OPTIONS``: ``{name: check}``, the ``-o`` options it reads (checks below);
- ``convert(request, keep_float) -> Converted``: the request's generator at ``request.precision``, written into
  ``request.out_dir`` as the files the target declares (``Target.files``), with the layers named in
  ``keep_float`` left in float. Called once per accuracy-gate attempt for the precisions that calibrate (each
  call replaces the previous files), once otherwise;
- ``quantizable(request) -> list[str]`` (calibrating targets): the layer names, in graph order, the gate may keep
  float (:func:`export.gate.exclusion_levels` groups them); without it the gate has one attempt;
- ``finish(request, converted) -> Converted`` (optional): once, on the conversion the gate kept, the work that
  does not change what was measured (TensorRT: build the engine where TensorRT is here; Core ML: convert the
  measured torch module with coremltools).

:func:`export.api.export_generator` does the rest once for every target: the calibration set, the torch
reference, the gate loop, the measurement of each attempt by opening the staged artifact with the runtime backend
users load, the manifest and the model card.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpsims.errors import ConfigError  # torch-free: the TensorRT device path imports this module

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch

    from calibration import CalibrationSet
    from runtimes.spec import ClassInfo

#: the folder inside ``out_dir`` where a converter keeps what its conversions of one export share (the FP32 ONNX
#: the quantizers start from); export.api removes it before the manifest is written
SCRATCH = ".scratch"


@dataclass
class ExportRequest:
    generator: torch.nn.Module
    """The EMA generator, eval mode, float32, on the CPU."""
    classes: list[ClassInfo]
    precision: str
    out_dir: Path
    """The staged artifact folder; the API renames it into place only when the export succeeded."""
    input_size: tuple[int, int]
    noise_shape: tuple[int, ...]
    batch: tuple[int, int, int] = (1, 1, 16)
    """(min, opt, max) batch; ONNX/OpenVINO keep the batch dynamic, TensorRT builds a profile from it."""
    calib: CalibrationSet | None = None
    """The maps a quantizer calibrates on (precisions that calibrate); never the held-out maps the gate measures."""
    options: dict[str, Any] = field(default_factory=dict)
    """Target-specific options from the CLI (e.g. dla, image_output, opset)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Manifest fields known before the export (everything but files/quality); formats with room for metadata
    (ONNX metadata_props, OpenVINO rt_info, CoreML user_defined_metadata) embed it as JSON
    (``runtimes.targets.METADATA_KEY``)."""

    @property
    def scratch(self) -> Path:
        """A folder (created on first use) for intermediates shared by the conversions of this export."""
        path = Path(self.out_dir) / SCRATCH
        path.mkdir(parents=True, exist_ok=True)
        return path

    def calibration_data(self) -> CalibrationSet:
        """:attr:`calib`, or a ConfigError when the request has none."""
        if self.calib is None:
            raise ConfigError(f"--precision {self.precision} calibrates: give --calib (synthetic, a folder of label "
                              "maps, or a dataset config).")
        return self.calib


@dataclass
class Converted:
    """What one conversion made, besides the declared files in ``out_dir``."""

    target_options: dict[str, Any] = field(default_factory=dict)
    """The manifest's ``target_options``."""
    notes: list[str] = field(default_factory=list)
    """Lines printed after the summary table (e.g. 'engine will be built on the device')."""
    method: str | None = None
    """How it calibrated (precisions that calibrate): the manifest's ``calibration.method``."""
    kept_float: list[str] | None = None
    """What stays float where the converter decides it (Core ML); the gate's choice is recorded otherwise."""
    stand_in: Any = None
    """Targets measured by their converter (``Target.measure == "converter"``): a torch module computing what
    the converted model computes, measured in its place; None: no quality numbers."""
    measured_with: str | None = None
    """What computed the stand-in's numbers (the manifest's ``quality.measured_with``)."""


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder without ``--overwrite`` (before any work)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the artifact (it is created if missing).")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite.")


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to write the artifact into; it replaces ``out_dir`` when the block
    succeeds and is removed when it fails, so a failed export leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield work
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- -o checks
# Each exporter declares the -o options it reads as ``OPTIONS = {name: check}``; a check takes (key, value) and
# returns the normalised value or raises ConfigError. export.api.check_options applies them before any work.

def one_of(*values: str):
    """A check that accepts one of ``values`` (case-insensitive) and returns it lower-cased."""
    def check(key: str, value: Any) -> str:
        text = str(value).lower()
        if text not in values:
            raise ConfigError(f"-o {key} must be one of {', '.join(values)}, got {value!r}.")
        return text
    return check


def number(kind: type, low: float, high: float | None = None):
    """A check that accepts an int (``kind=int``) or a number within ``low``..``high``."""
    def check(key: str, value: Any) -> Any:
        try:
            out = kind(value)
            ok = (isinstance(value, (int, float, str)) and not isinstance(value, bool) and out >= low
                  and (high is None or out <= high))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bound = f">= {low:g}" if high is None else f"within {low:g}..{high:g}"
            raise ConfigError(f"-o {key} must be {'an integer' if kind is int else 'a number'} {bound}, got {value!r}.")
        return out
    return check


def flag(key: str, value: Any) -> bool:
    """A check that accepts true or false."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"-o {key} must be true or false, got {value!r}.")


def text(key: str, value: Any) -> str:
    return str(value)


#: the ONNX quantizer's options, read by the onnx and tensorrt exporters (export/onnx.py)
QDQ_OPTIONS: dict[str, Any] = {
    "opset": number(int, 14, 20), "qdq_for": one_of("tensorrt", "cpu"),
    "quantizer": one_of("auto", "modelopt", "onnxruntime"),
    "calibrate_method": one_of("minmax", "entropy", "percentile"), "high_precision": one_of("fp32", "fp16"),
}

