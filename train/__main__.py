"""``python -m train``: train DP-SIMS from a preset or YAML config.

    python -m train --config synthetic-tiny [--out RUN_DIR] [--set key=value ...]
    python -m train --resume RUN_DIR [--set train.steps=...]
    python -m train --config synthetic-tiny-s8 --teacher runs/tiny     # distil a 1/8-cost student from a run
    torchrun --nproc_per_node 8 -m train --config ade20k-256 --set data.root=/data/ade
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from dpsims.cli import make_parser

    p = make_parser("train", "Train DP-SIMS (semantic image synthesis GAN).", __doc__)
    p.add_argument("--config", help="preset name (e.g. synthetic-tiny) or YAML file")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.batch_size=8 train.steps=1000 (several per --set, --set repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--teacher", metavar="RUN_DIR",
                   help="distil: train the config's generator (the student) against this finished run's EMA generator "
                        "(its newest checkpoint; the same as --set distill.teacher=RUN_DIR)")
    p.add_argument("--backbone-weights", metavar="PATH|pip:NAME",
                   help="ImageNet weights of the discriminator backbone: a local .safetensors file or weights-only state "
                        "dict of the timm model, or pip:efficientnet-lite0 (the [pretrained] extra's package)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p.parse_args(argv)


def _main_process() -> bool:
    """Under torchrun only rank 0 logs and prints (every rank trains)."""
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dpsims.cli import configure_logging, prog_name, run_cli

    configure_logging(args.log_level if _main_process() else "ERROR")
    return run_cli(prog_name("train"), lambda: run(args))


def run(args: argparse.Namespace) -> int:
    import yaml

    from train.config import load_config

    overrides = list(args.overrides)
    if args.backbone_weights:
        overrides.append(f"model.discriminator.weights={args.backbone_weights}")
    if args.teacher:
        overrides.append(f"distill.teacher={args.teacher}")
    if args.resume and (args.config or args.out):
        from dpsims.errors import ConfigError

        raise ConfigError(f"--resume {args.resume} continues that run with its own config.yaml and folder: drop "
                          "--config/--out (change values with --set), or start a new run without --resume.")
    if args.resume:
        if not (args.resume / "config.yaml").exists():
            from dpsims.errors import CheckpointError

            raise CheckpointError(f"Cannot resume {args.resume}: it has no config.yaml. Give a run folder written by `python -m train`.")
        cfg = load_config(args.resume / "config.yaml", overrides)
        run_dir = args.resume
    else:
        if not args.config:
            from dpsims.errors import ConfigError

            raise ConfigError("Give --config PRESET_OR_YAML (e.g. --config synthetic-tiny) or --resume RUN_DIR.")
        cfg = load_config(args.config, overrides)
        run_dir = args.out or Path("runs") / cfg.name
        if run_dir.exists() and not run_dir.is_dir():
            from dpsims.errors import ConfigError

            raise ConfigError(f"--out {run_dir} is a file; give a folder for the run (it is created if missing).")
        if (run_dir / "checkpoints" / "last").exists() and not args.print_config:
            from dpsims.errors import ConfigError

            raise ConfigError(
                f"{run_dir} already holds a training run. Continue it with --resume {run_dir}, or choose another --out."
            )
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0

    if cfg.distill.teacher:
        from train.distill import distill as train
    else:
        from train.loop import train

    train(cfg, run_dir, resume=bool(args.resume))
    if not _main_process():
        return 0
    from train.checkpoint import last_checkpoint

    ck = last_checkpoint(run_dir)
    samples = sorted((run_dir / "samples").glob("*.png"))
    print(f"\nrun folder:      {run_dir}")
    print(f"config:          {run_dir / 'config.yaml'}")
    print(f"metrics:         {run_dir / 'metrics.jsonl'}")
    if ck:
        print(f"last checkpoint: {ck}")
    if samples:
        print(f"latest samples:  {samples[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
