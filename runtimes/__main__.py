"""Command line: ``python -m runtimes generate`` and ``python -m runtimes info``.

    python -m runtimes generate --model DIR --label map.png --seed 0 --out out.png
    python -m runtimes generate --model DIR --label map.png --seed 0 --n 4 --out out.png          # out-0.png .. out-3.png
    python -m runtimes generate --model DIR --label map.png --seed 0 --n 4 --grid --out grid.png  # map + 4 images
    python -m runtimes info [--model DIR] [--json]
    python -m runtimes serve --model DIR [--host 127.0.0.1] [--port 8000] [--max-batch N]    # Triton (tritonserver)
    python -m runtimes generate --model http://127.0.0.1:8000/NAME --label map.png --seed 0 --out out.png

With ``--n N`` the variations use seeds SEED..SEED+N-1 and are written one file per seed (``STEM-SEED.png``), or
with ``--grid`` as one image: the colourised label map, then the N images, in one row. Without ``--seed`` a random
seed is drawn and printed, so a result can be reproduced. User errors print one paragraph on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.cli import configure_logging, key_value, make_parser, prog_name, run_cli
from dpsims.errors import DpSimsError, InputError
from runtimes import imaging
from runtimes.backends import BACKENDS, available_libraries
from runtimes.loader import load_predictor
from runtimes.spec import read_manifest


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("runtimes", "Run DP-SIMS generator artifacts.", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="synthesize images from a label map")
    gen.add_argument("--model", required=True, help="artifact directory (holding model.json)")
    gen.add_argument("--label", required=True, help="label map: PNG (palette, grey ids or class colours) or .npy")
    gen.add_argument("--out", required=True, help="output PNG")
    gen.add_argument("--seed", type=int, default=None, help="noise seed (default: random, printed)")
    gen.add_argument("--n", type=_positive_int, default=1, help="number of variations (seeds SEED..SEED+N-1)")
    gen.add_argument("--grid", action="store_true", help="with --n > 1: one image (label map + variations)")
    gen.add_argument("--scale", type=_positive_int, default=1,
                     help="enlarge each written image K times (nearest neighbour: every pixel a KxK block)")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], or the backend's names (GPU, NPU...)")
    gen.add_argument("--resize", action="store_true", help="resize a label map of another size (nearest)")
    gen.add_argument("--option", "-o", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="backend option, e.g. intra_op_num_threads=2 or inference_precision=bf16 (repeatable)")

    info = sub.add_parser("info", help="describe an artifact and the inference libraries of this machine")
    info.add_argument("--model", help="artifact directory (optional)")
    info.add_argument("--device", default="auto")
    info.add_argument("--no-open", action="store_true", help="do not open the backend (only read model.json)")
    info.add_argument("--json", action="store_true", help="print JSON")

    from runtimes.serve import add_arguments as add_serve_arguments  # numpy only

    add_serve_arguments(sub.add_parser("serve", help="serve an artifact on Triton Inference Server (the tritonserver binary; [serve] extra)"))
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(2**31))
    out = Path(args.out)
    if out.suffix.lower() not in ("", ".png"):
        raise InputError(f"--out {out}: images are written as PNG; give a .png file name.")
    if args.grid and args.n == 1:
        raise InputError("--grid puts several seeds side by side: use it with --n 2 or more.")
    with load_predictor(args.model, device=args.device, **dict(args.option)) as predictor:
        images = predictor.generate_variations(args.label, args.n, seed=seed, resize=args.resize)
        shown = images.repeat(args.scale, axis=1).repeat(args.scale, axis=2)
        if args.n == 1:
            written = [imaging.save_png(out, shown[0])]
        elif args.grid:
            labels, _ = predictor.prepare_labels(args.label, resize=args.resize)
            colours = predictor.colorize(labels).repeat(args.scale, axis=1).repeat(args.scale, axis=2)
            written = [imaging.save_png(out, imaging.image_grid(np.concatenate([colours, shown])))]
        else:
            written = [imaging.save_png(out.with_name(f"{out.stem}-{seed + i}{out.suffix or '.png'}"), image)
                       for i, image in enumerate(shown)]
    seeds = f"seed {seed}" if args.n == 1 else f"seeds {seed}..{seed + args.n - 1}"
    print(f"{predictor.target} {predictor.precision}, {seeds}: wrote {', '.join(str(p) for p in written)}")
    if args.n > 1:
        diversity = imaging.pixel_diversity([image[None] for image in images])
        print(f"the {args.n} images differ by {diversity:.3f} per pixel on average "
              "(pixel diversity: mean absolute difference between two seeds' images, 0..1 of the colour range)")
    return 0



def cmd_info(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {}
    if args.model and "://" in args.model:  # a served model (http://, grpc://): what its server and manifest say
        with load_predictor(args.model, device=args.device) as predictor:
            served = predictor.info()
        report["backend"] = served.pop("backend")
        report["artifact"] = served
    elif args.model:
        manifest = read_manifest(args.model)
        report["artifact"] = {
            "path": str(Path(args.model)),
            "target": manifest.target,
            "precision": manifest.precision,
            "input_size": manifest.input_size,
            "num_classes": manifest.num_classes,
            "ignore_id": manifest.ignore_id,
            "noise_shape": manifest.noise_shape,
            "batch": manifest.batch,
            "files": [f"{f.path} ({f.bytes} bytes)" for f in manifest.files],
            "quality": manifest.quality,
            "trained_on": manifest.trained_on,
        }
        report["backend"] = {"class": BACKENDS[manifest.target]}
        if not args.no_open:
            try:
                with load_predictor(args.model, device=args.device, verify=False) as predictor:
                    report["backend"] |= predictor.info()["backend"]
            except DpSimsError as e:  # info describes what is missing instead of failing
                report["backend"]["unavailable"] = str(e)
    report["libraries"] = available_libraries()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    for section, values in report.items():
        print(section)
        for key, value in values.items():
            if section == "libraries":
                value = _library_line(value)
            print(f"  {key:<18} {value}")


def _library_line(lib: dict[str, Any]) -> str:
    if not lib["installed"]:
        return "not installed"
    if "error" in lib:
        return f"installed but fails to import: {lib['error']}"
    devices = ", ".join(lib.get("devices", [])) or "-"
    note = f" ({lib['note']})" if lib.get("note") else ""
    return f"{lib['version']}  devices: {devices}{note}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return run_cli(prog_name("runtimes"), lambda: _run(args), errors=(OSError,))


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from runtimes.serve import run_from_args

        return run_from_args(args)
    return cmd_generate(args) if args.command == "generate" else cmd_info(args)


if __name__ == "__main__":
    sys.exit(main())
