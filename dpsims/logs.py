"""The project's loggers: every module logs under one namespace, ``dpsims`` (``dpsims.export.gate``,
``dpsims.train.loop``, ...), so an app quiets or raises all of dp-sims with ``logging.getLogger("dpsims")`` and a
command line's ``-q/--log-level`` sets that one logger (``dpsims.cli.configure_logging``). Library code only
creates loggers; it never changes the logging setup of the process that imports it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

#: the parent logger of every logger in dp-sims
ROOT = "dpsims"


def get_logger(module: str) -> logging.Logger:
    """The logger of ``module`` (pass ``__name__``) inside the project's namespace."""
    return logging.getLogger(module if module == ROOT or module.startswith(ROOT + ".") else f"{ROOT}.{module}")


@contextlib.contextmanager
def quieted(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the logger ``name`` (a library that sets up its own handler and INFO level, such as nncf) to ``level``
    while the block runs, and put its own level back after: the process's logging setup is left as it was."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(max(level, saved))
    try:
        yield
    finally:
        logger.setLevel(saved)
