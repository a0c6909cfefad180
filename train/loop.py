"""The DP-SIMS training loop. ``train(cfg, run_dir)`` reads top to bottom: set-up, then one step = one
discriminator update and one generator update, then logging, samples, evaluation and checkpoints.

Runs on one CPU, one GPU, or several GPUs under torchrun (DDP, one process per GPU; rank 0 writes files).
``train.batch_size`` is the global batch, split evenly over the processes, so a preset keeps its schedule on any
number of GPUs. Decisions that end a step early (NaN loss, interrupt, time limit) are agreed between processes,
and checkpoints hold every process's random state, so a resumed run continues exactly on the same world size.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dpsims.errors import CheckpointError, ConfigError, TrainingDiverged
from dpsims.logs import get_logger
from runtimes.predictor import Predictor
from train import losses
from train.checkpoint import (
    GeneratorInfo,
    last_checkpoint,
    load_optimizer,
    load_state_strict,
    load_training_state,
    read_tensors,
    save_checkpoint,
)
from train.config import Config, save_config
from train.ema import make_ema, recompute_batch_stats, update_ema
from train.models.discriminator import Discriminator
from train.models.generator import Generator
from train.predictor import generator_predictor

log = get_logger(__name__)


# ---------------------------------------------------------------------------------------------- set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ["LOCAL_RANK"])
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        info = Dist(dist.get_rank(), world, local)
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        return info, device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device_name}, but torch sees no CUDA GPU here: use train.device=cpu (or auto).")
    return Dist(), torch.device(device_name)


class ResumableSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch, sharded over ranks, that can start mid-epoch (for exact resume)."""

    def __init__(self, length: int, seed: int, rank: int = 0, world: int = 1):
        self.length, self.seed, self.rank, self.world = length, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        # every rank gets the same number of samples (the last length % world of the permutation are left out),
        # so all ranks turn epochs at the same step and keep the same position
        order = torch.randperm(self.length, generator=g)[: len(self) * self.world][self.rank :: self.world].tolist()
        start, self.start = self.start, 0
        yield from order[start:]

    def __len__(self) -> int:
        return self.length // self.world


@dataclass
class DataPosition:
    epoch: int = 0
    index: int = 0  # samples of this rank's epoch already consumed


def batches(loader, sampler: ResumableSampler, pos: DataPosition, batch_size: int):
    """Endless batches that keep ``pos`` up to date (saved in checkpoints)."""
    while True:
        sampler.set_position(pos.epoch, pos.index)
        for batch in loader:
            pos.index += batch_size
            yield batch
        pos.epoch, pos.index = pos.epoch + 1, 0


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def python_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def random_state(noise_gen: torch.Generator, mix_gen: torch.Generator) -> dict[str, Any]:
    """This process's random state, JSON-able: the noise and mixing generators, torch (and CUDA), Python, NumPy."""
    return {"noise_gen": noise_gen.get_state().tolist(), "mix_gen": mix_gen.get_state().tolist(),
            **{k: v.tolist() for k, v in rng_state().items()}, **python_rng_state()}


def restore_random_state(state: dict[str, Any], rng: dict[str, torch.Tensor], dinfo: Dist,
                         noise_gen: torch.Generator, mix_gen: torch.Generator, pos: DataPosition) -> None:
    """Continue every process's random streams from a checkpoint's state.json / rng tensors.

    On the world size it was written with, each process takes its own saved state (exact continuation). On
    another one the streams stay freshly seeded (seed, rank, step) and the epoch position is rescaled from the
    samples all processes consumed; the run goes on, but not sample for sample as it would have."""
    saved_world = int(state.get("world", 1))
    if saved_world != dinfo.world:
        pos.index = pos.index * saved_world // dinfo.world
        if dinfo.main:
            log.warning("resuming a %d-process checkpoint with %d processes: data order and noise continue from "
                        "the same epoch position, not sample for sample", saved_world, dinfo.world)
        return
    if dinfo.world > 1:
        own = state["ranks"][dinfo.rank]
        rng = {k: torch.tensor(own[k], dtype=torch.uint8) for k in ("torch", "cuda") if k in own}
        state = own
    noise_gen.set_state(torch.tensor(state["noise_gen"], dtype=torch.uint8))
    mix_gen.set_state(torch.tensor(state["mix_gen"], dtype=torch.uint8))
    restore_rng(rng, state)


def restore_rng(rng: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    random.setstate(_tuplify(ast.literal_eval(state["python"])))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    generator_ema: torch.nn.Module


@dataclass
class RunState:
    step: int = 0
    pos: DataPosition = field(default_factory=DataPosition)


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return m.module if isinstance(m, DDP) else m


def train(cfg: Config, run_dir: Path, resume: bool = False) -> TrainResult:
    """Train DP-SIMS into ``run_dir`` (resuming from its last checkpoint when ``resume``).

    One step: the generator step (its fakes reused, detached, by the discriminator step), the discriminator step,
    the EMA update; then, on their schedules, logging with label consistency, sample grids and checkpoints."""
    if cfg.distill.teacher:
        raise ConfigError(f"distill.teacher={cfg.distill.teacher} asks for a distillation: run it with "
                          "train.distill.distill(cfg, run_dir) (python -m train does so), not train.loop.train.")
    return run_steps(setup(cfg, Path(run_dir), resume))


def run_steps(t: Trainer) -> TrainResult:
    """The steps of a set-up trainer (:func:`setup`, or a subclass built from it, e.g. train/distill.py's)."""
    tc = t.cfg.train
    with t.session():
        while t.state.step < tc.steps:
            if t.after_step(t.step()):
                break
    return TrainResult(t.run_dir, t.state.step, t.models.G_ema)


@dataclass
class TrainData:
    """This process's data: the splits, the resumable sampler and its loader, and the batch split."""

    train_set: Any
    val_set: Any
    sampler: ResumableSampler
    loader: torch.utils.data.DataLoader
    batch: int
    """Samples per process and step."""
    micro: int
    """Samples per micro-batch (``batch`` unless ``train.batch_per_gpu``)."""


@dataclass
class Models:
    """The networks: ``G`` and ``D`` (DDP-wrapped under torchrun), the EMA generator, what a checkpoint says about
    the generator, and ``preview``: the EMA generator behind the runtimes Predictor (samples, label consistency)."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    info: GeneratorInfo
    preview: Predictor


@dataclass
class Optimisers:
    """Adam for each network, the loss scaler (fp16 autocast only) and the autocast dtype (None: float32)."""

    g: torch.optim.Optimizer
    d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None


@dataclass
class Streams:
    """The training step's own random streams (saved in checkpoints): the noise of the generator loss and the
    diversity term, and LabelMix masks / contrastive patches."""

    noise: torch.Generator
    mix: torch.Generator


@dataclass
class Trainer:
    """What one training process holds, in named parts, and the named parts of a step. Built by :func:`setup`."""

    cfg: Config
    run_dir: Path
    dinfo: Dist
    device: torch.device
    data: TrainData
    models: Models
    optim: Optimisers
    streams: Streams
    state: RunState
    interrupted: bool = False
    batches: Any = None
    """The endless batch iterator (opened by :meth:`session`)."""
    logger: Any = None

    # ------------------------------------------------------------------------------------- the step
    def step(self) -> dict[str, torch.Tensor]:
        """One training step: the next batch, the generator step (its fakes reused, detached, by the discriminator
        step), the discriminator step, the EMA update. Returns the step's loss terms (for :meth:`after_step`)."""
        tc = self.cfg.train
        parts = self.next_batch()
        terms_g, fakes = self.generator_step(parts)
        terms_d = self.discriminator_step(parts, fakes)
        update_ema(self.models.G_ema, _unwrap(self.models.G), ema_decay(tc.ema_decay, self.state.step, tc.ema_start))
        self.state.step += 1
        return {**terms_d, **terms_g}

    def next_batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next (image, label) batch of this process, split into micro-batches."""
        real, label = next(self.batches)
        real, label = real.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)
        return list(zip(real.split(self.data.micro), label.split(self.data.micro)))

    def generator_step(self, parts) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """One optimiser step of G over the micro-batches; returns its loss terms and the detached fakes.

        D's weights need no gradient here: the bare module (outside DDP, which would reduce them) with
        requires_grad off; gradients still flow through D into G."""
        d_bare = _unwrap(self.models.D)
        d_params = [p for p in d_bare.parameters() if p.requires_grad]
        for p in d_params:
            p.requires_grad_(False)
        self.optim.g.zero_grad(set_to_none=True)
        fakes, terms = [], []
        try:
            for j, (real, label) in enumerate(parts):
                with _sync_grads(self.models.G, j == len(parts) - 1):  # DDP reduces once, after the last micro-batch
                    with self.autocast():
                        loss, part, fake = self.generator_loss(real, label, d_bare)
                    _check_finite(self.state.step, part, self.dinfo, self.device)
                    self.optim.scaler.scale(loss / len(parts)).backward()
                fakes.append(fake)
                terms.append(part)
        finally:
            for p in d_params:
                p.requires_grad_(True)
        _clip(self.optim.scaler, self.optim.g, self.models.G, self.cfg.train.grad_clip)
        self.optim.scaler.step(self.optim.g)
        return _mean_terms(terms), fakes

    def discriminator_step(self, parts, fakes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimiser step of D: real pixels -> their class, generated pixels -> "fake", LabelMix."""
        self.optim.d.zero_grad(set_to_none=True)
        terms = []
        for j, ((real, label), fake) in enumerate(zip(parts, fakes)):
            with _sync_grads(self.models.D, j == len(parts) - 1):
                with self.autocast():
                    loss, part = self.discriminator_loss(real, label, fake)
                _check_finite(self.state.step, part, self.dinfo, self.device)
                self.optim.scaler.scale(loss / len(parts)).backward()
            terms.append(part)
        _clip(self.optim.scaler, self.optim.d, self.models.D, self.cfg.train.grad_clip)
        self.optim.scaler.step(self.optim.d)
        self.optim.scaler.update()
        return _mean_terms(terms)

    def generator_loss(self, real: torch.Tensor, label: torch.Tensor, d_bare: torch.nn.Module):
        """One micro-batch of the generator step: (loss, its terms, the detached fakes for the D step).

        Adversarial (N+1, focal), patch contrast to the real image, diversity between a second noise draw of the
        first ``diversity_fraction`` of the batch and the first."""
        lc, ignore_id = self.cfg.loss, self.data.train_set.ignore_id
        n = real.shape[0]
        diverse = self.diversity_on()
        k = self.second_draw_size(n, diverse)
        z1, z2 = self.sample_noise(n), self.sample_noise(k)
        labels = torch.cat([label, label[:k]])
        fakes = self.models.G(labels, torch.cat([z1, z2]))
        out_g = d_bare(fakes)
        loss_adv = losses.focal_n1_loss(out_g.logits, labels, True, lc.focal_gamma, lc.class_balance, ignore_id)
        loss_nce = real.new_zeros(())
        if lc.contrastive > 0:
            with torch.no_grad():
                real_features = d_bare(real).features
            loss_nce = losses.patch_contrastive_loss(
                out_g.features[:n], real_features, lc.contrastive_patches, lc.contrastive_temperature, self.streams.mix
            )
        loss_div, ratio = self.diversity_term(fakes, z1, z2, diverse)
        loss = loss_adv + lc.contrastive * loss_nce + lc.diversity * loss_div
        terms = {"loss_g": loss, "loss_g_adv": loss_adv, "loss_contrastive": loss_nce, "loss_diversity": loss_div,
                 "diversity_ratio": ratio}
        return loss, terms, fakes[:n].detach()

    def discriminator_loss(self, real: torch.Tensor, label: torch.Tensor, fake: torch.Tensor):
        """One micro-batch of the discriminator step: (loss, its terms)."""
        lc = self.cfg.loss
        n, images = real.shape[0], [real, fake]
        if lc.labelmix > 0:
            mask = losses.labelmix_mask(label, self.streams.mix)
            images.append(mask * real + (1 - mask) * fake)
        # one pass over real, generated (and mixed) images: the same logits as one pass each (the discriminator
        # treats images independently; its feature statistics are updated from the real ones only), and one
        # large batch keeps 2 CPU cores busier than three small ones (benchmarks/RESULTS.md, profile)
        logits = self.models.D(torch.cat(images), real=n).logits.split(n)
        loss_adv = losses.discriminator_loss(logits[0], logits[1], label, lc.focal_gamma, lc.class_balance,
                                             self.data.train_set.ignore_id)
        loss_lm = real.new_zeros(())
        if lc.labelmix > 0:
            loss_lm = losses.labelmix_loss(logits[2], logits[0], logits[1], mask)
        loss = loss_adv + lc.labelmix * loss_lm
        return loss, {"loss_d": loss, "loss_d_adv": loss_adv, "loss_labelmix": loss_lm}

    def diversity_on(self) -> bool:
        """Whether this step has the diversity term (``loss.diversity`` > 0 from ``loss.diversity_start``)."""
        lc = self.cfg.loss
        return lc.diversity > 0 and self.state.step >= lc.diversity_start

    def second_draw_size(self, n: int, needed: bool) -> int:
        """How many of a batch's ``n`` maps go through the generator a second time under other noise: the first
        ``loss.diversity_fraction`` of them (at least one) when a term ``needed`` them, else none."""
        return max(1, int(round(n * self.cfg.loss.diversity_fraction))) if needed else 0

    def diversity_term(self, fakes: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, on: bool):
        """(capped diversity loss, logged mean ratio) of a batch whose last ``len(z2)`` images are its first maps
        under the second draw ``z2``; zeros when ``on`` is false. The term is capped at ``loss.diversity_tau`` (it
        binds when the ratio reaches it)."""
        zero = fakes.new_zeros((), dtype=torch.float32)
        if not on:
            return zero, zero
        k, n = z2.shape[0], fakes.shape[0] - z2.shape[0]
        per_sample = losses.diversity_ratio(fakes[:k].float(), fakes[n:].float(), z1[:k], z2)
        return losses.capped_diversity(per_sample, self.cfg.loss.diversity_tau), per_sample.detach().mean()

    def sample_noise(self, n: int) -> torch.Tensor:
        """Training randomness, not a seed's image: the step's noise comes from the run's own stream (saved in
        checkpoints, so a resume continues it); images of a seed come from runtimes.noise (samples, evaluation)."""
        return torch.randn(n, *_unwrap(self.models.G).noise_shape, generator=self.streams.noise).to(self.device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.optim.amp_dtype, enabled=self.optim.amp_dtype is not None)

    # ------------------------------------------------------------------- after the step, on schedules
    def after_step(self, terms: dict[str, torch.Tensor]) -> bool:
        """Logging, label consistency, samples and checkpoints when due (the last step does all); True to stop.

        Every process must stop at the same step (a lone rank would wait for the others forever), so the time
        limit and an interrupt are agreed first."""
        tc, main, step = self.cfg.train, self.dinfo.main, self.state.step
        self.logger.bar.update(1)
        out_of_time, self.interrupted = agree(self.dinfo, self.device, self.logger.out_of_time(), self.interrupted)
        last = step == tc.steps or out_of_time
        evaluate_now = main and (step % tc.eval_every == 0 or last)
        sample_now = main and (step % tc.sample_every == 0 or last)
        save_now = step % tc.ckpt_every == 0 or last or self.interrupted
        if main and tc.ema_bn_batches and (evaluate_now or sample_now or save_now):
            self.refresh_ema_stats()
        if main and (step % tc.log_every == 0 or last):
            self.logger.record(step, terms, self, evaluate_now)
        if sample_now:
            self.logger.samples(step, self)
        if save_now:
            self.checkpoint()
        if self.interrupted:
            log.warning("stopped by interrupt at step %d; resume with --resume %s", step, self.run_dir)
        elif out_of_time:
            log.warning("train.max_minutes=%s reached at step %d; checkpoint written", tc.max_minutes, step)
        return self.interrupted or out_of_time

    def refresh_ema_stats(self) -> None:
        """The EMA generator's own BatchNorm statistics (see train/ema.py), from fixed training maps and noise (a
        fixed torch stream: statistics, not images of a seed)."""
        train_set, batch, G_ema = self.data.train_set, self.data.batch, self.models.G_ema
        g = torch.Generator().manual_seed(self.cfg.train.seed + 99_991)
        n = min(len(train_set), self.cfg.train.ema_bn_batches * batch)
        order = (torch.randperm(len(train_set), generator=g)[:n] if len(train_set) < 1_000_000 else
                 torch.randint(0, len(train_set), (n,), generator=g)).tolist()

        def inputs():
            for lo in range(0, n, batch):
                labels = torch.stack([train_set[i][1] for i in order[lo:lo + batch]]).to(self.device)
                yield labels, torch.randn(len(labels), *G_ema.noise_shape, generator=g).to(self.device)

        with self.autocast():
            recompute_batch_stats(G_ema, inputs())

    def checkpoint(self) -> None:
        """Collective under DDP: every process hands its random state to rank 0, which writes."""
        own = random_state(self.streams.noise, self.streams.mix)
        ranks = None
        if self.dinfo.world > 1:
            ranks = [None] * self.dinfo.world
            dist.all_gather_object(ranks, own)
        if self.dinfo.main:
            info = self.models.info
            info.step = self.state.step
            rng = {k: torch.tensor(own[k], dtype=torch.uint8) for k in ("torch", "cuda") if k in own}
            modules, optimizers = self.checkpoint_parts()
            save_checkpoint(
                self.run_dir, self.state.step, modules, optimizers, info,
                {"pos": vars(self.state.pos), "scaler": self.optim.scaler.state_dict(),
                 **{k: v for k, v in own.items() if k not in rng},
                 **({"world": self.dinfo.world, "ranks": ranks} if ranks else {})},
                rng, keep=self.cfg.train.keep_checkpoints,
            )

    def checkpoint_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, torch.optim.Optimizer]]:
        """The modules and optimisers a checkpoint holds (a subclass adds its own)."""
        m = self.models
        return ({"generator": _unwrap(m.G), "generator_ema": m.G_ema, "discriminator": _unwrap(m.D)},
                {"g": self.optim.g, "d": self.optim.d})

    @contextlib.contextmanager
    def session(self):
        """Signal handlers (Ctrl-C, SIGTERM from a scheduler or from torchrun passing the interrupt on: finish the
        step and checkpoint; a second signal aborts), the metrics log and progress bar, and the process group's
        end."""
        def on_signal(signum, frame):
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            log.warning("%s received: finishing this step and writing a checkpoint (send it again to abort)",
                        signal.Signals(signum).name)

        old_handlers = {}
        if threading.current_thread() is threading.main_thread():
            old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.batches = batches(self.data.loader, self.data.sampler, self.state.pos, self.data.batch)
        self.logger = RunLogger(self.cfg, self.run_dir, self.dinfo.main, self.state.step)
        try:
            yield self
        finally:
            self.logger.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.dinfo.world > 1:
                dist.destroy_process_group()


class RunLogger:
    """Rank 0's outputs: ``metrics.jsonl``, the progress bar, sample grids and, when the ``tensorboard`` package
    is installed (``train.tensorboard``), the same scalars and grids under ``RUN/tensorboard``."""

    def __init__(self, cfg: Config, run_dir: Path, main: bool, step: int):
        from tqdm.auto import tqdm

        self.cfg, self.run_dir, self.main = cfg, run_dir, main
        self.file = open(run_dir / "metrics.jsonl", "a") if main else None  # noqa: SIM115
        self.bar = tqdm(total=cfg.train.steps, initial=step, disable=not main, dynamic_ncols=True, desc="train")
        self.t_start = self.t_log = time.time()
        self.step_log = step
        self.tb = None
        if main and cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: scalars go to metrics.jsonl only (pip install tensorboard)")
            else:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)

    def out_of_time(self) -> bool:
        limit = self.cfg.train.max_minutes
        return limit > 0 and (time.time() - self.t_start) > limit * 60

    def record(self, step: int, terms: dict[str, torch.Tensor], t: Trainer, evaluate: bool) -> None:
        from train.samples import label_consistency_of_generator

        now = time.time()
        rec = {"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()},
               "lr_g": t.optim.g.param_groups[0]["lr"], "lr_d": t.optim.d.param_groups[0]["lr"],
               "it_s": round((step - self.step_log) / max(now - self.t_log, 1e-9), 3),
               "elapsed_s": round(now - self.t_start, 1)}
        self.t_log, self.step_log = now, step
        if evaluate:
            score = label_consistency_of_generator(t.models.preview, t.data.val_set, self.cfg.eval.label_consistency_samples)
            if score is not None:
                rec["label_consistency"] = round(score, 4)
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.bar.set_postfix({k: f"{rec[k]:.3f}" for k in ("loss_d", "loss_g", "label_consistency") if k in rec})
        if self.tb is not None:
            for key, value in rec.items():
                if key != "step":
                    self.tb.add_scalar(f"{'eval' if key == 'label_consistency' else 'train'}/{key}", value, step)
            self.tb.flush()

    def samples(self, step: int, t: Trainer) -> None:
        from train.samples import write_sample_grid

        path = write_sample_grid(t.models.preview, t.data.val_set, self.run_dir / "samples" / f"step_{step:07d}.png",
                                 self.cfg.eval)
        if self.tb is not None:
            from PIL import Image

            self.tb.add_image("samples", np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
            self.tb.flush()

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def setup(cfg: Config, run_dir: Path, resume: bool) -> Trainer:
    """Everything a process needs before the first step: batch split, process group, seeds, data, models,
    optimisers, the checkpoint to resume (before anything is written), DDP, and the random streams.

    Checks first: a bad batch split, dataset or resume fails before the run folder is touched. Over 80 lines by
    design: the set-up's steps in the order they must run (each one a call), since DDP wrapping, resuming and the
    random streams depend on that order."""
    from train.data import build_dataset

    tc = cfg.train
    batch, micro = _batch_split(tc)
    dinfo, device = setup_distributed(tc.device)
    if micro < batch and dinfo.main:
        log.info("gradients accumulated over %d micro-batches of %d per process (global batch %d)",
                 batch // micro, micro, tc.batch_size)
    torch.manual_seed(tc.seed + dinfo.rank)
    np.random.seed(tc.seed + dinfo.rank)
    random.seed(tc.seed + dinfo.rank)
    train_set = build_dataset(cfg.data, "train")  # a bad dataset fails here, before anything is written
    val_set = build_dataset(cfg.data, "val")
    if len(train_set) // dinfo.world < batch:
        raise ConfigError(
            f"The training split holds {len(train_set)} samples: too few for a batch of {batch} per process "
            f"(train.batch_size={tc.batch_size} over {dinfo.world} processes). Lower train.batch_size."
        )
    sampler = ResumableSampler(len(train_set), tc.seed, dinfo.rank, dinfo.world)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=False,
        generator=torch.Generator().manual_seed(tc.seed + dinfo.rank),  # worker seeds must not consume the global RNG
    )

    num_classes = train_set.num_classes
    G = Generator(num_classes, cfg.model.generator).to(device)
    # on resume the checkpoint holds the whole discriminator, frozen backbone included: no weights package needed
    D = Discriminator(num_classes, cfg.model.discriminator, load_weights=not resume).to(device)
    if tc.channels_last:  # on the CPU too: oneDNN's convolutions are faster in NHWC (benchmarks/RESULTS.md, profile)
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = make_ema(G)
    info = GeneratorInfo(
        num_classes=num_classes, generator=cfg.model.generator, image_size=list(cfg.data.image_size),
        class_names=list(train_set.class_names), palette=[list(map(int, c)) for c in train_set.palette],
        ignore_id=train_set.ignore_id, dataset=cfg.data.dataset, extra={"run": cfg.name, "data_seed": cfg.data.seed},
    )
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr_g, betas=tuple(tc.betas))
    d_groups = [{"params": D.trainable_parameters(backbone=False), "lr": tc.lr_d}]
    if not cfg.model.discriminator.freeze:
        d_groups.append({"params": D.trainable_parameters(backbone=True),
                         "lr": cfg.model.discriminator.lr_backbone or tc.lr_d / 10})
    opt_d = torch.optim.Adam(d_groups, betas=tuple(tc.betas))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.amp) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    state, saved = RunState(), None
    if resume:
        state, saved = _resume(run_dir, G, G_ema, D, opt_g, opt_d, scaler, device)
        log.info("resumed %s at step %d", run_dir, state.step)
        if state.step >= tc.steps:
            log.warning("the run is already at step %d of train.steps=%d: nothing to train (raise it with "
                        "--set train.steps=N)", state.step, tc.steps)
    if dinfo.main and not (resume and state.step >= tc.steps):
        # only now: a resume that fails (e.g. overrides that do not fit the checkpoint) or has nothing to do
        # leaves the run folder as it was
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if dinfo.world > 1:
        if device.type == "cuda":  # batch statistics over the global batch, as on one device (CUDA-only module)
            G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        # DDP copies rank 0's weights to every process (each rank initialised its own before)
        G = DDP(G, device_ids=[dinfo.local_rank] if device.type == "cuda" else None)
        D = DDP(D, device_ids=[dinfo.local_rank] if device.type == "cuda" else None)
        if not resume:
            G_ema.load_state_dict(_unwrap(G).state_dict())

    streams = Streams(noise=torch.Generator(device="cpu").manual_seed(tc.seed * 1000 + dinfo.rank + state.step),
                      mix=torch.Generator(device="cpu").manual_seed(tc.seed * 7 + dinfo.rank + state.step))
    if saved is not None:
        restore_random_state(*saved, dinfo, streams.noise, streams.mix, state.pos)
    return Trainer(
        cfg, run_dir, dinfo, device,
        data=TrainData(train_set, val_set, sampler, loader, batch, micro),
        models=Models(G, D, G_ema, info, preview=generator_predictor(G_ema, info)),
        optim=Optimisers(opt_g, opt_d, scaler, amp_dtype),
        streams=streams, state=state,
    )


def _batch_split(tc) -> tuple[int, int]:
    """(samples per process, samples per micro-batch); checked before the process group starts."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = tc.batch_size // world
    if tc.batch_size % world:
        raise ConfigError(
            f"train.batch_size={tc.batch_size} is the global batch and must split evenly over the {world} "
            f"processes: use a multiple of {world} (e.g. --set train.batch_size={world * max(1, batch)})."
        )
    micro = tc.batch_per_gpu or batch
    if micro < 1 or batch % micro:
        raise ConfigError(
            f"train.batch_per_gpu={tc.batch_per_gpu} must divide the batch of each process, {batch} "
            f"(train.batch_size={tc.batch_size} over {world} processes); 0 takes it whole."
        )
    return batch, micro


def ema_decay(decay: float, step: int, start: int) -> float:
    """Copy before ``start``, then warm up: min(decay, (1 + t) / (10 + t)), so that an early EMA is not stuck at init."""
    if step < start:
        return 0.0
    t = step - start
    return min(decay, (1 + t) / (10 + t))


def agree(dinfo: Dist, device: torch.device, *flags: bool) -> list[bool]:
    """Each flag, true on all processes when it is true on any (one all-reduce; as given in a single process)."""
    if dinfo.world == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _check_finite(step: int, terms: dict[str, torch.Tensor], dinfo: Dist | None = None,
                  device: torch.device | None = None) -> None:
    """One host sync per call: stop before the backward pass when any loss term is NaN or infinite, on every
    process at once under DDP (a NaN gradient would be averaged into all of them)."""
    values = torch.stack([v.detach().float() for v in terms.values()])
    bad_here = not bool(torch.isfinite(values).all())
    (bad,) = agree(dinfo or Dist(), device or values.device, bad_here)
    if bad:
        shown = (", ".join(f"{k}={float(v):.4g}" for k, v in zip(terms, values.tolist())) if bad_here
                 else "a loss term was NaN or infinite in another process")
        raise TrainingDiverged(
            f"Training diverged at step {step + 1}: {shown}. The last good checkpoint is untouched; resume from it "
            "with a lower learning rate (--set train.lr_g=... train.lr_d=...), train.grad_clip, or train.amp=bf16."
        )


def _sync_grads(model: torch.nn.Module, sync: bool):
    """DDP's gradient all-reduce only when ``sync`` (the last micro-batch of a step); nothing to do otherwise."""
    return model.no_sync() if isinstance(model, DDP) and not sync else contextlib.nullcontext()


def _mean_terms(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Loss terms averaged over the micro-batches of a step (for the log)."""
    return parts[0] if len(parts) == 1 else {k: torch.stack([t[k].detach() for t in parts]).mean() for k in parts[0]}


def _clip(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer, model: torch.nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)


def _resume(run_dir: Path, G, G_ema, D, opt_g, opt_d, scaler, device) -> tuple[RunState, tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """Weights, optimisers and loss scaler from the last checkpoint; returns the run state and the saved
    ``(state.json, rng tensors)`` for :func:`restore_random_state`."""
    ckpt = last_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"Cannot resume: {run_dir} has no checkpoint (checkpoints/last is missing).")
    st, rng = load_training_state(ckpt)
    for name, module in (("generator", G), ("generator_ema", G_ema), ("discriminator", D)):
        tensors, _ = read_tensors(ckpt / f"{name}.safetensors")
        load_state_strict(module, {k: v.to(device) for k, v in tensors.items()}, ckpt / f"{name}.safetensors")
    load_optimizer(opt_g, ckpt, "g", st["optimizers"]["g"])
    load_optimizer(opt_d, ckpt, "d", st["optimizers"]["d"])
    if st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    return RunState(step=int(st["step"]), pos=DataPosition(**st["pos"])), (st, rng)
