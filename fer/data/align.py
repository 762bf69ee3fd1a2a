"""Face alignment: MTCNN 5-point landmarks and a similarity warp onto FER-2013's own framing.

The training crops (DataModule) and faces found in real photos (prediction app) go through the
same warp onto the same template, so the model sees both framed alike. Coordinates are OpenCV's:
pixel i has its centre at x = i, so a horizontal flip maps x to (size - 1) - x.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN

from fer.progress import time_left

log = logging.getLogger(__name__)

# Median MTCNN landmarks of the 925 faces found in 1024 random FER-2013 training crops (detected as
# align_crops does), averaged with its mirror image about the centre x = 23.5.
TEMPLATE_48 = np.array(
    [[14.5, 18.3], [32.5, 18.3], [23.5, 28.5], [16.1, 37.4], [30.9, 37.4]], dtype=np.float32
)

# Border added around each upscaled crop, as a fraction of its side: MTCNN places landmarks about
# half as noisily (judged by left/right flip consistency) when the face does not touch the frame.
CROP_PAD = 0.2


@dataclass
class Detections:
    """The faces found in one frame, best first (highest probability)."""

    boxes: np.ndarray  # (k, 4) float32 x1, y1, x2, y2
    probs: np.ndarray  # (k,) float32
    landmarks: np.ndarray  # (k, 5, 2) float32 (x, y): eyes, nose, mouth corners (left, right)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


def _template(output_size: int) -> np.ndarray:
    """TEMPLATE_48 scaled to `output_size`, pixel centres kept aligned (as cv2.resize does)."""
    return (TEMPLATE_48 + 0.5) * (output_size / 48) - 0.5


def _to_gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width < image.shape[1] or height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def similarity_warp(image: np.ndarray, landmarks: np.ndarray, output_size: int = 48) -> np.ndarray:
    """Warp `image` (HxW gray or HxWx3 BGR uint8) so that the 5 `landmarks` land on TEMPLATE_48
    (scaled to `output_size`): rotation, uniform scale and translation only, so the face keeps its
    proportions. Returns an output_size x output_size grayscale uint8 image."""
    gray = _to_gray(image)
    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    # A threshold no point can exceed keeps all 5 points inliers: a least-squares fit, not RANSAC.
    matrix, _ = cv2.estimateAffinePartial2D(src, _template(output_size), ransacReprojThreshold=1e6)
    if matrix is None:
        raise ValueError(f"degenerate landmarks: {src.tolist()}")
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        # Bilinear sampling aliases when it shrinks a lot (a big face in a photo): area-average first.
        h, w = gray.shape
        gray = _resize(gray, max(1, round(w * scale)), max(1, round(h * scale)))
        fx, fy = gray.shape[1] / w, gray.shape[0] / h
        small_to_full = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
        matrix = matrix @ small_to_full
    return cv2.warpAffine(gray, matrix, (output_size, output_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


class FaceAligner:
    """An MTCNN detector (weights ship with facenet-pytorch) plus `similarity_warp`. Build it once:
    the three networks load in __init__."""

    def __init__(self, output_size: int = 48, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), crop_upscale: int = 160,
                 batch_size: int = 128, device: str = "cpu") -> None:
        self.output_size = output_size
        self.min_face_size = min_face_size
        self.crop_upscale = crop_upscale
        self.batch_size = batch_size
        self.mtcnn = MTCNN(keep_all=True, post_process=False, min_face_size=min_face_size,
                           thresholds=list(thresholds), device=device)

    def detect(self, frames_rgb: Sequence[np.ndarray] | np.ndarray) -> list[Detections]:
        """Faces in each HxWx3 uint8 RGB frame. MTCNN batches only equal-size images, so frames are
        grouped by size and run in chunks of `batch_size`."""
        frames = list(frames_rgb)
        results = [Detections.empty() for _ in frames]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            # MTCNN fails on frames smaller than the smallest face it looks for; they have none.
            if min(frame.shape[:2]) >= self.min_face_size:
                groups.setdefault(frame.shape, []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                batch = np.stack([np.asarray(frames[i], np.uint8) for i in chunk])
                boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
                for i, b, p, lm in zip(chunk, boxes, probs, points):
                    if b is not None:
                        results[i] = self._detections(b, p, lm)
        return results

    @staticmethod
    def _detections(boxes: np.ndarray, probs: np.ndarray, points: np.ndarray) -> Detections:
        """MTCNN's per-image (object) arrays as float32, sorted by probability."""
        probs = np.asarray(probs, np.float32).reshape(-1)
        order = np.argsort(-probs, kind="stable")
        return Detections(np.asarray(boxes, np.float32).reshape(-1, 4)[order], probs[order],
                          np.asarray(points, np.float32).reshape(-1, 5, 2)[order])

    def align_faces(self, frame: np.ndarray, detections: Detections) -> np.ndarray:
        """(k, S, S) uint8 aligned grayscale faces of one gray or BGR frame, one per detection."""
        gray = _to_gray(frame)
        size = self.output_size
        faces = [similarity_warp(gray, lm, size) for lm in detections.landmarks]
        return np.stack(faces) if faces else np.zeros((0, size, size), np.uint8)

    def align_crops(self, crops: torch.Tensor, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Align (N, H, W) uint8 face crops such as FER-2013's. MTCNN misses most faces at 48 px, so
        each crop is upscaled to `crop_upscale` px (plus a replicated border) for detection; the
        best face's landmarks are scaled back and the warp samples the original crop. Crops without
        a face are kept as they are (resized to the output size).
        Returns (aligned (N, S, S) uint8, found (N,) bool)."""
        if crops.ndim != 3 or crops.dtype != torch.uint8:
            raise ValueError(f"expected an (N, H, W) uint8 tensor, got {tuple(crops.shape)} {crops.dtype}")
        images = crops.cpu().numpy()
        n, h, w = images.shape
        size, up = self.output_size, self.crop_upscale
        pad = round(CROP_PAD * up)
        back = np.array([w / up, h / up], np.float32)  # upscaled -> crop, pixel centres aligned
        aligned = np.empty((n, size, size), np.uint8)
        found = np.zeros(n, bool)
        n_batches = -(-n // self.batch_size)
        log_every = max(1, round(n_batches / 10))
        started = time.monotonic()
        for b, start in enumerate(range(0, n, self.batch_size)):
            batch = images[start:start + self.batch_size]
            padded = np.stack([
                cv2.cvtColor(cv2.copyMakeBorder(_resize(c, up, up), pad, pad, pad, pad, cv2.BORDER_REPLICATE),
                             cv2.COLOR_GRAY2RGB)
                for c in batch
            ])
            for i, (crop, det) in enumerate(zip(batch, self.detect(padded)), start):
                if len(det.probs):
                    aligned[i] = similarity_warp(crop, (det.landmarks[0] - pad + 0.5) * back - 0.5, size)
                    found[i] = True
                else:
                    aligned[i] = crop if crop.shape == (size, size) else _resize(crop, size, size)
            done = min(n, start + self.batch_size)
            if progress and b == 1 < n_batches - 1:  # the first batch carries MTCNN's warm-up
                log.info("aligning %d crops: %s (measured on the first %d)", n,
                         time_left((time.monotonic() - started) / done * (n - done)), done)
            if progress and ((b + 1) % log_every == 0 or b + 1 == n_batches):
                log.info("aligned %d/%d crops, face found in %.1f%%, %s", done, n, 100 * found[:done].mean(),
                         time_left((time.monotonic() - started) / done * (n - done)))
        return torch.from_numpy(aligned), torch.from_numpy(found)
