"""File helpers every package shares (standard library only): atomic writes and file hashes.

Files that a reader must never see half-written (model.json, checkpoints and their ``last`` pointer, sample grids,
TensorRT engines) are written under a temporary name in the same folder, flushed to disk and renamed over the
target: a crash at any moment leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that takes a file name (``save_file(..., tmp)``,
    ``image.save(tmp)``); when the block succeeds the file is synced to disk and renamed over ``path``, when it
    fails it is removed. The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text as ``encoding``) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode(encoding) if isinstance(data, str) else bytes(data))
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks (artifacts and weight files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
