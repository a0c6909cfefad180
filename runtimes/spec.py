"""The artifact manifest (``model.json``): its schema, validation, reading and writing.

`runtimes` owns this schema; `export` writes manifests through this module. Only the standard library and
numpy are used here, so that a device that ships `runtimes` alone can read any artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpsims.errors import ManifestError
from dpsims.files import atomic_write, sha256_file
from runtimes.targets import TARGETS as _TARGETS
from runtimes.targets import known_precisions

SCHEMA_VERSION = 1
MANIFEST_NAME = "model.json"
TARGETS = tuple(_TARGETS)  # the built-in ones; runtimes/targets.py declares each (validation reads the live registry)

# The graph contract every target exports (docs/design.md, "The generator graph contract").
INPUT_LABEL = "label"
INPUT_NOISE = "noise"
OUTPUT_IMAGE = "image"


@dataclass
class ClassInfo:
    id: int
    name: str
    color: list[int]  # RGB 0..255


@dataclass
class FileEntry:
    path: str  # relative to the artifact directory
    sha256: str
    bytes: int


@dataclass
class Manifest:
    target: str
    precision: str
    input_size: list[int]  # [H, W]
    num_classes: int
    classes: list[ClassInfo]
    noise_shape: list[int]  # per sample, without the batch dimension
    files: list[FileEntry] = field(default_factory=list)
    ignore_id: int | None = None
    batch: dict[str, int] = field(default_factory=lambda: {"min": 1, "opt": 1, "max": 16})
    quality: dict[str, Any] | None = None
    """For quantized/reduced precision: psnr_db, max_abs_error, label_consistency_delta, samples, kept_high_precision."""
    calibration: dict[str, Any] | None = None
    """source, samples, method, seed."""
    library_versions: dict[str, str] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    target_options: dict[str, Any] = field(default_factory=dict)
    """Target-specific settings, e.g. TensorRT: the ONNX the engine is built from and the build options."""
    distilled_from: dict[str, Any] | None = None
    """A distilled generator's teacher: run, checkpoint, step, sha256 of its generator file, MACs and parameters of
    teacher and student, and student-vs-teacher fidelity (psnr_db, label consistency). Absent or null: trained
    from scratch (manifests written before this field read as null)."""
    schema_version: int = SCHEMA_VERSION

    # -------------------------------------------------------------------------------------- helpers
    @property
    def palette(self) -> list[list[int]]:
        return [c.color for c in sorted(self.classes, key=lambda c: c.id)]

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in sorted(self.classes, key=lambda c: c.id)]

    def file(self, name_or_suffix: str) -> FileEntry:
        for f in self.files:
            if f.path == name_or_suffix:
                return f
        raise ManifestError(f"The manifest lists no file {name_or_suffix!r}; it lists {[f.path for f in self.files]}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # schema_version first, for people reading the file
        return {"schema_version": d.pop("schema_version"), **d}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        validate_dict(data)
        d = dict(data)
        d["classes"] = [ClassInfo(**c) for c in d["classes"]]
        d["files"] = [FileEntry(**f) for f in d.get("files", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


_REQUIRED = {
    "schema_version": int,
    "target": str,
    "precision": str,
    "input_size": list,
    "num_classes": int,
    "classes": list,
    "noise_shape": list,
}


def validate_dict(data: Any) -> None:
    """Raise :class:`ManifestError` with a clear message when ``data`` is not a manifest this version reads."""
    if not isinstance(data, dict):
        raise ManifestError("model.json must hold a JSON object.")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"model.json has schema_version {version!r}, this dp-sims reads version {SCHEMA_VERSION}. "
            "Export the artifact again with this version of dp-sims, or install the dp-sims version that wrote it."
        )
    for key, tp in _REQUIRED.items():
        if key not in data:
            raise ManifestError(f"model.json lacks the required key {key!r}.")
        if not isinstance(data[key], tp) or (tp is int and isinstance(data[key], bool)):
            raise ManifestError(f"model.json: {key!r} must be a {tp.__name__}, got {data[key]!r}.")
    if data["target"] not in _TARGETS:
        raise ManifestError(f"model.json names the unknown target {data['target']!r}; known targets: {', '.join(_TARGETS)}.")
    if data["precision"] not in known_precisions():
        raise ManifestError(f"model.json names the unknown precision {data['precision']!r}; known: {', '.join(known_precisions())}.")
    size = data["input_size"]
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ManifestError(f"model.json: input_size must be [H, W] of positive integers, got {size!r}.")
    if data["num_classes"] < 1 or len(data["classes"]) != data["num_classes"]:
        raise ManifestError("model.json: 'classes' must list exactly num_classes entries.")
    for c in data["classes"]:
        if not isinstance(c, dict) or set(c) != {"id", "name", "color"}:
            raise ManifestError(f"model.json: each class needs exactly id, name and color, got {c!r}.")
        color = c["color"]
        if not (isinstance(color, list) and len(color) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in color)):
            raise ManifestError(f"model.json: class {c['name']!r} needs an RGB color of three 0..255 integers, got {color!r}.")
    ids = sorted(c["id"] for c in data["classes"] if _is_int(c["id"]))
    if ids != list(range(data["num_classes"])):
        raise ManifestError("model.json: class ids must be exactly 0..num_classes-1, each once.")
    noise = data["noise_shape"]
    if not noise or not all(_is_int(v) and v > 0 for v in noise):
        raise ManifestError(f"model.json: noise_shape must list positive integers, got {noise!r}.")
    ignore = data.get("ignore_id")
    if ignore is not None and not (_is_int(ignore) and 0 <= ignore < 2**31):
        raise ManifestError(f"model.json: ignore_id must be null or a non-negative int32, got {ignore!r}.")
    batch = data.get("batch", {"min": 1, "opt": 1, "max": 1})
    if not (
        isinstance(batch, dict)
        and all(_is_int(batch.get(k)) for k in ("min", "opt", "max"))
        and 1 <= batch["min"] <= batch["opt"] <= batch["max"]
    ):
        raise ManifestError(f"model.json: batch must be {{min, opt, max}} with 1 <= min <= opt <= max, got {batch!r}.")
    teacher = data.get("distilled_from")
    if teacher is not None and not isinstance(teacher, dict):
        raise ManifestError(f"model.json: distilled_from must be an object (the teacher's record) or null, got {teacher!r}.")
    for f in data.get("files", []):
        if not isinstance(f, dict) or set(f) != {"path", "sha256", "bytes"}:
            raise ManifestError(f"model.json: each file entry needs exactly path, sha256 and bytes, got {f!r}.")
        if Path(f["path"]).is_absolute() or ".." in Path(f["path"]).parts:
            raise ManifestError(f"model.json: file path {f['path']!r} must stay inside the artifact directory.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def file_entry(artifact_dir: str | Path, relpath: str) -> FileEntry:
    p = Path(artifact_dir) / relpath
    return FileEntry(path=relpath, sha256=sha256_file(p), bytes=p.stat().st_size)


def manifest_path(path: str | Path) -> Path:
    p = Path(path)
    return p if p.name == MANIFEST_NAME or p.suffix == ".json" else p / MANIFEST_NAME


def read_manifest(path: str | Path, verify: bool = True) -> Manifest:
    """Read ``model.json`` from an artifact directory (or the file itself) and, by default, check every file's hash."""
    mpath = manifest_path(path)
    if Path(path).is_file() and mpath != Path(path):
        raise ManifestError(
            f"{path} is a file, not an artifact: give the artifact directory that holds it and {MANIFEST_NAME}."
        )
    if not mpath.exists():
        raise ManifestError(
            f"No {MANIFEST_NAME} at {mpath}. Give the artifact directory written by `python -m export` (it holds model.json)."
        )
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{mpath} is not valid JSON ({e}); the artifact is damaged: export it again.") from None
    manifest = Manifest.from_dict(data)
    if verify:
        verify_files(manifest, mpath.parent)
    return manifest


def verify_files(manifest: Manifest, artifact_dir: str | Path) -> None:
    for f in manifest.files:
        p = Path(artifact_dir) / f.path
        if not p.exists():
            raise ManifestError(f"Artifact file {p} listed in model.json is missing; copy the whole artifact directory.")
        digest = sha256_file(p)
        if digest != f.sha256:
            raise ManifestError(
                f"Artifact file {p} does not match its sha256 in model.json (expected {f.sha256[:12]}..., "
                f"found {digest[:12]}...): the file is corrupt or was replaced. Copy or export the artifact again."
            )


def write_manifest(manifest: Manifest, artifact_dir: str | Path) -> Path:
    """Write ``model.json`` atomically (temp file + rename) into ``artifact_dir``."""
    validate_dict(manifest.to_dict())
    return atomic_write(Path(artifact_dir) / MANIFEST_NAME, manifest.to_json())
