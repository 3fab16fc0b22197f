"""ONNX export: parity with PyTorch on fresh inputs, dynamic batch, loud failure past tolerance."""

from __future__ import annotations

import importlib.util
import json
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
    assert set(onnx["graphs"]) == {"classifier", "purifier", "pipeline", "sealed"}
    for name, record in onnx["graphs"].items():
        assert name == "sealed" or record["max_abs_diff"] <= onnx["parity_tolerance"] == 1e-4
        assert record["file"] in exported.manifest["files"]
    load_bundle(exported.path)  # hashes of the new files verify


def test_graphs_keep_each_tensor_once_in_one_weight_file(exported):
    onnx_export = exported.manifest["exports"]["onnx"]
    weights = exported.file(onnx_export["weights"])
    parameter_bytes = sum(tensor.numel() * 4 for model in (exported.classifier(), exported.purifier()) for tensor in model.state_dict().values())
    # four graphs hold the classifier three times and the purifier three times; shared, each is there once
    assert weights.stat().st_size < 1.2 * parameter_bytes and onnx_export["weights"] in exported.manifest["files"]
    graphs = sum(exported.file(record["file"]).stat().st_size for record in onnx_export["graphs"].values())
    assert graphs < weights.stat().st_size


def test_a_new_export_replaces_the_old_weight_file(exported, tmp_path):
    target = tmp_path / "again"
    shutil.copytree(exported.path, target)
    manifest = json.loads((target / "bundle.json").read_text())
    old, stale = manifest["exports"]["onnx"]["weights"], "onnx/weights-0000000000000000.bin"
    (target / old).rename(target / stale)  # as if an earlier export had written other weights
    manifest["exports"]["onnx"]["weights"], manifest["files"][stale] = stale, manifest["files"].pop(old)
    (target / "bundle.json").write_text(json.dumps(manifest))
    again = export_bundle(target)
    assert again.manifest["exports"]["onnx"]["weights"] == old and not (target / stale).exists() and stale not in again.manifest["files"]
    load_bundle(target)  # every listed file is there and hashes match


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
def test_tensorrt_export_without_tensorrt_says_so_and_writes_nothing(exported, tmp_path, capsys):
    target = tmp_path / "engines"
    shutil.copytree(exported.path, target)
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(target), "--tensorrt", "fp16"])
    assert stopped.value.code != 0 and "TensorRT is not installed" in capsys.readouterr().err
    assert not (target / "tensorrt").exists() and not list((target / "onnx").glob("*.fp16.onnx"))
    assert (target / "bundle.json").read_bytes() == (exported.path / "bundle.json").read_bytes()


def test_sealed_graph_draws_the_transform_with_the_right_statistics(exported, tmp_path):
    """The randomness ONNX's random operators draw (exported alone from the same code): dropped-block rate, block structure and
    noise σ as the bundle's transform says, fresh on every call."""
    import onnxruntime
    import torch

    transform = exported.transform

    class Sampler(torch.nn.Module):
        def forward(self, image):
            return transform.sample_like(image)

    path = tmp_path / "sampler.onnx"
    torch.onnx.export(Sampler().eval(), (torch.rand(2, 1, 28, 28),), str(path), input_names=["image"], output_names=["mask", "noise"],
                      dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, opset_version=18, dynamo=True, external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.zeros((2000, 1, 28, 28), dtype=np.float32)
    mask, noise = session.run(None, {"image": image})
    assert abs((1 - mask).mean() - transform.missing_rate) < 0.01 and abs(noise.std() - transform.noise_std) < 0.002
    blocks = mask.reshape(2000, 1, 7, 4, 7, 4)
    assert (blocks == blocks[:, :, :, :1, :, :1]).all()  # whole 4×4 blocks are dropped
    assert not np.array_equal(mask, session.run(None, {"image": image})[0])


def test_sealed_graph_agrees_with_pytorch_over_many_draws(tmp_path, fmnist_test):
    """On 1,000 real test images the sealed default pipeline in ONNX Runtime is as accurate as PyTorch's, and agrees with it as
    often as two PyTorch draws agree with each other."""
    import onnxruntime

    from purifier.assets import REFERENCE_PIPELINE

    copy = tmp_path / "default"
    shutil.copytree(REFERENCE_PIPELINE, copy)
    bundle = export_bundle(copy)
    images, labels = fmnist_test.head(1000).tensors()
    session = onnxruntime.InferenceSession(str(bundle.file("onnx/sealed.onnx")), providers=["CPUExecutionProvider"])
    sealed = session.run(["logits"], {"image": images.numpy()})[0].argmax(1)
    first, second = (bundle.pipeline(seed=seed)(images).argmax(1).numpy() for seed in (1, 2))
    accuracy = {name: float((prediction == labels.numpy()).mean()) for name, prediction in (("onnx", sealed), ("torch", first))}
    assert abs(accuracy["onnx"] - accuracy["torch"]) < 0.03, accuracy
    assert (sealed == first).mean() >= (first == second).mean() - 0.03


def test_fp16_graphs_agree_with_float_on_real_images_in_onnx_runtime(exported, fmnist_test, tmp_path):
    """What TensorRT 11's FP16 engines are built from, checked here on the CPU: recorded figures, and real test images."""
    import onnxruntime

    target = tmp_path / "fp16"
    shutil.copytree(exported.path, target)
    main(["export", str(target), "--fp16"])
    bundle = load_bundle(target)
    graphs = bundle.manifest["exports"]["onnx_fp16"]["graphs"]
    assert set(graphs) == {"classifier", "purifier", "pipeline"}
    assert graphs["pipeline"]["max_abs_diff_logits"] <= 0.05 and graphs["pipeline"]["argmax_agreement"] >= 0.98
    images = fmnist_test.head(256).tensors()[0].numpy()
    mask, noise = bundle.transform.sample(len(images), bundle.input_shape, np.random.default_rng(1))
    feeds = {"image": images, "mask": mask, "noise": noise}
    half = onnxruntime.InferenceSession(str(bundle.file(graphs["pipeline"]["file"])), providers=["CPUExecutionProvider"])
    assert [value.type for value in half.get_inputs()] == ["tensor(float)"] * 3  # the runtimes feed float32 as before
    half_logits, half_purified = half.run(None, feeds)
    logits, purified = OnnxRuntime(bundle).pipeline(images, mask, noise)
    assert (half_logits.argmax(1) == logits.argmax(1)).mean() >= 0.98 and np.abs(half_purified - purified).max() < 0.01


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_int8_needs_the_quantized_graphs_first(exported, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(exported.path), "--tensorrt", "int8"])
    assert "run 'purifier quantize" in capsys.readouterr().err
