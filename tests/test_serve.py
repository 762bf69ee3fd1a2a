"""fer-serve: the HTTP API on images the tests make, its limits, and the page in a real browser."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import struct
import threading
import time
import zlib
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")  # what Starlette's TestClient uses
from fastapi.testclient import TestClient  # noqa: E402

from fer import EMOTION_COLORS, EMOTIONS, Recognizer  # noqa: E402
from fer.app.recognizer import FaceRecord  # noqa: E402
from fer.app.serve import Limits, Pool, create_app  # noqa: E402

FACE = "happy/PublicTest_14330803.jpg"  # a PublicTest face MTCNN finds when pasted large onto a canvas


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer()


@pytest.fixture(scope="module")
def client(recognizer) -> TestClient:
    return TestClient(create_app(recognizer, Limits(max_upload_bytes=200_000)))


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def noise(height: int = 120, width: int = 160) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def face_photo(real_fer2013, tmp_path) -> Path:
    face = cv2.imread(str(real_fer2013 / "test" / FACE), cv2.IMREAD_GRAYSCALE)
    canvas = np.full((480, 640, 3), 110, np.uint8)
    canvas[100:320, 200:420] = cv2.resize(face, (220, 220), interpolation=cv2.INTER_CUBIC)[..., None]
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), canvas)
    return path


def test_health_and_model_card(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["classes"] == list(EMOTIONS) and info["colors"] == EMOTION_COLORS
    assert info["card"]["classes"] == list(EMOTIONS) and "runtime" in info["model"]
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/").status_code == 200 and "fer-serve" in client.get("/").text


def test_an_image_without_a_face_is_a_valid_empty_answer(client):
    for request in ({"files": {"image": ("noise.png", png(noise()), "image/png")}},
                    {"content": png(noise()), "headers": {"content-type": "image/png"}}):
        response = client.post("/v1/predict", **request)
        assert response.status_code == 200, response.text
        assert response.json()["faces"] == [] and response.json()["image"] == {"width": 160, "height": 120}


@pytest.mark.parametrize("field", ["image", "file"])  # `file`: what curl -F and many tutorials send
def test_a_face_comes_back_in_the_schema_of_predictions_json(client, face_photo, field):
    response = client.post("/v1/predict", files={field: ("face.png", face_photo.read_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    (face,) = response.json()["faces"]
    assert set(face) == {f.name for f in fields(FaceRecord)}
    assert list(face["probabilities"]) == list(EMOTIONS) and sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    x1, y1, x2, y2 = face["box"]
    assert 150 < (x1 + x2) / 2 < 470 and 50 < (y1 + y2) / 2 < 370


@pytest.mark.parametrize(("request_kwargs", "status", "message"), [
    ({"content": b"hello, not an image", "headers": {"content-type": "image/png"}}, 415, "not an image"),
    ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty body"),
    ({"content": b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--b--\r\n',  # a form without a file
      "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400, "0 file parts (parts seen: 'note')"),
    ({"files": [("a", ("a.png", b"1", "image/png")), ("b", ("b.png", b"2", "image/png"))]}, 400, "2 file parts (parts seen: 'a', 'b')"),
    ({"content": png(noise(400, 600)), "headers": {"content-type": "image/png"}}, 413, "over the limit of 200000"),
    ({"content": png_claiming(20000, 20000), "headers": {"content-type": "image/png"}}, 413, "decompression-bomb"),
    ({"content": png_claiming(8000, 6000), "headers": {"content-type": "image/png"}}, 413, "8000x6000 pixels is over"),
])
def test_bad_input_is_a_one_line_4xx_and_the_server_keeps_serving(client, request_kwargs, status, message):
    response = client.post("/v1/predict", **request_kwargs)
    assert response.status_code == status and message in response.json()["error"]
    assert "\n" not in response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_a_full_pool_answers_503_at_once(recognizer):
    app = create_app(recognizer, Limits(workers=1, queue=0))
    app.state.pool.slots.acquire()  # the one slot is taken
    response = TestClient(app).post("/v1/predict", content=png(noise()), headers={"content-type": "image/png"})
    assert response.status_code == 503 and "busy" in response.json()["error"]


def test_the_pool_refuses_beyond_workers_plus_queue():
    async def scenario():
        pool, gate = Pool(workers=1, queue=1), threading.Event()
        running = [asyncio.ensure_future(pool.run(gate.wait)) for _ in range(2)]  # one runs, one waits
        await asyncio.sleep(0.1)
        assert await pool.run(lambda: "third") is None
        gate.set()
        assert await asyncio.gather(*running) == [True, True]
        assert await pool.run(lambda: "again") == "again"
    asyncio.run(scenario())


def test_a_bad_or_busy_port_is_one_line_and_exit_code_2(capsys):
    from fer.app.serve import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        for port, message in ((99999, "--port 99999: expected a port number in 1-65535"),
                              (0, "--port 0: expected a port number in 1-65535"),
                              (busy, f"--port {busy} on 127.0.0.1: already in use")):
            assert main(["--port", str(port)]) == 2
            err = capsys.readouterr().err
            assert err == f"error: {message}\n"


# -- the page in a real browser ----------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_the_page_shows_a_box_and_seven_bars_for_a_face(recognizer, face_photo, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(recognizer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.getElementById('model').textContent.includes('runtime') || "
                                   "document.getElementById('model').textContent.startsWith('model:')")
            page.set_input_files("#file", str(face_photo))
            page.wait_for_selector(".face", timeout=30_000)
            assert page.locator("#boxes .box").count() == 1
            assert page.locator(".face .bar").count() == 7
            picture, box = page.locator("#picture").bounding_box(), page.locator("#boxes .box").bounding_box()
            scale = picture["width"] / 640  # the face covers x 200-420, y 100-320 of the 640x480 photo
            assert abs(box["x"] + box["width"] / 2 - picture["x"] - 310 * scale) < 40 * scale
            assert abs(box["y"] + box["height"] / 2 - picture["y"] - 210 * scale) < 50 * scale
            label = page.locator("#boxes .box span").inner_text().split()[-1]
            assert label in EMOTIONS
            border = page.locator("#boxes .box").evaluate("box => getComputedStyle(box).borderTopColor")
            red, green, blue = (int(v) for v in border[border.index("(") + 1:-1].split(",")[:3])
            assert f"#{red:02x}{green:02x}{blue:02x}" == EMOTION_COLORS[label]  # the project's palette
            page.screenshot(path=str(os.environ.get("FER_SERVE_SCREENSHOT", tmp_path / "serve.png")))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_load_script_reports_rate_latency_and_errors(fer_folders, tmp_path, capsys):
    from conftest import compose_config

    from fer.bench.serve import load_serve

    cfg = compose_config("load_serve", tmp_path, [f"data.root={fer_folders}", "clients=2", "seconds=1"])
    result = load_serve(cfg)
    assert result["requests"] >= 2 and result["errors"] == 0 and result["statuses"] == {"200": result["requests"]}
    assert result["ok_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert (tmp_path / "run" / "load_serve.json").is_file()
    assert capsys.readouterr().out.strip().startswith("clients=2 seconds=")
