"""Import optional libraries only when a backend opens, with an error that names the pip extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from runtimes.errors import BackendUnavailable


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailable` saying ``pip install 'dp-sims[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # also covers sys.modules[module] = None in tests
        raise BackendUnavailable(
            f"{what or module} is not installed ({e}). Install it with: pip install 'dp-sims[{extra}]'"
        ) from None
