"""A seeded Fashion-MNIST-C-style corruption suite (after Hendrycks & Dietterich, ICLR 2019;
Mu & Gilmer's MNIST-C): 10 corruption types × 3 severities, deterministic given a seed.

Every corruption maps float NCHW images in [0, 1] to float NCHW images in [0, 1]:
noise (gaussian, shot, impulse), blur (defocus, motion), photometric (contrast, brightness),
digital (jpeg, pixelate) and geometric (elastic).

>>> corrupted = corrupt(images, "motion_blur", severity=2, seed=0)
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from purifier.images import to_uint8

SEVERITIES = (1, 2, 3)


def _gaussian_noise(x, level, rng):
    sigma = (0.08, 0.12, 0.18)[level]
    return x + torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)) * sigma


def _shot_noise(x, level, rng):
    photons = (60.0, 25.0, 12.0)[level]
    return torch.from_numpy(rng.poisson(x.numpy() * photons).astype(np.float32) / photons)


def _impulse_noise(x, level, rng):
    amount = (0.03, 0.06, 0.09)[level]
    draw = torch.from_numpy(rng.random(x.shape).astype(np.float32))
    return torch.where(draw < amount / 2, 0.0, torch.where(draw > 1 - amount / 2, 1.0, x))


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-channel 2-D convolution with a normalised kernel, edges replicated."""
    kernel = (kernel / kernel.sum())[None, None].repeat(x.shape[1], 1, 1, 1)
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), kernel, groups=x.shape[1])


def _defocus_blur(x, level, rng):
    radius = (1.0, 1.5, 2.0)[level]
    size = 2 * math.ceil(radius) + 1
    grid = torch.arange(size, dtype=torch.float32) - size // 2
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2 + 0.25).float()
    return _convolve(x, disk)


def _motion_blur(x, level, rng):
    length = (3, 5, 7)[level]
    angle = rng.uniform(0, math.pi)
    grid = torch.arange(length, dtype=torch.float32) - length // 2
    kernel = torch.zeros(length, length)
    for offset in grid:
        row, col = round(float(offset * math.sin(angle))), round(float(offset * math.cos(angle)))
        kernel[length // 2 + row, length // 2 + col] = 1.0
    return _convolve(x, kernel)


def _contrast(x, level, rng):
    factor = (0.6, 0.45, 0.3)[level]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _brightness(x, level, rng):
    return x + (0.1, 0.2, 0.3)[level]


def _per_image_pil(x: torch.Tensor, transform: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    out = []
    for image in to_uint8(x.numpy()):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        array = np.asarray(transform(pil), dtype=np.float32) / 255.0
        out.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


def _jpeg(x, level, rng):
    quality = (30, 15, 8)[level]

    def compress(pil: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return _per_image_pil(x, compress)


def _pixelate(x, level, rng):
    scale = (0.6, 0.5, 0.4)[level]

    def pixelate(pil: Image.Image) -> Image.Image:
        small = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.Resampling.BOX)
        return small.resize(pil.size, Image.Resampling.NEAREST)

    return _per_image_pil(x, pixelate)


def _elastic(x, level, rng):
    """Smooth random displacement field (Simard et al., 2003): α pixels, Gaussian-smoothed with σ."""
    alpha, sigma = (1.5, 2.5, 3.5)[level], 3.0
    n, _, height, width = x.shape
    field = torch.from_numpy(rng.uniform(-1, 1, (n, 2, height, width)).astype(np.float32))
    grid = torch.arange(-6, 7, dtype=torch.float32)
    gauss = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma**2))
    field = _convolve(field, gauss)
    field = field / field.flatten(1).abs().amax(dim=1).clamp_min(1e-6).view(n, 1, 1, 1) * alpha
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    base = torch.stack([xs, ys], dim=-1)[None]
    offset = torch.stack([field[:, 0] * 2 / (width - 1), field[:, 1] * 2 / (height - 1)], dim=-1)
    return F.grid_sample(x, base + offset, mode="bilinear", padding_mode="border", align_corners=True)


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, np.random.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "motion_blur": _motion_blur, "contrast": _contrast, "brightness": _brightness,
    "jpeg": _jpeg, "pixelate": _pixelate, "elastic": _elastic,
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` corrupted by ``name`` at ``severity`` (1-3); the same seed gives the same result."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name)])  # same draws at every severity
    with torch.no_grad():
        return CORRUPTIONS[name](images.detach().cpu().float(), severity - 1, rng).clamp(0.0, 1.0)
