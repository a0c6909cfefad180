"""The target registry (runtimes/targets.py): every table that lists targets reads it, and each declaration
points at code that exists."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from runtimes import spec
from runtimes.backends import BACKENDS, EXTRAS
from runtimes.targets import PRECISIONS, TARGETS, target_of

pytest.importorskip("torch")


def test_every_declaration_points_at_existing_code():
    from pathlib import Path

    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, t in TARGETS.items():
        assert t.name == name and t.summary
        module, _, cls = t.backend.partition(":")
        assert importlib.util.find_spec(module) is not None, t.backend
        exporter = importlib.import_module(t.exporter)
        assert callable(exporter.export) and all(callable(c) for c in exporter.OPTIONS.values()), name
        assert t.extra in extras, (name, t.extra)
        for _, extra in (*t.needs, *(n for needs in t.precision_needs.values() for n in needs)):
            assert extra in extras, (name, extra)
        assert set(t.aliases.values()) <= set(t.precisions) and set(t.precision_needs) <= set(t.precisions)
    with pytest.raises(KeyError, match="known targets: torch, onnx"):
        target_of("tflite")


def test_the_other_tables_are_read_from_the_registry():
    from export.__main__ import build_parser
    from export.triton import TRITON_TARGETS

    assert spec.TARGETS == tuple(TARGETS) and spec.PRECISIONS == PRECISIONS
    assert BACKENDS == {n: t.backend for n, t in TARGETS.items()} and EXTRAS == {n: t.extra for n, t in TARGETS.items()}
    target_arg = next(a for a in build_parser()._actions if a.dest == "target")
    assert list(target_arg.choices) == [*TARGETS, "triton"]
    assert all(t.summary in target_arg.help for t in TARGETS.values())
    assert set(TRITON_TARGETS) == {"onnx", "openvino", "tensorrt"}


@pytest.mark.parametrize("target", list(TARGETS))
def test_options_precisions_and_aliases_follow_the_declaration(target):
    from dpsims.errors import ConfigError
    from export.api import check_options, normalize_precision, target_options

    t = TARGETS[target]
    for p in t.precisions:
        assert normalize_precision(target, p) == p
    for alias, meaning in t.aliases.items():
        assert normalize_precision(target, alias) == meaning
    with pytest.raises(ConfigError, match=f"The {target} target exports"):
        normalize_precision(target, "int3")
    with pytest.raises(ConfigError, match="does not use -o no_such_option"):
        check_options(target, {"no_such_option": 1})
    assert set(target_options(target)) == set(importlib.import_module(t.exporter).OPTIONS)


def test_option_checks_normalise_and_refuse():
    from dpsims.errors import ConfigError
    from export.api import check_options

    assert check_options("tensorrt", {"workspace_gb": "4", "qdq_for": "CPU"}) == {"workspace_gb": 4.0, "qdq_for": "cpu"}
    with pytest.raises(ConfigError, match="opset must be an integer within 14..20"):
        check_options("onnx", {"opset": 21})
    with pytest.raises(ConfigError, match="image_output must be true or false"):
        check_options("coreml", {"image_output": "yes"})
