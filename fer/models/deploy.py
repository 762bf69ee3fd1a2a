"""The classifier as prediction uses it: aligned uint8 faces in, calibrated probabilities out.

One module holds everything between an aligned 48x48 face and its 7 probabilities (the
checkpoint's evaluation crop, the network and the fitted temperature), so PyTorch prediction and
the exported ONNX graph compute exactly the same thing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fer.data.augment import center_crop
from fer.models.classifier import EmotionClassifier, load_classifier

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "emotion_classifier.ckpt"
"""The default model, inside the package: prediction works offline right after install."""


class FaceClassifier(nn.Module):
    """(N, 48, 48) uint8 aligned grayscale faces -> (N, 7) probabilities, softmax(logits / T)."""

    def __init__(self, model: EmotionClassifier, image_size: int = 48, temperature: float = 1.0):
        super().__init__()
        self.model = model.eval()
        self.image_size = image_size
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        images = center_crop(faces.unsqueeze(1).float() / 255, self.image_size)
        return (self.model(images) / self.temperature).softmax(dim=1)


def load_face_classifier(path: str | Path | None = None) -> tuple[FaceClassifier, dict]:
    """A `FaceClassifier` from a checkpoint of ours (default: the shipped model), with its
    preprocessing and temperature (1 when the checkpoint was never calibrated)."""
    model, checkpoint = load_classifier(path or SHIPPED_MODEL)
    image_size = checkpoint.get("datamodule_hyper_parameters", {}).get("image_size", 48)
    return FaceClassifier(model, image_size, checkpoint.get("temperature", 1.0)), checkpoint
