"""Training ablations on the built-in preset, several seeds per variant, measured the same way.

    python -m benchmarks.ablation --out /tmp/ablation                      # every variant, seeds 0 1 2
    python -m benchmarks.ablation --variants pretrained random --seeds 0 1 2 --steps 600 --workers 2
    python -m benchmarks.ablation --preset synthetic-photo --variants pretrained random --out /tmp/ablation-photo

Each (variant, seed) is one ``python -m train`` run of ``--preset`` (synthetic-tiny) with the variant's overrides and
``train.seed`` = seed (the data are the same for all). Runs go ``--workers`` at a time, one torch thread each
(on a 2-core machine two single-thread runs train more steps per second than one two-thread run).
Then every run's final EMA generator is evaluated by ``python -m train.evaluate`` (64 held-out maps x 3 noise
seeds): FD and KID in ImageNet EfficientNet-Lite2 features (not the discriminator's network), label consistency,
pixel diversity. ``--ema-stats`` also evaluates each run's EMA generator with the live generator's BatchNorm
statistics (what the EMA generator had before its statistics were recomputed) beside its own.

Writes ``OUT/summary.json`` and ``OUT/summary.md``: per variant, mean ± std over seeds of label consistency at
each logged step, the first step that reached ``--target`` (0.8), FD, KID, pixel diversity and minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    # the preset as shipped: frozen ImageNet EfficientNet-Lite0 backbone
    "pretrained": [],
    # the same architecture, randomly initialised (and frozen, as in the paper's setting)
    "random": ["model.discriminator.weights=null", "model.discriminator.pretrained=false"],
    # this package's edge generator (context blocks at 1/8 and 1/4 resolution only, 1x1 label stem and SPADE convs)
    "edge": ["model.generator.context_levels=2", "model.generator.stem_kernel=1", "model.generator.spade_kernel=1"],
    # the EMA generator keeps the live generator's BatchNorm statistics
    "no-ema-stats": ["train.ema_bn_batches=0"],
    # four times the diversity term's weight (its ratio stays far below the cap at weight 1)
    "diversity-x4": ["loss.diversity=4.0"],
    # the layout first: no diversity term for 300 steps, then 4x or 6x the preset's weight
    "diversity-x4-late": ["loss.diversity=4.0", "loss.diversity_start=300"],
    "diversity-x6-late": ["loss.diversity=6.0", "loss.diversity_start=300"],
    # the same, with the term capped where seeds differ enough to see (0.04 of the value range per pixel)
    "diversity-x4-late-cap": ["loss.diversity=4.0", "loss.diversity_start=300", "loss.diversity_tau=0.04"],
    "diversity-x3-late-cap": ["loss.diversity=3.0", "loss.diversity_start=300", "loss.diversity_tau=0.04"],
}


def run_one(variant: str, seed: int, out: Path, steps: int, eval_every: int, log, preset: str = "synthetic-tiny") -> Path:
    run = out / f"{variant}-s{seed}"
    if (run / "checkpoints" / "last").exists() and _last_step(run) >= steps:
        log(f"[ablation] {run.name}: already trained")
        return run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train", "--config", preset, "--out", str(run), "--set",
           f"train.seed={seed}", f"train.steps={steps}", f"train.eval_every={eval_every}", "train.max_minutes=0",
           f"train.log_every={eval_every}", *VARIANTS[variant]]
    if (run / "checkpoints" / "last").exists():
        cmd = [sys.executable, "-m", "train", "--resume", str(run), "--set", f"train.steps={steps}"]
    t0 = time.time()
    log(f"[ablation] {run.name}: training")
    with open(out / f"{run.name}.log", "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)
    log(f"[ablation] {run.name}: trained in {(time.time() - t0) / 60:.1f} min")
    return run


def _last_step(run: Path) -> int:
    rows = _metrics(run)
    return rows[-1]["step"] if rows else 0


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def ema_with_live_stats(run: Path) -> Path:
    """A copy of the last checkpoint whose EMA generator carries the live generator's BatchNorm buffers."""
    import shutil

    from safetensors.torch import load_file, save_file

    ckpt = run / "checkpoints" / (run / "checkpoints" / "last").read_text().strip()
    dst = run / "ema-live-stats"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(ckpt, dst)
    ema, live = load_file(str(ckpt / "generator_ema.safetensors")), load_file(str(ckpt / "generator.safetensors"))
    stats = ("running_mean", "running_var", "num_batches_tracked")
    mixed = {k: (live[k] if k.rsplit(".", 1)[-1] in stats else v) for k, v in ema.items()}
    from safetensors import safe_open

    with safe_open(str(ckpt / "generator_ema.safetensors"), "pt") as fh:
        meta = fh.metadata()
    save_file(mixed, str(dst / "generator_ema.safetensors"), metadata=meta)
    return dst


def evaluate(paths: list[Path], out_json: Path, data_cfg: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "train.evaluate", "--data", str(data_cfg), "--seeds", "3", "--out", str(out_json)]
    for p in paths:
        cmd += ["--run", str(p)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    data = json.loads(out_json.read_text())
    return data if isinstance(data, list) else [data]


def _ms(values: list[float | None], digits: int = 3) -> str:
    """Mean ± population standard deviation of the values that are not None; one value alone; "-" for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def summarise(results: dict[str, list[dict]], steps_shown: list[int], target: float) -> tuple[dict, str]:
    summary, lines = {}, []
    head = ["variant", "seeds", *(f"LC@{s}" for s in steps_shown), f"steps to {target}", "FD (Lite2)",
            "KID x1000", "LC (eval)", "pixel diversity", "diversity ratio", "minutes"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, runs in results.items():
        lc_at = {s: [r["curve"].get(s) for r in runs] for s in steps_shown}
        reach = [r["reach"] for r in runs]
        row = {
            "seeds": [r["seed"] for r in runs],
            "label_consistency_at": {s: v for s, v in lc_at.items()},
            "steps_to_target": reach,
            "fd": [r["fd"] for r in runs], "kid": [r["kid"] for r in runs],
            "label_consistency": [r["lc"] for r in runs], "pixel_diversity": [r["div"] for r in runs],
            "diversity_ratio": [r["ratio"] for r in runs], "minutes": [r["minutes"] for r in runs],
        }
        summary[variant] = row
        reached = [v for v in reach if v is not None]
        reach_cell = (_ms(reached, 0) if reached else "-") + ("" if len(reached) == len(reach) else
                                                              f" ({len(reach) - len(reached)} never)")
        cells = [variant, str(len(runs)), *(_ms(lc_at[s]) for s in steps_shown), reach_cell, _ms(row["fd"], 2),
                 _ms([k * 1000 for k in row["kid"]], 2), _ms(row["label_consistency"]), _ms(row["pixel_diversity"], 4),
                 _ms(row["diversity_ratio"], 4), _ms(row["minutes"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return summary, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="synthetic-tiny", help="a built-in scenes preset: synthetic-tiny or synthetic-photo")
    p.add_argument("--variants", nargs="+", default=["pretrained", "random", "edge"], choices=sorted(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--target", type=float, default=0.8)
    p.add_argument("--ema-stats", action="store_true", help="also evaluate EMA generators with the live BN statistics")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    jobs = [(v, s) for s in args.seeds for v in args.variants]  # seed-major: every variant gets seeds early
    with ThreadPoolExecutor(args.workers) as pool:
        runs = list(pool.map(lambda job: run_one(*job, args.out, args.steps, args.eval_every, log, args.preset), jobs))
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    ema_rows = []
    for (variant, seed), run in zip(jobs, runs):
        rows = _metrics(run)
        curve = {r["step"]: r["label_consistency"] for r in rows if "label_consistency" in r}
        ratios = [r["diversity_ratio"] for r in rows if "diversity_ratio" in r]
        sources = [run]
        if args.ema_stats:
            sources.append(ema_with_live_stats(run))
        log(f"[ablation] {run.name}: evaluating")
        reports = evaluate(sources, run / "ablation-eval.json", run / "config.yaml")
        m = reports[0]["metrics"]
        results[variant].append({
            "seed": seed, "curve": curve,
            "reach": next((s for s, v in sorted(curve.items()) if v >= args.target), None),
            "fd": m.get("fid", {}).get("mean"), "kid": m.get("kid", {}).get("mean"),
            "lc": m["label_consistency"]["mean"], "div": m.get("pixel_diversity"),
            "ratio": statistics.mean(ratios[-4:]) if ratios else None, "minutes": rows[-1]["elapsed_s"] / 60,
        })
        if args.ema_stats:
            b = reports[1]["metrics"]
            ema_rows.append({"run": run.name, "own_stats": {"fd": m.get("fid", {}).get("mean"), "lc": m["label_consistency"]["mean"],
                                                            "div": m.get("pixel_diversity")},
                             "live_stats": {"fd": b.get("fid", {}).get("mean"), "lc": b["label_consistency"]["mean"],
                                            "div": b.get("pixel_diversity")}})
    steps_shown = [s for s in (100, 200, 400, 600) if s <= args.steps]
    summary, table = summarise(results, steps_shown, args.target)
    payload = {"steps": args.steps, "seeds": args.seeds, "summary": summary, "ema_stats": ema_rows,
               "features": reports[0].get("features")}
    (args.out / "summary.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = [table]
    if ema_rows:
        md += ["", "| run | FD own stats | FD live stats | LC own | LC live | diversity own | diversity live |",
               "|---|---|---|---|---|---|---|"]
        for r in ema_rows:
            o, lv = r["own_stats"], r["live_stats"]
            md.append(f"| {r['run']} | {o['fd']:.2f} | {lv['fd']:.2f} | {o['lc']:.3f} | {lv['lc']:.3f} | "
                      f"{o['div']:.4f} | {lv['div']:.4f} |")
    (args.out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
