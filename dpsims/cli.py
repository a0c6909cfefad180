"""What every command line of dp-sims shares: its name as invoked, ``--version``, the usage examples of its module
docstring at the end of ``--help``, logging configured from ``-q/--log-level``, and user errors as one line
with exit code 2. Standard library only (no torch): the runtime CLI runs on devices without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpsims._version import __version__
from dpsims.errors import DpSimsError
from dpsims.logs import ROOT
from dpsims.optional import missing_module_message


def prog_name(module: str) -> str:
    """How the command was started: ``dpsims-export`` for the console script, ``python -m export`` for the module
    (argparse's own default would show ``__main__.py`` there on Python < 3.14)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = Path(argv0).name
    if not name or name == "-c" or name.endswith(".py"):
        return f"python -m {module}"
    return name


def _epilog(doc: str | None, module: str, prog: str, paragraphs: int | None = None) -> str | None:
    """The module docstring after its first paragraph (the usage examples and notes; the first ``paragraphs`` of
    them when given), with ``python -m MODULE`` written as the command was invoked."""
    if not doc:
        return None
    rest = "\n\n".join(textwrap.dedent(doc).strip("\n").split("\n\n")[1:][:paragraphs]).strip("\n")
    if not rest:
        return None
    rest = re.sub(rf"python -m {re.escape(module)}(?![\w.])", prog, rest)
    return "examples:\n" + rest if rest.startswith(" ") else rest


def make_parser(module: str, description: str, doc: str | None = None, logging_options: bool = True,
                doc_paragraphs: int | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser for ``python -m MODULE``: ``prog`` as invoked, ``description``, the docstring ``doc``'s
    examples (its paragraphs after the first; ``doc_paragraphs`` of them when given) as the epilog, kept as
    written, ``--version``, and ``-q``/``--log-level`` unless told otherwise."""
    prog = prog_name(module)
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     epilog=_epilog(doc, module, prog, doc_paragraphs),
                                     formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    add_version(parser)
    if logging_options:
        add_logging_options(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s (dp-sims) {__version__}")


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="WARNING", default="INFO",
                       help="only warnings and errors (no progress messages)")
    group.add_argument("--log-level", dest="log_level", type=str.upper, default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)")


def configure_logging(level: str | int = "INFO") -> None:
    """Log dp-sims' records (the ``dpsims`` logger namespace, ``dpsims.logs``) at ``level`` (INFO: the progress of
    long steps) and other libraries' from WARNING up, to stderr. Only a command line's main() calls this: library code never changes the logging setup
    of the process that imports it. A process that set up logging already (an app, pytest) keeps its handlers."""
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    root = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.basicConfig(level=root, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger(ROOT).setLevel(level)


def key_value(text: str) -> tuple[str, Any]:
    """argparse type of ``-o KEY=VALUE`` options: the value read as JSON where it is JSON (2 -> int, true ->
    bool, [1, 2] -> list), else kept as the string ("f32", "GPU")."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"options are KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def fail(prog: str, message: str) -> int:
    """Print a user error as one line on stderr; returns the exit code, 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)  # unwrapped: a command in it stays one line to copy
    return 2


def run_cli(prog: str, body: Callable[[], int], errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's body; a user error (:class:`dpsims.errors.DpSimsError`, and the command's own ``errors``,
    e.g. ``OSError`` for a command whose arguments are file paths) or a missing optional library is one line on
    stderr and exit code 2, not a traceback. Other exceptions (bugs) surface as they are."""
    try:
        return body()
    except (DpSimsError, *errors) as e:
        return fail(prog, str(e))
    except ImportError as e:
        if (message := missing_module_message(e, prog)) is None:
            raise
        return fail(prog, message)
