"""Asking for an engine that cannot run gives a clear error, never a silent fallback."""

from __future__ import annotations

import importlib.util

import onnxruntime
import pytest
import torch

from purifier.assets import CHECKOUT_BUNDLES
from purifier.bundle import DEFAULT_BUNDLE, load_bundle
from purifier.errors import PurifierError
from serving.runtime import RUNTIMES, create_runtime


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


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
