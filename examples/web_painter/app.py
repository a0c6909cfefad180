"""A GauGAN-style web painter over any DP-SIMS artifact: paint a label map, get images.

    python -m examples.web_painter.app --model artifacts/synthetic-tiny-openvino-int8 [--port 8000]
    python examples/web_painter/app.py --model DIR            # the same

then open http://127.0.0.1:8000/. Needs the ``web`` extra (fastapi, uvicorn, python-multipart, pillow) and the
extra of the artifact's backend (e.g. ``onnx`` or ``openvino``).

API (one predictor, opened at startup and closed at shutdown):

    GET  /                 the page (static/index.html)
    GET  /static/...       the page's files, from this example's static/ folder only
    GET  /api/info         classes (id, name, color), input_size [H, W], num_classes, target, precision, limits
    POST /api/generate     multipart form: label = a PNG of class ids (mode L or P: the pixel values / palette
                           indices are the ids; an RGB PNG in the class colours also works), seed (int, default 0),
                           resize (bool, default false: the map must be input_size) -> image/png
    POST /api/variations   the same fields plus n (1..max_variations) -> JSON {"seeds": [...], "images":
                           [base64 PNG, ...]}, image i made with seed + i

Errors are JSON ``{"detail": "..."}``: 400 for a map the artifact refuses (wrong size, unknown class id, not a
PNG, bad seed or n; the message is the predictor's), 413 for a request body over ``max_upload_bytes``, 422 for a
missing form field.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

try:
    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from PIL import Image
except ImportError as e:  # the example's own dependencies
    raise SystemExit(f"The web painter needs {e.name}: pip install 'dp-sims[web]'") from None

from runtimes import DpSimsError, InputError, Predictor, load_predictor, read_manifest

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_SIDE = 4096  # a label PNG may not decode to more than this per side (a small PNG can hold a huge image)
MAX_VARIATIONS = 8
MAX_SEED = 2**63 - 1 - MAX_VARIATIONS


class BodyLimit:
    """ASGI middleware: a POST body over ``limit`` bytes is answered 413 before the app parses it (by its
    Content-Length, or by counting when the body is streamed without one)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:  # read it all (at most limit bytes), then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        response = JSONResponse(
            {"detail": f"The request is larger than this server's limit of {self.limit} bytes; send a smaller PNG."},
            status_code=413,
        )
        await response(scope, receive, send)


def create_app(artifact_dir: str | Path, device: str = "cpu", *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_variations: int = MAX_VARIATIONS, predictor: Predictor | None = None, **options: Any) -> FastAPI:
    """The painter app for the artifact in ``artifact_dir``. Its manifest is read now (a bad folder fails here);
    the predictor (``predictor``, already open, or one opened on ``device`` with ``options``) is used from startup
    and closed at shutdown."""
    manifest = read_manifest(artifact_dir, verify=False)
    state: dict[str, Predictor] = {}
    opened = [predictor] if predictor is not None else []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["predictor"] = app.state.predictor = opened.pop() if opened else load_predictor(artifact_dir, device, **options)
        try:
            yield
        finally:
            state.pop("predictor").close()
            app.state.predictor = None

    app = FastAPI(title=f"DP-SIMS web painter ({manifest.target} {manifest.precision})", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")  # realpath-checked: no ../ escapes

    def current() -> Predictor:
        if "predictor" not in state:
            raise HTTPException(503, "The model is not loaded (the app is starting or stopping).")
        return state["predictor"]

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        p = current()
        return {
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in p.classes],
            "input_size": list(p.input_size),
            "num_classes": p.num_classes,
            "ignore_id": p.ignore_id,
            "target": p.target,
            "precision": p.precision,
            "max_upload_bytes": max_upload_bytes,
            "max_variations": max_variations,
        }

    @app.post("/api/generate")
    def generate(label: UploadFile = File(...), seed: int = Form(0), resize: bool = Form(False)) -> Response:
        p = current()
        image = p.generate(_read_label(label), seed=_check_seed(seed), resize=resize)
        return Response(_png(image), media_type="image/png", headers={"X-Seed": str(seed)})

    @app.post("/api/variations")
    def variations(label: UploadFile = File(...), seed: int = Form(0), n: int = Form(4),
                   resize: bool = Form(False)) -> dict[str, Any]:
        if not 1 <= n <= max_variations:
            raise HTTPException(400, f"n must be in 1..{max_variations}, got {n}.")
        p = current()
        images = p.generate_variations(_read_label(label), n, seed=_check_seed(seed), resize=resize)
        return {"seeds": [seed + i for i in range(n)], "images": [base64.b64encode(_png(im)).decode() for im in images]}

    return app


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise HTTPException(400, f"seed must be an integer in 0..{MAX_SEED}, got {seed}.")
    return seed


def _read_label(upload: UploadFile) -> Image.Image:
    """The uploaded PNG, decoded; its size is checked before its pixels are."""
    data = upload.file.read()
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        if max(image.size) > MAX_SIDE:
            raise HTTPException(400, f"The label map is {image.width}x{image.height}; at most {MAX_SIDE} per side.")
        image.load()
    except HTTPException:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).split(" <_io.")[0].rstrip(" :")  # pillow names the in-memory file object: not for users
        raise HTTPException(400, f"The label must be a PNG of class ids (mode L or P) ({reason}).") from None
    return image


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    import logging

    import runtimes

    parser = argparse.ArgumentParser(description="Paint label maps in the browser, get DP-SIMS images.")
    parser.add_argument("--version", action="version", version=f"%(prog)s (dp-sims) {runtimes.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--model", required=True, help="artifact folder (the one holding model.json)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, GPU, ... (see load_predictor)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be within 1..65535, got {args.port}.")
    # dp-sims logs under the "dpsims" logger namespace (e.g. the first load of a TensorRT engine)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dpsims").setLevel(logging.WARNING if args.quiet else logging.INFO)
    import uvicorn

    try:  # open the model before serving: a bad artifact or device is one line here, not a server traceback
        predictor = load_predictor(args.model, args.device)
        app = create_app(args.model, args.device, predictor=predictor)
    except DpSimsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"DP-SIMS web painter ({predictor.target} {predictor.precision}): http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
