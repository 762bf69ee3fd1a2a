"""Reading FER-2013: both layouts, the official splits, the cache, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fer.data.fer2013 as fer2013
from fer import EMOTIONS, FERError
from fer.data.fer2013 import load_image_folder, load_split

from conftest import SMALL, write_csv, write_folders


def listing(root):
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_folders_follow_the_official_protocol(fer_folders, tmp_path):
    before = listing(fer_folders)
    splits = {name: load_split(fer_folders, name, tmp_path / "cache") for name in ("train", "val", "test")}
    for name, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        split = splits[name]
        assert split.images.shape == (7 * SMALL[usage], 48, 48) and split.images.dtype == torch.uint8
        assert split.class_counts().tolist() == [SMALL[usage]] * 7
    assert not torch.equal(splits["val"].images, splits["test"].images)  # prefix split, not one folder twice
    assert listing(fer_folders) == before  # nothing written into the dataset folder


def test_csv_and_folders_give_the_same_tensors(tmp_path):
    # same seed and order -> the same pixels; PNG folders are lossless, so the tensors must match
    folders = write_folders(tmp_path / "folders", SMALL)
    csv_root = write_csv(tmp_path / "csv" / "fer2013.csv", SMALL).parent
    for name in ("train", "val", "test"):
        a = load_split(folders, name, tmp_path / "cache")
        b = load_split(csv_root, name, tmp_path / "cache")
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, b.images)


def test_csv_labels_are_mapped_to_our_class_order(tmp_path):
    # fer2013.csv: 0 Angry 1 Disgust 2 Fear 3 Happy 4 Sad 5 Surprise 6 Neutral
    path = tmp_path / "fer" / "fer2013.csv"
    path.parent.mkdir()
    pixels = " ".join(["7"] * 2304)
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{k},{pixels},Training\n" for k in range(7)))
    split = load_split(path, "train", tmp_path / "cache")
    assert [EMOTIONS[i] for i in split.labels] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert int(split.images.float().mean()) == 7


def test_a_cached_split_is_never_decoded_again(fer_folders, tmp_path, monkeypatch):
    first = load_split(fer_folders, "train", tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decoding(files):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(fer2013, "decode_images", no_decoding)
    second = load_split(fer_folders, "train", tmp_path / "cache")
    assert torch.equal(first.images, second.images) and first.key == second.key

    # a changed source is a different cache entry
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(fer_folders / "train" / "happy" / "Training_new.png")
    monkeypatch.undo()
    third = load_split(fer_folders, "train", tmp_path / "cache")
    assert len(third) == len(first) + 1 and third.key != first.key


def test_a_csv_is_parsed_once_for_all_its_splits(fer_csv, tmp_path, monkeypatch):
    load_split(fer_csv.parent, "train", tmp_path / "cache")
    monkeypatch.setattr(fer2013, "read_csv", lambda path: pytest.fail("parsed the CSV again"))
    assert len(load_split(fer_csv.parent, "val", tmp_path / "cache")) == 7 * SMALL["PublicTest"]
    assert len(load_split(fer_csv.parent, "test", tmp_path / "cache")) == 7 * SMALL["PrivateTest"]


def test_a_test_folder_without_prefixes_is_the_val_split(tmp_path):
    root = write_folders(tmp_path / "fer", {"Training": 2, "PublicTest": 3})
    for file in (root / "test").rglob("*.png"):
        file.rename(file.with_name(file.name.replace("PublicTest_", "img_")))
    assert len(load_split(root, "val", tmp_path / "cache")) == 21
    with pytest.raises(FERError, match="PrivateTest"):
        load_split(root, "test", tmp_path / "cache")


def test_color_and_other_sizes_are_converted(tmp_path):
    folder = tmp_path / "faces" / "happy"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((96, 80, 3), (200, 100, 50), np.uint8)).save(folder / "big_color.jpg")
    split = load_image_folder(tmp_path / "faces", tmp_path / "cache")
    assert split.images.shape == (1, 48, 48)
    assert abs(int(split.images.float().mean()) - 124) <= 3  # ITU-R 601 luma of (200, 100, 50)
    assert split.labels.tolist() == [EMOTIONS.index("happy")]


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_a_corrupt_image_is_named(fer_folders, tmp_path, content):
    bad = fer_folders / "train" / "sad" / "Training_bad.jpg"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), np.uint8)).save(bad, quality=95)
        content = bad.read_bytes()[:300]
    bad.write_bytes(content)
    with pytest.raises(FERError, match="Training_bad.jpg"):
        load_split(fer_folders, "train", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing half-done is cached


def test_an_unknown_class_folder_is_named(fer_folders, tmp_path):
    (fer_folders / "train" / "contempt").mkdir()
    with pytest.raises(FERError, match="unknown class folder .*contempt"):
        load_split(fer_folders, "train", tmp_path / "cache")


@pytest.mark.parametrize(
    "row, message",
    [
        ("3,1 2 3,Training", "line 3: expected 2304 pixel values"),
        ("9,{pixels},Training", "line 3: bad emotion label '9'"),
        ("3,{pixels},Validation", "line 3: unknown Usage 'Validation'"),
        ("3,{pixels}", "line 3: expected 3 fields"),
        ("3,{bad_pixels},Training", "line 3: pixels are not integers"),
        ("3,{big_pixels},Training", "line 3: expected 2304 pixel values in 0-255"),
    ],
)
def test_a_malformed_csv_row_is_named(tmp_path, row, message):
    pixels = " ".join(["1"] * 2304)
    row = row.format(pixels=pixels, bad_pixels=pixels[:-1] + "x", big_pixels=pixels[:-1] + "300")
    path = tmp_path / "fer" / "fer2013.csv"
    path.parent.mkdir()
    path.write_text(f"emotion,pixels,Usage\n0,{pixels},Training\n{row}\n")
    with pytest.raises(FERError, match=message):
        load_split(path, "train", tmp_path / "cache")


def test_missing_and_empty_sources_are_named(tmp_path):
    with pytest.raises(FERError, match="no FER-2013 found at .*nowhere"):
        load_split(tmp_path / "nowhere", "train", tmp_path / "cache")
    with pytest.raises(FERError, match="missing folder"):
        load_image_folder(tmp_path / "nowhere", tmp_path / "cache")
    (tmp_path / "empty" / "angry").mkdir(parents=True)
    with pytest.raises(FERError, match="no images in the class folders"):
        load_image_folder(tmp_path / "empty", tmp_path / "cache")
    with pytest.raises(FERError, match="unknown split"):
        load_split(tmp_path, "holdout", tmp_path / "cache")


def test_a_missing_csv_split_is_named(tmp_path):
    path = write_csv(tmp_path / "fer" / "fer2013.csv", {"Training": 1, "PublicTest": 1})
    with pytest.raises(FERError, match="no rows with Usage PrivateTest"):
        load_split(path, "test", tmp_path / "cache")


def test_the_cache_is_never_inside_the_dataset(fer_folders):
    with pytest.raises(FERError, match="inside the dataset folder"):
        load_split(fer_folders, "train", fer_folders / "cache")
    assert not (fer_folders / "cache").exists()
