"""Small residual classifier sized for 28x28 / 32x32 images on a 2-core CPU.

Interface shared by every classifier (timm-style):
``forward_features(x) -> feature map``, ``forward_head(features) -> logits``,
``forward(x) = forward_head(forward_features(x))``. Inputs are float NCHW in [0, 1];
normalisation is a fixed buffer inside the model, so attacks never see normalised tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from purifier.models.blocks import ResidualBlock, conv_bn_relu


class ResNetSmall(nn.Module):
    """Three-stage ResNet: stem, then one residual block per stage, stages halving resolution.

    >>> model = ResNetSmall(in_channels=1, num_classes=10)
    >>> model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stem = conv_bn_relu(in_channels, widths[0])
        stages = []
        previous = widths[0]
        for index, width in enumerate(widths):
            stages.append(ResidualBlock(previous, width, stride=1 if index == 0 else 2))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(previous, num_classes)
        self.num_features = previous

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, C, h, w); JATP's feature-similarity loss reads it."""
        return self.stages(self.stem((x - self.mean) / self.std))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
