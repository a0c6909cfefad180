"""examples/web_painter: the API through fastapi's TestClient, and the page in headless Chromium (Debian's
/usr/bin/chromium driven by playwright; skipped, naming what is missing, where either is absent)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from runtime_artifacts import INPUT_SIZE, NUM_CLASSES, build_artifact, tiny_classes, tiny_generator

from runtimes import ManifestError, PredictorClosed, load_predictor

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the example is run from the repository root, not installed
    sys.path.insert(0, str(ROOT))
from examples.web_painter.app import create_app  # noqa: E402

H, W = INPUT_SIZE
CHROMIUM = os.environ.get("DPSIMS_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("web_painter"), "onnx", tiny_generator(), tiny_classes())


@pytest.fixture(scope="module")
def predictor(artifact):
    with load_predictor(artifact, "cpu") as p:
        yield p


@pytest.fixture(scope="module")
def client(artifact):
    with TestClient(create_app(artifact)) as c:
        yield c


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if mode == "P":
        image = image.convert("P")  # an L image converted to P keeps its values as palette indices
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blocks(*ids: int) -> np.ndarray:
    """A map of vertical stripes, one per id."""
    return np.repeat(np.array(ids, dtype=np.uint8), -(-W // len(ids)))[:W][None].repeat(H, axis=0)


def post(client, url: str, label: bytes, **fields):
    return client.post(url, files={"label": ("label.png", label, "image/png")}, data={k: str(v) for k, v in fields.items()})


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------------------------------- API
def test_info_describes_the_artifact(client):
    info = client.get("/api/info").json()
    assert info["input_size"] == [H, W] and info["num_classes"] == NUM_CLASSES
    assert (info["target"], info["precision"]) == ("onnx", "fp32")
    assert info["classes"] == [{"id": c.id, "name": c.name, "color": list(c.color)} for c in tiny_classes()]
    assert info["max_upload_bytes"] == 2 * 1024 * 1024


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="label-canvas"' in page.text and "/static/app.js" in page.text
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
                                  "/static/%2e%2e%2f%2e%2e%2fruntime_artifacts.py", "/static//etc/passwd",
                                  "/static/../../../../etc/passwd", "/app.py"])
def test_static_files_cannot_escape_their_folder(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "create_app" not in r.text and "root:" not in r.text


def test_generate_returns_the_predictors_image(client, predictor):
    label = blocks(0, 1, 2, 3)
    r = post(client, "/api/generate", png(label), seed=7)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = decode(r.content)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, predictor.generate(label, seed=7))
    # a palette PNG (mode P: the indices are the ids) is the same map
    np.testing.assert_array_equal(decode(post(client, "/api/generate", png(label, "P"), seed=7).content), image)


def test_different_maps_and_seeds_give_different_images(client):
    a = decode(post(client, "/api/generate", png(blocks(0, 1)), seed=0).content)
    b = decode(post(client, "/api/generate", png(blocks(3, 4)), seed=0).content)
    a_again = decode(post(client, "/api/generate", png(blocks(0, 1)), seed=0).content)
    a_seed1 = decode(post(client, "/api/generate", png(blocks(0, 1)), seed=1).content)
    assert np.abs(a.astype(int) - b).mean() > 2
    np.testing.assert_array_equal(a, a_again)
    assert not np.array_equal(a, a_seed1)


def test_variations_use_consecutive_seeds(client, predictor):
    label = blocks(2, 4)
    r = post(client, "/api/variations", png(label), seed=5, n=3)
    assert r.status_code == 200
    body = r.json()
    assert body["seeds"] == [5, 6, 7] and len(body["images"]) == 3
    images = np.stack([decode(base64.b64decode(s)) for s in body["images"]])
    np.testing.assert_array_equal(images, predictor.generate_variations(label, 3, seed=5))
    for n in (0, 9):
        r = post(client, "/api/variations", png(label), seed=0, n=n)
        assert r.status_code == 400 and "1..8" in r.json()["detail"]


def test_a_map_of_another_size_is_refused_or_resized(client):
    r = post(client, "/api/generate", png(np.zeros((H * 2, W), np.uint8)))
    assert r.status_code == 400 and f"takes {H}x{W} label maps, got {2 * H}x{W}" in r.json()["detail"]
    r = post(client, "/api/generate", png(np.zeros((H * 2, W), np.uint8)), resize="true")
    assert r.status_code == 200 and decode(r.content).shape == (H, W, 3)


def test_unknown_class_ids_are_refused_with_the_predictors_message(client):
    label = blocks(0, 1)
    label[3, 4] = NUM_CLASSES
    r = post(client, "/api/generate", png(label))
    assert r.status_code == 400
    assert f"class id {NUM_CLASSES} at (3, 4)" in r.json()["detail"] and f"0..{NUM_CLASSES - 1}" in r.json()["detail"]


@pytest.mark.parametrize("field, body, status, words", [
    ("label", b"not a png", 400, "PNG of class ids"),
    ("seed", "-1", 400, "seed must be"),
    ("seed", "abc", 422, "seed"),
])
def test_bad_requests_say_what_is_wrong(client, field, body, status, words):
    fields = {"seed": "0"}
    label = png(blocks(0))
    if field == "label":
        label = body
    else:
        fields[field] = body
    r = client.post("/api/generate", files={"label": ("l.png", label, "image/png")}, data=fields)
    assert r.status_code == status and words in str(r.json()["detail"])
    assert client.post("/api/generate", data={"seed": "0"}).status_code == 422  # no label at all


def test_an_oversized_upload_is_refused_with_413(client):
    big = os.urandom(2 * 1024 * 1024 + 1)
    r = client.post("/api/generate", files={"label": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "2097152 bytes" in r.json()["detail"]

    def stream():  # no Content-Length: counted as it arrives
        for _ in range(3):
            yield b"x" * (1024 * 1024)

    r = client.post("/api/generate", content=stream(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def test_huge_decoded_size_is_refused(client):
    buffer = io.BytesIO()
    Image.new("L", (5000, 8)).save(buffer, format="PNG")  # small file, too wide
    r = post(client, "/api/generate", buffer.getvalue(), resize="true")
    assert r.status_code == 400 and "at most 4096" in r.json()["detail"]


def test_the_predictor_opens_at_startup_and_closes_at_shutdown(artifact):
    app = create_app(artifact)
    with TestClient(app):
        predictor = app.state.predictor
        assert predictor.generate(blocks(0), seed=0).shape == (H, W, 3)
    assert app.state.predictor is None
    with pytest.raises(PredictorClosed):
        predictor.generate(blocks(0), seed=0)


def test_a_folder_without_an_artifact_fails_at_once(tmp_path):
    with pytest.raises(ManifestError):
        create_app(tmp_path)


# ----------------------------------------------------------------------------------------------- browser
def _browser_missing() -> str | None:
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"chromium ({CHROMIUM}: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright, in the web extra)")
    return " and ".join(missing) or None


@pytest.fixture
def server_url(artifact):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(artifact), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

READ_RESULT = """() => {
  const img = document.getElementById('result');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  return {w: img.naturalWidth, h: img.naturalHeight, px: Array.from(g.getImageData(0, 0, c.width, c.height).data)};
}"""


def _result_rgb(page) -> np.ndarray:
    r = page.evaluate(READ_RESULT)
    return np.asarray(r["px"], dtype=np.uint8).reshape(r["h"], r["w"], 4)[..., :3]


def _drag(page, box, points):
    """Press at points[0], move through the rest, release; points are fractions of the canvas."""
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + points[0][0] * box["width"], y0 + points[0][1] * box["height"])
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(x0 + fx * box["width"], y0 + fy * box["height"], steps=4)
    page.mouse.up()


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_paint_and_generate_in_chromium(server_url, predictor, tmp_path):
    missing = _browser_missing()
    if missing:
        pytest.skip(f"the browser test needs {missing}")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 760},
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server_url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=15000)
            assert page.locator("#class-list li").count() == NUM_CLASSES
            assert page.evaluate("[painter.width, painter.height]") == [W, H]

            page.click("#class-list li[data-class-id='1']")
            page.click("#fill-all")
            page.click("#class-list li[data-class-id='3']")
            page.fill("#brush-size", "6")
            page.dispatch_event("#brush-size", "input")
            box = page.locator("#label-canvas").bounding_box()
            _drag(page, box, [(0.1, 0.2), (0.8, 0.2), (0.8, 0.5), (0.1, 0.5)])
            ids = np.asarray(page.evaluate("Array.from(painter.ids)"), dtype=np.uint8).reshape(H, W)
            assert set(np.unique(ids)) == {1, 3} and 50 < (ids == 3).sum() < H * W / 2

            page.fill("#seed", "11")
            page.click("#generate")
            page.wait_for_selector("#result[data-generation='1']", timeout=30000)
            first = _result_rgb(page)
            assert first.shape == (H, W, 3) and first.std() > 0
            # the browser sent exactly its id map: the image is the predictor's for it
            assert np.abs(first.astype(int) - predictor.generate(ids, seed=11)).max() <= 2

            page.click("#class-list li[data-class-id='4']")
            page.check("#tool-fill")
            page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.2 * box["height"])  # on the class-3 outline
            page.check("#tool-brush")
            _drag(page, box, [(0.2, 0.8), (0.9, 0.9)])
            ids2 = np.asarray(page.evaluate("Array.from(painter.ids)"), dtype=np.uint8).reshape(H, W)
            assert (ids2 == 4).sum() > (ids == 3).sum() and (ids2 == 3).sum() == 0
            page.click("#generate")
            page.wait_for_selector("#result[data-generation='2']", timeout=30000)
            second = _result_rgb(page)
            assert second.shape == (H, W, 3) and np.abs(second.astype(int) - first).mean() > 2
            assert np.abs(second.astype(int) - predictor.generate(ids2, seed=11)).max() <= 2

            page.fill("#n-variations", "3")
            page.click("#variations")
            page.wait_for_selector("#variation-strip[data-count='3']", timeout=30000)
            assert page.locator("#variation-strip img").count() == 3
            assert "error" not in (page.get_attribute("#status", "class") or "")

            shot = tmp_path / "web-painter.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
            if os.environ.get("DPSIMS_SCREENSHOT_DIR"):
                out = Path(os.environ["DPSIMS_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / "web-painter.png")
        finally:
            context.close()
    assert not errors, errors


def test_cli_bad_artifact_or_port_is_one_line_and_exit_2(tmp_path, capsys):
    from examples.web_painter.app import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path)])
    assert e.value.code == 2 and "No model.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path), "--port", "99999"])
    assert e.value.code == 2 and "--port must be within 1..65535" in capsys.readouterr().err
