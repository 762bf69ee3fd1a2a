"""Plain `nn.Module`s of the class-conditional DCGAN for 48x48 grayscale faces.

Generator: latent -> dense -> ConvTranspose2d blocks (6 -> 12 -> 24 -> 48) -> tanh, told the label
either by a label embedding concatenated to the latent (the seed-style DCGAN) or by class-conditional
BatchNorm after every block (a per-class scale and shift of the normalised features, as in BigGAN).
Discriminator: Conv2d + LeakyReLU blocks (48 -> 24 -> 12 -> 6) -> dense, conditioned on the label by
a projection (Miyato & Koyama 2018) or an auxiliary classifier head (AC-GAN), optionally with
spectral norm on every layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

IMAGE_SIZE = 48
BASE_SIZE = 6  # 6 * 2**3 = 48
CONDITIONINGS = ("projection", "auxiliary", "projection+auxiliary")
GENERATOR_CONDITIONINGS = ("concat", "batchnorm")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a scale and shift looked up by the label: the label
    changes every feature map of the block, not only the latent's first layer."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.scale(labels)[:, :, None, None] + self.shift(labels)[:, :, None, None]


class Generator(nn.Module):
    """z (B, latent_dim) and labels (B,) -> images (B, 1, 48, 48) in [-1, 1].

    `channels` are the widths at 6x6, 12x12 and 24x24; the last block maps to 1 channel at 48x48.
    `conditioning="concat"` feeds an `embed_dim` label embedding with z (the seed-style DCGAN);
    `"batchnorm"` uses class-conditional BatchNorm in every block instead.
    """

    def __init__(self, latent_dim: int = 100, num_classes: int = 7, embed_dim: int = 32,
                 channels: Sequence[int] = (256, 128, 64), conditioning: str = "concat"):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels: three widths (6x6, 12x12, 24x24), got {list(channels)}")
        if conditioning not in GENERATOR_CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {list(GENERATOR_CONDITIONINGS)}, got {conditioning!r}")
        self.latent_dim, self.num_classes, self.conditioning = latent_dim, num_classes, conditioning
        concat = conditioning == "concat"
        self.embed = nn.Embedding(num_classes, embed_dim) if concat else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim + (embed_dim if concat else 0), channels[0] * BASE_SIZE * BASE_SIZE, bias=False),
            nn.Unflatten(1, (channels[0], BASE_SIZE, BASE_SIZE)),
        )
        widths = list(channels)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) if concat else ConditionalBatchNorm2d(c, num_classes) for c in widths)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)
                                      for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.to_image = nn.Sequential(nn.ConvTranspose2d(widths[-1], 1, 4, stride=2, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(labels)], dim=1) if self.embed is not None else z)
        for i, norm in enumerate(self.norms):
            h = F.relu(norm(h) if self.embed is not None else norm(h, labels))
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.to_image(h)


class Discriminator(nn.Module):
    """Images (B, 1, 48, 48) in [-1, 1] and labels (B,) -> (adversarial logits (B,), class logits
    (B, num_classes) or None).

    `conditioning="projection"` adds <embed(label), features> to the adversarial logit;
    `"auxiliary"` adds a class head whose logits the GAN's cross-entropy terms use (AC-GAN);
    `"projection+auxiliary"` does both.
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
        self.embed = norm(nn.Embedding(num_classes, c_in)) if "projection" in conditioning else None
        self.classify = norm(nn.Linear(c_in, num_classes)) if "auxiliary" in conditioning else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.pool(self.blocks(images))
        logits = self.adversarial(h).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(dim=1)
        return logits, self.classify(h) if self.classify is not None else None


class FeatureCritic(nn.Module):
    """The trainable head of a second discriminator that sees faces through a frozen real-data
    classifier (vision-aided GAN, Kumari et al. 2022): features (B, d) and labels (B,) ->
    adversarial logits (B,), with the same label projection and spectral norm as `Discriminator`.
    Its features already separate the expressions, so a generated face whose features do not
    match its label is told apart from real ones within a few hundred steps."""

    def __init__(self, num_features: int, num_classes: int = 7, hidden: int = 256, negative_slope: float = 0.2):
        super().__init__()
        self.hidden = nn.Sequential(_spectral_norm(nn.Linear(num_features, hidden)), nn.LeakyReLU(negative_slope))
        self.adversarial = _spectral_norm(nn.Linear(hidden, 1))
        self.embed = _spectral_norm(nn.Embedding(num_classes, hidden))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.hidden(features)
        return self.adversarial(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)
