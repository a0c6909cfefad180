"""CoreML backend: ``model.mlpackage`` through coremltools, on macOS (Core ML prediction exists only there).

``device`` picks Core ML's compute units: ``auto``/``all`` -> ALL (Core ML chooses among CPU, GPU and Neural
Engine), ``cpu`` -> CPU_ONLY, ``gpu`` -> CPU_AND_GPU, ``ane`` -> CPU_AND_NE. Packages exported with a flexible
batch take batches in their range (the Neural Engine runs only the default batch, others fall back to CPU/GPU);
packages with an image output (``--image-output``) take one sample per call and return a picture, which this
backend maps back to the float32 [-1, 1] image of the graph contract.

Importing this module needs numpy only; coremltools is imported when a backend opens.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import BackendUnavailable, InputError, ManifestError
from dpsims.optional import require
from runtimes.backends.base import Backend
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest
from runtimes.targets import target_of

COMPUTE_UNITS = {"auto": "ALL", "all": "ALL", "cpu": "CPU_ONLY", "gpu": "CPU_AND_GPU", "ane": "CPU_AND_NE"}


def compute_units(device: str) -> str:
    """The ``coremltools.ComputeUnit`` name for a dp-sims device name (InputError for others)."""
    name = device.lower()
    if name not in COMPUTE_UNITS:
        raise InputError(
            f"CoreML runs on Apple devices: device must be one of {', '.join(COMPUTE_UNITS)}, got {device!r}."
        )
    return COMPUTE_UNITS[name]


def require_macos(system: str | None = None) -> None:
    """Raise :class:`BackendUnavailable` unless running on macOS."""
    system = system or platform.system()
    if system != "Darwin":
        raise BackendUnavailable(
            f"CoreML prediction needs macOS; this machine runs {system}. coremltools converts models anywhere "
            "but runs them only on macOS (or in an iOS/macOS app). Here, export the model for a target that runs "
            "on this machine instead: `python -m export --target onnx` or `--target openvino` (or tensorrt on "
            "an NVIDIA GPU), and load that artifact."
        )


class CoreMLBackend(Backend):
    extra = "coreml"
    accepted_options: frozenset[str] = frozenset()

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        super().__init__(artifact_dir, manifest, device, **options)
        require_macos()
        units = compute_units(device)
        ct = require("coremltools", self.extra)
        self._version = ct.__version__
        target_options = manifest.target_options or {}
        package_name = str(target_options.get("package", target_of(manifest.target).files[0]))
        self.file_path(f"{package_name}/Manifest.json")  # the manifest must list (and so hash) the package
        package = self.artifact_dir / package_name
        try:
            self.model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, units))
        except Exception as e:  # Core ML raises several types for unreadable or too-new packages
            raise ManifestError(f"Core ML cannot load {package}: {e} Export it again, or update macOS.") from None
        description = self.model.get_spec().description
        inputs = {f.name for f in description.input}
        outputs = {f.name for f in description.output}
        if not {INPUT_LABEL, INPUT_NOISE} <= inputs or OUTPUT_IMAGE not in outputs:
            raise ManifestError(
                f"{package} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; the graph contract wants "
                f"inputs {INPUT_LABEL!r}, {INPUT_NOISE!r} and output {OUTPUT_IMAGE!r}. Export it again."
            )
        self.compute_units = units
        self.image_output = bool(target_options.get("image_output", False))
        # the package's own batch range (an image output fixes it at 1 whatever the export was asked for)
        batch = manifest.batch
        default = [batch.get("min", 1), batch.get("opt", 1), batch.get("max", 1)]
        self._batch = [1, 1, 1] if self.image_output else [int(b) for b in target_options.get("batch", default)]

    @property
    def max_batch(self) -> int:
        return self._batch[2]

    @property
    def min_batch(self) -> int:
        return self._batch[0]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        label = np.ascontiguousarray(inputs[INPUT_LABEL], dtype=np.int32)
        noise = np.ascontiguousarray(inputs[INPUT_NOISE], dtype=np.float32)
        if not self.image_output:
            out = self.model.predict({INPUT_LABEL: label, INPUT_NOISE: noise})
            return {OUTPUT_IMAGE: np.asarray(out[OUTPUT_IMAGE], dtype=np.float32)}
        images = [self.model.predict({INPUT_LABEL: label[i : i + 1], INPUT_NOISE: noise[i : i + 1]})[OUTPUT_IMAGE]
                  for i in range(len(label))]
        return {OUTPUT_IMAGE: np.stack([pixels_to_image(im) for im in images])}

    def close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "library": f"coremltools {self._version}",
            "compute_units": self.compute_units,
            "image_output": self.image_output,
            "batch": self._batch,
        }


def pixels_to_image(picture: Any) -> np.ndarray:
    """A Core ML RGB image output (PIL image, 0..255) as the contract's float32 [3, H, W] in [-1, 1]."""
    pixels = np.asarray(picture, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        raise ManifestError(f"Expected an RGB image output from Core ML, got an array of shape {pixels.shape}.")
    return np.ascontiguousarray(pixels[..., :3].transpose(2, 0, 1) / 127.5 - 1.0)
