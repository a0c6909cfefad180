"""Checkpoints: safetensors files written atomically, a ``last`` pointer, and loaders that never unpickle.

Layout of a run folder::

    RUN/config.yaml                    resolved config
    RUN/metrics.jsonl                  one JSON object per logged step
    RUN/samples/step_XXXXXXX.png       sample grids
    RUN/checkpoints/step_XXXXXXX/      generator.safetensors, generator_ema.safetensors, discriminator.safetensors,
                                       optimizer_g.safetensors, optimizer_d.safetensors, state.json
    RUN/checkpoints/last               text file naming the newest complete checkpoint folder

A checkpoint folder is written under a temporary name and renamed into place, then ``last`` is replaced
atomically, so an interruption at any moment leaves the previous checkpoint intact and pointed to.
``generator_ema.safetensors`` carries the generator's config and class list in its metadata, so that file alone
is enough to rebuild the generator (what ``python -m export --checkpoint FILE`` uses).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dpsims.errors import CheckpointError
from dpsims.files import atomic_path, atomic_write
from train.config import GeneratorConfig, _from_dict

FORMAT_VERSION = 1
META_KEY = "dp_sims"
G_EMA = "generator_ema.safetensors"


@dataclass
class GeneratorInfo:
    """What a generator checkpoint says about itself."""

    num_classes: int
    generator: GeneratorConfig
    image_size: list[int]
    class_names: list[str]
    palette: list[list[int]]
    ignore_id: int | None = None
    dataset: str = ""
    step: int = 0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    """A distilled student's teacher (train/distill.py): run, checkpoint, step, sha256 of its generator file,
    MACs and parameters of both, and student-vs-teacher fidelity; None for a generator trained from scratch."""

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("source")
        d["format"] = FORMAT_VERSION
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str, source: str = "") -> GeneratorInfo:
        d = json.loads(text)
        if d.pop("format", None) != FORMAT_VERSION:
            raise CheckpointError(f"{source}: unknown checkpoint format; it was written by another dp-sims version.")
        d["generator"] = _from_dict(GeneratorConfig, d["generator"], "generator")
        return cls(source=source, **d)


# ------------------------------------------------------------------------------------------ atomic files


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, per_param in state["state"].items():
        plain["state"][str(idx)] = {}
        for k, v in per_param.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                plain["state"][str(idx)][k] = v
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, t in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": plain["param_groups"]}


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(
    run_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    info: GeneratorInfo,
    state: dict[str, Any],
    rng: dict[str, torch.Tensor],
    keep: int = 3,
) -> Path:
    """Write ``RUN/checkpoints/step_XXXXXXX`` atomically and point ``last`` at it. Returns the folder."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = Path(tempfile.mkdtemp(dir=str(ckpt_root), prefix=f".{name}."))
    try:
        meta = {META_KEY: info.to_json()}
        for key, module in modules.items():
            save_file(_state_dict_cpu(module), str(tmp / f"{key}.safetensors"), metadata=meta if key.startswith("generator") else None)
        opt_plain = {}
        for key, opt in optimizers.items():
            tensors, plain = _flatten_optimizer(opt.state_dict())
            save_file(tensors, str(tmp / f"optimizer_{key}.safetensors"))
            opt_plain[key] = plain
        save_file({k: v.contiguous().cpu() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "optimizers": opt_plain, **state}, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(ckpt_root / "last", name + "\n")
    _prune(ckpt_root, keep, protect=name)
    return final


def save_generator(path: str | Path, generator: torch.nn.Module, info: GeneratorInfo) -> Path:
    """Write one self-describing generator file (weights + config + classes in its metadata), atomically:
    what ``python -m export --checkpoint FILE`` and :func:`load_generator` read."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(_state_dict_cpu(generator), str(tmp), metadata={META_KEY: info.to_json()})
    return path


def _prune(ckpt_root: Path, keep: int, protect: str) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``RUN/checkpoints/last`` points to, or None for a run without a checkpoint."""
    pointer = Path(run_dir) / "checkpoints" / "last"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not name:
        raise CheckpointError(f"{pointer} is empty; it should name a step_* folder beside it (e.g. step_0001000).")
    target = pointer.parent / name
    if not (target / "state.json").exists():
        raise CheckpointError(f"{pointer} points to {target.name}, which is missing or incomplete.")
    return target


def resolve_generator_file(path: str | Path) -> Path:
    """A run folder, a checkpoint folder or a generator .safetensors file -> the EMA generator file."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / G_EMA).exists():
            return p / G_EMA
        ck = last_checkpoint(p)
        if ck is not None:
            return ck / G_EMA
    raise CheckpointError(
        f"No generator checkpoint at {p}. Give a run folder written by `python -m train` (it has checkpoints/last), "
        f"a checkpoint folder, or a {G_EMA} file."
    )


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is corrupt or not a checkpoint.") from None


def load_generator(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the generator from a run folder, checkpoint folder or generator file. Returns (Generator, info)."""
    from train.models.generator import Generator

    file = resolve_generator_file(path)
    tensors, meta = read_tensors(file)
    if META_KEY not in meta:
        raise CheckpointError(f"{file} has no dp-sims metadata: it is not a generator checkpoint written by `python -m train`.")
    info = GeneratorInfo.from_json(meta[META_KEY], source=str(file))
    gen = Generator(info.num_classes, info.generator)
    load_state_strict(gen, tensors, file)
    return gen.to(device).eval(), info


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load a state dict and turn any mismatch into one clear :class:`CheckpointError`."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} of another shape (e.g. {k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)})")
        raise CheckpointError(
            f"{source} does not fit this architecture: {'; '.join(detail)}. Use the config the checkpoint was trained with."
        )
    module.load_state_dict(tensors, strict=True)


def load_training_state(ckpt_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """state.json and the RNG tensors of a checkpoint folder."""
    try:
        state = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt_dir}/state.json is unreadable ({e}).") from None
    rng, _ = read_tensors(ckpt_dir / "rng.safetensors")
    return state, rng


def load_optimizer(opt: torch.optim.Optimizer, ckpt_dir: Path, key: str, plain: dict[str, Any]) -> None:
    tensors, _ = read_tensors(ckpt_dir / f"optimizer_{key}.safetensors")
    opt.load_state_dict(_unflatten_optimizer(tensors, plain))
