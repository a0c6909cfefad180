"""Generate images on a Jetson with TensorRT from a folder of label-map PNGs, and report latency.

    python3 run_jetson.py --model artifacts/ade20k-trt-int8 --labels label_maps/ --out generated/
    python3 run_jetson.py --model artifacts/ade20k-trt-dla --labels label_maps/ --dla 0     # AGX Orin / Orin NX

The first run builds the TensorRT engine from the artifact's ONNX (minutes on a Jetson; its phases are logged to
stderr) and caches it beside the ONNX (model.engine + model.engine.json); later runs load it in seconds. Only
`runtimes` (numpy, pillow) and JetPack's TensorRT + cuda-python (or pycuda) are needed: no torch on the device.
An artifact exported with --dla runs on that DLA core; --gpu runs it on the GPU instead.

Exit codes: 0 done; 1 an error in the inputs (artifact, label maps); 2 TensorRT or a CUDA GPU is missing here:
everything before the engine (artifact, hashes, label maps) was checked, and the message says what to install.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runtimes import (
    BackendUnavailable,
    DpSimsError,
    Manifest,
    load_predictor,
    prepare_labels,
    read_manifest,
    save_png,
)

EXIT_OK, EXIT_ERROR, EXIT_NO_TENSORRT = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="TensorRT artifact folder (holds model.json, model.onnx)")
    p.add_argument("--labels", required=True, type=Path, help="folder of label-map PNGs (ids, palette or class colours)")
    p.add_argument("--out", type=Path, default=Path("generated"), help="where the images go (default: generated/)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first map; map i uses seed + i")
    p.add_argument("--runs", type=int, default=20, help="timed runs per map (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dla", type=int, default=None, metavar="CORE", help="build and run on this DLA core (Orin only)")
    where.add_argument("--gpu", action="store_true", help="run on the GPU even if the artifact was exported for DLA")
    p.add_argument("--quiet", action="store_true", help="no progress lines from the engine build")
    p.add_argument("--rebuild", action="store_true", help="rebuild the engine even when a cached one matches")
    return p.parse_args(argv)


def read_label_maps(folder: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """Every PNG of ``folder`` as int32 class ids at the artifact's size (colour-coded maps use its palette)."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"No .png label maps in {folder}.")
    # checked here (ids, colours, size), before minutes of engine building on the device
    return {path.stem: prepare_labels(path, manifest, resize=True)[0][0] for path in paths}


def jetson_status() -> dict[str, str]:
    """What decides the numbers: board, L4T release, power mode (nvpmodel) and whether clocks are pinned."""
    status = {"machine": platform.machine(), "python": platform.python_version()}
    model = Path("/proc/device-tree/model")
    if model.is_file():
        status["board"] = model.read_text(errors="replace").strip("\x00 \n")
    release = Path("/etc/nv_tegra_release")
    if release.is_file():
        status["l4t"] = release.read_text().splitlines()[0].strip("# ")
    if shutil.which("nvpmodel"):
        query = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, check=False)
        status["power_mode"] = " ".join(query.stdout.split()) or query.stderr.strip() or "unknown"
    return status


def configure_logging(quiet: bool) -> None:
    """Progress of the engine build (dpsims.runtimes.trt_engine: phases, minutes on a Jetson) on stderr, once."""
    logger = logging.getLogger("dpsims")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    for old in [h for h in logger.handlers if getattr(h, "_run_jetson", False)]:  # main() called again
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler._run_jetson = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1e3, q)), 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.quiet)
    if args.runs < 1 or args.warmup < 0:
        print(f"error: --runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}.", file=sys.stderr)
        return EXIT_ERROR
    try:
        manifest = read_manifest(args.model)  # checks every file's sha256
        if manifest.target != "tensorrt":
            print(f"note: {args.model} is a {manifest.target} artifact; this example is about TensorRT.", file=sys.stderr)
        maps = read_label_maps(args.labels, manifest)
    except (DpSimsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    status = jetson_status()
    print(json.dumps({"device": status, "maps": len(maps), "artifact": str(args.model), "precision": manifest.precision}))
    if "power_mode" in status:
        print("For stable numbers run `sudo nvpmodel -m 0 && sudo jetson_clocks` first (max power mode, pinned clocks).")

    device = f"dla:{args.dla}" if args.dla is not None else "cuda" if args.gpu else "auto"  # auto: as exported
    start = time.perf_counter()
    try:
        predictor = load_predictor(args.model, device=device, verify=False, rebuild=args.rebuild)
    except BackendUnavailable as e:
        print(f"TensorRT cannot run here: {e}\nThe artifact and {len(maps)} label map(s) were read and checked; "
              "run this script on the Jetson (see examples/jetson/README.md).", file=sys.stderr)
        return EXIT_NO_TENSORRT
    except DpSimsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    open_seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    latencies: list[float] = []
    with predictor:
        backend = predictor.info()["backend"]
        for i, (stem, labels) in enumerate(maps.items()):
            seed = args.seed + i
            for _ in range(args.warmup):
                predictor.generate(labels, seed=seed)
            for _ in range(args.runs):
                t0 = time.perf_counter()
                image = predictor.generate(labels, seed=seed)  # end to end: noise, copies, engine, uint8 image
                latencies.append(time.perf_counter() - t0)
            save_png(args.out / f"{stem}.png", image)
        batch = predictor.max_batch
        stacked = np.stack([maps[s] for s in list(maps) * batch][:batch])
        predictor.generate(stacked, seed=args.seed)
        t0 = time.perf_counter()
        predictor.generate(stacked, seed=args.seed)
        batch_seconds = time.perf_counter() - t0

    report = {
        "engine": backend.get("engine"),
        "engine_cache": backend.get("engine_cache"),
        "open_seconds": round(open_seconds, 2),
        "gpu": backend.get("gpu"),
        "tensorrt": backend.get("library"),
        "dla_core": args.dla,
        "latency_ms": {"median": percentile_ms(latencies, 50), "p90": percentile_ms(latencies, 90), "samples": len(latencies)},
        "throughput_images_per_s": round(batch / batch_seconds, 1),
        "batch": batch,
        "out": str(args.out),
    }
    print(json.dumps(report, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
