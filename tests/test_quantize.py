"""`purifier quantize`: static INT8 graphs of the default bundle, measured against the float ones."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cli.main import main
from export.quantize import adversarial_batches
from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from serving.service import PurificationService


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    copy = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(REFERENCE_PIPELINE, copy)
    main(["quantize", str(copy), "--calibration-images", "128", "--robust-images", "32", "--steps", "3", "--eot", "2"])
    return load_bundle(copy)


def test_int8_graphs_are_recorded_with_float_comparison(quantized):
    record = quantized.manifest["exports"]["onnx_int8"]
    assert set(record["graphs"]) == {"classifier", "purifier", "pipeline"}
    assert all(quantized.file(graph["file"]).is_file() for graph in record["graphs"].values())
    clean = record["clean_accuracy"]
    assert abs(clean["int8"] - clean["float"]) < 0.02 and record["clean_agreement"] > 0.9
    assert set(record["robust_accuracy_transferred_linf_0.1"]) == {"float", "int8"}
    assert record["robust_protocol"] == {"images": 32, "steps": 3, "eot": 2, "crafted_on": "float PyTorch pipeline"}


def test_int8_runtime_serves_real_images(quantized, fmnist_test):
    service = PurificationService.from_bundle(quantized.path, runtime="onnxruntime-int8", seed=0)
    outcome = service.run(fmnist_test.images[:200])
    accuracy = np.mean([p.index == label for p, label in zip(outcome.predictions, fmnist_test.labels[:200])])
    assert accuracy >= 0.8


def test_a_killed_robust_check_resumes_from_its_saved_batches(tmp_path, fmnist_test):
    """Batches saved by an earlier run are reused, not crafted again; the cache goes when done."""
    cache = tmp_path / ".int8-attack"
    images, labels = (t.numpy() for t in fmnist_test.head(150).tensors())
    saved_first_batch = np.clip(images[:100] + 0.05, 0, 1).astype(np.float32)
    cache.mkdir()
    np.save(cache / "000000.npy", saved_first_batch)
    pipeline = load_bundle(REFERENCE_PIPELINE).pipeline(seed=0)
    adversarial = adversarial_batches(pipeline, cache, images, labels, steps=2, eot=1)
    assert np.array_equal(adversarial[:100], saved_first_batch)
    assert adversarial.shape == images.shape and np.abs(adversarial[100:] - images[100:]).max() <= 0.1 + 1e-6
    assert not cache.exists()
