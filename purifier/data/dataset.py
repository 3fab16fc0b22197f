"""The in-memory data set every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageDataset:
    """uint8 images (N, H, W, C) with int64 labels (N,) and the class names they index."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W), the shape a model sees."""
        _, height, width, channels = self.images.shape
        return (channels, height, width)

    def head(self, count: int | None) -> "ImageDataset":
        """The first ``count`` items (all when ``count`` is None)."""
        if count is None:
            return self
        return ImageDataset(self.name, self.images[:count], self.labels[:count], self.class_names)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float NCHW images in [0, 1] and int64 labels."""
        images = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div_(255.0)
        return images.contiguous(), torch.from_numpy(self.labels.astype(np.int64))
