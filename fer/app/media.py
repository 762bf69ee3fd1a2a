"""Reading what users point the prediction app at: image files, folders, videos and webcams."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from fer import FERError
from fer.data.fer2013 import IMAGE_SUFFIXES

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Files as given and the images and videos under folders (recursively, sorted), plus one
    error line per input that yields nothing (missing path, folder without images or videos)."""
    files, errors = [], []
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                errors.append(f"{given}: no images or videos in this folder")
            files.extend(found)
        elif given.is_file():
            files.append(given)
        else:
            errors.append(f"{given}: no such file or folder")
    return files, errors


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 image; one FERError naming the file if it is not a readable image."""
    try:
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except (OSError, cv2.error) as error:
        raise FERError(f"{path}: cannot be read ({error})") from error
    if image is None:
        raise FERError(f"{path}: not a readable image")
    return image


def open_capture(source: Path | int) -> cv2.VideoCapture:
    """An opened OpenCV capture of a video file or a webcam index."""
    capture = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not capture.isOpened():
        what = f"webcam {source}" if isinstance(source, int) else f"{source}: video"
        raise FERError(f"{what} cannot be opened")
    return capture


def capture_fps(capture: cv2.VideoCapture) -> float:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return fps if 0 < fps < 1000 else 30.0


def frames(capture: cv2.VideoCapture, every: int = 1, max_frames: int | None = None
           ) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, seconds, BGR frame) of every `every`-th frame, decoded one at a time (constant
    memory however long the video); skipped frames are grabbed but not decoded."""
    fps = capture_fps(capture)
    index = kept = 0
    while max_frames is None or kept < max_frames:
        if index % every:
            if not capture.grab():
                return
        else:
            ok, frame = capture.read()
            if not ok:
                return
            kept += 1
            yield index, index / fps, frame
        index += 1
