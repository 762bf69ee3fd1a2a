"""DiffAugment (Zhao et al. 2020) for grayscale faces: differentiable brightness, contrast,
translation and cutout applied to every image the discriminator sees, real and generated alike, so
that D cannot memorise the few real images of a small class (disgust has 436) and G still gets a
gradient through the augmentation.

One call samples one transform per batch row and applies it to every batch passed in: `augment(real,
fake)` gives real[i] and fake[i] the same brightness, contrast, shift and hole.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POLICIES = ("brightness", "contrast", "translation", "cutout")


class DiffAugment(nn.Module):
    """`policy`: a subset of `POLICIES`, applied in that order to (B, 1, H, W) images in [-1, 1].
    `translation` shifts by up to `translation_ratio` of the side (zero padding), `cutout` zeroes a
    square of `cutout_ratio` of the side."""

    def __init__(self, policy: Sequence[str] = POLICIES, translation_ratio: float = 0.125, cutout_ratio: float = 0.5):
        super().__init__()
        unknown = [p for p in policy if p not in POLICIES]
        if unknown:
            raise ValueError(f"policy: unknown transforms {unknown}, expected some of {list(POLICIES)}")
        if not 0 <= translation_ratio < 1 or not 0 <= cutout_ratio < 1:
            raise ValueError(f"translation_ratio and cutout_ratio must be in [0, 1), got {translation_ratio}, {cutout_ratio}")
        self.policy = [p for p in POLICIES if p in policy]
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio

    def forward(self, *batches: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        if len({tuple(b.shape) for b in batches}) != 1:
            raise ValueError(f"DiffAugment: the batches must have one shape, got {[tuple(b.shape) for b in batches]}")
        transforms = [self._sample(name, batches[0], generator) for name in self.policy]
        augmented = []
        for x in batches:
            for transform in transforms:
                x = transform(x)
            augmented.append(x)
        return tuple(augmented)

    def _sample(self, name: str, like: torch.Tensor, generator: torch.Generator | None):
        """One random transform per batch row, as a function of a batch."""
        n, _, height, width = like.shape

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(like.device, like.dtype)

        if name == "brightness":  # add a level in [-0.5, 0.5) of the [0, 1] range = [-1, 1) here
            shift = (uniform(n, 1, 1, 1) - 0.5) * 2
            return lambda x: x + shift
        if name == "contrast":  # scale the deviation from the image mean by [0.5, 1.5)
            factor = uniform(n, 1, 1, 1) + 0.5
            return lambda x: (x - x.mean(dim=(1, 2, 3), keepdim=True)) * factor + x.mean(dim=(1, 2, 3), keepdim=True)
        if name == "translation":  # whole-pixel shifts of up to ratio * side, by an affine grid
            limit_y, limit_x = round(height * self.translation_ratio), round(width * self.translation_ratio)
            dy = torch.floor(uniform(n) * (2 * limit_y + 1)) - limit_y
            dx = torch.floor(uniform(n) * (2 * limit_x + 1)) - limit_x
            theta = torch.zeros(n, 2, 3, device=like.device, dtype=like.dtype)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, 0, 2], theta[:, 1, 2] = -2 * dx / width, -2 * dy / height
            grid = F.affine_grid(theta, list(like.shape), align_corners=False)
            return lambda x: F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        # cutout: a square hole centred anywhere in the image (so partly outside it near the edges)
        size_y, size_x = int(height * self.cutout_ratio), int(width * self.cutout_ratio)
        top = torch.floor(uniform(n, 1, 1) * height) - size_y // 2
        left = torch.floor(uniform(n, 1, 1) * width) - size_x // 2
        rows = torch.arange(height, device=like.device).view(1, height, 1) - top
        cols = torch.arange(width, device=like.device).view(1, 1, width) - left
        hole = (rows >= 0) & (rows < size_y) & (cols >= 0) & (cols < size_x)
        keep = (~hole).to(like.dtype).unsqueeze(1)
        return lambda x: x * keep
