"""The export targets, each declared once: its files, what it exports and which of that calibrates, what runs
it, what it needs, how Triton serves it.

Every table that used to list targets reads this one: the manifest schema (:mod:`runtimes.spec`), the backend
registry (:mod:`runtimes.backends`), the export front end (:mod:`export.api`, ``python -m export``), the Triton
model repository (:mod:`export.triton`) and the benchmarks. The ``-o`` options a target reads are declared
by its converter module (``OPTIONS`` in ``export/<target>.py``), next to the code that reads them.

Adding a target is one :class:`Target` (here, or passed to :func:`register_target` from outside the package), one
converter module (``convert(ExportRequest, keep_float) -> Converted`` and ``OPTIONS``: :mod:`export.base`) and
one :class:`runtimes.backends.base.Backend` subclass (docs/design.md, "Targets"); ``export.api`` runs the
calibration, the accuracy gate and the measurement for every target alike.

Standard library only: a device that ships ``runtimes`` alone reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from dpsims.errors import ConfigError, UnknownTarget

#: the key under which formats with room for metadata embed the manifest's JSON (ONNX ``metadata_props``,
#: OpenVINO ``rt_info``, CoreML ``user_defined_metadata``)
METADATA_KEY = "dp_sims"


@dataclass(frozen=True)
class TritonServing:
    """How NVIDIA Triton Inference Server loads an artifact of this target (export/triton.py)."""

    platform: str | None
    """``platform`` of config.pbtxt (None where the backend has none)."""
    backend: str
    filename: str
    """The file Triton loads from the model's version folder."""
    kinds: tuple[str, ...]
    """Instance kinds the backend runs ("cpu", "gpu"); the first is the default."""


@dataclass(frozen=True)
class Target:
    name: str
    precisions: tuple[str, ...]
    """What ``python -m export --precision`` accepts for it (after :attr:`aliases`)."""
    backend: str
    """``module:Class`` of the runtime backend, imported only when such an artifact opens."""
    extra: str
    """The pip extra that installs the inference library."""
    exporter: str
    """The converter module: ``convert(ExportRequest, keep_float) -> Converted`` and ``OPTIONS`` (its ``-o``
    checks), optionally ``quantizable`` and ``finish`` (:mod:`export.base`)."""
    files: tuple[str, ...]
    """The model files of an artifact, paths inside its folder; a folder (``model.mlpackage``) stands for every
    file in it. The converter writes them, the manifest lists and hashes them, the backend opens them."""
    calibrated: tuple[str, ...] = ()
    """The precisions that calibrate on label maps and pass the accuracy gate (:mod:`export.gate`)."""
    measure: str = "backend"
    """How ``python -m export`` measures an artifact against the float torch model on the held-out maps.
    ``"backend"``: the staged artifact is opened with :attr:`backend` through ``load_predictor``, as users open
    it. A ``module:Class``: that backend opens it instead, where the target's own cannot run at export time
    (tensorrt: ONNX Runtime on the artifact's ONNX; the engine is built on the device). ``"converter"``: the
    converter hands over a torch stand-in of what it converts (coreml: Core ML predicts only on macOS)."""
    needs: tuple[tuple[str, str], ...] = ()
    """(python module, pip extra) that exporting needs on this machine, checked before any work."""
    precision_needs: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    """Further (module, extra) for one precision."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Precision names the user may give and what they mean for this target."""
    triton: TritonServing | None = None
    """None: Triton has no backend for it (serve it with ``python -m runtimes serve``)."""
    summary: str = ""

    def precision(self, name: str) -> str:
        """``name`` after this target's aliases (not checked)."""
        return self.aliases.get(name, name)

    def calibrates(self, precision: str) -> bool:
        """Whether ``precision`` (after aliases) calibrates on label maps and passes the accuracy gate."""
        return self.precision(precision) in self.calibrated

    def artifact_files(self, folder: str | Path) -> list[str]:
        """:attr:`files` as found in ``folder``: a declared folder becomes every file inside it, sorted."""
        root = Path(folder)
        files: list[str] = []
        for name in self.files:
            path = root / name
            if path.is_dir():
                files += sorted(p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file())
            else:
                files.append(name)
        return files


_FP16_ONNX = (("onnxruntime.transformers.float16", "onnx"),)
_ORT = "runtimes.backends.onnxruntime_backend:OnnxRuntimeBackend"
_REGISTRY: dict[str, Target] = {t.name: t for t in (
    Target("torch", ("fp32", "fp16", "bf16"), "runtimes.backends.torch_backend:TorchBackend", "train",
           "export.torch_program", ("model.pt2",),
           summary="a torch.export program (.pt2): the float reference, any torch device"),
    Target("onnx", ("fp32", "fp16", "int8"), _ORT, "onnx", "export.onnx", ("model.onnx",), calibrated=("int8",),
           needs=(("onnx", "onnx"), ("onnxruntime", "onnx")), precision_needs={"fp16": _FP16_ONNX},
           triton=TritonServing("onnxruntime_onnx", "onnxruntime", "model.onnx", ("cpu", "gpu")),
           summary="ONNX for ONNX Runtime (CPU, CUDA, TensorRT and other execution providers)"),
    Target("openvino", ("fp32", "fp16", "int8"), "runtimes.backends.openvino_backend:OpenVINOBackend", "openvino",
           "export.openvino", ("model.xml", "model.bin"), calibrated=("int8",),
           needs=(("onnx", "onnx"), ("openvino", "openvino")), precision_needs={"int8": (("nncf", "openvino"),)},
           triton=TritonServing(None, "openvino", "model.xml", ("cpu",)),
           summary="OpenVINO IR (Intel CPUs, GPUs and NPUs); INT8 through NNCF"),
    Target("tensorrt", ("fp32", "fp16", "int8"), "runtimes.backends.tensorrt:TensorRTBackend", "tensorrt",
           "export.tensorrt", ("model.onnx",), calibrated=("int8",), measure=_ORT,
           needs=(("onnx", "onnx"), ("onnxruntime", "onnx")), precision_needs={"fp16": _FP16_ONNX},
           triton=TritonServing("tensorrt_plan", "tensorrt", "model.plan", ("gpu",)),
           summary="an ONNX (INT8: explicit Q/DQ) for TensorRT, and its engine when TensorRT is installed"),
    Target("coreml", ("fp32", "fp16", "int8w", "w8a8"), "runtimes.backends.coreml:CoreMLBackend", "coreml",
           "export.coreml", ("model.mlpackage",), calibrated=("w8a8",), measure="converter",
           needs=(("coremltools", "coreml"),), aliases={"int8": "int8w"},
           summary="a Core ML ML Program (.mlpackage) for Apple devices; int8 = int8 weights, w8a8 = weights+activations"),
)}
BUILT_IN: tuple[str, ...] = tuple(_REGISTRY)
"""The targets this package declares (:func:`register_target` adds others)."""

TARGETS: Mapping[str, Target] = MappingProxyType(_REGISTRY)
"""Every target by name, in the order help texts list them; a live view (registered targets appear in it)."""

PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for t in TARGETS.values() for p in t.precisions))
"""Every precision a built-in target exports (:func:`known_precisions` also counts registered targets)."""


def known_precisions() -> tuple[str, ...]:
    """Every precision some target exports, registered targets included (the manifest's ``precision``)."""
    return tuple(dict.fromkeys(p for t in TARGETS.values() for p in t.precisions))


def register_target(target: Target) -> Target:
    """Declare a target from outside this package: the hook of the adding-a-target recipe (docs/design.md,
    "Targets"). From then on every reader of :data:`TARGETS` knows it: ``python -m export`` and
    ``export_generator`` export it through ``target.exporter``, model.json may name it, and ``load_predictor``
    opens its artifacts with ``target.backend``. A name already declared is a ConfigError."""
    if not isinstance(target, Target):
        raise ConfigError(f"register_target takes a runtimes.targets.Target, got {type(target).__name__}.")
    if target.name in _REGISTRY:
        raise ConfigError(f"A target called {target.name!r} is already declared; give yours another name.")
    outside = sorted((set(target.calibrated) | set(target.aliases.values())) - set(target.precisions))
    if outside:
        raise ConfigError(f"Target {target.name!r}: {outside} are not among its precisions {list(target.precisions)}.")
    if not target.files or ":" not in target.backend:
        raise ConfigError(f"Target {target.name!r} needs its model files and its backend as 'module:Class'.")
    _REGISTRY[target.name] = target
    return target


def unregister_target(name: str) -> None:
    """Remove a target added by :func:`register_target` (the built-in ones stay)."""
    if name in BUILT_IN:
        raise ConfigError(f"{name!r} is a built-in target; only targets added by register_target can be removed.")
    target_of(name)
    del _REGISTRY[name]


def target_of(name: str) -> Target:
    """The :class:`Target` called ``name``; KeyError naming the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(f"Unknown target {name!r}; known targets: {', '.join(TARGETS)}.") from None
