"""Real RGB images and classifiers defined here, not by this project's trainer: what a user brings to import-classifier.

The images are the CIFAR-10 (32×32) and ImageNet (224×224) samples that ship inside the ``foolbox`` wheel
(installed without dependencies by ``scripts/bootstrap.sh test``): 20 each, named ``KIND_INDEX_LABEL.ext``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def foolbox_images(kind: str) -> list[tuple[Path, int]]:
    """(file, label) of the wheel's samples of ``kind`` ('cifar10' or 'imagenet'), without importing foolbox."""
    spec = importlib.util.find_spec("foolbox")
    assert spec is not None, "the foolbox wheel is missing: run scripts/bootstrap.sh test"
    folder = Path(spec.submodule_search_locations[0]) / "data"
    pattern = re.compile(rf"{kind}_(\d+)_(\d+)\.(png|jpg)$")
    found = sorted((path, int(match.group(2))) for path in folder.iterdir() if (match := pattern.match(path.name)))
    assert len(found) == 20, f"expected 20 {kind} samples in {folder}, found {len(found)}"
    return found


def image_folder(kind: str, root: Path, class_names) -> Path:
    """The samples as an ImageFolder tree ROOT/{train,test}/CLASS/FILE (the same images in both: a smoke-size set)."""
    for split in ("train", "test"):
        for path, label in foolbox_images(kind):
            target = root / split / class_names[label]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
    return root


class SmallRgbNet(nn.Module):
    """A user's classifier: conv-BN-ReLU stages, global pooling, a linear head; expects ImageNet-normalised input."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        layers, previous = [], 3
        for stage in range(3):
            layers += [nn.Conv2d(previous, width * 2**stage, 3, stride=1 if stage == 0 else 2, padding=1), nn.BatchNorm2d(width * 2**stage), nn.ReLU()]
            previous = width * 2**stage
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def small_rgb_net() -> SmallRgbNet:
    """The factory ``purifier import-classifier tests.rgb_models:small_rgb_net`` calls."""
    return SmallRgbNet()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fitted(model: nn.Module, images: np.ndarray, labels: np.ndarray, steps: int = 150) -> nn.Module:
    """``model`` fitted to the (normalised) images, so its predictions mean something: a user's trained classifier in miniature."""
    torch.manual_seed(0)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def export_onnx(model: nn.Module, shape: tuple[int, int, int], path: Path, opset: int = 17) -> Path:
    """The user's own export: the TorchScript exporter at an older opset, with a dynamic batch axis."""
    torch.onnx.export(model, torch.rand(1, *shape), str(path), input_names=["pixel_values"], output_names=["scores"],
                      dynamic_axes={"pixel_values": {0: "n"}, "scores": {0: "n"}}, opset_version=opset, dynamo=False)
    return path
