"""Load test of fer-serve: N concurrent clients post the same 640x480 one-face photo for a fixed
time over loopback; requests/s, latency percentiles and errors (by HTTP status)."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import cv2
from omegaconf import DictConfig

from fer import FERError
from fer.app.recognizer import Recognizer
from fer.app.serve import Limits, create_app
from fer.bench.predict import face_photo
from fer.data.fer2013 import load_split


def start_server(cfg: DictConfig) -> tuple[str, object, threading.Thread]:
    """fer-serve's app on a free loopback port, in a thread of this process."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Recognizer(cfg.checkpoint), Limits(workers=cfg.server.workers, queue=cfg.server.queue))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("fer-serve did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(f"{url}/v1/predict", data=body, headers={"content-type": "image/jpeg"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # no HTTP answer at all (refused, reset, timed out)


def load_serve(cfg: DictConfig) -> dict:
    face = load_split(cfg.data.root, "val", cfg.data.cache_dir).images[cfg.face_index].numpy()
    photo = cv2.imencode(".jpg", face_photo(face, 640, 480), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    url, server, thread = (cfg.url, None, None) if cfg.url else start_server(cfg)
    try:
        if (status := post(url, photo)) != 200:  # also the warm-up
            raise FERError(f"{url}/v1/predict answers {status or 'nothing'} to a plain photo")
        latencies, statuses, lock = [], Counter(), threading.Lock()
        stop = time.monotonic() + cfg.seconds

        def client() -> None:
            while time.monotonic() < stop:
                start = time.perf_counter()
                status = post(url, photo)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    statuses[status] += 1

        started = time.perf_counter()
        clients = [threading.Thread(target=client) for _ in range(cfg.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.perf_counter() - started
    finally:
        if server is not None:
            server.should_exit = True
            thread.join(timeout=10)
    ok = statuses[200]
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    result = {"url": url, "clients": cfg.clients, "seconds": round(elapsed, 1), "requests": len(latencies),
              "ok_per_s": round(ok / elapsed, 1), "p50_ms": round(1000 * cuts[49], 1), "p99_ms": round(1000 * cuts[98], 1),
              "errors": len(latencies) - ok, "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "server": None if cfg.url else dict(cfg.server)}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"clients={result['clients']} seconds={result['seconds']} requests={result['requests']} "
          f"images/s={result['ok_per_s']} p50_ms={result['p50_ms']} p99_ms={result['p99_ms']} "
          f"errors={result['errors']} statuses={result['statuses']}")
    return result
