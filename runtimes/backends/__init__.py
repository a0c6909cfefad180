"""Backend registry: a manifest's ``target`` names a ``module:Class``, imported only when such an artifact opens.

The backend is chosen from the manifest's target alone, never from a file suffix. Each backend module imports its
inference library inside ``__init__`` (through :func:`dpsims.optional.require`), so importing this package
costs nothing and a missing library surfaces as :class:`BackendUnavailable` naming the pip extra to install.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Iterator, MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any

from dpsims.errors import BackendUnavailable, InputError, ManifestError, UnknownTarget
from runtimes.backends.base import Backend
from runtimes.spec import Manifest
from runtimes.targets import TARGETS


class _Declared(MutableMapping):
    """target -> one field of its declaration in runtimes/targets.py, read when asked, so a target added later by
    ``register_target`` is in it; an entry set here takes precedence over the declaration (tests patch it)."""

    def __init__(self, field: str):
        self._field = field
        self._set: dict[str, str] = {}

    def __getitem__(self, target: str) -> str:
        if target in self._set:
            return self._set[target]
        if target in TARGETS:
            return getattr(TARGETS[target], self._field)
        raise UnknownTarget(f"Unknown target {target!r}; known targets: {', '.join(self)}.")

    def __setitem__(self, target: str, value: str) -> None:
        self._set[target] = value

    def __delitem__(self, target: str) -> None:
        del self._set[target]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*TARGETS, *self._set]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*TARGETS, *self._set]))

    def __repr__(self) -> str:
        return repr(dict(self))


#: target -> ``module:Class`` of its backend (declared in runtimes/targets.py)
BACKENDS: MutableMapping[str, str] = _Declared("backend")

#: pip extra that installs each target's inference library
EXTRAS: MutableMapping[str, str] = _Declared("extra")


def backend_class(target: str, backend: str | None = None) -> type[Backend]:
    """Import and return the backend class registered for ``target``, or the ``module:Class`` ``backend``."""
    if backend is None and target not in BACKENDS:
        raise ManifestError(f"No backend runs the target {target!r}; known targets: {', '.join(BACKENDS)}.")
    module_name, _, class_name = (backend or BACKENDS[target]).partition(":")
    extra = EXTRAS.get(target, target)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if getattr(e, "name", None) == module_name:
            raise BackendUnavailable(
                f"This installation of dp-sims has no {target} backend ({module_name} is missing). "
                "Reinstall dp-sims, or export the model for another target."
            ) from None
        raise BackendUnavailable(
            f"The {target} backend cannot be imported ({e}). Install it with: pip install 'dp-sims[{extra}]'"
        ) from None
    return getattr(module, class_name)


def open_backend(artifact_dir: str | Path, manifest: Manifest, device: str = "auto", *, backend: str | None = None,
                 **options: Any) -> Backend:
    """Open the backend of ``manifest.target`` on ``device``; ``options`` go to the backend (checked by name).

    ``backend``: a ``module:Class`` that opens the artifact instead of its target's own (``python -m export``
    measures a TensorRT artifact's ONNX with ONNX Runtime: ``Target.measure``)."""
    if not isinstance(device, str) or not device.strip():
        raise InputError(f"device must be a non-empty string such as 'auto', 'cpu' or 'cuda', got {device!r}.")
    cls = backend_class(manifest.target, backend)
    if cls.accepted_options is not None:
        unknown = sorted(set(options) - cls.accepted_options)
        if unknown:
            accepted = ", ".join(sorted(cls.accepted_options)) or "none"
            raise InputError(f"The {manifest.target} backend does not understand the option(s) {unknown}; it accepts: {accepted}.")
    return cls(Path(artifact_dir), manifest, device=device.strip(), **options)


# --------------------------------------------------------------------------------- what this machine has


def _probe_torch() -> dict[str, Any]:
    import torch

    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"version": torch.__version__, "devices": ["cpu", *(f"cuda:{i} ({n})" for i, n in enumerate(cuda))]}


def _probe_onnxruntime() -> dict[str, Any]:
    import onnxruntime as ort

    return {"version": ort.__version__, "devices": ort.get_available_providers()}


def _probe_openvino() -> dict[str, Any]:
    import openvino as ov

    return {"version": ov.__version__, "devices": ov.Core().available_devices}


def _probe_tensorrt() -> dict[str, Any]:
    return {"version": metadata.version("tensorrt"), "devices": []}  # the import alone needs a GPU driver


def _probe_coremltools() -> dict[str, Any]:
    can_predict = platform.system() == "Darwin"  # importing coremltools only to ask that is slow and noisy
    return {"version": metadata.version("coremltools"), "devices": ["ALL", "CPU_AND_NE", "CPU_ONLY"] if can_predict else [],
            "note": "" if can_predict else "converts models here; prediction needs macOS"}


def _probe_pytriton() -> dict[str, Any]:
    # the version only: importing pytriton loads its server package (slow), and it serves on this machine's CPUs
    return {"version": metadata.version("nvidia-pytriton"), "devices": [], "note": "python -m runtimes serve"}


def _probe_tritonclient() -> dict[str, Any]:
    return {"version": metadata.version("tritonclient"), "devices": [], "note": "load_predictor('http://...')"}


_PROBES = {
    "torch": _probe_torch,
    "onnxruntime": _probe_onnxruntime,
    "openvino": _probe_openvino,
    "tensorrt": _probe_tensorrt,
    "coremltools": _probe_coremltools,
    "pytriton": _probe_pytriton,
    "tritonclient": _probe_tritonclient,
}


def available_libraries() -> dict[str, dict[str, Any]]:
    """Version and devices of every inference library, ``{"installed": False}`` for the absent ones; never raises."""
    report: dict[str, dict[str, Any]] = {}
    for name, probe in _PROBES.items():
        try:
            report[name] = {"installed": True, **probe()}
        except (ImportError, metadata.PackageNotFoundError):
            report[name] = {"installed": False}
        except Exception as e:  # a broken install must not break `python -m runtimes info`
            report[name] = {"installed": True, "error": f"{type(e).__name__}: {e}"}
    return report
