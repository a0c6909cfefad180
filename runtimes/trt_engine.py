"""TensorRT engines for the generator: build one from the ONNX, cache it per GPU and TensorRT version, load it.

Shared by the runtime (:mod:`runtimes.backends.tensorrt`, so that a Jetson that ships `runtimes` alone builds its
engine on first load) and by :mod:`export.tensorrt` (which builds at export time where TensorRT is installed).
Only numpy is imported here; ``tensorrt`` is imported when an engine is built or loaded.

How the network is built depends on the TensorRT major version (see :func:`plan_network`):

- 8.6: explicit-batch network, precision through builder flags (FP16; INT8 for the Q/DQ ONNX);
- 10.x: a strongly typed network when the ONNX carries the requested precision (FP16 casts, INT8 Q/DQ), builder
  flags when an FP32 ONNX is to be built at FP16 (the weakly typed path, deprecated in 10.12);
- 11.x: strongly typed only: no FP16/INT8 flags; the precision must be in the ONNX.

INT8 is always explicit (the Q/DQ ONNX that ``python -m export`` calibrates and quality-checks): implicit INT8 with
a calibrator is deprecated in 10.x and removed in 11, and no dp-sims path needs it.

DLA (Jetson AGX Orin, Orin NX): TensorRT 8.6 to 10.7 document it for FP16/INT8 builder-flag builds ("DLA support
is currently limited to networks running in FP16 and INT8 mode", trtexec ``--useDLACore=0 --fp16
--allowGPUFallback``), so DLA engines are built weakly typed there; 10.8 to 11.4.0 have no DLA on Jetson; 11.4.1
brings it back on AGX Orin with JetPack 7.2.2+ for strongly typed networks (TensorRT docs, "Working with DLA" and
"Strongly Typed Networks for DLA", 11.3/11.4.1). DLA needs static shapes: a DLA engine is built for one batch size.

An engine only runs on the GPU model and TensorRT version that built it, so a cached engine comes with a sidecar
JSON (``model.engine.json``: TensorRT version, GPU name and compute capability, ONNX sha256, build options and a
key over all of them). The engine file itself is TensorRT's plan, byte for byte: trtexec and Triton load it.

Polygraphy's builder loaders (``polygraphy.backend.trt``) wrap the same Builder/config/parser calls; they are not
used: the per-version decisions above, the DLA runtime core and the sidecar would still be written here, JetPack
does not ship polygraphy, and these few calls are tested call by call against tests/fake_tensorrt.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dpsims.errors import BackendUnavailable, DpSimsError, ManifestError
from dpsims.logs import get_logger
from runtimes.cuda import GpuInfo
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest, sha256_file

__all__ = ["GpuInfo", "EngineBuildError", "BuildOptions", "build_engine", "load_or_build", "plan_network"]

log = get_logger(__name__)

ENGINE_NAME = "model.engine"
SIDECAR_SUFFIX = ".json"  # model.engine -> model.engine.json
SIDECAR_FORMAT = "dp-sims-tensorrt-engine/1"
MIN_VERSION = (8, 6)  # JetPack 6.0; name-based I/O (set_input_shape, set_tensor_address, execute_async_v3)
INSTALL_HINT = (
    "Install it with: pip install 'dp-sims[tensorrt]'. On a Jetson use JetPack's TensorRT instead "
    "(sudo apt install python3-libnvinfer; create the venv with --system-site-packages)."
)


class EngineBuildError(DpSimsError, RuntimeError):
    """TensorRT could not build an engine from the ONNX (parser errors, a precision this version cannot build...)."""


# ------------------------------------------------------------------------------------------ the library


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or raise :class:`BackendUnavailable` naming the extra (and JetPack's package)."""
    try:
        import tensorrt as trt
    except ImportError as e:  # also sys.modules["tensorrt"] = None
        raise BackendUnavailable(f"TensorRT's Python package is not installed ({e}). {INSTALL_HINT}") from None
    if trt_version(trt) < MIN_VERSION:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is too old: dp-sims needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer "
            "(JetPack 6 or newer on Jetson). " + INSTALL_HINT
        )
    return trt


def trt_version(trt: ModuleType) -> tuple[int, int, int]:
    """(major, minor, patch) of ``trt.__version__`` ("10.3.0.30" -> (10, 3, 0))."""
    parts = [int(p) if p.isdigit() else 0 for p in (trt.__version__.split(".") + ["0", "0"])[:3]]
    return parts[0], parts[1], parts[2]


def timing_cache_name(tensorrt_version: str) -> str:
    """``model.timing.<version>.cache``: one per TensorRT version, so a JetPack upgrade never reads another
    version's cache (TensorRT refuses it: "Magic tag does not match")."""
    return f"model.timing.{tensorrt_version}.cache"


def dla_available(version: tuple[int, ...]) -> bool:
    """TensorRT versions with DLA on Jetson: up to 10.7, and again from 11.4.1 (AGX Orin, JetPack 7.2.2+)."""
    version = tuple(version) + (0,) * (3 - len(version))
    return version < (10, 8, 0) or version >= (11, 4, 1)


#: TensorRT DataType name -> numpy dtype (instead of trt.nptype, which uses np.bool on TensorRT 8.5)
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype(dtype: Any) -> np.dtype:
    name = getattr(dtype, "name", str(dtype)).split(".")[-1]
    if name not in NUMPY_DTYPES:
        raise ManifestError(f"The engine has a {name} tensor; the graph contract's tensors are int32 and float.")
    return np.dtype(NUMPY_DTYPES[name])


_LOGGERS: weakref.WeakKeyDictionary[ModuleType, Any] = weakref.WeakKeyDictionary()


def trt_logger(trt: ModuleType) -> Any:
    """One ``trt.Logger`` per process (TensorRT's advice); it prints warnings and errors to stderr."""
    if trt not in _LOGGERS:
        _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt]


# ------------------------------------------------------------------------------------------ what to build


@dataclass(frozen=True)
class BuildOptions:
    precision: str
    """What the engine computes in: fp32, fp16 or int8."""
    onnx_precision: str
    """What the ONNX itself carries: fp32, fp16 (float16 weights/casts) or int8 (Q/DQ nodes)."""
    input_size: tuple[int, int]
    noise_shape: tuple[int, ...]
    batch: tuple[int, int, int] = (1, 1, 16)
    workspace_gb: float = 2.0
    dla_core: int | None = None

    def __post_init__(self) -> None:
        for name in ("precision", "onnx_precision"):
            if getattr(self, name) not in ("fp32", "fp16", "int8"):
                raise EngineBuildError(f"TensorRT builds fp32, fp16 or int8 engines; {name} is {getattr(self, name)!r}.")
        lo, opt, hi = self.batch
        if not 1 <= lo <= opt <= hi:
            raise EngineBuildError(f"batch must be (min, opt, max) with 1 <= min <= opt <= max, got {self.batch}.")
        if self.dla_core is not None and self.dla_core < 0:
            raise EngineBuildError(f"dla_core must be a DLA core index >= 0, got {self.dla_core}.")
        if self.dla_core is not None and lo != hi:
            raise EngineBuildError(
                f"DLA runs static shapes only (a dynamic batch {self.batch} falls back to the GPU): export for DLA "
                f"with one batch size, e.g. --batch {opt},{opt},{opt}."
            )
        if self.workspace_gb <= 0:
            raise EngineBuildError(f"workspace_gb must be positive, got {self.workspace_gb}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "input_size": list(self.input_size), "noise_shape": list(self.noise_shape), "batch": list(self.batch)}


@dataclass(frozen=True)
class NetworkPlan:
    """How the network is created and configured for one TensorRT version."""

    explicit_batch: bool
    """Set NetworkDefinitionCreationFlag.EXPLICIT_BATCH (required before 10, gone in 11)."""
    strongly_typed: bool
    """Tensor types come from the ONNX; on 10.x through the STRONGLY_TYPED flag, always on in 11."""
    builder_flags: tuple[str, ...] = ()
    """BuilderFlag names to set (FP16, INT8, GPU_FALLBACK)."""
    notes: tuple[str, ...] = field(default_factory=tuple)


def _as_version(version: int | tuple[int, ...]) -> tuple[int, int, int]:
    v = (version,) if isinstance(version, int) else tuple(version)
    return (tuple(v) + (0, 0, 0))[:3]  # type: ignore[return-value]


def plan_network(version: int | tuple[int, ...], precision: str, onnx_precision: str, dla: bool = False) -> NetworkPlan:
    """Decide flags and typing from the TensorRT version (a major or (major, minor, patch)) and what the ONNX
    carries (pure; no TensorRT)."""
    version = _as_version(version)
    major = version[0]
    if onnx_precision != "fp32" and onnx_precision != precision:
        raise EngineBuildError(
            f"The ONNX is already {onnx_precision} and cannot be built as {precision}: build it as {onnx_precision}, "
            f"or give the FP32 ONNX (python -m export --target tensorrt --precision {precision})."
        )
    if precision == "int8" and onnx_precision != "int8":
        raise EngineBuildError(
            "INT8 engines are built from the Q/DQ ONNX (explicit quantization, calibrated and quality-checked): make "
            "it with python -m export --target tensorrt --precision int8. Implicit INT8 from an FP32 ONNX with a "
            "calibrator is deprecated in TensorRT 10 and removed in 11."
        )
    if dla and precision == "fp32":
        raise EngineBuildError("DLA runs FP16 and INT8 layers only: build with --precision fp16 or int8 for DLA.")
    if dla and not dla_available(version):
        raise EngineBuildError(
            f"TensorRT {'.'.join(map(str, version))} has no DLA on Jetson: 10.7 was the last 10.x with DLA and 11.4.1 "
            "brings it back on AGX Orin with JetPack 7.2.2 or newer. Build for the GPU (no --dla), or use a "
            "TensorRT that has DLA (JetPack 6.0: 8.6, JetPack 6.1/6.2: 10.3)."
        )
    fallback = ("GPU_FALLBACK",) if dla else ()
    reduced = precision != onnx_precision  # an FP32 ONNX to be built at fp16: only builder flags can do it
    if major >= 11:
        if reduced:
            raise EngineBuildError(
                f"TensorRT {major} builds strongly typed networks only (no FP16/INT8 builder flags): the ONNX must "
                f"carry the {precision} precision itself. Make that ONNX with python -m export --target tensorrt "
                "--precision fp16 (ONNX casts), or ModelOpt AutoCast."
            )
        return NetworkPlan(explicit_batch=False, strongly_typed=True, builder_flags=fallback)
    explicit_batch = major < 10
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
    if dla:
        # DLA on 8.6..10.7: FP16/INT8 builder-flag builds. FP16 with INT8 lets the layers the Q/DQ ONNX keeps in
        # float run on DLA in FP16 instead of falling back to the GPU.
        flags = ("INT8", "FP16") if precision == "int8" else ("FP16",)
        note = "DLA engine: weakly typed with the FP16/INT8 builder flags, GPU fallback for layers DLA cannot run."
        return NetworkPlan(explicit_batch=explicit_batch, strongly_typed=False, builder_flags=flags + fallback,
                           notes=(note,))
    if not reduced:
        if major >= 10:
            return NetworkPlan(explicit_batch=False, strongly_typed=True)
        # 8.6: weakly typed; reduced-precision ONNX types still need the flag that allows those kernels
        return NetworkPlan(explicit_batch=explicit_batch, strongly_typed=False, builder_flags=flags)
    return NetworkPlan(explicit_batch=explicit_batch, strongly_typed=False, builder_flags=flags)


def detect_onnx_precision(onnx_path: str | Path) -> str:
    """int8 when the graph has Q/DQ nodes, fp16 when it computes in float16 (weights or casts), else fp32.

    Needs the ``onnx`` package; a Jetson without it reads the value export wrote into model.json instead."""
    try:
        import onnx
    except ImportError:
        raise BackendUnavailable(
            "Telling the ONNX's precision needs the onnx package: pip install 'dp-sims[onnx]' (or pass onnx_precision)."
        ) from None
    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


# ------------------------------------------------------------------------------------------------ build


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str,
    batch: tuple[int, int, int] = (1, 1, 16),
    *,
    input_size: tuple[int, int],
    noise_shape: tuple[int, ...],
    workspace_gb: float = 2.0,
    dla_core: int | None = None,
    timing_cache: str | Path | None = None,
    onnx_precision: str | None = None,
    gpu: GpuInfo | None = None,
    trt: ModuleType | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build ``engine_path`` (TensorRT's plan) and its sidecar ``engine_path + '.json'`` from ``onnx_path``.

    ``batch`` is the (min, opt, max) optimisation profile of the batch dimension of ``label`` and ``noise``.
    ``timing_cache``: a file read before the build (when it exists and fits this GPU) and written after it, so
    that rebuilds (another batch profile, precision...) skip most kernel timing; name it per TensorRT version
    (:func:`timing_cache_name`). A cache TensorRT cannot use is replaced by a fresh one. ``gpu`` is recorded in
    the sidecar. ``progress``: report the build's phases (TensorRT >= 10's IProgressMonitor; a tqdm bar when
    tqdm is installed, else log lines). Returns the sidecar's content.

    About 85 lines by design: the builder calls in the order TensorRT documents them, with the per-version
    branches (network flags, DLA, precision) inline where a reader of the TensorRT docs looks for them.
    """
    trt = trt or import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    options = BuildOptions(
        precision=precision,
        onnx_precision=onnx_precision or detect_onnx_precision(onnx_path),
        input_size=tuple(input_size),
        noise_shape=tuple(noise_shape),
        batch=tuple(batch),
        workspace_gb=workspace_gb,
        dla_core=dla_core,
    )
    version = trt_version(trt)
    major = version[0]
    plan = plan_network(version, options.precision, options.onnx_precision, dla=dla_core is not None)
    for note in plan.notes:
        log.info(note)

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, major, plan))
    _parse_onnx(trt, network, logger, onnx_path)
    config = _builder_config(trt, builder, network, options, plan)
    cache_file = Path(timing_cache) if timing_cache else None
    if cache_file is not None:
        _use_timing_cache(config, cache_file)
    monitor = make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    log.info("Building a TensorRT %s %s engine from %s (minutes on a Jetson)", trt.__version__, precision, onnx_path)
    start = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close()
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} failed to build the {precision} engine from {onnx_path}; its log above says "
            "why. Common causes: too little workspace (raise workspace_gb), a layer DLA cannot run, an out-of-memory GPU."
        )
    if cache_file is not None:  # the cache set on the config now also holds this build's timings
        atomic_write_bytes(cache_file, memoryview(config.get_timing_cache().serialize()))
    atomic_write_bytes(engine_path, memoryview(serialized))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt": trt.__version__,
        "gpu": asdict(gpu) if gpu is not None else None,
        "onnx_sha256": sha256_file(onnx_path),
        "engine_sha256": sha256_file(engine_path),
        "build": options.to_dict(),
        "network": {"strongly_typed": plan.strongly_typed, "builder_flags": list(plan.builder_flags)},
        "build_seconds": round(seconds, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if gpu is not None:
        sidecar["cache_key"] = cache_key(sidecar["onnx_sha256"], options, trt.__version__, gpu)
    atomic_write_bytes(sidecar_path(engine_path), json.dumps(sidecar, indent=2).encode())
    return sidecar


def _network_flags(trt: ModuleType, major: int, plan: NetworkPlan) -> int:
    kinds = trt.NetworkDefinitionCreationFlag
    flags = 0
    if plan.explicit_batch:
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    if plan.strongly_typed and major == 10:  # 11 is always strongly typed (the flag is deprecated there)
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    return flags


def _parse_onnx(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    parser_flags = getattr(trt, "OnnxParserFlag", None)
    if parser_flags is not None and hasattr(parser_flags, "NATIVE_INSTANCENORM"):
        parser.set_flag(parser_flags.NATIVE_INSTANCENORM)  # the plugin-free InstanceNormalization (8.6+)
    if not onnx_path.is_file():
        raise ManifestError(f"No ONNX file at {onnx_path}.")
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so that external weight files are found
        errors = "\n".join(f"  - {parser.get_error(i)}" for i in range(parser.num_errors))
        raise EngineBuildError(
            f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors or '  (no error recorded)'}\n"
            "Export the ONNX again with --opset 17 (TensorRT 8.6 reads opsets up to 17), or update TensorRT."
        )


def _builder_config(trt: ModuleType, builder: Any, network: Any, options: BuildOptions, plan: NetworkPlan) -> Any:
    """Workspace, precision flags, the batch profile and DLA."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    shapes = _input_shapes(network, options)
    config.add_optimization_profile(_profile(builder, shapes, options.batch))
    if options.dla_core is not None:
        _use_dla(trt, builder, config, options.dla_core)
    return config


def _input_shapes(network: Any, options: BuildOptions) -> dict[str, tuple[int, ...]]:
    """The ONNX's inputs, checked against the graph contract; batch dimension first and dynamic."""
    expected = {INPUT_LABEL: tuple(options.input_size), INPUT_NOISE: tuple(options.noise_shape)}
    found = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    if set(found) != set(expected) or OUTPUT_IMAGE not in outputs:
        raise EngineBuildError(
            f"The ONNX has inputs {sorted(found)} and outputs {outputs}; the graph contract wants inputs "
            f"{INPUT_LABEL!r}, {INPUT_NOISE!r} and output {OUTPUT_IMAGE!r}. Export it again with `python -m export`."
        )
    shapes = {}
    for name, shape in found.items():
        rest = tuple(expected[name])
        if len(shape) != len(rest) + 1 or any(d not in (-1, e) for d, e in zip(shape[1:], rest)):
            raise EngineBuildError(
                f"The ONNX input {name!r} has shape {list(shape)}; the artifact says [N, {', '.join(map(str, rest))}]."
            )
        shapes[name] = rest
    return shapes


def _profile(builder: Any, shapes: dict[str, tuple[int, ...]], batch: tuple[int, int, int]) -> Any:
    profile = builder.create_optimization_profile()
    for name, rest in shapes.items():
        lo, opt, hi = ((b, *rest) for b in batch)
        profile.set_shape(name, lo, opt, hi)
    return profile


def check_dla_core(core: int, available: int) -> None:
    if core >= available:
        raise EngineBuildError(
            f"DLA core {core} was asked for, this device has {available} DLA core(s). DLA exists on Jetson AGX Orin "
            "(2 cores) and Orin NX (1 or 2); run on the GPU elsewhere (device='cuda', no --dla)."
        )


def _use_dla(trt: ModuleType, builder: Any, config: Any, core: int) -> None:
    check_dla_core(core, int(getattr(builder, "num_DLA_cores", 0)))
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core


def _use_timing_cache(config: Any, path: Path) -> None:
    """Start from the timings in ``path`` when TensorRT can use them here; else from an empty cache.

    Another GPU's cache: ``set_timing_cache(..., ignore_mismatch=False)`` returns False. Another TensorRT
    version's (or a damaged) file: TensorRT logs "Magic tag does not match" and the cache cannot be created
    (None or an exception, depending on the version). Either way the build goes on with a fresh cache, which it
    then writes to ``path``: a timing cache only saves time, it never decides whether an engine can be built."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return
            why = "made on another GPU" if cache is not None else "unreadable by this TensorRT version"
        except Exception as e:  # noqa: BLE001 - TensorRT raises its own error types; the cache is optional
            why = f"unreadable by this TensorRT version ({e})"
        log.warning("The timing cache %s is %s; starting a fresh one.", path, why)
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        raise EngineBuildError("TensorRT could not create an empty timing cache; its log above says why.")


class _ProgressMonitor:
    """Reports TensorRT's build phases (IProgressMonitor callbacks) as a tqdm bar per phase, or as log lines."""

    def __init__(self, use_tqdm: bool):
        self._bars: dict[str, Any] = {}
        self._use_tqdm = use_tqdm
        self._last_logged: dict[str, float] = {}

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        if self._use_tqdm:
            from tqdm import tqdm

            depth = len(self._bars)
            self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0)
        else:
            log.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        bar = self._bars.get(phase_name)
        if bar is not None:
            bar.update(step + 1 - bar.n)  # tqdm redraws at most every mininterval
        elif time.monotonic() - self._last_logged.get(phase_name, 0.0) > 30:  # a line every 30 s per phase
            self._last_logged[phase_name] = time.monotonic()
            log.info("TensorRT build: %s step %d", phase_name, step + 1)
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        bar = self._bars.pop(phase_name, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def make_progress_monitor(trt: ModuleType) -> Any:
    """An ``IProgressMonitor`` (TensorRT >= 10) that shows the build's progress, or None on older TensorRT."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    try:
        import tqdm  # noqa: F401

        use_tqdm = sys.stderr.isatty()  # bars on a terminal; log lines in a log file
    except ImportError:
        use_tqdm = False

    class Monitor(_ProgressMonitor, base):
        def __init__(self) -> None:
            base.__init__(self)  # TensorRT's pybind base must be initialised explicitly
            _ProgressMonitor.__init__(self, use_tqdm)

    return Monitor()


# ------------------------------------------------------------------------------------------------ cache


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def cache_key(onnx_sha256: str, options: BuildOptions, tensorrt_version: str, gpu: GpuInfo) -> str:
    """sha256 over everything an engine depends on: the ONNX, the build options, TensorRT's version and the GPU."""
    blob = {
        "format": SIDECAR_FORMAT,
        "onnx_sha256": onnx_sha256,
        "build": options.to_dict(),
        "tensorrt": tensorrt_version,
        "gpu": asdict(gpu),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def stale_reason(engine_path: Path, key: str, gpu: GpuInfo, tensorrt_version: str) -> str | None:
    """None when the cached engine at ``engine_path`` was built for exactly this key; else why it cannot be used."""
    side = sidecar_path(engine_path)
    if not engine_path.is_file() or not side.is_file():
        return "no cached engine"
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return f"{side} is unreadable"
    if meta.get("cache_key") == key:
        if meta.get("engine_sha256") != sha256_file(engine_path):
            return f"{engine_path} does not match the sha256 in its sidecar"
        return None
    built_gpu = (meta.get("gpu") or {}).get("name")
    if meta.get("tensorrt") != tensorrt_version:
        return f"built with TensorRT {meta.get('tensorrt')}, this is TensorRT {tensorrt_version}"
    if built_gpu != gpu.name or (meta.get("gpu") or {}).get("compute_capability") != gpu.compute_capability:
        return f"built on {built_gpu}, this GPU is {gpu.name}"
    return "built from another ONNX or with other build options"


@dataclass
class LoadedEngine:
    engine: Any
    """The deserialized ICudaEngine."""
    runtime: Any
    """The trt.Runtime that deserialized it (kept alive as long as the engine)."""
    path: Path
    cache_hit: bool
    reason: str
    """Why it was (re)built, or "cached engine matches this GPU and TensorRT"."""
    sidecar: dict[str, Any]


#: ``dla_core=GPU_ONLY`` overrides an artifact built for DLA to run on the GPU
GPU_ONLY = -1


def build_options(manifest: Manifest, workspace_gb: float | None = None, dla_core: int | None = None) -> BuildOptions:
    """The build options an artifact's manifest asks for (``target_options`` written by export), with overrides:
    ``dla_core`` None keeps the manifest's, a core index runs there, :data:`GPU_ONLY` runs on the GPU."""
    opts = manifest.target_options
    b = manifest.batch
    if dla_core is None:
        dla_core = opts.get("dla_core")
    elif dla_core == GPU_ONLY:
        dla_core = None
    return BuildOptions(
        precision=opts.get("precision", manifest.precision),
        onnx_precision=opts.get("onnx_precision", manifest.precision),
        input_size=tuple(manifest.input_size),
        noise_shape=tuple(manifest.noise_shape),
        batch=(int(b["min"]), int(b["opt"]), int(b["max"])),
        workspace_gb=float(workspace_gb if workspace_gb is not None else opts.get("workspace_gb", 2.0)),
        dla_core=dla_core,
    )


def default_cache_dir(artifact_dir: Path, onnx_sha256: str) -> Path:
    """The artifact directory when writable (engine beside the ONNX), else ~/.cache/dp-sims/tensorrt/<onnx>."""
    if os.access(artifact_dir, os.W_OK):
        return artifact_dir
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "dp-sims" / "tensorrt" / onnx_sha256[:16]


def load_or_build(
    artifact_dir: str | Path,
    manifest: Manifest,
    gpu: GpuInfo | None = None,
    *,
    cache_dir: str | Path | None = None,
    workspace_gb: float | None = None,
    dla_core: int | None = None,
    rebuild: bool = False,
    trt: ModuleType | None = None,
) -> LoadedEngine:
    """Deserialize the cached engine when its sidecar matches this GPU, TensorRT version, ONNX and options;
    otherwise build it from the artifact's ONNX and cache it (atomically) beside it or in ``cache_dir``.

    ``gpu``: the GPU the engine is for (default: GPU 0, asked through cuda-python or pycuda). ``dla_core``: see
    :func:`build_options`; the runtime is told the core (``Runtime.DLA_core``) before it deserializes, since an
    engine built for DLA core 1 otherwise runs on core 0."""
    trt = trt or import_tensorrt()
    if gpu is None:
        from runtimes.cuda import open_cuda

        cuda = open_cuda()
        gpu = cuda.device_info()
        cuda.close()
    artifact_dir = Path(artifact_dir)
    onnx_entry = manifest.file(manifest.target_options.get("onnx", "model.onnx"))
    options = build_options(manifest, workspace_gb, dla_core)
    key = cache_key(onnx_entry.sha256, options, trt.__version__, gpu)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir(artifact_dir, onnx_entry.sha256)
    engine_path = directory / ENGINE_NAME
    runtime = trt.Runtime(trt_logger(trt))
    if options.dla_core is not None:
        check_dla_core(options.dla_core, int(getattr(runtime, "num_DLA_cores", 0)))
        runtime.DLA_core = options.dla_core

    reason = "rebuild requested" if rebuild else stale_reason(engine_path, key, gpu, trt.__version__)
    if reason is None:
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is not None:
            meta = json.loads(sidecar_path(engine_path).read_text())
            return LoadedEngine(engine, runtime, engine_path, True, "cached engine matches this GPU and TensorRT", meta)
        reason = "TensorRT could not deserialize the cached engine"
    log.info("Building the TensorRT engine for %s: %s", artifact_dir, reason)
    directory.mkdir(parents=True, exist_ok=True)
    meta = build_engine(
        artifact_dir / onnx_entry.path,
        engine_path,
        options.precision,
        options.batch,
        input_size=options.input_size,
        noise_shape=options.noise_shape,
        workspace_gb=options.workspace_gb,
        dla_core=options.dla_core,
        timing_cache=directory / timing_cache_name(trt.__version__),
        onnx_precision=options.onnx_precision,
        gpu=gpu,
        trt=trt,
    )
    if meta["onnx_sha256"] != onnx_entry.sha256:
        raise ManifestError(f"{artifact_dir / onnx_entry.path} changed while the engine was built; load the artifact again.")
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} built {engine_path} but cannot deserialize it; see its log above.")
    return LoadedEngine(engine, runtime, engine_path, False, reason, meta)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
