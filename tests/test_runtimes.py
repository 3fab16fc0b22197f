"""Asking for an engine that cannot run gives a clear error, never a silent fallback."""

from __future__ import annotations

import importlib.util

import onnxruntime
import pytest
import torch

from purifier.assets import CHECKOUT_BUNDLES, REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.errors import PurifierError
from serving.runtime import RUNTIMES, create_runtime


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(REFERENCE_PIPELINE)


def test_unknown_runtime_lists_the_known_ones(bundle):
    with pytest.raises(PurifierError, match="available: onnxruntime"):
        create_runtime(bundle, "tensorflow")


def test_int8_runtime_without_quantized_graphs_says_how_to_make_them():
    float_only = load_bundle(CHECKOUT_BUNDLES / "fmnist-pgd-at")
    assert "onnx_int8" not in float_only.manifest["exports"]
    with pytest.raises(PurifierError, match="purifier quantize"):
        create_runtime(float_only, "onnxruntime-int8")


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="this ONNX Runtime has CUDA")
@pytest.mark.parametrize("name, provider", [("onnxruntime-cuda", "CUDAExecutionProvider"), ("onnxruntime-tensorrt", "TensorrtExecutionProvider")])
def test_gpu_runtimes_without_their_provider_are_refused(bundle, name, provider):
    with pytest.raises(PurifierError, match=provider):
        create_runtime(bundle, name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="PyTorch sees a CUDA GPU here")
def test_torch_on_cuda_without_a_gpu_is_refused(bundle):
    with pytest.raises(PurifierError, match="needs a CUDA GPU"):
        create_runtime(bundle, "torch-cuda")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
@pytest.mark.parametrize("name", ["tensorrt-fp16", "tensorrt-int8"])
def test_tensorrt_without_tensorrt_is_refused(bundle, name):
    with pytest.raises(PurifierError, match="TensorRT is not installed"):
        create_runtime(bundle, name)


def test_every_runtime_name_is_documented():
    from cli.main import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    help_text = "".join(serve.format_help().split())  # argparse wraps lines, also at hyphens
    for name in RUNTIMES:
        assert name in help_text, f"'purifier serve --help' does not mention runtime {name}"


@pytest.mark.parametrize("spec, message", [("torch:1", "runs on the CPU and takes no device index"),
                                           ("onnxruntime-cuda:first", "must be a GPU number"),
                                           ("torch-cuda:", "must be a GPU number")])
def test_device_indices_are_checked(bundle, spec, message):
    with pytest.raises(PurifierError, match=message):
        create_runtime(bundle, spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="PyTorch sees a CUDA GPU here")
def test_a_gpu_engine_with_an_index_is_still_refused_without_a_gpu(bundle):
    with pytest.raises(PurifierError, match="needs a CUDA GPU"):
        create_runtime(bundle, "torch-cuda:1")


def test_bf16_runtime_agrees_with_float32_on_real_images(bundle, fmnist_test):
    """bfloat16 keeps 8 bits of mantissa: logits move a little, and predictions stay those of float32."""
    image = fmnist_test.head(512).tensors()[0].numpy()
    mask, noise = (array.numpy() for array in bundle.pipeline().sample(len(image), image.shape[1:]))
    reference, _ = create_runtime(bundle, "torch").pipeline(image, mask, noise)
    logits, purified = create_runtime(bundle, "torch-bf16").pipeline(image, mask, noise)
    assert logits.dtype == purified.dtype == "float32"
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= 0.98, f"bf16 predictions agree with float32 on only {agreement:.1%} of 512 test images"
