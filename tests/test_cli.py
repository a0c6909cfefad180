"""What every command line shares (dpsims.cli): --version, the name it was invoked by, the docstring's usage
examples in --help, logging from -q/--log-level, user errors as one paragraph."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys

import pytest

import calibration
import export
import runtimes
import train
from dpsims import cli
from dpsims._version import __version__

# module -> the first words of the first usage example in its docstring
CLIS = {
    "train": "python -m train --config synthetic-tiny",
    "train.evaluate": "python -m train.evaluate --run RUN_DIR",
    "export": "python -m export --checkpoint runs/synthetic-tiny",
    "runtimes": "python -m runtimes generate --model DIR",
    "benchmarks.run": "python -m benchmarks.run --checkpoint runs/synthetic-tiny",
    "benchmarks.predictor_memory": "python -m benchmarks.predictor_memory --model ARTIFACT_DIR",
}


def _main(module: str):
    mod = importlib.import_module(module if module in ("train.evaluate", "benchmarks.run",
                                                       "benchmarks.predictor_memory") else f"{module}.__main__")
    return mod.main


def test_every_package_has_the_one_version():
    assert train.__version__ == export.__version__ == calibration.__version__ == runtimes.__version__ == __version__
    assert __version__.count(".") == 2 and all(part.isdigit() for part in __version__.split("."))


@pytest.mark.parametrize("module", sorted(CLIS))
def test_version_and_help_with_examples(module, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"/somewhere/{module.replace('.', '/')}/__main__.py"])
    main = _main(module)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"python -m {module} (dp-sims) {__version__}"
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: python -m {module} ")
    assert "\nexamples:\n    " + CLIS[module] in out


def test_help_names_the_console_script_it_was_started_as(capsys, monkeypatch):
    from export.__main__ import main

    monkeypatch.setattr(sys, "argv", ["/venv/bin/dpsims-export"])
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: dpsims-export ")
    assert "    dpsims-export --checkpoint runs/synthetic-tiny" in out and "python -m export" not in out


def test_prog_name():
    argv = sys.argv
    try:
        for argv0, expected in [("/x/export/__main__.py", "python -m export"), ("-c", "python -m export"),
                                ("", "python -m export"), ("/usr/local/bin/dpsims-export", "dpsims-export")]:
            sys.argv = [argv0]
            assert cli.prog_name("export") == expected
    finally:
        sys.argv = argv


def test_epilog_keeps_other_modules_commands():
    doc = """Title.

    python -m train --config x
    python -m train.evaluate --run y

Notes.
"""
    epilog = cli._epilog(doc, "train", "dpsims-train")
    assert epilog == "examples:\n    dpsims-train --config x\n    python -m train.evaluate --run y\n\nNotes."
    assert cli._epilog(doc, "train", "dpsims-train", paragraphs=1).endswith("--run y")
    assert cli._epilog("Only a title.", "train", "t") is None


def test_quiet_and_log_level(monkeypatch):
    from runtimes.__main__ import build_parser

    assert build_parser().parse_args(["info"]).log_level == "INFO"
    assert build_parser().parse_args(["-q", "info"]).log_level == "WARNING"
    assert build_parser().parse_args(["--log-level", "debug", "info"]).log_level == "DEBUG"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-q", "--log-level", "INFO", "info"])


def test_configure_logging_shows_this_package_at_info_and_others_from_warning():
    """In a fresh process (no handler yet): our INFO records reach stderr, a third-party library's INFO does not."""
    code = ("import logging; from dpsims.cli import configure_logging; configure_logging('INFO'); "
            "logging.getLogger('dpsims.export.gate').info('ours'); logging.getLogger('nncf').info('theirs'); "
            "logging.getLogger('nncf').warning('their warning')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "INFO dpsims.export.gate: ours" in r.stderr and "theirs" not in r.stderr and "their warning" in r.stderr
    code = code.replace("configure_logging('INFO')", "configure_logging('WARNING')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ours" not in r.stderr and "their warning" in r.stderr


def test_run_cli_turns_user_errors_into_one_paragraph(capsys):
    from dpsims.errors import ConfigError, InputError

    def raises(error):
        def body():
            raise error
        return body

    assert cli.run_cli("dpsims-x", raises(InputError("bad map"))) == 2
    assert capsys.readouterr().err == "dpsims-x: error: bad map\n"
    assert cli.run_cli("dpsims-x", raises(ConfigError("bad key")), ) == 2
    assert "dpsims-x: error: bad key" in capsys.readouterr().err
    missing = ModuleNotFoundError("No module named 'openvino'", name="openvino")
    assert cli.run_cli("dpsims-x", raises(missing)) == 2
    assert "pip install 'dp-sims[openvino]'" in capsys.readouterr().err
    with pytest.raises(KeyError):  # a bug is not a user error
        cli.run_cli("dpsims-x", raises(KeyError("x")))
    assert cli.run_cli("dpsims-x", lambda: 0) == 0


def test_logging_setup_is_left_to_an_app_that_made_its_own(caplog):
    """configure_logging adds no second handler where the process has one (pytest's, here, or an app's)."""
    handlers = list(logging.getLogger().handlers)
    cli.configure_logging("INFO")
    assert logging.getLogger().handlers == handlers


def test_key_value_options():
    import argparse

    assert cli.key_value("n=2") == ("n", 2) and cli.key_value("flag=true") == ("flag", True)
    assert cli.key_value("precision=f32") == ("precision", "f32") and cli.key_value("a=[1, 2]") == ("a", [1, 2])
    assert cli.key_value("empty=") == ("empty", "")
    for bad in ("novalue", "=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            cli.key_value(bad)
