"""A small fake of TensorRT's Python API and of CUDA (cuda-python's cudart, pycuda's driver), for testing dp-sims'
TensorRT code without a GPU. It fails where the real API fails, so the code under test has to handle it.

``make_tensorrt("8.6.1" | "10.3.0" | "11.0.0", device)`` returns a module object with the surface dp-sims uses:
Logger, Builder, NetworkDefinitionCreationFlag, OnnxParser, OnnxParserFlag, BuilderFlag, MemoryPoolType,
DeviceType, Runtime, TensorIOMode, DataType, IProgressMonitor (10+) and __version__, shaped like that version:

- 8.6 needs EXPLICIT_BATCH, has no STRONGLY_TYPED, no INT64 tensors, no IProgressMonitor, and parses opsets up to 17;
- 11 has no EXPLICIT_BATCH and no BuilderFlag.FP16/INT8; 10 rejects precision flags on a strongly typed network;
- the parser rejects Q/DQ that TensorRT does not read (non-int8 zero points, a QuantizeLinear without one: uint8);
- ``create_timing_cache`` of another TensorRT version's cache logs "Magic tag does not match" and returns None;
  ``set_timing_cache`` returns False for another GPU's cache and raises TypeError for None (pybind's check);
- ``create_execution_context`` returns None when the device is out of memory (``FakeDevice.out_of_memory``);
- ``set_tensor_address`` returns False for an address that is not device memory;
- ``Runtime.DLA_core`` (default -1) decides the DLA core a deserialized DLA engine runs on (core 0 when unset);
  DLA layers need FP16/INT8 precision and static shapes, else the engine runs on the GPU (``runs_on_dla``);
  versions without DLA on Jetson (10.8 .. 11.4.0) report 0 DLA cores.

:func:`make_cudart` and :func:`make_pycuda` fake ``cuda.bindings.runtime`` and ``pycuda.driver`` over the same
:class:`FakeDevice`, with their real call shapes: cudart returns ``(cudaError_t, *values)`` tuples (None values on
an error) and reads and writes host memory by address; pycuda raises ``Error`` and needs a current context.

Every call that matters is appended to ``device.calls`` (shared with :class:`FakeCuda`), so tests can check what
was configured and in which order. A "plan" is a JSON header + the ONNX bytes; "executing" an engine runs the ONNX
in onnxruntime, reading and writing the fake device memory, so a round trip gives real images. Streams are real
queues: copies and executions happen at ``synchronize``, so a backend that forgets it reads stale memory.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.cuda import CudaApi, GpuInfo

PLAN_MAGIC = b"FAKETRTPLAN\n"


class FakeDevice:
    """GPU memory (a dict of bytearrays), streams (queues of pending work) and the shared journal of calls."""

    def __init__(self, name: str = "NVIDIA Fake GPU", compute_capability: str = "8.7", dla_cores: int = 0):
        self.name = name
        self.compute_capability = compute_capability
        self.dla_cores = dla_cores
        self.out_of_memory = False  # create_execution_context returns None, cudaMalloc fails
        self.driver_error: int | None = None  # e.g. 35: cudaGetDeviceCount / cuInit fail with it
        self.calls: list[tuple] = []
        self.memory: dict[int, bytearray] = {}
        self.streams: dict[int, list] = {}
        self._next_ptr = 0x7F00_0000_0000
        self._next_stream = 1

    def record(self, *call: Any) -> None:
        self.calls.append(call)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def owns(self, ptr: int) -> bool:
        return ptr in self.memory

    def alloc(self, nbytes: int) -> int:
        ptr = self._next_ptr
        self.memory[ptr] = bytearray(nbytes)
        self._next_ptr += (nbytes + 255) // 256 * 256 + 256
        return ptr

    def read(self, ptr: int, nbytes: int) -> bytes:
        buf = self.memory[ptr]
        if nbytes > len(buf):
            raise ValueError(f"reading {nbytes} bytes from an allocation of {len(buf)}")
        return bytes(buf[:nbytes])

    def write(self, ptr: int, data: bytes) -> None:
        buf = self.memory[ptr]
        if len(data) > len(buf):
            raise ValueError(f"writing {len(data)} bytes into an allocation of {len(buf)}")
        buf[: len(data)] = data

    def new_stream(self) -> int:
        handle, self._next_stream = self._next_stream, self._next_stream + 1
        self.streams[handle] = []
        return handle

    def enqueue(self, handle: int, work) -> None:
        self.streams[handle].append(work)

    def run_stream(self, handle: int) -> None:
        queue = self.streams[handle]
        while queue:
            queue.pop(0)()


class FakeCuda(CudaApi):
    """:class:`runtimes.backends.tensorrt.CudaApi` over a :class:`FakeDevice`; copies wait for ``synchronize``."""

    def __init__(self, device: FakeDevice):
        self.dev = device
        self.name = "fake-cuda"
        self.closed = False

    def device_info(self) -> GpuInfo:
        return GpuInfo(self.dev.name, self.dev.compute_capability)

    def malloc(self, nbytes: int) -> int:
        ptr = self.dev.alloc(nbytes)
        self.dev.record("cuda.malloc", ptr, nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        self.dev.record("cuda.free", ptr)
        del self.dev.memory[ptr]

    def host_buffer(self, nbytes: int) -> np.ndarray:
        self.dev.record("cuda.host_buffer", nbytes)
        return np.zeros(nbytes, dtype=np.uint8)

    def free_host(self, buffer: np.ndarray) -> None:
        self.dev.record("cuda.free_host", buffer.nbytes)

    def stream_create(self) -> int:
        handle = self.dev.new_stream()
        self.dev.record("cuda.stream_create", handle)
        return handle

    def stream_handle(self, stream: int) -> int:
        return stream

    def stream_destroy(self, stream: int) -> None:
        self.dev.record("cuda.stream_destroy", stream)
        del self.dev.streams[stream]

    def copy_htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.dev.record("cuda.htod", dst, src.nbytes)
        data = src.tobytes()  # the source must not change before the copy runs; a snapshot models pinned memory
        self.dev.enqueue(stream, lambda: self.dev.write(dst, data))

    def copy_dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.dev.record("cuda.dtoh", src, dst.nbytes)

        def copy() -> None:
            dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.dev.read(src, dst.nbytes), dtype=np.uint8)

        self.dev.enqueue(stream, copy)

    def synchronize(self, stream: int) -> None:
        self.dev.record("cuda.synchronize", stream)
        self.dev.run_stream(stream)

    def close(self) -> None:
        self.closed = True


# ------------------------------------------------------------------------------------------ the fake API


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.INT64: np.int64}
_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL, 7: DataType.INT64}
MAX_OPSET_8_6 = 17  # onnx-tensorrt 8.6 supports opsets 7 to 17


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class OnnxParserFlag(enum.IntEnum):
    NATIVE_INSTANCENORM = 0


def nptype(dtype: DataType) -> type:
    return _NP[DataType(dtype)]


class IProgressMonitor:
    """TensorRT >= 10's progress callbacks; subclasses call ``IProgressMonitor.__init__(self)`` (pybind rule)."""

    def __init__(self) -> None:
        self._initialised = True


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = _Severity

    def __init__(self, min_severity: _Severity = _Severity.WARNING):
        self.min_severity = min_severity
        self.messages: list[str] = []

    def log(self, severity: _Severity, msg: str) -> None:
        self.messages.append(msg)


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType):
        self.name, self.shape, self.dtype = name, shape, dtype


def _value_info(v) -> ITensor:
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
    return ITensor(v.name, dims, _ONNX_TO_TRT[v.type.tensor_type.elem_type])


def _inferred_outputs(model):
    """Output shapes as TensorRT computes them from the inputs (it ignores the file's declared output shapes):
    ONNX shape inference with the declared output dims and intermediate guesses cleared, batch left dynamic."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    for output in model.graph.output:
        for dim in list(output.type.tensor_type.shape.dim)[1:]:
            dim.Clear()
    return onnx.shape_inference.infer_shapes(model).graph.output


class INetworkDefinition:
    def __init__(self, api: FakeTensorRT, flags: int):
        self.api, self.flags = api, flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx: bytes | None = None
        self.ops: set[str] = set()

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> ITensor:
        return self.inputs[i]

    def get_output(self, i: int) -> ITensor:
        return self.outputs[i]

    def has_flag(self, name: str) -> bool:
        member = getattr(self.api.NetworkDefinitionCreationFlag, name, None)
        return member is not None and bool(self.flags & (1 << int(member)))


class ParserError:
    def __init__(self, node: int, desc: str):
        self._node, self._desc = node, desc

    def node(self) -> int:
        return self._node

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return f"In node {self._node}: {self._desc}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger):
        self.network, self.logger = network, logger
        self.errors: list[ParserError] = []
        self.flags: set[int] = set()

    def set_flag(self, flag: OnnxParserFlag) -> None:
        self.network.api.dev.record("parser.set_flag", OnnxParserFlag(flag).name)
        self.flags.add(int(flag))

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        self.network.api.dev.record("parser.parse_from_file", path)
        return self._parse(Path(path).read_bytes())

    def parse(self, model: bytes, path: str | None = None) -> bool:
        self.network.api.dev.record("parser.parse", path)
        return self._parse(bytes(model))

    def _parse(self, data: bytes) -> bool:
        import onnx

        api, net = self.network.api, self.network
        if api.major < 10 and not net.has_flag("EXPLICIT_BATCH"):
            self.errors.append(ParserError(-1, "The ONNX parser only supports networks with an explicit batch dimension."))
            return False
        model = onnx.load_from_string(data)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if api.major < 10 and opset > MAX_OPSET_8_6:
            self.errors.append(ParserError(-1, f"Unsupported ONNX opset {opset}: this parser supports opsets up to "
                                               f"{MAX_OPSET_8_6}."))
            return False
        constants = {t.name: t for t in model.graph.initializer}
        for i, node in enumerate(model.graph.node):
            if node.op_type in api.unsupported_ops:
                self.errors.append(ParserError(i, f"No importer registered for op: {node.op_type}"))
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zero = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                if node.op_type == "QuantizeLinear" and zero is None and (len(node.input) < 3 or not node.input[2]):
                    self.errors.append(ParserError(i, "QuantizeLinear without a zero point quantizes to UINT8; "
                                                      "only INT8 quantization is supported."))
                elif zero is not None and zero.data_type != onnx.TensorProto.INT8:
                    self.errors.append(ParserError(i, f"{node.op_type}: zero point must be INT8."))
                elif node.op_type == "DequantizeLinear" and node.input[0] in constants \
                        and constants[node.input[0]].data_type != onnx.TensorProto.INT8:
                    self.errors.append(ParserError(i, "DequantizeLinear input must be INT8."))
        if self.errors:
            return False
        inputs = [v for v in model.graph.input if v.name not in constants]
        io = [*inputs, *model.graph.output]
        if api.major < 10 and any(v.type.tensor_type.elem_type == onnx.TensorProto.INT64 for v in io):
            self.errors.append(ParserError(-1, "INT64 network inputs and outputs are not supported (TensorRT 8.6)."))
            return False
        net.inputs = [_value_info(v) for v in inputs]
        net.outputs = [_value_info(v) for v in _inferred_outputs(model)]
        net.ops = {node.op_type for node in model.graph.node}
        net.onnx = data
        return True


class IOptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, tuple[tuple, tuple, tuple]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    def get_shape(self, name: str) -> list[tuple]:
        return list(self.shapes[name])


class ITimingCache:
    """Serialized as a version tag + JSON: the TensorRT version and GPU it was made on, and the layer timings it
    holds (one per ONNX op type)."""

    def __init__(self, version: str, gpu: str, entries: dict[str, float] | None = None):
        self.version, self.gpu, self.entries = version, gpu, dict(entries or {})

    def serialize(self) -> bytes:
        return f"FAKETRTCACHE {self.version}\n".encode() + json.dumps({"gpu": self.gpu, "entries": self.entries}).encode()


class IBuilderConfig:
    def __init__(self, api: FakeTensorRT):
        self.api = api
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.timing_cache: ITimingCache | None = None
        self.progress_monitor: Any = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.api.dev.record("config.set_memory_pool_limit", MemoryPoolType(pool).name, size)
        self.pools[MemoryPoolType(pool).name] = size

    def set_flag(self, flag: Any) -> None:
        self.api.dev.record("config.set_flag", flag.name)
        self.flags.add(flag.name)

    def get_flag(self, flag: Any) -> bool:
        return flag.name in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.api.dev.record("config.add_optimization_profile", dict(profile.shapes))
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> ITimingCache | None:
        self.api.dev.record("config.create_timing_cache", len(data))
        data = bytes(data)
        if not data:
            return ITimingCache(self.api.__version__, self.api.dev.name)
        tag, _, body = data.partition(b"\n")
        if tag != f"FAKETRTCACHE {self.api.__version__}".encode():
            self.api.log(Logger.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReaderInitCommon::47] Error Code 1: "
                                       "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed."
                                       "Magic tag does not match)")
            return None
        blob = json.loads(body)
        return ITimingCache(self.api.__version__, blob["gpu"], blob["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments. The following argument types are "
                            "supported: (self, cache: tensorrt.ITimingCache, ignore_mismatch: bool) -> bool")
        ok = ignore_mismatch or cache.gpu == self.api.dev.name
        self.api.dev.record("config.set_timing_cache", len(cache.entries), ok)
        if ok:
            self.timing_cache = cache
        return ok

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class IHostMemory(bytes):
    @property
    def nbytes(self) -> int:
        return len(self)


class Builder:
    def __init__(self, api: FakeTensorRT, logger: Logger):
        self.api, self.logger = api, logger

    @property
    def num_DLA_cores(self) -> int:
        return self.api.dla_cores

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        self.api.dev.record("builder.create_network", flags)
        return INetworkDefinition(self.api, flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.api)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        api = self.api
        strongly_typed = api.major >= 11 or network.has_flag("STRONGLY_TYPED")
        if strongly_typed and {"FP16", "INT8"} & config.flags:
            self.logger.log(Logger.ERROR, "FP16/INT8 builder flags are not allowed with a strongly typed network.")
            api.dev.record("builder.build_serialized_network", None)
            return None
        if network.onnx is None or not config.profiles:
            api.dev.record("builder.build_serialized_network", None)
            return None
        if not _report_progress(api, config.progress_monitor, len(network.ops)):
            self.logger.log(Logger.ERROR, "The build was cancelled by the progress monitor.")
            api.dev.record("builder.build_serialized_network", None)
            return None
        dla_core = config.DLA_core if config.default_device_type == DeviceType.DLA else None
        if dla_core is not None and dla_core >= api.dla_cores:
            self.logger.log(Logger.ERROR, f"DLA core {dla_core} does not exist.")
            api.dev.record("builder.build_serialized_network", None)
            return None
        profile = config.profiles[0]
        static = all(lo == hi for lo, _, hi in profile.shapes.values())
        # DLA computes in FP16/INT8 (precision flags) on static shapes; anything else runs on the GPU
        runs_on_dla = dla_core is not None and static and bool({"FP16", "INT8"} & config.flags) and not strongly_typed
        reused = 0
        if config.timing_cache is not None:  # one "tactic timing" per op type: reused when already in the cache
            reused = sum(op in config.timing_cache.entries for op in network.ops)
            config.timing_cache.entries.update({op: 1.0 for op in network.ops})
        header = {
            "tensorrt": api.__version__,
            "gpu": api.dev.name,
            "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
            "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs],
            "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()},
            "flags": sorted(config.flags),
            "strongly_typed": strongly_typed,
            "dla_core": dla_core,
            "runs_on_dla": runs_on_dla,
        }
        api.dev.record("builder.build_serialized_network", {**header, "timing_reused": reused})
        api.builds += 1
        return IHostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx)


def _report_progress(api: FakeTensorRT, monitor: Any, steps: int) -> bool:
    """What TensorRT does with an IProgressMonitor: nested phases with steps; False from step_complete cancels."""
    if monitor is None:
        return True
    if not getattr(monitor, "_initialised", False):
        raise TypeError("tensorrt.IProgressMonitor.__init__() must be called when overriding __init__")
    monitor.phase_start("Building engine", None, 2)
    for step, phase in enumerate(("Optimizing network", "Timing layers")):
        monitor.phase_start(phase, "Building engine", steps)
        for i in range(steps):
            if not monitor.step_complete(phase, i):
                return False
        monitor.phase_finish(phase)
        if not monitor.step_complete("Building engine", step):
            return False
    monitor.phase_finish("Building engine")
    api.dev.record("builder.progress", steps)
    return True


class ICudaEngine:
    def __init__(self, api: FakeTensorRT, header: dict, onnx_bytes: bytes, dla_core: int | None = None):
        self.api, self.header, self.onnx_bytes = api, header, onnx_bytes
        self.dla_core = dla_core
        """The DLA core this engine runs on: the runtime's DLA_core, core 0 when it was not set."""
        self.tensors = {n: (TensorIOMode.INPUT, tuple(s), DataType(d)) for n, s, d in header["inputs"]}
        self.tensors |= {n: (TensorIOMode.OUTPUT, tuple(s), DataType(d)) for n, s, d in header["outputs"]}
        self._session = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_shape(self, name: str) -> tuple:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
        return [tuple(s) for s in self.header["profile"][name]]

    def create_execution_context(self) -> IExecutionContext | None:
        ok = not self.api.dev.out_of_memory
        self.api.dev.record("engine.create_execution_context", ok)
        if not ok:
            self.api.log(Logger.ERROR, "1: [defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime "
                                       "(out of memory)")
            return None
        return IExecutionContext(self)

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self._session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        return self._session


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine, self.api = engine, engine.api
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        lo, _, hi = self.engine.header["profile"][name]
        ok = len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi))
        self.api.dev.record("context.set_input_shape", name, shape, ok)
        if ok:
            self.shapes[name] = shape
        return ok

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        ok = name in self.engine.tensors and self.api.dev.owns(int(ptr))
        self.api.dev.record("context.set_tensor_address", name, int(ptr), ok)
        if ok:
            self.addresses[name] = int(ptr)
        return ok

    def get_tensor_shape(self, name: str) -> tuple:
        mode, shape, _ = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, shape)
        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        return tuple(batch if d == -1 else d for d in shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        inputs = [n for n, t in self.engine.tensors.items() if t[0] == TensorIOMode.INPUT]
        ready = all(n in self.shapes for n in inputs) and all(n in self.addresses for n in self.engine.tensors)
        self.api.dev.record("context.execute_async_v3", stream_handle, ready, self.engine.dla_core)
        if not ready:
            return False
        shapes = {n: self.get_tensor_shape(n) for n in self.engine.tensors}
        addresses = dict(self.addresses)  # captured at enqueue time, as TensorRT does

        def run() -> None:
            feeds = {}
            for name in inputs:
                dtype = np.dtype(nptype(self.engine.tensors[name][2]))
                raw = self.api.dev.read(addresses[name], int(np.prod(shapes[name])) * dtype.itemsize)
                feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shapes[name])
            session = self.engine.session()
            names = [o.name for o in session.get_outputs()]
            for name, value in zip(names, session.run(names, feeds)):
                self.api.dev.write(addresses[name], np.ascontiguousarray(value).tobytes())

        self.api.dev.enqueue(stream_handle, run)
        return True


class Runtime:
    def __init__(self, api: FakeTensorRT, logger: Logger):
        self.api, self.logger = api, logger
        self.DLA_core = -1  # TensorRT 10: "Defaults to -1"; an engine built for DLA then runs on core 0

    @property
    def num_DLA_cores(self) -> int:
        return self.api.dla_cores

    def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
        data = bytes(data)
        ok = data.startswith(PLAN_MAGIC)
        header, onnx_bytes = {}, b""
        if ok:
            line, _, onnx_bytes = data[len(PLAN_MAGIC) :].partition(b"\n")
            try:
                header = json.loads(line)
            except ValueError:
                ok = False
        if ok and (header["tensorrt"] != self.api.__version__ or header["gpu"] != self.api.dev.name):
            self.logger.log(Logger.ERROR, "The engine plan file is not compatible with this version of TensorRT or GPU.")
            ok = False
        self.api.dev.record("runtime.deserialize_cuda_engine", ok)
        if not ok:
            return None
        core = None
        if header.get("runs_on_dla"):
            core = self.DLA_core if self.DLA_core >= 0 else 0
        return ICudaEngine(self.api, header, onnx_bytes, core)


class FakeTensorRT(types.ModuleType):
    """The fake ``tensorrt`` module; ``dev`` is the FakeDevice it builds for and runs on."""

    def __init__(self, version: str, device: FakeDevice):
        super().__init__("tensorrt")
        self.__version__ = version
        self.major = int(version.split(".")[0])
        self.dev = device
        self.calls = device.calls
        self.builds = 0
        self.unsupported_ops: set[str] = set()
        self.messages: list[str] = []  # what TensorRT logged (errors of the fake API)
        minor, patch = (int(p) for p in (version.split(".") + ["0", "0"])[1:3])
        has_dla = (self.major, minor, patch) < (10, 8, 0) or (self.major, minor, patch) >= (11, 4, 1)
        self.dla_cores = device.dla_cores if has_dla else 0
        for obj in (Logger, OnnxParserFlag, MemoryPoolType, DeviceType, TensorIOMode, nptype, ITimingCache):
            setattr(self, obj.__name__, obj)
        members = {m.name: m.value for m in DataType if self.major >= 10 or m.name != "INT64"}
        self.DataType = enum.IntEnum("DataType", members)
        if self.major >= 10:
            self.IProgressMonitor = IProgressMonitor
        creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        flags = {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 4, "TF32": 7}
        if self.major < 10:
            del creation["STRONGLY_TYPED"]
        if self.major >= 11:
            del creation["EXPLICIT_BATCH"], flags["FP16"], flags["INT8"]
            creation["STRONGLY_TYPED"] = 0  # deprecated and ignored in 11, kept for API compatibility
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
        self.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
        self.Builder = lambda logger: Builder(self, logger)
        self.Runtime = lambda logger: Runtime(self, logger)
        self.OnnxParser = OnnxParser

    def log(self, severity: Any, message: str) -> None:
        self.messages.append(message)


def make_tensorrt(version: str = "10.3.0", device: FakeDevice | None = None) -> FakeTensorRT:
    return FakeTensorRT(version, device or FakeDevice())


# ------------------------------------------------------------------------------------ cuda-python's cudart


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


_CUDA_ERROR_TEXT = {
    1: "invalid argument", 2: "out of memory", 35: "CUDA driver version is insufficient for CUDA runtime version",
    100: "no CUDA-capable device is detected", 101: "invalid device ordinal",
}


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:  # noqa: N801 - an opaque handle; int() gives the address
    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:  # noqa: N802
        return self._handle


class FakeCudart(types.ModuleType):
    """``cuda.bindings.runtime`` over a FakeDevice: every call returns ``(cudaError_t, *values)``, values None on an
    error; host pointers are real addresses (cudaMallocHost gives page-locked memory the fake owns)."""

    def __init__(self, device: FakeDevice, device_count: int = 1):
        super().__init__("cuda.bindings.runtime")
        self.dev, self.device_count = device, device_count
        self.cudaError_t, self.cudaMemcpyKind, self.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        self.cudaStreamNonBlocking = 1
        self.current_device = 0
        self.host: dict[int, ctypes.Array] = {}

    def _e(self, code: int = 0) -> cudaError_t:
        return cudaError_t(code)

    def cudaGetErrorName(self, err):  # noqa: N802
        return self._e(), cudaError_t(err).name.encode()

    def cudaGetErrorString(self, err):  # noqa: N802
        return self._e(), _CUDA_ERROR_TEXT.get(int(err), "no error").encode()

    def cudaGetDeviceCount(self):  # noqa: N802
        if self.dev.driver_error is not None:
            return self._e(self.dev.driver_error), None
        return self._e(), self.device_count

    def cudaSetDevice(self, index):  # noqa: N802
        self.dev.record("cudart.cudaSetDevice", index)
        if not 0 <= index < self.device_count:
            return (self._e(101),)
        self.current_device = index
        return (self._e(),)

    def cudaGetDeviceProperties(self, index):  # noqa: N802
        if not 0 <= index < self.device_count:
            return self._e(101), None
        major, minor = (int(x) for x in self.dev.compute_capability.split("."))
        name = self.dev.name.encode().ljust(256, b"\0")  # a char[256] as bytes
        return self._e(), types.SimpleNamespace(name=name, major=major, minor=minor)

    def cudaMalloc(self, size):  # noqa: N802
        if self.dev.out_of_memory:
            return self._e(2), None
        ptr = self.dev.alloc(int(size))
        self.dev.record("cuda.malloc", ptr, int(size))
        return self._e(), ptr

    def cudaFree(self, ptr):  # noqa: N802
        if not self.dev.owns(int(ptr)):
            return (self._e(1),)
        self.dev.record("cuda.free", int(ptr))
        del self.dev.memory[int(ptr)]
        return (self._e(),)

    def cudaMallocHost(self, size):  # noqa: N802
        buffer = (ctypes.c_uint8 * int(size))()
        ptr = ctypes.addressof(buffer)
        self.host[ptr] = buffer
        self.dev.record("cuda.host_buffer", int(size))
        return self._e(), ptr

    def cudaFreeHost(self, ptr):  # noqa: N802
        if int(ptr) not in self.host:
            return (self._e(1),)
        self.dev.record("cuda.free_host", len(self.host.pop(int(ptr))))
        return (self._e(),)

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        handle = self.dev.new_stream()
        self.dev.record("cuda.stream_create", handle)
        return self._e(), cudaStream_t(handle)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        handle = int(stream)
        if handle not in self.dev.streams:
            return (self._e(1),)
        self.dev.record("cuda.stream_destroy", handle)
        del self.dev.streams[handle]
        return (self._e(),)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        self.dev.record("cuda.synchronize", int(stream))
        self.dev.run_stream(int(stream))
        return (self._e(),)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        dst, src, count, handle = int(dst), int(src), int(count), int(stream)
        if handle not in self.dev.streams:
            return (self._e(1),)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            if not self.dev.owns(dst):
                return (self._e(1),)
            self.dev.record("cuda.htod", dst, count)
            self.dev.enqueue(handle, lambda: self.dev.write(dst, ctypes.string_at(src, count)))  # read at run time
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            if not self.dev.owns(src):
                return (self._e(1),)
            self.dev.record("cuda.dtoh", src, count)
            self.dev.enqueue(handle, lambda: ctypes.memmove(dst, self.dev.read(src, count), count))
        else:
            return (self._e(1),)
        return (self._e(),)


def make_cudart(device: FakeDevice, device_count: int = 1) -> FakeCudart:
    return FakeCudart(device, device_count)


# ------------------------------------------------------------------------------------------ pycuda's driver


class FakePyCuda(types.ModuleType):
    """``pycuda.driver`` over a FakeDevice: ``Error``/``LogicError`` exceptions, a context stack that calls need
    (``mem_alloc`` and copies raise LogicError without a current context), allocations with ``int()`` and ``free()``."""

    def __init__(self, device: FakeDevice, device_count: int = 1):
        super().__init__("pycuda.driver")
        fake, dev = self, device
        self.dev = dev
        self.initialised = False
        self.stack: list[Any] = []

        class Error(Exception):
            pass

        class LogicError(Error):
            pass

        class MemoryError_(Error):  # noqa: N801 - pycuda.driver.MemoryError
            pass

        class Context:
            def __init__(self, index: int):
                self.index = index

            def push(self) -> None:
                fake.stack.append(self)

            @staticmethod
            def pop() -> None:
                if not fake.stack:
                    raise LogicError("cuCtxPopCurrent failed: invalid device context")
                fake.stack.pop()

        class Device:
            def __init__(self, index: int):
                fake._need_init()
                if not 0 <= index < device_count:
                    raise LogicError("cuDeviceGet failed: invalid device ordinal")
                self.index = index

            @staticmethod
            def count() -> int:
                fake._need_init()
                return device_count

            def name(self) -> str:
                return dev.name

            def compute_capability(self) -> tuple[int, int]:
                major, minor = (int(x) for x in dev.compute_capability.split("."))
                return major, minor

            def retain_primary_context(self) -> Context:
                return Context(self.index)

        class DeviceAllocation:
            def __init__(self, ptr: int):
                self.ptr = ptr

            def __int__(self) -> int:
                return self.ptr

            def free(self) -> None:
                dev.record("cuda.free", self.ptr)
                del dev.memory[self.ptr]

        class Stream:
            def __init__(self, flags: int = 0):
                fake._need_context("cuStreamCreate")
                self.handle = dev.new_stream()
                dev.record("cuda.stream_create", self.handle)

            def __del__(self) -> None:  # pycuda destroys a stream when its object is collected
                if dev.streams.pop(self.handle, None) is not None:
                    dev.record("cuda.stream_destroy", self.handle)

            def synchronize(self) -> None:
                fake._need_context("cuStreamSynchronize")
                dev.record("cuda.synchronize", self.handle)
                dev.run_stream(self.handle)

        self.Error, self.LogicError, self.MemoryError = Error, LogicError, MemoryError_
        self.Context, self.Device, self.DeviceAllocation, self.Stream = Context, Device, DeviceAllocation, Stream

    def _need_init(self) -> None:
        if not self.initialised:
            raise self.LogicError("cuInit has not been called")

    def _need_context(self, call: str) -> None:
        if not self.stack:
            raise self.LogicError(f"{call} failed: invalid device context - no currently active context?")

    def init(self, flags: int = 0) -> None:
        if self.dev.driver_error is not None:
            raise self.Error(f"cuInit failed: {_CUDA_ERROR_TEXT.get(self.dev.driver_error, 'unknown error')}")
        self.initialised = True

    def mem_alloc(self, nbytes: int) -> Any:
        self._need_context("cuMemAlloc")
        if self.dev.out_of_memory:
            raise self.MemoryError("cuMemAlloc failed: out of memory")
        ptr = self.dev.alloc(int(nbytes))
        self.dev.record("cuda.malloc", ptr, int(nbytes))
        return self.DeviceAllocation(ptr)

    def pagelocked_empty(self, shape: Any, dtype: Any) -> np.ndarray:
        self._need_context("cuMemHostAlloc")
        array = np.empty(shape, dtype)
        self.dev.record("cuda.host_buffer", array.nbytes)
        return array

    def memcpy_htod_async(self, dest: Any, src: np.ndarray, stream: Any = None) -> None:
        self._need_context("cuMemcpyHtoDAsync")
        dest = int(dest)
        self.dev.record("cuda.htod", dest, src.nbytes)
        self.dev.enqueue(stream.handle, lambda: self.dev.write(dest, src.tobytes()))  # read at run time

    def memcpy_dtoh_async(self, dest: np.ndarray, src: Any, stream: Any = None) -> None:
        self._need_context("cuMemcpyDtoHAsync")
        src = int(src)
        self.dev.record("cuda.dtoh", src, dest.nbytes)

        def copy() -> None:
            dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.dev.read(src, dest.nbytes), dtype=np.uint8)

        self.dev.enqueue(stream.handle, copy)


def make_pycuda(device: FakeDevice, device_count: int = 1) -> FakePyCuda:
    return FakePyCuda(device, device_count)
