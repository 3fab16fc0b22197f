"""CIFAR-10 from its official python-pickle batches (data_batch_1..5, test_batch, batches.meta).

The batches are pickles, so they are read with an unpickler that only admits the handful of
numpy constructors the official files use: a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from purifier.data.dataset import ImageDataset
from purifier.errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"), ("builtins", "object"),
}
_FIX = "pass --data-dir pointing at the extracted 'cifar-10-batches-py' folder of the official python version"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"CIFAR-10 file {path.name} not found in {path.parent}; {_FIX}")
    try:
        with open(path, "rb") as stream:
            batch = _SafeUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DataError(f"{path} is not a CIFAR-10 batch ({error}); {_FIX}") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (not a dict); {_FIX}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def load_cifar10(directory: Path, split: str = "train") -> ImageDataset:
    """CIFAR-10 ``split`` ('train': batches 1-5, 'test': test_batch) as 32x32x3 uint8 images."""
    directory = Path(directory)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    meta = _read_batch(directory / "batches.meta")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", []))
    images, labels = [], []
    for name in names[split]:
        batch = _read_batch(directory / name)
        data = np.asarray(batch.get("data"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{directory / name} has data of shape {data.shape}, expected (N, 3072) uint8; {_FIX}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch.get("labels"), dtype=np.int64))
    return ImageDataset("cifar10", np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names)
