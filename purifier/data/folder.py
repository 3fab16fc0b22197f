"""ImageFolder trees: ROOT/[train|test/]CLASS_NAME/*.png|jpg|... (torchvision's layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from purifier.data.dataset import ImageDataset
from purifier.errors import DataError, ImageDecodeError
from purifier.images import decode_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def list_images(root: Path) -> list[Path]:
    """Image files below ``root`` by suffix, in a stable (sorted) order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_non_images(root: Path) -> list[Path]:
    """The other files below ``root`` (not images by suffix), sorted: what a job over the folder skips."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)


def _shape_of(path: Path) -> tuple[int, int, int]:
    """(C, H, W) of an image file: grey modes give 1 channel, everything else 3."""
    try:
        with Image.open(path) as image:
            return (1 if image.mode in ("1", "L", "I;16", "I", "F") else 3, image.height, image.width)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({type(error).__name__}); fix or remove that file") from None


def load_image_folder(root: Path, split: str = "train", shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Load ROOT/SPLIT/CLASS/* if ROOT/SPLIT exists, else ROOT/train/CLASS/* (a tree without a test split is
    tested on its training images), else ROOT/CLASS/*.

    Class names are the sorted sub-folder names. Every image is converted and resized to
    ``shape`` = (C, H, W); by default that of the first image (grey -> 1 channel, else 3).
    """
    root = Path(root)
    base = next((candidate for candidate in (root / split, root / "train") if candidate.is_dir()), root)
    if not base.is_dir():
        raise DataError(f"image folder {root} does not exist; pass --data-dir ROOT with one sub-folder of images per class")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    files = [(path, index) for index, name in enumerate(classes) for path in list_images(base / name)]
    if not files:
        raise DataError(f"no images found in class sub-folders of {base}; expected {base}/CLASS_NAME/IMAGE.png")
    if shape is None:
        shape = _shape_of(files[0][0])
    images = []
    for path, _ in files:
        try:
            images.append(decode_image(path.read_bytes(), shape))
        except ImageDecodeError as error:
            raise DataError(f"{path}: {error}; fix or remove that file") from None
    labels = np.array([index for _, index in files], dtype=np.int64)
    return ImageDataset(f"folder:{root.name}", np.stack(images), labels, tuple(classes))
