"""The LightningDataModule: splits, balancing, extra training folders, device-side transforms."""

from __future__ import annotations

import pytest
import torch

from fer import FERError
from fer.data.datamodule import FERDataModule

from conftest import SMALL, write_folders


def datamodule(root, tmp_path, **options) -> FERDataModule:
    return FERDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=8, eval_batch_size=16, **options)


def test_loaders_yield_whole_uint8_batches(fer_folders, tmp_path):
    dm = datamodule(fer_folders, tmp_path)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 48, 48) and images.dtype == torch.uint8 and labels.shape == (8,)
    assert len(dm.train_dataloader()) == 7 * SMALL["Training"] // 8  # drop_last
    val = list(dm.val_dataloader())
    assert sum(len(y) for _, y in val) == 7 * SMALL["PublicTest"]
    assert torch.equal(torch.cat([y for _, y in val]), dm.splits["val"].labels)  # in order


def test_eval_batches_become_float_crops_without_augmentation(fer_folders, tmp_path):
    dm = datamodule(fer_folders, tmp_path, image_size=40)
    dm.setup("validate")
    images, labels = next(iter(dm.val_dataloader()))
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.shape == (16, 1, 40, 40) and x.dtype == torch.float32 and torch.equal(y, labels)
    assert torch.allclose(x * 255, images[:, 4:44, 4:44].unsqueeze(1).float(), atol=1e-3)


def test_the_test_split_is_private_test_or_a_given_folder(fer_folders, tmp_path):
    dm = datamodule(fer_folders, tmp_path)
    dm.setup("test")
    assert len(dm.splits["test"]) == 7 * SMALL["PrivateTest"] and "val" not in dm.splits
    other = write_folders(tmp_path / "other", {"x": 2})
    dm = datamodule(fer_folders, tmp_path, test_dir=str(other / "test"))
    dm.setup("test")
    assert len(dm.splits["test"]) == 14


def test_extra_folders_join_training_only(fer_folders, tmp_path):
    extra = write_folders(tmp_path / "synthetic", {"Training": 3}, seed=5) / "train"
    plain, grown = datamodule(fer_folders, tmp_path), datamodule(fer_folders, tmp_path, extra_train_dirs=[str(extra)])
    for dm in (plain, grown):
        dm.setup("fit")
        dm.setup("test")
    assert len(grown.splits["train"]) == len(plain.splits["train"]) + 21
    for name in ("val", "test"):
        assert torch.equal(grown.splits[name].images, plain.splits[name].images)


def test_oversampling_balances_the_classes(tmp_path):
    root = write_folders(tmp_path / "fer", {"Training": 2, "PublicTest": 1})
    happy = next((root / "train" / "happy").glob("*.png")).read_bytes()
    for i in range(60):  # make "happy" 31x larger than the rest
        (root / "train" / "happy" / f"Training_dup{i}.png").write_bytes(happy)
    torch.manual_seed(0)
    dm = datamodule(root, tmp_path, balance="oversample")
    dm.setup("fit")
    labels = torch.cat([y for _ in range(20) for _, y in dm.train_dataloader()])
    share = torch.bincount(labels, minlength=7).float() / len(labels)
    assert (share - 1 / 7).abs().max() < 0.05

    weights = datamodule(root, tmp_path, balance="class_weights").class_weights
    assert weights[3] == pytest.approx(weights[0] * 2 / 62)  # inverse frequency
    assert datamodule(root, tmp_path).class_weights is None


@pytest.mark.parametrize("option, message", [
    ({"balance": "smote"}, "data.balance"),
    ({"image_size": 64}, "data.image_size"),
    ({"eval_split": "train"}, "eval split"),
    ({"augment": {"flip": 2.0}}, "data.augment: flip is a probability"),
    ({"augment": {"blur": 1.0}}, "data.augment: .*unexpected keyword argument 'blur'"),
])
def test_bad_options_are_named(fer_folders, tmp_path, option, message):
    with pytest.raises(FERError, match=message):
        datamodule(fer_folders, tmp_path, **option)


def test_alignment_is_computed_once_and_cached(fer_folders, tmp_path, monkeypatch):
    import fer.data.align as align

    dm = datamodule(fer_folders, tmp_path, align=True, align_options={"min_face_size": 40})
    dm.setup("validate")
    val = dm.splits["val"]
    raw = datamodule(fer_folders, tmp_path)
    raw.setup("validate")
    # synthetic noise has no face: every crop is kept as it was, and that is recorded
    assert val.found is not None and not val.found.any()
    assert torch.equal(val.images, raw.splits["val"].images) and val.key != raw.splits["val"].key

    monkeypatch.setattr(align.FaceAligner, "__init__", lambda *a, **k: pytest.fail("aligned again despite the cache"))
    again = datamodule(fer_folders, tmp_path, align=True, align_options={"min_face_size": 40})
    again.setup("validate")
    assert torch.equal(again.splits["val"].images, val.images)
