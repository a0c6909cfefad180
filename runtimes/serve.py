"""Serve an artifact on Triton Inference Server: ``python -m runtimes serve --model DIR``.

    python -m runtimes serve --model artifacts/ade-openvino-int8 --port 8000     # HTTP 8000, gRPC 8001, metrics 8002
    python -m runtimes serve --model DIR --max-batch 8 --max-queue-delay-us 2000 --instances 2 --name ade

The real ``tritonserver`` binary runs a Python-backend model (:mod:`runtimes.triton_model`) whose stub process
loads the artifact's predictor (any artifact this machine runs). The served model has the name, tensors and
batch size of the model repository that ``python -m export --target triton --from DIR`` writes: inputs
``label`` INT32 [-1, H, W] and ``noise`` FP32 [-1, *noise_shape], output ``image`` FP32 [-1, 3, H, W], and the
artifact's model.json in the parameter ``dp_sims_manifest``; so one client (tritonclient, KServe v2 HTTP/gRPC,
or ``runtimes.load_predictor("http://HOST:PORT/NAME")``) works against both. Triton's dynamic batcher groups the
requests of several clients, up to ``--max-batch`` maps after at most ``--max-queue-delay-us``; each request is
checked on its own and a bad one gets its own error while the others of its batch are answered.

Where the server comes from (:func:`find_triton`): ``--tritonserver PATH`` (or DPSIMS_TRITONSERVER) with its
``--backend-directory`` (or DPSIMS_TRITON_BACKENDS; default: ``backends`` beside the binary's ``bin``, the layout
of NVIDIA's images, /opt/tritonserver); else the binary and Python backend inside the nvidia-pytriton wheel,
installed with ``pip install --no-deps nvidia-pytriton``: only its server binary and Python backend are used, never
its Python package, whose numpy<2 pin is why it is not a dependency (README, Serving).

Lifecycle: start() waits for the model to be ready (at most ``start_timeout_s``; a ``cancel`` event or Ctrl-C ends
the wait within a second and stops the server); stop() sends SIGTERM, which makes Triton refuse new requests and
finish those in flight for at most ``drain_s`` seconds (Triton's --exit-timeout-secs, default 30 as Triton's), then
kills the server's process group if it is still there; a second Ctrl-C kills at once. The server's workspace (model
repository, log) is a temporary folder and its Python backend's shared memory (/dev/shm, a prefix of its own) is
removed after every stop, clean or not.

Needs tritonclient for clients only (``pip install 'dp-sims[serve]'``); the server binary as above.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpsims.errors import DpSimsError, InputError
from dpsims.logs import get_logger
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE
from runtimes.triton_model import ARTIFACT_PARAMETER, OPTIONS_PARAMETER

log = get_logger(__name__)

#: the model-config parameter that holds the artifact's model.json (also written by export/triton.py)
MANIFEST_PARAMETER = "dp_sims_manifest"
DEFAULT_QUEUE_DELAY_US = 2000
DEFAULT_DRAIN_S = 30  # Triton's own --exit-timeout-secs default
DEFAULT_START_TIMEOUT_S = 120.0



def dynamic_batching_config(preferred: Sequence[int], max_queue_delay_us: int, max_queue_size: int | None = None,
                            queue_timeout_us: int | None = None) -> list[str]:
    """The ``dynamic_batching { ... }`` block of a config.pbtxt, one line per item: the preferred batch sizes, the
    queue delay and, when a bound is given, a queue policy that rejects requests past it (Triton's
    ``default_queue_policy``). Shared by ``runtimes serve``'s model and export's model repositories."""
    lines = ["dynamic_batching {"]
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
    lines.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
    if max_queue_size or queue_timeout_us:
        lines += ["  default_queue_policy {", "    timeout_action: REJECT"]
        if queue_timeout_us:
            lines.append(f"    default_timeout_microseconds: {int(queue_timeout_us)}")
        if max_queue_size:
            lines.append(f"    max_queue_size: {int(max_queue_size)}")
        lines.append("  }")
    return [*lines, "}"]

class ServerError(DpSimsError, RuntimeError):
    """The Triton server could not start (a port in use, the server binary refused its configuration...)."""


class ServerNotFound(DpSimsError, RuntimeError):
    """No tritonserver binary (or no Python backend for it) was found."""


class StartCancelled(DpSimsError, RuntimeError):
    """The start was cancelled (Ctrl-C, SIGTERM) before the model was ready; the server was stopped."""


@dataclass
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def model_name(artifact_dir: str | os.PathLike) -> str:
    """The model's default name: the artifact folder's name, with anything Triton refuses replaced by '_' (the
    model repository of ``python -m export --target triton`` uses the same default, so one URL fits both)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(artifact_dir).resolve().name).strip(".-")
    return name or "dp_sims"


def check_model_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise InputError(f"A model name holds letters, digits, '_', '.' and '-' (not first), got {name!r}.")
    return name


# ------------------------------------------------------------------------------------------- the server binary
@dataclass
class TritonInstall:
    """A tritonserver binary, the folder of shared libraries it needs (or None), and its backend directory."""

    server: Path
    libs: Path | None
    backends: Path | None
    """None: a backend directory with the Python backend is assembled in the workspace (the wheel's layout)."""
    python_backend: Path | None = None
    """The folder holding libtriton_python.so and triton_python_backend_utils.py (the wheel's layout)."""
    stub: Path | None = None
    """The Python backend stub built for this interpreter's Python version (the wheel's layout)."""


def find_triton(server: str | os.PathLike | None = None, backends: str | os.PathLike | None = None) -> TritonInstall:
    """The tritonserver to run (module doc): ``server``/DPSIMS_TRITONSERVER, else the nvidia-pytriton wheel's."""
    server = server or os.environ.get("DPSIMS_TRITONSERVER")
    backends = backends or os.environ.get("DPSIMS_TRITON_BACKENDS")
    if server:
        path = Path(server)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerNotFound(f"--tritonserver {path} is not an executable file.")
        backend_dir = Path(backends) if backends else path.resolve().parent.parent / "backends"
        if not (backend_dir / "python").is_dir():
            raise ServerNotFound(f"The backend directory {backend_dir} has no python/ backend; give the one of this "
                                 "tritonserver with --backend-directory (NVIDIA's images: /opt/tritonserver/backends).")
        return TritonInstall(path, None, backend_dir)
    spec = importlib.util.find_spec("pytriton")  # finds the wheel's folder without importing its Python package
    if spec is None or not spec.submodule_search_locations:
        raise ServerNotFound(
            "No tritonserver found. Install the one inside NVIDIA's PyTriton wheel without its Python dependencies: "
            "`pip install --no-deps nvidia-pytriton` (Linux x86_64/aarch64, glibc >= 2.35), or give a tritonserver "
            "binary with --tritonserver PATH --backend-directory DIR (e.g. in NVIDIA's tritonserver image)."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / STUB
    if not (root / "bin" / "tritonserver").is_file() or not stub.is_file():
        raise ServerNotFound(f"The nvidia-pytriton wheel at {root.parent} has no tritonserver, or no Python backend stub "
                             f"for Python {version}; serve with a Python it ships a stub for, or give --tritonserver.")
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(root / "bin" / "tritonserver", libs if libs.is_dir() else None, Path(backends) if backends else None,
                         python_backend=root / "backends" / "python", stub=stub)


def library_path(extra: Sequence[str | os.PathLike] = ()) -> str:
    """LD_LIBRARY_PATH for the server: the environment's own first, then ``extra`` and this interpreter's LIBDIR
    appended (the Python backend stub links libpython3.X.so; without this Python's LIBDIR it can load another
    build of the same version, e.g. the system's, and fail with "'_thread.RLock' object has no attribute
    '_recursion_count'")."""
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    parts += [str(p) for p in extra]
    libdir = sysconfig.get_config_var("LIBDIR")
    if static_python():
        log.warning("this Python (%s) is linked statically: there is no libpython%s.so for the Triton Python backend "
                    "stub to load, so it loads whichever libpython%s.so the system has (or fails to start). Serve with a "
                    "Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)",
                    sys.executable, sysconfig.get_config_var("LDVERSION"), sysconfig.get_config_var("LDVERSION"))
    elif libdir and Path(libdir).is_dir():
        parts.append(libdir)
    return os.pathsep.join(dict.fromkeys(parts))


def static_python() -> bool:
    """Whether this interpreter is linked statically (no shared libpython for the backend stub)."""
    return not sysconfig.get_config_var("Py_ENABLE_SHARED")


def _interpreter_path() -> list[str]:
    """This interpreter's sys.path as absolute folders (the stub puts it in front of its own)."""
    return list(dict.fromkeys(str(Path(p or os.getcwd()).resolve()) for p in sys.path))


class ServerProcess:
    """A tritonserver process and its lifecycle (start / wait ready / stop, drain, clean-up); a context manager.
    Subclasses write the workspace (:meth:`_write_workspace`) and say which model is waited for."""

    name: str | None = None
    """The model whose readiness start() waits for; None: the server's own readiness (every model loaded)."""

    def _init_process(self, install: TritonInstall, host: str, http_port: int, grpc_port: int | None,
                      metrics_port: int | None, log_verbose: int, server_log: str | os.PathLike | None, drain_s: int,
                      start_timeout_s: float) -> None:
        self.install = install
        ports = [_port("http_port", http_port), _port("grpc_port", grpc_port if grpc_port is not None else http_port + 1),
                 _port("metrics_port", metrics_port if metrics_port is not None else http_port + 2)]
        if len(set(ports)) != 3:
            raise InputError(f"The HTTP, gRPC and metrics ports must differ, got {ports}.")
        self.endpoints = Endpoints(host, *ports)
        self.log_verbose = _int_at_least("log_verbose", log_verbose, 0)
        self.drain_s = _int_at_least("drain_s", drain_s, 0)
        if isinstance(start_timeout_s, bool) or not isinstance(start_timeout_s, (int, float)) or start_timeout_s <= 0:
            raise InputError(f"start_timeout_s must be a number of seconds > 0, got {start_timeout_s!r}.")
        self.start_timeout_s = float(start_timeout_s)
        self.server_log = Path(server_log) if server_log is not None else None
        self._proc: subprocess.Popen | None = None
        self._workspace: Path | None = None
        self._log_file: Any = None
        self.shm_prefix = f"dp-sims-{os.getpid()}-{secrets.token_hex(4)}-"

    def _write_workspace(self) -> Path:
        raise NotImplementedError

    def _repository(self) -> Path:
        return self._workspace / "repository"

    def _describe(self) -> str:
        return f"model repository {self._repository()}"

    # ------------------------------------------------------------------------------------------ lifecycle
    def command(self) -> list[str]:
        e = self.endpoints
        ws = self._workspace
        backends = self.install.backends or ws / "backends"
        return [str(self.install.server), "--model-repository", str(self._repository()), "--backend-directory", str(backends),
                "--http-address", e.host, "--http-port", str(e.http_port), "--grpc-address", e.host,
                "--grpc-port", str(e.grpc_port), "--metrics-address", e.host, "--metrics-port", str(e.metrics_port),
                "--allow-metrics", "true", "--allow-gpu-metrics", "false", "--strict-readiness", "true",
                "--disable-auto-complete-config", "--exit-timeout-secs", str(self.drain_s),
                "--log-verbose", str(self.log_verbose),
                "--backend-config", f"python,shm-region-prefix-name={self.shm_prefix}",
                "--backend-config", "python,shm-default-byte-size=4194304",
                "--backend-config", "python,shm-growth-byte-size=1048576"]

    def start(self, cancel: threading.Event | None = None) -> ServerProcess:
        """Start the server and wait until the model is ready. Raises ServerError (with the log's tail) when it
        exits or is not ready within start_timeout_s, StartCancelled when ``cancel`` is set while the model is not
        ready yet; the server is stopped and its workspace removed in every such case (and on KeyboardInterrupt).
        A ``cancel`` set once the model is ready does not undo the start: the caller stops it (with a drain)."""
        if self._proc is not None:
            raise ServerError("The server is already running; stop() it first.")
        try:
            ws = self._write_workspace()
            log_path = self.server_log or ws / "tritonserver.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
            env = dict(os.environ)
            env["LD_LIBRARY_PATH"] = library_path([self.install.libs] if self.install.libs else [])
            self._proc = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            self._wait_ready(cancel)
        except BaseException:
            tail = self.log_tail()
            self.stop(drain=False)
            exc = sys.exc_info()[1]
            if isinstance(exc, ServerError) and tail and tail not in str(exc):
                raise ServerError(f"{exc}\n{tail}") from None
            raise
        log.info("serving %s: %s, %s, metrics %s", self._describe(), self.endpoints.http, self.endpoints.grpc,
                 self.endpoints.metrics)
        return self

    def ready(self, timeout: float = 1.0) -> bool:
        """Whether the server answers that the model (or, without a name, every model) is ready."""
        url = f"{self.endpoints.http}/v2/models/{self.name}/ready" if self.name else f"{self.endpoints.http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own server
                return response.status == 200
        except (OSError, ValueError):
            return False

    def _wait_ready(self, cancel: threading.Event | None) -> None:
        """Poll readiness until start_timeout_s. A cancel stops the start only while the model is not ready: once
        it is, clients may already be sent answers, so the start completes and the caller's stop() drains (a
        signal between the model's readiness and this loop's next poll used to kill a serving server at once)."""
        end = time.monotonic() + self.start_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServerError(f"The Triton server exited with code {code} before the model was ready.")
            if self.ready(timeout=1.0):
                return
            if cancel is not None and cancel.is_set():
                if self.ready(timeout=5.0):  # a slow answer on a loaded machine is still an answer
                    return
                raise StartCancelled("The start was cancelled before the model was ready; the server was stopped.")
            if time.monotonic() > end:
                raise ServerError(f"The model was not ready within {self.start_timeout_s:g} s (start_timeout_s).")
            if cancel is not None:
                cancel.wait(0.2)
            else:
                time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the Triton server's log (for error messages)."""
        path = self.server_log or (self._workspace / "tritonserver.log" if self._workspace else None)
        try:
            text = path.read_text(errors="replace") if path else ""
        except OSError:
            return ""
        keep = [ln for ln in text.splitlines() if not any(h in ln for h in HARMLESS)]
        return "\n".join(keep[-lines:])

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, drain: bool = True) -> None:
        """SIGTERM: Triton refuses new requests and finishes those in flight, at most drain_s seconds; the process
        group is killed when it has not exited drain_s + 5 s later (at once with ``drain=False``). Then the
        workspace and the Python backend's shared memory are removed."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                grace = self.drain_s + 5.0 if drain else 2.0
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    log.warning("the Triton server did not exit %.0f s after SIGTERM; killing it", grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the stubs too, if the server left any
                proc.wait(timeout=10)
            elif proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            remove_shared_memory(self.shm_prefix)
            if self._workspace is not None:
                shutil.rmtree(self._workspace, ignore_errors=True)
                self._workspace = None

    def kill(self) -> None:
        """Stop at once (a second Ctrl-C)."""
        self.stop(drain=False)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TritonServer(ServerProcess):
    """An artifact served by a tritonserver process on ``host``; a context manager (start / stop).

    >>> with TritonServer("artifacts/x", http_port=8000) as server:
    ...     print(server.endpoints.http, server.name)
    """

    def __init__(self, model: str | os.PathLike, *, name: str | None = None, host: str = "127.0.0.1",
                 http_port: int = 8000, grpc_port: int | None = None, metrics_port: int | None = None,
                 max_batch: int | None = None, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 device: str = "auto", log_verbose: int = 0, server_log: str | os.PathLike | None = None,
                 drain_s: int = DEFAULT_DRAIN_S, start_timeout_s: float = DEFAULT_START_TIMEOUT_S, instances: int = 1,
                 max_queue_size: int = 0, queue_timeout_us: int = 0, warmup: bool = True,
                 tritonserver: str | os.PathLike | None = None, backend_directory: str | os.PathLike | None = None,
                 **options: Any):
        from runtimes.spec import read_manifest

        self.artifact = Path(model).resolve()
        self.manifest = read_manifest(self.artifact)  # the files are checked by the stub's load_predictor
        install = find_triton(tritonserver, backend_directory)
        self.name = check_model_name(name if name is not None else model_name(self.artifact))
        limit = int(self.manifest.batch["max"])
        if max_batch is None:
            max_batch = limit
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= limit:
            raise InputError(f"max_batch must be an integer in 1..{limit} (the artifact's max batch), got {max_batch!r}.")
        self.max_batch = max_batch
        self.max_queue_delay_us = _int_at_least("max_queue_delay_us", max_queue_delay_us, 0)
        self._init_process(install, host, http_port, grpc_port, metrics_port, log_verbose, server_log, drain_s,
                           start_timeout_s)
        self.instances = _int_at_least("instances", instances, 1)
        self.max_queue_size = _int_at_least("max_queue_size", max_queue_size, 0)
        self.queue_timeout_us = _int_at_least("queue_timeout_us", queue_timeout_us, 0)
        if not isinstance(warmup, bool):
            raise InputError(f"warmup is True or False, got {warmup!r}.")
        self.warmup = warmup
        self.device = str(device)
        self.options = dict(options)
        json.dumps(self.options)  # backend options travel as JSON to the stub

    def _describe(self) -> str:
        return f"{self.manifest.target} as {self.name!r}"

    # ------------------------------------------------------------------------------------------ repository
    def config_pbtxt(self) -> str:
        """The Python-backend model's configuration: the tensors and batching of export/triton.py's repository."""
        m = self.manifest
        h, w = (int(v) for v in m.input_size)
        noise = ", ".join(str(int(v)) for v in m.noise_shape)

        def q(text: str) -> str:
            return json.dumps(text)  # a JSON string is a valid protobuf text-format string literal

        preferred = sorted({min(int(m.batch["opt"]), self.max_batch), self.max_batch} - {1})
        lines = [f"name: {q(self.name)}", 'backend: "python"', f"max_batch_size: {self.max_batch}",
                 "input [", f'  {{ name: "{INPUT_LABEL}" data_type: TYPE_INT32 dims: [ {h}, {w} ] }},',
                 f'  {{ name: "{INPUT_NOISE}" data_type: TYPE_FP32 dims: [ {noise} ] }}', "]",
                 "output [", f'  {{ name: "{OUTPUT_IMAGE}" data_type: TYPE_FP32 dims: [ 3, {h}, {w} ] }}', "]"]
        lines += dynamic_batching_config(preferred, self.max_queue_delay_us, self.max_queue_size,
                                         self.queue_timeout_us)
        lines.append(f"instance_group [ {{ count: {self.instances} kind: KIND_CPU }} ]")
        if self.warmup:
            for n in sorted({1, self.max_batch}):
                lines += ["model_warmup {", f"  name: {q(f'zeros_batch_{n}')}", f"  batch_size: {n}"]
                for tname, dtype, dims in ((INPUT_LABEL, "TYPE_INT32", f"{h}, {w}"), (INPUT_NOISE, "TYPE_FP32", noise)):
                    lines += ["  inputs {", f"    key: {q(tname)}", f"    value {{ data_type: {dtype} dims: [ {dims} ] zero_data: true }}", "  }"]
                lines.append("}")
        options = {"device": self.device, **self.options}
        for key, value in ((MANIFEST_PARAMETER, m.to_json(indent=None)), (ARTIFACT_PARAMETER, str(self.artifact)),
                           (OPTIONS_PARAMETER, json.dumps(options))):
            lines += ["parameters {", f"  key: {q(key)}", f"  value {{ string_value: {q(value)} }}", "}"]
        return "\n".join(lines) + "\n"

    def _write_workspace(self) -> Path:
        ws = Path(tempfile.mkdtemp(prefix="dp-sims-triton-"))
        self._workspace = ws
        model = ws / "repository" / self.name
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(self.config_pbtxt())
        (model / "1" / "model.py").write_text(
            "# written by runtimes/serve.py: this interpreter's packages first, then the dp-sims model\n"
            "import sys\n"
            f"sys.path[:0] = [p for p in {_interpreter_path()!r} if p not in sys.path]\n"
            "from runtimes.triton_model import TritonPythonModel  # noqa: E402,F401\n"
        )
        if self.install.backends is None:  # the wheel's Python backend with this Python's stub, by links
            python = ws / "backends" / "python"
            python.mkdir(parents=True)
            for entry in self.install.python_backend.iterdir():
                if entry.is_file():
                    (python / entry.name).symlink_to(entry)
            (python / STUB).symlink_to(self.install.stub)
        return ws

    def serve_forever(self, stop: threading.Event | None = None, poll_s: float = 0.5) -> int:
        """Start, serve until SIGINT/SIGTERM (or ``stop`` is set, or the server dies), stop (draining). A signal
        during start-up ends the start within a second; a second signal while draining kills at once. Returns 0,
        or 1 when the server died on its own."""
        stop = stop or threading.Event()
        handlers = {}
        signals = 0

        def on_signal(*_: Any) -> None:
            nonlocal signals
            signals += 1
            stop.set()
            if signals > 1 and self._proc is not None:  # a second Ctrl-C: no more draining
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, on_signal)
        died = False
        try:
            try:
                self.start(cancel=stop)
            except StartCancelled:
                return 0
            print(f"serving model {self.name!r} ({self.manifest.target} {self.manifest.precision}, "
                  f"max batch {self.max_batch}): HTTP {self.endpoints.http}  gRPC {self.endpoints.grpc}  "
                  f"metrics {self.endpoints.metrics}  (Ctrl-C to stop; in-flight requests get {self.drain_s} s)", flush=True)
            while not stop.wait(poll_s):
                if not self.is_alive():
                    died = True
                    log.error("the Triton server stopped on its own:\n%s", self.log_tail())
                    break
        finally:
            self.stop()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return 1 if died else 0



class RepositoryServer(ServerProcess):
    """A model repository as it is (e.g. ``python -m export --target triton``'s: ONNX and OpenVINO models that
    Triton's own onnxruntime and openvino backends run) served by tritonserver with ``backend_directory``; a
    context manager. start() waits until every model of the repository is ready (the server's readiness).

    >>> with RepositoryServer("repo", backend_directory="/opt/tritonserver/backends", http_port=8000) as server:
    ...     load_predictor(f"{server.endpoints.http}/MODEL")
    """

    def __init__(self, repository: str | os.PathLike, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int | None = None, metrics_port: int | None = None, log_verbose: int = 0,
                 server_log: str | os.PathLike | None = None, drain_s: int = DEFAULT_DRAIN_S,
                 start_timeout_s: float = DEFAULT_START_TIMEOUT_S, tritonserver: str | os.PathLike | None = None,
                 backend_directory: str | os.PathLike | None = None):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir() or not any(self.repository.glob("*/config.pbtxt")):
            raise InputError(f"{self.repository} holds no model (NAME/config.pbtxt); write one with "
                             "`python -m export --target triton --from ARTIFACT --out REPO`.")
        install = find_triton(tritonserver, backend_directory)
        if install.backends is None:
            raise ServerNotFound("A model repository runs on Triton's own backends: give their folder with "
                                 "backend_directory (or DPSIMS_TRITON_BACKENDS), e.g. /opt/tritonserver/backends.")
        self._init_process(install, host, http_port, grpc_port, metrics_port, log_verbose, server_log, drain_s,
                           start_timeout_s)

    def _write_workspace(self) -> Path:
        self._workspace = Path(tempfile.mkdtemp(prefix="dp-sims-triton-"))  # the server's log only
        return self._workspace

    def _repository(self) -> Path:
        return self.repository

    def models(self) -> list[str]:
        """The models of the repository (its folders holding a config.pbtxt)."""
        return sorted(p.parent.name for p in self.repository.glob("*/config.pbtxt"))

STUB = "triton_python_backend_stub"
#: log lines of tritonserver on a machine without a GPU that say nothing about the model
HARMLESS = ("CudaDriverHelper", "NVML", "DCGM")


def remove_shared_memory(prefix: str) -> list[str]:
    """Remove the Python backend's shared-memory regions named ``prefix``* (left behind when the server is killed)."""
    removed = []
    shm = Path("/dev/shm")
    if prefix and shm.is_dir():
        for entry in shm.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry.name)
    return removed


def _int_at_least(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {value!r}.")
    return value


def _port(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError(f"{name} must be a TCP port 1..65535, got {value!r}.")
    return value


def metrics(url: str, model: str, timeout: float = 5.0) -> dict[str, float]:
    """The model's counters from Triton's Prometheus endpoint ``url`` (…/metrics), ``nv_inference_`` stripped:
    request_success, request_failure, count (images), exec_count (model executions), request_duration_us,
    queue_duration_us, compute_infer_duration_us."""
    from urllib.request import urlopen

    with urlopen(url, timeout=timeout) as response:  # noqa: S310 - a URL the caller gives
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("nv_inference_") or f'model="{model}"' not in line:
            continue
        key = line.split("{", 1)[0][len("nv_inference_"):]
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def statistics(http_url: str, model: str, timeout: float = 5.0) -> dict[str, float]:
    """The model's counters from Triton's statistics endpoint (``GET {http_url}/v2/models/MODEL/stats``), under the
    names :func:`metrics` gives (so :func:`describe_metrics` reads either): request_success, request_failure,
    count (inferences: images of a batching model; requests of a max_batch_size 0 one), exec_count (model
    executions), queue_duration_us, compute_infer_duration_us."""
    from urllib.request import urlopen

    with urlopen(f"{http_url.rstrip('/')}/v2/models/{model}/stats", timeout=timeout) as response:  # noqa: S310
        stats = json.loads(response.read().decode())["model_stats"]
    out: dict[str, float] = {}
    for entry in stats:
        infer = entry.get("inference_stats", {})
        for key, value in (("request_success", infer.get("success", {}).get("count", 0)),
                           ("request_failure", infer.get("fail", {}).get("count", 0)),
                           ("count", entry.get("inference_count", 0)), ("exec_count", entry.get("execution_count", 0)),
                           ("queue_duration_us", infer.get("queue", {}).get("ns", 0) / 1000),
                           ("compute_infer_duration_us", infer.get("compute_infer", {}).get("ns", 0) / 1000)):
            out[key] = out.get(key, 0.0) + float(value)
    return out


def describe_metrics(values: dict[str, float]) -> dict[str, Any]:
    """Mean batch size (images per backend execution) and mean queue time from :func:`metrics` counters."""
    execs = values.get("exec_count", 0.0)
    requests = values.get("request_success", 0.0)
    return {
        "requests": int(requests),
        "failures": int(values.get("request_failure", 0.0)),
        "images": int(values.get("count", 0.0)),
        "executions": int(execs),
        "mean_batch": values.get("count", 0.0) / execs if execs else None,
        "mean_queue_ms": values.get("queue_duration_us", 0.0) / requests / 1000 if requests else None,
    }


# ------------------------------------------------------------------------------------- command line
def add_arguments(parser: Any) -> None:
    """The options of ``python -m runtimes serve``."""
    from dpsims.cli import key_value

    parser.add_argument("--model", required=True, help="artifact directory (holding model.json)")
    parser.add_argument("--name", default=None, help="model name (default: the artifact folder's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: --port + 1)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default: --port + 2)")
    parser.add_argument("--max-batch", type=int, default=None, help="largest dynamic batch (default: the artifact's max)")
    parser.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                        help=f"longest wait for more requests to batch, microseconds (default {DEFAULT_QUEUE_DELAY_US})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], or the backend's names (GPU, NPU...)")
    parser.add_argument("--server-log", default=None, help="write the Triton server's log to this file")
    parser.add_argument("--instances", type=int, default=1, help="model instances (stub processes), each with its predictor")
    parser.add_argument("--max-queue-size", type=int, default=0, help="reject requests beyond this many waiting (0: no limit)")
    parser.add_argument("--queue-timeout-us", type=int, default=0, help="reject a request queued this long (0: never)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the zero-filled warm-up batches before ready")
    parser.add_argument("--drain-s", type=int, default=DEFAULT_DRAIN_S,
                        help=f"on SIGTERM/Ctrl-C, seconds for in-flight requests to finish (default {DEFAULT_DRAIN_S})")
    parser.add_argument("--start-timeout-s", type=float, default=DEFAULT_START_TIMEOUT_S, help="longest wait for ready")
    parser.add_argument("--tritonserver", default=None, help="tritonserver binary (default: DPSIMS_TRITONSERVER, "
                        "else the one in the nvidia-pytriton wheel)")
    parser.add_argument("--backend-directory", default=None, help="its backends (default: ../backends of the binary)")
    parser.add_argument("--option", "-o", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="backend option, e.g. performance_hint=THROUGHPUT (openvino) (repeatable)")


def run_from_args(args: Any) -> int:
    """``python -m runtimes serve``: serve until Ctrl-C / SIGTERM."""
    server = TritonServer(
        args.model, name=args.name, host=args.host, http_port=args.port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
        device=args.device, server_log=args.server_log, instances=args.instances, max_queue_size=args.max_queue_size,
        queue_timeout_us=args.queue_timeout_us, warmup=not args.no_warmup, drain_s=args.drain_s,
        start_timeout_s=args.start_timeout_s, tritonserver=args.tritonserver, backend_directory=args.backend_directory,
        **dict(args.option),
    )
    return server.serve_forever()
