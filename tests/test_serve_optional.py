"""The serving modules import without their optional packages, and name the extra when one is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtimes import BackendUnavailable, load_predictor


def test_serving_modules_import_with_numpy_only():
    code = (
        "import sys, runtimes, runtimes.serve, runtimes.remote, export.triton\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tritonclient', 'pytriton', 'gevent', 'grpc', 'torch', 'onnx', 'openvino'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["tritonclient.http", "tritonclient.grpc"])
def test_remote_predictor_names_the_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    scheme = "grpc" if module.endswith("grpc") else "http"
    with pytest.raises(BackendUnavailable, match=r"pip install 'dp-sims\[serve\]'"):
        load_predictor(f"{scheme}://127.0.0.1:1/model")


def test_server_says_where_to_get_tritonserver(monkeypatch):
    import importlib.util

    from runtimes.serve import ServerNotFound, find_triton

    monkeypatch.delenv("DPSIMS_TRITONSERVER", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ServerNotFound, match="pip install --no-deps nvidia-pytriton"):
        find_triton()


def test_server_library_path_appends_this_interpreters_libdir(monkeypatch, caplog):
    """The server's LD_LIBRARY_PATH keeps the environment's own first and appends LIBDIR (the stub's libpython);
    a statically linked Python gets a warning instead, naming the fix."""
    import os
    import sysconfig

    from runtimes import serve

    libdir = sysconfig.get_config_var("LIBDIR")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other/lib")
    monkeypatch.setattr(serve, "static_python", lambda: False)
    assert serve.library_path(["/opt/triton/libs"]).split(os.pathsep) == ["/opt/other/lib", "/opt/triton/libs", libdir]
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/other/lib"  # this process's own is untouched
    monkeypatch.setattr(serve, "static_python", lambda: True)
    with caplog.at_level("WARNING", logger="dpsims"):
        assert serve.library_path().split(os.pathsep) == ["/opt/other/lib"]
    assert "linked statically" in caplog.text and "--enable-shared" in caplog.text
