"""What protecting an imported classifier costs per image at 32×32, 64×64 and 224×224 RGB, on this machine.

For each size, in one run: a stand-in for the user's classifier (ResNetSmall, widths 32,64,128, exported to ONNX
and brought in by ``purifier import-classifier``'s code path), the purifier ``sized_for`` gives that size (weights
untrained: cost does not depend on them), exported as ``purifier export`` does. Measured side by side:

- serving, ONNX Runtime: ms per image for the classifier alone and for the defended pipeline (RT1 mask → U-Net →
  classifier, one graph), at batch 1 and batch 32, and the pipeline's cost as a multiple of the classifier's;
- training, PyTorch: images/s of one AToP fine-tuning step (PGD-5 through the pipeline, then the purifier's update),
  fp32 and bf16 autocast.

    python benchmarks/imported.py [--sizes 32,64,224] [--seconds 3] [--out benchmarks/results/imported.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from evaluation.attacks import pgd
from export.onnx import export_bundle
from purifier.bundle import write_bundle
from purifier.importing import ImportOptions, import_onnx
from purifier.models import PURIFIERS, build
from purifier.models.resnet import ResNetSmall
from purifier.models.unet import sized_for
from purifier.pipeline import Pipeline
from purifier.transforms import RandomTransform, block_size_for
from serving.runtime import OnnxRuntime
from training.precision import autocast, prepare


def _rate(function, images_per_call: int, seconds: float) -> float:
    """Images per second of ``function`` over at least ``seconds`` (after one warm-up call)."""
    function()
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        function()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - began)


def _bundle(side: int, directory: Path) -> Path:
    """An imported stand-in classifier with a fresh purifier sized for ``side``, exported to ONNX."""
    shape = (3, side, side)
    user_model = ResNetSmall(in_channels=3, widths=(32, 64, 128), mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(user_model, torch.rand(1, *shape), str(directory / "user.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    imported = import_onnx(directory / "user.onnx", directory / "classifier", ImportOptions())
    transform = RandomTransform("mask", block_size_for(side, side))
    config = sized_for(shape)
    manifest = {**imported.manifest, "name": f"bench-{side}",
                "purifier": {"architecture": "unet", "config": config, "method": "atop", "random_transform": transform.to_dict()}}
    manifest.pop("files")
    write_bundle(directory / "bundle", manifest, {"classifier": imported.classifier(), "purifier": build(PURIFIERS, "unet", config)})
    export_bundle(directory / "bundle")
    return directory / "bundle"


def serving_ms(bundle_path: Path, batch: int, seconds: float) -> dict[str, float]:
    from purifier.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    runtime = OnnxRuntime(bundle)
    rng = np.random.default_rng(0)
    image = rng.random((batch, *bundle.input_shape), dtype=np.float32)
    mask, noise = bundle.transform.sample(batch, bundle.input_shape, rng)
    classifier = _rate(lambda: runtime.classifier(image), batch, seconds)
    pipeline = _rate(lambda: runtime.pipeline(image, mask, noise), batch, seconds)
    return {"classifier_ms": round(1000 / classifier, 3), "pipeline_ms": round(1000 / pipeline, 3), "pipeline_vs_classifier": round(classifier / pipeline, 2)}


def training_rate(bundle_path: Path, precision: str, seconds: float, batch: int = 16) -> float:
    """Images/s of an AToP fine-tuning step: PGD-5 against the whole pipeline, then one purifier update."""
    from purifier.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    classifier, purifier = bundle.classifier().requires_grad_(False), bundle.purifier()
    prepare(precision, classifier, purifier)
    pipeline = Pipeline(classifier, purifier, bundle.transform).eval()
    optimizer = torch.optim.Adam(purifier.parameters(), lr=1e-4)
    images, labels = torch.rand(batch, *bundle.input_shape), torch.randint(0, 10, (batch,))
    rng = np.random.default_rng(0)

    def step() -> None:
        with autocast(precision):
            adversarial = pgd(pipeline, images, labels, 0.1, steps=5, keep_best=False)
            mask, noise = (torch.from_numpy(a) for a in bundle.transform.sample(batch, bundle.input_shape, rng))
            purifier.train()
            loss = F.cross_entropy(classifier(bundle.transform.purify(purifier, adversarial, mask, noise)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        purifier.eval()

    return round(_rate(step, batch, seconds), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32,64,224", help="image sides to measure")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/imported.json"))
    args = parser.parse_args()
    report = {"classifier": "ResNetSmall 32,64,128 (3 channels), exported to ONNX opset 17 and imported", "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "sizes": {}}
    print(f"{'size':>8} {'U-Net widths':>28} {'batch':>5} {'classifier ms':>14} {'pipeline ms':>12} {'×':>6}   training img/s fp32 / bf16")
    for side in (int(part) for part in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as scratch:
            bundle = _bundle(side, Path(scratch))
            row = {"unet": sized_for((3, side, side)), "block_size": block_size_for(side, side),
                   "serving": {str(batch): serving_ms(bundle, batch, args.seconds) for batch in (1, 32)},
                   "training_images_per_s": {precision: training_rate(bundle, precision, args.seconds) for precision in ("fp32", "bf16")}}
        report["sizes"][f"{side}x{side}"] = row
        for batch, cost in row["serving"].items():
            print(f"{side:>4}x{side:<3} {str(row['unet']['widths']):>28} {batch:>5} {cost['classifier_ms']:>14.3f} {cost['pipeline_ms']:>12.3f} "
                  f"{cost['pipeline_vs_classifier']:>6.2f}   " + (" / ".join(f"{v:.1f}" for v in row["training_images_per_s"].values()) if batch == "1" else ""),
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
