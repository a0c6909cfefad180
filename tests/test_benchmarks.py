"""The benchmark harness runs end to end on a small generator (no timing is asserted: speed lives in the reports):
every requested artifact gets a row with its quality, an own-process peak memory, its MACs, the ratio to torch
eager, and the markdown table and chart are written; the peer generator goes through the same backends. Rows are
timed interleaved in rounds and ratios are medians of per-round ratios (checked on fake calls and a fake clock)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_artifacts import shared_artifacts

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
ROOT = Path(__file__).resolve().parents[1]


def tiny_peer(num_classes: int, size):
    """A narrow OASIS-like peer, so the peer path runs in seconds."""
    import torch

    from benchmarks.peers import OasisLikeGenerator

    torch.manual_seed(0)
    return OasisLikeGenerator(num_classes, tuple(size), base=4, z_dim=8).eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return shared_artifacts(tmp_path_factory)[1]


@pytest.mark.filterwarnings("ignore")
def test_benchmark_harness_rows_memory_and_report(tmp_path):
    from benchmarks import run as bench

    out = tmp_path / "bench"
    argv = ["--preset", "synthetic-tiny", "--preset", "synthetic-tiny-s16", "--size", "32", "--artifacts",
            "onnx:fp32,openvino:fp16", "--runs", "2",
            "--warmup", "1", "--calib-samples", "4", "--out", str(out), "--peer", "test_benchmarks:tiny_peer", "--ov-native",
            "--set", "model.generator.spade_kernel=1", "--rounds", "2"]
    assert bench.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    from train.config import load_config
    from train.macs import generator_cost

    ours = [r for r in data["rows"] if r["model"].startswith("synthetic-tiny ")]
    student = [r for r in data["rows"] if r["model"].startswith("synthetic-tiny-s16")]
    # a second --preset: its own rows, its own MACs, timed in the same rounds, ratios to its own eager row
    assert [r["backend"] for r in student] == [r["backend"] for r in ours]
    s16 = load_config("synthetic-tiny-s16", ["model.generator.spade_kernel=1"])
    assert all(r["macs_per_image"] == generator_cost(8, s16.model.generator, (32, 32))[0] for r in student)
    assert student[0]["speedup_vs_torch_eager"] == 1.0
    assert [r["backend"] for r in ours] == ["torch eager fp32", "onnx fp32", "openvino fp16", "openvino fp16 native"]
    assert all("spade_kernel=1" in r["model"] for r in ours)  # --set reached the preset and names the rows
    eager = ours[0]
    assert eager["speedup_vs_torch_eager"] == 1.0 and eager["gflop_per_image"] > 0
    # MACs from the graph: our module's count as train.macs makes it, on every row of ours (artifacts included)
    cfg = load_config("synthetic-tiny", ["model.generator.spade_kernel=1"])
    our_macs = generator_cost(cfg.data.num_classes, cfg.model.generator, (32, 32))[0]
    assert our_macs > 0 and all(r["macs_per_image"] == our_macs for r in ours)
    assert all(r["gflop_per_image"] == round(2 * our_macs / 1e9, 2) for r in ours)
    assert data["meta"]["rounds"] == 2
    for r in data["rows"]:
        assert len(r["round_ms"]) == 2 and r["round_min_ms"] <= r["median_ms"] <= r["round_max_ms"]
    assert ours[1]["psnr_vs_eager_db"] is None or ours[1]["psnr_vs_eager_db"] > 80  # FP32 export on the timed input
    assert ours[2]["psnr_vs_eager_db"] > 40
    for r in ours[1:]:
        # the export reports quality for reduced precisions only: FP16 against FP32 of the same export
        if r["backend"] == "openvino fp16":
            assert r["psnr_vs_fp32_db"] > 40
        elif r["backend"] == "onnx fp32":
            assert r["psnr_vs_fp32_db"] is None
        if not r["backend"].endswith("native"):  # own-process memory: at the predictor's default settings
            assert r["own_peak_mib"] > r["own_peak_over_base_mib"] > 0
        per_round = statistics.median(e / x for e, x in zip(eager["round_ms"], r["round_ms"]))  # median of ratios
        assert r["speedup_vs_torch_eager"] == pytest.approx(per_round, rel=0.02)
    peer_rows = [r for r in data["rows"] if not r["model"].startswith("synthetic-tiny")]
    assert {r["backend"] for r in peer_rows} == {"torch eager fp32", "onnx fp32", "openvino fp32", "openvino default",
                                                 "openvino int8 nncf"}
    if data["meta"]["peak_gflops_estimate"]:  # the int8 rows' share of the int8 peak: a quarter or half the FP32 share
        int8 = next(r for r in peer_rows if r["backend"] == "openvino int8 nncf")
        assert int8["fraction_of_int8_peak"] * bench.int8_speedup() == pytest.approx(int8["fraction_of_peak"], rel=0.02)
        assert all("fraction_of_int8_peak" not in r for r in ours)
    assert all(r["speedup_vs_our_torch_eager"] for r in peer_rows)
    # the peer's MACs: its convolutions counted layer by layer (the peer is convolutions and element-wise ops)
    assert all(r["macs_per_image"] == conv_macs(tiny_peer(cfg.data.num_classes, (32, 32)), (32, 32)) for r in peer_rows)
    fastest = min(peer_rows, key=lambda r: r["median_ms"])
    assert data["meta"]["peer_reference"] == {"peer tiny_peer batch 1": fastest["backend"]}
    for r in data["rows"]:
        expected = statistics.median(f / x for f, x in zip(fastest["round_ms"], r["round_ms"]))
        assert r["speedup_vs_peer"]["peer tiny_peer"] == pytest.approx(expected, rel=0.02, abs=0.005)  # 2 decimals
    table = (out / "results.md").read_text()
    assert "own peak MiB" in table and table.count("\n| ") >= len(data["rows"])
    assert (out / "latency.png").stat().st_size > 1000


def conv_macs(module, size) -> int:
    """MACs of the Conv2d layers of ``module`` for one image: output elements x input channels per group x kernel
    area, summed with forward hooks (an independent count, not the flop counter)."""
    import torch

    total = []

    def hook(conv, _, out):
        total.append(out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(torch.zeros(1, *size, dtype=torch.int32), torch.zeros(1, *module.noise_shape))
    for h in handles:
        h.remove()
    return sum(total)


def test_macs_per_image_is_train_macs_count_and_the_peers_conv_count():
    from benchmarks.peers import OasisLikeGenerator
    from benchmarks.run import macs_per_image
    from train.macs import generator_cost

    g, cfg = _tiny_generator(with_cfg=True)
    assert macs_per_image(g, (16, 16), g.noise_shape) == generator_cost(5, cfg, (16, 16))[0] > 0
    assert macs_per_image(g, (32, 32), g.noise_shape) > macs_per_image(g, (16, 16), g.noise_shape)
    peer = OasisLikeGenerator(5, (64, 64), base=2, z_dim=4).eval()
    assert macs_per_image(peer, (64, 64), peer.noise_shape) == conv_macs(peer, (64, 64)) > 0


def test_rows_are_timed_interleaved_in_rounds():
    """Warm-up of every row, then each round times every row once: A B C, A B C, ... (not A A B B C C)."""
    from benchmarks.run import time_rounds

    calls: list[str] = []
    fns = [lambda n=n: calls.append(n) for n in "ABC"]
    timings = time_rounds(fns, rounds=3, runs=1, warmup=1)
    assert calls == list("ABC") + list("ABC") * 3
    assert [t["rounds"] for t in timings] == [3, 3, 3] and all(len(t["round_ms"]) == 3 for t in timings)
    calls.clear()
    pauses: list[float] = []
    time_rounds(fns, rounds=2, runs=2, warmup=0, pause_s=0.5, sleep=pauses.append)
    assert calls == list("AABBCC") * 2  # --runs calls of a row per round, rows in turn
    assert pauses == [0.5] * 6  # one untimed pause before each row's block


def test_round_statistics_and_ratios_are_medians_over_rounds_on_a_fake_clock():
    """Known per-call durations: median and spread over rounds, and every ratio is the median of per-round ratios
    (here 3.0, where the ratio of the medians would be 2.0)."""
    from benchmarks.run import add_ratios, time_rounds, timing_row

    durations = {"eager": [10.0, 20.0, 30.0], "onnx": [20.0, 5.0, 10.0], "peer eager": [40.0, 40.0, 40.0],
                 "peer ov": [30.0, 60.0, 30.0]}
    now = [0.0]
    made: dict[str, int] = {k: 0 for k in durations}

    def call(name):
        now[0] += durations[name][made[name]] / 1000
        made[name] += 1

    names = list(durations)
    timings = time_rounds([lambda n=n: call(n) for n in names], rounds=3, runs=1, warmup=0, clock=lambda: now[0])
    by = dict(zip(names, timings))
    assert by["eager"]["round_ms"] == pytest.approx([10, 20, 30]) and by["eager"]["median_ms"] == pytest.approx(20)
    assert (by["onnx"]["round_min_ms"], by["onnx"]["median_ms"], by["onnx"]["round_max_ms"]) == pytest.approx((5, 10, 20))
    rows = [timing_row("ours", "torch eager fp32", 1, by["eager"], 1000, None, "cpu"),
            timing_row("ours", "onnx fp32", 1, by["onnx"], 1000, None, "cpu"),
            timing_row("peer p", "torch eager fp32", 1, by["peer eager"], 4000, None, "cpu"),
            timing_row("peer p", "openvino default", 1, by["peer ov"], 4000, None, "cpu")]
    meta: dict = {}
    add_ratios(rows, meta)
    onnx = rows[1]
    assert onnx["speedup_vs_torch_eager"] == pytest.approx(3.0)  # median of 10/20, 20/5, 30/10
    assert onnx["macs_per_image"] == 1000 and onnx["gflop_per_image"] == round(2e-6, 2)
    # the peer's fastest row (openvino default, median 30 ms) per round: 30/20, 60/5, 30/10 -> median 3.0
    assert meta["peer_reference"] == {"peer p batch 1": "openvino default"}
    assert onnx["speedup_vs_peer"] == {"peer p": pytest.approx(3.0)}
    assert rows[2]["speedup_vs_our_torch_eager"] == pytest.approx(0.5)  # 10/40, 20/40, 30/40


def test_predictor_memory_child_process(artifacts):
    done = subprocess.run([sys.executable, "-m", "benchmarks.predictor_memory", "--model", str(artifacts["onnx"]),
                           "--calls", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    mem = json.loads(done.stdout.strip().splitlines()[-1])
    import torch  # noqa: F401 - this process holds torch; the child (numpy + onnxruntime) must not count it

    from benchmarks.predictor_memory import current_rss_mib
    assert mem["peak_mib"] < current_rss_mib()  # the child's own peak, not one inherited from its parent
    assert mem["peak_mib"] >= mem["loaded_mib"] >= mem["base_mib"] > 10
    assert mem["peak_over_base_mib"] == pytest.approx(mem["peak_mib"] - mem["base_mib"], abs=0.2)


def _tiny_generator(with_cfg: bool = False):
    import torch

    from train.config import GeneratorConfig
    from train.models.generator import Generator

    torch.manual_seed(0)
    cfg = GeneratorConfig(base_channels=8, channel_mults=[2, 2, 1], label_channels=8, attn_levels=1, attn_heads=2,
                          noise_tokens=4, noise_dim=8, spade_hidden=8)
    g = Generator(5, cfg).eval()
    for name, p in g.named_parameters():  # live attention outputs, so the noise matters
        if ".out." in name:
            torch.nn.init.normal_(p, std=0.5)
    return (g, cfg) if with_cfg else g


def test_torch_runner_copies_the_model_and_matches_eager():
    """The torch rows run a converted copy (the caller's module keeps its dtype) and give the module's images."""
    import torch

    from benchmarks.run import inputs, psnr_db, torch_runner, torch_runners

    g = _tiny_generator()
    label, noise = inputs(2, (16, 16), g.noise_shape, 5)
    with torch.no_grad():
        expected = g(torch.from_numpy(label), torch.from_numpy(noise)).numpy()
    fp32 = torch_runner(g, "cpu")
    assert np.array_equal(fp32(label, noise), expected)
    bf16 = torch_runner(g, "cpu", torch.bfloat16)(label, noise)
    assert bf16.dtype == np.float32 and bf16.shape == expected.shape
    assert 20 < psnr_db(expected, bf16) < 80  # computed in bf16, not a silent float32 run
    assert next(g.parameters()).dtype == torch.float32
    assert list(torch_runners(g, "cpu", compile_too=False)) == ["torch eager fp32"]
    with pytest.raises(ValueError, match="CUDA"):
        torch_runner(g, "cpu", cuda_graph=True)


def test_gpu_peak_table_and_cuda_request_without_a_gpu(tmp_path, capsys):
    import torch

    from benchmarks import run as bench

    assert bench.gpu_peak_gflops("NVIDIA H100 80GB HBM3") == 989_400
    assert bench.gpu_peak_gflops("NVIDIA H100 PCIe") == 756_000
    assert bench.gpu_peak_gflops("NVIDIA GeForce GTX 1080") is None
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--out", str(tmp_path)])
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_rows_fp16_and_cuda_graph_match_fp32():
    """On a GPU: FP16 eager and its CUDA-graph replay agree with FP32, and replays follow new inputs."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    from benchmarks.run import inputs, psnr_db, torch_runners

    g = _tiny_generator()
    runners = torch_runners(g, "cuda", compile_too=False)
    assert list(runners) == ["torch eager fp32", "torch eager fp16", "torch fp16 cuda graph"]
    for seed in (0, 1):  # the second call replays the captured graph with new inputs
        label, noise = inputs(2, (16, 16), g.noise_shape, 5, seed=seed)
        ref = runners["torch eager fp32"](label, noise)
        assert psnr_db(ref, runners["torch eager fp16"](label, noise)) > 40
        assert np.allclose(runners["torch fp16 cuda graph"](label, noise), runners["torch eager fp16"](label, noise),
                           atol=2e-3)


@pytest.mark.parametrize("args, words", [
    (["--runs", "0"], "--runs >= 1"),
    (["--rounds", "0"], "--rounds >= 1"),
    (["--batches", "1,a"], "--batches takes batch sizes"),
    (["--artifacts", "onnx:fp32,foo:bar"], "got 'foo:bar'"),
    (["--size", "33"], "multiples of the generator's total stride 8"),
    (["--preset", "nope"], "Config 'nope' not found"),
    (["--set", "train.foo=1"], "Unknown key(s) 'foo'"),
    (["--peer", "nonexist:fn"], "--peer nonexist:fn: cannot import it"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, words):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", *args, "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert words in r.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------- python -m benchmarks.train_step
TINY_STEP = ["--size", "64", "--batch", "2", "--classes", "4", "--set", "train.ema_bn_batches=1",
             "eval.label_consistency_samples=4", "eval.sample_maps=2"]


def test_train_step_benchmark_interleaves_both_steps_and_reports_the_median_ratio(tmp_path, capsys):
    from benchmarks import train_step

    out = tmp_path / "step.json"
    argv = [*TINY_STEP, "--rounds", "2", "--warmup", "1", "--oasis-base", "8", "--out", str(out)]
    assert train_step.main(argv) == 0
    data = json.loads(out.read_text())
    assert (data["size"], data["batch"], data["classes"], data["rounds"]) == ([64, 64], 2, 4, 2)
    ours, oasis = data["rows"]
    assert (ours["step"], oasis["step"]) == ("dp-sims synthetic-tiny", "OASIS (base 8, not the published 64)")
    for row in (ours, oasis):
        times = row["per_round_ms"]
        assert len(times) == 2 and min(times) > 0
        assert row["min_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["max_ms"]
        assert row["median_ms"] == pytest.approx(float(np.median(times)))
        assert row["changed_fraction"] > 0.9  # the timed steps trained (nearly) every trainable tensor
    ratios = [a / b for a, b in zip(ours["per_round_ms"], oasis["per_round_ms"])]
    assert data["per_round_ratio"] == pytest.approx(ratios)
    assert data["ratio_ours_over_oasis"] == pytest.approx(float(np.median(ratios)))
    assert oasis["discriminator_trainable_m_params"] == oasis["discriminator_m_params"]  # trained whole
    assert ours["discriminator_trainable_m_params"] < ours["discriminator_m_params"]  # frozen backbone
    printed = capsys.readouterr().out
    assert "| OASIS (base 8" in printed and "ratio ours / OASIS" in printed and f"wrote {out}" in printed


def test_both_training_steps_update_their_weights_and_ours_keeps_the_backbone(tmp_path):
    import torch

    from benchmarks.train_step import OasisStep, our_step, our_trainer, preset_config

    cfg = preset_config("synthetic-tiny", [64, 64], 2, 4)
    t = our_trainer(cfg, tmp_path / "run")

    def snapshot(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def changed(before, module):
        return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}

    G, D, G_ema = t.models.G, t.models.D, t.models.G_ema
    g0, d0, ema0 = snapshot(G), snapshot(D), snapshot(G_ema)
    terms = our_step(t)  # the context blocks' zero-initialised output projections: their inputs learn from step 2
    terms = our_step(t)
    assert t.state.step == 2 and {"loss_g", "loss_d"} <= set(terms)
    assert {k for k, _ in G.named_parameters()} <= changed(g0, G)
    d_changed = changed(d0, D)
    assert {k for k, p in D.named_parameters() if p.requires_grad} <= d_changed
    assert not {k for k in d_changed if k.startswith("backbone.")}  # the frozen ImageNet backbone stays as it was
    assert changed(ema0, G_ema)

    oasis = OasisStep(4, (64, 64), t.batches, base=8)
    g0, d0, ema0 = snapshot(oasis.G), snapshot(oasis.D), snapshot(oasis.G_ema)
    terms = oasis()
    assert set(terms) == {"loss_g", "loss_d", "loss_labelmix"} and all(torch.isfinite(v) for v in terms.values())
    assert {k for k, _ in oasis.G.named_parameters()} <= changed(g0, oasis.G)
    assert {k for k, _ in oasis.D.named_parameters()} <= changed(d0, oasis.D)
    assert changed(ema0, oasis.G_ema)
    # at the published width (the benchmark's default) OASIS is a 70 M generator and a 17 M discriminator
    published = OasisStep(4, (64, 64), iter(()))
    assert 60e6 < sum(p.numel() for p in published.G.parameters()) < 80e6
    assert 15e6 < sum(p.numel() for p in published.D.parameters()) < 25e6


def test_train_step_profile_times_every_phase_of_the_real_step(tmp_path):
    from benchmarks import train_step

    out = tmp_path / "profile.json"
    assert train_step.main([*TINY_STEP, "--profile", "--rounds", "1", "--warmup", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    phases = data["phases_ms"]
    assert list(phases) == list(train_step.PROFILE_ORDER)
    # every measured part of the step fired (forward and gradient hooks, wrapped losses, optimiser step hooks)
    assert all(ms > 0 for name, ms in phases.items() if not name.endswith(": other")), phases
    # the parts add up to the step timed whole (only the calls between the parts are outside them)
    assert sum(phases.values()) == pytest.approx(data["step_ms"], rel=0.02)
    counts = data["scheduled_counts"]  # synthetic-tiny: 600 steps, eval every 100, samples/checkpoints every 250
    assert counts == {"log": 24, "evaluate": 6, "samples": 3, "checkpoint": 3, "ema statistics": 7}
    for name, ms in data["scheduled_ms_per_step"].items():
        assert ms == pytest.approx(data["scheduled_ms_once"][name] * counts[name] / 600)
    import torch

    assert not hasattr(torch.autograd.backward, "__wrapped__") and torch.autograd.backward.__name__ == "backward"
    from train import losses

    assert losses.focal_n1_loss.__module__ == "train.losses" and losses.focal_n1_loss.__name__ == "focal_n1_loss"


@pytest.mark.parametrize("args, words", [
    (["--size", "48"], "multiple of 64 on each side, got 48x48"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--size", "6x"], "--size takes HxW or S"),
    (["--preset", "ade20k-256", "--classes", "5", "--set", "data.root=."], "leave --classes out"),
])
def test_train_step_refuses_bad_arguments_before_any_work(args, words, capsys, tmp_path):
    from benchmarks import train_step

    try:
        code = train_step.main([*args, "--out", str(tmp_path / "r.json")])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------ distill_study

#: stands in for ``python -m train`` in benchmarks.distill_study: a distillation (``--teacher``) writes its last
#: checkpoint and exits (or fails when the student is "broken"); a from-scratch run trains until Ctrl-C, then
#: checkpoints and exits 0, as the training loop does
FAKE_TRAIN = '''
import pathlib, signal, sys, time
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--out") + 1])
student = args[args.index("--config") + 1]
(out / "checkpoints").mkdir(parents=True)
(out / "args.txt").write_text(" ".join(args))
log = pathlib.Path(sys.argv[0]).with_name("calls.txt")
with log.open("a") as fh:
    fh.write(out.name + "\\n")
if "--teacher" in args:
    time.sleep(0.5)
    if student == "broken":
        sys.exit(3)
    (out / "checkpoints" / "last").write_text("step_0000004")
    sys.exit(0)
def stop(*_):
    (out / "checkpoints" / "last").write_text("step_0000002")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
while True:
    time.sleep(0.05)
'''


def _fake_python(tmp_path, monkeypatch):
    bindir = tmp_path / "fake"
    bindir.mkdir()
    (bindir / "train_stub.py").write_text(FAKE_TRAIN)
    py = bindir / "python"  # ``python -m train ARGS`` -> the stub with ARGS
    py.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} {bindir / 'train_stub.py'} \"$@\"\n")
    py.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(py))
    return bindir / "calls.txt"


def test_distill_study_stops_the_twin_when_the_distillation_ends_and_does_not_retrain(tmp_path, monkeypatch):
    from benchmarks.distill_study import train_pair

    calls = _fake_python(tmp_path, monkeypatch)
    out, logged = tmp_path / "study", []
    out.mkdir()
    runs = train_pair("tiny-s8", 0, tmp_path / "teacher", out, 4, logged.append, ("distill.noise=10",))
    assert [r.name for r in runs] == ["tiny-s8-distilled-s0", "tiny-s8-scratch-s0"]
    # the twin was interrupted (its Ctrl-C handler checkpointed), both got the pair's wall-clock
    assert (runs[0] / "checkpoints" / "last").read_text() == "step_0000004"
    assert (runs[1] / "checkpoints" / "last").read_text() == "step_0000002"
    minutes = [json.loads((r / "study.json").read_text())["minutes"] for r in runs]
    assert minutes[0] == minutes[1] > 0
    assert sorted(calls.read_text().split()) == sorted(r.name for r in runs)
    args = [(r / "args.txt").read_text().split() for r in runs]
    assert all("distill.noise=10" in a and "train.seed=0" in a for a in args)  # --set reaches both runs
    assert "--teacher" in args[0] and "--teacher" not in args[1]
    # a finished pair is not trained again
    assert train_pair("tiny-s8", 0, tmp_path / "teacher", out, 4, logged.append) == runs
    assert len(calls.read_text().split()) == 2 and "already trained" in logged[-1]


def test_distill_study_a_failed_distillation_stops_its_twin_and_says_where_the_log_is(tmp_path, monkeypatch):
    from benchmarks.distill_study import train_pair

    _fake_python(tmp_path, monkeypatch)
    out = tmp_path / "study"
    out.mkdir()
    with pytest.raises(RuntimeError, match="broken-distilled-s1.log"):
        train_pair("broken", 1, tmp_path / "teacher", out, 4, print)
    assert not (out / "broken-scratch-s1" / "study.json").exists()


def test_distill_study_variants_run_beside_the_pair_with_their_own_settings(tmp_path, monkeypatch):
    from benchmarks.distill_study import main, parse_variant, train_pair

    _fake_python(tmp_path, monkeypatch)
    out = tmp_path / "study"
    out.mkdir()
    variants = dict([parse_variant("channels:distill.init=teacher-channels:distill.l1=5")])
    runs = train_pair("tiny-s8", 2, tmp_path / "teacher", out, 4, print, ("train.ckpt_every=2",), variants)
    assert [r.name for r in runs] == ["tiny-s8-distilled-s2", "tiny-s8-channels-s2", "tiny-s8-scratch-s2"]
    args = [(r / "args.txt").read_text().split() for r in runs]
    assert "distill.init=teacher-channels" in args[1] and "distill.l1=5" in args[1] and "--teacher" in args[1]
    for a in args:  # every setting inside the --set list: nothing but KEY=VALUE between --set and the next flag
        after = a[a.index("--set") + 1:]
        settings = after[:next((i for i, x in enumerate(after) if x.startswith("--")), len(after))]
        assert all("=" in x for x in settings) and len([x for x in a if "=" in x]) == len(settings), a
    assert not any("distill.init=teacher-channels" in a for a in args[0] + args[2])
    assert all("train.ckpt_every=2" in a for a in args)
    assert (runs[1] / "checkpoints" / "last").read_text() == "step_0000004"  # ran to its end
    assert (runs[2] / "checkpoints" / "last").read_text() == "step_0000002"  # the twin was stopped
    with pytest.raises(SystemExit):
        main(["--teachers", "t", "--out", str(out), "--variant", "no-settings"])


def test_distill_study_table_gives_mean_and_spread_over_seeds():
    from benchmarks.distill_study import summary_table

    rows = {"teacher": [{"macs": 281e6, "fd": 50.0, "kid": 0.02, "label_consistency": 0.9, "pixel_diversity": 0.02,
                         "steps": 600, "minutes": 10.0},
                        {"macs": 281e6, "fd": 60.0, "kid": 0.04, "label_consistency": 0.92, "pixel_diversity": 0.02,
                         "steps": 600, "minutes": 12.0}],
            "s8 distilled": [{"macs": 38e6, "fd": 80.0, "kid": None, "label_consistency": 0.91,
                              "pixel_diversity": 0.004, "psnr_to_teacher": 21.0, "steps": 600, "minutes": 30.0}]}
    lines = summary_table(rows).splitlines()
    assert lines[2].split(" | ")[:6] == ["| teacher", "2", "281 M", "55.0 ± 5.0", "30.0 ± 10.0", "0.910 ± 0.010"]
    assert lines[3].split(" | ")[1:8] == ["1", "38 M", "80.0", "-", "0.910", "0.0040", "21.00"]
