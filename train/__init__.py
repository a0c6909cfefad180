"""Train DP-SIMS: configs, data, models, losses, the training loop, checkpoints, evaluation."""

from dpsims._version import __version__

__all__ = ["__version__"]
