"""Batched device-side augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer.data.augment import TTA_MODES, BatchAugment, batch_mix, center_crop, to_float, tta_views

OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=0.0, degrees=0.0, translate=0.0, erase=0.0)


@pytest.fixture
def batch():
    return to_float(torch.randint(0, 256, (32, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))


def test_to_float_scales_to_unit_range():
    x = to_float(torch.tensor([[[0, 255]]], dtype=torch.uint8))
    assert x.shape == (1, 1, 1, 2) and x.dtype == torch.float32 and x.tolist() == [[[[0.0, 1.0]]]]


@pytest.mark.parametrize("size", [48, 40])
def test_shapes_dtype_and_range(batch, size):
    out = BatchAugment(output_size=size)(batch)
    assert out.shape == (32, 1, size, size) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_everything_off_is_the_identity(batch):
    assert torch.allclose(BatchAugment(**OFF)(batch), batch, atol=1e-5)


def test_a_lower_resolution_samples_the_same_view_at_fewer_pixels():
    ramps = torch.linspace(0, 1, 48).expand(4, 1, 48, 48) * torch.linspace(0.5, 1, 4).view(4, 1, 1, 1)
    batch = ramps + ramps.transpose(-1, -2)  # bilinear sampling is exact on them
    augment = BatchAugment(output_size=40, **OFF)
    torch.manual_seed(0)  # the same random 40 px windows both times
    full = augment(batch)
    augment.resolution = 20  # progressive resizing's early epochs
    torch.manual_seed(0)
    half = augment(batch)
    assert full.shape[-2:] == (40, 40) and half.shape[-2:] == (20, 20)
    assert torch.allclose(half, F.avg_pool2d(full, 2), atol=1e-3)  # the same field of view, coarser


def test_the_caller_can_say_which_images_to_mirror(batch):
    mirror = torch.arange(len(batch)) % 2 == 0
    out = BatchAugment(**{**OFF, "flip": 0.0})(batch, mirror)
    assert torch.allclose(out[mirror], batch[mirror].flip(-1), atol=1e-5) and torch.allclose(out[~mirror], batch[~mirror], atol=1e-5)


def test_flip_mirrors_each_image(batch):
    out = BatchAugment(**{**OFF, "flip": 1.0})(batch)
    assert torch.allclose(out, batch.flip(-1), atol=1e-5)


def test_each_sample_gets_its_own_transform(batch):
    same = batch[:1].repeat(16, 1, 1, 1)
    out = BatchAugment(erase=0.0)(same)
    assert len({tuple(o.flatten()[:200].tolist()) for o in out}) == 16


def test_erasing_changes_a_rectangle_only(batch):
    out = BatchAugment(**{**OFF, "erase": 1.0, "erase_scale": (0.1, 0.1)})(batch)
    changed = ((out - batch).abs() > 1e-4).float().mean(dim=(1, 2, 3))
    assert ((changed > 0.03) & (changed < 0.2)).all()


def test_deterministic_under_a_seed(batch):
    augment = BatchAugment()
    torch.manual_seed(7)
    a = augment(batch)
    torch.manual_seed(7)
    b = augment(batch)
    torch.manual_seed(8)
    c = augment(batch)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_center_crop_takes_the_middle():
    x = torch.arange(48 * 48, dtype=torch.float).view(1, 1, 48, 48)
    crop = center_crop(x, 40)
    assert crop.shape == (1, 1, 40, 40) and crop[0, 0, 0, 0] == 4 * 48 + 4


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="crop_scale"):
        BatchAugment(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="flip"):
        BatchAugment(flip=2)


def test_a_smaller_output_is_a_crop_at_the_evaluation_scale():
    # a horizontal ramp, one unit per pixel: a 40x40 training crop keeps the slope (no resize)
    # and starts anywhere between the left and right border (a random crop)
    ramp = torch.arange(48, dtype=torch.float).expand(48, 48).reshape(1, 1, 48, 48).repeat(64, 1, 1, 1) / 100
    out = BatchAugment(**{**OFF, "output_size": 40})(ramp)
    slope = (out[..., 1:] - out[..., :-1]).mean(dim=(1, 2, 3)) * 100
    assert out.shape[-1] == 40 and torch.allclose(slope, torch.ones(64), atol=0.01)
    left = out[:, 0, 0, 0] * 100
    assert left.min() >= -0.01 and left.max() <= 8.01 and left.max() - left.min() > 5


def test_tta_views_are_the_centre_crop_its_mirror_and_the_ten_crops():
    x = torch.arange(48 * 48, dtype=torch.float).view(1, 1, 48, 48).repeat(2, 1, 1, 1)
    centre = center_crop(x, 40)
    none, flip, ten = (tta_views(x, mode, 40) for mode in TTA_MODES)
    assert none.shape == (2, 1, 1, 40, 40) and torch.equal(none[:, 0], centre)
    assert flip.shape == (2, 2, 1, 40, 40) and torch.equal(flip[:, 1], centre.flip(-1))
    assert ten.shape == (2, 10, 1, 40, 40)
    # top-left pixel of each crop: the centre, then the 4 corners; the mirrors follow in the same order
    corners = ten[0, :5, 0, 0, 0].tolist()
    assert corners == [4 * 48 + 4, 0, 8, 8 * 48, 8 * 48 + 8]
    assert torch.equal(ten[:, 5:], ten[:, :5].flip(-1))
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_views(x, "rotate", 40)


def test_batch_mix_mixes_images_and_labels_alike(batch):
    labels = torch.arange(32) % 7  # each label differs from its neighbour's, which it is mixed with
    assert batch_mix(0.0, 0.0, 7) is None
    torch.manual_seed(3)
    images, targets = batch_mix(0.4, 0.0, 7)(batch, labels)  # MixUp: lam x + (1 - lam) x.roll(1)
    lam = targets[0, labels[0]].item()
    assert images.shape == batch.shape and targets.shape == (32, 7) and torch.allclose(targets.sum(1), torch.ones(32))
    assert torch.allclose(images, lam * batch + (1 - lam) * batch.roll(1, 0), atol=1e-5)
    assert torch.allclose(targets[torch.arange(32), labels], torch.full((32,), lam))
    assert torch.allclose(targets[torch.arange(32), labels.roll(1, 0)], torch.full((32,), 1 - lam))
    torch.manual_seed(3)
    again = batch_mix(0.4, 0.0, 7)(batch, labels)
    assert torch.equal(again[0], images) and torch.equal(again[1], targets)

    torch.manual_seed(0)
    batch = torch.rand(32, 1, 40, 40)  # no two pixels alike
    images, targets = batch_mix(0.0, 1.0, 7)(batch, labels)  # CutMix: a box of the neighbour, weighed by area
    pasted = images == batch.roll(1, 0)
    assert images.min() >= 0 and images.max() <= 1 and 0 < pasted.float().mean() < 1
    assert torch.allclose(targets[torch.arange(32), labels.roll(1, 0)], pasted.float().mean(dim=(1, 2, 3)), atol=1e-6)
