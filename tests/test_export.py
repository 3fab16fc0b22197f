"""ONNX export: parity with PyTorch on fresh inputs, dynamic batch, loud failure past tolerance."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from cli.main import main
from export.onnx import ExportParityError, export_bundle
from purifier.bundle import load_bundle
from purifier.errors import PurifierError
from serving.runtime import OnnxRuntime, TorchRuntime, create_runtime


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    target = tmp_path_factory.mktemp("export") / "tiny"
    shutil.copytree(tiny_bundle.path, target)
    return export_bundle(target)


def test_graphs_are_written_hashed_and_within_tolerance(exported):
    onnx = exported.manifest["exports"]["onnx"]
    assert set(onnx["graphs"]) == {"classifier", "purifier", "pipeline"}
    for record in onnx["graphs"].values():
        assert record["max_abs_diff"] <= onnx["parity_tolerance"] == 1e-4
        assert record["file"] in exported.manifest["files"]
    load_bundle(exported.path)  # hashes of the new files verify


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_onnx_runtime_matches_torch_on_real_images(exported, fmnist_test, batch):
    images, _ = fmnist_test.head(batch).tensors()
    image = images.numpy()
    mask, noise = exported.transform.sample(batch, exported.input_shape, np.random.default_rng(batch))
    onnx_logits, onnx_purified = OnnxRuntime(exported).pipeline(image, mask, noise)
    torch_logits, torch_purified = TorchRuntime(exported).pipeline(image, mask, noise)
    assert onnx_logits.shape == (batch, 10) and onnx_purified.shape == image.shape
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4 and np.abs(onnx_purified - torch_purified).max() < 1e-5
    assert np.array_equal(onnx_logits.argmax(1), torch_logits.argmax(1))


def test_parity_failure_is_loud_and_writes_nothing(tiny_bundle, tmp_path):
    target = tmp_path / "strict"
    shutil.copytree(tiny_bundle.path, target)
    with pytest.raises(ExportParityError, match="differs from PyTorch"):
        export_bundle(target, tolerance=0.0)
    assert not list((target / "onnx").glob("*.onnx")) and "exports" not in load_bundle(target).manifest


def test_onnx_runtime_needs_an_export(tiny_bundle):
    with pytest.raises(PurifierError, match="purifier export"):
        create_runtime(tiny_bundle, "onnxruntime")
    with pytest.raises(PurifierError, match="unknown runtime"):
        create_runtime(tiny_bundle, "tensorrt-that-is-not-here")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_export_without_tensorrt_says_so_and_writes_nothing(tiny_bundle, tmp_path, capsys):
    target = tmp_path / "engines"
    shutil.copytree(tiny_bundle.path, target)
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(target), "--tensorrt", "fp16"])
    assert stopped.value.code != 0 and "TensorRT is not installed" in capsys.readouterr().err
    assert not (target / "tensorrt").exists() and (target / "bundle.json").read_bytes() == (tiny_bundle.path / "bundle.json").read_bytes()
