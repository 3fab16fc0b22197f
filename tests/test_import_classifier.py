"""A classifier the project did not train — defined, fitted and exported to ONNX here — imported, protected and served.

Real RGB images: the CIFAR-10 (32×32) and ImageNet (224×224) samples inside the foolbox wheel. The chain is the
README's: import-classifier, train atop / jatp on the user's folder, export, purify, evaluate, serve (real
TorchServe), each at smoke size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from cli.main import main
from purifier.bundle import load_bundle
from purifier.data import load_dataset
from purifier.models.unet import UNet, sized_for
from purifier.transforms import block_size_for
from serving.server_state import read_keys
from serving.service import PurificationService
from tests.rgb_models import (
    CIFAR10_CLASSES, IMAGENET_MEAN, IMAGENET_STD, SmallRgbNet, export_onnx, fitted, image_folder, small_rgb_net,
)
from tests.serving_helpers import PORT, needs_java, serve

NORMALISATION = ["--mean", ",".join(map(str, IMAGENET_MEAN)), "--std", ",".join(map(str, IMAGENET_STD))]
SMOKE = ["--batch-size", "10"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The user's side: an image folder of the 20 CIFAR-10 samples, a classifier fitted to them, exported to ONNX at opset 17."""
    root = tmp_path_factory.mktemp("user")
    folder = image_folder("cifar10", root / "data", CIFAR10_CLASSES)
    data = load_dataset("folder", "train", folder, (3, 32, 32)).relabelled(CIFAR10_CLASSES)
    model = fitted(small_rgb_net(), data.images, data.labels)
    save_file(model.state_dict(), str(root / "weights.safetensors"))
    return {"root": root, "data": folder, "onnx": export_onnx(model, (3, 32, 32), root / "classifier.onnx"), "model": model,
            "weights": root / "weights.safetensors"}


@pytest.fixture(scope="module")
def imported(cifar):
    out = cifar["root"] / "bundles" / "imported"
    main(["import-classifier", str(cifar["onnx"]), "--out", str(out), "--class-names", ",".join(CIFAR10_CLASSES), *NORMALISATION,
          "--data-dir", str(cifar["data"])])
    return load_bundle(out)


def test_an_onnx_classifier_becomes_a_bundle_that_keeps_its_graph(imported, cifar):
    manifest = imported.manifest
    assert imported.input_shape == (3, 32, 32) and imported.class_names == list(CIFAR10_CLASSES)
    assert imported.file("classifier.onnx").read_bytes() == cifar["onnx"].read_bytes()
    conversion = manifest["classifier"]["imported"]["conversion"]
    assert conversion["argmax_agreement_vs_onnxruntime"] == 1.0 and conversion["max_abs_logit_diff_vs_onnxruntime"] < 1e-4
    # the user's model fits its 20 images; the recorded accuracy is ONNX Runtime's on the folder's test split
    assert manifest["metrics"]["clean_accuracy_classifier"]["value"] >= 0.9
    data = imported.data("test")
    with torch.no_grad():
        ours = imported.classifier()(data.tensors()[0]).argmax(1)
        theirs = cifar["model"]((data.tensors()[0] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).argmax(1)
    assert torch.equal(ours, theirs)


@needs_java
def test_purifiers_trained_for_it_export_serve_purify_and_evaluate(imported, cifar, tmp_path):
    atop, jatp = tmp_path / "atop", tmp_path / "jatp"
    main(["train", "atop", "--classifier", str(imported.path), "--transform", "mask", "--pretrain-epochs", "1", "--epochs", "1", *SMOKE, "--out", str(atop)])
    main(["train", "jatp", "--classifier", str(imported.path), "--epochs", "1", "--attack-steps", "2", *SMOKE, "--out", str(jatp)])
    purifier = load_bundle(atop).manifest["purifier"]
    assert purifier["config"] == sized_for((3, 32, 32)) and purifier["random_transform"]["block_size"] == block_size_for(32, 32)
    for bundle in (atop, jatp):
        main(["export", str(bundle)])
        graph = onnx.load(str(bundle / "onnx" / "pipeline.onnx"))
        user_nodes = {node.op_type for node in onnx.load(str(cifar["onnx"])).graph.node}
        assert user_nodes <= {node.op_type for node in graph.graph.node if node.name.startswith("classifier/")}
        assert [output.name for output in graph.graph.output] == ["logits", "purified"]

    main(["quantize", str(atop), "--calibration-images", "20", "--robust-images", "10", "--steps", "2", "--eot", "1"])  # INT8, joined graphs too
    assert "onnx_int8" in load_bundle(atop).manifest["exports"]

    main(["purify", str(cifar["data"] / "test"), str(tmp_path / "purified"), "--bundle", str(atop)])
    lines = (tmp_path / "purified" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(line)["label"] in CIFAR10_CLASSES for line in lines)

    main(["evaluate", str(jatp), "--out", str(tmp_path / "report"), "--screen", "--images", "10", "--clean-images", "20", "--corruption-images", "10"])
    conversion = json.loads((tmp_path / "report" / "report.json").read_text())["conversion"]
    assert conversion["clean"]["argmax_agreement"] == 1.0 and conversion["adversarial"]["argmax_agreement"] == 1.0

    state = tmp_path / "server"
    started = serve([str(atop), "--seed", "0"], state)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        headers = {"Authorization": f"Bearer {read_keys(state / 'serve').inference}"}
        image = next((cifar["data"] / "test" / "ship").iterdir())
        answer = requests.post(f"http://127.0.0.1:{PORT}/predictions/atop", data=image.read_bytes(), headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        from purifier.images import decode_image

        (expected,) = PurificationService.from_bundle(atop, seed=0).run(decode_image(image.read_bytes(), (3, 32, 32))[None]).predictions
        assert answer.json() == expected.to_dict()
    finally:
        serve(["--stop"], state)


def test_a_pytorch_classifier_needs_trust_code_and_matches_its_original(cifar, tmp_path, capsys):
    command = ["import-classifier", "tests.rgb_models:small_rgb_net", "--weights", str(cifar["weights"]), "--input-size", "32",
               "--channels", "3", *NORMALISATION, "--out", str(tmp_path / "b")]
    with pytest.raises(SystemExit):
        main(command)
    assert "--trust-code" in capsys.readouterr().err and not (tmp_path / "b").exists()
    main([*command, "--trust-code"])
    conversion = load_bundle(tmp_path / "b").manifest["classifier"]["imported"]["conversion"]
    assert conversion["argmax_agreement_vs_pytorch_original"] == 1.0 and conversion["max_abs_logit_diff_vs_pytorch_original"] < 1e-4


def test_an_imagenet_sized_classifier_gets_a_deeper_purifier_that_exports(tmp_path):
    """224×224 RGB: six U-Net levels and 32-pixel mask blocks by default; purifier pre-training and export run."""
    from tests.rgb_models import foolbox_images

    folder = image_folder("imagenet", tmp_path / "data", [str(index) for index in range(1000)])
    onnx_file = export_onnx(SmallRgbNet(num_classes=1000, width=8).eval(), (3, 224, 224), tmp_path / "net.onnx", opset=18)
    main(["import-classifier", str(onnx_file), "--out", str(tmp_path / "clf"), "--data-dir", str(folder), *NORMALISATION])
    assert len(foolbox_images("imagenet")) == 20
    main(["train", "purifier", "--classifier", str(tmp_path / "clf"), "--transform", "mask", "--epochs", "1", "--limit", "4", "--batch-size", "4",
          "--out", str(tmp_path / "purifier")])
    manifest = load_bundle(tmp_path / "purifier").manifest
    assert len(manifest["purifier"]["config"]["widths"]) == 6 and manifest["purifier"]["random_transform"]["block_size"] == 32
    main(["export", str(tmp_path / "purifier")])


def test_a_grey_classifier_imports_and_predicts_as_before(tmp_path, fmnist_test):
    """The committed Fashion-MNIST classifier's own ONNX export (dynamo, opset 18, normalisation inside), imported as a user's."""
    standard = load_bundle(Path(__file__).resolve().parent.parent / "bundles" / "fmnist-standard")
    main(["import-classifier", str(standard.file("onnx/classifier.onnx")), "--class-names", ",".join(standard.class_names), "--out", str(tmp_path / "b")])
    imported = load_bundle(tmp_path / "b")
    assert imported.input_shape == (1, 28, 28) and imported.class_names == standard.class_names
    images = torch.from_numpy(fmnist_test.images[:200]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.equal(imported.classifier()(images).argmax(1), standard.classifier()(images).argmax(1))


def _graph(nodes, output_shape, input_shape=("n", 3, 8, 8), opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


_POOLED = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
BAD_MODELS = {
    "not ONNX": (b"\x08\x07not a graph", [], "not a valid ONNX model"),
    # IR 14, written by onnx 1.23's helper by default, is newer than onnxruntime 1.31 reads
    "IR too new": (helper.make_model(_graph(_POOLED, ["n", 3]).graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=14), [],
                   "cannot load the graph"),
    "NaN outputs": (_graph([helper.make_node("Neg", ["x"], ["m"]), helper.make_node("Sqrt", ["m"], ["s"]),
                            helper.make_node("GlobalAveragePool", ["s"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], ["n", 3]),
                    [], "NaN"),
    "image out": (_graph([helper.make_node("Identity", ["x"], ["y"])], ["n", 3, 8, 8]), [], "one logit per class"),
    "size mismatch": (_graph(_POOLED, ["n", 3]), ["--input-size", "16"], "takes height 8 but the options say 16"),
    "fixed batch": (_graph([_POOLED[0], helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [2], [1, 3])),
                            helper.make_node("Reshape", ["p", "shape"], ["y"])], [1, 3], input_shape=(1, 3, 8, 8)), [], "dynamic batch axis"),
    "class count": (_graph(_POOLED, ["n", 3]), ["--class-names", "a,b"], "2 class names for a classifier with 3 outputs"),
    "unconvertible": (_graph([*_POOLED[:1], helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Hardmax", ["f"], ["y"])], ["n", 3]),
                      [], "cannot convert operator(s) Hardmax"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_models_are_refused_in_one_line_before_anything_is_written(case, tmp_path, capsys):
    model, options, message = BAD_MODELS[case]
    path = tmp_path / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    with pytest.raises(SystemExit) as exit_info:
        main(["import-classifier", str(path), "--out", str(tmp_path / "b"), *options])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 30, 45), (3, 64, 64), (3, 97, 224)])
def test_unets_sized_for_any_image_keep_its_shape(shape):
    config = sized_for(shape)
    net = UNet(**config).eval()
    image = torch.rand(2, *shape)
    assert net(image, torch.ones(2, 1, *shape[1:])).shape == image.shape
    assert config["in_channels"] == shape[0] and 3 <= len(config["widths"]) <= 6


def test_default_sizes_keep_fashion_mnist_as_it_was_and_grow_with_the_image():
    assert sized_for((1, 28, 28)) == {"in_channels": 1, "widths": [16, 32, 64]} and block_size_for(28, 28) == 4
    assert [len(sized_for((3, side, side))["widths"]) for side in (32, 64, 224)] == [3, 4, 6]
    assert [block_size_for(side, side) for side in (32, 64, 224)] == [4, 8, 32]


def test_folder_labels_follow_the_models_class_order(cifar):
    data = load_dataset("folder", "test", cifar["data"], (3, 32, 32))
    relabelled = data.relabelled(CIFAR10_CLASSES)
    assert [CIFAR10_CLASSES[label] for label in relabelled.labels] == [data.class_names[label] for label in data.labels]
    assert np.array_equal(relabelled.images, data.images)
