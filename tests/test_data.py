"""Loaders: real Fashion-MNIST, CIFAR-10 pickles and ImageFolder trees written here, bad data."""

from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest

from purifier.data import load_dataset
from purifier.data.idx import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from purifier.errors import DataError
from purifier.images import encode_png


def test_fashion_mnist_real_files(fmnist_test):
    train = load_dataset("fashion-mnist", "train")
    assert train.images.shape == (60000, 28, 28, 1) and fmnist_test.images.shape == (10000, 28, 28, 1)
    assert set(np.unique(fmnist_test.labels)) == set(range(10))
    assert np.bincount(fmnist_test.labels).tolist() == [1000] * 10
    assert fmnist_test.class_names[9] == "Ankle boot"
    images, labels = fmnist_test.head(5).tensors()
    assert images.shape == (5, 1, 28, 28) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert labels.tolist() == fmnist_test.labels[:5].tolist()


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)


def test_env_var_overrides_location(tmp_path, monkeypatch):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DEFAULT_FASHION_MNIST_DIR / name, tmp_path / name)
    monkeypatch.setenv("PURIFIER_FASHION_MNIST_DIR", str(tmp_path))
    assert len(load_dataset("fashion-mnist", "test")) == 10000


@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_malformed_idx_is_a_one_line_error(tmp_path, damage):
    raw = gzip.decompress((DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    raw = raw[:5000] if damage == "truncate" else b"\x12\x34" + raw[2:]
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw)
    shutil.copy(DEFAULT_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(DataError) as error:
        load_fashion_mnist("test", tmp_path)
    assert "\n" not in str(error.value) and ("truncated" in str(error.value) or "magic" in str(error.value))


def _write_cifar(directory, rng, count=6):
    directory.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(directory / "batches.meta", "wb") as stream:
        pickle.dump({b"label_names": [n.encode() for n in names]}, stream)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, count).tolist()}
        with open(directory / name, "wb") as stream:
            pickle.dump(batch, stream)


def test_cifar10_pickle_batches(tmp_path):
    rng = np.random.default_rng(0)
    _write_cifar(tmp_path / "cifar-10-batches-py", rng)
    train = load_dataset("cifar10", "train", tmp_path / "cifar-10-batches-py")
    test = load_dataset("cifar10", "test", tmp_path / "cifar-10-batches-py")
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (6, 32, 32, 3)
    assert train.class_names[0] == "airplane" and train.input_shape == (3, 32, 32)
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))[b"data"]
    assert np.array_equal(test.images[0, :, :, 0].ravel(), raw[0, :1024])  # channel-planar -> HWC


def test_cifar10_pickle_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    _write_cifar(tmp_path / "c", np.random.default_rng(0))
    with open(tmp_path / "c" / "test_batch", "wb") as stream:
        pickle.dump({b"data": Exploit()}, stream)
    with pytest.raises(DataError, match="forbidden global"):
        load_dataset("cifar10", "test", tmp_path / "c")
    assert (tmp_path / "victim").exists()


def test_cifar10_missing_directory(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "train", tmp_path / "nowhere")


def test_image_folder_tree(tmp_path, fmnist_test):
    for index in range(12):
        label = int(fmnist_test.labels[index])
        folder = tmp_path / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}.png").write_bytes(encode_png(fmnist_test.images[index]))
    data = load_dataset("folder", "train", tmp_path)
    assert data.images.shape == (12, 28, 28, 1)
    order = sorted(range(12), key=lambda i: (f"class{fmnist_test.labels[i]}", f"{i}.png"))
    assert [data.class_names[l] for l in data.labels] == [f"class{fmnist_test.labels[i]}" for i in order]
    assert np.array_equal(data.images[0], fmnist_test.images[order[0]])


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("folder", "train", tmp_path / "nowhere")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", "train", tmp_path / "empty")
    (tmp_path / "empty" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("folder", "train", tmp_path / "empty")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("mnist-but-not", "train", "/tmp")
