"""Load test of a served artifact against the same artifact in a local predictor, in one run.

    python -m benchmarks.load_test --model ARTIFACT [--model ARTIFACT2] --clients 1,4,16 --requests 40,8
    python -m benchmarks.load_test --model ARTIFACT --triton-backends /opt/tritonserver/backends \
        [--backend-version onnxruntime=1.32.0 --backend-version openvino=2026.4.1] [--repo-option instances=2]

For each artifact: first the local predictor (this process) at batch 1 and at each ``--local-batches`` size;
then ``python -m runtimes serve`` in a child process on 127.0.0.1 (tritonserver with a Python-backend model,
dynamic batching); with ``--triton-backends DIR`` also the artifact's model repository (``python -m export
--target triton``, options ``--repo-option``; ``--backend-version`` states the runtime a hand-built backend
has, as ``-o backend_version``) on tritonserver with Triton's own onnxruntime / openvino backends
from DIR (:class:`runtimes.serve.RepositoryServer`). For each served mode and each ``--clients`` level, that
many threads, each with its own remote predictor (``load_predictor("http://...")``), each send ``--requests``
one-map requests with their own seeds, one after the other. Reported per row: images/s (all images / wall time
of the level), p50/p99 latency of the requests, errors (exceptions; must be 0) and, from Triton's statistics
endpoint (``/v2/models/NAME/stats``), the mean batch the server ran (inferences / model executions) and the mean
time a request queued. The ratios compare served throughput with the local predictor at batch 1 (the cost of
serving, and the gain of dynamic batching) and at its best batch. Everything of one artifact runs one after the
other in one run, so the ratios hold even on a machine whose absolute speed drifts (shared machines).

Writes ``load_test.json`` and ``load_test.md`` into ``--out`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.cli import key_value

HOST = "127.0.0.1"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}")
    return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def label_maps(predictor, n: int, seed: int = 0) -> np.ndarray:
    """Blocky random maps of the artifact's classes (regions, like real layouts)."""
    rng = np.random.default_rng(seed)
    h, w = predictor.input_size
    coarse = rng.integers(0, predictor.num_classes, size=(n, max(1, h // 16), max(1, w // 16)))
    maps = coarse.repeat(16, axis=1).repeat(16, axis=2)[:, :h, :w]
    return np.pad(maps, ((0, 0), (0, h - maps.shape[1]), (0, w - maps.shape[2])), mode="edge").astype(np.int32)


# ----------------------------------------------------------------------------------------- local rows
def local_rows(artifact: Path, batches: list[int], images: int, log) -> list[dict[str, Any]]:
    from runtimes import load_predictor

    rows = []
    with load_predictor(artifact) as predictor:
        maps = label_maps(predictor, max(batches))
        predictor.generate(maps[:1], seed=0)  # warm-up (first-call compilation)
        for batch in sorted(set(b for b in batches if b <= predictor.max_batch) | {1}):
            calls = max(2, -(-images // batch))
            predictor.generate(maps[:batch], seed=0)
            latencies = []
            start = time.perf_counter()
            for i in range(calls):
                t = time.perf_counter()
                predictor.generate(maps[:batch], seed=i * batch)
                latencies.append(time.perf_counter() - t)
            wall = time.perf_counter() - start
            rows.append({"mode": "local", "batch": batch, "clients": 1, "requests": calls, "images": calls * batch,
                         "images_per_s": calls * batch / wall, "p50_ms": percentile(latencies, 50) * 1000,
                         "p99_ms": percentile(latencies, 99) * 1000, "errors": 0, "mean_batch": float(batch)})
            log(f"[load] local batch {batch}: {rows[-1]['images_per_s']:.2f} images/s")
    return rows


# ---------------------------------------------------------------------------------------- served rows
class Server:
    """``python -m runtimes serve`` in a child process (its own process group), stopped with SIGTERM."""

    def __init__(self, artifact: Path, max_queue_delay_us: int, log_path: Path):
        self.name = "loadtest"
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtimes", "serve", "--model", str(artifact), "--name", self.name, "--host", HOST,
             "--port", str(self.http_port), "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
             "--max-queue-delay-us", str(max_queue_delay_us)],
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )

    mode = "runtimes serve"

    def url(self, protocol: str) -> str:
        port = self.http_port if protocol == "http" else self.grpc_port
        return f"{protocol}://{HOST}:{port}/{self.name}"

    @property
    def http_base(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def wait_ready(self, timeout_s: float) -> None:
        from runtimes import load_predictor

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_file.name}")
            try:
                load_predictor(self.url("http"), timeout=2).close()
                return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError(f"the server was not ready within {timeout_s:.0f} s; see {self.log_file.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log_file.close()


class RepositoryTarget:
    """The artifact's model repository (``python -m export --target triton``) on tritonserver with Triton's own
    backends, in this process's child (:class:`runtimes.serve.RepositoryServer`)."""

    mode = "Triton backends"

    def __init__(self, artifact: Path, backends: str, options: dict[str, Any], out: Path, index: int):
        from export.triton import export_repository
        from runtimes.serve import RepositoryServer

        self.name = "loadtest"
        repo = out / f"repository-{index}"
        export_repository(artifact, repo, {"name": self.name, **options}, overwrite=True)
        self.server = RepositoryServer(repo, host=HOST, http_port=free_port(), grpc_port=free_port(),
                                       metrics_port=free_port(), backend_directory=backends, drain_s=5,
                                       server_log=out / f"triton-{index}.log", start_timeout_s=300)
        self.http_port, self.grpc_port = self.server.endpoints.http_port, self.server.endpoints.grpc_port
        self.server.start()

    url = Server.url
    http_base = Server.http_base

    def stop(self) -> None:
        self.server.stop()


def served_rows(server: Server | RepositoryTarget, clients_levels: list[int], requests: int, protocol: str,
                timeout: float, log) -> list[dict[str, Any]]:
    from runtimes import load_predictor
    from runtimes.serve import describe_metrics, statistics

    rows = []
    predictors = [load_predictor(server.url(protocol), timeout=timeout) for _ in range(max(clients_levels))]
    try:
        maps = label_maps(predictors[0], 64, seed=1)
        for p in predictors[:4]:
            p.generate(maps[0], seed=0)  # warm-up
        for clients in clients_levels:
            before = statistics(server.http_base, server.name)
            latencies: list[list[float]] = [[] for _ in range(clients)]
            errors: list[str] = []
            barrier = threading.Barrier(clients + 1)

            def client(k: int, barrier: threading.Barrier, latencies: list[list[float]], errors: list[str]) -> None:
                barrier.wait()
                for i in range(requests):
                    t = time.perf_counter()
                    try:
                        predictors[k].generate(maps[(k * requests + i) % len(maps)], seed=k * 100_000 + i)
                    except Exception as e:  # counted and reported, the loop goes on
                        errors.append(f"{type(e).__name__}: {e}")
                        continue
                    latencies[k].append(time.perf_counter() - t)

            threads = [threading.Thread(target=client, args=(k, barrier, latencies, errors), daemon=True)
                       for k in range(clients)]
            for thread in threads:
                thread.start()
            barrier.wait()
            start = time.perf_counter()
            for thread in threads:
                thread.join(timeout=timeout * requests + 60)
            wall = time.perf_counter() - start
            if any(thread.is_alive() for thread in threads):
                errors.append("a client thread did not finish")
            counters = statistics(server.http_base, server.name)
            delta = describe_metrics({k: counters.get(k, 0.0) - before.get(k, 0.0) for k in counters})
            flat = [v for per_client in latencies for v in per_client]
            rows.append({"mode": f"{server.mode} ({protocol})", "batch": 1, "clients": clients, "requests": clients * requests,
                         "images": len(flat), "images_per_s": len(flat) / wall, "p50_ms": percentile(flat, 50) * 1000,
                         "p99_ms": percentile(flat, 99) * 1000, "errors": len(errors), "error_samples": errors[:3],
                         "mean_batch": delta["mean_batch"], "mean_queue_ms": delta["mean_queue_ms"]})
            log(f"[load] {server.mode}, {clients} clients: {rows[-1]['images_per_s']:.2f} images/s, "
                f"mean batch {delta['mean_batch']}, errors {len(errors)}")
    finally:
        for p in predictors:
            p.close()
    return rows


# ------------------------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "platform": platform.platform()}


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Date {meta['date']}, {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
             f"`{meta['command']}`", ""]
    for result in results:
        rows = result["rows"]
        local1 = next(r for r in rows if r["mode"] == "local" and r["batch"] == 1)
        best = max((r for r in rows if r["mode"] == "local"), key=lambda r: r["images_per_s"])
        lines += [f"#### {result['artifact']} ({result['target']} {result['precision']}, {result['size']})", "",
                  "| mode | batch | clients | requests | images/s | p50 ms | p99 ms | errors | server mean batch | "
                  "vs local batch 1 | vs local best batch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mean_batch = "-" if r.get("mean_batch") is None else f"{r['mean_batch']:.2f}"
            if r["mode"] == "local":
                mean_batch = "-"
            lines.append(
                f"| {r['mode']} | {r['batch']} | {r['clients']} | {r['requests']} | {r['images_per_s']:.2f} | "
                f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {mean_batch} | "
                f"{r['images_per_s'] / local1['images_per_s']:.2f}x | {r['images_per_s'] / best['images_per_s']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="artifact directory (repeatable)")
    parser.add_argument("--clients", type=_ints, default=[1, 4, 16], help="concurrent clients per level (default 1,4,16)")
    parser.add_argument("--requests", type=_ints, default=[20],
                        help="requests per client, one value or one per --model (default 20)")
    parser.add_argument("--local-batches", type=_ints, default=[1, 4, 16], help="local predictor batches (default 1,4,16)")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--triton-backends", default=None, metavar="DIR",
                        help="also serve each artifact's model repository on tritonserver with Triton's own backends in DIR")
    parser.add_argument("--repo-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="option of that repository (export --target triton -o), e.g. instances=2")
    parser.add_argument("--backend-version", type=key_value, action="append", default=[], metavar="LIBRARY=VERSION",
                        help="the runtime a backend in --triton-backends is built against, e.g. onnxruntime=1.32.0 "
                             "(the repository's -o backend_version for artifacts of that runtime)")
    parser.add_argument("--out", default=None, help="folder for load_test.json and load_test.md")
    args = parser.parse_args(argv)
    if args.triton_backends and not Path(args.triton_backends).is_dir():
        parser.error(f"--triton-backends {args.triton_backends}: not a folder (Triton's backend directory)")
    if len(args.requests) not in (1, len(args.model)):
        parser.error("--requests takes one value, or one per --model")
    for model in args.model:
        if not (Path(model) / "model.json").is_file():
            parser.error(f"--model {model}: no model.json there (give an artifact folder)")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dp-sims-load-"))
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file")
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from runtimes import read_manifest

    results = []
    for i, model in enumerate(args.model):
        artifact = Path(model)
        requests = args.requests[0] if len(args.requests) == 1 else args.requests[i]
        manifest = read_manifest(artifact)
        log(f"[load] {artifact}: local predictor")
        rows = local_rows(artifact, args.local_batches, images=max(8, requests), log=log)
        log(f"[load] {artifact}: serving")
        server = Server(artifact, args.max_queue_delay_us, out / f"server-{i}.log")
        try:
            server.wait_ready(300)
            rows += served_rows(server, args.clients, requests, args.protocol, args.timeout, log)
        finally:
            server.stop()
        if args.triton_backends:
            log(f"[load] {artifact}: its model repository on Triton's own backends")
            from export.triton import RUNTIME_LIBRARY

            options = dict(args.repo_option)
            built_against = {k: str(v) for k, v in args.backend_version}.get(RUNTIME_LIBRARY.get(manifest.target, ""))
            if built_against:
                options.setdefault("backend_version", built_against)
            target = RepositoryTarget(artifact, args.triton_backends, options, out, i)
            try:
                rows += served_rows(target, args.clients, requests, args.protocol, args.timeout, log)
            finally:
                target.stop()
        results.append({"artifact": artifact.name, "target": manifest.target, "precision": manifest.precision,
                        "size": "x".join(map(str, manifest.input_size)), "requests_per_client": requests, "rows": rows})
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "command": "python -m benchmarks.load_test " + " ".join(argv if argv is not None else sys.argv[1:])}
    (out / "load_test.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (out / "load_test.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    print(f"written: {out / 'load_test.md'}, {out / 'load_test.json'}")
    return 1 if any(r["errors"] for result in results for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
