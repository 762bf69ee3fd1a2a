"""Plain `nn.Module` classifiers for 1-channel face crops (48x48 or a smaller crop).

They return logits; softmax is applied by the loss and at prediction time.
"""

from __future__ import annotations

from typing import Sequence

import torchvision
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConvNet(nn.Module):
    """Stages of Conv-BN-ReLU layers, each stage closed by a 2x2 max-pool, then a dense head.

    One conv per stage is the seeds' CNN; two or three per stage is a VGG-style net. Adaptive average
    pooling to a `pool_size` x `pool_size` grid before the head makes it work for any input size; a grid
    above 1 keeps where on the (aligned) face a feature fired: the mouth below the eyes. `ceil_pool`
    lets each max-pool keep an odd-sized map's last row and column (a 40 px face's 5x5 map pools to
    3x3, not 2x2), which a floor pool computes and then drops.
    """

    def __init__(
        self,
        stages: Sequence[Sequence[int]] = ((64,), (128,), (256,), (512,)),
        dense: int = 256,
        dropout: float = 0.5,
        num_classes: int = 7,
        in_channels: int = 1,
        pool_size: int = 1,
        ceil_pool: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in stages:
            for width in stage:
                layers.append(conv_bn_relu(channels, width))
                channels = width
            layers.append(nn.MaxPool2d(2, ceil_mode=ceil_pool))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * pool_size**2, dense),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))

    def penultimate(self, x):
        """The activations that feed the last linear layer (the embedding that FID/KID compare)."""
        return self.head[:-1](self.features(x))


def resnet18(num_classes: int = 7, in_channels: int = 1, dropout: float = 0.0) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR-style stem (3x3 stride-1 conv, no max-pool) that
    small 48x48 inputs need."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
    return net
