"""Distillation: a small generator (the student) trained against a finished DP-SIMS run (the teacher).

``python -m train --config synthetic-tiny-s8 --teacher runs/tiny`` (or ``--set distill.teacher=RUN``) calls
:func:`distill`. The teacher is the EMA generator of the run's newest checkpoint, frozen, in eval mode. Each step
the student and the teacher get the same label maps and the same noise, and the student's generator loss is
(weights in ``distill:``, train/config.py :class:`~train.config.DistillConfig`; sources in docs/paper.md):

- ``l1``: L1 between the student's and the teacher's image;
- ``perceptual``: L1 between the frozen discriminator backbone's features of the two images, relative to the
  teacher's feature magnitude at each stage (the backbone the discriminator already holds: nothing downloaded);
- ``feature``: the image branch's stage outputs (``feature_levels``) against the teacher's, through learnable 1x1
  adapters under MSE (GAN Compression, ``feature_mode: adapter``) or by kernel alignment (CAT,
  ``kernel-alignment``);
- ``adversarial``: the N+1 loss against a discriminator that starts from the teacher run's discriminator and is
  trained as in training (:class:`train.loop.Trainer`'s discriminator step, unchanged).

Everything else is the training loop's (:func:`train.loop.setup`, :func:`train.loop.run_steps`): data, EMA,
checkpoints (which also hold the adapters and their optimiser, so ``--resume`` continues exactly), samples. The
student is a generator like any other; its checkpoint's :class:`~train.checkpoint.GeneratorInfo` records the
teacher (run, step, sha256 of its generator file, MACs and parameters of both) and, at every checkpoint, the
student-vs-teacher fidelity (PSNR and label consistency on the same held-out maps and seed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dpsims.errors import CheckpointError, ConfigError
from dpsims.files import sha256_file
from dpsims.logs import get_logger
from train import losses
from train.checkpoint import (
    G_EMA,
    GeneratorInfo,
    last_checkpoint,
    load_generator,
    load_optimizer,
    load_state_strict,
    load_training_state,
    read_tensors,
)
from train.config import Config, validate
from train.loop import Trainer, TrainResult, _unwrap, run_steps, setup
from train.macs import generator_cost
from train.student_init import init_from_teacher

log = get_logger(__name__)

ADAPTERS = "adapters"
"""Checkpoint name of the adapters (``adapters.safetensors``, ``optimizer_a.safetensors``)."""


# ------------------------------------------------------------------------------------------- the teacher


@dataclass
class Teacher:
    generator: nn.Module
    """The teacher run's EMA generator: frozen, eval mode."""
    info: GeneratorInfo
    checkpoint: Path
    """The checkpoint folder it comes from."""
    sha256: str
    """sha256 of its ``generator_ema.safetensors``."""
    run_config: dict[str, Any]
    """The teacher run's config.yaml ({} for a checkpoint folder outside a run)."""


def teacher_checkpoint(path: str | Path) -> Path:
    """A run folder (its newest checkpoint) or one checkpoint folder -> the checkpoint folder."""
    p = Path(path)
    if (p / G_EMA).is_file():
        return p
    ck = last_checkpoint(p) if p.is_dir() else None
    if ck is None:
        raise ConfigError(f"distill.teacher={path}: no teacher checkpoint there. Give a run folder written by "
                          "`python -m train` (it has checkpoints/last) or one of its checkpoints/step_* folders.")
    return ck


def load_teacher(path: str | Path) -> Teacher:
    """The teacher's EMA generator (CPU, eval, frozen), its info and where it comes from."""
    import yaml

    ck = teacher_checkpoint(path)
    if not (ck / "discriminator.safetensors").is_file():
        raise ConfigError(f"distill.teacher={path}: {ck} has no discriminator.safetensors; the student's "
                          "discriminator starts from the teacher run's, so give a checkpoint written by `python -m train`.")
    with torch.random.fork_rng(devices=[]):  # building the module draws initial weights: leave the streams as they are
        generator, info = load_generator(ck / G_EMA)
    generator.requires_grad_(False)
    run_config: dict[str, Any] = {}
    for folder in (ck.parent.parent, ck):
        if (folder / "config.yaml").is_file():
            run_config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
            break
    return Teacher(generator.eval(), info, ck, sha256_file(ck / G_EMA), run_config)


def resolve_student(cfg: Config, teacher: GeneratorInfo) -> Config:
    """``cfg`` with ``distill.width`` applied to the teacher's channels (and reset to null), else as it is."""
    width = cfg.distill.width
    if width is None:
        return cfg
    g, tg = cfg.model.generator, teacher.generator
    heads = g.attn_heads
    student = dataclasses.replace(
        g, base_channels=max(1, round(tg.base_channels * width)),
        label_channels=max(heads, round(tg.label_channels * width / heads) * heads),
        spade_hidden=max(1, round(tg.spade_hidden * width)))
    out = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, generator=student),
                              distill=dataclasses.replace(cfg.distill, width=None))
    validate(out)
    log.info("distill.width=%s: student base_channels=%d, label_channels=%d, spade_hidden=%d (teacher %d, %d, %d)",
             width, student.base_channels, student.label_channels, student.spade_hidden, tg.base_channels,
             tg.label_channels, tg.spade_hidden)
    return out


#: discriminator settings that fix its architecture: the student's must be the teacher run's to start from it
_D_ARCHITECTURE = ("backbone", "decoder_channels", "stem_channels", "out_indices")


def check_teacher(teacher: Teacher, cfg: Config, num_classes: int, class_names: list[str]) -> None:
    """Refuse a teacher that cannot teach this student, before anything is written: a ConfigError naming the
    teacher's and the student's value of each mismatch (classes, image size, noise shape, number of stages when
    features are distilled, the discriminator's architecture)."""
    info, g = teacher.info, cfg.model.generator
    where = f"the teacher ({teacher.checkpoint})"
    problems = []
    if info.num_classes != num_classes:
        problems.append(f"classes: {where} has {info.num_classes}, the student's data ({cfg.data.dataset}) has {num_classes}")
    if list(info.image_size) != list(cfg.data.image_size):
        problems.append(f"image size: the teacher's is {info.image_size}, the student's data.image_size is "
                        f"{list(cfg.data.image_size)}")
    t_noise, s_noise = [info.generator.noise_tokens, info.generator.noise_dim], [g.noise_tokens, g.noise_dim]
    if t_noise != s_noise:
        problems.append(f"noise shape [noise_tokens, noise_dim]: the teacher's is {t_noise}, the student's "
                        f"{s_noise} (both must take the same noise)")
    if cfg.distill.feature > 0 and len(info.generator.channel_mults) != len(g.channel_mults):
        problems.append(f"stages: the teacher's image branch has {len(info.generator.channel_mults)} "
                        f"(channel_mults {info.generator.channel_mults}), the student's {len(g.channel_mults)}: "
                        "feature distillation pairs stage with stage (or set distill.feature=0)")
    t_disc = (teacher.run_config.get("model") or {}).get("discriminator") or {}
    for key in _D_ARCHITECTURE:
        if key in t_disc and t_disc[key] != getattr(cfg.model.discriminator, key):
            problems.append(f"model.discriminator.{key}: the teacher run's is {t_disc[key]!r}, the student's "
                            f"{getattr(cfg.model.discriminator, key)!r} (the student's discriminator starts from the teacher's)")
    if problems:
        raise ConfigError("This teacher cannot teach this student: " + "; ".join(problems) + ". Give a student "
                          "config that matches the teacher (or another teacher).")
    if list(info.class_names) != list(class_names):
        log.warning("the teacher's class names differ from the student's data (%s): ids are paired as they are",
                    cfg.data.dataset)


# ------------------------------------------------------------------------------- features and adapters


def stage_channels(generator: nn.Module) -> list[int]:
    """Output channels of each image-branch stage, lowest resolution first."""
    return [stage[-1].conv1.out_channels for stage in generator.blocks]


class FeatureTaps:
    """Forward hooks on the last block of the chosen image-branch stages; :meth:`capture` collects their outputs
    (lowest resolution first) for one forward pass."""

    def __init__(self, generator: nn.Module, levels: list[int]):
        self.levels = sorted(levels)
        self.features: list[torch.Tensor] = []
        self.active = False
        self.handles = [generator.blocks[i][-1].register_forward_hook(self._hook) for i in self.levels]

    def _hook(self, module, inputs, output):
        if self.active:
            self.features.append(output)

    @contextlib.contextmanager
    def capture(self):
        self.features, self.active = [], True
        try:
            yield self.features
        finally:
            self.active = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def make_adapters(student_channels: list[int], teacher_channels: list[int]) -> nn.ModuleList:
    """One 1x1 conv per distilled stage, student channels -> teacher channels (GAN Compression). Where both have
    the same width it starts as the identity (a student that equals its teacher then has zero feature loss)."""
    adapters = nn.ModuleList()
    for cs, ct in zip(student_channels, teacher_channels):
        conv = nn.Conv2d(cs, ct, 1)
        if cs == ct:
            with torch.no_grad():
                conv.weight.copy_(torch.eye(ct).view(ct, cs, 1, 1))
                conv.bias.zero_()
        adapters.append(conv)
    return adapters


# ------------------------------------------------------------------------------- loss terms (pure functions)


def backbone_features(discriminator: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The frozen backbone's feature maps of ``image`` in [-1, 1], normalised as the discriminator feeds it."""
    return list(discriminator.backbone(((image + 1) * 0.5 - discriminator.mean) / discriminator.std))


def perceptual_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Mean over stages of mean |f_s - f_t| / mean |f_t|: every backbone stage weighs the same whatever its
    feature scale."""
    terms = [(s.float() - t.float()).abs().mean() / (t.float().abs().mean() + eps) for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()


def adapter_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], adapters: nn.ModuleList) -> torch.Tensor:
    """GAN Compression's feature distillation: mean over stages of MSE(adapter(f_s), f_t)."""
    return torch.stack([F.mse_loss(a(s).float(), t.float()) for a, s, t in zip(adapters, student, teacher)]).mean()


def kernel_alignment(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per sample, KA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) for X [N, C1, H, W] and Y [N, C2, H, W]
    with the positions of one image as rows (CAT's kernel alignment; any channel counts, no adapter). 1 when
    the two maps are equal, or equal up to a rotation and a scale of their channels."""
    xs, ys = x.float().flatten(2), y.float().flatten(2)  # [N, C, HW]
    cross = torch.linalg.matrix_norm(ys @ xs.transpose(1, 2)) ** 2
    return cross / (torch.linalg.matrix_norm(xs @ xs.transpose(1, 2)) * torch.linalg.matrix_norm(ys @ ys.transpose(1, 2)) + eps)


def kernel_alignment_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over stages and samples of 1 - KA."""
    return torch.stack([(1 - kernel_alignment(s, t)).mean() for s, t in zip(student, teacher)]).mean()


def distill_terms(student_image: torch.Tensor, teacher_image: torch.Tensor, student_features: list[torch.Tensor],
                  teacher_features: list[torch.Tensor], discriminator: nn.Module, adapters: nn.ModuleList | None,
                  feature_mode: str, pairs: int = 0) -> dict[str, torch.Tensor]:
    """The distillation terms (unweighted) of one batch: ``distill_l1``, ``distill_perceptual``,
    ``distill_feature``, ``distill_noise``. Each is zero when the student is the teacher.

    ``pairs``: the batch's last ``pairs`` images are the first ``pairs`` maps again under a second noise draw;
    ``distill_noise`` is then the L1 between the student's and the teacher's change of image between the two draws
    (the teacher's response to noise, which per-image targets alone let a small student average away), else 0."""
    with torch.no_grad():
        target = backbone_features(discriminator, teacher_image)
    perceptual = perceptual_loss(backbone_features(discriminator, student_image), target)
    if not student_features:  # distill.feature = 0: no stage is tapped
        feature = student_image.new_zeros((), dtype=torch.float32)
    elif feature_mode == "adapter":
        feature = adapter_loss(student_features, teacher_features, adapters)
    else:
        feature = kernel_alignment_loss(student_features, teacher_features)
    s, t = student_image.float(), teacher_image.float()
    noise = s.new_zeros(())
    if pairs:
        n = s.shape[0] - pairs
        noise = ((s[:pairs] - s[n:]) - (t[:pairs] - t[n:])).abs().mean()
    return {"distill_l1": (s - t).abs().mean(), "distill_perceptual": perceptual, "distill_feature": feature,
            "distill_noise": noise}


# ------------------------------------------------------------------------------------------ the trainer


@dataclass
class DistillTrainer(Trainer):
    """:class:`~train.loop.Trainer` whose generator step distils from a teacher; the discriminator step, EMA,
    logging, samples and checkpoints are the training loop's."""

    teacher: Teacher | None = None
    adapters: nn.ModuleList | None = None
    opt_a: torch.optim.Optimizer | None = None
    student_taps: FeatureTaps | None = None
    teacher_taps: FeatureTaps | None = None

    def generator_loss(self, real: torch.Tensor, label: torch.Tensor, d_bare: nn.Module):
        """One micro-batch: the student and the teacher on the same maps and noise; (loss, terms, fakes).

        With ``distill.noise`` or the student's own diversity term (``loss.diversity`` from
        ``loss.diversity_start``), the first ``loss.diversity_fraction`` of the maps go through both generators
        a second time under other noise: the noise-response term compares the two changes of image, the
        diversity term is the training loop's."""
        dc, lc = self.cfg.distill, self.cfg.loss
        n = real.shape[0]
        diverse = self.diversity_on()
        k = self.second_draw_size(n, diverse or dc.noise > 0)
        z1, z2 = self.sample_noise(n), self.sample_noise(k)
        labels, noise = torch.cat([label, label[:k]]), torch.cat([z1, z2])
        with self.student_taps.capture() as student_features:
            fakes = self.models.G(labels, noise)
        with torch.no_grad(), self.teacher_taps.capture() as teacher_features:
            target = self.teacher.generator(labels, noise)
        loss_adv = losses.focal_n1_loss(d_bare(fakes).logits, labels, True, lc.focal_gamma, lc.class_balance,
                                        self.data.train_set.ignore_id)
        terms = distill_terms(fakes, target, student_features, teacher_features, d_bare, self.adapters,
                              dc.feature_mode, pairs=k)
        terms["loss_diversity"], terms["diversity_ratio"] = self.diversity_term(fakes, z1, z2, diverse)
        loss = (dc.adversarial * loss_adv + dc.l1 * terms["distill_l1"] + dc.perceptual * terms["distill_perceptual"]
                + dc.feature * terms["distill_feature"] + dc.noise * terms["distill_noise"]
                + lc.diversity * terms["loss_diversity"])
        return loss, {"loss_g": loss, "loss_g_adv": loss_adv, **terms}, fakes[:n].detach()

    def generator_step(self, parts):
        if self.opt_a is None:
            return super().generator_step(parts)
        self.opt_a.zero_grad(set_to_none=True)
        out = super().generator_step(parts)
        if self.dinfo.world > 1:  # the adapters are not inside DDP: average their gradients here
            for p in self.adapters.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.dinfo.world
        self.optim.scaler.step(self.opt_a)
        return out

    def checkpoint_parts(self):
        modules, optimizers = super().checkpoint_parts()
        if self.opt_a is not None:
            modules[ADAPTERS], optimizers["a"] = self.adapters, self.opt_a
        return modules, optimizers

    def checkpoint(self) -> None:
        """The student-vs-teacher fidelity goes into the checkpoint's teacher record first."""
        if self.dinfo.main:
            score = fidelity(self.models.G_ema, self.teacher.generator, self.data.val_set,
                             self.cfg.distill.fidelity_samples, self.device)
            info = self.models.info
            info.teacher = {**(info.teacher or {}), "fidelity": {"step": self.state.step, **score}}
            log.info("step %d: student vs teacher on %d held-out maps: PSNR %s dB%s", self.state.step, score["maps"],
                     score["psnr_db"], "" if "label_consistency" not in score else
                     f", label consistency {score['label_consistency']:.4f} (teacher {score['teacher_label_consistency']:.4f})")
        super().checkpoint()


@torch.no_grad()
def fidelity(student: nn.Module, teacher: nn.Module, val_set, samples: int, device: torch.device,
             seed: int = 1234) -> dict[str, Any]:
    """Student against teacher on the first ``samples`` held-out maps, the same noise (seeds ``seed + i``) for both: PSNR of
    the images in [-1, 1] (peak-to-peak 2, as the export's quality check) and, on the built-in scenes, the label
    consistency of each."""
    labels = torch.stack([torch.as_tensor(val_set[i][1]) for i in range(min(samples, len(val_set)))])
    from runtimes.noise import sample_noise, seed_list

    # the noise of seed ``seed`` for map i is the one of seed + i, as the predictor draws it (runtimes.noise)
    noise = torch.from_numpy(sample_noise(seed_list(seed, len(labels)), teacher.noise_shape))

    def images(generator: nn.Module) -> torch.Tensor:
        return torch.cat([generator(labels[i:i + 16].to(device), noise[i:i + 16].to(device)).float().cpu()
                          for i in range(0, len(labels), 16)])

    was_training = student.training
    student.eval()
    try:
        a, b = images(student), images(teacher)
    finally:
        student.train(was_training)
    from runtimes.imaging import psnr

    value = psnr(b.numpy(), a.numpy())
    out: dict[str, Any] = {"psnr_db": None if math.isinf(value) else round(value, 2), "maps": len(labels), "seed": seed}
    scenes = getattr(val_set, "scenes", None)
    if scenes is not None:
        from train.metrics import label_consistency, to_uint8_nhwc

        out["label_consistency"] = round(float(label_consistency(to_uint8_nhwc(a), labels.numpy(), scenes)), 4)
        out["teacher_label_consistency"] = round(float(label_consistency(to_uint8_nhwc(b), labels.numpy(), scenes)), 4)
    return out


# ------------------------------------------------------------------------------------------- set-up, run


def setup_distill(cfg: Config, run_dir: Path, resume: bool = False) -> DistillTrainer:
    """The training set-up (:func:`train.loop.setup`) plus the teacher, the discriminator started from the teacher
    run's, the feature taps and adapters (and, on resume, their weights and optimiser state).

    The teacher is loaded and checked against the student's config before anything is written."""
    from train.data import build_dataset

    dc = cfg.distill
    if not dc.teacher:
        raise ConfigError("distill.teacher is not set: give --teacher RUN (a finished training run).")
    teacher = load_teacher(dc.teacher)
    cfg = resolve_student(cfg, teacher.info)
    data = build_dataset(cfg.data, "val")
    check_teacher(teacher, cfg, data.num_classes, list(data.class_names))
    if resume:
        _check_same_teacher(run_dir, teacher)

    t = setup(cfg, run_dir, resume)
    teacher.generator.to(t.device)
    student = _unwrap(t.models.G)
    if not resume:  # the teacher run's discriminator (resume: the checkpoint's own)
        tensors, _ = read_tensors(teacher.checkpoint / "discriminator.safetensors")
        try:
            load_state_strict(_unwrap(t.models.D), {k: v.to(t.device) for k, v in tensors.items()},
                              teacher.checkpoint / "discriminator.safetensors")
        except CheckpointError as e:
            raise ConfigError(f"The teacher's discriminator does not fit the student's model.discriminator: {e}") from None
    if not resume and dc.init == "teacher-channels":  # resume: the checkpoint's weights
        report = init_from_teacher(student, teacher.generator)
        t.models.G_ema.load_state_dict(student.state_dict())
        if t.dinfo.main:
            log.info("distill.init=teacher-channels: %s", report.summary())
    levels = list(range(len(student.blocks))) if dc.feature_levels is None else sorted(set(dc.feature_levels))
    if dc.feature == 0:
        levels = []
    adapters = None
    opt_a = None
    if dc.feature_mode == "adapter" and levels:
        with torch.random.fork_rng(devices=[]):  # fixed initial weights; the run's random streams untouched
            torch.manual_seed(cfg.train.seed)
            adapters = make_adapters([stage_channels(student)[i] for i in levels],
                                     [stage_channels(teacher.generator)[i] for i in levels]).to(t.device)
        opt_a = torch.optim.Adam(adapters.parameters(), lr=cfg.train.lr_g, betas=tuple(cfg.train.betas))
        if resume:
            ck = last_checkpoint(run_dir)
            file = ck / f"{ADAPTERS}.safetensors"
            tensors, _ = read_tensors(file)
            load_state_strict(adapters, {k: v.to(t.device) for k, v in tensors.items()}, file)
            load_optimizer(opt_a, ck, "a", load_training_state(ck)[0]["optimizers"]["a"])

    image_size = cfg.data.image_size
    t_macs, t_params = generator_cost(teacher.info.num_classes, teacher.info.generator, image_size)
    s_macs, s_params = generator_cost(t.models.info.num_classes, cfg.model.generator, image_size)
    t.models.info.teacher = {"run": str(dc.teacher), "checkpoint": teacher.checkpoint.name, "step": teacher.info.step,
                      "sha256": teacher.sha256, "dataset": teacher.info.dataset, "macs": t_macs,
                      "parameters": t_params, "student_macs": s_macs, "student_parameters": s_params,
                      "feature_mode": dc.feature_mode, "init": dc.init}
    if t.dinfo.main:
        log.info("distilling %s (step %d, %.1f M MACs, %.2f M parameters) into a student of %.1f M MACs (1/%.1f), "
                 "%.2f M parameters", dc.teacher, teacher.info.step, t_macs / 1e6, t_params / 1e6, s_macs / 1e6,
                 t_macs / s_macs, s_params / 1e6)
    base = {f.name: getattr(t, f.name) for f in dataclasses.fields(Trainer)}
    return DistillTrainer(**base, teacher=teacher, adapters=adapters, opt_a=opt_a,
                          student_taps=FeatureTaps(student, levels), teacher_taps=FeatureTaps(teacher.generator, levels))


def _check_same_teacher(run_dir: Path, teacher: Teacher) -> None:
    """A resumed distillation must go on with the teacher it started with."""
    ck = last_checkpoint(run_dir)
    if ck is None:
        return  # train.loop.setup says what is wrong
    from train.checkpoint import META_KEY

    _, meta = read_tensors(ck / G_EMA)
    before = (GeneratorInfo.from_json(meta[META_KEY]).teacher or {}) if META_KEY in meta else {}
    if before.get("sha256") and before["sha256"] != teacher.sha256:
        raise ConfigError(
            f"{run_dir} was distilled from {before.get('run')} at {before.get('checkpoint')} (generator sha256 "
            f"{before['sha256'][:12]}...), but distill.teacher={teacher.checkpoint} now holds another generator "
            f"({teacher.sha256[:12]}...). Point distill.teacher at that checkpoint folder "
            f"(--set distill.teacher=.../checkpoints/{before.get('checkpoint')}) to continue.")


def distill(cfg: Config, run_dir: str | Path, resume: bool = False) -> TrainResult:
    """Distil ``cfg``'s generator from ``cfg.distill.teacher`` into ``run_dir`` (resuming when ``resume``)."""
    return run_steps(setup_distill(cfg, Path(run_dir), resume))
