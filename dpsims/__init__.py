"""What every dp-sims package shares, owned by none of them: the version, the error tree, atomic files, the
command-line frame, logging and progress bars, optional imports. Standard library only at import (numpy is not
needed either), and it imports no other package of the project: ``train``, ``export``, ``calibration`` and
``runtimes`` all import it, never the other way (docs/design.md, "Layout").
"""

from dpsims._version import __version__
from dpsims.errors import DpSimsError

__all__ = ["__version__", "DpSimsError"]
