"""An artifact -> a Triton Inference Server model repository (``python -m export --target triton --from DIR``).

    REPO/
      NAME/
        config.pbtxt        platform/backend, the graph contract's tensors, max_batch_size, dynamic batching,
                            instance group, and the artifact's model.json as the parameter ``dp_sims_manifest``
        1/                  the artifact itself: its model files and model.json (so ``load_predictor(REPO/NAME/1)``
                            opens it as any artifact, and the model files sit where Triton's backends look)

The tensors are the graph contract of docs/design.md: ``label`` TYPE_INT32 [H, W], ``noise`` TYPE_FP32
[*noise_shape], ``image`` TYPE_FP32 [3, H, W], each with a batch dimension. ONNX (onnxruntime backend) and
TensorRT (tensorrt backend) models batch in Triton (``max_batch_size`` = the artifact's max, dynamic batching).
OpenVINO models do not: Triton's openvino backend fixes the network's batch at ``max_batch_size`` when it is > 0
(``ov::set_batch``) and refuses any other batch ("expected requests with batch size '16', got '1'"), and its
ENABLE_BATCH_PADDING workaround fails a full batch that follows a short one (r24.10). So an OpenVINO model is
written with ``max_batch_size: 0`` and dims ``[-1, ...]``: the IR keeps its dynamic batch and every batch in
the artifact's range is answered; it scales with ``-o instances`` and ``-o streams`` instead of batching.
The manifest travels in the model configuration because that is what every Triton / KServe v2 client can read
(``GET /v2/models/NAME/config``): :mod:`runtimes.remote` builds its predictor from it. Triton's onnxruntime,
openvino and tensorrt backends read only the parameter keys they know and ignore this one.

Each repository states the Triton release it was written for (``-o triton_release``, parameter
``dp_sims_triton_release``); the artifact's runtime (model.json ``library_versions``) is compared with the
version of that release's backend and a newer one is refused with the fixes (``-o backend_version=X`` states
the version of a backend built for the server by hand).

Torch and CoreML artifacts have no Triton backend here (export ONNX or OpenVINO, or serve any artifact with
``python -m runtimes serve``). A TensorRT artifact holds the ONNX its engine is built from: the engine
(``1/model.plan``) is built on the serving GPU with the command this module prints, as on Jetson.

Torch-free: it runs wherever ``runtimes`` does (numpy only; no Triton package needed).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpsims.errors import InputError
from export.base import staged_dir
from runtimes.serve import MANIFEST_PARAMETER, check_model_name, dynamic_batching_config, model_name
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, MANIFEST_NAME, OUTPUT_IMAGE, Manifest, read_manifest
from runtimes.targets import TARGETS

VERSION = "1"
DEFAULT_QUEUE_DELAY_US = 2000
RELEASE_PARAMETER = "dp_sims_triton_release"

#: target -> how Triton loads it (each target declares it in runtimes/targets.py)
TRITON_TARGETS = {name: t.triton for name, t in TARGETS.items() if t.triton is not None}

#: Triton release -> the version of the inference library each of its backends is built with (the ORT and
#: standalone OpenVINO versions of TRITON_VERSION_MAP / DEFAULT_TRITON_VERSION_MAP in build.py of the Triton
#: server repository's rYY.MM branch, the versions NVIDIA's container of that release ships).
TRITON_RELEASES: dict[str, dict[str, str]] = {
    "24.10": {"onnxruntime": "1.19.2", "openvino": "2024.4.0"},
    "24.11": {"onnxruntime": "1.19.2", "openvino": "2024.4.0"},
    "24.12": {"onnxruntime": "1.20.1", "openvino": "2024.5.0"},
    "25.01": {"onnxruntime": "1.20.1", "openvino": "2024.5.0"},
    "25.02": {"onnxruntime": "1.20.1", "openvino": "2025.0.0"},
    "25.03": {"onnxruntime": "1.21.0", "openvino": "2025.0.0"},
    "25.04": {"onnxruntime": "1.21.0", "openvino": "2025.0.0"},
    "25.05": {"onnxruntime": "1.22.0", "openvino": "2025.1.0"},
    "25.06": {"onnxruntime": "1.22.0", "openvino": "2025.1.0"},
    "25.07": {"onnxruntime": "1.22.0", "openvino": "2025.1.0"},
    "25.08": {"onnxruntime": "1.23.0", "openvino": "2025.2.0"},
    "25.09": {"onnxruntime": "1.23.0", "openvino": "2025.3.0"},
    "25.10": {"onnxruntime": "1.23.1", "openvino": "2025.3.0"},
    "25.11": {"onnxruntime": "1.23.2", "openvino": "2025.3.0"},
    "25.12": {"onnxruntime": "1.23.2", "openvino": "2025.4.0"},
    "26.01": {"onnxruntime": "1.23.2", "openvino": "2025.4.1"},
    "26.02": {"onnxruntime": "1.24.1", "openvino": "2025.4.1"},
    "26.03": {"onnxruntime": "1.24.2", "openvino": "2026.0.0"},
    "26.04": {"onnxruntime": "1.24.4", "openvino": "2026.1.0"},
    "26.05": {"onnxruntime": "1.24.4", "openvino": "2026.1.0"},
    "26.06": {"onnxruntime": "1.24.4", "openvino": "2026.2.0"},
    "26.07": {"onnxruntime": "1.27.0", "openvino": "2026.2.0"},
    "26.08": {"onnxruntime": "1.28.0", "openvino": "2026.3.0"},
}
#: the release of the tritonserver (2.51) inside the nvidia-pytriton 0.7 wheel that ``runtimes serve`` finds
DEFAULT_RELEASE = "24.10"
#: the manifest's library_versions key of each target's runtime (what the backend must be at least)
RUNTIME_LIBRARY = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}

OPTIONS = ("name", "kind", "instances", "max_queue_delay_us", "triton_release", "backend_version", "max_queue_size",
           "queue_timeout_us", "warmup", "threads", "streams", "performance_hint")
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass
class RepositoryResult:
    model_dir: Path
    name: str
    config: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServingOptions:
    """The production settings of one model's configuration (``-o KEY=VALUE`` of ``--target triton``)."""

    kind: str = "cpu"
    instances: int = 1
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    max_queue_size: int = 0
    """Requests waiting beyond this many are rejected at once (0: no limit). Needs dynamic batching."""
    queue_timeout_us: int = 0
    """A request that waited this long in the queue is rejected (0: never). Needs dynamic batching."""
    warmup: bool = True
    """Run a zero-filled batch of 1 and of the max through each instance before the model reports ready."""
    threads: int = 0
    """Backend threads per instance: onnxruntime intra_op_thread_count, openvino INFERENCE_NUM_THREADS (0: its default)."""
    streams: int = 0
    """openvino NUM_STREAMS per instance (0: its default)."""
    performance_hint: str = ""
    """openvino PERFORMANCE_HINT: LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT ("": its default)."""
    triton_release: str = DEFAULT_RELEASE


def triton_dims(manifest: Manifest) -> dict[str, tuple[str, list[int]]]:
    """Per tensor of the graph contract: (Triton data type, dims without the batch dimension)."""
    h, w = (int(v) for v in manifest.input_size)
    return {
        INPUT_LABEL: ("TYPE_INT32", [h, w]),
        INPUT_NOISE: ("TYPE_FP32", [int(v) for v in manifest.noise_shape]),
        OUTPUT_IMAGE: ("TYPE_FP32", [3, h, w]),
    }


def batches_in_triton(target: str) -> bool:
    """Whether Triton's backend for ``target`` batches requests (max_batch_size > 0); openvino does not (module doc)."""
    return target != "openvino"


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _parameter(key: str, value: str) -> list[str]:
    return ["parameters {", f"  key: {_quote(key)}", f"  value {{ string_value: {_quote(value)} }}", "}"]


def config_pbtxt(manifest: Manifest, name: str, kind: str = "cpu", instances: int = 1,
                 max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, serving: ServingOptions | None = None) -> str:
    """The model configuration (protobuf text format) for ``manifest``'s artifact. ``serving`` (when given)
    replaces ``kind``, ``instances`` and ``max_queue_delay_us``."""
    if manifest.target not in TRITON_TARGETS:
        raise InputError(
            f"Triton has no backend for {manifest.target} artifacts; export --target onnx or openvino for a Triton "
            "model repository, or serve this artifact as it is with `python -m runtimes serve --model DIR`."
        )
    opts = serving or ServingOptions(kind=kind, instances=instances, max_queue_delay_us=max_queue_delay_us)
    target = TRITON_TARGETS[manifest.target]
    if opts.kind not in target.kinds:
        raise InputError(f"Triton's {target.backend} backend runs instances of kind {' or '.join(target.kinds)}, not {opts.kind!r}.")
    dims = triton_dims(manifest)
    batch = manifest.batch
    batching = batches_in_triton(manifest.target)
    lines = [f"# written by dp-sims for Triton Inference Server {opts.triton_release} "
             f"({target.backend} backend); see export/triton.py", f"name: {_quote(name)}"]
    if target.platform:
        lines.append(f"platform: {_quote(target.platform)}")
    lines += [f"backend: {_quote(target.backend)}", f"default_model_filename: {_quote(target.filename)}",
              f"max_batch_size: {int(batch['max']) if batching else 0}"]

    def tensor(tname: str) -> str:
        dtype, shape = dims[tname]
        shape = shape if batching else [-1, *shape]
        return f"  {{ name: {_quote(tname)} data_type: {dtype} dims: [ {', '.join(map(str, shape))} ] }}"

    lines += ["input [", tensor(INPUT_LABEL) + ",", tensor(INPUT_NOISE), "]"]
    lines += ["output [", tensor(OUTPUT_IMAGE), "]"]
    if batching:
        preferred = sorted({int(batch["opt"]), int(batch["max"])} - {1})
        lines += dynamic_batching_config(preferred, opts.max_queue_delay_us, opts.max_queue_size, opts.queue_timeout_us)
    lines.append(f"instance_group [ {{ count: {int(opts.instances)} kind: KIND_{opts.kind.upper()} }} ]")
    if opts.warmup:
        sizes = sorted({1, int(batch["max"])})
        for n in sizes:
            lines += ["model_warmup {", f"  name: {_quote(f'zeros_batch_{n}')}", f"  batch_size: {n if batching else 1}"]
            for tname in (INPUT_LABEL, INPUT_NOISE):
                dtype, shape = dims[tname]
                shape = shape if batching else [n, *shape]
                lines += ["  inputs {", f"    key: {_quote(tname)}", "    value {", f"      data_type: {dtype}",
                          f"      dims: [ {', '.join(map(str, shape))} ]", "      zero_data: true", "    }", "  }"]
            lines.append("}")
    for key, value in backend_parameters(manifest.target, opts).items():
        lines += _parameter(key, value)
    lines += _parameter(RELEASE_PARAMETER, opts.triton_release)
    lines += _parameter(MANIFEST_PARAMETER, manifest.to_json(indent=None))
    return "\n".join(lines) + "\n"


def backend_parameters(target: str, opts: ServingOptions) -> dict[str, str]:
    """The backend's own parameters for threads, streams and the performance hint (each backend's names)."""
    if target == "onnx":
        if opts.streams or opts.performance_hint:
            raise InputError("-o streams and -o performance_hint are openvino settings; the onnxruntime backend takes -o threads.")
        return {"intra_op_thread_count": str(opts.threads)} if opts.threads else {}
    if target == "openvino":
        out = {}
        if opts.threads:
            out["INFERENCE_NUM_THREADS"] = str(opts.threads)
        if opts.streams:
            out["NUM_STREAMS"] = str(opts.streams)
        if opts.performance_hint:
            out["PERFORMANCE_HINT"] = opts.performance_hint
        return out
    if opts.threads or opts.streams or opts.performance_hint:
        raise InputError(f"-o threads, streams and performance_hint do not apply to {target} (the engine sets its own).")
    return {}


def _int_option(options: dict[str, Any], key: str, default: int, lo: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InputError(f"-o {key} must be an integer >= {lo}, got {value!r}.")
    return value


def _options(options: dict[str, Any], artifact_dir: Path, manifest: Manifest) -> tuple[str, ServingOptions, str | None]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"--target triton takes -o {', -o '.join(OPTIONS)}; not {', '.join(unknown)}.")
    target = manifest.target
    name = check_model_name(str(options.get("name", model_name(artifact_dir))))
    default_kind = TRITON_TARGETS[target].kinds[0] if target in TRITON_TARGETS else "cpu"
    warmup = options.get("warmup", True)
    if not isinstance(warmup, bool):
        raise InputError(f"-o warmup is true or false, got {warmup!r}.")
    hint = str(options.get("performance_hint", "")).upper()
    if hint and hint not in HINTS:
        raise InputError(f"-o performance_hint is one of {', '.join(HINTS)}, got {hint!r}.")
    release = options.get("triton_release", DEFAULT_RELEASE)
    release = f"{release:.2f}" if isinstance(release, float) else str(release).removeprefix("r")  # -o reads 24.10 as 24.1
    backend_version = options.get("backend_version")
    if release not in TRITON_RELEASES and backend_version is None:
        raise InputError(f"-o triton_release: the releases whose backend versions are known here are "
                         f"{', '.join(TRITON_RELEASES)}; for another, state its backend's version with -o backend_version=X.")
    opts = ServingOptions(
        kind=str(options.get("kind", default_kind)).lower(),
        instances=_int_option(options, "instances", 1, 1),
        max_queue_delay_us=_int_option(options, "max_queue_delay_us", DEFAULT_QUEUE_DELAY_US, 0),
        max_queue_size=_int_option(options, "max_queue_size", 0, 0),
        queue_timeout_us=_int_option(options, "queue_timeout_us", 0, 0),
        warmup=warmup, threads=_int_option(options, "threads", 0, 0), streams=_int_option(options, "streams", 0, 0),
        performance_hint=hint, triton_release=release,
    )
    if not batches_in_triton(target) and (opts.max_queue_size or opts.queue_timeout_us):
        raise InputError("-o max_queue_size and -o queue_timeout_us need Triton's dynamic batcher, which an openvino "
                         "model does not use (max_batch_size 0); bound the load with -o instances and -o streams.")
    if backend_version is not None and (isinstance(backend_version, bool) or not _version_tuple(str(backend_version))):
        raise InputError(f"-o backend_version is a version such as 1.19.2 or 2024.4, got {backend_version!r}.")
    return name, opts, None if backend_version is None else str(backend_version)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).replace("-", ".").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_runtime_version(manifest: Manifest, release: str, backend_version: str | None = None) -> str | None:
    """Refuse an artifact whose runtime (model.json ``library_versions``) is newer than the backend of Triton
    ``release`` (or ``backend_version``, a backend built by hand), naming the fixes. Returns a note when the
    check could not be made (no version recorded), else None."""
    library = RUNTIME_LIBRARY.get(manifest.target)
    made_with = (manifest.library_versions or {}).get(library or "")
    backend = backend_version or TRITON_RELEASES.get(release, {}).get(library or "")
    if not library or not made_with or not backend:
        return (f"not checked: which {library or manifest.target} version Triton {release}'s backend has, "
                f"against the artifact's ({made_with or 'not recorded'})")
    if _version_tuple(made_with)[:2] > _version_tuple(backend)[:2]:
        newer = [r for r, v in TRITON_RELEASES.items() if _version_tuple(v.get(library, "0"))[:2] >= _version_tuple(made_with)[:2]]
        latest = max(TRITON_RELEASES, key=_version_tuple)
        raise InputError(
            f"The artifact was made with {library} {made_with}; Triton {release}'s {library} backend is {backend}, "
            f"older, and may refuse its model (newer opsets / IR). Fixes: "
            + (f"serve it with Triton {newer[0]} or later (-o triton_release={newer[0]}); " if newer else
               f"no Triton release known here ships {library} {made_with} (the newest, {latest}, has "
               f"{TRITON_RELEASES[latest][library]}: -o triton_release={latest} with an export made there); ")
            + f"export it again in an environment with {library}=={backend}; or, if the server's {library} backend "
            f"is built against {library} {made_with} or newer, say so with -o backend_version={made_with}."
        )
    return None


def trtexec_command(manifest: Manifest, onnx: str, plan: str) -> str:
    """The command that builds the TensorRT plan from the artifact's ONNX on the serving GPU."""
    h, w = manifest.input_size
    noise = "x".join(str(v) for v in manifest.noise_shape)

    def shapes(n: int) -> str:
        return f"{INPUT_LABEL}:{n}x{h}x{w},{INPUT_NOISE}:{n}x{noise}"

    flags = {"fp16": " --fp16", "int8": " --int8 --fp16"}.get(manifest.precision, "")
    return (f"trtexec --onnx={onnx} --saveEngine={plan} --minShapes={shapes(1)} "
            f"--optShapes={shapes(int(manifest.batch['opt']))} --maxShapes={shapes(int(manifest.batch['max']))}{flags}")


def export_repository(artifact_dir: str | Path, repo: str | Path, options: dict[str, Any] | None = None,
                      overwrite: bool = False) -> RepositoryResult:
    """Write ``repo/NAME/{config.pbtxt, 1/...}`` for the artifact at ``artifact_dir`` (its files are checked against
    model.json first). ``options``: see ``OPTIONS`` and :class:`ServingOptions`. Other models already in ``repo``
    are kept; ``repo/NAME`` itself is replaced only with ``overwrite``."""
    artifact_dir = Path(artifact_dir)
    if artifact_dir.is_file() and artifact_dir.name == MANIFEST_NAME:
        artifact_dir = artifact_dir.parent
    manifest = read_manifest(artifact_dir)
    name, opts, backend_version = _options(dict(options or {}), artifact_dir, manifest)
    config = config_pbtxt(manifest, name, serving=opts)
    unchecked = check_runtime_version(manifest, opts.triton_release, backend_version)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise InputError(f"--out {repo} is a file; give a folder for the model repository.")
    model_dir = repo / name
    if model_dir.exists() and any(model_dir.iterdir()) and not overwrite:
        raise InputError(f"{model_dir} exists and is not empty; choose another --out or -o name, or pass --overwrite.")
    if model_dir.resolve() == artifact_dir.resolve() or artifact_dir.resolve().is_relative_to(model_dir.resolve()):
        raise InputError(f"--out {repo} would overwrite the artifact {artifact_dir} itself; choose another folder.")
    with staged_dir(model_dir) as work:  # a failure leaves the repository as it was
        version = work / VERSION
        version.mkdir(parents=True)
        for entry in manifest.files:
            dest = version / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(artifact_dir / entry.path, dest)
        shutil.copy2(artifact_dir / MANIFEST_NAME, version / MANIFEST_NAME)
        for extra in ("MODEL_CARD.md",):  # not hashed in model.json; travels with the model when present
            if (artifact_dir / extra).is_file():
                shutil.copy2(artifact_dir / extra, version / extra)
        (work / "config.pbtxt").write_text(config)
    batching = batches_in_triton(manifest.target)
    notes = [f"model {name!r} for Triton {opts.triton_release}: {manifest.target} {manifest.precision}, "
             + (f"max_batch_size {manifest.batch['max']} (dynamic batching)" if batching else
                f"max_batch_size 0 with a dynamic batch dimension (batches 1..{manifest.batch['max']} per request; "
                "the openvino backend does not batch requests together)")
             + f", instance group KIND_{opts.kind.upper()} x{opts.instances}"]
    if backend_version:
        notes.append(f"runtime checked against the {RUNTIME_LIBRARY.get(manifest.target)} {backend_version} the backend is built with (-o backend_version)")
    if unchecked:
        notes.append(unchecked)
    if manifest.target == "tensorrt":
        onnx = next((f.path for f in manifest.files if f.path.endswith(".onnx")), "model.onnx")
        notes.append("build the TensorRT plan on the serving GPU (TensorRT version of the Triton image), in the "
                     f"model folder: {trtexec_command(manifest, f'1/{onnx}', '1/model.plan')}")
        if int(manifest.batch["min"]) > 1:
            notes.append(f"the artifact's batch starts at {manifest.batch['min']}; the plan command above builds "
                         "from batch 1 because Triton's dynamic batcher sends any size up to max_batch_size")
    return RepositoryResult(model_dir=model_dir, name=name, config=config, notes=notes)
