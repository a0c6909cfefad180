"""The sensitivity stage of the INT8 gate: after the fixed levels fail, groups are scored quantized alone and kept
float worst-first."""

from __future__ import annotations

import pytest

from export.gate import ExportQualityError, module_groups, run_gate

NAMES = ["/a/x/Conv", "/a/y/MatMul", "/b/z/Conv", "/c/w/Conv/WithoutBiases"]


def fake_attempt(calls):
    def attempt(kept):
        quantized = [n for n in NAMES if n not in kept]
        calls.append(sorted(kept))
        psnr = 50.0 - 20.0 * sum(n.startswith("/b/") for n in quantized) - 5.0 * sum(n.startswith("/c/") for n in quantized)
        return {"psnr_db": psnr}, None
    return attempt


def test_groups_follow_module_paths_and_drop_op_names():
    assert module_groups(NAMES, max_groups=3) == {"a": NAMES[:2], "b": [NAMES[2]], "c": [NAMES[3]]}
    assert len(module_groups(NAMES, max_groups=10)) == 4  # deeper paths when they fit: a/x, a/y, b/z, c/w


def test_worst_group_is_kept_float_first_and_recorded():
    calls = []
    quality, kept, _ = run_gate(fake_attempt(calls), [("defaults", [])], 40.0, "t", progress=None, names=NAMES, max_groups=3)
    assert quality["psnr_db"] == 45.0  # b float, a and c quantized
    assert kept["layers"] == ["/b/z/Conv"] and "b" in kept["level"]
    assert kept["sensitivity_db"] == {"a": 50.0, "b": 30.0, "c": 45.0}
    assert len(calls) == 1 + 3 + 1  # the fixed level, three scores, one cumulative step


def test_nothing_reaching_the_bar_lists_every_attempt():
    with pytest.raises(ExportQualityError) as e:
        run_gate(fake_attempt([]), [("defaults", [])], 60.0, "t", progress=None, names=NAMES, max_groups=3)
    text = str(e.value)
    assert "defaults: 25.00 dB" in text and "+ most sensitive: b: 45.00 dB" in text and "+ most sensitive: b, c: 50.00 dB" in text
