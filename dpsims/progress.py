"""Progress bars for the long loops of calibration, export and evaluation: tqdm bars on stderr, shown on a
terminal and hidden elsewhere (logs, CI, pytest), and hidden whenever the project's logger (``dpsims``, or the one
given) is quieter than INFO (``-q`` / ``--log-level WARNING`` on the command lines). Without tqdm the loops simply
run (tqdm is imported inside the functions)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from dpsims.logs import ROOT

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, logger: str = ROOT,
             unit: str = "it") -> Iterable[T]:
    """``items`` wrapped in a tqdm bar named ``desc`` (removed when done), or ``items`` itself where no bar shows."""
    if not logging.getLogger(logger).isEnabledFor(logging.INFO):
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the train extra, which export and evaluate need
        return items
    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, disable=None, dynamic_ncols=True)


def bar(desc: str, total: int | None = None, logger: str = ROOT, unit: str = "it") -> Any:
    """A tqdm bar to ``update()`` by hand (for callbacks), or a stand-in that does nothing."""
    if logging.getLogger(logger).isEnabledFor(logging.INFO):
        try:
            from tqdm.auto import tqdm

            return tqdm(desc=desc, total=total, unit=unit, leave=False, disable=None, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def bars_and_logs() -> Iterator[None]:
    """Log records written through tqdm while bars are open, so a log line does not break a bar apart."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:  # pragma: no cover
        yield
        return
    with logging_redirect_tqdm():
        yield
