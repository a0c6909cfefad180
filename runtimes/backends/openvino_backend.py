"""OpenVINO backend: ``model.xml`` + ``model.bin`` on CPU, GPU, NPU or AUTO.

On CPUs with bf16 or fp16 units (AVX512-BF16, AMX) OpenVINO computes the float parts of a model in that precision
by default, even for an FP32 or INT8 model. On the CPU this backend asks for f32 by default, the precision the
export's quality report (``model.json`` ``quality``) was measured with, so the artifact draws what its manifest
promises: on an AMX Xeon, an INT8 artifact measured at 38.9 dB against FP32 gives 24.4 dB under OpenVINO's bf16
default. Pass ``inference_precision="auto"`` (OpenVINO's choice) or ``"bf16"`` to trade that quality for speed;
FP32 artifacts ask for f32 on every device; INT8/FP16 ones on GPU or NPU use that device's default unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import BackendUnavailable, InputError, ManifestError
from dpsims.optional import require
from runtimes.backends.base import Backend, check_input_shapes, int_option
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
PRECISIONS = ("auto", "f32", "f16", "bf16")


def openvino_device(device: str, available: list[str]) -> str:
    """Map "auto"/"cpu"/"gpu"/"npu"/"GPU.1"/"AUTO:GPU,CPU" to an OpenVINO device name available here."""
    name = device.upper()
    if name == "AUTO":  # one device: name it, so describe() and the precision hint are plain
        return available[0] if len(available) == 1 else "AUTO"
    if name.startswith("CUDA"):
        raise InputError("OpenVINO runs on Intel CPU, GPU and NPU devices, not CUDA; use device='cpu', 'gpu' or 'auto'.")
    if name.split(":")[0] in ("AUTO", "MULTI", "HETERO"):
        return name
    if name not in available and not any(d.startswith(name + ".") for d in available):
        raise BackendUnavailable(f"OpenVINO finds no {name} device here; it has {', '.join(available)}.")
    return name


class OpenVINOBackend(Backend):
    extra = "openvino"
    accepted_options = frozenset({"performance_hint", "inference_precision", "num_threads", "cache_dir"})

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        super().__init__(artifact_dir, manifest, device, **options)
        ov = require("openvino", self.extra)
        import openvino.properties as props
        import openvino.properties.hint as hints

        self._version = ov.__version__
        core = ov.Core()
        self.ov_device = openvino_device(device, core.available_devices)
        xml, weights = self.model_files()
        try:
            model = core.read_model(str(xml), str(weights))
        except RuntimeError as e:
            raise ManifestError(f"OpenVINO {self._version} cannot read {xml}: {e}".rstrip() + " Export it again.") from None
        names = {n for port in model.inputs for n in port.get_names()}
        outputs = {n for port in model.outputs for n in port.get_names()}
        if not {INPUT_LABEL, INPUT_NOISE} <= names or OUTPUT_IMAGE not in outputs:
            raise ManifestError(
                f"{xml} has inputs {sorted(names)} and outputs {sorted(outputs)}; the graph contract wants inputs "
                f"{INPUT_LABEL!r}, {INPUT_NOISE!r} and output {OUTPUT_IMAGE!r}. Export it again with `python -m export`."
            )
        check_input_shapes(xml, {n: [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
                                 for port in model.inputs for n in port.get_names()}, manifest)
        self._static_batch = self.ov_device.startswith("NPU")  # NPUs compile static shapes only
        if self._static_batch:
            model.reshape({INPUT_LABEL: [1, *manifest.input_size], INPUT_NOISE: [1, *manifest.noise_shape]})

        hint = str(options.get("performance_hint", "LATENCY")).upper()
        if hint not in HINTS:
            raise InputError(f"performance_hint must be one of {', '.join(HINTS)}, got {hint!r}.")
        precision = options.get("inference_precision", "f32" if self.ov_device == "CPU" or manifest.precision == "fp32" else "auto")
        if precision not in PRECISIONS:
            raise InputError(f"inference_precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        config: dict[Any, Any] = {hints.performance_mode: getattr(hints.PerformanceMode, hint)}
        if precision != "auto":
            config[hints.inference_precision] = precision
        if "num_threads" in options:
            config[props.inference_num_threads] = int_option("num_threads", options["num_threads"])
        if "cache_dir" in options:  # compiled-model cache: faster second start, mostly for GPU
            core.set_property({props.cache_dir: str(options["cache_dir"])})
        try:
            self.compiled = core.compile_model(model, self.ov_device, config)
        except RuntimeError as e:
            raise BackendUnavailable(f"OpenVINO cannot compile {xml} for {self.ov_device}: {e}") from None
        self._hint, self._precision = hint, precision
        self._output = self.compiled.output(OUTPUT_IMAGE)
        self._request = self.compiled.create_infer_request()
        self._queue = None
        if hint != "LATENCY":  # one request per image, as many in flight as the device likes
            self._queue = ov.AsyncInferQueue(self.compiled)
            self._queue.set_callback(self._collect)

    @property
    def max_batch(self) -> int:
        return 1 if self._static_batch else super().max_batch

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        label, noise = inputs[INPUT_LABEL], inputs[INPUT_NOISE]
        if self._queue is None or len(label) == 1:
            result = self._request.infer({INPUT_LABEL: label, INPUT_NOISE: noise})
            return {OUTPUT_IMAGE: np.asarray(result[self._output], dtype=np.float32)}
        image = np.empty((len(label), 3, *self.manifest.input_size), dtype=np.float32)
        for i in range(len(label)):
            self._queue.start_async({INPUT_LABEL: label[i : i + 1], INPUT_NOISE: noise[i : i + 1]}, userdata=(image, i))
        self._queue.wait_all()
        return {OUTPUT_IMAGE: image}

    def _collect(self, request: Any, userdata: tuple[np.ndarray, int]) -> None:
        image, i = userdata
        image[i] = request.get_tensor(self._output).data[0]

    def close(self) -> None:
        self._queue = self._request = self._output = self.compiled = None

    def describe(self) -> dict[str, Any]:
        info = {
            **super().describe(),
            "library": f"openvino {self._version}",
            "ov_device": self.ov_device,
            "performance_hint": self._hint,
            "inference_precision": self._precision,
        }
        for key, prop in (("execution_devices", "EXECUTION_DEVICES"), ("inference_precision", "INFERENCE_PRECISION_HINT")):
            try:  # AUTO answers neither before it has picked a device
                value = self.compiled.get_property(prop)
            except (RuntimeError, AttributeError):
                continue
            name = getattr(value, "get_type_name", None)  # an openvino Type: its short name (f32), not its repr
            info[key] = list(value) if key == "execution_devices" else name() if callable(name) else str(value)
        return info
