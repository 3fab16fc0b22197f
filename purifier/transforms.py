"""AToP's random transforms (Lin et al., ICLR 2024), split into sampling and application.

RT1 ``mask``:        t(x) = m ⊙ x
RT2 ``noise_mask``:  t(x) = m ⊙ clip(x + σ·n, 0, 1),   n ~ N(0, I)
with m a block mask: the image is tiled in ``block_size``² blocks and each block is dropped
(m = 0) with probability ``missing_rate``. ``none`` is the identity (m = 1, no noise).

Sampling (numpy, explicit ``np.random.Generator``) is separate from application (torch,
differentiable), so the same mask and noise can be fed to PyTorch and to an exported graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

KINDS = ("none", "mask", "noise_mask")


@dataclass(frozen=True)
class RandomTransform:
    kind: str = "none"
    block_size: int = 4
    missing_rate: float = 0.25
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown random transform {self.kind!r}; use one of {', '.join(KINDS)}")
        if not 0.0 <= self.missing_rate < 1.0 or self.block_size < 1 or self.noise_std < 0:
            raise ValueError(f"invalid random transform settings: {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    def sample(self, batch: int, shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Mask (N, 1, H, W) and noise (N, C, H, W), float32, for images of ``shape`` = (C, H, W)."""
        channels, height, width = shape
        mask = np.ones((batch, 1, height, width), dtype=np.float32)
        noise = np.zeros((batch, channels, height, width), dtype=np.float32)
        if self.kind == "none":
            return mask, noise
        rows, cols = -(-height // self.block_size), -(-width // self.block_size)
        keep = (rng.random((batch, 1, rows, cols)) >= self.missing_rate).astype(np.float32)
        mask = np.repeat(np.repeat(keep, self.block_size, axis=2), self.block_size, axis=3)[:, :, :height, :width]
        if self.kind == "noise_mask" and self.noise_std > 0:
            noise = (rng.standard_normal(noise.shape) * self.noise_std).astype(np.float32)
        return np.ascontiguousarray(mask), noise

    @staticmethod
    def apply(image: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """t(x) = m ⊙ clip(x + noise, 0, 1); differentiable in ``image``."""
        return mask * torch.clamp(image + noise, 0.0, 1.0)
