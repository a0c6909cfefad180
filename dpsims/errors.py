"""The one error tree of dp-sims: every error the package raises on purpose derives from :class:`DpSimsError`.

A ``DpSimsError`` is caused by user input or the environment (a config, a dataset, a checkpoint, an artifact, a
label map, a missing optional library) and says what to do about it; every command line prints it as one line and
exits with code 2 (``dpsims.cli.run_cli``). Anything else is a bug and surfaces as a traceback. Each class also
derives from the built-in exception it refines (``ValueError``, ``ImportError``, ...), so ``except ValueError``
written against the standard library keeps working.
"""


class DpSimsError(Exception):
    """Root of every error dp-sims raises on purpose (never a bug)."""


# -- training side: configs, data, checkpoints, runs


class ConfigError(DpSimsError, ValueError):
    """A config key is unknown, has the wrong type, or the values contradict each other."""


class DataError(DpSimsError, ValueError):
    """A dataset folder is missing files, has the wrong layout, or holds an invalid label."""


class CheckpointError(DpSimsError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


class TrainingDiverged(DpSimsError, RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


# -- artifacts and runtimes


class ManifestError(DpSimsError, ValueError):
    """model.json is missing, of an unknown schema or target, or a listed file is missing or corrupt."""


class UnknownTarget(DpSimsError, KeyError):
    """A target name that no declaration in ``runtimes.targets`` has."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(DpSimsError, ValueError):
    """A label map or noise array given to ``generate`` does not fit the artifact."""


class BackendUnavailable(DpSimsError, ImportError):
    """The library a backend needs is not installed (the message names the pip extra), or the platform lacks it."""


class PredictorClosed(DpSimsError, RuntimeError):
    """``generate`` was called on a predictor after ``close()`` (or after its ``with`` block ended)."""
