"""What every target module receives and returns. The CLI (export/__main__.py) and the API (export/api.py)
build an :class:`ExportRequest`, call ``export(request)`` of the target's module, and write the manifest."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.errors import ConfigError  # torch-free: the TensorRT device path imports this module

if TYPE_CHECKING:  # heavy imports stay out of module import time
    import torch

    from calibration import CalibrationSet
    from runtimes.spec import ClassInfo
    from train.checkpoint import GeneratorInfo


@dataclass
class ExportRequest:
    generator: torch.nn.Module
    """The EMA generator, eval mode, float32, on the CPU."""
    info: GeneratorInfo
    classes: list[ClassInfo]
    precision: str
    out_dir: Path
    """An empty temporary folder; the API renames it into place only when the export succeeded."""
    input_size: tuple[int, int]
    noise_shape: tuple[int, ...]
    batch: tuple[int, int, int] = (1, 1, 16)
    """(min, opt, max) batch; ONNX/OpenVINO keep the batch dynamic, TensorRT builds a profile from it."""
    calib: CalibrationSet | None = None
    min_psnr: float = 30.0
    options: dict[str, Any] = field(default_factory=dict)
    """Target-specific options from the CLI (e.g. dla, image_output, from_onnx, opset)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Manifest fields known before the export (everything but files/quality); formats with room for metadata
    (ONNX metadata_props, OpenVINO rt_info, CoreML user_defined_metadata) embed it as JSON."""


@dataclass
class ExportResult:
    files: list[str]
    """Paths relative to out_dir of every file the artifact needs (hashed into the manifest)."""
    quality: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    target_options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Lines printed after the summary table (e.g. 'engine will be built on the device')."""


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
