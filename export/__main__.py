"""``python -m export``: a trained generator -> a deployable artifact directory.

    python -m export --checkpoint runs/synthetic-tiny --target openvino --precision int8 --calib synthetic
    python -m export --checkpoint runs/ade --target tensorrt --precision int8    # calibrated on the run's dataset
    python -m export --target tensorrt --from artifacts/x/model.onnx --out engine_dir     # on the device, no torch

User errors (a bad checkpoint, option or calibration source, a missing package, a failed quality gate) print one
paragraph on stderr and exit with code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import sys

#: --batch when it is not given (export from a checkpoint; --from keeps the source artifact's)
DEFAULT_BATCH = (1, 1, 16)


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        h, w = (int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size is HxW (e.g. 256x512) or one number, got {text!r}") from None
    return h, w


def _psnr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 200:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"--min-psnr is a PSNR bar in dB (e.g. 30), got {text!r}")
    return value


def _batch(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch is min,opt,max (e.g. 1,1,16) or one number, got {text!r}") from None
    if len(values) == 1:
        return (1, values[0], values[0])
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"--batch is min,opt,max or one number, got {text!r}")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    from dpsims.cli import key_value, make_parser
    from runtimes.targets import TARGETS

    p = make_parser("export", "Export a DP-SIMS generator for deployment.", __doc__)
    p.add_argument("--checkpoint", help="run folder (its last checkpoint), checkpoint folder or generator .safetensors")
    p.add_argument("--target", required=True, choices=[*TARGETS, "triton"],
                   help="; ".join(f"{t.name}: {t.summary}" for t in TARGETS.values()) + "; triton: a Triton Inference Server model repository from the artifact --from DIR (export/triton.py)")
    p.add_argument("--precision", default=None,
                   help="fp32, fp16, int8 (coreml: int8 = int8 weights, w8a8 = int8 weights+activations; torch: bf16). "
                        "Default: fp32, or for --from the ONNX's own precision")
    p.add_argument("--calib", default=None,
                   help="calibration label maps: 'synthetic', a folder of label PNGs, or a dataset config with "
                        "data.root, e.g. RUN/config.yaml (default: synthetic for synthetic-trained models, else the "
                        "run folder's own config.yaml)")
    p.add_argument("--calib-samples", type=int, default=256, help="label maps in the calibration set (default 256)")
    p.add_argument("--calib-seed", type=int, default=None, help="seed of the synthetic maps and the noise")
    p.add_argument("--size", type=_size, default=None, help="HxW of the artifact (default: the training size)")
    p.add_argument("--batch", type=_batch, default=None,
                   help=f"min,opt,max batch (default {','.join(map(str, DEFAULT_BATCH))}; with --from: the source artifact's)")
    p.add_argument("--min-psnr", type=_psnr, default=30.0, help="INT8 quality bar against FP32 in dB (default 30)")
    p.add_argument("--out", default=None, help="artifact directory (default artifacts/RUN-TARGET-PRECISION)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--from", dest="from_onnx", default=None,
                   help="tensorrt: build from the model.onnx of an existing artifact (on the device; no torch); "
                        "triton: the artifact folder to put in a model repository (-o name=, kind=cpu|gpu, instances=, "
                        "max_queue_delay_us=)")
    p.add_argument("--dla", type=int, default=None, help="tensorrt: DLA core (Jetson AGX Orin / Orin NX)")
    p.add_argument("--image-output", action="store_true", help="coreml: an RGB image output for apps (batch 1)")
    p.add_argument("--option", "-o", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="target option, e.g. -o qdq_for=cpu, -o deployment_target=iOS18, -o workspace_gb=4")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dpsims.cli import configure_logging, prog_name, run_cli

    configure_logging(args.log_level)
    return run_cli(prog_name("export"), lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from dpsims.errors import ConfigError

    if args.target == "triton":
        return _triton_repository(args)
    if args.from_onnx:
        return _from_onnx(args)
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required (or --from model.onnx with --target tensorrt).")
    from export.api import export_generator

    options = dict(args.option)
    if args.dla is not None:
        options["dla"] = args.dla
    if args.image_output:
        options["image_output"] = True
    report = export_generator(
        args.checkpoint, args.target, args.precision or "fp32", calib=args.calib, calib_samples=args.calib_samples,
        calib_seed=args.calib_seed, size=args.size, batch=args.batch or DEFAULT_BATCH, min_psnr=args.min_psnr, out=args.out,
        overwrite=args.overwrite, options=options, log=_progress(args.log_level),
    )
    print(report.table())
    for note in report.notes:
        print(f"  {note}")
    print(f"artifact: {report.out_dir}  (manifest: {report.out_dir / 'model.json'})")
    return 0


def _progress(level: str):
    """Export's progress lines on stderr, silent with -q / --log-level WARNING and up."""
    if level in ("DEBUG", "INFO"):
        return lambda message: print(message, file=sys.stderr)
    return lambda message: None


def _triton_repository(args: argparse.Namespace) -> int:
    from dpsims.errors import ConfigError  # torch-free
    if not args.from_onnx or not args.out:
        raise ConfigError("--target triton needs --from ARTIFACT_DIR and --out REPO (the Triton model repository).")
    from export.triton import export_repository

    result = export_repository(args.from_onnx, args.out, dict(args.option), overwrite=args.overwrite)
    for note in result.notes:
        print(note)
    print(f"model repository: {args.out}  (model: {result.model_dir})")
    return 0


def _from_onnx(args: argparse.Namespace) -> int:
    from dpsims.errors import ConfigError  # torch-free: the device has no torch
    if args.target != "tensorrt":
        raise ConfigError("--from builds TensorRT engines; use it with --target tensorrt.")
    if not args.out:
        raise ConfigError("--from needs --out DIR (the TensorRT artifact folder; the source folder itself rebuilds in place).")
    from export.tensorrt import OPTIONS, export_from_onnx

    options = dict(args.option)
    unknown = sorted(set(options) - {"workspace_gb"})
    if unknown:
        raise ConfigError(f"--from takes -o workspace_gb=N only, not {', '.join(unknown)}.")
    workspace_gb = OPTIONS["workspace_gb"]("workspace_gb", options.get("workspace_gb", 2.0))
    result = export_from_onnx(args.from_onnx, args.out, args.precision, args.batch, args.dla,  # None: not given
                              workspace_gb=workspace_gb, overwrite=args.overwrite)
    for note in result.notes:
        print(note)
    print(f"artifact: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
