"""Peak resident memory of one predictor in a process of its own (what an app using only that backend pays).

    python -m benchmarks.predictor_memory --model ARTIFACT_DIR [--batch 1] [--calls 5] [--device cpu]

Prints one JSON line: ``base_mib`` (Python + numpy + runtimes imported), ``loaded_mib`` (after
``load_predictor``), ``peak_mib`` (the process's peak resident set after ``--calls`` generate calls) and
``peak_over_base_mib``. ``benchmarks.run`` calls it once per artifact, because in its own process every backend's
libraries and arenas pile up and a per-backend peak cannot be read there.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    value = _status_mib("VmRSS")
    return peak_rss_mib() if value is None else value


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM belongs to the process image and starts afresh at exec; getrusage's
    ru_maxrss (the fallback off Linux) keeps the forking parent's peak, so a child of a big process reads big."""
    value = _status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if value is None else value


def measure(model: str, batch: int = 1, calls: int = 5, device: str = "cpu") -> dict[str, float]:
    from runtimes import load_predictor

    base = current_rss_mib()
    with load_predictor(model, device=device) as predictor:
        loaded = current_rss_mib()
        h, w = predictor.input_size
        labels = np.random.default_rng(0).integers(0, predictor.num_classes, size=(batch, h, w), dtype=np.int32)
        for i in range(calls):
            predictor.generate(labels, seed=i)
        peak = peak_rss_mib()
    return {"base_mib": round(base, 1), "loaded_mib": round(loaded, 1), "peak_mib": round(peak, 1),
            "peak_over_base_mib": round(peak - base, 1)}


def main(argv: list[str] | None = None) -> int:
    from dpsims.cli import make_parser

    p = make_parser("benchmarks.predictor_memory", __doc__.split("\n\n")[0], __doc__, logging_options=False)
    p.add_argument("--model", required=True, help="artifact directory")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.batch, args.calls, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
