"""The backend interface: one small class per inference engine (an adapter), no pre- or post-processing.

A backend receives exactly the graph contract's arrays -- ``label`` int32 [N, H, W] and ``noise`` float32
[N, *noise_shape] -- and returns ``{"image": float32 [N, 3, H, W]}`` in [-1, 1]. Batching, validation and
conversion to uint8 live once in :class:`runtimes.predictor.Predictor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import InputError, ManifestError
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, Manifest
from runtimes.targets import target_of


class Backend(ABC):
    #: pip extra that installs this backend's library (named in errors)
    extra: str = ""
    #: option names ``__init__`` understands; ``load_predictor`` rejects any other with a clear error.
    #: None accepts anything (the backend checks its options itself).
    accepted_options: frozenset[str] | None = None

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        self.artifact_dir = Path(artifact_dir)
        self.manifest = manifest
        self.device = device
        self.options = options

    @property
    def max_batch(self) -> int:
        """Largest batch one ``infer`` call accepts (the predictor splits bigger batches)."""
        return int(self.manifest.batch.get("max", 1))

    @property
    def min_batch(self) -> int:
        """Smallest batch one ``infer`` call accepts (the predictor pads smaller chunks, e.g. TensorRT profiles)."""
        return int(self.manifest.batch.get("min", 1))

    def model_files(self) -> list[Path]:
        """Paths of the model files the artifact's target declares (``Target.files``), each listed in the manifest."""
        return [self.file_path(name) for name in target_of(self.manifest.target).files]

    def file_path(self, name: str) -> Path:
        """Path of the artifact file ``name`` as the manifest lists it (ManifestError when it is not listed)."""
        return self.artifact_dir / self.manifest.file(name).path

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine; the backend is unusable afterwards."""

    def describe(self) -> dict[str, Any]:
        """What `python -m runtimes info` shows: library version, device, providers..."""
        return {"backend": type(self).__name__, "device": self.device}


def int_option(name: str, value: Any, minimum: int = 0) -> int:
    """A backend option that must be an integer >= ``minimum`` (InputError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"The option {name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_input_shapes(what: Path, shapes: dict[str, list[int | None]], manifest: Manifest) -> None:
    """The graph's static input dims (None: dynamic) must be the ones model.json states: an edited or mismatched
    manifest fails at load with this message, not with an engine error at the first call."""
    want = {INPUT_LABEL: list(manifest.input_size), INPUT_NOISE: list(manifest.noise_shape)}
    for name, expected in want.items():
        dims = shapes.get(name)
        if dims is None:
            continue
        got = dims[1:]
        if len(got) != len(expected) or any(g is not None and g != e for g, e in zip(got, expected)):
            shown = ", ".join("N" if d is None else str(d) for d in dims)
            raise ManifestError(
                f"{what}: input {name!r} has shape [{shown}], but model.json states [N, {', '.join(map(str, expected))}]; "
                "the manifest does not describe this model (edited, or from another export). Export it again."
            )
