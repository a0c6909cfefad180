"""Distilled students against their from-scratch twins, several seeds, measured the same way.

    python -m benchmarks.distill_study --teachers runs/tiny-s0 runs/tiny-s1 runs/tiny-s2 --out /tmp/study
    python -m benchmarks.distill_study --teachers T0 T1 T2 --students synthetic-tiny-s4 synthetic-tiny-s16 --seeds 0 --steps 300
    python -m benchmarks.distill_study --teachers T0 T1 T2 --variant channels:distill.init=teacher-channels --out /tmp/init

For seed ``i`` (``--seeds``) and each student preset (``--students``), these runs go side by side, one torch
thread each:

- *distilled*: ``python -m train --config STUDENT --teacher TEACHERS[i]`` (train/distill.py), ``train.seed`` i,
  ``--steps`` steps (default 600, the teacher's schedule);
- *scratch*: the same preset and seed, no teacher (its usual losses), stopped (Ctrl-C, which checkpoints the step
  it is at) when the distillation ends;
- one more distilled run per ``--variant NAME:KEY=VALUE[:KEY=VALUE...]`` (named ``STUDENT-NAME-sI``), with those
  settings, e.g. ``--variant channels:distill.init=teacher-channels`` (the student started from the teacher's
  channels).

Side by side on one machine, the two get the same wall-clock under the same load. Then every run of a seed is
evaluated with its teacher by ``python -m train.evaluate`` (one call: the same held-out maps, features and
label-consistency classifier): FD and KID in ImageNet EfficientNet-Lite2 features, label consistency and pixel
diversity, 64 held-out maps x 3 noise seeds; and against the teacher on the same maps and noise
(``train.distill.fidelity``: PSNR and label consistency, noise seed 1234 + map index).

Writes ``OUT/summary.json`` (every value per seed) and ``OUT/summary.md`` (mean ± standard deviation over seeds).
A finished run is not trained again, so an interrupted study picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.ablation import _metrics, _ms, evaluate


def train_pair(student: str, seed: int, teacher: Path, out: Path, steps: int, log,
               overrides: tuple[str, ...] = (), variants: dict[str, tuple[str, ...]] | None = None) -> list[Path]:
    """The distilled run (``steps`` steps) and its from-scratch twin side by side, one torch thread each; the twin
    is stopped (Ctrl-C: it checkpoints that step) when the distilled run ends, so both had the same wall-clock
    under the same load. ``overrides``: ``KEY=VALUE`` settings for every run. ``variants``: more distilled runs
    beside them (``{name: settings}``, e.g. ``{"channels": ("distill.init=teacher-channels",)}``), each as long as
    the distilled run. Returns the distilled run, the variants, then the twin."""
    variants = variants or {}
    names = ["distilled", *variants, "scratch"]
    runs = [out / f"{student}-{kind}-s{seed}" for kind in names]
    if all((run / "checkpoints" / "last").exists() for run in runs):
        log(f"[study] {student} seed {seed}: already trained")
        return runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "train", "--config", student, "--set", f"train.seed={seed}", "train.max_minutes=0", *overrides]
    distilled = [f"train.steps={steps}", "--teacher", str(teacher)]  # settings first: they belong to --set
    cmds = [base + distilled + ["--out", str(runs[0])]]
    cmds += [base + [*variants[name], *distilled, "--out", str(run)] for name, run in zip(variants, runs[1:-1])]
    cmds.append(base + ["train.steps=1000000", "--out", str(runs[-1])])
    for run in runs:
        if run.exists():  # a pair is trained together or not at all: an interrupted pair starts again
            shutil.rmtree(run)
    log(f"[study] {student} seed {seed}: distilling {steps} steps ({', '.join(names[:-1])}) beside the from-scratch twin")
    logs = [open(out / f"{run.name}.log", "w") for run in runs]
    t0 = time.time()
    try:
        procs = [subprocess.Popen(c, stdout=fh, stderr=subprocess.STDOUT, env=env) for c, fh in zip(cmds, logs)]
        if procs[0].wait() != 0:
            for proc in procs[1:]:
                proc.kill()
            raise RuntimeError(f"the distillation {runs[0]} failed: see {logs[0].name}")
        procs[-1].send_signal(signal.SIGINT)  # the twin checkpoints the step it is at and stops
        if procs[-1].wait(timeout=600) != 0:
            raise RuntimeError(f"the from-scratch twin {runs[-1]} failed: see {logs[-1].name}")
        minutes = round((time.time() - t0) / 60, 2)  # wall-clock of the pair, start-up included
        for run in (runs[0], runs[-1]):  # (an interrupted run logs no last record)
            (run / "study.json").write_text(json.dumps({"minutes": minutes}))
        for proc, run, fh in zip(procs[1:-1], runs[1:-1], logs[1:-1]):
            if proc.wait() != 0:
                raise RuntimeError(f"the distillation {run} failed: see {fh.name}")
            (run / "study.json").write_text(json.dumps({"minutes": round((time.time() - t0) / 60, 2)}))
    finally:
        for fh in logs:
            fh.close()
    return runs


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME:KEY=VALUE[:KEY=VALUE...]`` -> (NAME, settings)."""
    name, *settings = text.split(":")
    if not name.isidentifier() or "_" in name or not settings or not all("=" in x for x in settings):
        raise argparse.ArgumentTypeError(
            f"--variant {text!r}: give NAME:KEY=VALUE[:KEY=VALUE...], NAME letters and digits "
            "(e.g. channels:distill.init=teacher-channels)")
    return name, tuple(settings)


def measure_seed(teacher: Path, runs: list[Path]) -> list[dict]:
    """Evaluation of the teacher and its students in one call, and each student's fidelity to the teacher."""
    import torch

    from train.checkpoint import last_checkpoint, load_generator
    from train.config import load_config
    from train.data import build_dataset
    from train.distill import fidelity
    from train.macs import generator_cost

    reports = evaluate([teacher, *runs], runs[0].parent / f"eval-{teacher.name}-{runs[0].name}.json",
                       teacher / "config.yaml")
    teacher_g, info = load_generator(teacher)
    val_set = build_dataset(load_config(teacher / "config.yaml").data, "val")
    rows = []
    for i, (source, report) in enumerate(zip([teacher, *runs], reports)):
        g, ginfo = (teacher_g, info) if i == 0 else load_generator(source)
        m = report["metrics"]
        row = {"run": str(source), "macs": generator_cost(ginfo.num_classes, ginfo.generator, ginfo.image_size)[0],
               "fd": m.get("fid", {}).get("mean"), "kid": m.get("kid", {}).get("mean"),
               "label_consistency": m["label_consistency"]["mean"], "pixel_diversity": m.get("pixel_diversity")}
        row["steps"] = json.loads((last_checkpoint(source) / "state.json").read_text())["step"]
        pair = source / "study.json"
        if pair.exists():
            row["minutes"] = json.loads(pair.read_text())["minutes"]
        elif (rec := _metrics(source)) and "elapsed_s" in rec[-1]:  # the teacher: its own training time
            row["minutes"] = round(rec[-1]["elapsed_s"] / 60, 2)
        if i:
            with torch.no_grad():
                f = fidelity(g, teacher_g, val_set, 64, torch.device("cpu"))
            row["psnr_to_teacher"] = f["psnr_db"]
        rows.append(row)
    return rows


def summary_table(rows: dict[str, list[dict]]) -> str:
    head = ["generator", "seeds", "MACs", "FD (Lite2)", "KID x1000", "label consistency", "pixel diversity",
            "PSNR to teacher (dB)", "steps", "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in rows.items():
        def col(key, rs=rs):
            return [r.get(key) for r in rs]
        lines.append("| " + " | ".join([
            name, str(len(rs)), f"{rs[0]['macs'] / 1e6:.0f} M", _ms(col("fd"), 1),
            _ms([k * 1000 if k is not None else None for k in col("kid")], 1), _ms(col("label_consistency"), 3),
            _ms(col("pixel_diversity"), 4), _ms(col("psnr_to_teacher"), 2), _ms(col("steps"), 0),
            _ms(col("minutes"), 1)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", nargs="+", type=Path, required=True, help="finished teacher runs, one per seed")
    p.add_argument("--students", nargs="+", default=["synthetic-tiny-s8"])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="indices into --teachers (default: all)")
    p.add_argument("--steps", type=int, default=600, help="steps of each distillation (default 600, the teacher's)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="settings for both runs of each pair, as train's --set (e.g. train.keep_checkpoints=8)")
    p.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME:KEY=VALUE",
                   help="one more distilled run beside each pair with these settings, e.g. "
                        "channels:distill.init=teacher-channels (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds if args.seeds is not None else list(range(len(args.teachers)))

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    table: dict[str, list[dict]] = {"teacher": []}
    for seed in seeds:
        teacher = args.teachers[seed]
        runs = []
        for student in args.students:
            runs += train_pair(student, seed, teacher, args.out, args.steps, log, tuple(args.overrides),
                               dict(args.variant))
        log(f"[study] seed {seed}: evaluating")
        rows = measure_seed(teacher, runs)
        table["teacher"].append(rows[0])
        for run, row in zip(runs, rows[1:]):
            student, kind = run.name.rsplit("-s", 1)[0].rsplit("-", 1)
            table.setdefault(f"{student} {kind}", []).append(row)
        (args.out / "summary.json").write_text(json.dumps(table, indent=2))
        (args.out / "summary.md").write_text(summary_table(table) + "\n")
        log(f"[study] seed {seed} done\n" + summary_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
