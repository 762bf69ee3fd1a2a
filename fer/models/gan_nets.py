"""Plain `nn.Module`s of the class-conditional DCGAN for 48x48 grayscale faces.

Generator: (latent, label embedding) -> dense -> ConvTranspose2d blocks (6 -> 12 -> 24 -> 48) -> tanh.
Discriminator: Conv2d + LeakyReLU blocks (48 -> 24 -> 12 -> 6) -> dense, conditioned on the label by
a projection (Miyato & Koyama 2018) or an auxiliary classifier head (AC-GAN), optionally with
spectral norm on every layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

IMAGE_SIZE = 48
BASE_SIZE = 6  # 6 * 2**3 = 48
CONDITIONINGS = ("projection", "auxiliary")


class Generator(nn.Module):
    """z (B, latent_dim) and labels (B,) -> images (B, 1, 48, 48) in [-1, 1].

    `channels` are the widths at 6x6, 12x12 and 24x24; the last block maps to 1 channel at 48x48.
    """

    def __init__(self, latent_dim: int = 100, num_classes: int = 7, embed_dim: int = 32,
                 channels: Sequence[int] = (256, 128, 64)):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels: three widths (6x6, 12x12, 24x24), got {list(channels)}")
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.project = nn.Sequential(
            nn.Linear(latent_dim + embed_dim, channels[0] * BASE_SIZE * BASE_SIZE, bias=False),
            nn.Unflatten(1, (channels[0], BASE_SIZE, BASE_SIZE)),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        blocks += [nn.ConvTranspose2d(channels[-1], 1, 4, stride=2, padding=1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(torch.cat([z, self.embed(labels)], dim=1)))


class Discriminator(nn.Module):
    """Images (B, 1, 48, 48) in [-1, 1] and labels (B,) -> (adversarial logits (B,), class logits
    (B, num_classes) or None).

    `conditioning="projection"` adds <embed(label), features> to the adversarial logit;
    `"auxiliary"` adds a class head whose logits the GAN's cross-entropy terms use.
    """

    def __init__(self, num_classes: int = 7, channels: Sequence[int] = (64, 128, 256),
                 conditioning: str = "projection", spectral_norm: bool = True, negative_slope: float = 0.2):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {list(CONDITIONINGS)}, got {conditioning!r}")
        self.conditioning, self.num_classes = conditioning, num_classes
        norm = _spectral_norm if spectral_norm else (lambda module: module)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(channels):  # 48 -> 24 -> 12 -> 6
            layers.append(norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=spectral_norm or i == 0)))
            if not spectral_norm and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(negative_slope, inplace=True))
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.Flatten(), norm(nn.Linear(c_in * BASE_SIZE * BASE_SIZE, c_in)),
                                  nn.LeakyReLU(negative_slope, inplace=True))
        self.adversarial = norm(nn.Linear(c_in, 1))
        if conditioning == "projection":
            self.embed = norm(nn.Embedding(num_classes, c_in))
        else:
            self.classify = norm(nn.Linear(c_in, num_classes))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.pool(self.blocks(images))
        logits = self.adversarial(h).squeeze(1)
        if self.conditioning == "projection":
            return logits + (self.embed(labels) * h).sum(dim=1), None
        return logits, self.classify(h)
