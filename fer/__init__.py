"""Facial-expression recognition on FER-2013 with PyTorch Lightning and Hydra."""

from pathlib import Path

from omegaconf import OmegaConf

ASSETS = Path(__file__).resolve().parent / "assets"
"""The shipped models: the emotion classifier (+ its ONNX graph) and the GAN generator, with cards."""

# `${paths.assets}` in the configs: the installed package's assets, whatever the working directory
OmegaConf.register_new_resolver("fer.assets", lambda: str(ASSETS), replace=True)

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
"""The 7 classes, in the order of the model's outputs (alphabetical, as the Kaggle folders)."""

EMOTION_COLORS = {
    "angry": "#dc2828", "disgust": "#3c8c28", "fear": "#a03ca0", "happy": "#ffc800",
    "neutral": "#b4b4b4", "sad": "#2878c8", "surprise": "#00dcdc",
}
"""The palette: one colour per emotion (RGB hex) for every annotated frame, plot and page."""


def emotion_bgr(name: str) -> tuple[int, int, int]:
    """An emotion's palette colour as OpenCV's (blue, green, red)."""
    rgb = EMOTION_COLORS[name]
    return int(rgb[5:7], 16), int(rgb[3:5], 16), int(rgb[1:3], 16)


class FERError(Exception):
    """Bad input from the user (file, CSV row, folder or config value); the message names it."""


class ConfigError(FERError):
    """A bad config value or argument (a usage error: the entry scripts exit with code 2)."""


def __getattr__(name: str):
    """`from fer import Recognizer` without importing torch and MTCNN for `from fer import EMOTIONS`."""
    if name == "Recognizer":
        from fer.app.recognizer import Recognizer

        return Recognizer
    raise AttributeError(f"module 'fer' has no attribute {name!r}")
