"""The LightningDataModule: splits, balancing, extra training folders, device-side transforms."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from fer import FERError
from fer.data.datamodule import FERDataModule
from fer.data.fer2013 import Split

from conftest import SMALL, write_folders


def datamodule(root, tmp_path, **options) -> FERDataModule:
    return FERDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=8, eval_batch_size=16, **options)


def test_loaders_yield_whole_uint8_batches(fer_folders, tmp_path):
    dm = datamodule(fer_folders, tmp_path)
    dm.setup("fit")
    images, labels, rows = next(iter(dm.train_dataloader()))  # and the batch's rows in the split (alternate_flip)
    assert images.shape == (8, 48, 48) and images.dtype == torch.uint8 and labels.shape == (8,)
    assert torch.equal(dm.splits["train"].images[rows], images) and torch.equal(dm.splits["train"].labels[rows], labels)
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
    labels = torch.cat([y for _ in range(20) for _, y, _ in dm.train_dataloader()])
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
    ({"on_device": True, "num_workers": 2}, "data.on_device .* data.num_workers=0"),
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

    # a re-mounted copy (same faces, new file times) decodes again but finds its aligned faces
    for file in fer_folders.rglob("*.png"):
        os.utime(file, ns=(file.stat().st_atime_ns, file.stat().st_mtime_ns + 10**9))
    remounted = datamodule(fer_folders, tmp_path, align=True, align_options={"min_face_size": 40})
    remounted.setup("validate")
    assert torch.equal(remounted.splits["val"].images, val.images)
    assert len(list(tmp_path.rglob("test-PublicTest-*.pt"))) == 2 and len(list(tmp_path.rglob("aligned-*.pt"))) == 1


def stub_trainer(device="cpu", world_size=1, rank=0, stage="training", epoch=0):
    """What the DataModule reads of its trainer: device, DDP rank and world size, running stage, epoch."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), world_size=world_size,
                           global_rank=rank, training=stage == "training", predicting=stage == "predicting",
                           current_epoch=epoch)


def test_the_alternating_flip_mirrors_each_image_every_other_epoch(tmp_path):
    """Faces dark on the left, bright on the right: a mirrored view is bright on the left."""
    n = 32
    faces = torch.full((n, 48, 48), 50, dtype=torch.uint8)
    faces[..., 24:] = 200
    still = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "degrees": 0.0, "translate": 0.0, "erase": 0.0}
    dm = datamodule("unused", tmp_path, image_size=40, augment={**still, "alternate_flip": True})
    dm.splits["train"] = Split(faces, torch.arange(n) % 7, "k")
    mirrored_by_epoch = []
    for epoch in range(4):
        dm.trainer = stub_trainer(epoch=epoch)
        mirrored = {}
        for batch in dm.train_dataloader():
            x, _ = dm.on_after_batch_transfer(batch, 0)
            bright_left = x[..., :20].mean(dim=(1, 2, 3)) > x[..., 20:].mean(dim=(1, 2, 3))
            mirrored |= dict(zip(batch[2].tolist(), bright_left.tolist()))
        assert sorted(mirrored) == list(range(n))  # every image seen once an epoch
        mirrored_by_epoch.append(mirrored)
    for row in range(n):  # each image flips on every other epoch
        assert [m[row] for m in mirrored_by_epoch] in ([True, False, True, False], [False, True, False, True])
    assert 8 <= sum(mirrored_by_epoch[0].values()) <= 24  # a random starting parity per image

    dm.augment.alternate_flip = False  # the coin toss: no fixed rhythm, and no indices needed
    assert dm.mirrored(torch.arange(4), 0) is None


def constant_faces(tmp_path, n=64, **options) -> FERDataModule:
    """A datamodule over faces of one grey level each, 36 * label: the label can be read back
    from any augmented view of the face (erasing off)."""
    dm = datamodule("unused", tmp_path, augment={"erase": 0.0}, **options)
    labels = torch.arange(n) % 7
    dm.splits["train"] = dm.splits["val"] = Split((labels * 36).to(torch.uint8).view(n, 1, 1).expand(n, 48, 48).clone(), labels, "k")
    return dm


@pytest.mark.parametrize("on_device", [False, True])
def test_augmented_batches_keep_shape_range_and_label_alignment(tmp_path, on_device):
    dm = constant_faces(tmp_path, image_size=40, on_device=on_device)
    dm.trainer = stub_trainer()
    for images, labels, rows in dm.train_dataloader():
        x, y = dm.on_after_batch_transfer((images, labels, rows), 0)
        assert x.shape == (8, 1, 40, 40) and x.dtype == torch.float32 and torch.equal(y, labels)
        assert x.min() >= 0 and x.max() <= 1
        assert torch.equal((x.mean(dim=(1, 2, 3)) * 255 / 36).round().long(), y)


def test_on_device_batches_are_gathered_on_the_device_and_seeded_alike(fer_folders, tmp_path):
    on_meta = datamodule(fer_folders, tmp_path, on_device=True)
    on_meta.setup("fit")
    on_meta.trainer = stub_trainer("meta")  # a device other than the CPU, without a GPU
    images, labels, _ = next(iter(on_meta.train_dataloader()))
    assert images.device.type == labels.device.type == "meta" and images.shape == (8, 48, 48) and images.dtype == torch.uint8

    def first_batches(**options):
        dm = datamodule(fer_folders, tmp_path, image_size=40, **options)
        dm.setup("fit")
        dm.trainer = stub_trainer()
        torch.manual_seed(0)  # the sampler's order and the augmentation's draws
        return [dm.on_after_batch_transfer(batch, 0) for batch, _ in zip(dm.train_dataloader(), range(3))]

    runs = [first_batches(), first_batches(), first_batches(on_device=True)]
    for (a, y), (b, z), (c, w) in zip(*runs):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(y, z) and torch.equal(y, w)


def test_ddp_processes_get_disjoint_shares_reshuffled_every_epoch(tmp_path):
    def indices(rank, epoch=0, loader="train_dataloader"):
        dm = constant_faces(tmp_path, n=70)
        dm.trainer = stub_trainer(world_size=2, rank=rank)
        batches = getattr(dm, loader)()
        batches.sampler.set_epoch(epoch)  # as Lightning does at each epoch start
        return [i for batch in batches.sampler for i in batch]

    first, second = indices(0), indices(1)
    assert len(first) == len(second) == 32 and not set(first) & set(second)  # 35 each, cut to whole batches of 8
    assert indices(0) == first and indices(0, epoch=1) != first
    val = indices(0, loader="val_dataloader") + indices(1, loader="val_dataloader")
    assert sorted(val) == list(range(70))

    dm = constant_faces(tmp_path, balance="oversample")
    dm.trainer = stub_trainer(world_size=2)
    with pytest.raises(FERError, match="data.balance=oversample .* DDP"):
        dm.train_dataloader()
