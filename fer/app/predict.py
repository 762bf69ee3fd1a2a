"""The prediction stage and its command, `fer-predict`: images, folders, videos and webcams in;
predictions.json, predictions.csv, annotated copies and emotion-over-time plots out.

    fer-predict photo.jpg holiday/ clip.mp4 -o out/
    fer-predict --webcam 0 --smoothing 0.6
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from fer import ConfigError, FERError
from fer.app.annotate import annotate
from fer.app.media import capture_fps, expand_inputs, frames, is_video, open_capture, read_image
from fer.app.recognizer import CSV_COLUMNS, FaceRecord, Recognizer
from fer.data.fer2013 import write_text_atomic
from fer.reports.figures import emotion_timeline_figure, save

log = logging.getLogger(__name__)

IMAGE_CHUNK = 16  # images detected and classified together
ANNOTATED_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class PredictionWriter:
    """Everything one run writes under its output folder. The CSV is written as faces come (a
    long video never waits in memory as frames); the JSON, with the per-source summary, at the end."""

    def __init__(self, out: Path, model: dict) -> None:
        self.out = out
        self.model = model
        self.sources: list[dict] = []
        self.records: list[dict] = []
        self._names: set[str] = set()
        self._csv_file = open(out / "predictions.csv", "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, CSV_COLUMNS)
        self._csv.writeheader()

    def add(self, records: Sequence[FaceRecord]) -> None:
        for record in records:
            self._csv.writerow(record.to_row())
            self.records.append(record.to_dict())

    def path_for(self, source: Path | str, suffix: str, stem_suffix: str = "", folder: str = "annotated") -> Path:
        """A fresh file name under out/folder for one source (two inputs named alike get _2, _3)."""
        stem = Path(source).stem + stem_suffix
        name, k = f"{stem}{suffix}", 1
        while f"{folder}/{name}" in self._names:
            k += 1
            name = f"{stem}_{k}{suffix}"
        self._names.add(f"{folder}/{name}")
        (self.out / folder).mkdir(exist_ok=True)
        return self.out / folder / name

    def close(self) -> None:
        self._csv_file.close()
        payload = {"model": self.model, "sources": self.sources, "faces": self.records}
        write_text_atomic(json.dumps(payload, indent=1) + "\n", self.out / "predictions.json")


def prepare_output(out: Path, inputs: Sequence[str]) -> Path:
    """A new or empty output folder, outside every input folder (a later run over that folder
    would read our outputs as inputs); earlier results are never overwritten."""
    out = out.resolve()
    for given in map(Path, inputs):
        if given.is_dir() and out.is_relative_to(given.resolve()):
            raise FERError(f"output folder {out} is inside the input folder {given}: choose another -o")
    if out.exists() and any(out.iterdir()):
        raise FERError(f"output folder {out} is not empty: choose a new -o (earlier results are kept)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def predict_images(paths: Sequence[Path], recognizer: Recognizer, writer: PredictionWriter,
                   draw: bool = True, progress: bool = True) -> None:
    bar = tqdm(total=len(paths), desc="images", unit="image", disable=not progress or not paths)
    for start in range(0, len(paths), IMAGE_CHUNK):
        bar.update(len(paths[start:start + IMAGE_CHUNK]))
        images, sources = [], []
        for path in paths[start:start + IMAGE_CHUNK]:
            try:
                images.append(read_image(path))
                sources.append(path)
            except FERError as error:
                log.error("%s", error)
                writer.sources.append({"source": str(path), "kind": "image", "error": str(error)})
        for path, image, records in zip(sources, images, recognizer.predict_images(images, list(map(str, sources)))):
            writer.add(records)
            entry = {"source": str(path), "kind": "image", "frames": 1, "faces": len(records)}
            if not records:
                entry["note"] = "no face found"
                log.warning("%s: no face found", path)
            writer.sources.append(entry)
            if draw:
                suffix = path.suffix.lower() if path.suffix.lower() in ANNOTATED_SUFFIXES else ".png"
                cv2.imwrite(str(writer.path_for(path, suffix)), annotate(image, records))
    bar.close()


def predict_stream(capture: cv2.VideoCapture, source: str, recognizer: Recognizer, writer: PredictionWriter,
                   every: int = 1, detect_every: int = 1, smoothing: float = 0.0, max_frames: int | None = None,
                   draw: bool = True, show: bool = False, progress: bool = True) -> None:
    """A video file or webcam, frame by frame: records, an annotated video and the timeline plot."""
    fps = capture_fps(capture)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) // every or None
    video = None
    timelines: dict[int, tuple[list[float], list[list[float]]]] = defaultdict(lambda: ([], []))
    n_frames = n_faces = 0
    stream = recognizer.stream(frames(capture, every, max_frames), source, detect_every, smoothing)
    try:
        for _, frame, records in tqdm(stream, desc=Path(source).name, total=total, unit="frame", disable=not progress):
            n_frames += 1
            n_faces += len(records)
            writer.add(records)
            for record in records:
                times, probs = timelines[record.track_id]
                times.append(record.time_s)
                probs.append(list(record.probabilities.values()))
            if draw or show:
                drawn = annotate(frame, records)
            if draw:
                if video is None:
                    path = writer.path_for(source, ".mp4")
                    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps / every, drawn.shape[1::-1])
                video.write(drawn)
            if show:
                cv2.imshow("fer-predict (q quits)", drawn)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
    except KeyboardInterrupt:
        log.info("%s: stopped by the user after %d frames", source, n_frames)
    finally:
        capture.release()
        if video is not None:
            video.release()
    if n_frames == 0:
        raise FERError(f"{source}: no frames could be read")
    entry = {"source": source, "kind": "video", "frames": n_frames, "faces": n_faces, "fps": round(fps, 3)}
    if not n_faces:
        entry["note"] = "no face found"
        log.warning("%s: no face found in %d frames", source, n_frames)
    writer.sources.append(entry)
    # a panel for each face seen in at least a tenth of the frames (at most four, longest first)
    shown = sorted((t for t in timelines.items() if len(t[1][0]) >= max(2, n_frames // 10)),
                   key=lambda t: -len(t[1][0]))[:4]
    if shown:
        figure = emotion_timeline_figure({k: (times, np.array(probs)) for k, (times, probs) in shown}, source)
        save(figure, writer.path_for(source, ".png", "_emotions", folder="timelines"))


def display_available() -> bool:
    """Whether OpenCV can open a window (a GUI build and a display)."""
    try:
        cv2.namedWindow("fer-predict (q quits)")
        return True
    except cv2.error:
        return False


def predict(inputs: Sequence[str], output: str | Path, recognizer: Recognizer, webcam: int | None = None,
            every: int = 1, detect_every: int = 1, smoothing: float = 0.0, max_frames: int | None = None,
            draw: bool = True, progress: bool = True) -> dict:
    """Run the recognizer over `inputs` (image files, folders, videos) and/or a webcam, writing
    everything under `output`. Bad inputs are reported and skipped; returns the run's summary
    (`sources`, `errors`, `faces`)."""
    for name, value in (("--every", every), ("--detect-every", detect_every)):
        if value < 1:
            raise FERError(f"{name} must be >= 1, got {value}")
    if not 0 <= smoothing < 1:
        raise FERError(f"--smoothing must be in [0, 1), got {smoothing}")
    out = prepare_output(Path(output), inputs)
    files, errors = expand_inputs(inputs)
    for error in errors:
        log.error("%s", error)
    writer = PredictionWriter(out, recognizer.model_info())
    try:
        predict_images([p for p in files if not is_video(p)], recognizer, writer, draw, progress)
        streams: list[tuple[str, Path | int]] = [(str(p), p) for p in files if is_video(p)]
        if webcam is not None:
            streams.append((f"webcam{webcam}", webcam))
        for source, target in streams:
            try:
                show = isinstance(target, int) and display_available()
                if isinstance(target, int) and not show:
                    log.warning("no display (or OpenCV without GUI): webcam results go to %s only; Ctrl-C stops", out)
                predict_stream(open_capture(target), source, recognizer, writer, every, detect_every, smoothing,
                               max_frames, draw, show, progress)
            except FERError as error:
                log.error("%s", error)
                writer.sources.append({"source": source, "kind": "video", "error": str(error)})
    finally:
        writer.close()
    errors += [s["error"] for s in writer.sources if "error" in s]
    summary = {"output": str(out), "sources": writer.sources, "errors": errors, "faces": len(writer.records)}
    log.info("%d faces in %d sources (%d errors) -> %s", summary["faces"],
             sum("error" not in s for s in writer.sources), len(errors), out)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fer-predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files, folders (searched recursively) and video files")
    parser.add_argument("--webcam", type=int, metavar="N", help="also read webcam number N")
    parser.add_argument("-o", "--output", type=Path,
                        default=Path("predictions") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
                        help="output folder (new or empty)")
    parser.add_argument("--every", type=int, default=1, metavar="K", help="use every K-th video frame")
    parser.add_argument("--detect-every", type=int, default=3, metavar="N",
                        help="run the face detector on every N-th used frame; landmarks are tracked in between")
    parser.add_argument("--smoothing", type=float, default=0.5,
                        help="video only: weight of a face's previous probabilities (0 = off)")
    parser.add_argument("--min-face", type=int, default=40, metavar="PX", help="smallest face size in pixels")
    parser.add_argument("--min-confidence", type=float, default=0.9, help="smallest face-detection confidence")
    parser.add_argument("--checkpoint", help="a checkpoint of this project (default: the shipped model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=256, help="faces per classifier batch")
    parser.add_argument("--tta", choices=["default", "none", "flip"], default="default",
                        help="views averaged per face: default = the model's own (the shipped model: flip), "
                             "none = the face alone, flip = it and its mirror image")
    parser.add_argument("--max-frames", type=int, help="stop each video or webcam after this many used frames")
    parser.add_argument("--no-annotate", action="store_true", help="write only predictions.json/csv and plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.inputs and args.webcam is None:
        parser.error("give at least one image, folder or video, or --webcam N")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`fer-predict`: exits 1 when nothing could be processed, else 0."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        recognizer = Recognizer(args.checkpoint, args.device, args.min_face, args.min_confidence, args.batch_size, args.tta)
        summary = predict(args.inputs, args.output, recognizer, args.webcam, args.every, args.detect_every,
                          args.smoothing, args.max_frames, not args.no_annotate, not args.no_progress)
    except (FERError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    processed = sum("error" not in s for s in summary["sources"])
    print(f"faces={summary['faces']} sources={processed} errors={len(summary['errors'])} output={summary['output']}")
    return 0 if processed else 1


if __name__ == "__main__":
    sys.exit(main())
