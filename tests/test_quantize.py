"""`purifier quantize`: static INT8 graphs of the default bundle, measured against the float ones."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cli.main import main
from purifier.bundle import DEFAULT_BUNDLE, load_bundle
from serving.service import PurificationService


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    copy = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, copy)
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
