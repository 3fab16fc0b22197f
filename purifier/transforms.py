"""AToP's random transforms (Lin et al., ICLR 2024), split into sampling and application.

RT1 ``mask``:        t(x) = m ⊙ x,                    purified: g(t(x), m)
RT2 ``noise_mask``:  t(x) = m ⊙ clip(x + σ·n, 0, 1),  n ~ N(0, I), purified: g(t(x), m)
RT3 ``noise_multimask``: the noisy image x̃ = clip(x + σ·n, 0, 1) is purified under N
    non-overlapping masks m₁…m_N and each pixel is taken from the view that had to inpaint it:
        x̂ = Σₖ (1 − mₖ) ⊙ g(mₖ ⊙ x̃, mₖ)  +  (1 − Σₖ (1 − mₖ)) ⊙ (1/N) Σₖ g(mₖ ⊙ x̃, mₖ)
    (the second term covers pixels no mask dropped, which is none when N · missing_rate = 1).
Each m is a block mask: the image is tiled in ``block_size``² blocks and each block is dropped
(m = 0) with probability ``missing_rate``; under RT3 a dropped block belongs to exactly one of
the N masks; ``block_size_for`` scales the block with the image (4 px at 28–32 px, 8 at 64, 32 at
224). ``none`` is the identity (m = 1, no noise). ``gaussian`` is noise alone,
t(x) = clip(x + σ·n, 0, 1) with m = 1: the base classifier of randomized smoothing (Cohen et al.,
ICML 2019), whose prediction can be certified (``purifier.smoothing``, ``purifier certify``).

Sampling (numpy, explicit ``np.random.Generator``) is separate from application (torch,
differentiable), so the same mask and noise can be fed to PyTorch and to an exported graph.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

KINDS = ("none", "mask", "noise_mask", "noise_multimask", "gaussian")
NOISELESS_KINDS = ("none", "mask")


def block_size_for(height: int, width: int) -> int:
    """The default mask block side for an image: AToP's 4 px at Fashion-MNIST's 28 px, doubling with each doubling of the side."""
    return 4 * 2 ** max(0, round(math.log2(min(height, width) / 28)))


@dataclass(frozen=True)
class RandomTransform:
    kind: str = "none"
    block_size: int = 4
    missing_rate: float = 0.25
    noise_std: float = 0.0
    masks: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown random transform {self.kind!r}; use one of {', '.join(KINDS)}")
        if not 0.0 <= self.missing_rate < 1.0 or self.block_size < 1 or self.noise_std < 0:
            raise ValueError(f"invalid random transform settings: {self}")
        if self.kind in NOISELESS_KINDS and self.noise_std > 0:
            raise ValueError(f"random transform {self.kind!r} adds no noise: set noise_std to 0 or use noise_mask / noise_multimask")
        if self.kind == "gaussian" and (self.noise_std <= 0 or self.missing_rate != 0):
            raise ValueError(f"the gaussian transform adds noise of σ > 0 and masks nothing (missing rate 0); got {self}")
        if (self.kind == "noise_multimask") != (self.masks > 1) or self.masks * self.missing_rate > 1.0 + 1e-9:
            raise ValueError(f"invalid random transform settings: {self} (RT3 needs masks >= 2 and masks * missing_rate <= 1; other kinds use one mask)")

    def to_dict(self) -> dict:
        return asdict(self)

    def sample(self, batch: int, shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Masks (B, masks, H, W) and noise (B, C, H, W), float32, for images of ``shape`` = (C, H, W)."""
        channels, height, width = shape
        mask = np.ones((batch, self.masks, height, width), dtype=np.float32)
        noise = np.zeros((batch, channels, height, width), dtype=np.float32)
        if self.kind == "none":
            return mask, noise
        if self.kind == "gaussian":
            return mask, (rng.standard_normal(noise.shape) * self.noise_std).astype(np.float32)
        rows, cols = -(-height // self.block_size), -(-width // self.block_size)
        # Each block draws u ~ U(0, 1); it is dropped from mask k when k·rate <= u < (k+1)·rate.
        owner = np.floor(rng.random((batch, 1, rows, cols)) / self.missing_rate) if self.missing_rate > 0 else np.full((batch, 1, rows, cols), np.inf)
        keep = (owner != np.arange(self.masks).reshape(1, -1, 1, 1)).astype(np.float32)
        mask = np.repeat(np.repeat(keep, self.block_size, axis=2), self.block_size, axis=3)[:, :, :height, :width]
        if self.noise_std > 0:
            noise = (rng.standard_normal(noise.shape) * self.noise_std).astype(np.float32)
        return np.ascontiguousarray(mask), noise

    def sample_like(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same distribution as ``sample``, drawn with torch's random operators for a batch like ``image``: exported
        to ONNX as RandomUniformLike / RandomNormalLike, so a sealed graph draws its own randomness on every call."""
        height, width = image.shape[-2:]
        if self.kind in ("none", "gaussian"):
            noise = torch.randn_like(image) * self.noise_std if self.noise_std > 0 else torch.zeros_like(image)
            return torch.ones_like(image[:, :1]).expand(-1, self.masks, -1, -1), noise
        owner = torch.floor(torch.rand_like(image[:, :1, :: self.block_size, :: self.block_size]) / self.missing_rate)
        keep = torch.cat([(owner != k).to(image.dtype) for k in range(self.masks)], dim=1)
        mask = keep.repeat_interleave(self.block_size, dim=2).repeat_interleave(self.block_size, dim=3)[:, :, :height, :width]
        noise = torch.randn_like(image) * self.noise_std if self.noise_std > 0 else torch.zeros_like(image)
        return mask, noise

    @staticmethod
    def apply(image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """t(x) = m ⊙ clip(x + noise, 0, 1) for one mask (B, 1, H, W); differentiable in ``image``."""
        return mask * torch.clamp(image + noise, 0.0, 1.0)

    @staticmethod
    def purify(purifier: nn.Module, image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The purified image under this randomness: g(t(x), m), or RT3's combination of views."""
        views = mask.shape[1]
        if views == 1:
            return purifier(RandomTransform.apply(image, mask, noise), mask)
        batch, channels, height, width = image.shape
        masks = mask.reshape(batch * views, 1, height, width)
        noisy = torch.clamp(image + noise, 0.0, 1.0).unsqueeze(1).expand(batch, views, channels, height, width)
        purified = purifier(masks * noisy.reshape(batch * views, channels, height, width), masks)
        purified = purified.reshape(batch, views, channels, height, width)
        dropped = (1.0 - mask).unsqueeze(2)
        return (dropped * purified).sum(1) + (1.0 - dropped.sum(1)) * purified.mean(1)
