"""Errors raised by `runtimes`; every one says what to do about it."""


class RuntimeErrorBase(Exception):
    """Base class of the errors `runtimes` raises on bad input or a broken artifact."""


class ManifestError(RuntimeErrorBase, ValueError):
    """model.json is missing, of an unknown schema or target, or a listed file is missing or corrupt."""


class InputError(RuntimeErrorBase, ValueError):
    """A label map or noise array given to ``generate`` does not fit the artifact."""


class BackendUnavailable(RuntimeErrorBase, ImportError):
    """The library a backend needs is not installed (the message names the pip extra), or the platform lacks it."""


class PredictorClosed(RuntimeErrorBase, RuntimeError):
    """``generate`` was called on a predictor after ``close()`` (or after its ``with`` block ended)."""
