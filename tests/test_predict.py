"""The prediction app: tracker, recognizer API, fer-predict outputs and bad input, ONNX export,
the shipped model and the ship stage."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, run_script, write_folders

from fer import EMOTIONS, Recognizer
from fer.app.predict import main as fer_predict
from fer.app.recognizer import CSV_COLUMNS
from fer.app.tracking import IoUTracker, box_iou
from fer.models.deploy import SHIPPED_MODEL, load_face_classifier
from fer.training.ship import calibrate, fit_temperature

# PublicTest faces that MTCNN finds when pasted onto a canvas at 80-220 px
REAL_FACES = ("angry/PublicTest_29284838.jpg", "happy/PublicTest_14330803.jpg", "neutral/PublicTest_28610462.jpg")
PLACES = ((20, 30, 220), (300, 60, 140), (500, 250, 80))  # x, y, side on a 480x640 canvas


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer()


def paste(canvas: np.ndarray, face: np.ndarray, x: int, y: int, side: int) -> None:
    canvas[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)[..., None]


@pytest.fixture
def real_faces(real_fer2013) -> list[np.ndarray]:
    return [cv2.imread(str(real_fer2013 / "test" / name), cv2.IMREAD_GRAYSCALE) for name in REAL_FACES]


@pytest.fixture
def group_photo(real_faces, tmp_path) -> Path:
    canvas = np.full((480, 640, 3), 110, np.uint8)
    for face, place in zip(real_faces, PLACES):
        paste(canvas, face, *place)
    path = tmp_path / "inputs" / "group.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), canvas)
    return path


def face_video(path: Path, face: np.ndarray, frames: int = 24) -> tuple[Path, list[int]]:
    """One face moving right by 4 px a frame; returns the video and the face's x per frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12, (640, 480))
    xs = [100 + 4 * t for t in range(frames)]
    for x in xs:
        canvas = np.full((480, 640, 3), 100, np.uint8)
        paste(canvas, face, x, 120, 200)
        writer.write(canvas)
    writer.release()
    return path, xs


def fer_predict_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), "--no-progress", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


# -- tracking --------------------------------------------------------------------------------------
def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-6)


def test_tracker_keeps_ids_and_smooths_probabilities():
    tracker = IoUTracker(smoothing=0.5)
    first, second = np.eye(7, dtype=np.float32)[[0, 3]]
    ids, probs = tracker.update(np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32), np.stack([first, second]))
    assert ids == [0, 1]
    # the faces swap order and move a little; a third appears
    ids, probs = tracker.update(np.array([[52, 51, 62, 61], [1, 0, 11, 10], [200, 200, 210, 210]], np.float32),
                                np.stack([first, second, second]))
    assert ids == [1, 0, 2]
    np.testing.assert_allclose(probs[0], 0.5 * second + 0.5 * first)  # track 1 was `second`
    np.testing.assert_allclose(probs[2], second)  # a new track is not smoothed
    with pytest.raises(ValueError, match="smoothing"):
        IoUTracker(smoothing=1.0)


def test_tracker_forgets_a_face_after_max_missed_frames():
    tracker = IoUTracker(max_missed=1)
    box, p = np.array([[0, 0, 10, 10]], np.float32), np.full((1, 7), 1 / 7, np.float32)
    assert tracker.update(box, p)[0] == [0]
    tracker.update(box[:0], p[:0])  # missed once: kept
    assert tracker.update(box, p)[0] == [0]
    tracker.update(box[:0], p[:0])
    tracker.update(box[:0], p[:0])  # missed twice: dropped
    assert tracker.update(box, p)[0] == [1]


# -- temperature scaling ---------------------------------------------------------------------------
def test_fit_temperature_recovers_a_known_overconfidence():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 7, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)  # calibrated by construction
    assert fit_temperature(torch.log_softmax(3 * logits, 1), labels) == pytest.approx(3.0, rel=0.05)
    report = calibrate(torch.softmax(3 * logits, 1), labels)
    assert report["ece_after"] < report["ece_before"] / 3
    assert report["ece_after_two_fold"] < report["ece_before"] / 3


# -- the shipped model -----------------------------------------------------------------------------
def test_shipped_model_is_small_calibrated_and_described():
    assert SHIPPED_MODEL.stat().st_size < 10 * 2**20
    classifier, checkpoint = load_face_classifier()
    card = json.loads((SHIPPED_MODEL.parent / "model_card.json").read_text())
    assert float(classifier.temperature) == pytest.approx(card["calibration"]["temperature"])
    assert card["classes"] == list(EMOTIONS)
    assert card["training"]["command"].startswith("python scripts/pipeline.py experiment=ship_student")  # made by the pipeline
    assert {"accuracy", "macro_f1", "recall"} <= card["public_test"].keys()
    probs = classifier(torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8))
    assert probs.shape == (5, 7) and torch.allclose(probs.sum(1), torch.ones(5))


def test_evaluate_accepts_the_shipped_model(tmp_path):
    root = write_folders(tmp_path / "fer2013", {"Training": 1, "PublicTest": 2})
    run_script("evaluate.py", [f"ckpt_path={SHIPPED_MODEL}", "split=val", f"data.root={root}",
                               f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 14 and str(SHIPPED_MODEL) in json.dumps(metrics)
    # scored as prediction classifies a face: the shipped views, through the shipped graph
    member = metrics["members"][0]
    assert member["tta"] == torch.load(SHIPPED_MODEL, weights_only=True).get("tta", "none")
    assert member["runtime"].startswith("onnxruntime emotion_classifier")


# -- recognizer API --------------------------------------------------------------------------------
def test_recognizer_finds_no_face_in_noise(recognizer):
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert recognizer.predict(noise) == []


def test_recognizer_finds_pasted_real_faces_at_three_scales(recognizer, group_photo):
    records = recognizer.predict(cv2.imread(str(group_photo)), source="group")
    assert len(records) == 3
    for x, y, side in PLACES:
        centre = np.array([x + side / 2, y + side / 2])
        hits = [r for r in records if np.linalg.norm(np.reshape(r.box, (2, 2)).mean(0) - centre) < side / 3]
        assert len(hits) == 1, f"no single face found at {(x, y, side)}"
        record = hits[0]
        assert record.label in EMOTIONS and sum(record.probabilities.values()) == pytest.approx(1, abs=1e-3)
        assert record.label == max(record.probabilities, key=record.probabilities.get)
        eyes = np.array(record.landmarks[:2])
        assert eyes[0, 0] < eyes[1, 0]  # left eye left of the right eye


# -- fer-predict -----------------------------------------------------------------------------------
def test_fer_predict_image_folder_writes_json_csv_and_annotations(group_photo, tmp_path):
    inputs = group_photo.parent
    (inputs / "nested").mkdir()
    cv2.imwrite(str(inputs / "nested" / "blank.jpg"), np.full((100, 100, 3), 128, np.uint8))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert fer_predict([str(inputs), "--no-progress", "-o", str(out)]) == 0

    payload = json.loads((out / "predictions.json").read_text())
    by_source = {Path(s["source"]).name: s for s in payload["sources"]}
    assert by_source["group.png"]["faces"] == 3
    assert by_source["blank.jpg"] == {"source": str(inputs / "nested" / "blank.jpg"), "kind": "image",
                                      "frames": 1, "faces": 0, "note": "no face found"}
    assert "not a readable image" in by_source["broken.jpg"]["error"]
    assert payload["model"]["checkpoint"] == str(SHIPPED_MODEL)
    face = payload["faces"][0]
    assert set(face) == {"source", "frame", "time_s", "face", "track_id", "box", "landmarks",
                         "detection_confidence", "probabilities", "label"}
    assert len(face["box"]) == 4 and np.shape(face["landmarks"]) == (5, 2) and list(face["probabilities"]) == list(EMOTIONS)

    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 3
    annotated = cv2.imread(str(out / "annotated" / "group.png"))
    assert annotated.shape == (480, 640, 3) and not np.array_equal(annotated, cv2.imread(str(group_photo)))
    assert (out / "annotated" / "blank.jpg").is_file()


def test_fer_predict_video_tracks_one_face_and_plots_it(real_faces, tmp_path):
    video, xs = face_video(tmp_path / "clip.mp4", real_faces[1])
    out = tmp_path / "out"
    assert fer_predict([str(video), "--detect-every", "3", "--no-progress", "-o", str(out)]) == 0
    faces = json.loads((out / "predictions.json").read_text())["faces"]
    assert [f["frame"] for f in faces] == list(range(len(xs)))  # one face in every frame
    assert {f["track_id"] for f in faces} == {0}
    assert [f["time_s"] for f in faces] == pytest.approx([t / 12 for t in range(len(xs))], abs=1e-3)
    # boxes follow the face between detections too (optical flow on frames 1, 2, 4, 5, ...)
    offsets = [(f["box"][0] + f["box"][2]) / 2 - (x + 100) for f, x in zip(faces, xs)]
    assert max(offsets) - min(offsets) < 12
    capture = cv2.VideoCapture(str(out / "annotated" / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(xs)
    assert (out / "timelines" / "clip_emotions.png").stat().st_size > 10_000


def test_fer_predict_every_k_frames_and_max_frames(real_faces, tmp_path):
    video, _ = face_video(tmp_path / "clip.mp4", real_faces[0], frames=20)
    out = tmp_path / "out"
    assert fer_predict([str(video), "--every", "4", "--max-frames", "3", "--no-annotate", "--no-progress",
                        "-o", str(out)]) == 0
    payload = json.loads((out / "predictions.json").read_text())
    assert [f["frame"] for f in payload["faces"]] == [0, 4, 8]
    assert payload["sources"][0]["frames"] == 3 and not (out / "annotated").exists()


def test_fer_predict_bad_inputs_one_line_each(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    (tmp_path / "text.png").write_text("hello")
    result = fer_predict_cli([str(tmp_path / "missing.jpg"), str(tmp_path / "empty"), str(tmp_path / "broken.mp4"),
                              str(tmp_path / "text.png"), "-o", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 1  # nothing could be processed
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert [e.split(": ")[0].split()[-1] for e in errors] == [
        str(tmp_path / "missing.jpg"), str(tmp_path / "empty"), str(tmp_path / "text.png"), str(tmp_path / "broken.mp4")]
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["faces"] == []


def test_fer_predict_refuses_used_or_nested_output_and_bad_checkpoint(tmp_path):
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    used = tmp_path / "used"
    used.mkdir()
    (used / "predictions.json").write_text("earlier results")

    result = fer_predict_cli([str(image), "-o", str(used)], tmp_path)
    assert result.returncode == 1 and "is not empty" in result.stderr
    assert (used / "predictions.json").read_text() == "earlier results"
    result = fer_predict_cli([str(image.parent), "-o", str(image.parent / "out")], tmp_path)
    assert result.returncode == 1 and "inside the input folder" in result.stderr
    (tmp_path / "fake.ckpt").write_text("not a checkpoint")
    result = fer_predict_cli([str(image), "--checkpoint", str(tmp_path / "fake.ckpt"), "-o", str(tmp_path / "o")], tmp_path)
    assert result.returncode == 2 and "fake.ckpt is not a checkpoint of this project (not a file written by torch.save)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option", [["--every", "0"], ["--detect-every", "0"], ["--smoothing", "1.5"], ["--min-face", "4"]])
def test_fer_predict_bad_option_values(option, tmp_path, capsys):
    assert fer_predict([str(tmp_path), *option, "-o", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and option[0].lstrip("-").replace("-", "_")[:8] in error.replace("-", "_")


def test_fer_predict_missing_webcam_is_one_error(tmp_path):
    result = fer_predict_cli(["--webcam", "9", "--max-frames", "2", "-o", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 1
    assert "webcam 9 cannot be opened" in result.stderr and "Traceback" not in result.stderr


# -- ONNX export -----------------------------------------------------------------------------------
def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from fer.training.export import main as fer_export

    out = tmp_path / "fer.onnx"
    assert fer_export(["-o", str(out)]) == 0
    report = json.loads(out.with_suffix(".parity.json").read_text())
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["fp32"]["top1_agreement"] == 1.0
    assert fer_export(["-o", str(out)]) == 1  # never overwrites


@pytest.mark.slow  # calibrates on real faces; test_onnx_export_matches_pytorch covers the export path
def test_onnx_int8_export_agrees_on_real_faces(real_fer2013, tmp_path):
    pytest.importorskip("onnxruntime")
    from fer.training.export import export

    report = export(None, tmp_path / "fer.onnx", int8=True, data=str(real_fer2013), cache_dir=str(tmp_path / "cache"),
                    calibration_size=128)
    assert report["checked_on"] == "PublicTest faces"
    assert report["int8"]["top1_agreement"] >= 0.95  # cpu_best: 0.965 on these 256 faces (7-bit weights, AVX2)
    assert Path(report["int8"]["path"]).stat().st_size < Path(report["fp32"]["path"]).stat().st_size / 2
