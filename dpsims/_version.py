"""The version of dp-sims: the one place it is written (pyproject.toml reads it from here, every package re-exports
it as ``__version__``, every command line prints it with ``--version``)."""

__version__ = "0.1.0"
