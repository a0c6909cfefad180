"""User-facing errors of the training package: the CLI prints them as one paragraph and exits with code 2."""


class DpSimsError(Exception):
    """Base class of errors caused by user input (config, data, checkpoint); never a bug."""


class ConfigError(DpSimsError, ValueError):
    """A config key is unknown, has the wrong type, or the values contradict each other."""


class DataError(DpSimsError, ValueError):
    """A dataset folder is missing files, has the wrong layout, or holds an invalid label."""


class CheckpointError(DpSimsError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


class TrainingDiverged(DpSimsError, RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""
