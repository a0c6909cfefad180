"""Short CPU training runs: losses move, checkpoints reload bit-exactly, resume continues the same run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import last_checkpoint, load_generator
from train.config import load_config
from train.loop import train

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "data.image_size=[32, 32]", "data.val_length=8",
    "model.generator.base_channels=8", "model.generator.channel_mults=[2, 2, 1]", "model.generator.label_channels=16",
    "model.generator.attn_levels=1", "model.generator.attn_heads=2", "model.generator.noise_tokens=4",
    "model.generator.noise_dim=8", "model.generator.spade_hidden=16",
    "model.discriminator.backbone=test_convnext", "model.discriminator.weights=null", "model.discriminator.pretrained=false",
    "model.discriminator.decoder_channels=16",
    "model.discriminator.stem_channels=8",
    "train.batch_size=4", "train.log_every=5", "train.eval_every=10", "train.ckpt_every=10", "train.sample_every=10",
    "train.max_minutes=0", "eval.label_consistency_samples=8", "eval.sample_maps=2",
]


def tiny_cfg(steps: int, *extra: str):
    return load_config("synthetic-tiny", [*TINY, f"train.steps={steps}", *extra])


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_twenty_steps_losses_move_and_checkpoint_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    result = train(tiny_cfg(20), tmp_path / "run")
    assert result.step == 20
    recs = read_metrics(tmp_path / "run")
    assert [r["step"] for r in recs] == [5, 10, 15, 20]
    for key in ("loss_d", "loss_g"):
        values = [r[key] for r in recs]
        assert all(map(torch.isfinite, torch.tensor(values)))
        assert max(values) - min(values) > 1e-3, f"{key} did not move: {values}"
    assert "label_consistency" in recs[1] and 0.0 <= recs[1]["label_consistency"] <= 1.0
    assert (tmp_path / "run" / "samples" / "step_0000020.png").exists()
    assert last_checkpoint(tmp_path / "run").name == "step_0000020"
    loaded, info = load_generator(tmp_path / "run")
    assert info.step == 20 and info.num_classes == 8 and len(info.palette) == 8
    ref = result.generator_ema.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_resume_continues_the_same_run_bit_exactly(tmp_path):
    # 12 steps, split at 6: the diversity term starts at step 8, after the resume, so its switch is covered too
    extra = ("loss.diversity_start=8",)
    straight = train(tiny_cfg(12, *extra), tmp_path / "straight")
    train(tiny_cfg(6, *extra), tmp_path / "split")
    resumed = train(tiny_cfg(12, *extra), tmp_path / "split", resume=True)
    assert resumed.step == 12
    a, b = straight.generator_ema.state_dict(), resumed.generator_ema.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    recs = [read_metrics(tmp_path / run) for run in ("straight", "split")]
    assert [r["step"] for r in recs[0]] == [5, 10, 12] and [r["step"] for r in recs[1]] == [5, 6, 10, 12]
    assert [r["loss_d"] for r in recs[0]][1:] == [r["loss_d"] for r in recs[1]][2:]


# ``python -m train`` with SIGINT delivered to its own process while step K computes (argv[1] = K): the signal
# arrives at a known step, not after a sleep, so the test is exact on any machine load.
INTERRUPT_DURING_STEP = """
import os, signal, sys
from train import loop

K = int(sys.argv[1])
generator_step = loop.Trainer.generator_step

def interrupted_step(self, parts):
    if self.state.step == K - 1:  # step K is being computed
        os.kill(os.getpid(), signal.SIGINT)
    return generator_step(self, parts)

loop.Trainer.generator_step = interrupted_step
from train.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigint_checkpoints_that_step_and_resume_ends_as_an_uninterrupted_run(tmp_path):
    """Ctrl-C during step 7 of 12 (checkpoints otherwise every 1000): the step finishes, a checkpoint of step 7
    is written and the process exits 0 saying so; --resume trains steps 8..12 and ends where the same run without
    an interrupt ends, weight for weight and loss for loss."""
    stop, end = 7, 12
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    sets = [a for ov in (*TINY, f"train.steps={end}", "train.ckpt_every=1000") for a in ("--set", ov)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in all three processes

    def start(*argv: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    runs = [start("-c", INTERRUPT_DURING_STEP, str(stop), "--config", "synthetic-tiny", "--out", str(interrupted), *sets),
            start("-m", "train", "--config", "synthetic-tiny", "--out", str(straight), *sets)]
    (_, err), (_, err_straight) = (proc.communicate(timeout=600) for proc in runs)
    assert runs[0].returncode == 0, err[-3000:]
    assert runs[1].returncode == 0, err_straight[-3000:]
    assert f"stopped by interrupt at step {stop}" in err
    assert sorted(p.name for p in (interrupted / "checkpoints").glob("step_*")) == [f"step_{stop:07d}"]
    assert last_checkpoint(interrupted).name == f"step_{stop:07d}"
    assert json.loads((last_checkpoint(interrupted) / "state.json").read_text())["step"] == stop
    assert [r["step"] for r in read_metrics(interrupted)] == [5]

    resumed = start("-m", "train", "--resume", str(interrupted))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed {interrupted} at step {stop}" in err
    assert last_checkpoint(interrupted).name == last_checkpoint(straight).name == f"step_{end:07d}"
    recs, recs_straight = read_metrics(interrupted), read_metrics(straight)
    assert [r["step"] for r in recs] == [r["step"] for r in recs_straight] == [5, 10, 12]
    for key in ("loss_d", "loss_g", "label_consistency"):
        assert [r.get(key) for r in recs] == [r.get(key) for r in recs_straight], key
    a, _ = load_generator(interrupted)
    b, _ = load_generator(straight)
    ref = b.state_dict()
    for k, v in a.state_dict().items():
        assert torch.equal(v, ref[k]), f"{k} differs between the resumed and the uninterrupted run"


def test_a_failed_resume_leaves_the_run_folder_as_it_was(tmp_path):
    """Overrides that do not fit the checkpoint fail the resume; config.yaml keeps the run's own values, so the
    next plain --resume works."""
    from dpsims.errors import CheckpointError

    run = tmp_path / "run"
    train(tiny_cfg(2), run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError):
        train(tiny_cfg(4, "model.generator.base_channels=4"), run, resume=True)
    assert (run / "config.yaml").read_text() == before
    assert train(tiny_cfg(4), run, resume=True).step == 4


def test_cli_without_the_training_libraries_names_the_extra(tmp_path):
    code = "import sys; sys.modules['timm'] = None\nfrom train.__main__ import main\n" \
           f"sys.exit(main(['--config', 'synthetic-tiny', '--out', {str(tmp_path / 'run')!r}]))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "needs timm" in r.stderr and "pip install 'dp-sims[train]'" in r.stderr


def test_nan_loss_stops_with_terms_and_keeps_checkpoint(tmp_path, monkeypatch):
    from dpsims.errors import TrainingDiverged
    from train import losses

    train(tiny_cfg(10), tmp_path / "run")
    before = (last_checkpoint(tmp_path / "run") / "generator_ema.safetensors").read_bytes()
    monkeypatch.setattr(losses, "labelmix_loss", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"step 11.*loss_labelmix=nan"):
        train(tiny_cfg(20), tmp_path / "run", resume=True)
    assert last_checkpoint(tmp_path / "run").name == "step_0000010"
    assert (last_checkpoint(tmp_path / "run") / "generator_ema.safetensors").read_bytes() == before


def test_an_empty_last_pointer_is_a_clear_error(tmp_path):
    from dpsims.errors import CheckpointError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last").write_text("\n")
    with pytest.raises(CheckpointError, match="last is empty; it should name a step_"):
        last_checkpoint(tmp_path / "run")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from dpsims.errors import CheckpointError

    bad = tmp_path / "generator_ema.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_generator(bad)


# ------------------------------------------------------------------------------------- several processes


def torchrun(run: Path, *args: str, steps: int | None = None, timeout: int = 300, **popen) -> list[str]:
    """``python -m torch.distributed.run`` with two CPU processes (gloo) on the tiny config."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train", *args]
    if "--resume" not in args:
        # micro-batches of 1: DDP's no_sync accumulation is part of what must resume exactly
        cmd += ["--config", "synthetic-tiny", "--out", str(run), "--set", *TINY, "train.ckpt_every=3", "train.batch_per_gpu=1"]
    if steps is not None:
        cmd += ["--set", f"train.steps={steps}"]
    return cmd


def test_torchrun_two_processes_share_the_global_batch_and_resume_exactly(tmp_path):
    """DDP on the CPU: the two ranks train one model on halves of the batch; rank 0 alone writes; a run split
    by a checkpoint (every rank's random state saved) ends with exactly the weights of the straight run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(cmd):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r

    straight, split = tmp_path / "straight", tmp_path / "split"
    out = launch(torchrun(straight, steps=6)).stdout
    assert out.count("run folder:") == 1, "only rank 0 prints the summary"
    launch(torchrun(split, steps=3))
    launch(torchrun(split, "--resume", str(split), steps=6))

    assert [r["step"] for r in read_metrics(straight)] == [5, 6]  # one record per step, from rank 0 only
    state = json.loads((last_checkpoint(straight) / "state.json").read_text())
    assert state["world"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["noise_gen"] != state["ranks"][1]["noise_gen"], "ranks must draw different noise"
    assert state["pos"]["index"] == 6 * 2  # per-rank samples: global batch 4 over 2 processes
    from safetensors.torch import load_file

    for name in ("generator", "generator_ema", "discriminator", "optimizer_g"):
        a = load_file(last_checkpoint(straight) / f"{name}.safetensors")
        b = load_file(last_checkpoint(split) / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}/{k} differs after a DDP resume"
    losses_at = [{r["step"]: r["loss_g"] for r in read_metrics(run)} for run in (straight, split)]
    assert losses_at[0][5] == losses_at[1][5] and losses_at[0][6] == losses_at[1][6]


def _agree_worker(rank: int, world: int, init: str, results) -> None:
    import torch.distributed as dist

    from dpsims.errors import TrainingDiverged
    from train.loop import Dist, _check_finite, agree

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        dinfo, cpu = Dist(rank, world, rank), torch.device("cpu")
        flags = agree(dinfo, cpu, rank == 1, False)
        value = float("nan") if rank == 1 else 1.0
        try:
            _check_finite(3, {"loss_d": torch.tensor(value)}, dinfo, cpu)
            outcome = "went on"
        except TrainingDiverged as e:
            outcome = str(e)
        results[rank] = (flags, outcome)
    finally:
        dist.destroy_process_group()


def test_a_nan_or_a_stop_on_one_rank_stops_every_rank(tmp_path):
    """A lone rank that stopped would leave the others waiting in the next all-reduce forever."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_agree_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", results), nprocs=2, join=True)
    for rank in (0, 1):
        flags, outcome = results[rank]
        assert flags == [True, False]
        assert "diverged at step 4" in outcome
    assert "loss_d=nan" in results[1][1] and "another process" in results[0][1]


def test_micro_batches_accumulate_into_one_step_per_global_batch(tmp_path, monkeypatch):
    """batch_size 4 in micro-batches of 2: every loss sees 2 samples, the optimisers step once per step, and the
    run learns."""
    from train import losses

    seen = []
    real_loss = losses.discriminator_loss
    monkeypatch.setattr(losses, "discriminator_loss", lambda lr, lf, label, *a: seen.append(len(label)) or real_loss(lr, lf, label, *a))
    train(tiny_cfg(10, "train.batch_per_gpu=2"), tmp_path / "run")
    assert seen == [2] * 20
    state = json.loads((last_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["pos"]["index"] == 10 * 4  # the loader still reads the whole batch per step
    from safetensors.torch import load_file

    opt = load_file(last_checkpoint(tmp_path / "run") / "optimizer_g.safetensors")
    steps = {float(v) for k, v in opt.items() if k.endswith(".step")}
    assert steps == {10.0}, f"one Adam step per global batch, got {steps}"
    values = [r["loss_d"] for r in read_metrics(tmp_path / "run")]
    assert all(map(torch.isfinite, torch.tensor(values))) and max(values) - min(values) > 1e-3


def test_micro_batch_must_divide_the_process_batch(tmp_path):
    from dpsims.errors import ConfigError

    with pytest.raises(ConfigError, match=r"batch_per_gpu=3 must divide the batch of each process, 4"):
        train(tiny_cfg(2, "train.batch_per_gpu=3"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_global_batch_must_split_over_the_processes(tmp_path, monkeypatch):
    from dpsims.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"batch_size=4 is the global batch.*multiple of 3"):
        train(tiny_cfg(2), tmp_path / "run")
    assert not (tmp_path / "run").exists(), "nothing is written before the check"


def test_a_split_smaller_than_the_batch_is_an_error_not_an_endless_wait(tmp_path):
    from dpsims.errors import ConfigError

    with pytest.raises(ConfigError, match=r"holds 3 samples: too few for a batch of 4"):
        train(tiny_cfg(2, "data.synthetic_length=3"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# Under torchrun: rank 0 sends SIGINT to torchrun (its parent) while step K computes and waits until the signal,
# passed on by torchrun, has reached it; rank 1 gets it when torchrun passes it on, at whatever point it is.
RANK0_INTERRUPTS_TORCHRUN = """
import os, signal, sys, time
from train import loop

K = int(sys.argv[1])
generator_step = loop.Trainer.generator_step

def interrupted_step(self, parts):
    if self.state.step == K - 1 and self.dinfo.rank == 0:
        os.kill(os.getppid(), signal.SIGINT)  # Ctrl-C to torchrun
        deadline = time.time() + 60
        while not self.interrupted and time.time() < deadline:
            time.sleep(0.01)
    return generator_step(self, parts)

loop.Trainer.generator_step = interrupted_step
from train.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_torchrun_interrupt_checkpoints_every_rank_at_the_same_step(tmp_path):
    """Ctrl-C on torchrun during step 7: it passes SIGINT to each process; they agree on that step, write one
    checkpoint holding both ranks' random state, and exit."""
    stop, run = 7, tmp_path / "run"
    script = tmp_path / "interrupt_rank0.py"
    script.write_text(RANK0_INTERRUPTS_TORCHRUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(stop),
           "--config", "synthetic-tiny", "--out", str(run), "--set", *TINY, "train.ckpt_every=5", "train.steps=400"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    err = done.stderr
    ck = last_checkpoint(run)
    assert ck is not None and ck.name == f"step_{stop:07d}", err[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000005", f"step_{stop:07d}"]
    assert f"stopped by interrupt at step {stop}" in err  # rank 0 logs (only it does under torchrun)
    # the checkpoint is collective: both ranks were in it at step 7, each with its own random streams
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == stop and len(state["ranks"]) == 2
    assert state["ranks"][0]["noise_gen"] != state["ranks"][1]["noise_gen"]  # each rank's own stream


def test_diversity_term_starts_at_its_step(tmp_path, monkeypatch):
    """Before ``loss.diversity_start`` the generator step draws no second noise (the generator sees the batch
    once) and logs a zero diversity term; from that step on it generates a quarter of the batch again."""
    from train.models.generator import Generator

    seen = []
    real_forward = Generator.forward
    monkeypatch.setattr(Generator, "forward", lambda self, label, z: seen.append(len(label)) or real_forward(self, label, z))
    train(tiny_cfg(6, "loss.diversity=2.0", "loss.diversity_start=3", "train.log_every=1",
                   "train.eval_every=100", "train.sample_every=100", "train.ema_bn_batches=0"), tmp_path / "run")
    recs = read_metrics(tmp_path / "run")
    assert [r["loss_diversity"] == 0.0 for r in recs] == [True] * 3 + [False] * 3
    training_calls = [n for n in seen if n in (4, 5)]  # batch 4, and 4 + 1 from step 3 on
    assert training_calls[:6] == [4, 4, 4, 5, 5, 5]
