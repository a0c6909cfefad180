"""The INT8 accuracy gate: quantize, measure PSNR against FP32 on held-out samples, and while it is below the bar
keep more layers in float and try again; fail with every measured number if nothing reaches it.

Layers are chosen by their node names (module paths of the generator, identical in the ONNX and in the OpenVINO
model converted from it). The steps, each adding to the previous one, follow what the quantization literature
keeps out of INT8 first:

1. the label stem, the to-RGB convolution, the two attention matmuls (scores q.k and their product with v), whose
   softmax range int8 represents badly, and the context blocks' MLPs, whose inputs carry the per-channel outliers
   known from transformers (measured on the synthetic-tiny generator: quantizing only the MLPs costs the most,
   26.8 dB alone, against 36-67 dB for any other group);
2. ``+ attention projections and label head``: every q/kv/out projection and the low-resolution head;
3. ``+ label encoder``: every remaining layer of the label encoder (downsampling, position and lateral convs);
4. ``+ SPADE modulation``: the convolutions that predict the per-pixel scale and shift;
5. ``+ finest block``: every layer of the full-resolution residual block.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from train.errors import DpSimsError


class ExportQualityError(DpSimsError):
    """The quantized model does not reach the quality bar (or cannot be measured)."""


LEVELS: list[tuple[str, list[str]]] = [
    ("first/last conv, attention scores, context MLPs",
     [r"/encoder/stem/", r"/to_rgb/", r"/attn_\w+/MatMul(_\d+)?$", r"/mlp/"]),
    ("+ attention projections and label head", [r"/attn_\w+/", r"/head/"]),
    ("+ label encoder", [r"^/encoder/"]),
    ("+ SPADE modulation", [r"/(norm\d|skip_norm)/(gamma|beta)/", r"/shared/"]),
    ("+ finest block", ["{last_block}"]),
]

def exclusion_levels(names: list[str]) -> list[tuple[str, list[str]]]:
    """``[(description, node names kept float)]``, cumulative, for the quantizable nodes ``names``."""
    blocks = sorted({int(m.group(1)) for n in names if (m := re.match(r"/blocks\.(\d+)\.", n))})
    last = rf"/blocks\.{blocks[-1]}\." if blocks else r"^$"
    levels, patterns = [], []
    for description, pats in LEVELS:
        patterns += [p.replace("{last_block}", last) for p in pats]
        kept = [n for n in names if any(re.search(p, n) for p in patterns)]
        if not levels or len(kept) > len(levels[-1][1]):
            levels.append((description, kept))
    return levels


def run_gate(attempt: Callable[[list[str]], tuple[dict[str, Any], Any]], levels: list[tuple[str, list[str]]],
             min_psnr: float, what: str, progress: Callable[[str], None] | None = print) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Try ``attempt(kept_float_names)`` level by level until its quality's ``psnr_db`` >= ``min_psnr``.

    Returns ``(quality, kept, extra)`` where ``kept`` describes the float layers for the manifest."""
    tried = []
    for i, (description, names) in enumerate(levels):
        quality, extra = attempt(names)
        value = quality.get("psnr_db")
        value = float("inf") if value is None else float(value)
        tried.append(f"{description}: {value:.2f} dB")
        if progress is not None:
            progress(f"[{what}] gate step {i + 1}/{len(levels)} ({description}, {len(names)} layers float): "
                     f"PSNR {value:.2f} dB (bar {min_psnr:.1f})")
        if value >= min_psnr:
            kept = {"level": description, "layers": names, "attempts": tried}
            return quality, kept, extra
    raise ExportQualityError(
        f"{what}: no quantization reached PSNR {min_psnr:.1f} dB against FP32 ({'; '.join(tried)}). Try more "
        "calibration samples (--calib-samples), calibration maps from the training data (--calib), a lower "
        "--min-psnr if the images still look right, or ship the fp16 artifact."
    )
