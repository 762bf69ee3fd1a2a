"""Faces followed from frame to frame: box-overlap matching and per-track probability smoothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x1, y1, x2, y2 boxes."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda boxes: np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)  # noqa: E731
    return intersection / np.maximum(area(a)[:, None] + area(b)[None, :] - intersection, 1e-9)


@dataclass
class Track:
    track_id: int
    box: np.ndarray
    probs: np.ndarray
    missed: int = 0


@dataclass
class IoUTracker:
    """Greedy matching of each frame's boxes to the previous ones (highest overlap first, at least
    `min_iou`); a matched face's probabilities become an exponential moving average,
    `smoothing` * previous + (1 - smoothing) * current (0 = no smoothing). A track survives
    `max_missed` frames without a match, so a face lost for a frame keeps its id."""

    min_iou: float = 0.3
    smoothing: float = 0.0
    max_missed: int = 5
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")

    def update(self, boxes: np.ndarray, probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Track ids and smoothed probabilities for one frame's faces ((k, 4) boxes, (k, 7) probs)."""
        ids = [-1] * len(boxes)
        smoothed = np.array(probs, dtype=np.float32, copy=True)
        matched: set[int] = set()
        if self.tracks and len(boxes):
            overlap = box_iou(np.stack([t.box for t in self.tracks]), np.asarray(boxes))
            for t, f in zip(*np.unravel_index(np.argsort(-overlap, axis=None), overlap.shape)):
                if overlap[t, f] < self.min_iou:
                    break
                if t in matched or ids[f] != -1:
                    continue
                track = self.tracks[t]
                smoothed[f] = self.smoothing * track.probs + (1 - self.smoothing) * smoothed[f]
                track.box, track.probs, track.missed = np.asarray(boxes[f]), smoothed[f], 0
                ids[f] = track.track_id
                matched.add(t)
        for t, track in enumerate(self.tracks):
            if t not in matched:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for f in range(len(boxes)):
            if ids[f] == -1:
                self.tracks.append(Track(self.next_id, np.asarray(boxes[f]), smoothed[f]))
                ids[f] = self.next_id
                self.next_id += 1
        return ids, smoothed
