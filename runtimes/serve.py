"""Serve an artifact on Triton Inference Server through PyTriton: ``python -m runtimes serve --model DIR``.

    python -m runtimes serve --model artifacts/ade-openvino-int8 --port 8000     # HTTP 8000, gRPC 8001, metrics 8002
    python -m runtimes serve --model DIR --max-batch 8 --max-queue-delay-us 2000 --name ade

The served model has the name, tensors and batch size of the model repository that
``python -m export --target triton --from DIR`` writes (:mod:`export.triton`): inputs ``label`` INT32 [-1, H, W]
and ``noise`` FP32 [-1, *noise_shape], output ``image`` FP32 [-1, 3, H, W], and the artifact's model.json in the
model configuration's parameter ``dp_sims_manifest``. So one client (tritonclient, KServe v2 HTTP/gRPC, or
``runtimes.load_predictor("http://HOST:PORT/NAME")``) works against both. Triton's dynamic batcher groups
requests of several clients into one call of the artifact's own backend (any artifact this machine runs), up to
``--max-batch`` maps after waiting at most ``--max-queue-delay-us``. HTTP and gRPC, ``/v2/health/ready`` and
Prometheus metrics (``/metrics``: nv_inference_request_success / nv_inference_exec_count is the mean batch).

Each request's class ids are checked as the local predictor checks them (dtypes, shapes and the batch size are
Triton's own checks against the model configuration). Triton's Python backend fails every request of a batch
the model callable raises for, so a request with bad class ids also fails the requests the batcher grouped with
it; ``load_predictor`` clients check their maps before sending, so only hand-written clients can send one.

Needs the ``serve`` extra: ``pip install 'dp-sims[serve]'`` (nvidia-pytriton: Linux x86_64/aarch64, glibc >= 2.35).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sysconfig
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import DpSimsError, InputError
from dpsims.logs import get_logger
from dpsims.optional import require
from runtimes.loader import load_predictor
from runtimes.predictor import Predictor, check_class_ids
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE

log = get_logger(__name__)

#: the model-config parameter that holds the artifact's model.json (also written by export/triton.py)
MANIFEST_PARAMETER = "dp_sims_manifest"
DEFAULT_QUEUE_DELAY_US = 2000
EXTRA = "serve"


class ServerError(DpSimsError, RuntimeError):
    """The Triton server could not start (a port in use, the server binary refused its configuration...)."""


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


class ModelCallable:
    """What Triton calls with the requests of one dynamic batch: each request's label ids are checked, the maps of
    all requests run through the predictor's backend together, and each request gets its own images back."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __call__(self, requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
        labels, noises = [], []
        for i, request in enumerate(requests):
            label = np.asarray(request[INPUT_LABEL])
            noise = np.asarray(request[INPUT_NOISE])
            where = f"request {i + 1} of {len(requests)} in this batch" if len(requests) > 1 else "the request"
            check_class_ids(label, self.predictor.num_classes, self.predictor.ignore_id, what=f"The {INPUT_LABEL!r} input of {where}")
            if not np.isfinite(noise).all():
                raise InputError(f"The {INPUT_NOISE!r} input of {where} holds NaN or infinite values.")
            labels.append(label)
            noises.append(noise)
        label = np.concatenate(labels).astype(np.int32, copy=False)
        noise = np.concatenate(noises).astype(np.float32, copy=False)
        images = self.predictor.generate_raw(label, noise=noise) if len(label) else np.empty((0, 3, *self.predictor.input_size), np.float32)
        out, start = [], 0
        for part in labels:
            out.append({OUTPUT_IMAGE: images[start:start + len(part)]})
            start += len(part)
        return out


@contextlib.contextmanager
def _python_library_path() -> Iterator[None]:
    """The Triton server process (and the Python backend stub it starts) sees this interpreter's own libpython
    first on LD_LIBRARY_PATH; otherwise the stub can load the system's libpython of the same version (a
    different build: pyenv vs Debian) and fail with ``'_thread.RLock' object has no attribute
    '_recursion_count'``. The server copies the environment when it starts; this process's is restored after."""
    libdir = sysconfig.get_config_var("LIBDIR")
    before = os.environ.get("LD_LIBRARY_PATH")
    if libdir and Path(libdir).is_dir():
        parts = [libdir, *(before.split(os.pathsep) if before else [])]
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(p for p in parts if p))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


class TritonServer:
    """An artifact served by a PyTriton Triton server on ``host``; a context manager (start / stop).

    >>> with TritonServer("artifacts/x", http_port=8000, grpc_port=8001, metrics_port=8002) as server:
    ...     print(server.endpoints.http, server.name)
    """

    def __init__(self, model: str | os.PathLike | Predictor, *, name: str | None = None, host: str = "127.0.0.1",
                 http_port: int = 8000, grpc_port: int | None = None, metrics_port: int | None = None,
                 max_batch: int | None = None, max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 device: str = "auto", log_verbose: int = 0, server_log: str | os.PathLike | None = None,
                 exit_timeout_s: int = 5, **options: Any):
        require("pytriton", EXTRA, "nvidia-pytriton")
        if isinstance(model, Predictor):
            self.predictor, self._owns_predictor = model, False
            artifact = model.info()["artifact"]
        else:
            self.predictor, self._owns_predictor = load_predictor(model, device=device, **options), True
            artifact = str(model)
        try:
            self.name = check_model_name(name if name is not None else model_name(artifact))
            self.max_batch = self._check_max_batch(max_batch)
            self.max_queue_delay_us = _int_at_least("max_queue_delay_us", max_queue_delay_us, 0)
            ports = [_port("http_port", http_port),
                     _port("grpc_port", grpc_port if grpc_port is not None else http_port + 1),
                     _port("metrics_port", metrics_port if metrics_port is not None else http_port + 2)]
            if len(set(ports)) != 3:
                raise InputError(f"The HTTP, gRPC and metrics ports must differ, got {ports}.")
            self.endpoints = Endpoints(host, *ports)
            self.log_verbose = _int_at_least("log_verbose", log_verbose, 0)
            self.exit_timeout_s = _int_at_least("exit_timeout_s", exit_timeout_s, 0)
            self.server_log = Path(server_log) if server_log is not None else None
        except BaseException:
            self._close_predictor()
            raise
        self._triton: Any = None
        self._log_dir: str | None = None

    def _check_max_batch(self, max_batch: int | None) -> int:
        limit = self.predictor.max_batch
        if max_batch is None:
            return limit
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= limit:
            raise InputError(f"max_batch must be an integer in 1..{limit} (the artifact's max batch), got {max_batch!r}.")
        return max_batch

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> TritonServer:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        p = self.predictor
        e = self.endpoints
        config = TritonConfig(
            http_address=e.host, http_port=e.http_port, grpc_address=e.host, grpc_port=e.grpc_port,
            metrics_address=e.host, metrics_port=e.metrics_port, allow_metrics=True, allow_gpu_metrics=False,
            strict_readiness=True, exit_on_error=True, log_verbose=self.log_verbose,
            exit_timeout_secs=self.exit_timeout_s, log_file=self._log_path(),
        )
        preferred = sorted({int(p.manifest.batch["opt"]), self.max_batch} - {1})
        preferred = [b for b in preferred if b <= self.max_batch]
        batcher = DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us, preferred_batch_size=preferred or None)
        try:
            with _python_library_path():
                self._triton = Triton(config=config)  # its own temporary workspace, removed by stop()
                self._triton.bind(
                    model_name=self.name,
                    infer_func=ModelCallable(p),
                    inputs=[Tensor(name=INPUT_LABEL, dtype=np.int32, shape=p.input_size),
                            Tensor(name=INPUT_NOISE, dtype=np.float32, shape=p.noise_shape)],
                    outputs=[Tensor(name=OUTPUT_IMAGE, dtype=np.float32, shape=(3, *p.input_size))],
                    config=ModelConfig(max_batch_size=self.max_batch, batcher=batcher),
                    strict=True,
                )
                self._add_manifest_parameter()
                self._triton.run()
        except Exception as e:
            tail = self.log_tail()
            self.stop()
            raise ServerError(f"The Triton server did not start ({type(e).__name__}: {e}).\n{tail}".strip()) from e
        except BaseException:
            self.stop()
            raise
        log.info("serving %s as %r: %s, %s, metrics %s", p.target, self.name, e.http, e.grpc, e.metrics)
        return self

    def _log_path(self) -> Path:
        """The Triton server's log: ``server_log`` when given, else a temporary file removed by stop()."""
        if self.server_log is not None:
            self.server_log.parent.mkdir(parents=True, exist_ok=True)
            return self.server_log
        self._log_dir = tempfile.mkdtemp(prefix="dp-sims-triton-")
        return Path(self._log_dir) / "tritonserver.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the Triton server's log (for error messages)."""
        path = self.server_log if self.server_log is not None else Path(self._log_dir or "/nonexistent") / "tritonserver.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _add_manifest_parameter(self) -> None:
        """Put model.json into the model configuration, where clients read it (PyTriton has no public setting
        for model-config parameters; its model keeps the generated configuration until the server loads it)."""
        models = [m for m in self._triton._model_manager.models if m.model_name == self.name]
        config = models[0]._get_triton_model_config()
        config.backend_parameters[MANIFEST_PARAMETER] = self.predictor.manifest.to_json(indent=None)

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        """Stop the server (waits for requests in flight, at most a few seconds) and remove its workspace."""
        triton, self._triton = self._triton, None
        try:
            if triton is not None:
                stubs = _backend_stubs(triton)
                try:
                    triton.stop()
                finally:
                    _kill_leftovers(stubs)
        finally:
            if self._log_dir is not None:
                shutil.rmtree(self._log_dir, ignore_errors=True)
                self._log_dir = None

    def _close_predictor(self) -> None:
        if self._owns_predictor:
            self.predictor.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._close_predictor()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve_forever(self, stop: threading.Event | None = None, poll_s: float = 1.0) -> int:
        """Start, serve until SIGINT/SIGTERM (or ``stop`` is set, or the server dies), stop. Returns 0, or 1 when
        the server died on its own."""
        stop = stop or threading.Event()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, lambda *_: stop.set())
        died = False
        try:
            self.start()
            print(f"serving model {self.name!r} ({self.predictor.target} {self.predictor.precision}, "
                  f"max batch {self.max_batch}): HTTP {self.endpoints.http}  gRPC {self.endpoints.grpc}  "
                  f"metrics {self.endpoints.metrics}  (Ctrl-C to stop)", flush=True)
            while not stop.wait(poll_s):
                if not self.is_alive():
                    died = True
                    log.error("the Triton server stopped on its own")
                    break
        finally:
            self.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return 1 if died else 0


STUB = "triton_python_backend_stub"


def _backend_stubs(triton: Any) -> list[int]:
    """Process ids of the Python backend stubs the Triton server process started (Linux /proc). A server that
    exits on its exit timeout (a client still connected) can leave its stub running, orphaned, ignoring SIGTERM."""
    try:  # PyTriton keeps the server process here; without it there is nothing to clean
        server_pid = triton._triton_server._tritonserver_running_cmd.process.pid
    except AttributeError:
        return []
    stubs = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == server_pid and STUB in (entry / "cmdline").read_text(errors="replace"):
                stubs.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return stubs


def _kill_leftovers(pids: list[int], wait_s: float = 2.0) -> None:
    """SIGKILL the stubs among ``pids`` still running a moment after the server stopped."""
    import time

    end = time.monotonic() + wait_s
    alive = list(pids)
    while alive and time.monotonic() < end:
        alive = [pid for pid in alive if _is_stub(pid)]
        if alive:
            time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            log.debug("killed the orphaned Python backend stub %d", pid)


def _is_stub(pid: int) -> bool:
    try:
        return STUB in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return False


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
    parser.add_argument("--option", "-o", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="backend option, e.g. performance_hint=THROUGHPUT (openvino) (repeatable)")


def run_from_args(args: Any) -> int:
    """``python -m runtimes serve``: serve until Ctrl-C / SIGTERM."""
    server = TritonServer(
        args.model, name=args.name, host=args.host, http_port=args.port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
        device=args.device, server_log=args.server_log, **dict(args.option),
    )
    return server.serve_forever()
