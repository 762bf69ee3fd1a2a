"""The prediction API: find, align and classify the faces in images and video frames.

    from fer import Recognizer
    records = Recognizer().predict(cv2.imread("photo.jpg"))    # BGR frames, as OpenCV gives them

Faces are found by MTCNN on a downscaled copy of each frame (small faces cost most of its time),
aligned by the same warp as the training data (`fer.data.align`) and classified in batches
across faces and frames. In a stream, detection can run every N frames: in between, the five
landmarks are followed by Lucas-Kanade optical flow, which costs a fraction of a detection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch

from fer import EMOTIONS
from fer.app.tracking import IoUTracker
from fer.data.align import Detections, FaceAligner
from fer.models.deploy import SHIPPED_MODEL, load_runtime

DETECTOR_MIN_FACE = 20
"""Faces are searched at this size in the detection pass: a frame is shrunk by
min_face_size / DETECTOR_MIN_FACE before MTCNN sees it."""

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class FaceRecord:
    """One face in one frame: where it is and what it shows."""

    source: str
    frame: int
    time_s: float | None  # video time of the frame; None for a still image
    face: int  # index in its frame, most confident detection first
    track_id: int | None  # the same face across a video's frames; None for a still image
    box: list[float]  # x1, y1, x2, y2 in frame pixels
    landmarks: list[list[float]]  # (x, y) of LANDMARK_NAMES
    detection_confidence: float
    probabilities: dict[str, float]  # calibrated, one per emotion
    label: str

    def to_dict(self) -> dict:
        return asdict(self)

    def to_row(self) -> dict:
        """A flat CSV row."""
        row = {k: v for k, v in asdict(self).items() if k not in ("box", "landmarks", "probabilities")}
        row.update(zip(("x1", "y1", "x2", "y2"), self.box))
        for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks):
            row[f"{name}_x"], row[f"{name}_y"] = x, y
        row.update({f"p_{name}": p for name, p in self.probabilities.items()})
        return row


CSV_COLUMNS = list(FaceRecord("", 0, None, 0, None, [0.0] * 4, [[0.0, 0.0]] * 5, 0.0,
                              dict.fromkeys(EMOTIONS, 0.0), "").to_row())


def _round(values: np.ndarray, digits: int) -> list:
    return np.round(values.astype(np.float64), digits).tolist()


class Recognizer:
    """Detector + aligner + calibrated classifier. `checkpoint` defaults to the shipped model, run
    by ONNX Runtime where its graph is shipped and the `onnx` extra installed (PyTorch otherwise);
    `tta` sets the views averaged per face ("default": those the checkpoint was shipped with; "none":
    the face alone; "flip": it and its mirror image). Faces smaller than `min_face_size`
    pixels or detected below `min_confidence` are ignored."""

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", min_face_size: int = 40,
                 min_confidence: float = 0.9, batch_size: int = 256, tta: str = "default") -> None:
        if min_face_size < DETECTOR_MIN_FACE // 2:
            raise ValueError(f"min_face_size must be at least {DETECTOR_MIN_FACE // 2} pixels, got {min_face_size}")
        self.device = torch.device(device)
        self.checkpoint_path = Path(checkpoint or SHIPPED_MODEL)
        self.classify = load_runtime(self.checkpoint_path, tta, device=device, batch_size=batch_size)
        """(N, 48, 48) uint8 aligned faces -> (N, 7) calibrated probabilities"""
        self.min_confidence = min_confidence
        self.detection_scale = min(1.0, DETECTOR_MIN_FACE / min_face_size)
        self.aligner = FaceAligner(output_size=48, min_face_size=min(min_face_size, DETECTOR_MIN_FACE),
                                   batch_size=batch_size, device=str(self.device))

    def model_info(self) -> dict:
        """Which model runs, and how: recorded with every prediction."""
        classifier = self.classify.classifier
        return {"checkpoint": str(self.checkpoint_path), "runtime": self.classify.description, "tta": classifier.tta,
                "temperature": float(classifier.temperature),
                "class_bias": [round(b, 4) for b in classifier.class_bias.tolist()]}

    # -- the stages --------------------------------------------------------------------------
    def detect(self, frames_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in BGR (or gray) frames, in the frames' own pixel coordinates."""
        s = self.detection_scale
        small = []
        for frame in frames_bgr:
            frame = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            if s < 1:
                frame = cv2.resize(frame, (max(1, round(frame.shape[1] * s)), max(1, round(frame.shape[0] * s))),
                                   interpolation=cv2.INTER_AREA)
            small.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        results = []
        for det in self.aligner.detect(small):
            keep = det.probs >= self.min_confidence
            # back to full-resolution pixel centres (cv2.resize maps centres x -> (x + 0.5) * s - 0.5)
            results.append(Detections((det.boxes[keep] + 0.5) / s - 0.5, det.probs[keep],
                                      (det.landmarks[keep] + 0.5) / s - 0.5))
        return results

    # -- images --------------------------------------------------------------------------------
    def predict(self, image: np.ndarray, source: str = "<array>") -> list[FaceRecord]:
        """The faces in one BGR (or gray) image."""
        return self.predict_images([image], [source])[0]

    def predict_images(self, images: Sequence[np.ndarray], sources: Sequence[str]) -> list[list[FaceRecord]]:
        """Still images, detected and classified together (one classifier batch for all faces)."""
        detections = self.detect(images)
        probs = self.classify(self._align(images, detections))
        records, start = [], 0
        for image, det, source in zip(images, detections, sources):
            k = len(det.probs)
            records.append(self._records(source, 0, None, det, probs[start:start + k], None))
            start += k
        return records

    # -- streams -------------------------------------------------------------------------------
    def stream(self, frames: Iterable[tuple[int, float | None, np.ndarray]], source: str, detect_every: int = 1,
               smoothing: float = 0.0, chunk: int = 8) -> Iterator[tuple[int, np.ndarray, list[FaceRecord]]]:
        """(frame index, time, BGR frame) in, (frame index, frame, records) out, in order. Faces get
        track ids, and probabilities smoothed along each track (`smoothing`, 0 = off). Frames are
        worked on `chunk` at a time so detection and classification run batched."""
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        tracker = IoUTracker(smoothing=smoothing)
        previous: tuple[np.ndarray, Detections] | None = None
        count, frames = 0, iter(frames)
        while group := list(islice(frames, chunk)):
            fresh = [k for k in range(len(group)) if (count + k) % detect_every == 0]
            found = dict(zip(fresh, self.detect([group[k][2] for k in fresh])))
            count += len(group)
            grays, detections = [], []
            for k, (_, _, frame) in enumerate(group):
                gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                det = found[k] if k in found or previous is None else _follow(*previous, gray)
                grays.append(gray)
                detections.append(det)
                previous = (gray, det)
            probs = self.classify(self._align(grays, detections))
            start = 0
            for (index, time_s, frame), det in zip(group, detections):
                k = len(det.probs)
                track_ids, smoothed = tracker.update(det.boxes, probs[start:start + k])
                start += k
                yield index, frame, self._records(source, index, time_s, det, smoothed, track_ids)

    # -- helpers -------------------------------------------------------------------------------
    def _align(self, frames: Sequence[np.ndarray], detections: Sequence[Detections]) -> np.ndarray:
        faces = [self.aligner.align_faces(frame, det) for frame, det in zip(frames, detections)]
        return np.concatenate(faces) if faces else np.zeros((0, 48, 48), np.uint8)

    @staticmethod
    def _records(source: str, frame: int, time_s: float | None, det: Detections, probs: np.ndarray,
                 track_ids: Sequence[int] | None) -> list[FaceRecord]:
        return [
            FaceRecord(
                source=source, frame=frame, time_s=None if time_s is None else round(time_s, 3), face=i,
                track_id=None if track_ids is None else int(track_ids[i]),
                box=_round(det.boxes[i], 1), landmarks=_round(det.landmarks[i], 1),
                detection_confidence=round(float(det.probs[i]), 4),
                probabilities=dict(zip(EMOTIONS, _round(probs[i], 4))),
                label=EMOTIONS[int(np.argmax(probs[i]))],
            )
            for i in range(len(det.probs))
        ]


def _follow(previous_gray: np.ndarray, previous: Detections, gray: np.ndarray) -> Detections:
    """Move last frame's faces to this frame by optical flow of their landmarks; a face whose
    landmarks cannot all be followed is dropped until the next detection."""
    if not len(previous.probs):
        return previous
    points = previous.landmarks.reshape(-1, 1, 2).astype(np.float32)
    moved, status, _ = cv2.calcOpticalFlowPyrLK(previous_gray, gray, points, None, winSize=(21, 21), maxLevel=3)
    moved = moved.reshape(-1, 5, 2)
    ok = status.reshape(-1, 5).all(axis=1)
    shift = np.median(moved - previous.landmarks, axis=1)  # (k, 2): each face's displacement
    return Detections((previous.boxes + np.tile(shift, 2))[ok], previous.probs[ok], moved[ok])
