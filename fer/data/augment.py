"""Batched, device-side image augmentation: one affine warp and one erase mask per batch.

Every sample gets its own random crop, flip, rotation and translation, composed into a single
2x3 matrix per sample and applied with one `grid_sample` call, so a batch costs one kernel on
whatever device it is on, with no per-image Python.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

TTA_MODES = ("none", "flip", "tencrop")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, H, W) float in [0, 1]."""
    return images.unsqueeze(1).float().div_(255)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window of (B, C, H, W) images (the eval-time view of a cropped model)."""
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top : top + size, left : left + size]


def tta_views(images: torch.Tensor, mode: str, size: int) -> torch.Tensor:
    """(B, C, H, W) faces -> (B, V, C, size, size): the views whose predictions test-time augmentation
    averages. none: the centre crop (V=1); flip: it and its mirror (V=2); tencrop: the 4 corner crops
    and the centre crop, and their mirrors (V=10; needs size < H, W)."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {list(TTA_MODES)}, got {mode!r}")
    views = [center_crop(images, size)]
    if mode == "tencrop":
        bottom, right = images.shape[-2] - size, images.shape[-1] - size
        views += [images[..., y : y + size, x : x + size] for y, x in ((0, 0), (0, right), (bottom, 0), (bottom, right))]
    if mode != "none":
        views += [view.flip(-1) for view in views]
    return torch.stack(views, dim=1)


def batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> nn.Module | None:
    """MixUp and/or CutMix of whole batches (one of the two, chosen per batch), or None when both
    alphas are 0: called as `mix(images, labels)`, it returns mixed images and soft targets."""
    mixers = [cls(alpha=alpha, num_classes=num_classes)
              for cls, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if alpha > 0]
    return v2.RandomChoice(mixers) if mixers else None


class BatchAugment(nn.Module):
    """Random resized crop + horizontal flip + small rotation/translation + random erasing.

    Input (B, 1, H, W) float in [0, 1]; output (B, 1, output_size, output_size), same range: the crops
    are taken relative to the evaluation view (the central `output_size` window). `resolution` samples
    that view at fewer pixels (progressive resizing: cheaper early epochs), None at `output_size`.
    `alternate_flip` (airbench's derandomized flip): the caller says which images to mirror, each image
    every other epoch (see FERDataModule), instead of a coin toss with probability `flip`.
    """

    def __init__(
        self,
        output_size: int = 48,
        crop_scale: Sequence[float] = (0.8, 1.0),
        crop_ratio: Sequence[float] = (0.9, 1.1),
        flip: float = 0.5,
        degrees: float = 10.0,
        translate: float = 0.1,
        erase: float = 0.25,
        erase_scale: Sequence[float] = (0.02, 0.15),
        alternate_flip: bool = False,
    ):
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        for name, p in (("flip", flip), ("erase", erase)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        self.output_size, self.resolution = output_size, None
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.flip, self.degrees, self.translate = flip, degrees, translate
        self.erase, self.erase_scale = erase, tuple(erase_scale)
        self.alternate_flip = alternate_flip

    def forward(self, images: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """`mirror`: (B,) bools, which images to flip (with `alternate_flip`); None tosses a coin each."""
        size = self.resolution or self.output_size
        grid = F.affine_grid(self._random_affine(images, mirror), [len(images), 1, size, size], align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return self._random_erase(out) if self.erase > 0 else out

    def _random_affine(self, images: torch.Tensor, mirror: torch.Tensor | None) -> torch.Tensor:
        """(B, 2, 3) matrices mapping output coordinates to input coordinates, in [-1, 1] units."""
        n, device = len(images), images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.empty(n, device=device).uniform_(low, high)

        # Crops are relative to the evaluation view (the central output_size window), so that
        # training and evaluation see faces at the same scale; shifts may reach the border.
        view = self.output_size / images.shape[-1]
        area = uniform(*self.crop_scale)
        log_ratio = uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        width = (view * (area * log_ratio.exp()).sqrt()).clamp(max=1)
        height = (view * (area / log_ratio.exp()).sqrt()).clamp(max=1)
        shift_x = (1 - width) * uniform(-1, 1) + uniform(-self.translate, self.translate) * 2
        shift_y = (1 - height) * uniform(-1, 1) + uniform(-self.translate, self.translate) * 2
        angle = uniform(-self.degrees, self.degrees).deg2rad()
        mirror = torch.where(torch.rand(n, device=device) < self.flip if mirror is None else mirror.to(device), -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        # crop-scale x rotation x mirror, then shift
        return torch.stack(
            [
                torch.stack([width * cos * mirror, -width * sin, shift_x], dim=1),
                torch.stack([height * sin * mirror, height * cos, shift_y], dim=1),
            ],
            dim=1,
        )

    def _random_erase(self, images: torch.Tensor) -> torch.Tensor:
        """Fill one random rectangle per chosen sample with uniform noise."""
        n, _, h, w = images.shape
        device = images.device
        area = torch.empty(n, device=device).uniform_(*self.erase_scale)
        log_ratio = torch.empty(n, device=device).uniform_(math.log(0.3), math.log(3.3))
        eh = (area / log_ratio.exp()).sqrt().clamp(max=1) * h
        ew = (area * log_ratio.exp()).sqrt().clamp(max=1) * w
        top = torch.rand(n, device=device) * (h - eh)
        left = torch.rand(n, device=device) * (w - ew)
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
        )
        chosen = (torch.rand(n, device=device) < self.erase).view(n, 1, 1)
        mask = (inside & chosen).unsqueeze(1)
        return torch.where(mask, torch.rand_like(images), images)
