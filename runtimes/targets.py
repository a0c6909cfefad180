"""The export targets, each declared once: what it exports, what runs it, what it needs, how Triton serves it.

Every table that used to list targets reads this one: the manifest schema (:mod:`runtimes.spec`), the backend
registry (:mod:`runtimes.backends`), the export front end (:mod:`export.api`, ``python -m export``), the Triton
model repository (:mod:`export.triton`) and the benchmarks. The ``-o`` options a target reads are declared
by its exporter module (``OPTIONS`` in ``export/<target>.py``), next to the code that reads them.

Adding a target: one :class:`Target` entry here, an exporter module with ``export(ExportRequest) ->
ExportResult`` and ``OPTIONS``, and a :class:`runtimes.backends.base.Backend` subclass (docs/design.md, "Targets").

Standard library only: a device that ships ``runtimes`` alone reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dpsims.errors import UnknownTarget


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
    """The module with ``export(ExportRequest) -> ExportResult`` and ``OPTIONS`` (its ``-o`` checks)."""
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


_FP16_ONNX = (("onnxruntime.transformers.float16", "onnx"),)
TARGETS: Mapping[str, Target] = MappingProxyType({t.name: t for t in (
    Target("torch", ("fp32", "fp16", "bf16"), "runtimes.backends.torch_backend:TorchBackend", "train",
           "export.torch_program", summary="a torch.export program (.pt2): the float reference, any torch device"),
    Target("onnx", ("fp32", "fp16", "int8"), "runtimes.backends.onnxruntime_backend:OnnxRuntimeBackend", "onnx",
           "export.onnx", needs=(("onnx", "onnx"), ("onnxruntime", "onnx")), precision_needs={"fp16": _FP16_ONNX},
           triton=TritonServing("onnxruntime_onnx", "onnxruntime", "model.onnx", ("cpu", "gpu")),
           summary="ONNX for ONNX Runtime (CPU, CUDA, TensorRT and other execution providers)"),
    Target("openvino", ("fp32", "fp16", "int8"), "runtimes.backends.openvino_backend:OpenVINOBackend", "openvino",
           "export.openvino", needs=(("onnx", "onnx"), ("openvino", "openvino")),
           precision_needs={"int8": (("nncf", "openvino"),)},
           triton=TritonServing(None, "openvino", "model.xml", ("cpu",)),
           summary="OpenVINO IR (Intel CPUs, GPUs and NPUs); INT8 through NNCF"),
    Target("tensorrt", ("fp32", "fp16", "int8"), "runtimes.backends.tensorrt:TensorRTBackend", "tensorrt",
           "export.tensorrt", needs=(("onnx", "onnx"), ("onnxruntime", "onnx")), precision_needs={"fp16": _FP16_ONNX},
           triton=TritonServing("tensorrt_plan", "tensorrt", "model.plan", ("gpu",)),
           summary="an ONNX (INT8: explicit Q/DQ) for TensorRT, and its engine when TensorRT is installed"),
    Target("coreml", ("fp32", "fp16", "int8w", "w8a8"), "runtimes.backends.coreml:CoreMLBackend", "coreml",
           "export.coreml", needs=(("coremltools", "coreml"),), aliases={"int8": "int8w"},
           summary="a Core ML ML Program (.mlpackage) for Apple devices; int8 = int8 weights, w8a8 = weights+activations"),
)})
"""Every target by name, in the order help texts list them."""

PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for t in TARGETS.values() for p in t.precisions))
"""Every precision some target exports (the manifest's ``precision``)."""


def target_of(name: str) -> Target:
    """The :class:`Target` called ``name``; KeyError naming the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTarget(f"Unknown target {name!r}; known targets: {', '.join(TARGETS)}.") from None
