"""An artifact -> a Triton Inference Server model repository (``python -m export --target triton --from DIR``).

    REPO/
      NAME/
        config.pbtxt        platform/backend, the graph contract's tensors, max_batch_size, dynamic batching,
                            instance group, and the artifact's model.json as the parameter ``dp_sims_manifest``
        1/                  the artifact itself: its model files and model.json (so ``load_predictor(REPO/NAME/1)``
                            opens it as any artifact, and the model files sit where Triton's backends look)

The tensors are the graph contract of docs/design.md: ``label`` TYPE_INT32 [H, W], ``noise`` TYPE_FP32
[*noise_shape], ``image`` TYPE_FP32 [3, H, W], each with the batch dimension Triton adds (``max_batch_size``).
The manifest travels in the model configuration because that is what every Triton / KServe v2 client can read
(``GET /v2/models/NAME/config``): :mod:`runtimes.remote` builds its predictor from it. Triton's onnxruntime,
openvino and tensorrt backends read only the parameter keys they know and ignore this one.

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
from runtimes.serve import MANIFEST_PARAMETER, check_model_name, model_name
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, MANIFEST_NAME, OUTPUT_IMAGE, Manifest, read_manifest
from runtimes.targets import TARGETS

VERSION = "1"
DEFAULT_QUEUE_DELAY_US = 2000

#: target -> how Triton loads it (each target declares it in runtimes/targets.py)
TRITON_TARGETS = {name: t.triton for name, t in TARGETS.items() if t.triton is not None}
OPTIONS = ("name", "kind", "instances", "max_queue_delay_us")


@dataclass
class RepositoryResult:
    model_dir: Path
    name: str
    config: str
    notes: list[str] = field(default_factory=list)


def triton_dims(manifest: Manifest) -> dict[str, tuple[str, list[int]]]:
    """Per tensor of the graph contract: (Triton data type, dims without the batch dimension)."""
    h, w = (int(v) for v in manifest.input_size)
    return {
        INPUT_LABEL: ("TYPE_INT32", [h, w]),
        INPUT_NOISE: ("TYPE_FP32", [int(v) for v in manifest.noise_shape]),
        OUTPUT_IMAGE: ("TYPE_FP32", [3, h, w]),
    }


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_pbtxt(manifest: Manifest, name: str, kind: str = "cpu", instances: int = 1,
                 max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US) -> str:
    """The model configuration (protobuf text format) for ``manifest``'s artifact."""
    if manifest.target not in TRITON_TARGETS:
        raise InputError(
            f"Triton has no backend for {manifest.target} artifacts; export --target onnx or openvino for a Triton "
            "model repository, or serve this artifact as it is with `python -m runtimes serve --model DIR`."
        )
    serving = TRITON_TARGETS[manifest.target]
    platform, backend, filename, kinds = serving.platform, serving.backend, serving.filename, serving.kinds
    if kind not in kinds:
        raise InputError(f"Triton's {backend} backend runs instances of kind {' or '.join(kinds)}, not {kind!r}.")
    dims = triton_dims(manifest)
    batch = manifest.batch
    lines = [f"name: {_quote(name)}"]
    if platform:
        lines.append(f"platform: {_quote(platform)}")
    lines += [f"backend: {_quote(backend)}", f"default_model_filename: {_quote(filename)}",
              f"max_batch_size: {int(batch['max'])}"]

    def tensor(tname: str) -> str:
        dtype, shape = dims[tname]
        return f"  {{ name: {_quote(tname)} data_type: {dtype} dims: [ {', '.join(map(str, shape))} ] }}"

    lines += ["input [", tensor(INPUT_LABEL) + ",", tensor(INPUT_NOISE), "]"]
    lines += ["output [", tensor(OUTPUT_IMAGE), "]"]
    preferred = sorted({int(batch["opt"]), int(batch["max"])} - {1})
    lines.append("dynamic_batching {")
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
    lines += [f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}", "}"]
    lines.append(f"instance_group [ {{ count: {int(instances)} kind: KIND_{kind.upper()} }} ]")
    lines += ["parameters {", f"  key: {_quote(MANIFEST_PARAMETER)}",
              f"  value {{ string_value: {_quote(manifest.to_json(indent=None))} }}", "}"]
    return "\n".join(lines) + "\n"


def _options(options: dict[str, Any], artifact_dir: Path, target: str) -> tuple[str, str, int, int]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"--target triton takes -o {', -o '.join(OPTIONS)}; not {', '.join(unknown)}.")
    name = check_model_name(str(options.get("name", model_name(artifact_dir))))
    default_kind = TRITON_TARGETS[target].kinds[0] if target in TRITON_TARGETS else "cpu"
    kind = str(options.get("kind", default_kind)).lower()
    values = []
    for key, default, lo in (("instances", 1, 1), ("max_queue_delay_us", DEFAULT_QUEUE_DELAY_US, 0)):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise InputError(f"-o {key} must be an integer >= {lo}, got {value!r}.")
        values.append(value)
    return name, kind, values[0], values[1]


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
    model.json first). ``options``: name, kind (cpu/gpu), instances, max_queue_delay_us. Other models already in
    ``repo`` are kept; ``repo/NAME`` itself is replaced only with ``overwrite``."""
    artifact_dir = Path(artifact_dir)
    if artifact_dir.is_file() and artifact_dir.name == MANIFEST_NAME:
        artifact_dir = artifact_dir.parent
    manifest = read_manifest(artifact_dir)
    name, kind, instances, delay = _options(dict(options or {}), artifact_dir, manifest.target)
    config = config_pbtxt(manifest, name, kind, instances, delay)
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
    notes = [f"model {name!r}: {manifest.target} {manifest.precision}, max_batch_size {manifest.batch['max']}, "
             f"instance group KIND_{kind.upper()} x{instances}"]
    if manifest.target == "tensorrt":
        onnx = next((f.path for f in manifest.files if f.path.endswith(".onnx")), "model.onnx")
        notes.append("build the TensorRT plan on the serving GPU (TensorRT version of the Triton image), in the "
                     f"model folder: {trtexec_command(manifest, f'1/{onnx}', '1/model.plan')}")
        if int(manifest.batch["min"]) > 1:
            notes.append(f"the artifact's batch starts at {manifest.batch['min']}; the plan command above builds "
                         "from batch 1 because Triton's dynamic batcher sends any size up to max_batch_size")
    return RepositoryResult(model_dir=model_dir, name=name, config=config, notes=notes)
