"""Data sets by name: ``load_dataset('fashion-mnist' | 'cifar10' | 'folder', split, data_dir)``."""

from __future__ import annotations

from pathlib import Path

import torch

from purifier.data.cifar import load_cifar10
from purifier.data.dataset import ImageDataset
from purifier.data.folder import load_image_folder
from purifier.data.idx import load_fashion_mnist
from purifier.errors import DataError

DATASETS = ("fashion-mnist", "cifar10", "folder")


def load_dataset(name: str, split: str = "train", data_dir: Path | None = None, shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Load ``split`` of data set ``name``; ``data_dir`` overrides the default location. A folder's images are
    converted to ``shape`` (C, H, W) when given (a model's input), else to the first image's."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if data_dir is None:
        raise DataError(f"data set {name!r} needs --data-dir")
    if name == "cifar10":
        return load_cifar10(data_dir, split)
    if name == "folder":
        return load_image_folder(data_dir, split, shape)
    raise DataError(f"unknown data set {name!r}; use one of {', '.join(DATASETS)}")


def load_split(name: str, data_dir: Path | None, split: str, limit: int | None = None) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """A split (its first ``limit`` images) as the data set and its float NCHW images and labels."""
    data = load_dataset(name, split, data_dir).head(limit)
    images, labels = data.tensors()
    return data, images, labels


__all__ = ["DATASETS", "ImageDataset", "load_dataset", "load_split"]
