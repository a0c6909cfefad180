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


def test_server_names_the_extra(monkeypatch, tmp_path):
    from runtimes.serve import TritonServer

    monkeypatch.setitem(sys.modules, "pytriton", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'dp-sims\[serve\]'"):
        TritonServer(tmp_path)


def test_serve_command_names_the_extra_without_pytriton(tmp_path):
    code = ("import sys; sys.modules['pytriton'] = None\n"
            "from runtimes.__main__ import main\n"
            f"sys.exit(main(['serve', '--model', {str(tmp_path)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "pip install 'dp-sims[serve]'" in result.stderr


def test_server_environment_puts_this_interpreters_libpython_first(monkeypatch):
    """The Triton server (and its Python backend stub) must load this interpreter's libpython, not the system's
    of the same version: LIBDIR leads LD_LIBRARY_PATH while the server starts; the process's own is restored."""
    import os
    import sysconfig

    from runtimes.serve import _python_library_path

    libdir = sysconfig.get_config_var("LIBDIR")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other/lib")
    with _python_library_path():
        assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/opt/other/lib"]
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/other/lib"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    with _python_library_path():
        assert os.environ["LD_LIBRARY_PATH"] == libdir
    assert "LD_LIBRARY_PATH" not in os.environ
