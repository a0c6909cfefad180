"""Typed configuration: dataclasses loaded from YAML presets with explicit ``key=value`` overrides.

A preset is a YAML mapping whose top-level keys are the fields of :class:`Config`. Unknown keys and values of
the wrong type are errors (:class:`ConfigError`) that name the key and the accepted fields, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dpsims.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: presets ship in the wheel


@dataclass
class GeneratorConfig:
    """The context-modeling generator (see train/models/generator.py)."""

    base_channels: int = 64
    """Width unit of the image branch; stage ``i`` has ``base_channels * channel_mults[i]`` channels."""
    channel_mults: list[int] = field(default_factory=lambda: [16, 16, 8, 4, 2, 1])
    """One entry per resolution, lowest first; ``len - 1`` x2 upsamplings, so the total stride is 2**(len-1)."""
    label_channels: int = 128
    """Width of the label encoder's features (the spatially adaptive modulation source)."""
    attn_levels: int = 2
    """How many of the lowest resolutions of the label encoder get self-attention over the whole layout."""
    attn_heads: int = 4
    noise_tokens: int = 16
    """Noise is a set of ``noise_tokens`` vectors of size ``noise_dim``; label features cross-attend to it."""
    noise_dim: int = 64
    blocks_per_stage: int = 1
    spade_hidden: int = 128
    """Hidden width of each SPADE modulation network."""
    context_levels: int | None = None
    """How many of the lowest resolutions of the label encoder get a context block (cross-attention to the noise
    tokens, and self-attention at the ``attn_levels`` lowest); finer scales receive that context through the
    top-down pass only. None: every scale (the full-resolution blocks cost most of an edge CPU's time)."""
    stem_kernel: int = 3
    """Kernel of the label stem conv over the one-hot map (3 or 1; 1 is an embedding: one lookup per pixel)."""
    spade_kernel: int = 3
    """Kernel of the per-norm scale/shift convs of the modulation (3 or 1). The shared conv before them stays 3x3,
    so 1 keeps a 5x5 receptive field on the label features at 9x fewer operations in the largest layers."""


@dataclass
class DiscriminatorConfig:
    """The pre-trained-backbone U-Net discriminator (see train/models/discriminator.py)."""

    backbone: str = "convnext_large"
    """Any timm model that supports ``features_only=True``."""
    pretrained: bool = True
    """Load ImageNet weights through timm (needs the hub) unless ``weights`` names a source."""
    weights: str | None = None
    """Backbone weights: ``pip:efficientnet-lite0`` (ImageNet weights from the ``[pretrained]`` extra's package,
    see train/models/pretrained.py), or a local .safetensors file / weights-only torch state dict of the timm model."""
    freeze: bool = True
    """Keep the backbone frozen (and in eval mode); the paper's setting."""
    lr_backbone: float = 0.0
    """Learning rate for the backbone when ``freeze`` is false (0 means: use train.lr_d / 10)."""
    decoder_channels: int = 256
    stem_channels: int = 32
    """Width of the small trainable full-resolution stem whose features feed the last decoder stages."""
    out_indices: list[int] | None = None
    """Backbone stages to use (timm ``out_indices``); None keeps every stage."""


@dataclass
class ModelConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class DataConfig:
    dataset: Literal["synthetic", "synthetic-photo", "ade20k", "coco-stuff", "cityscapes", "folder"] = "synthetic"
    root: str | None = None
    """Dataset folder (not used by ``synthetic`` and ``synthetic-photo``, the built-in scenes)."""
    image_size: list[int] = field(default_factory=lambda: [256, 256])
    """[H, W] fed to the networks; must be a multiple of the generator's total stride."""
    load_size: list[int] | None = None
    """Resize to this [H, W] before a random crop of ``image_size``; None resizes straight to ``image_size``."""
    flip: bool = True
    num_classes: int = 8
    """Only for the built-in scenes: the number of classes, up to 64 (``synthetic``) or 8 (``synthetic-photo``);
    real datasets define their own."""
    synthetic_length: int = 100_000
    """Only for ``synthetic``: the virtual size of the training split."""
    val_length: int = 64
    """Only for ``synthetic``: the number of held-out maps."""
    classes_file: str | None = None
    """Only for ``folder``: the classes file (default ROOT/classes.txt or ROOT/classes.json)."""
    num_workers: int = 0
    seed: int = 0


@dataclass
class LossConfig:
    focal_gamma: float = 2.0
    """Focal exponent of the pixel-wise N+1 loss (0 gives OASIS' weighted cross-entropy)."""
    class_balance: bool = True
    labelmix: float = 10.0
    """Weight of the LabelMix consistency term in the discriminator loss (OASIS: 10)."""
    contrastive: float = 1.0
    """Weight of the patch contrastive loss between generated and real images (generator)."""
    contrastive_patches: int = 64
    contrastive_temperature: float = 0.07
    diversity: float = 1.0
    """Weight of the diversity term that rewards different images for different noise."""
    diversity_tau: float = 0.1
    """Cap of the diversity ratio beyond which it is not rewarded: the mean per-pixel image difference in [0, 1]
    units for two typical noise draws (train/losses.py, diversity_ratio). Trained generators reach 0.02-0.05."""
    diversity_start: int = 0
    """Training step from which the diversity term is on (weight 0 and no second noise draw before it): the
    layout is learned first, then the images of one map are pushed apart (benchmarks/RESULTS.md, diversity)."""
    diversity_fraction: float = 0.25
    """Fraction of the batch generated a second time with other noise for the diversity term (cost vs signal)."""


@dataclass
class TrainConfig:
    steps: int = 200_000
    batch_size: int = 32
    """The global batch: under torchrun each of the N processes takes batch_size / N (a multiple of N)."""
    batch_per_gpu: int = 0
    """Micro-batch of each process; 0 takes batch_size / N at once. Smaller values accumulate gradients over
    batch_size / (N * batch_per_gpu) micro-batches per step: the same global batch in less memory."""
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    ema_decay: float = 0.9999
    ema_start: int = 0
    ema_bn_batches: int = 50
    """Before the EMA generator is sampled, evaluated or saved, its BatchNorm statistics are recomputed from this
    many of its own forward passes (train mode) over training label maps, as OASIS does; 0 keeps the live
    generator's statistics (copied at every EMA update), which lag behind the EMA weights."""
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    """Mixed precision on CUDA (ignored on the CPU)."""
    channels_last: bool = True
    """Keep the generator and discriminator in NHWC memory format (CPU and GPU): the same math, faster
    convolutions (benchmarks/RESULTS.md, training-step profile)."""
    grad_clip: float = 0.0
    """Clip gradient norms at this value; 0 turns clipping off."""
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    sample_every: int = 2000
    ckpt_every: int = 5000
    eval_every: int = 5000
    keep_checkpoints: int = 3
    tensorboard: bool = True
    """Also write the logged scalars and sample grids to RUN/tensorboard when the tensorboard package is installed
    (the [train] extra installs it); metrics.jsonl is written either way."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this many minutes of training; 0 means no limit."""


@dataclass
class EvalConfig:
    label_consistency_samples: int = 64
    sample_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sample_maps: int = 4


@dataclass
class DistillConfig:
    """Distillation of this config's generator (the student) from a finished run (the teacher): train/distill.py.
    Weights default to GAN Compression's (Li et al. 2020); docs/paper.md, "Distillation", gives each source."""

    teacher: str | None = None
    """The teacher: a run folder written by ``python -m train`` (its newest checkpoint) or one checkpoint folder.
    None trains from scratch. ``python -m train --teacher RUN`` sets it."""
    width: float | None = None
    """When set, the student's ``base_channels``, ``label_channels`` (to a multiple of ``attn_heads``) and
    ``spade_hidden`` are the teacher's times this, and the rest of model.generator is kept as written; the
    resolved channels are written to the run's config.yaml (and ``width`` to null there)."""
    l1: float = 10.0
    """L1 between the student's and the teacher's image for the same label map and noise."""
    perceptual: float = 10.0
    """L1 between the frozen discriminator backbone's features of the two images, relative to the teacher's
    feature magnitude at each backbone stage (a perceptual term with no downloaded network)."""
    feature: float = 10.0
    """Intermediate feature distillation at ``feature_levels`` of the image branch."""
    feature_mode: Literal["adapter", "kernel-alignment"] = "kernel-alignment"
    """``kernel-alignment``: 1 - kernel alignment of the two feature maps, no adapter (CAT); ``adapter``: learnable
    1x1 convs map the student's features onto the teacher's, under MSE (GAN Compression). The default won a short
    measurement on synthetic-tiny (benchmarks/RESULTS.md, 2026-12-07)."""
    feature_levels: list[int] | None = None
    """Image-branch stages (0 = lowest resolution) whose outputs are distilled; None: every stage."""
    noise: float = 0.0
    """L1 between the student's and the teacher's change of image between two noise draws of one map (the
    teacher's noise response; train/distill.py, distill_terms). Costs a second pass of both generators over
    ``loss.diversity_fraction`` of the batch."""
    adversarial: float = 1.0
    """The N+1 adversarial loss against a discriminator that starts from the teacher run's discriminator."""
    init: Literal["random", "teacher-channels"] = "teacher-channels"
    """The student's start: ``teacher-channels``, the teacher's most important channels wherever the shapes allow
    (train/student_init.py), or ``random`` (as training from scratch). The default won on 3 seeds: the 1/8
    student of synthetic-tiny after 600 steps at FD 49.1 +- 2.0 against 71.0 +- 3.8 from a random start
    (benchmarks/RESULTS.md, 2026-12-07, "converged teachers")."""
    fidelity_samples: int = 64
    """Held-out maps (one seed) on which student-vs-teacher PSNR and label consistency are measured at every
    checkpoint and recorded in it."""


@dataclass
class Config:
    name: str = "dp-sims"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert the harmless cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}.")
        return _from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"'{key}' has an invalid value {value!r}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {list(args)}, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}.")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}.")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"'{key}': unsupported type {_type_name(tp)}.")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"Unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}. "
            f"Accepted keys there: {', '.join(sorted(names))}."
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"Cannot parse override value {text!r}: {e}") from None


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"Override {assignment!r} must look like key.sub=value, e.g. train.batch_size=8.")
    key, _, raw = assignment.partition("=")
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"Override {assignment!r}: '{p}' is not a section.")
        node = child
    node[parts[-1]] = _parse_scalar(raw)


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset name (``synthetic-tiny``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    for cand in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if cand.is_file():
            return cand
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"Config {str(name_or_path)!r} not found. Give a YAML file or one of the presets: {', '.join(presets)}.")


def config_from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset/YAML file, apply ``key=value`` overrides, validate, and return a :class:`Config`."""
    import yaml

    tree: dict[str, Any] = {}
    if path is not None:
        file = resolve_preset(path)
        try:
            tree = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{file} must hold a mapping at the top level.")
    for ov in overrides or []:
        apply_override(tree, ov)
    cfg = config_from_dict(tree)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    g = cfg.model.generator
    stride = 2 ** (len(g.channel_mults) - 1)
    h, w = cfg.data.image_size if len(cfg.data.image_size) == 2 else (0, 0)
    if len(cfg.data.image_size) != 2 or h <= 0 or w <= 0:
        raise ConfigError(f"data.image_size must be [H, W], got {cfg.data.image_size}.")
    if h % stride or w % stride:
        raise ConfigError(
            f"data.image_size {h}x{w} must be a multiple of the generator's total stride {stride} "
            f"(2 ** (len(model.generator.channel_mults) - 1)); e.g. {h // stride * stride or stride}x{w // stride * stride or stride}."
        )
    if not 0 <= g.attn_levels <= len(g.channel_mults):
        raise ConfigError(f"model.generator.attn_levels must be within 0..{len(g.channel_mults)}.")
    if g.context_levels is not None and not g.attn_levels <= g.context_levels <= len(g.channel_mults):
        raise ConfigError(f"model.generator.context_levels must be within attn_levels ({g.attn_levels}).."
                          f"{len(g.channel_mults)}, or null for every scale.")
    for key in ("stem_kernel", "spade_kernel"):
        if getattr(g, key) not in (1, 3):
            raise ConfigError(f"model.generator.{key} must be 1 or 3, not {getattr(g, key)}.")
    if g.label_channels % g.attn_heads:
        raise ConfigError("model.generator.label_channels must be divisible by model.generator.attn_heads.")
    d = cfg.model.discriminator
    from train.models import pretrained as named  # torch-free checks: the name and the architecture it fits

    if named.is_named(d.weights) and named.lookup(d.weights).timm_model != d.backbone:
        raise ConfigError(f"model.discriminator.weights={d.weights} holds timm's {named.lookup(d.weights).timm_model}, "
                          f"but model.discriminator.backbone is {d.backbone}: set the backbone to match, or give that backbone "
                          "its own weights (model.discriminator.weights=FILE, or =null with pretrained=false).")
    _check_ranges(cfg)
    t = cfg.train
    if len(t.betas) != 2 or not all(0.0 <= b < 1.0 for b in t.betas):
        raise ConfigError(f"train.betas must be two Adam betas in [0, 1), e.g. [0.0, 0.999]; got {t.betas}.")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", t.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps; got {t.device!r}.")
    from train.data import BUILTIN_SCENES

    if cfg.data.dataset not in BUILTIN_SCENES and not cfg.data.root:
        raise ConfigError(
            f"data.root is required for dataset '{cfg.data.dataset}': pass --set data.root=/path/to/{cfg.data.dataset}."
        )


#: (key, lowest allowed, highest allowed or None): numeric settings outside these ranges are refused at load, before
#: anything is written, instead of failing with a traceback at the first sample or evaluation step
RANGES: list[tuple[str, float, float | None]] = [
    ("model.generator.base_channels", 1, None), ("model.generator.label_channels", 1, None),
    ("model.generator.attn_heads", 1, None), ("model.generator.noise_tokens", 1, None),
    ("model.generator.noise_dim", 1, None), ("model.generator.blocks_per_stage", 1, None),
    ("model.generator.spade_hidden", 1, None), ("model.discriminator.decoder_channels", 1, None),
    ("model.discriminator.stem_channels", 1, None), ("model.discriminator.lr_backbone", 0, None),
    ("data.num_classes", 2, None), ("data.synthetic_length", 1, None), ("data.val_length", 1, None),
    ("data.num_workers", 0, None), ("loss.focal_gamma", 0, None), ("loss.labelmix", 0, None),
    ("loss.contrastive", 0, None), ("loss.contrastive_patches", 1, None), ("loss.contrastive_temperature", 1e-6, None),
    ("loss.diversity", 0, None), ("loss.diversity_tau", 0, None), ("loss.diversity_fraction", 0, 1), ("loss.diversity_start", 0, None),
    ("train.steps", 0, None), ("train.batch_size", 1, None), ("train.batch_per_gpu", 0, None),
    ("train.lr_g", 1e-12, None), ("train.lr_d", 1e-12, None), ("train.ema_decay", 0, 1), ("train.ema_start", 0, None),
    ("train.ema_bn_batches", 0, None),
    ("train.grad_clip", 0, None), ("train.log_every", 1, None), ("train.sample_every", 1, None),
    ("train.ckpt_every", 1, None), ("train.eval_every", 1, None), ("train.keep_checkpoints", 1, None),
    ("train.max_minutes", 0, None), ("eval.label_consistency_samples", 1, None), ("eval.sample_maps", 1, None),
    ("distill.l1", 0, None), ("distill.perceptual", 0, None), ("distill.feature", 0, None), ("distill.noise", 0, None),
    ("distill.adversarial", 0, None), ("distill.fidelity_samples", 1, None),
]


def _check_ranges(cfg: Config) -> None:
    for key, low, high in RANGES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not (value >= low and (high is None or value <= high)):  # also refuses NaN
            bound = (("> 0" if 0 < low < 1e-3 else f">= {low:g}") if high is None else f"within {low:g}..{high:g}")
            raise ConfigError(f"{key} must be {bound}, got {value!r} (--set {key}=...).")
    channel_mults = cfg.model.generator.channel_mults
    if not channel_mults or min(channel_mults) < 1:
        raise ConfigError(f"model.generator.channel_mults must be a non-empty list of positive ints, got {channel_mults}.")
    dc = cfg.distill
    if dc.width is not None and not 0 < dc.width <= 4:
        raise ConfigError(f"distill.width must be a multiplier in (0, 4], e.g. 0.5; got {dc.width!r}.")
    levels = len(cfg.model.generator.channel_mults)
    if dc.feature_levels is not None and not all(0 <= i < levels for i in dc.feature_levels):
        raise ConfigError(f"distill.feature_levels must name image-branch stages 0..{levels - 1} (0 = lowest "
                          f"resolution), or be null for all; got {dc.feature_levels}.")
    if not cfg.eval.sample_seeds:
        raise ConfigError("eval.sample_seeds must list at least one seed, e.g. [0, 1, 2].")


def save_config(cfg: Config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
