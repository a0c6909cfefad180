"""dpsims.files: atomic writes (all or nothing, no temporary file left) and file hashes."""

from __future__ import annotations

import hashlib

import pytest

from dpsims.files import atomic_path, atomic_write, sha256_file


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "model.json"
    assert atomic_write(path, "first") == path and path.read_text() == "first"
    atomic_write(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert [p.name for p in path.parent.iterdir()] == ["model.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last"
    path.write_text("step_0000010\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("step_00000")  # half written, then the writer fails
        raise RuntimeError("interrupted")
    assert path.read_text() == "step_0000010\n" and [p.name for p in tmp_path.iterdir()] == ["last"]


def test_sha256_file_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "w.bin").write_bytes(data)
    assert sha256_file(tmp_path / "w.bin", chunk=4096) == hashlib.sha256(data).hexdigest()
