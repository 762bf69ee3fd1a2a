"""Facial-expression recognition on FER-2013 with PyTorch Lightning and Hydra."""

EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
"""The 7 classes, in the order of the model's outputs (alphabetical, as the Kaggle folders)."""


class FERError(Exception):
    """Bad input from the user (file, CSV row, folder or config value); the message names it."""


def __getattr__(name: str):
    """`from fer import Recognizer` without importing torch and MTCNN for `from fer import EMOTIONS`."""
    if name == "Recognizer":
        from fer.app.recognizer import Recognizer

        return Recognizer
    raise AttributeError(f"module 'fer' has no attribute {name!r}")
