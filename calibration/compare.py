"""The quality report every target shares: a candidate model against the FP32 reference on held-out samples.

A *runner* is any callable ``runner(batch) -> image`` taking ``{"label": int32 [B, H, W], "noise": float32
[B, ...]}`` and returning float [B, 3, H, W] in [-1, 1] (a torch module, an ONNX Runtime session, an OpenVINO
compiled model, each wrapped in a line). PSNR uses the [-1, 1] range (peak-to-peak 2), which equals PSNR on the
uint8 images up to their rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from calibration.sets import CalibrationSet
from dpsims.errors import InputError
from dpsims.progress import progress
from runtimes.imaging import psnr

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def run_all(runner: Runner, data: CalibrationSet, batch_size: int = 8) -> np.ndarray:
    """float32 [S, 3, H, W]: ``runner`` over every sample of ``data`` (a progress bar on a terminal)."""
    batches = progress(data.batches(batch_size), "quality check", total=-(-len(data) // max(1, batch_size)),
                       unit="batch")
    return np.concatenate([np.asarray(runner(b), dtype=np.float32) for b in batches])


def compare_images(reference: np.ndarray, candidate: np.ndarray, data: CalibrationSet | None = None) -> dict[str, Any]:
    """Numbers for two image stacks [S, 3, H, W] from the same inputs (``data``, for label consistency)."""
    if reference.shape != candidate.shape:
        raise InputError(f"reference images {reference.shape} and candidate images {candidate.shape} differ in shape.")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    value = psnr(reference, candidate)
    report: dict[str, Any] = {
        "psnr_db": None if math.isinf(value) else round(value, 2),
        "max_abs_error": round(float(diff.max()), 6),
        "mean_abs_error": round(float(diff.mean()), 6),
        "samples": int(len(reference)),
    }
    if data is not None and data.scenes is not None:
        from train.metrics import label_consistency

        ref_lc = label_consistency(reference, data.labels, data.scenes)
        cand_lc = label_consistency(candidate, data.labels, data.scenes)
        report.update(label_consistency_reference=round(ref_lc, 4), label_consistency=round(cand_lc, 4),
                      label_consistency_delta=round(cand_lc - ref_lc, 4))
    else:
        report["label_consistency_delta"] = None
        report["label_consistency_note"] = ("measured only on synthetic calibration maps (a fixed classifier knows "
                                            "their classes); for real data use python -m train.evaluate")
    return report


def compare(reference: Runner, candidate: Runner, data: CalibrationSet, batch_size: int = 8) -> dict[str, Any]:
    """PSNR, max/mean abs error and label-consistency delta of ``candidate`` against ``reference`` on ``data``."""
    return compare_images(run_all(reference, data, batch_size), run_all(candidate, data, batch_size), data)


def torch_runner(module: Any) -> Runner:
    """A runner for a torch generator (float32 output, no autograd)."""
    import torch

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(batch["label"]), torch.from_numpy(batch["noise"]))
        return out.float().numpy()

    return run
