"""One-run latency benchmark of every artifact that runs on this machine, against torch eager FP32 of the same
generator (and, optionally, of a peer generator through the same backends).

    python -m benchmarks.run --checkpoint runs/synthetic-tiny                 # a trained generator
    python -m benchmarks.run --preset ade20k-256-edge --size 256                  # paper-size generator (random weights)
    python -m benchmarks.run --preset ade20k-256-edge --peer benchmarks.peers:oasis_generator
    python -m benchmarks.run --preset ade20k-256-edge --device cuda --batches 1,16 --compile --peer benchmarks.peers:oasis_generator

On CUDA the torch rows are eager FP32, eager FP16 and FP16 replayed from a CUDA graph (plus torch.compile
"reduce-overhead" with --compile), for ours and for the peer; artifacts whose runtime is missing (a CUDA build of
ONNX Runtime, TensorRT) are reported as skipped.

Everything is timed in one process, interleaved in rounds: after ``--warmup`` calls of every row, each of
``--rounds`` rounds times every row once (``--runs`` calls, A B C, A B C, ...), so a noise burst of a shared
machine hits every row alike instead of one. For each (model, target, precision) at batch 1 and at each
``--batches`` size: the median over rounds of each round's median latency and its spread (min-max over rounds),
p90 over all timed calls, images/s, each ratio (to torch eager, to the peer's fastest row) as the median of the
per-round ratios, MACs per image counted from the torch graph (:func:`macs_per_image`, the same count for every
row, peers included; an exported artifact has its module's MACs), the process's resident memory once the row
was loaded, the peak resident memory of the artifact's predictor alone in a child process ("own peak",
:mod:`benchmarks.predictor_memory`), PSNR against torch FP32 (the export's own quality report, and on the timed
inputs themselves), and GFLOP per image (2 x MACs) with the fraction of the device's estimated peak it
reaches. Writes
``results.json``, ``results.md`` and ``latency.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.predictor_memory import current_rss_mib as rss_mib
from runtimes.targets import TARGETS
from train.data import BUILTIN_SCENES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARTIFACTS = ["torch:fp32", "onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:fp16", "openvino:int8"]


# ------------------------------------------------------------------------------------------------ device facts


@functools.cache
def cpu_info() -> str | None:
    """/proc/cpuinfo, read once (None where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags() -> set[str]:
    """The first CPU's instruction-set flags from /proc/cpuinfo (empty where there are none)."""
    found = re.search(r"^flags\s*:\s*(.*)$", cpu_info() or "", re.M)
    return set(found.group(1).split()) if found else set()


def cpu_model(default: str = "CPU") -> str:
    """The first CPU's model name from /proc/cpuinfo (``default`` where there is none)."""
    found = re.search(r"^model name\s*:\s*(.*)$", cpu_info() or "", re.M)
    return found.group(1).strip() if found else default


def cpu_peak_gflops() -> tuple[float | None, str]:
    """Estimated FP32 peak of this process's CPUs: cores x clock x FLOP/cycle (2 FMA units: AVX-512 64, AVX2 32)."""
    info = cpu_info()
    if info is None:
        return None, "unknown CPU"
    flags = cpu_flags()
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    model = cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    if not mhz:
        return None, model
    peak = cores * max(mhz) / 1000 * per_cycle
    return peak, f"{model}, {cores} threads, ~{max(mhz) / 1000:.2f} GHz, {per_cycle} FP32 FLOP/cycle"


# Dense FP16/BF16 tensor-core peak (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched on the device name.
GPU_FP16_PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0),
                        ("L4", 121.0), ("T4", 65.0)]


def gpu_peak_gflops(name: str) -> float | None:
    """Dense FP16 tensor peak of a GPU named ``name`` in GFLOP/s, None when it is not in the table."""
    return next((tflops * 1000 for key, tflops in GPU_FP16_PEAK_TFLOPS if key in name), None)


def macs_per_image(module: Any, input_size, noise_shape) -> int:
    """Multiply-accumulates of one batch-1 forward pass of a torch generator in eval mode: ``torch.utils.flop_counter``
    FLOP / 2, counted by :func:`train.macs.module_macs` for every row, peers included."""
    from train.macs import module_macs

    return module_macs(module, input_size, noise_shape)


# ------------------------------------------------------------------------------------------------ timing


def psnr_db(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """PSNR of images in [-1, 1] (:func:`calibration.psnr`), rounded; None when identical (JSON has no inf)."""
    from calibration import psnr

    value = psnr(reference, candidate)
    return None if value == float("inf") else round(value, 2)


def time_rounds(calls: list, rounds: int, runs: int, warmup: int, pause_s: float = 0.0, clock=time.perf_counter,
                sleep=time.sleep) -> list[dict[str, Any]]:
    """Time zero-argument ``calls`` interleaved: ``warmup`` untimed calls of each, then ``rounds`` rounds, each
    timing every call ``runs`` times in list order (A B C, A B C, ...). Returns, per call, ``median_ms`` (median
    over rounds of each round's median), the spread over rounds (``round_min_ms``, ``round_max_ms``), ``p90_ms`` and
    ``min_ms`` over all timed calls, and ``round_ms`` (each round's median, for per-round ratios).

    ``pause_s``: an untimed pause before each row's block. Runtime thread pools keep spinning for a while after a
    call (OpenVINO's and ONNX Runtime's workers), and measured here that spin slowed the next row's torch call by
    2-5x (two tries, heavily shared machine); the pause lets them settle, so a row does not pay for the one before it."""
    for fn in calls:
        for _ in range(warmup):
            fn()
    per_round: list[list[float]] = [[] for _ in calls]
    every: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            if pause_s:
                sleep(pause_s)
            times = []
            for _ in range(runs):
                t = clock()
                fn()
                times.append(1000 * (clock() - t))
            per_round[i].append(statistics.median(times))
            every[i] += times
    out = []
    for medians, times in zip(per_round, every):
        times = sorted(times)
        out.append({"median_ms": statistics.median(medians), "round_min_ms": min(medians),
                    "round_max_ms": max(medians), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
                    "min_ms": times[0], "runs": runs, "rounds": rounds, "round_ms": medians})
    return out


def median_ratio(base_round_ms: list[float], round_ms: list[float]) -> float:
    """``base / row`` computed in each round, then the median over rounds (a burst in one round moves one ratio)."""
    return statistics.median(b / r for b, r in zip(base_round_ms, round_ms, strict=True))


def torch_runner(module, device: str = "cpu", dtype=None, cuda_graph: bool = False, compiled: bool = False):
    """``fn(label, noise) -> float32 numpy image`` running ``module`` on ``device`` in ``dtype`` (a converted copy
    when it lives elsewhere or in another dtype: the caller's module is left as it is).

    The host->device copy of the inputs and the device->host copy of the image are inside the call: that is what
    an application pays, and on CUDA the copy out waits for the GPU, so wall-clock timing is correct.
    ``cuda_graph`` captures the generator once per input shape (after warm-up on a side stream) and replays it:
    it removes the per-kernel launch cost that dominates batch-1 latency on a GPU. ``compiled`` runs it through
    ``torch.compile`` ("reduce-overhead", i.e. with CUDA graphs, on CUDA)."""
    import copy

    import torch

    dtype = dtype or torch.float32
    if cuda_graph and not str(device).startswith("cuda"):
        raise ValueError("cuda_graph=True needs a CUDA device")
    target = torch.device(device).type
    if all(p.device.type == target and p.dtype == dtype for p in module.parameters()):
        model = module.eval()
    else:
        model = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
    if compiled:
        model = torch.compile(model, mode="reduce-overhead" if target == "cuda" else None)
    graphs: dict[tuple, tuple] = {}

    def run(label: np.ndarray, noise: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            lab = torch.from_numpy(label).to(device)
            noi = torch.from_numpy(noise).to(device=device, dtype=dtype)
            if not cuda_graph:
                return model(lab, noi).float().cpu().numpy()
            key = (tuple(lab.shape), tuple(noi.shape))
            if key not in graphs:
                static_lab, static_noi = lab.clone(), noi.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        model(static_lab, static_noi)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = model(static_lab, static_noi)
                graphs[key] = (graph, static_lab, static_noi, static_out)
            graph, static_lab, static_noi, static_out = graphs[key]
            static_lab.copy_(lab)
            static_noi.copy_(noi)
            graph.replay()
            return static_out.float().cpu().numpy()

    return run


def torch_runners(module, device: str, compile_too: bool) -> dict[str, Any]:
    """The torch rows of one generator: eager FP32 everywhere; on CUDA also eager FP16 and FP16 replayed from a
    CUDA graph; with --compile, torch.compile in FP16 on CUDA and FP32 on the CPU."""
    import torch

    runners = {"torch eager fp32": torch_runner(module, device)}
    if device == "cuda":
        runners["torch eager fp16"] = torch_runner(module, device, torch.float16)
        runners["torch fp16 cuda graph"] = torch_runner(module, device, torch.float16, cuda_graph=True)
    if compile_too:
        precision = "fp16" if device == "cuda" else "fp32"
        dtype = torch.float16 if device == "cuda" else torch.float32
        runners[f"torch compiled {precision}"] = torch_runner(module, device, dtype, compiled=True)
    return runners


def reset_gpu_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mib(device: str) -> dict[str, float]:
    """Peak of torch's CUDA allocator since the last reset (torch backends; TensorRT and ONNX Runtime allocate
    outside it, so their rows show what torch alone held)."""
    if device != "cuda":
        return {}
    import torch

    return {"gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def free_gpu(device: str) -> None:
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def inputs(batch: int, input_size, noise_shape, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocky label maps of ``seed`` and the noise a predictor feeds the graph for them with ``seed=seed``
    (:func:`runtimes.noise.sample_noise`: map i, seed + i), so every row, torch or artifact, times the same images."""
    from runtimes.noise import sample_noise, seed_list

    rng = np.random.default_rng(seed)
    cell = max(1, min(input_size) // 8)
    coarse = rng.integers(0, num_classes, size=(batch, -(-input_size[0] // cell), -(-input_size[1] // cell)))
    label = coarse.repeat(cell, 1).repeat(cell, 2)[:, : input_size[0], : input_size[1]].astype(np.int32)
    return label, sample_noise(seed_list(seed, batch), noise_shape)


# ------------------------------------------------------------------------------------------------ models


def load_models(args: argparse.Namespace) -> list[tuple[str, Any, Any]]:
    """(name, generator, GeneratorInfo) of the checkpoint, or of a random-weight generator of each ``--preset``."""
    if args.checkpoint:
        return [load_model(args, None)]
    return [load_model(args, preset) for preset in args.preset]


def load_model(args: argparse.Namespace, preset: str | None):
    """(name, generator, GeneratorInfo) of the checkpoint (``preset`` None), or of a random-weight generator of
    ``preset``."""
    import torch

    from export.api import check_size
    from train.checkpoint import GeneratorInfo, load_generator
    from train.config import load_config
    from train.models.generator import Generator

    if preset is None:
        generator, info = load_generator(args.checkpoint)
        if args.size is not None:
            check_size(args.size, generator.stride)
        return Path(args.checkpoint).name, generator, info
    cfg = load_config(preset, ([] if "synthetic" in preset else ["data.root=."]) + args.set)  # data is not read
    num_classes = args.num_classes or (cfg.data.num_classes if cfg.data.dataset in BUILTIN_SCENES else 151)
    torch.manual_seed(0)
    generator = Generator(num_classes, cfg.model.generator)
    if args.size is not None:
        check_size(args.size, generator.stride)
    generator = warmed(generator, num_classes, tuple(args.size or cfg.data.image_size))
    size = list(args.size or cfg.data.image_size)
    info = GeneratorInfo(num_classes=num_classes, generator=cfg.model.generator, image_size=size,
                         class_names=[f"class {i}" for i in range(num_classes)], palette=_palette(num_classes),
                         dataset="none (random weights, benchmark)")
    tag = f"{cfg.name} {' '.join(s.split('.')[-1] for s in args.set)}".strip()
    return f"{tag} (random weights)", generator, info


def warmed(generator, num_classes: int, size, seed: int = 0):
    """Random weights with trained-like behaviour: live noise path and batch-norm statistics of real activations
    (a fresh generator's zero-initialised attention output ignores its noise)."""
    import torch

    for name, p in generator.named_parameters():
        if name.endswith(".out.weight"):
            torch.nn.init.normal_(p, std=0.02)
    generator.train()
    with torch.no_grad():
        for i in range(2):
            label, noise = inputs(2, size, generator.noise_shape, num_classes, seed + i)
            generator(torch.from_numpy(label), torch.from_numpy(noise))
    return generator.eval()


def _palette(n: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(n, 3)).tolist()


def load_peer(spec: str, num_classes: int, size):
    """``module:factory`` -> factory(num_classes, size): an nn.Module with forward(label int32 [N,H,W], noise)
    and a ``noise_shape`` attribute (the same contract as ours, so it runs through the same exporters)."""
    from dpsims.errors import ConfigError

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "build")
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--peer {spec}: cannot import it ({e}); give module:factory, e.g. "
                          "benchmarks.peers:oasis_generator.") from None
    return factory(num_classes, tuple(size))


# ------------------------------------------------------------------------------------------------ main


def own_process_memory(path: Path, batch: int, device: str, log) -> dict[str, float] | None:
    """Peak RSS of this artifact's predictor alone, measured in a child process (benchmarks.predictor_memory)."""
    import subprocess

    cmd = [sys.executable, "-m", "benchmarks.predictor_memory", "--model", str(path), "--batch", str(batch),
           "--device", device]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        log(f"[bench] own-process memory of {path.name} not measured: {type(e).__name__}")
        return None


def export_all(name: str, generator, info, specs: list[str], out: Path, calib_samples: int, log,
               min_psnr: float = 30.0, size=None) -> dict[str, Path]:
    from dpsims.errors import DpSimsError
    from export.api import export_generator
    from train.checkpoint import save_generator

    ckpt = save_generator(out / "checkpoints" / f"{_slug(name)}.safetensors", generator, info)
    calib = info.dataset if info.dataset in BUILTIN_SCENES else "blocks"
    made = {}
    for spec in specs:
        target, precision = spec.split(":")
        dest = out / "artifacts" / f"{_slug(name)}-{target}-{precision}"
        log(f"[bench] exporting {name} -> {target} {precision}")
        try:
            report = export_generator(ckpt, target, precision, calib=calib, calib_samples=calib_samples, out=dest,
                                      overwrite=True, log=lambda m: None, batch=(1, 1, 16), min_psnr=min_psnr,
                                      size=tuple(size) if size else None)
        except DpSimsError as e:  # e.g. the INT8 gate: report it and time the rest
            log(f"[bench] skipped {target} {precision}: {e}")
            continue
        made[spec] = report.out_dir
    return made


def timing_row(model: str, backend: str, batch: int, timing: dict[str, Any], macs: int, peak: float | None,
               device: str, **extra: Any) -> dict[str, Any]:
    """One results row: the timing, throughput, MACs and GFLOP per image, achieved GFLOP/s (and share of ``peak``),
    and ``extra`` columns (PSNRs, artifact bytes, memory)."""
    per_image_s = timing["median_ms"] / 1000 / batch
    flops = 2 * macs / 1e9
    row = {"model": model, "backend": backend, "batch": batch,
           **{k: [round(x, 3) for x in v] if isinstance(v, list) else round(v, 3) for k, v in timing.items()},
           "images_per_s": round(1 / per_image_s, 2), "macs_per_image": macs, "gflop_per_image": round(flops, 2),
           "achieved_gflops": round(flops / per_image_s, 1), **extra}
    if peak:
        row["fraction_of_peak"] = round(flops / per_image_s / peak, 4)
        if device == "cpu" and "int8" in backend:
            row["fraction_of_int8_peak"] = round(flops / per_image_s / (peak * int8_speedup()), 4)
    return row


def int8_speedup() -> int:
    """INT8 operations per FP32 FLOP of this CPU's vector units: 4 with VNNI (one dot-product instruction does 4
    int8 multiply-adds per 32-bit lane), 2 without (pairs through 16-bit multiply-adds). An estimate for the
    "share of the int8 peak" column, as :func:`cpu_peak_gflops` is for the FP32 peak."""
    return 4 if cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"} else 2


def row_entry(model: str, backend: str, batch: int, call, macs: int, device: str, **extra: Any) -> dict[str, Any]:
    """A row waiting for its timing: ``call`` runs it once (its inputs bound). It is called once here, so the
    process RSS (and on CUDA torch's allocator peak) recorded is that of this row loaded and run."""
    reset_gpu_peak(device)
    output = call()
    return {"model": model, "backend": backend, "batch": batch, "call": call, "macs": macs, "output": output,
            "extra": {**extra, "rss_mib": round(rss_mib(), 1), **gpu_peak_mib(device)}}


def model_entries(name: str, generator, info, args, out: Path, log) -> tuple[list[dict[str, Any]], list]:
    """The rows of our generator (torch, then each artifact that loads here), untimed, and the predictors to close
    once they are timed."""
    from runtimes import load_predictor

    size = tuple(args.size or info.image_size)
    noise_shape = tuple(generator.noise_shape)
    macs = macs_per_image(generator, size, noise_shape)  # the exported artifacts run this module's graph
    entries: list[dict[str, Any]] = []
    references: dict[int, np.ndarray] = {}  # torch eager FP32 output on each batch's inputs

    def add(label: str, fn, psnr=None, size_bytes=None) -> None:
        for batch in args.batches:
            label_np, noise_np = inputs(batch, size, noise_shape, info.num_classes)
            entry = row_entry(name, label, batch, lambda f=fn, a=label_np, b=noise_np: f(a, b), macs, args.device,
                              psnr_vs_fp32_db=psnr, bytes=size_bytes)
            output = np.asarray(entry.pop("output"), dtype=np.float32)
            references.setdefault(batch, output)
            entry["extra"]["psnr_vs_eager_db"] = psnr_db(references[batch], output)
            entries.append(entry)

    generator = generator.eval()
    for label, runner in torch_runners(generator, args.device, args.compile).items():
        add(label, runner)

    artifacts = export_all(name, generator, info, args.artifacts, out, args.calib_samples, log, args.min_psnr, size)
    predictors = []
    for spec, path in artifacts.items():
        try:
            predictor = load_predictor(path, device=args.device)
        except Exception as e:  # noqa: BLE001 - e.g. no CUDA build of onnxruntime, no TensorRT: time the rest
            log(f"[bench] skipped {spec} on {args.device}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        predictors.append(predictor)
        quality = predictor.manifest.quality or {}
        size_bytes = sum(f.bytes for f in predictor.manifest.files)
        first = len(entries)
        add(spec.replace(":", " "), lambda label, noise, p=predictor: p.generate_raw(label, noise=noise),
            quality.get("psnr_db"), size_bytes)
        if args.device == "cpu":
            for entry in entries[first:first + len(args.batches)]:
                mem = own_process_memory(path, entry["batch"], args.device, log)
                entry["extra"]["own_peak_mib"] = None if mem is None else mem["peak_mib"]
                entry["extra"]["own_peak_over_base_mib"] = None if mem is None else mem["peak_over_base_mib"]
        if args.device == "cpu" and args.ov_native and spec.startswith("openvino") and not spec.endswith("fp32"):
            # what OpenVINO's own default precision (bf16 float parts on AVX512-BF16/AMX CPUs) costs and buys
            native = load_predictor(path, device=args.device, inference_precision="auto")
            predictors.append(native)
            add(spec.replace(":", " ") + " native", lambda label, noise, p=native: p.generate_raw(label, noise=noise),
                None, size_bytes)
    return entries, predictors


def time_entries(entries: list[dict[str, Any]], args, peak, log) -> list[dict[str, Any]]:
    """Time every row interleaved in rounds (:func:`time_rounds`) and turn each into a results row."""
    timings = time_rounds([e["call"] for e in entries], args.rounds, args.runs, args.warmup, args.pause_ms / 1000)
    rows = []
    for entry, timing in zip(entries, timings):
        row = timing_row(entry["model"], entry["backend"], entry["batch"], timing, entry["macs"], peak, args.device,
                         **entry["extra"])
        rows.append(row)
        log(f"[bench] {entry['model']:>28} {entry['backend']:<16} batch {entry['batch']:>2}: median "
            f"{row['median_ms']:8.2f} ms  rounds {row['round_min_ms']:.2f}-{row['round_max_ms']:.2f} ms  "
            f"{row['images_per_s']:8.2f} img/s  {row['gflop_per_image']:.2f} GFLOP")
    return rows


def add_ratios(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Each row's speed-ups, each the median over rounds of the per-round ratio (:func:`median_ratio`): to its own
    model's torch eager FP32, to our torch eager FP32, and to each peer's fastest row at the same batch
    (``speedup_vs_peer``, peer model -> ratio; ``meta["peer_reference"]`` names the row it was taken against)."""
    baseline = {(r["model"], r["batch"]): r["round_ms"] for r in rows if r["backend"] == "torch eager fp32"}
    ours = next((r["model"] for r in rows), None)
    fastest: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if r["model"].startswith("peer ") and (
                (r["model"], r["batch"]) not in fastest or r["median_ms"] < fastest[(r["model"], r["batch"])]["median_ms"]):
            fastest[(r["model"], r["batch"])] = r
    meta["peer_reference"] = {f"{m} batch {b}": r["backend"] for (m, b), r in fastest.items()}
    for r in rows:
        base = baseline.get((r["model"], r["batch"]))
        r["speedup_vs_torch_eager"] = round(median_ratio(base, r["round_ms"]), 2) if base else None
        base_ours = baseline.get((ours, r["batch"]))
        r["speedup_vs_our_torch_eager"] = round(median_ratio(base_ours, r["round_ms"]), 2) if base_ours else None
        r["speedup_vs_peer"] = {m: round(median_ratio(p["round_ms"], r["round_ms"]), 2)
                                for (m, b), p in fastest.items() if b == r["batch"]}


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    add_ratios(rows, meta)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    peers = list(dict.fromkeys(m for r in rows for m in r["speedup_vs_peer"]))
    head = ["model", "backend", "batch", "MACs/img (G)", "median ms", "spread ms (rounds)", "p90 ms", "img/s",
            "x torch eager", *[f"x {m} (fastest)" for m in peers], "PSNR dB (export)", "PSNR dB (this input)",
            "GFLOP/img", "% peak", "% int8 peak", "RSS MiB", "own peak MiB", "size"]
    on_gpu = any("gpu_peak_mib" in r for r in rows)
    if on_gpu:  # torch's CUDA allocator peak of that row instead of the CPU predictor's own-process peak
        head[-2] = "GPU peak MiB (torch)"
    lines = [f"# dp-sims benchmark ({meta['device']})", "", f"{meta['when']}, one process, rows interleaved in "
             f"{meta['rounds']} rounds of {meta['runs']} calls each after {meta['warmup']} warm-up calls; median and "
             "spread (min-max) over rounds; ratios are medians of per-round ratios.", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        pct = f"{100 * r['fraction_of_peak']:.1f}" if r.get("fraction_of_peak") is not None else "-"
        pct8 = f"{100 * r['fraction_of_int8_peak']:.1f}" if r.get("fraction_of_int8_peak") is not None else "-"
        size = f"{r['bytes'] / 2**20:.1f} MB" if r.get("bytes") else "-"
        lines.append("| " + " | ".join(str(v) for v in [
            r["model"], r["backend"], r["batch"], f"{r['macs_per_image'] / 1e9:.3f}", f"{r['median_ms']:.2f}",
            f"{r['round_min_ms']:.2f}-{r['round_max_ms']:.2f}", f"{r['p90_ms']:.2f}", r["images_per_s"],
            r["speedup_vs_torch_eager"], *[r["speedup_vs_peer"].get(m, "-") for m in peers], r["psnr_vs_fp32_db"] if r["psnr_vs_fp32_db"] is not None else "-",
            r["psnr_vs_eager_db"] if r.get("psnr_vs_eager_db") is not None else "-",
            r["gflop_per_image"], pct, pct8, r["rss_mib"], r.get("gpu_peak_mib" if on_gpu else "own_peak_mib") or "-",
            size]) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    bar_chart([r for r in rows if r["batch"] == rows[0]["batch"]], out / "latency.png")


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars of median latency (batch of the first row), drawn with pillow."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return
    width, bar_h, left = 900, 26, 360
    img = Image.new("RGB", (width, 40 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    top = max(r["median_ms"] for r in rows) or 1
    draw.text((10, 10), f"median latency, batch {rows[0]['batch']} (ms; shorter is faster)", fill="black")
    for i, r in enumerate(rows):
        y = 34 + i * bar_h
        draw.text((10, y + 6), f"{r['model'][:24]} | {r['backend']}", fill="black")
        length = int((width - left - 90) * r["median_ms"] / top)
        color = (60, 120, 200) if "torch eager" not in r["backend"] else (200, 90, 60)
        draw.rectangle([left, y + 4, left + max(1, length), y + bar_h - 4], fill=color)
        draw.text((left + length + 6, y + 6), f"{r['median_ms']:.1f}", fill="black")
    img.save(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def main(argv: list[str] | None = None) -> int:
    from dpsims.cli import configure_logging, make_parser

    parser = make_parser("benchmarks.run", __doc__.split("\n\n")[0], __doc__)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="run folder or generator file")
    src.add_argument("--preset", action="append", default=None,
                     help="config preset of a random-weight generator (default synthetic-tiny); repeatable: every "
                          "preset's rows are timed in the same rounds")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a value of --preset, e.g. --set model.generator.spade_kernel=1 (repeatable)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--size", type=lambda s: [int(v) for v in s.lower().split("x")] * (1 if "x" in s else 2), default=None,
                        help="HxW (default: the model's training size)")
    parser.add_argument("--artifacts", type=_artifact_list, default=list(DEFAULT_ARTIFACTS),
                        help="target:precision list (default " + ",".join(DEFAULT_ARTIFACTS) + ")")
    parser.add_argument("--peer", action="append", default=[], help="module:factory of a peer generator")
    parser.add_argument("--batches", type=_batch_list, default=[1], help="comma list of batch sizes (default 1)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of interleaved timing: each round times every row once (default 5)")
    parser.add_argument("--runs", type=int, default=4, help="timed calls of a row per round (default 4)")
    parser.add_argument("--pause-ms", type=float, default=100.0,
                        help="untimed pause before each row's calls in a round, so the previous backend's spinning "
                             "thread pool settles (default 100)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--min-psnr", type=float, default=30.0, help="INT8 quality bar of the exports (dB)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--ov-native", action="store_true",
                        help="also time OpenVINO FP16/INT8 artifacts at OpenVINO's default precision (bf16 float parts "
                             "on AVX512-BF16/AMX CPUs; the predictor's CPU default is f32, what the export measured)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<time>)")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.preset:
        args.preset = ["synthetic-tiny"]
    configure_logging(args.log_level)
    if min(args.batches) < 1 or args.runs < 1 or args.rounds < 1 or args.warmup < 0 or args.pause_ms < 0:
        parser.error("--batches must be >= 1, --runs >= 1, --rounds >= 1, --warmup >= 0 and --pause-ms >= 0.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda needs a CUDA GPU and a CUDA build of torch (torch.cuda.is_available() is "
                         "False here); run without --device for the CPU backends.")
        artifacts = [a for a in args.artifacts if not a.startswith("openvino")]
        if importlib.util.find_spec("tensorrt") is not None and "tensorrt:int8" not in artifacts:
            artifacts.append("tensorrt:int8")
        args = argparse.Namespace(**{**vars(args), "artifacts": artifacts})

    sys.path.insert(0, str(ROOT))
    from dpsims.cli import prog_name, run_cli

    return run_cli(prog_name("benchmarks.run"), lambda: _run(args))


def _artifact_list(text: str) -> list[str]:
    specs = [a for a in text.split(",") if a]
    for spec in specs:
        target, _, precision = spec.partition(":")
        if target not in TARGETS or not precision:
            raise argparse.ArgumentTypeError(
                f"--artifacts takes target:precision items ({', '.join(TARGETS)}), got {spec!r}.")
    return specs


def _batch_list(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batches takes batch sizes separated by commas, e.g. 1,8; got {text!r}.") from None


def _run(args: argparse.Namespace) -> int:
    from dpsims.errors import ConfigError

    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.device == "cpu":
        peak, device = cpu_peak_gflops()
    else:
        import torch

        gpu = torch.cuda.get_device_name()
        peak = gpu_peak_gflops(gpu)
        device = f"{gpu}, % peak of its dense FP16 tensor peak" if peak else gpu
    models = load_models(args)  # a bad --checkpoint / --preset / --set / --size fails here
    info = models[0][2]
    peers = [(spec, load_peer(spec, info.num_classes, args.size or info.image_size)) for spec in args.peer]
    out = Path(args.out or ROOT / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the results.")
    out.mkdir(parents=True, exist_ok=True)
    entries, predictors = [], []
    for name, generator, model_info in models:
        more, opened = model_entries(name, generator, model_info, args, out, log)
        entries, predictors = entries + more, predictors + opened
    with tempfile.TemporaryDirectory() as tmp:  # the peers' ONNX files live until their rows are timed
        for spec, peer in peers:
            entries += peer_entries(spec, peer, info.num_classes, tuple(args.size or info.image_size), args,
                                    Path(tmp) / f"{_slug(spec)}.onnx")
        free_gpu(args.device)
        log(f"[bench] timing {len(entries)} rows interleaved: {args.rounds} rounds of {args.runs} calls")
        rows = time_entries(entries, args, peak, log)
    for predictor in predictors:
        predictor.close()
    meta = {"device": device, "peak_gflops_estimate": peak, "when": time.strftime("%Y-%m-%d %H:%M"),
            "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup, "pause_ms": args.pause_ms, "python": platform.python_version(),
            "argv": sys.argv[1:]}
    write_results(rows, meta, out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'latency.png'}")
    return 0


def peer_cpu_runners(peer, size, onnx_path: Path, num_classes: int, calib_samples: int = 32) -> dict[str, Any]:
    """ONNX Runtime FP32 and OpenVINO (FP32, its default precision, and NNCF INT8 post-training quantization at
    OpenVINO's defaults: the peer's best CPU path) runners of a peer's plain ONNX export."""
    from export.onnx import export_fp32, session_runner

    export_fp32(peer.eval(), size, onnx_path)
    runners = {"onnx fp32": lambda lab, n, r=session_runner(onnx_path): r({"label": lab, "noise": n})}
    try:
        import openvino as ov
    except ImportError:
        return runners
    core = ov.Core()
    default = core.compile_model(str(onnx_path), "CPU")
    f32 = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runners["openvino fp32"] = lambda lab, n, c=f32: c({"label": lab, "noise": n})
    runners["openvino default"] = lambda lab, n, c=default: c({"label": lab, "noise": n})
    try:
        import nncf
    except ImportError:
        return runners
    calib = [dict(zip(("label", "noise"), inputs(1, size, tuple(peer.noise_shape), num_classes, seed=1000 + i)))
             for i in range(calib_samples)]
    quantized = nncf.quantize(core.read_model(str(onnx_path)), nncf.Dataset(calib), subset_size=len(calib))
    int8 = core.compile_model(quantized, "CPU")
    runners["openvino int8 nncf"] = lambda lab, n, c=int8: c({"label": lab, "noise": n})
    return runners


def peer_entries(spec: str, peer, num_classes: int, size, args, onnx_path: Path) -> list[dict[str, Any]]:
    """A peer generator's rows through torch eager and the same ONNX Runtime / OpenVINO conversions (default
    settings: what a user of that model gets by exporting it), without our export pipeline (it has no checkpoint
    format). Every row has the peer module's MACs."""
    import torch

    noise_shape = tuple(peer.noise_shape)
    macs = macs_per_image(peer, size, noise_shape)
    name = spec.split(":")[-1]
    runners = torch_runners(peer, args.device, args.compile)
    if args.device == "cpu":  # on CUDA the peer's ONNX Runtime / OpenVINO CPU rows belong to the CPU run
        runners.update(peer_cpu_runners(peer, size, onnx_path, num_classes, args.calib_samples))
    entries = []
    for label, fn in runners.items():
        for batch in args.batches:
            label_np, noise_np = inputs(batch, size, noise_shape, num_classes)

            def call(f=fn, a=label_np, b=noise_np):
                with torch.no_grad():
                    return f(a, b)

            entry = row_entry(f"peer {name}", label, batch, call, macs, args.device, psnr_vs_fp32_db=None, bytes=None)
            entry.pop("output")
            entries.append(entry)
    return entries


if __name__ == "__main__":
    sys.exit(main())
