"""Static INT8 quantization of a bundle's ONNX graphs with ONNX Runtime, calibrated on training images.

    purifier quantize BUNDLE [--calibration-images 512] [--robust-images 500 --steps 100 --eot 20]

Each float graph of ``purifier export`` becomes ``onnx/NAME.int8.onnx``: QDQ format, int8
per-channel weights, uint8 activations with MinMax ranges from the calibration images (training
images through the bundle's own random transform; the classifier is calibrated on those images
and on their purified versions, the two inputs it sees when serving). A purifier must not lose
robustness silently, so the same run measures, on the float and the INT8 pipeline side by side:
clean accuracy on the test set (one transform draw per image, seed 0) with the agreement of
their predictions, and robust accuracy on L∞ PGD examples crafted against the float PyTorch
pipeline (the protocol's attack, transferred). The figures go into bundle.json
(``exports.onnx_int8``); ``--runtime onnxruntime-int8`` serves the INT8 graphs.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

from evaluation.attacks import pgd
from purifier.bundle import Bundle, load_bundle, update_manifest
from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_bytes
from purifier.progress import progress


class _Feeds(CalibrationDataReader):
    """Calibration batches for one graph, as ONNX Runtime's quantizer asks for them."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def calibration_feeds(bundle: Bundle, images: np.ndarray, batch: int = 64) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per graph, the input batches: transformed training images, and raw + purified ones for the classifier."""
    pipeline, rng = bundle.pipeline(seed=0), np.random.default_rng(0)
    feeds: dict[str, list] = {"pipeline": [], "purifier": [], "classifier": []}
    for start in range(0, len(images), batch):
        image = images[start:start + batch]
        mask, noise = bundle.transform.sample(len(image), bundle.input_shape, rng)
        with torch.no_grad():
            purified = pipeline.purify_with(*(torch.from_numpy(a) for a in (image, mask, noise))).numpy()
        for graph in ("pipeline", "purifier"):
            feeds[graph].append({"image": image, "mask": mask, "noise": noise})
        feeds["classifier"] += [{"image": image}, {"image": purified}]
    return feeds


def _predictions(runtimes: dict, bundle: Bundle, images: np.ndarray) -> dict[str, np.ndarray]:
    """Predictions of each runtime's defended model, with identical transform draws for all."""
    rng = np.random.default_rng(0)
    predictions = {name: [] for name in runtimes}
    for start in range(0, len(images), 500):
        image = images[start:start + 500]
        mask, noise = bundle.transform.sample(len(image), bundle.input_shape, rng)
        for name, runtime in runtimes.items():
            predictions[name].append(runtime.pipeline(image, mask, noise)[0].argmax(1))
    return {name: np.concatenate(values) for name, values in predictions.items()}


def adversarial_batches(pipeline, cache: Path, images: np.ndarray, labels: np.ndarray, steps: int, eot: int) -> np.ndarray:
    """L∞ 0.1 PGD examples against the float PyTorch pipeline (EOT over ``eot`` draws), in batches of 100.

    Each batch is saved in ``cache`` as soon as it is crafted, so a killed run resumes at the next
    batch; the directory is removed once all are done."""
    batches = []
    for start in progress(range(0, len(labels), 100), -(-len(labels) // 100), "INT8 check: L∞ 0.1 PGD batches"):
        saved = cache / f"{start:06d}.npy"
        if not saved.exists():
            x, y = (torch.from_numpy(a[start:start + 100]) for a in (images, labels))
            crafted = pgd(pipeline, x, y, 0.1, steps=steps, eot=eot, generator=torch.Generator().manual_seed(start)).numpy()
            buffer = io.BytesIO()
            np.save(buffer, crafted)
            atomic_write_bytes(saved, buffer.getvalue())
        batches.append(np.load(saved))
    shutil.rmtree(cache)
    return np.concatenate(batches)


def _transferred_robustness(bundle: Bundle, runtimes: dict, images: np.ndarray, labels: np.ndarray, steps: int, eot: int) -> dict:
    """Float and INT8 accuracy on L∞ 0.1 PGD examples crafted against the float PyTorch pipeline."""
    pipeline = bundle.pipeline(seed=0)
    eot = eot if pipeline.is_stochastic else 1
    cache = bundle.path / "onnx" / f".int8-attack-{len(labels)}-images-{steps}-steps-{eot}-eot"
    adversarial = adversarial_batches(pipeline, cache, images, labels, steps, eot)
    robust = {name: round(float((p == labels).mean()), 4) for name, p in _predictions(runtimes, bundle, adversarial).items()}
    print(f"INT8 vs float: transferred L∞ 0.1 {robust['int8']:.2%} vs {robust['float']:.2%} on {len(labels)} images", file=sys.stderr)
    return {"robust_accuracy_transferred_linf_0.1": robust,
            "robust_protocol": {"images": len(labels), "steps": steps, "eot": eot, "crafted_on": "float PyTorch pipeline"}}


def quantize_bundle(bundle_path: Path, calibration_images: int = 512, robust_images: int = 500, steps: int = 100, eot: int = 20) -> Bundle:
    """Write the INT8 graphs into BUNDLE/onnx/ and record float-vs-INT8 clean and transferred robust accuracy."""
    from serving.runtime import OnnxInt8Runtime, OnnxRuntime

    bundle = load_bundle(bundle_path)
    graphs = (bundle.manifest.get("exports") or {}).get("onnx", {}).get("graphs")
    if not graphs:
        raise PurifierError(f"bundle {bundle.path} has no ONNX export; run 'purifier export {bundle.path}' first")
    train = bundle.data("train").head(calibration_images)
    train_images = train.tensors()[0].numpy()
    feeds = calibration_feeds(bundle, train_images)
    records = {}
    with tempfile.TemporaryDirectory(dir=bundle.path / "onnx") as scratch:
        for stage, record in graphs.items():
            if stage == "sealed":  # its random operators have no calibration data; the INT8 runtime feeds its own draws
                continue
            prepared, quantized = Path(scratch) / f"{stage}.pre.onnx", Path(scratch) / f"{stage}.int8.onnx"
            quant_pre_process(str(bundle.file(record["file"])), str(prepared))
            quantize_static(str(prepared), str(quantized), _Feeds(feeds[stage]), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            records[stage] = {"file": f"onnx/{stage}.int8.onnx", "inputs": record["inputs"], "outputs": record["outputs"]}
        for stage in records:
            shutil.move(str(Path(scratch) / f"{stage}.int8.onnx"), bundle.path / records[stage]["file"])
    staged = update_manifest(bundle, lambda manifest: manifest["exports"].update(onnx_int8={"graphs": records}),
                             [record["file"] for record in records.values()])

    test = bundle.data("test")
    test_images, test_labels = (t.numpy() for t in test.tensors())
    runtimes = {"float": OnnxRuntime(staged), "int8": OnnxInt8Runtime(staged)}
    clean = _predictions(runtimes, staged, test_images)
    figures = {
        "calibration_images": len(train_images),
        "clean_accuracy": {name: round(float((p == test_labels).mean()), 4) for name, p in clean.items()},
        "clean_agreement": round(float((clean["float"] == clean["int8"]).mean()), 4),
    }
    print(f"INT8 vs float: clean {figures['clean_accuracy']['int8']:.2%} vs {figures['clean_accuracy']['float']:.2%} "
          f"(agreement {figures['clean_agreement']:.2%})", file=sys.stderr)
    if robust_images > 0:
        figures.update(_transferred_robustness(staged, runtimes, test_images[:robust_images], test_labels[:robust_images], steps, eot))
    return update_manifest(staged, lambda manifest: manifest["exports"]["onnx_int8"].update(figures))
