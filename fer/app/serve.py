"""`fer-serve`: the recognizer behind an HTTP API and a browser page, in one process.

    fer-serve [--host 127.0.0.1] [--port 8000] [--model PATH]

POST /v1/predict (a multipart body with one file, whatever its field's name, or the raw image bytes as the body) returns one record
per face in the schema of fer-predict's predictions.json; GET /v1/model the model card; GET /healthz;
GET / the page; GET /docs FastAPI's own. The model is loaded once; inference runs in a bounded pool
of worker threads, and a request that finds the pool and its queue full gets 503 at once, so memory
stays bounded under any load. Needs the `serve` extra: pip install -e '.[serve]'.
"""

import argparse
import asyncio
import errno
import io
import json
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer import EMOTION_COLORS, EMOTIONS, FERError
from fer.app.recognizer import Recognizer

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")


@dataclass
class Limits:
    """What one request may cost: bytes uploaded, pixels decoded, and how many requests may run or wait."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    workers: int = 2
    queue: int = 8


class BadImage(Exception):
    """An upload that is not an image this server will decode: (status code, one-line reason)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """BGR pixels of an uploaded image, after checking its size and (from the header alone, before
    any pixel is decoded) its dimensions, so a decompression bomb costs nothing."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadImage(400, "empty body: send an image (one multipart file, or the raw bytes)")
    if len(data) > limits.max_upload_bytes:
        raise BadImage(413, f"upload of {len(data)} bytes is over the limit of {limits.max_upload_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise BadImage(415, f"not an image this server can read ({type(error).__name__})") from None
    except Image.DecompressionBombError:
        raise BadImage(413, "image dimensions are over the decompression-bomb limit") from None
    if width * height > limits.max_pixels:
        raise BadImage(413, f"image of {width}x{height} pixels is over the limit of {limits.max_pixels} pixels")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadImage(415, "the image could not be decoded (truncated or unsupported encoding)")
    return image


class Pool:
    """A fixed number of worker threads and a bounded queue: `submit` refuses (returns None) when
    `workers + queue` requests are already in, instead of letting them pile up."""

    def __init__(self, workers: int, queue: int):
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fer-serve")
        self.slots = threading.BoundedSemaphore(workers + queue)

    async def run(self, fn, *args):
        if not self.slots.acquire(blocking=False):
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.slots.release()


def model_card(recognizer: Recognizer) -> dict:
    """The card beside the checkpoint (the shipped model has one), with what this server runs."""
    card_path = recognizer.checkpoint_path.with_name("model_card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    return {"classes": list(EMOTIONS), "colors": EMOTION_COLORS, "model": recognizer.model_info(), "card": card}


def create_app(recognizer: Recognizer, limits: Limits | None = None):
    """The FastAPI application around one loaded `recognizer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    limits = limits or Limits()
    pool = Pool(limits.workers, limits.queue)
    card = model_card(recognizer)
    app = FastAPI(title="fer-serve", description="Facial-expression recognition: 7 emotions per face.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    def predict(image: np.ndarray) -> list[dict]:
        return [record.to_dict() for record in recognizer.predict(image, source="upload")]

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model() -> dict:
        return card

    @app.post("/v1/predict")
    async def predict_route(request: Request):
        """One image: multipart/form-data with one file part (`image`, `file`, any name), or the raw
        bytes as the body."""
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_upload_bytes + 64 * 1024:  # refuse before reading a huge body
            return error(413, f"upload of {declared} bytes is over the limit of {limits.max_upload_bytes}")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            files = [(name, part) for name, part in form.multi_items() if not isinstance(part, str)]
            if len(files) != 1:
                seen = ", ".join(repr(name) for name, _ in form.multi_items()) or "none"
                return error(400, f"multipart upload with {len(files)} file parts (parts seen: {seen}): send exactly one image file")
            data = await files[0][1].read()
        else:
            data = await request.body()
        try:
            image = decode_image(data, limits)
        except BadImage as bad:
            return error(bad.status, bad.reason)
        faces = await pool.run(predict, image)
        if faces is None:
            return error(503, f"busy: {limits.workers + limits.queue} requests are already in; retry shortly")
        return {"image": {"width": image.shape[1], "height": image.shape[0]}, "model": card["model"], "faces": faces}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.state.pool = pool
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fer-serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", help="a checkpoint of this project (default: the shipped model)")
    parser.add_argument("--max-upload-mb", type=float, default=10, help="largest accepted upload")
    parser.add_argument("--workers", type=int, default=2, help="images analysed at once")
    parser.add_argument("--queue", type=int, default=8, help="requests that may wait for a worker; more get 503")
    parser.add_argument("--min-face", type=int, default=40, metavar="PX", help="smallest face size in pixels")
    parser.add_argument("--tta", choices=["default", "none", "flip"], default="default",
                        help="views averaged per face: default = the model's own, none = the face alone, flip = + mirror")
    args = parser.parse_args(argv)
    for name in ("workers", "max_upload_mb"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.queue < 0:
        parser.error(f"--queue must be >= 0, got {args.queue}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        import uvicorn
    except ImportError:
        print("error: fer-serve needs the serve extra: pip install -e '.[serve]'", file=sys.stderr)
        return 1
    try:
        listening_socket = bind(args.host, args.port)
        recognizer = Recognizer(args.model, min_face_size=args.min_face, tta=args.tta)
    except (FERError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), workers=args.workers, queue=args.queue)
    server = uvicorn.Server(uvicorn.Config(create_app(recognizer, limits), host=args.host, port=args.port, log_level="info"))
    server.run(sockets=[listening_socket])
    return 0


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before the model loads, so a bad or busy port is one
    line naming it (FERError) rather than the web server's traceback."""
    if not 1 <= port <= 65535:
        raise FERError(f"--port {port}: expected a port number in 1-65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise FERError(f"--host {host!r}: not an address this machine can listen on ({error})") from None
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        reason = "already in use" if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        raise FERError(f"--port {port} on {host}: {reason}") from None
    listening.listen(2048)
    return listening


if __name__ == "__main__":
    sys.exit(main())
