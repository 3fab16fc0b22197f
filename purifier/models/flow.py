"""Glow-style normalizing flow (Kingma & Dhariwal, 2018), the exact invertible manifold model of IJSAT.

    z = F(x),   log p(x) = log N(z; 0, I) + log |det ∂F/∂x|,   x = F⁻¹(z)

Multi-scale: each level squeezes (C, H, W) → (4C, H/2, W/2), applies ``steps`` flow steps
(actnorm → invertible 1×1 convolution → affine coupling), then splits off half the channels
as latent; the last level keeps all of them. Images are float NCHW in [0, 1]; the flow works
on x − 0.5, and ``encode``/``decode`` map images to one flat latent vector per image and back.
Sides must be divisible by 2^levels (28 → 14 → 7 for two levels).

>>> flow = Glow(in_channels=1, levels=2, steps=2, hidden=16)
>>> x = torch.rand(3, 1, 28, 28)
>>> z, logdet = flow(x)
>>> float((flow.decode(z) - x).abs().max()) < 1e-4
True
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, 4C, H/2, W/2), each 2×2 patch to channels."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


class ActNorm(nn.Module):
    """y = (x + b) · exp(s) per channel, initialised from the first batch to zero mean, unit variance."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.initialized and self.training:
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std(dim=(0, 2, 3), keepdim=True) + 1e-6))
                self.initialized.fill_(True)
        return (x + self.bias) * torch.exp(self.log_scale), self.log_scale.sum() * x.shape[2] * x.shape[3]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    """y = W x at every pixel, W initialised to a random rotation; log|det| = H·W·log|det W|."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.linalg.slogdet(self.weight)[1] * x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight[:, :, None, None]), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight)[:, :, None, None])


class AffineCoupling(nn.Module):
    """x = (a, b): y = (a, (b + t(a)) · s(a)), s = exp(2·tanh(h/2)) ∈ (e⁻², e²); log|det| = Σ log s.

    The scale may expand as well as contract, and is bounded both ways: Glow's s = sigmoid(h + 2) can
    only contract, so a flow trained on Fashion-MNIST's flat backgrounds learned scales near 1e-4 and
    an inverse that amplified float rounding into NaN (measured: encode → decode error 0.13).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels // 2, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, 2 * (channels - channels // 2), 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, t = self.net(a).chunk(2, dim=1)
        return torch.exp(2.0 * torch.tanh(h / 2.0)), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2:]
        scale, shift = self._scale_shift(a)
        return torch.cat([a, (b + shift) * scale], dim=1), torch.log(scale).flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        a, b = y[:, : y.shape[1] // 2], y[:, y.shape[1] // 2:]
        scale, shift = self._scale_shift(a)
        return torch.cat([a, b / scale - shift], dim=1)


class FlowStep(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvertibleConv1x1(channels), AffineCoupling(channels, hidden)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, logdet = layer(x)
            total = total + logdet
        return x, total

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


class Glow(nn.Module):
    """Multi-scale flow; ``forward(x)`` → (flat latent z (N, C·H·W), log|det ∂z/∂x| (N,))."""

    def __init__(self, in_channels: int = 1, levels: int = 2, steps: int = 4, hidden: int = 64, image_size: int = 28) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.levels = nn.ModuleList()
        channels = in_channels
        for level in range(levels):
            channels *= 4
            self.levels.append(nn.ModuleList([FlowStep(channels, hidden) for _ in range(steps)]))
            if level < levels - 1:
                channels //= 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, logdet, latents = x - 0.5, x.new_zeros(x.shape[0]), []
        for index, steps in enumerate(self.levels):
            h = squeeze(h)
            for step in steps:
                h, step_logdet = step(h)
                logdet = logdet + step_logdet
            if index < len(self.levels) - 1:
                latent, h = h.chunk(2, dim=1)
                latents.append(latent.flatten(1))
        latents.append(h.flatten(1))
        return torch.cat(latents, dim=1), logdet

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """F⁻¹(z): images (N, C, H, W) from flat latents."""
        shapes, channels, size = [], self.in_channels, self.image_size
        for index in range(len(self.levels)):
            channels, size = channels * 4, size // 2
            if index < len(self.levels) - 1:
                shapes.append((channels // 2, size, size))
                channels //= 2
        shapes.append((channels, size, size))
        parts = list(torch.split(z, [math.prod(shape) for shape in shapes], dim=1))
        h = parts.pop().view(-1, *shapes[-1])
        for index in reversed(range(len(self.levels))):
            if index < len(self.levels) - 1:
                h = torch.cat([parts.pop().view(-1, *shapes[index]), h], dim=1)
            for step in reversed(self.levels[index]):
                h = step.inverse(h)
            h = unsqueeze(h)
        return h + 0.5

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per image under the standard-normal prior on z (continuous density)."""
        z, logdet = self(x)
        return -0.5 * (z ** 2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + logdet
