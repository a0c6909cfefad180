"""A predictor whose backend is a model on a Triton Inference Server (or any KServe v2 server) far away.

>>> from runtimes import load_predictor
>>> with load_predictor("http://127.0.0.1:8000/ade") as predictor:          # or grpc://127.0.0.1:8001/ade
...     image = predictor.generate("label.png", seed=0)                    # (H, W, 3) uint8, as locally

The model's configuration carries the artifact's model.json (parameter ``dp_sims_manifest``, written by both
``python -m runtimes serve`` and ``python -m export --target triton``), so the predictor knows the classes,
palette, input size and noise shape without the artifact's files. Everything but the graph call happens here as
in a local predictor: label maps are read and checked, noise is sampled from the seed on this side
(:meth:`Predictor.sample_noise`), batches are split at the server's max batch, and the same errors are raised
(:class:`InputError` before anything is sent). So one seed gives the same image remotely and locally: bit for
bit when the server runs the same artifact on the same kind of machine and batches the request alone.

Server-side failures: a request the server refuses is an :class:`InputError` naming the server's reason; a server
that cannot be reached, dies mid-request or does not answer within ``timeout`` seconds is a :class:`RemoteError`
(raised within the timeout, never a hang). One predictor may be used from any thread but sends one request at a
time (the predictor's lock); use one predictor per thread to send concurrently. Needs ``pip install 'dp-sims[serve]'`` (tritonclient).
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dpsims.errors import DpSimsError, InputError, ManifestError
from dpsims.optional import require
from runtimes.backends.base import Backend
from runtimes.predictor import Predictor
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest

MANIFEST_PARAMETER = "dp_sims_manifest"
SCHEMES = ("http", "https", "grpc")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2
EXTRA = "serve"


class RemoteError(DpSimsError, ConnectionError):
    """The server could not be reached, closed the connection, failed, or did not answer within the timeout."""


def parse_url(url: str) -> tuple[str, str, str, str]:
    """``SCHEME://HOST:PORT/MODEL[/VERSION]`` -> (scheme, "host:port", model, version or "")."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = [p for p in parts.path.split("/") if p]
    if scheme not in SCHEMES or not parts.hostname or not path or len(path) > 2 or parts.query or parts.fragment:
        raise InputError(
            f"A served model is named by http://HOST:PORT/MODEL, https://HOST:PORT/MODEL or grpc://HOST:PORT/MODEL "
            f"(optionally /VERSION after the model), got {url!r}."
        )
    try:
        port = parts.port
    except ValueError:
        raise InputError(f"The port of {url!r} is not a number 1..65535.") from None
    port = port or {"http": 80, "https": 443, "grpc": 8001}[scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    version = path[1] if len(path) == 2 else ""
    if version and not version.isdigit():
        raise InputError(f"The model version in {url!r} must be a number, got {version!r}.")
    return scheme, f"{host}:{port}", path[0], version


class RemoteBackend(Backend):
    """The graph call over tritonclient (HTTP or gRPC). Opened by :func:`load_remote_predictor`."""

    extra = EXTRA
    accepted_options = frozenset({"timeout", "retries", "wait_ready_s", "headers", "ssl", "root_certificates",
                                  "private_key", "certificate_chain", "insecure"})

    def __init__(self, url: str, timeout: float | None = None, retries: int = DEFAULT_RETRIES, wait_ready_s: float = 0.0,
                 headers: dict[str, str] | None = None, ssl: bool = False, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None, insecure: bool = False):
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e6):
            raise InputError(f"timeout is in seconds, a number > 0, got {timeout!r}.")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise InputError(f"retries is an integer 0..100, got {retries!r}.")
        if isinstance(wait_ready_s, bool) or not isinstance(wait_ready_s, (int, float)) or wait_ready_s < 0:
            raise InputError(f"wait_ready_s is a number of seconds >= 0, got {wait_ready_s!r}.")
        if headers is not None and (not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())):
            raise InputError("headers is a dict of str -> str (e.g. {'Authorization': 'Bearer ...'}).")
        self.url = url
        self.timeout_given = timeout is not None
        self.timeout = float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S
        self.retries = retries
        self.headers = dict(headers or {})
        self.tls = {"ssl": bool(ssl), "root_certificates": root_certificates, "private_key": private_key,
                    "certificate_chain": certificate_chain, "insecure": bool(insecure)}
        self.scheme, self.address, self.model, self.version = parse_url(url)
        module = "tritonclient.grpc" if self.scheme == "grpc" else "tritonclient.http"
        self._tc = require(module, EXTRA, f"tritonclient[{'grpc' if self.scheme == 'grpc' else 'http'}]")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._closed = False
        try:
            if wait_ready_s:
                self._wait_ready(float(wait_ready_s))
            config = self._call("read the model configuration of", self._model_config)
            manifest = manifest_from_config(config, url)
            check_config(config, manifest, url)
            if not self.timeout_given:
                self.timeout = self._timeout_from_statistics()
        except BaseException:
            self.close()
            raise
        super().__init__(Path(self.model), manifest, device="remote")
        self._server_max_batch = int(config.get("max_batch_size", 0) or 0)

    def _wait_ready(self, bound_s: float) -> None:
        """Poll the model's readiness until it is ready or ``bound_s`` has passed (RemoteError then)."""
        end = time.monotonic() + bound_s
        last = "not ready"
        while True:
            try:
                kwargs = {"client_timeout": min(self.timeout, 2.0)} if self.scheme == "grpc" else {}
                if self._client.is_model_ready(self.model, self.version, headers=self.headers or None, **kwargs):
                    return
            except Exception as e:  # not up yet: refused, reset, unavailable
                last = _describe(e)
            if time.monotonic() > end:
                raise RemoteError(f"{self.url} was not ready within {bound_s:g} s (wait_ready_s): {last}.")
            time.sleep(0.25)

    def _timeout_from_statistics(self) -> float:
        """Without a ``timeout``: 20 times the server's mean request latency so far (queue + compute, from its
        statistics), at least DEFAULT_TIMEOUT_S; DEFAULT_TIMEOUT_S where the server keeps no statistics."""
        try:
            if self.scheme == "grpc":
                stats = self._client.get_inference_statistics(self.model, self.version, headers=self.headers or None,
                                                              as_json=True, client_timeout=DEFAULT_TIMEOUT_S)
            else:
                stats = self._client.get_inference_statistics(self.model, self.version, headers=self.headers or None)
            success = stats["model_stats"][0]["inference_stats"]["success"]
            count, ns = int(success.get("count", 0)), int(success.get("ns", 0))
        except Exception:  # no statistics endpoint (restricted), or none yet
            return DEFAULT_TIMEOUT_S
        mean_s = ns / count / 1e9 if count else 0.0
        return max(DEFAULT_TIMEOUT_S, 20.0 * mean_s)

    # ----------------------------------------------------------------------------------------- protocol
    @property
    def _client(self) -> Any:
        """The calling thread's client: the HTTP client runs on gevent, whose connections belong to the thread that
        made them (another thread gets "Cannot switch to a different thread"), so each thread gets its own;
        the gRPC client is thread-safe and shared."""
        if self._closed:
            raise RemoteError(f"The connection to {self.url} is closed.")
        client = self._clients[0] if self.scheme == "grpc" and self._clients else getattr(self._local, "client", None)
        if client is None:
            t = self.tls
            if self.scheme == "grpc":
                client = self._tc.InferenceServerClient(
                    self.address, ssl=t["ssl"], root_certificates=t["root_certificates"], private_key=t["private_key"],
                    certificate_chain=t["certificate_chain"])
            else:
                client = self._tc.InferenceServerClient(
                    self.address, ssl=self.scheme == "https", insecure=t["insecure"],
                    ssl_options={"ca_certs": t["root_certificates"]} if t["root_certificates"] else None,
                    connection_timeout=self.timeout, network_timeout=self.timeout
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _model_config(self) -> dict[str, Any]:
        headers = self.headers or None
        if self.scheme == "grpc":
            return self._client.get_model_config(self.model, self.version, headers=headers, as_json=True,
                                                 client_timeout=self.timeout)["config"]
        return self._client.get_model_config(self.model, self.version, headers=headers)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """Run one client call, again after a connection error (refused, reset, unavailable) up to ``retries``
        times with a growing pause; never after a timeout or an answer of the server (4xx, 5xx)."""
        attempt = 0
        while True:
            try:
                return self._call_once(what, fn, *args)
            except RemoteError as e:
                if not getattr(e, "connection", False) or attempt >= self.retries or self._closed:
                    raise
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
            attempt += 1

    def _call_once(self, what: str, fn: Any, *args: Any) -> Any:
        """Run one client call; translate its failures into this package's errors."""
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args)
        except InferenceServerException as e:
            raise self._server_error(what, e) from None
        except TimeoutError:  # socket.timeout
            raise RemoteError(f"{self.url} did not answer within {self.timeout:g} s (timeout).") from None
        except (OSError, EOFError) as e:  # refused, reset, closed mid-response
            error = _connection(RemoteError(f"Could not {what} {self.url}: {_describe(e)}. Is the server running and reachable?"))
            raise error from None
        except Exception as e:  # the HTTP client's transport errors (geventhttpclient, gevent's Timeout)
            if type(e).__module__.split(".")[0] in ("geventhttpclient", "gevent"):
                error = RemoteError(f"Could not {what} {self.url} (timeout {self.timeout:g} s): {_describe(e)}.")
                raise (error if "timeout" in type(e).__name__.lower() else _connection(error)) from None
            raise

    def _server_error(self, what: str, e: Any) -> DpSimsError:
        status = str(e.status() or "")
        message = str(e.message() if hasattr(e, "message") else e)
        reason = _reason(message)
        if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
            return RemoteError(f"{self.url} did not answer within {self.timeout:g} s (timeout).")
        if "UNAVAILABLE" in status or "failed to connect" in message.lower() or "Socket closed" in message:
            return _connection(RemoteError(f"Could not {what} {self.url}: the server is unreachable or closed the connection ({reason})."))
        if status in ("404", "StatusCode.NOT_FOUND") or "unknown model" in message or "is not found" in message:
            return RemoteError(f"{self.url}: the server has no model {self.model!r}{' version ' + self.version if self.version else ''} ({reason}).")
        if "InputError" in message or status in ("400", "StatusCode.INVALID_ARGUMENT"):
            return InputError(f"The server {self.url} refused the request: {reason}")
        return RemoteError(f"The server {self.url} failed to {what} the model: {reason}")

    @property
    def max_batch(self) -> int:
        artifact_max = int(self.manifest.batch.get("max", 1))
        if self._server_max_batch == 0:  # the model's own dynamic batch dimension (openvino repository)
            return max(1, artifact_max)
        return max(1, min(self._server_max_batch, artifact_max))

    @property
    def min_batch(self) -> int:
        return 1  # Triton's batcher takes any batch up to max_batch_size

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tc = self._tc
        label = np.ascontiguousarray(inputs[INPUT_LABEL], dtype=np.int32)
        noise = np.ascontiguousarray(inputs[INPUT_NOISE], dtype=np.float32)
        binary = {} if self.scheme == "grpc" else {"binary_data": True}
        tensors = [tc.InferInput(INPUT_LABEL, list(label.shape), "INT32"), tc.InferInput(INPUT_NOISE, list(noise.shape), "FP32")]
        tensors[0].set_data_from_numpy(label, **binary)
        tensors[1].set_data_from_numpy(noise, **binary)
        outputs = [tc.InferRequestedOutput(OUTPUT_IMAGE, **binary)]
        kwargs: dict[str, Any] = {"model_version": self.version, "outputs": outputs, "headers": self.headers or None}
        if self.scheme == "grpc":
            kwargs["client_timeout"] = self.timeout
        result = self._call("run", lambda: self._client.infer(self.model, tensors, **kwargs))
        image = result.as_numpy(OUTPUT_IMAGE)
        if image is None:
            raise RemoteError(f"{self.url} answered without the output {OUTPUT_IMAGE!r}.")
        return {OUTPUT_IMAGE: image}

    def close(self) -> None:
        self._closed = True
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # a client of another thread, or whose server died: its sockets go with it
                pass

    def describe(self) -> dict[str, Any]:
        return {"backend": type(self).__name__, "device": "remote", "url": self.url, "protocol": self.scheme,
                "model": self.model, "server_max_batch": self._server_max_batch, "timeout_s": self.timeout}


def manifest_from_config(config: dict[str, Any], url: str) -> Manifest:
    """The artifact's model.json from a Triton model configuration (JSON form)."""
    parameter = (config.get("parameters") or {}).get(MANIFEST_PARAMETER) or {}
    text = parameter.get("string_value", parameter.get("stringValue"))
    if not text:
        raise ManifestError(
            f"{url}: the model's configuration has no {MANIFEST_PARAMETER!r} parameter, so it is not a dp-sims model "
            "served by `python -m runtimes serve` or exported by `python -m export --target triton`."
        )
    try:
        return Manifest.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{url}: the model's {MANIFEST_PARAMETER!r} parameter is not valid JSON ({e}).") from None


def check_config(config: dict[str, Any], manifest: Manifest, url: str) -> None:
    """The served model's tensors have the dims its manifest states (the graph contract), with a batch dimension:
    Triton's (max_batch_size > 0), or the model's own first dim -1 (max_batch_size 0: an openvino repository)."""
    batching = int(config.get("max_batch_size", 0) or 0) > 0
    h, w = manifest.input_size
    want = {INPUT_LABEL: [h, w], INPUT_NOISE: list(manifest.noise_shape), OUTPUT_IMAGE: [3, h, w]}
    if not batching:
        want = {name: [-1, *dims] for name, dims in want.items()}
    tensors = [*(config.get("input") or []), *(config.get("output") or [])]
    if not batching and not tensors:
        raise ManifestError(f"{url}: the model does not batch (max_batch_size 0) and states no tensors; the graph "
                            "contract has a batch dimension.")
    for tensor in tensors:
        name = tensor.get("name")
        if name in want and [int(d) for d in tensor.get("dims", [])] != want[name]:
            raise ManifestError(
                f"{url}: the model's {name!r} has dims {tensor.get('dims')} (without the batch), its model.json "
                f"states {want[name]}: the configuration and the manifest describe different models."
            )


class RemotePredictor(Predictor):
    """A :class:`Predictor` over a :class:`RemoteBackend`: the same generate(), info() and errors."""

    def __init__(self, backend: RemoteBackend):
        super().__init__(backend, backend.manifest, Path(backend.model))
        self.url = backend.url

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["artifact"] = self.url
        info["backend"]["class"] = f"{RemoteBackend.__module__}:{RemoteBackend.__name__}"
        return info

    def __repr__(self) -> str:
        h, w = self.input_size
        state = "closed" if self._backend is None else "open"
        return f"RemotePredictor({self.target} {self.precision}, {h}x{w}, {self.num_classes} classes, {state}, {self.url})"


def load_remote_predictor(url: str, device: str = "auto", **options: Any) -> RemotePredictor:
    """The predictor of the model served at ``url`` (see the module doc). ``device`` is the server's business:
    only "auto" is accepted here. ``options``: ``timeout`` (seconds per call; default: from the server's measured
    latency, at least 60), ``retries`` (after connection errors only, default 2), ``wait_ready_s`` (wait up to this
    long for the model to be ready, default 0), ``headers`` (sent with every call: auth, Host), TLS: ``ssl`` (gRPC),
    ``root_certificates``, ``private_key``, ``certificate_chain`` (gRPC), ``insecure`` (https: skip verification)."""
    if device != "auto":
        raise InputError(f"A served model runs on the server's device; give device='auto', not {device!r}.")
    unknown = sorted(set(options) - RemoteBackend.accepted_options)
    if unknown:
        raise InputError(f"A served model takes the options {', '.join(sorted(RemoteBackend.accepted_options))}, not {unknown}.")
    return RemotePredictor(RemoteBackend(url, **options))


def _reason(message: str) -> str:
    """The useful line of a server error: the dp-sims error it carries, else the message's first line."""
    match = re.search(r"(?:runtimes\.errors\.)?InputError: ([^\n]+)", message)
    if match:
        return match.group(1).strip()
    first = message.strip().splitlines()[0] if message.strip() else "no message"
    return first[:500]


def _connection(error: RemoteError) -> RemoteError:
    """Mark ``error`` as a connection failure (the only kind retried)."""
    error.connection = True  # type: ignore[attr-defined]
    return error


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
