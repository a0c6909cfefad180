"""A small fake of TensorRT's Python API (and of CUDA memory), for testing dp-sims' TensorRT code without a GPU.

``make_tensorrt("8.6.1" | "10.3.0" | "11.0.0", device)`` returns a module object with the surface dp-sims uses:
Logger, Builder, NetworkDefinitionCreationFlag, OnnxParser, OnnxParserFlag, BuilderFlag, MemoryPoolType,
DeviceType, Runtime, TensorIOMode, DataType, nptype, IInt8EntropyCalibrator2 and __version__, shaped like that
version: 8.6 needs EXPLICIT_BATCH and has no STRONGLY_TYPED; 11 has no EXPLICIT_BATCH, no BuilderFlag.FP16/INT8,
no int8_calibrator and no IInt8 calibrators; 10 rejects precision flags on a strongly typed network, as TensorRT does.

Every call that matters is appended to ``device.calls`` (shared with :class:`FakeCuda`), so tests can check what
was configured and in which order. A "plan" is a JSON header + the ONNX bytes; "executing" an engine runs the ONNX
in onnxruntime, reading and writing the fake device memory, so a round trip gives real images. Streams are real
queues: copies and executions happen at ``synchronize``, so a backend that forgets it reads stale memory.
"""

from __future__ import annotations

import enum
import hashlib
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.backends.tensorrt import CudaApi
from runtimes.trt_engine import GpuInfo

PLAN_MAGIC = b"FAKETRTPLAN\n"


class FakeDevice:
    """GPU memory (a dict of bytearrays), streams (queues of pending work) and the shared journal of calls."""

    def __init__(self, name: str = "NVIDIA Fake GPU", compute_capability: str = "8.7", dla_cores: int = 0):
        self.name = name
        self.compute_capability = compute_capability
        self.dla_cores = dla_cores
        self.calls: list[tuple] = []
        self.memory: dict[int, bytearray] = {}
        self.streams: dict[int, list] = {}
        self._next_ptr = 0x7F00_0000_0000
        self._next_stream = 1

    def record(self, *call: Any) -> None:
        self.calls.append(call)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

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
        for i, node in enumerate(model.graph.node):
            if node.op_type in api.unsupported_ops:
                self.errors.append(ParserError(i, f"No importer registered for op: {node.op_type}"))
        if self.errors:
            return False
        initializers = {t.name for t in model.graph.initializer}
        net.inputs = [_value_info(v) for v in model.graph.input if v.name not in initializers]
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
    """Serialized as JSON: the GPU it was made on and the layer timings it holds (one per ONNX op type)."""

    def __init__(self, gpu: str, entries: dict[str, float] | None = None):
        self.gpu, self.entries = gpu, dict(entries or {})

    def serialize(self) -> bytes:
        return json.dumps({"gpu": self.gpu, "entries": self.entries}).encode()


class IBuilderConfig:
    def __init__(self, api: FakeTensorRT):
        self.api = api
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.calibration_profile: IOptimizationProfile | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.timing_cache: ITimingCache | None = None
        self._calibrator = None

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

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        if self.api.major >= 11:
            raise AttributeError("'IBuilderConfig' object has no attribute 'set_calibration_profile'")
        self.api.dev.record("config.set_calibration_profile", dict(profile.shapes))
        self.calibration_profile = profile
        return True

    @property
    def int8_calibrator(self) -> Any:
        if self.api.major >= 11:
            raise AttributeError("'IBuilderConfig' object has no attribute 'int8_calibrator'")
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator: Any) -> None:
        if self.api.major >= 11:
            raise AttributeError("'IBuilderConfig' object has no attribute 'int8_calibrator'")
        self.api.dev.record("config.int8_calibrator", type(calibrator).__name__)
        self._calibrator = calibrator

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        self.api.dev.record("config.create_timing_cache", len(data))
        if not data:
            return ITimingCache(self.api.dev.name)
        blob = json.loads(bytes(data))
        return ITimingCache(blob["gpu"], blob["entries"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
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
        return self.api.dev.dla_cores

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
        calibrated = None
        if config._calibrator is not None and "INT8" in config.flags:
            calibrated = _run_calibration(api, network, config)
        reused = 0
        if config.timing_cache is not None:  # one "tactic timing" per op type: reused when already in the cache
            reused = sum(op in config.timing_cache.entries for op in network.ops)
            config.timing_cache.entries.update({op: 1.0 for op in network.ops})
        profile = config.profiles[0]
        header = {
            "tensorrt": api.__version__,
            "gpu": api.dev.name,
            "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
            "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs],
            "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()},
            "flags": sorted(config.flags),
            "strongly_typed": strongly_typed,
            "dla_core": config.DLA_core if config.default_device_type == DeviceType.DLA else None,
            "calibrated_batches": calibrated,
        }
        api.dev.record("builder.build_serialized_network", {**header, "timing_reused": reused})
        api.builds += 1
        return IHostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx)


def _run_calibration(api: FakeTensorRT, network: INetworkDefinition, config: IBuilderConfig) -> int:
    """What TensorRT does with an IInt8 calibrator: cache first, else batches until None, then write the cache."""
    calib = config._calibrator
    if calib.read_calibration_cache():
        api.dev.record("calibration.cache_used")
        return 0
    names = [t.name for t in network.inputs]
    shapes = config.calibration_profile.shapes if config.calibration_profile else config.profiles[0].shapes
    batches = 0
    digest = hashlib.sha256()
    while True:
        ptrs = calib.get_batch(names)
        if ptrs is None:
            break
        for name, ptr in zip(names, ptrs):
            tensor = next(t for t in network.inputs if t.name == name)
            shape = shapes[name][1]  # the calibration profile's opt shape
            nbytes = int(np.prod(shape)) * np.dtype(nptype(tensor.dtype)).itemsize
            digest.update(api.dev.read(int(ptr), nbytes))
        batches += 1
    api.calibration_digest = digest.hexdigest()
    calib.write_calibration_cache(b"TRT-fake-calibration " + digest.hexdigest().encode())
    api.dev.record("calibration.done", batches)
    return batches


class ICudaEngine:
    def __init__(self, api: FakeTensorRT, header: dict, onnx_bytes: bytes):
        self.api, self.header, self.onnx_bytes = api, header, onnx_bytes
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

    def create_execution_context(self) -> IExecutionContext:
        self.api.dev.record("engine.create_execution_context")
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
        self.api.dev.record("context.set_tensor_address", name, int(ptr))
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        mode, shape, _ = self.engine.tensors[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, shape)
        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        return tuple(batch if d == -1 else d for d in shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        inputs = [n for n, t in self.engine.tensors.items() if t[0] == TensorIOMode.INPUT]
        ready = all(n in self.shapes for n in inputs) and all(n in self.addresses for n in self.engine.tensors)
        self.api.dev.record("context.execute_async_v3", stream_handle, ready)
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
        return ICudaEngine(self.api, header, onnx_bytes) if ok else None


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


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
        self.calibration_digest: str | None = None
        for obj in (Logger, OnnxParserFlag, MemoryPoolType, DeviceType, TensorIOMode, DataType, nptype, ITimingCache):
            setattr(self, obj.__name__, obj)
        creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        flags = {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 4, "TF32": 7}
        if self.major < 10:
            del creation["STRONGLY_TYPED"]
        if self.major >= 11:
            del creation["EXPLICIT_BATCH"], flags["FP16"], flags["INT8"]
            creation["STRONGLY_TYPED"] = 0  # deprecated and ignored in 11, kept for API compatibility
        else:
            self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
        self.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
        self.Builder = lambda logger: Builder(self, logger)
        self.Runtime = lambda logger: Runtime(self, logger)
        self.OnnxParser = OnnxParser


def make_tensorrt(version: str = "10.3.0", device: FakeDevice | None = None) -> FakeTensorRT:
    return FakeTensorRT(version, device or FakeDevice())
