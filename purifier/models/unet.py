"""U-Net purifier (Ronneberger et al., 2015) for inpainting/denoising images from 28×28 grey to 224×224 RGB.

Interface shared by every purifier: ``forward(image, mask) -> purified``, all float NCHW in
[0, 1]; ``mask`` is (N, 1, H, W) with 1 where the pixel was kept by the random transform and 0
where it was dropped, so the network knows which pixels to fill in. A purifier used without a
random transform receives a mask of ones.

``sized_for(shape)`` chooses depth and widths from the image: halve until the bottleneck is about
7 pixels across (28 and 32 px: 3 levels, 64: 4, 224: 6), widths from 16 (grey) or 32 (RGB) doubling
per level up to 128. Sides that do not divide by the pooling factor 2^(depth−1) are padded
(replicating the border) and the output cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from purifier.models.blocks import conv_bn_relu


def _double_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels, stride), conv_bn_relu(out_channels, out_channels))


def sized_for(shape: Sequence[int]) -> dict:
    """The default U-Net config ({in_channels, widths}) for images of ``shape`` (C, H, W)."""
    channels, height, width = shape
    depth = min(6, max(3, 1 + round(math.log2(min(height, width) / 7))))
    base = 16 if channels == 1 else 32
    return {"in_channels": channels, "widths": [min(128, base * 2**level) for level in range(depth)]}


class UNet(nn.Module):
    """Encoder-decoder with skip connections; the output is sigmoid(.) so it stays in [0, 1].

    >>> net = UNet(in_channels=1)
    >>> net(torch.rand(2, 1, 28, 28), torch.ones(2, 1, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.encoders = nn.ModuleList()
        previous = in_channels + 1  # image channels + mask channel
        for index, width in enumerate(widths):
            self.encoders.append(_double_conv(previous, width, stride=1 if index == 0 else 2))
            previous = width
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.decoders.append(_double_conv(previous + width, width))
            previous = width
        self.output = nn.Conv2d(previous, in_channels, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        factor = 2 ** (len(self.encoders) - 1)
        features = torch.cat([image, mask], dim=1)
        pad_height, pad_width = -height % factor, -width % factor
        if pad_height or pad_width:
            features = F.pad(features, (0, pad_width, 0, pad_height), mode="replicate")
        skips = []
        for encoder in self.encoders:
            features = encoder(features)
            skips.append(features)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            features = F.interpolate(features, size=skip.shape[-2:], mode="nearest")
            features = decoder(torch.cat([features, skip], dim=1))
        return torch.sigmoid(self.output(features))[..., :height, :width]
