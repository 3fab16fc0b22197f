"""The in-memory data set every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from purifier.errors import DataError


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

    def relabelled(self, class_names: tuple[str, ...]) -> "ImageDataset":
        """The same images with labels indexing ``class_names`` (a model's classes), matched by name: a folder of
        some of a classifier's classes, in whatever order its sub-folders sort."""
        if tuple(class_names) == self.class_names:
            return self
        unknown = [name for name in self.class_names if name not in class_names]
        if unknown:
            raise DataError(f"data classes {', '.join(unknown[:5])} are not among the model's classes ({', '.join(class_names[:10])}"
                            f"{', …' if len(class_names) > 10 else ''}); name the class folders after the model's classes")
        mapping = np.array([list(class_names).index(name) for name in self.class_names], dtype=np.int64)
        return ImageDataset(self.name, self.images, mapping[self.labels], tuple(class_names))

    def head(self, count: int | None) -> "ImageDataset":
        """The first ``count`` items (all when ``count`` is None)."""
        if count is None:
            return self
        return ImageDataset(self.name, self.images[:count], self.labels[:count], self.class_names)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float NCHW images in [0, 1] and int64 labels."""
        images = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div_(255.0)
        return images.contiguous(), torch.from_numpy(self.labels.astype(np.int64))
