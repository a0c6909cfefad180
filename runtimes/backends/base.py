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

from runtimes.spec import Manifest


class Backend(ABC):
    #: pip extra that installs this backend's library (named in errors)
    extra: str = ""

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        self.artifact_dir = Path(artifact_dir)
        self.manifest = manifest
        self.device = device
        self.options = options

    @property
    def max_batch(self) -> int:
        """Largest batch one ``infer`` call accepts (the predictor splits bigger batches)."""
        return int(self.manifest.batch.get("max", 1))

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine; the backend is unusable afterwards."""

    def describe(self) -> dict[str, Any]:
        """What `python -m runtimes info` shows: library version, device, providers..."""
        return {"backend": type(self).__name__, "device": self.device}
