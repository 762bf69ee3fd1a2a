"""Drawing predictions onto frames: a box per face, its label and a bar per emotion."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fer import EMOTIONS, emotion_bgr
from fer.app.recognizer import FaceRecord


def annotate(frame: np.ndarray, records: Sequence[FaceRecord]) -> np.ndarray:
    """A copy of the BGR (or gray) frame with each face's box, label (and track id), and the
    probabilities as bars beside the box."""
    out = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    height, width = out.shape[:2]
    for record in records:
        x1, y1, x2, y2 = (int(round(v)) for v in record.box)
        side = max(x2 - x1, 1)
        color = emotion_bgr(record.label)
        thick = max(1, side // 80)
        scale = float(np.clip(side / 250, 0.35, 1.2))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)

        text = f"{record.label} {record.probabilities[record.label]:.0%}"
        if record.track_id is not None:
            text += f" #{record.track_id}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = y1 - th - base - 4 if y1 - th - base - 4 >= 0 else y2
        cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 4), color, cv2.FILLED)
        cv2.putText(out, text, (x1 + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)

        # one bar per emotion, right of the box (left of it when there is no room)
        row = max(6, (y2 - y1) // len(EMOTIONS))
        bar_width = max(30, side // 2)
        left = x2 + 4 if x2 + 4 + bar_width < width else max(0, x1 - 4 - bar_width)
        small = scale * 0.6
        for i, name in enumerate(EMOTIONS):
            top = y1 + i * row
            length = int(round(record.probabilities[name] * bar_width))
            cv2.rectangle(out, (left, top + 1), (left + bar_width, top + row - 1), (40, 40, 40), cv2.FILLED)
            cv2.rectangle(out, (left, top + 1), (left + length, top + row - 1), emotion_bgr(name), cv2.FILLED)
            cv2.putText(out, name[:3], (left + 2, top + row - 2), cv2.FONT_HERSHEY_SIMPLEX, small,
                        (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(out, name[:3], (left + 2, top + row - 2), cv2.FONT_HERSHEY_SIMPLEX, small,
                        (255, 255, 255), 1, cv2.LINE_AA)
    return out
