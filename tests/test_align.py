"""fer.data.align: the similarity warp's geometry, MTCNN on faceless images and on real FER-2013 crops."""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer.data.align import TEMPLATE_48, Detections, FaceAligner, similarity_warp

RNG_SEED = 0


def expected_template(output_size: int) -> np.ndarray:
    """Where the landmarks must land at `output_size` (pixel centres at integer coordinates)."""
    return (TEMPLATE_48 + 0.5) * (output_size / 48) - 0.5


def dot_image(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Dark canvas with a bright Gaussian dot at each (x, y) point."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    image = np.zeros(shape, np.float32)
    for x, y in points:
        image = np.maximum(image, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return (20 + 220 * image).round().astype(np.uint8)


def dot_centres(image: np.ndarray, guesses: np.ndarray, radius: int) -> np.ndarray:
    """Each dot's position: the brightness-weighted centroid of the patch around its brightest
    pixel, searched within `radius` px of the guess."""
    found = []
    img = image.astype(np.float32) - 20
    for gx, gy in np.round(guesses).astype(int):
        y0, x0 = gy - radius, gx - radius
        patch = img[y0 : gy + radius + 1, x0 : gx + radius + 1]
        py, px = np.unravel_index(np.argmax(patch), patch.shape)
        cy, cx = y0 + py, x0 + px
        local = np.clip(img[cy - 2 : cy + 3, cx - 2 : cx + 3], 0, None)
        ys, xs = np.mgrid[cy - 2 : cy + 3, cx - 2 : cx + 3]
        found.append([(local * xs).sum() / local.sum(), (local * ys).sum() / local.sum()])
    return np.array(found)


def transformed_template(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """TEMPLATE_48 under a known rotation about its centre, uniform scale and translation."""
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centred = TEMPLATE_48 - TEMPLATE_48.mean(0)
    return centred @ rot.T + np.asarray(shift)


def test_template_is_left_right_symmetric():
    """Mirroring (x -> 47 - x, swapping left and right points) gives the template back, so a
    flipped aligned face is again an aligned face."""
    mirrored = TEMPLATE_48[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = 47 - mirrored[:, 0]
    np.testing.assert_allclose(mirrored, TEMPLATE_48, atol=1e-5)
    assert TEMPLATE_48.shape == (5, 2) and TEMPLATE_48.dtype == np.float32
    # Eyes above the nose above the mouth, everything inside the frame.
    assert TEMPLATE_48[:2, 1].max() < TEMPLATE_48[2, 1] < TEMPLATE_48[3:, 1].min()
    assert (TEMPLATE_48 > 4).all() and (TEMPLATE_48 < 44).all()


@pytest.mark.parametrize("output_size", [48, 96])
@pytest.mark.parametrize("bgr", [False, True])
@pytest.mark.parametrize("angle, scale, shift", [(25.0, 2.5, (110.0, 80.0)), (-15.0, 0.8, (40.0, 35.0))])
def test_similarity_warp_puts_landmarks_on_template(output_size, bgr, angle, scale, shift):
    landmarks = transformed_template(angle, scale, shift)
    image = dot_image(landmarks, (180, 220), sigma=1.2 * scale)
    if bgr:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    out = similarity_warp(image, landmarks, output_size)
    assert out.shape == (output_size, output_size) and out.dtype == np.uint8
    target = expected_template(output_size)
    radius = output_size // 12  # 4 px at 48: wider than the tolerance, narrower than the dots' gaps
    error = np.linalg.norm(dot_centres(out, target, radius) - target, axis=1)
    assert error.max() < output_size / 48, f"landmarks off the template by {error.round(2)} px"


def test_similarity_warp_replicates_border():
    """A face too close to the border: no black wedge from the warp, the edge value is repeated."""
    image = np.full((60, 60), 200, np.uint8)
    out = similarity_warp(image, transformed_template(30, 1.0, (8, 8)))
    assert out.min() == 200


def test_similarity_warp_antialiases_big_faces():
    """A 1-px stripe pattern shrunk ~8x must average out to grey, not alias into bands."""
    image = np.zeros((480, 480), np.uint8)
    image[:, ::2] = 255
    out = similarity_warp(image, transformed_template(7.0, 8.3, (240.0, 240.0)))
    assert abs(out.mean() - 127.5) < 8 and out.std() < 8


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


def assert_empty(det: Detections) -> None:
    assert det.boxes.shape == (0, 4) and det.probs.shape == (0,) and det.landmarks.shape == (0, 5, 2)
    assert det.boxes.dtype == det.probs.dtype == det.landmarks.dtype == np.float32


def test_detect_without_faces_returns_empty_detections(aligner):
    rng = np.random.default_rng(RNG_SEED)
    frames = [
        np.full((120, 160, 3), 128, np.uint8),
        rng.integers(0, 256, (100, 90, 3), dtype=np.uint8),
        np.zeros((10, 10, 3), np.uint8),  # smaller than min_face_size
    ]
    detections = aligner.detect(frames)
    assert len(detections) == len(frames)
    for det in detections:
        assert_empty(det)
    assert aligner.detect([]) == []
    assert aligner.align_faces(frames[0], detections[0]).shape == (0, 48, 48)


@pytest.mark.parametrize("output_size", [48, 64])
def test_align_crops_keeps_faceless_crops(output_size):
    rng = np.random.default_rng(RNG_SEED)
    crops = np.stack([np.full((48, 48), 90, np.uint8), rng.integers(0, 256, (48, 48), dtype=np.uint8)])
    aligned, found = FaceAligner(output_size=output_size).align_crops(torch.from_numpy(crops))
    assert aligned.shape == (2, output_size, output_size) and aligned.dtype == torch.uint8
    assert found.dtype == torch.bool and not found.any()
    expected = crops if output_size == 48 else np.stack([cv2.resize(c, (output_size,) * 2, interpolation=cv2.INTER_CUBIC) for c in crops])
    np.testing.assert_array_equal(aligned.numpy(), expected)


def test_aligning_projects_its_time_from_the_first_batches(caplog):
    crops = torch.full((8, 48, 48), 90, dtype=torch.uint8)  # 4 batches of 2
    with caplog.at_level("INFO", logger="fer.data.align"):
        FaceAligner(batch_size=2).align_crops(crops, progress=True)
    messages = [r.getMessage() for r in caplog.records]
    (projection,) = [m for m in messages if m.startswith("aligning")]  # after the 2nd batch (the 1st warms MTCNN up)
    assert re.fullmatch(r"aligning 8 crops: about \d:\d\d:\d\d to go \(ETA \d\d:\d\d\) \(measured on the first 4\)", projection)
    assert re.fullmatch(r"aligned 8/8 crops, face found in 0\.0%, about 0:00:00 to go \(ETA \d\d:\d\d\)", messages[-1])


def test_align_crops_rejects_wrong_input(aligner):
    with pytest.raises(ValueError):
        aligner.align_crops(torch.zeros(2, 48, 48))  # float, not uint8


def gradient_energy(image: np.ndarray) -> float:
    gy, gx = np.gradient(image)
    return float(np.mean(gx**2 + gy**2))


@pytest.fixture(scope="module")
def real_crops() -> np.ndarray:
    """64 PublicTest crops spread over the 7 classes, from the dataset at $FER2013_ROOT."""
    root = os.environ.get("FER2013_ROOT")
    if not root or not (Path(root) / "test").is_dir():
        pytest.skip("set FER2013_ROOT to the real FER-2013 (Kaggle folders) to run this test")
    files = sorted((Path(root) / "test").glob("*/PublicTest_*.jpg"))
    assert len(files) >= 64, f"too few PublicTest images under {root}"
    picks = np.linspace(0, len(files) - 1, 64).round().astype(int)
    return np.stack([cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE) for i in picks])


def test_align_crops_on_real_faces(aligner, real_crops):
    aligned, found = aligner.align_crops(torch.from_numpy(real_crops), progress=True)
    assert aligned.shape == (64, 48, 48) and aligned.dtype == torch.uint8
    assert found.shape == (64,) and found.dtype == torch.bool
    assert found.float().mean() >= 0.8, f"MTCNN found faces in only {found.float().mean():.0%}"
    aligned, found = aligned.numpy(), found.numpy()
    diff = np.abs(aligned.astype(int) - real_crops).mean(axis=(1, 2))
    assert (diff[found] > 0).all(), "an aligned face is identical to its original crop"
    np.testing.assert_array_equal(aligned[~found], real_crops[~found])
    # Aligned faces line up better, so their average face is sharper; and since the template is
    # FER-2013's own framing, that average face stays where the crops' average face is.
    mean_aligned = aligned[found].astype(np.float32).mean(0)
    mean_original = real_crops[found].astype(np.float32).mean(0)
    assert gradient_energy(mean_aligned) > 1.2 * gradient_energy(mean_original)
    assert np.abs(mean_aligned - mean_original).mean() < 15


def test_photo_path_matches_crop_path(aligner, real_crops):
    """FER faces shown 3x larger inside bigger BGR 'photos' align (detect + align_faces) to nearly
    the same 48x48 images as align_crops gives for the crops themselves."""
    crops = real_crops[:12]
    from_crops, found = aligner.align_crops(torch.from_numpy(crops))
    photos = [cv2.cvtColor(cv2.copyMakeBorder(cv2.resize(c, (144, 144), interpolation=cv2.INTER_CUBIC),
                                              60, 96, 150, 106, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2BGR)
              for c in crops]
    detections = aligner.detect([cv2.cvtColor(p, cv2.COLOR_BGR2RGB) for p in photos])
    gaps = []
    for photo, det, crop_aligned, crop_found in zip(photos, detections, from_crops.numpy(), found.numpy()):
        if not (crop_found and len(det.probs)):
            continue
        x1, y1, x2, y2 = det.boxes[0]
        assert 150 < (x1 + x2) / 2 < 294 and 60 < (y1 + y2) / 2 < 204, "the box is off the pasted face"
        faces = aligner.align_faces(photo, det)
        assert faces.shape == (len(det.probs), 48, 48) and faces.dtype == np.uint8
        gaps.append(np.abs(faces[0].astype(int) - crop_aligned)[8:40, 8:40].mean())
    assert len(gaps) >= 8
    assert np.median(gaps) < 10, f"photo and crop alignments differ by {np.round(gaps, 1)} grey levels"


def test_detect_orders_several_faces_best_first(aligner, real_crops):
    frame = np.full((200, 400), int(real_crops.mean()), np.uint8)
    for x, crop in ((30, real_crops[3]), (226, real_crops[5])):
        frame[28:172, x : x + 144] = cv2.resize(crop, (144, 144), interpolation=cv2.INTER_CUBIC)
    (det,) = aligner.detect(np.stack([cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)]))
    assert len(det.probs) >= 2 and np.all(np.diff(det.probs) <= 0)
    assert det.boxes.shape == (len(det.probs), 4) and det.landmarks.shape == (len(det.probs), 5, 2)
    centres = sorted((det.boxes[:2, 0] + det.boxes[:2, 2]) / 2)
    assert abs(centres[0] - 102) < 30 and abs(centres[1] - 298) < 30
    assert aligner.align_faces(frame, det).shape == (len(det.probs), 48, 48)
