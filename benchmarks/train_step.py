"""Time one training step of a dp-sims preset against OASIS's training step at the same image size, batch and
class count, or profile one step of the preset phase by phase.

    python -m benchmarks.train_step                                   # synthetic-tiny at its own size, batch, classes
    python -m benchmarks.train_step --rounds 10 --out train_step.json
    python -m benchmarks.train_step --size 128 --batch 4 --classes 16
    python -m benchmarks.train_step --profile                         # ms per phase of one synthetic-tiny step
    python -m benchmarks.train_step --profile --threads 1             # on a machine other processes keep busy

Ours is the real step: the Trainer that ``train.loop.setup`` builds from the preset (data loader, generator,
discriminator with its pre-trained backbone, optimisers, EMA generator), stepped as ``train.loop.train`` steps it:
``next_batch``, ``generator_step``, ``discriminator_step``, the EMA update. OASIS's step (Schönfeld et al., ICLR
2021) is written here from its paper: its generator (:class:`benchmarks.peers.OasisLikeGenerator`, 3D noise, with
spectral normalisation), its U-Net discriminator (:class:`benchmarks.peers.OasisDiscriminator`), the N+1
cross-entropy with class-balancing weights (for D on real and generated images, and as the generator's only
loss), LabelMix for D (weight 10), Adam (0, 0.999) at 1e-4 / 4e-4 and the EMA of the generator; it draws its
batches from the same stream as ours. Its D step reuses the generator step's images, detached, as ours does.

The two are timed in rounds (ours, OASIS, ours, OASIS, ...) after ``--warmup`` steps of each, so drift on a shared
machine hits both; each row gives the median and spread of its step, and the ratio ours / OASIS is the median
of the per-round ratios.

``--profile`` times the phases of the preset's real step with plain timers and hooks around the real code (no
change to it): module forward hooks on the generator, the discriminator and its backbone; gradient hooks on their
outputs to split the backward pass; the loss functions of ``train.losses`` wrapped while profiling; the
optimisers' step hooks. Evaluation, EMA statistics, sample grids, checkpoints and logging are timed once each by
calling what ``Trainer.after_step`` calls and amortised per step over the preset's schedule.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.peers import OasisDiscriminator, OasisLikeGenerator
from dpsims.errors import ConfigError
from train import losses
from train.config import Config, load_config
from train.data import BUILTIN_SCENES
from train.ema import update_ema
from train.loop import Trainer, batches, ema_decay, setup

# ------------------------------------------------------------------------------------------------ our step


def preset_config(preset: str, size: list[int] | None = None, batch: int | None = None, classes: int | None = None,
                  overrides: list[str] | None = None) -> Config:
    """The preset with ``--size``/``--batch``/``--classes`` (and ``--set``) applied; the run is a benchmark, so no
    time limit."""
    over = list(overrides or [])
    if size:
        over.append(f"data.image_size=[{size[0]},{size[1]}]")
    if batch:
        over.append(f"train.batch_size={batch}")
    if classes:
        over.append(f"data.num_classes={classes}")
    cfg = load_config(preset, over + ["train.max_minutes=0"])
    if classes and cfg.data.dataset not in BUILTIN_SCENES:
        raise ConfigError(f"--classes sets the class count of the built-in scenes ({', '.join(BUILTIN_SCENES)}); "
                          f"{preset} reads {cfg.data.dataset}, whose classes are fixed: leave --classes out.")
    return cfg


def our_trainer(cfg: Config, run_dir: Path) -> Trainer:
    """``train.loop.setup`` of a fresh run in ``run_dir``, with the batch stream ``Trainer.session`` opens."""
    t = setup(cfg, run_dir, resume=False)
    t.batches = batches(t.data.loader, t.data.sampler, t.state.pos, t.data.batch)
    return t


def _bare(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if hasattr(module, "module") else module  # under DDP


def our_step(t: Trainer) -> dict[str, torch.Tensor]:
    """One step as ``train.loop.train`` runs it, :meth:`Trainer.step` (without ``after_step``'s scheduled work: see
    :func:`profile`)."""
    return t.step()


# ---------------------------------------------------------------------------------------------- OASIS's step


def oasis_class_weights(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """OASIS's class balancing: per pixel, the inverse of its class's share of the batch's pixels."""
    counts = torch.bincount(label.flatten(), minlength=num_classes).float()
    per_class = label.numel() / counts.clamp(min=1)
    return per_class[label]


def oasis_n1_loss(logits: torch.Tensor, label: torch.Tensor, real: bool) -> torch.Tensor:
    """N+1 cross-entropy: semantic classes (channel c + 1) weighted by class balance, or "fake" (channel 0)."""
    if not real:
        return F.cross_entropy(logits, torch.zeros_like(label))
    per_pixel = F.cross_entropy(logits, label + 1, reduction="none")
    return (per_pixel * oasis_class_weights(label, logits.shape[1] - 1)).mean()


def oasis_labelmix(label: torch.Tensor, real: torch.Tensor, fake: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [N, 1, H, W], mixed image): each class of each image taken from the real or the generated image."""
    pick = torch.randint(0, 2, (label.shape[0], int(label.max()) + 1), generator=generator)
    mask = pick.gather(1, label.flatten(1)).view_as(label).unsqueeze(1).to(real.dtype)
    return mask, mask * real + (1 - mask) * fake


def check_oasis_size(size: tuple[int, int] | list[int]) -> None:
    h, w = size
    if h % 64 or w % 64:
        raise ConfigError(f"OASIS's U-Net discriminator halves the image six times: the size must be a multiple "
                          f"of 64 on each side, got {h}x{w} (give --size 64, 128, 256 or 256x512).")


@dataclass
class OasisStep:
    """OASIS's training step on batches of ``data``: a generator step (N+1 loss of the generated images as their
    semantic classes, D frozen), a discriminator step (real -> classes, generated -> fake, LabelMix), the EMA."""

    num_classes: int
    size: tuple[int, int]
    data: Iterator[tuple[torch.Tensor, torch.Tensor]]
    base: int = 64
    """Width unit: 64 is OASIS's published size (generator 1024..64 channels, discriminator 128..512)."""
    labelmix: float = 10.0
    ema_decay: float = 0.9999
    G: OasisLikeGenerator = field(init=False)
    D: OasisDiscriminator = field(init=False)

    def __post_init__(self) -> None:
        check_oasis_size(self.size)
        torch.manual_seed(0)
        b = self.base
        self.G = OasisLikeGenerator(self.num_classes, self.size, base=b, spectral=True).train()
        self.D = OasisDiscriminator(self.num_classes, down=(2 * b, 2 * b, 4 * b, 4 * b, 8 * b, 8 * b),
                                    up=(4 * b, 4 * b, 2 * b, 2 * b, b, b)).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-4, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=4e-4, betas=(0.0, 0.999))
        self.noise_gen = torch.Generator().manual_seed(1)
        self.mix_gen = torch.Generator().manual_seed(2)

    def __call__(self) -> dict[str, torch.Tensor]:
        real, label = next(self.data)
        z = torch.randn(real.shape[0], self.G.z_dim, generator=self.noise_gen)
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        fake = self.G(label, z)
        loss_g = oasis_n1_loss(self.D(fake), label, real=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)

        self.opt_d.zero_grad(set_to_none=True)
        fake = fake.detach()
        logits_real, logits_fake = self.D(real), self.D(fake)
        loss_d = oasis_n1_loss(logits_real, label, real=True) + oasis_n1_loss(logits_fake, label, real=False)
        mask, mixed = oasis_labelmix(label, real, fake, self.mix_gen)
        target = mask * logits_real + (1 - mask) * logits_fake
        loss_lm = F.mse_loss(self.D(mixed), target)
        (loss_d + self.labelmix * loss_lm).backward()
        self.opt_d.step()
        update_ema(self.G_ema, self.G, self.ema_decay)
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), "loss_labelmix": loss_lm.detach()}


# ------------------------------------------------------------------------------------------------- timing


def trainable_state(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters() if p.requires_grad]


def changed_fraction(before: list[torch.Tensor], *modules: torch.nn.Module) -> float:
    """Share of the trainable tensors ``before`` that differ now."""
    after = [p.detach() for m in modules for p in m.parameters() if p.requires_grad]
    assert len(after) == len(before)
    return sum(not torch.equal(a, b) for a, b in zip(after, before)) / max(1, len(before))


def interleaved(steps: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """ms of each step per round, in the order given within a round, after ``warmup`` steps of each."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def spread(ms: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0], 0, ms[0])
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "q1_ms": q1, "q3_ms": q3}


def machine() -> dict[str, Any]:
    """CPU model and the vector/matrix extensions torch's kernels pick from, threads, versions."""
    from benchmarks.run import cpu_flags, cpu_model

    model, flags = cpu_model(platform.processor() or "unknown CPU"), cpu_flags()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_min": [round(v, 2) for v in load],
            "flags": sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))),
            "torch": torch.__version__, "python": platform.python_version()}


def compare(cfg: Config, rounds: int, warmup: int, work: Path, oasis_base: int = 64) -> dict[str, Any]:
    """Our step and OASIS's, interleaved; per-row statistics, the median per-round ratio and the weights each
    step changed."""
    check_oasis_size(cfg.data.image_size)  # before the minutes of set-up
    t = our_trainer(cfg, work / "run")
    size = tuple(cfg.data.image_size)
    oasis = OasisStep(t.data.train_set.num_classes, size, t.batches, base=oasis_base)  # the same batch stream as ours
    G, D = t.models.G, t.models.D
    ours_before, oasis_before = trainable_state(G, D), trainable_state(oasis.G, oasis.D)
    ours_name = f"dp-sims {cfg.name}"
    oasis_name = "OASIS" if oasis_base == 64 else f"OASIS (base {oasis_base}, not the published 64)"
    times = interleaved({ours_name: lambda: our_step(t), oasis_name: oasis}, rounds, warmup)
    ratios = [a / b for a, b in zip(times[ours_name], times[oasis_name])]

    def params(*modules):
        return sum(p.numel() for m in modules for p in m.parameters()) / 1e6

    rows = [
        {"step": ours_name, **spread(times[ours_name]), "per_round_ms": times[ours_name],
         "generator_m_params": params(G), "discriminator_m_params": params(D),
         "discriminator_trainable_m_params": sum(p.numel() for p in D.parameters() if p.requires_grad) / 1e6,
         "changed_fraction": changed_fraction(ours_before, G, D)},
        {"step": oasis_name, **spread(times[oasis_name]), "per_round_ms": times[oasis_name],
         "generator_m_params": params(oasis.G), "discriminator_m_params": params(oasis.D),
         "discriminator_trainable_m_params": params(oasis.D),
         "changed_fraction": changed_fraction(oasis_before, oasis.G, oasis.D)},
    ]
    return {"kind": "compare", "preset": cfg.name, "size": list(size), "batch": t.data.batch,
            "classes": t.data.train_set.num_classes, "rounds": rounds, "warmup": warmup, "machine": machine(),
            "rows": rows, "ratio_ours_over_oasis": statistics.median(ratios), "per_round_ratio": ratios}


# ---------------------------------------------------------------------------------------------- the profile


class _Clock:
    """Accumulates ms per phase; ``stage`` is the part of the step running ("G step", "D step")."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.stage = "other"
        self.marks: dict[str, float] = {}
        self.starts: dict[int, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.ms[phase] += seconds * 1e3


@contextlib.contextmanager
def _instrumented(t: Trainer, clock: _Clock):
    """Hooks and wrappers around the real step's parts for the time of the ``with``; all removed after."""
    G, D = _bare(t.models.G), _bare(t.models.D)
    handles = []

    def forward_timer(module: torch.nn.Module, name: str, on_output: Callable[[Any], None] | None = None):
        def pre(_module, _args):
            clock.starts[id(module)] = time.perf_counter()

        def post(_module, _args, output):
            clock.add(f"{clock.stage}: {name}", time.perf_counter() - clock.starts.pop(id(module)))
            if on_output is not None:
                on_output(output)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    def mark_when_grad(tensor: torch.Tensor, mark: str) -> None:
        """Note when the first of the tensors marked ``mark`` has its gradient, i.e. when autograd starts the
        backward of the op that made it. The CPU engine runs ready ops latest-created first, so the backward of
        everything made after the backbone (conditioning, stems, decoder, losses) is done before the backbone's."""
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            def hook(grad):
                clock.marks.setdefault(mark, time.perf_counter())
                return grad
            tensor.register_hook(hook)

    forward_timer(G, "generator forward", on_output=lambda out: mark_when_grad(out, "generator output grad"))
    forward_timer(D, "discriminator forward (all)")
    forward_timer(D.backbone, "discriminator backbone forward",
                  on_output=lambda feats: [mark_when_grad(f, "backbone features grad") for f in feats])

    def optimizer_timer(opt: torch.optim.Optimizer, name: str) -> None:
        start: list[float] = []
        handles.append(opt.register_step_pre_hook(lambda *_: start.append(time.perf_counter())))
        handles.append(opt.register_step_post_hook(
            lambda *_: clock.add(f"{clock.stage}: {name}", time.perf_counter() - start.pop())))

    optimizer_timer(t.optim.g, "optimizer step")
    optimizer_timer(t.optim.d, "optimizer step")

    depth = [0]

    def timed_loss(fn):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # discriminator_loss calls focal_n1_loss: counted once
                    clock.add(f"{clock.stage}: losses", time.perf_counter() - t0)
        return wrapper

    loss_names = ("focal_n1_loss", "discriminator_loss", "labelmix_mask", "labelmix_loss", "patch_contrastive_loss",
                  "diversity_ratio", "capped_diversity")
    originals = {name: getattr(losses, name) for name in loss_names}
    backward = torch.autograd.backward

    def timed_backward(*args, **kwargs):
        clock.marks.clear()
        t0 = time.perf_counter()
        result = backward(*args, **kwargs)
        end = time.perf_counter()
        stage, m = clock.stage, clock.marks
        if "generator output grad" in m:  # G step: through D (decoder, then backbone) into G
            d_end = m["generator output grad"]
            features = m.get("backbone features grad", d_end)
            clock.add(f"{stage}: discriminator decoder backward", features - t0)
            clock.add(f"{stage}: discriminator backbone backward", d_end - features)
            clock.add(f"{stage}: generator backward", end - d_end)
        else:  # D step: the frozen backbone keeps no graph; the decoder's parameters get their gradients
            clock.add(f"{stage}: discriminator decoder backward", end - t0)
        return result

    try:
        for name in loss_names:
            setattr(losses, name, timed_loss(originals[name]))
        torch.autograd.backward = timed_backward
        yield
    finally:
        torch.autograd.backward = backward
        for name, fn in originals.items():
            setattr(losses, name, fn)
        for h in handles:
            h.remove()


def profiled_step(t: Trainer, clock: _Clock) -> float:
    """One real step with every phase timed into ``clock``; returns its total ms."""
    tc = t.cfg.train
    t0 = time.perf_counter()
    clock.stage = "data"
    parts = t.next_batch()
    clock.add("data: next batch", time.perf_counter() - t0)
    t1 = time.perf_counter()
    clock.stage = "G step"
    terms_g, fakes = t.generator_step(parts)
    t2 = time.perf_counter()
    clock.add("G step: total", t2 - t1)
    clock.stage = "D step"
    terms_d = t.discriminator_step(parts, fakes)
    t3 = time.perf_counter()
    clock.add("D step: total", t3 - t2)
    clock.stage = "EMA"
    update_ema(t.models.G_ema, _bare(t.models.G), ema_decay(tc.ema_decay, t.state.step, tc.ema_start))
    t.state.step += 1
    end = time.perf_counter()
    clock.add("EMA: update", end - t3)
    clock.stage = "other"
    del terms_g, terms_d
    return (end - t0) * 1e3


def schedule_counts(cfg: Config) -> dict[str, int]:
    """How often ``Trainer.after_step`` does each scheduled job over the preset's ``train.steps``."""
    tc = cfg.train
    counts = dict.fromkeys(("log", "evaluate", "samples", "checkpoint", "ema statistics"), 0)
    for step in range(1, tc.steps + 1):
        last = step == tc.steps
        evaluate, sample = step % tc.eval_every == 0 or last, step % tc.sample_every == 0 or last
        save = step % tc.ckpt_every == 0 or last
        counts["evaluate"] += evaluate
        counts["samples"] += sample
        counts["checkpoint"] += save
        counts["ema statistics"] += bool(tc.ema_bn_batches) and (evaluate or sample or save)
        counts["log"] += step % tc.log_every == 0 or last
    return counts


def scheduled_jobs(t: Trainer, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """ms of one run of each job ``after_step`` schedules, through the same calls it makes."""
    from train.loop import RunLogger

    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar of a run that is not running
        logger = RunLogger(t.cfg, t.run_dir, True, t.state.step)
    ms = {}
    try:
        for name, job in (("ema statistics", t.refresh_ema_stats),
                          ("log", lambda: logger.record(t.state.step, terms, t, False)),
                          ("evaluate", lambda: logger.record(t.state.step, terms, t, True)),
                          ("samples", lambda: logger.samples(t.state.step, t)),
                          ("checkpoint", t.checkpoint)):
            t0 = time.perf_counter()
            job()
            ms[name] = (time.perf_counter() - t0) * 1e3
    finally:
        logger.close()
    ms["evaluate"] = max(0.0, ms["evaluate"] - ms["log"])  # record(evaluate=True) logs too
    return ms


PROFILE_ORDER = (
    "data: next batch",
    "G step: generator forward",
    "G step: discriminator backbone forward",
    "G step: discriminator decoder forward",
    "G step: losses",
    "G step: discriminator decoder backward",
    "G step: discriminator backbone backward",
    "G step: generator backward",
    "G step: optimizer step",
    "G step: other",
    "D step: discriminator backbone forward",
    "D step: discriminator decoder forward",
    "D step: losses",
    "D step: discriminator decoder backward",
    "D step: optimizer step",
    "D step: other",
    "EMA: update",
)


def profile(cfg: Config, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    """Median ms per phase over ``steps`` profiled steps after ``warmup`` plain ones, and the scheduled jobs
    amortised per step."""
    t = our_trainer(cfg, work / "run")
    terms = our_step(t)  # the first step pays one-off costs (allocator, lazy inits): not profiled
    for _ in range(warmup - 1):
        terms = our_step(t)
    per_step: list[dict[str, float]] = []
    totals = []
    for _ in range(steps):
        clock = _Clock()
        with _instrumented(t, clock):
            totals.append(profiled_step(t, clock))
        ms = dict(clock.ms)
        for stage in ("G step", "D step"):
            ms[f"{stage}: discriminator decoder forward"] = (ms.pop(f"{stage}: discriminator forward (all)", 0.0)
                                                            - ms.get(f"{stage}: discriminator backbone forward", 0.0))
            parts = sum(v for k, v in ms.items() if k.startswith(f"{stage}: ") and k != f"{stage}: total")
            ms[f"{stage}: other"] = ms.pop(f"{stage}: total") - parts
        per_step.append(ms)
    phases = {name: statistics.median(s.get(name, 0.0) for s in per_step) for name in PROFILE_ORDER}
    jobs = scheduled_jobs(t, terms)
    counts = schedule_counts(cfg)
    amortised = {name: jobs[name] * counts[name] / cfg.train.steps for name in jobs}
    step_ms = statistics.median(totals)
    return {"kind": "profile", "preset": cfg.name, "size": list(cfg.data.image_size), "batch": t.data.batch,
            "classes": t.data.train_set.num_classes, "steps": steps, "warmup": warmup, "machine": machine(),
            "phases_ms": phases, "step_ms": step_ms, "step_ms_all": totals,
            "scheduled_ms_once": jobs, "scheduled_counts": counts, "scheduled_ms_per_step": amortised,
            "total_ms_per_step": step_ms + sum(amortised.values()), "train_steps": cfg.train.steps}


# ------------------------------------------------------------------------------------------------- output


def _machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['torch_threads']} torch threads, load average at the end "
            f"{m['load_average_1_5_15_min'][0]:.1f}")


def compare_table(result: dict[str, Any]) -> str:
    h, w = result["size"]
    lines = [f"{result['preset']} vs OASIS, {h}x{w}, batch {result['batch']}, {result['classes']} classes, "
             f"{result['rounds']} interleaved rounds after {result['warmup']} warm-up steps "
             f"({_machine_line(result['machine'])})", "",
             "| step | median ms | IQR ms | min-max ms | G M params | D M params (trainable) | weights changed |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['step']} | {r['median_ms']:.0f} | {r['q1_ms']:.0f}-{r['q3_ms']:.0f} | "
                     f"{r['min_ms']:.0f}-{r['max_ms']:.0f} | {r['generator_m_params']:.2f} | "
                     f"{r['discriminator_m_params']:.2f} ({r['discriminator_trainable_m_params']:.2f}) | "
                     f"{r['changed_fraction']:.0%} |")
    lines += ["", f"ratio ours / OASIS (median of the per-round ratios): {result['ratio_ours_over_oasis']:.3f}"]
    return "\n".join(lines)


def profile_table(result: dict[str, Any]) -> str:
    h, w = result["size"]
    step = result["step_ms"]
    lines = [f"{result['preset']}, {h}x{w}, batch {result['batch']}, {result['classes']} classes: median of "
             f"{result['steps']} profiled steps after {result['warmup']} ({_machine_line(result['machine'])})", "",
             "| phase | ms per step | share |", "|---|---|---|"]
    for name, ms in result["phases_ms"].items():
        lines.append(f"| {name} | {ms:.1f} | {ms / step:.1%} |")
    lines.append(f"| **step (timed whole)** | **{step:.1f}** | 100% |")
    counts, once = result["scheduled_counts"], result["scheduled_ms_once"]
    for name, ms in result["scheduled_ms_per_step"].items():
        lines.append(f"| amortised: {name} ({once[name]:.0f} ms x {counts[name]} / {result['train_steps']} steps) | "
                     f"{ms:.1f} | {ms / step:.1%} |")
    total = result["total_ms_per_step"]
    lines.append(f"| **step + amortised jobs** | **{total:.1f}** | {total / step:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dpsims.cli import configure_logging, make_parser, prog_name, run_cli

    parser = make_parser("benchmarks.train_step", __doc__.split("\n\n")[0], __doc__)
    parser.add_argument("--preset", default="synthetic-tiny", help="config preset (default synthetic-tiny)")
    parser.add_argument("--size", type=_size, default=None, help="HxW or S (default: the preset's)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--classes", type=int, default=None, help="classes of the built-in scenes (default: the preset's)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a value of --preset (repeatable)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (or profiled steps; default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps of each (default 2)")
    parser.add_argument("--oasis-base", type=int, default=64,
                        help="OASIS's width unit (default 64, its published size; smaller only for quick checks)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core; on a machine shared with other busy "
                             "processes 1 can be several times faster)")
    parser.add_argument("--profile", action="store_true", help="ms per phase of the preset's step instead")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if (args.rounds < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1) or args.oasis_base < 1
            or (args.threads is not None and args.threads < 1)):
        parser.error("--rounds must be >= 1, --warmup >= 0, and --batch, --oasis-base and --threads >= 1.")

    def body() -> int:
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = preset_config(args.preset, args.size, args.batch, args.classes, args.set)
        with tempfile.TemporaryDirectory(prefix="train_step-") as work:
            if args.profile:
                result = profile(cfg, args.rounds, args.warmup, Path(work))
                print(profile_table(result))
            else:
                result = compare(cfg, args.rounds, args.warmup, Path(work), args.oasis_base)
                print(compare_table(result))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.out}")
        return 0

    return run_cli(prog_name("benchmarks.train_step"), body)


def _size(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"--size takes HxW or S (e.g. 64 or 256x512), got {text!r}")
    return values * (3 - len(values))


if __name__ == "__main__":
    raise SystemExit(main())
