"""The wheel, as a packager or a pip user gets it: built with ``python -m build``, installed into a fresh virtualenv,
its console scripts train from a preset by name, export and generate from a folder outside the checkout.

The virtualenv reuses this test environment's third-party libraries (torch, onnxruntime, ...) through a .pth line
instead of installing them again; the checkout's own packages (the editable install) are not visible in it, so
everything of dp-sims that runs comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dpsims", "train", "export", "calibration", "runtimes")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` of a copy of the checkout's sources (the build writes build/ and *.egg-info
    beside the sources; the checkout stays as it is)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the build reads the copy, not the checkout
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src], cwd=src,
         env={**env, "PIP_NO_INDEX": "1"})
    (path,) = dist.glob("dp_sims-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed (no dependencies from an index: they come from this test
    environment's site-packages, added after the install so pip does not see them)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv, env=dict(os.environ))
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=venv, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=venv,
                   env=dict(os.environ)).stdout.strip()
    # plain path lines: the directories join sys.path, but their own .pth files (the editable install's finder,
    # which would import the checkout) are not run
    (Path(purelib) / "test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


@pytest.fixture()
def outside(tmp_path: Path, venv: Path) -> tuple[Path, dict[str, str]]:
    """A working folder outside the checkout and an environment with the venv first on PATH and no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "2"
    work = tmp_path / "work"
    work.mkdir()
    return work, env


def test_the_wheel_holds_the_package_data(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.name for p in (ROOT / "train" / "configs").glob("*.yaml")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("train/configs/")} == presets
    classes = {p.name for p in (ROOT / "train" / "data" / "classes").iterdir() if p.suffix in (".json", ".txt")}
    assert {n.rsplit("/", 1)[1] for n in names if n.startswith("train/data/classes/")} == classes
    assert "runtimes/py.typed" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(s in scripts for s in ("dpsims-train", "dpsims-export", "dpsims-runtime"))


def test_installed_scripts_train_export_and_generate_outside_the_checkout(outside, venv: Path):
    from PIL import Image

    work, env = outside
    python = venv / "bin" / "python"
    where = _run([python, "-c", "import train, runtimes; print(train.__file__); print(runtimes.__version__)"],
                 cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv), f"train imported from {where[0]}, not from the wheel"
    from runtimes import __version__

    assert where[1] == __version__

    for script in ("dpsims-train", "dpsims-export", "dpsims-runtime"):
        assert _run([script, "--version"], cwd=work, env=env).stdout.strip() == f"{script} (dp-sims) {__version__}"
    help_text = _run(["dpsims-export", "--help"], cwd=work, env=env).stdout
    assert help_text.startswith("usage: dpsims-export") and "examples:\n    dpsims-export --checkpoint" in help_text

    _run(["dpsims-train", "--config", "synthetic-tiny", "--out", "run", "--set", "train.steps=2",
          "eval.label_consistency_samples=8", "train.batch_size=4"], cwd=work, env=env, timeout=600)
    assert (work / "run" / "checkpoints" / "last").read_text().strip() == "step_0000002"
    assert not (work / "runs").exists()

    _run(["dpsims-export", "--checkpoint", "run", "--target", "onnx", "--out", "art"], cwd=work, env=env)
    manifest = json.loads((work / "art" / "model.json").read_text())
    assert manifest["target"] == "onnx" and (work / "art" / "model.onnx").is_file()
    card = (work / "art" / "MODEL_CARD.md").read_text()
    assert "dataset `synthetic`" in card and "no licence constraints" in card

    h, w = manifest["input_size"]
    label = (np.arange(h)[:, None] // 8 + np.arange(w)[None, :] // 16) % 8
    Image.fromarray(label.astype(np.uint8), mode="L").save(work / "label.png")
    r = _run(["dpsims-runtime", "generate", "--model", "art", "--label", "label.png", "--seed", "0", "--out",
              "out.png"], cwd=work, env=env)
    assert "wrote out.png" in r.stdout
    image = np.asarray(Image.open(work / "out.png"))
    assert image.shape == (h, w, 3) and image.std() > 0
