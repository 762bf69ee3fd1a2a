"""Prediction-speed benchmark: classifier throughput and latency (the default runtime that
`fer-predict` picks, PyTorch, ONNX Runtime fp32 and int8), and frames/second of the whole app on a
640x480 video with one moving face."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from fer.app.predict import predict
from fer.app.recognizer import Recognizer
from fer.data.fer2013 import load_split
from fer.models.deploy import load_face_classifier, load_runtime, onnx_session, rate
from fer.training.export import export_onnx, quantize_int8, real_faces


def face_photo(face: np.ndarray, width: int, height: int, shift: float = 0.0) -> np.ndarray:
    """A BGR width x height photo of one grayscale face, upscaled to 40 % of its height, centred and
    moved right by `shift` (-1..1) of the free space's third."""
    side = int(height * 0.4)
    canvas = np.full((height, width, 3), 100, np.uint8)
    x = (width - side) // 2 + int((width - side) / 3 * shift)
    y = (height - side) // 2
    canvas[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)[..., None]
    return canvas


def write_face_video(path: Path, face: np.ndarray, frames: int, width: int, height: int, fps: float = 30) -> Path:
    """A video of one face swaying left and right."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for t in range(frames):
        writer.write(face_photo(face, width, height, float(np.sin(t / 20))))
    writer.release()
    return path


def bench_predict(cfg: DictConfig) -> dict:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier, checkpoint = load_face_classifier(cfg.checkpoint, cfg.tta)
    public_test = load_split(cfg.data.root, "val", cfg.data.cache_dir)
    faces = public_test.images[: cfg.batch_size].numpy()
    results: dict = {"torch_threads": torch.get_num_threads(), "onnxruntime_threads": os.cpu_count(), "classifier": {}}

    def record(name: str, run_batch: Callable[[np.ndarray], object]) -> None:
        results["classifier"][name] = {
            "faces_per_s": rate(lambda: run_batch(faces), len(faces), cfg.seconds),
            "latency_ms": 1000 / rate(lambda: run_batch(faces[:1]), 1, cfg.seconds),
        }

    default = load_runtime(cfg.checkpoint, cfg.tta)
    results["default_runtime"], results["tta"] = default.description, classifier.tta
    record("default", default)
    with torch.inference_mode():
        record("pytorch", lambda x: classifier(torch.from_numpy(x)))
    if cfg.onnx:
        fp32 = export_onnx(classifier, out / "classifier.onnx", {})
        calibration = real_faces(cfg.data.root, cfg.data.cache_dir, "train", 512,
                                 checkpoint.get("datamodule_hyper_parameters", {}))
        int8 = quantize_int8(fp32, out / "classifier.int8.onnx", calibration)
        for name, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
            runtime = onnx_session(path, threads=os.cpu_count())
            record(name, lambda x, runtime=runtime: runtime.run(None, {"faces": x}))

    video = write_face_video(out / "one_face.mp4", public_test.images[cfg.video.face_index].numpy(), cfg.video.frames,
                             cfg.video.width, cfg.video.height)
    recognizer = Recognizer(cfg.checkpoint, min_face_size=cfg.predict.min_face, tta=cfg.tta)
    results["end_to_end"] = {}
    for detect_every in cfg.predict.detect_every:
        start = time.perf_counter()
        summary = predict([str(video)], out / f"predict_detect_every_{detect_every}", recognizer,
                          detect_every=detect_every, smoothing=0.5, progress=False)
        seconds = time.perf_counter() - start
        frames = summary["sources"][0]["frames"]
        results["end_to_end"][f"detect_every={detect_every}"] = {
            "fps": frames / seconds, "frames": frames, "faces": summary["faces"]}

    (out / "bench_predict.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"default runtime: {results['default_runtime']} tta={classifier.tta}")
    for name, r in results["classifier"].items():
        print(f"classifier {name:10s} batch={cfg.batch_size} faces/s={r['faces_per_s']:.0f} "
              f"batch=1 latency_ms={r['latency_ms']:.2f}")
    for name, r in results["end_to_end"].items():
        print(f"end_to_end {cfg.video.width}x{cfg.video.height} {name} min_face={cfg.predict.min_face} "
              f"frames/s={r['fps']:.1f} faces={r['faces']}/{r['frames']}")
    return results
