"""Fashion-MNIST from its IDX files (LeCun's format), plain or gzipped.

IDX: a 4-byte magic (0x00 0x00, dtype code 0x08 = uint8, number of dimensions), then one
big-endian uint32 per dimension, then the raw data.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from purifier.data.dataset import ImageDataset
from purifier.errors import DataError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_FIX = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
    "or pass --data-dir / set PURIFIER_FASHION_MNIST_DIR to a folder with the four IDX files"
)


def fashion_mnist_dir() -> Path:
    """Where Fashion-MNIST is looked for: $PURIFIER_FASHION_MNIST_DIR, else Debian's location."""
    return Path(os.environ.get("PURIFIER_FASHION_MNIST_DIR", DEFAULT_FASHION_MNIST_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file of uint8 data into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file {path}: {error}; {_FIX}") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number); {_FIX}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated or padded: header says {shape}, got {len(raw) - header} bytes of data; {_FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {directory}; {_FIX}")


def load_fashion_mnist(split: str = "train", directory: Path | None = None) -> ImageDataset:
    """Fashion-MNIST ``split`` ('train': 60k, 'test': 10k) as 28x28x1 uint8 images."""
    if split not in _SPLIT_PREFIX:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    directory = Path(directory) if directory is not None else fashion_mnist_dir()
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {directory} disagree: images {images.shape}, labels {labels.shape}; {_FIX}")
    return ImageDataset("fashion-mnist", images[..., None].copy(), labels.astype(np.int64), FASHION_MNIST_CLASSES)
