"""Memory stability: call ``generate`` many times on one predictor and check that RSS stays flat.

    python benchmarks/memory_loop.py --model ARTIFACT_DIR [--calls 1000] [--batch 1]
    python benchmarks/memory_loop.py --build onnx            # a tiny test artifact, built in a temp folder

RSS is read after a warm-up (the first calls allocate arenas and caches) and then every tenth of the run; a
leak shows as steady growth between the checkpoints, not as the one-off step after the first call.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def build_tiny(target: str, folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import runtime_artifacts as ra

    return ra.build_artifact(folder, target, ra.tiny_generator(), ra.tiny_classes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from dpsims.cli import add_version

    add_version(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="artifact directory")
    source.add_argument("--build", choices=["onnx", "openvino", "torch"], help="build a tiny test artifact")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1, help="label maps per call")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-growth-mib", type=float, default=10.0, help="exit 1 when RSS grows more than this")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from runtimes import load_predictor

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_tiny(args.build, Path(tmp))
        with load_predictor(model, device=args.device) as predictor:
            rng = np.random.default_rng(0)
            h, w = predictor.input_size
            labels = rng.integers(0, predictor.num_classes, size=(args.batch, h, w), dtype=np.int32)
            for i in range(args.warmup):
                predictor.generate(labels, seed=i)
            before = rss_mib()
            checkpoints = []
            start = time.perf_counter()
            for i in range(args.calls):
                predictor.generate(labels, seed=i)
                if (i + 1) % max(1, args.calls // 10) == 0:
                    checkpoints.append(rss_mib())
            elapsed = time.perf_counter() - start
            after = rss_mib()
            print(f"{predictor.target} {predictor.precision} {h}x{w} batch {args.batch}: {args.calls} calls in {elapsed:.1f} s "
                  f"({1000 * elapsed / args.calls:.2f} ms/call)")
    print(f"RSS before {before:.1f} MiB, after {after:.1f} MiB, growth {after - before:+.1f} MiB")
    print("RSS every tenth: " + " ".join(f"{v:.1f}" for v in checkpoints))
    return 0 if after - before <= args.max_growth_mib else 1


if __name__ == "__main__":
    sys.exit(main())
