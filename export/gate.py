"""The INT8 accuracy gate: quantize, measure PSNR against FP32 on held-out samples, and while it is below the bar
keep more layers in float and try again; fail with every measured number if nothing reaches it. The loop is
:func:`run_gate`; :func:`export.api.convert_measured` runs it for every target, each attempt a conversion by the
target's converter measured through ``load_predictor`` on the staged artifact.

Layers are chosen by their node names (module paths of the generator, identical in the ONNX and in the OpenVINO
model converted from it). The steps, each adding to the previous one, follow what the quantization literature
keeps out of INT8 first:

1. the label stem (a table lookup in exported graphs; a conv where an older graph has one), the to-RGB
   convolution and the two attention matmuls (scores q.k and their product with v), whose softmax range int8
   represents badly;
2. ``+ context MLPs``: the context blocks' MLPs, whose inputs carry the per-channel outliers known from
   transformers (on an earlier synthetic-tiny generator quantizing only the MLPs cost the most, 26.8 dB alone,
   against 36-67 dB for any other group; the current one passes at 38.6 dB with them in INT8). They are a step
   of their own because they are also the largest float cost left: at 256x256 the full-resolution MLP is 8.6
   GFLOP, and keeping them in INT8 took the paper-size OpenVINO INT8 generator from 5.4x to 6.8x torch eager on
   an AMX CPU;
3. ``+ attention projections and label head``: every q/kv/out projection and the low-resolution head;
4. ``+ label encoder``: every remaining layer of the label encoder (downsampling, position and lateral convs);
5. ``+ SPADE modulation``: the convolutions that predict the per-pixel scale and shift;
6. ``+ finest block``: every layer of the full-resolution residual block;

then, if the bar is still not reached, the worst layers by measured sensitivity (:func:`run_gate`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dpsims.errors import DpSimsError
from dpsims.logs import get_logger
from dpsims.progress import bar, bars_and_logs

log = get_logger(__name__)


class ExportQualityError(DpSimsError):
    """The quantized model does not reach the quality bar (or cannot be measured)."""


LEVELS: list[tuple[str, list[str]]] = [
    ("first/last conv, attention scores", [r"/encoder/stem/", r"/to_rgb/", r"/attn_\w+/MatMul(_\d+)?$"]),
    ("+ context MLPs", [r"/mlp/"]),
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


def module_groups(names: list[str], max_groups: int = 12) -> dict[str, list[str]]:
    """Layers grouped by module path (``/blocks.3.0/norm0/gamma/Conv`` -> ``blocks.3.0/norm0``...), at the deepest
    level that gives at most ``max_groups`` groups: the units the sensitivity stage measures."""
    def path(name: str) -> list[str]:
        return [c for c in name.strip("/").split("/") if c and not c[0].isupper()]  # drop op parts (Conv, MatMul...)

    groups: dict[str, list[str]] = {}
    for depth in (4, 3, 2, 1):
        groups = {}
        for n in names:
            groups.setdefault("/".join(path(n)[:depth]) or n, []).append(n)
        if len(groups) <= max_groups:
            break
    return groups


def run_gate(attempt: Callable[[list[str]], tuple[dict[str, Any], Any]], levels: list[tuple[str, list[str]]],
             min_psnr: float, what: str, progress: Callable[[str], None] | None = log.info,
             names: list[str] | None = None, max_groups: int = 12) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Try ``attempt(kept_float_names)`` level by level until its quality's ``psnr_db`` >= ``min_psnr``.

    When every fixed level fails and ``names`` (all quantizable layers) is given, a sensitivity stage follows:
    each remaining module group is quantized alone (everything else float) and scored, then groups are kept
    float worst-first, on top of the last level, until the bar is reached. Returns ``(quality, kept, extra)``
    where ``kept`` describes the float layers for the manifest.

    ``progress`` receives one line per measurement (default: this module's logger at INFO, which the command
    lines show unless -q); on a terminal a tqdm bar counts the levels and the sensitivity probes."""
    with bars_and_logs():
        return _run_gate(attempt, levels, min_psnr, what, progress, names, max_groups)


def _run_gate(attempt, levels, min_psnr, what, progress, names, max_groups):
    tried: list[str] = []
    values: list[float] = []

    def measure(description: str, kept: list[str], step: str) -> tuple[float, dict[str, Any], Any]:
        quality, extra = attempt(kept)
        value = quality.get("psnr_db")
        value = float("inf") if value is None else float(value)
        tried.append(f"{description}: {value:.2f} dB")
        values.append(value)
        if progress is not None:
            progress(f"[{what}] gate {step} ({description}, {len(kept)} layers float): PSNR {value:.2f} dB (bar {min_psnr:.1f})")
        return value, quality, extra

    steps = bar(f"{what} gate", total=len(levels), unit="level")
    try:
        for i, (description, kept) in enumerate(levels):
            value, quality, extra = measure(description, kept, f"step {i + 1}/{len(levels)}")
            steps.update()
            steps.set_postfix_str(f"{value:.2f} dB")
            if value >= min_psnr:
                return quality, {"level": description, "layers": kept, "attempts": tried}, extra
    finally:
        steps.close()

    rest = [n for n in (names or []) if n not in set(levels[-1][1] if levels else [])]
    if rest:
        groups = module_groups(rest, max_groups)
        scores = {}
        probes = bar(f"{what} sensitivity", total=len(groups), unit="group")
        try:
            for j, (group, members) in enumerate(groups.items()):
                quality, _ = attempt([n for n in names if n not in set(members)])
                value = quality.get("psnr_db")
                scores[group] = float("inf") if value is None else float(value)
                probes.update()
                if progress is not None:
                    progress(f"[{what}] sensitivity {j + 1}/{len(groups)}: only {group} quantized: {scores[group]:.2f} dB")
        finally:
            probes.close()
        kept = list(levels[-1][1]) if levels else []
        added: list[str] = []
        for group in sorted(groups, key=scores.get)[:-1]:  # all groups float would be no quantization at all
            kept += groups[group]
            added.append(group)
            description = f"+ most sensitive: {', '.join(added)}"
            value, quality, extra = measure(description, kept, f"sensitivity step {len(added)}")
            if value >= min_psnr:
                return quality, {"level": description, "layers": kept, "attempts": tried,
                                 "sensitivity_db": {g: round(v, 2) for g, v in scores.items()}}, extra
    raise ExportQualityError(
        f"{what}: no quantization reached PSNR {min_psnr:.1f} dB against FP32 ({'; '.join(tried)}). Try more "
        "calibration samples (--calib-samples), calibration maps from the training data (--calib), a lower "
        "--min-psnr if the images still look right, or ship the fp16 artifact. The best attempt reached PSNR "
        f"{max(values, default=float('nan')):.2f} dB against FP32, below --min-psnr {min_psnr:.1f}."
    )
