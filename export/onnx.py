"""ONNX export of a bundle: classifier, purifier and fused pipeline, each with a dynamic batch axis.

Graphs (all float32, NCHW, [0, 1]):

    classifier.onnx  image -> logits
    purifier.onnx    image, mask, noise -> purified          (g(t(x)), RT applied in-graph)
    pipeline.onnx    image, mask, noise -> logits, purified  (f(g(t(x))))
    sealed.onnx      image -> logits, purified               (the transform drawn inside the graph)

In the first three the random transform's randomness enters as the ``mask`` and ``noise``
inputs, sampled by the runtime with ``RandomTransform.sample``, so PyTorch and ONNX Runtime can
be compared exactly. Served anywhere else (Triton, KServe, plain ONNX Runtime) they would let
the *client* choose the randomness: an empty mask removes the defence. ``sealed.onnx`` takes the
image alone and draws mask and noise with ONNX's RandomUniformLike / RandomNormalLike, fresh on
every call: the graph to deploy outside this server. It cannot match PyTorch draw for draw; its
check is that it runs at both batch sizes and that two calls draw differently (the tests compare
its statistics with PyTorch's on real images).
For a bundle whose classifier was imported (``purifier import-classifier``), classifier.onnx is the
user's graph behind the normalisation, and pipeline.onnx and sealed.onnx join the purifier side
exported from PyTorch to it (``export/compose.py``): the server runs the user's own graph.
The graphs keep their weights in one ``weights-HASH.bin`` beside them, each tensor once
(``export/shared_weights.py``). After writing, every graph is run in ONNX Runtime on fresh random
inputs at two batch sizes and compared with PyTorch; a difference above the tolerance raises
ExportParityError.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from export.compose import behind_purifier
from export.shared_weights import share_weights
from purifier.bundle import Bundle, load_bundle, update_manifest
from purifier.errors import PurifierError
from purifier.models.imported import ImportedClassifier
from purifier.pipeline import Pipeline

OPSET = 18
EXPORT_DIR = "onnx"
GRAPHS = {
    "classifier": (("image",), ("logits",)),
    "purifier": (("image", "mask", "noise"), ("purified",)),
    "pipeline": (("image", "mask", "noise"), ("logits", "purified")),
    "sealed": (("image",), ("logits", "purified")),
}
# The purifier sides of pipeline.onnx and sealed.onnx, exported alone for a bundle whose classifier is an imported graph.
_SIDES = {"pipeline_side": (("image", "mask", "noise"), ("purified",)), "sealed_side": (("image",), ("purified",))}


class ExportParityError(PurifierError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


class _Graph(nn.Module):
    """Adapts one stage of a Pipeline to the graph signatures above."""

    def __init__(self, pipeline: Pipeline, stage: str) -> None:
        super().__init__()
        self.pipeline, self.stage = pipeline, stage

    def forward(self, image, mask=None, noise=None):
        if self.stage == "classifier":
            return self.pipeline.classifier(image)
        if self.stage in ("purifier", "pipeline_side"):
            return self.pipeline.purify_with(image, mask, noise)
        if self.stage == "sealed_side":
            return self.pipeline.purify_with(image, *self.pipeline.transform.sample_like(image))
        if self.stage == "sealed":
            return self.pipeline.forward_with(image, *self.pipeline.transform.sample_like(image))
        return self.pipeline.forward_with(image, mask, noise)


def _inputs(pipeline: Pipeline, shape: tuple[int, int, int], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = rng.random((batch, *shape), dtype=np.float32)
    mask, noise = pipeline.transform.sample(batch, shape, rng)
    return {"image": image, "mask": mask, "noise": noise}


def _write_graph(pipeline: Pipeline, stage: str, shape: tuple[int, int, int], path: Path) -> None:
    """One graph of GRAPHS into ``path``; for an imported classifier, its own graph behind the purifier side from PyTorch."""
    classifier = pipeline.classifier
    if not isinstance(classifier, ImportedClassifier) or stage == "purifier":
        _export_graph(pipeline, stage, shape, path)
    elif stage == "classifier":
        onnx.save(classifier.onnx_model(), str(path))
    else:
        side = path.with_name(f"{stage}_side.onnx")
        _export_graph(pipeline, f"{stage}_side", shape, side)
        onnx.save(behind_purifier(onnx.load(str(side)), classifier), str(path))
        side.unlink()


def _export_graph(pipeline: Pipeline, stage: str, shape: tuple[int, int, int], path: Path) -> None:
    input_names, output_names = {**GRAPHS, **_SIDES}[stage]
    example = _inputs(pipeline, shape, 2, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[name]) for name in input_names)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Graph(pipeline, stage).eval(), args, str(path), input_names=list(input_names), output_names=list(output_names),
            dynamic_shapes={name: {0: batch} for name in input_names}, opset_version=OPSET, dynamo=True,
            external_data=False, verbose=False,
        )


def sealed_check(pipeline: Pipeline, path: Path, shape: tuple[int, int, int], seed: int) -> None:
    """The sealed graph runs at batch sizes 1 and 7, and a stochastic one draws afresh on every call."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    for batch in (1, 7):
        image = rng.random((batch, *shape), dtype=np.float32)
        first, second = (session.run(["purified"], {"image": image})[0] for _ in range(2))
        if first.shape != image.shape or (pipeline.is_stochastic and np.array_equal(first, second)):
            raise ExportParityError(f"sealed.onnx gave {first.shape} for {image.shape}, or the same draw twice; nothing was written")


def parity(pipeline: Pipeline, stage: str, path: Path, shape: tuple[int, int, int], seed: int) -> float:
    """Max |ONNX Runtime - PyTorch| over all outputs, at batch sizes 1 and 7, on fresh inputs."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_names, _ = GRAPHS[stage]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in (1, 7):
        feeds = {name: value for name, value in _inputs(pipeline, shape, batch, rng).items() if name in input_names}
        with torch.no_grad():
            reference = _Graph(pipeline, stage)(*(torch.from_numpy(feeds[name]) for name in input_names))
        reference = reference if isinstance(reference, tuple) else (reference,)
        for got, want in zip(session.run(None, feeds), reference):
            worst = max(worst, float(np.abs(got - want.numpy()).max()))
    return worst


def export_bundle(bundle_path: Path, tolerance: float = 1e-4, seed: int = 0) -> Bundle:
    """Export every graph of the bundle into BUNDLE/onnx/, check parity, record it in bundle.json."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    bundle = load_bundle(bundle_path)
    pipeline = bundle.pipeline(seed=seed)
    stages = [stage for stage in GRAPHS if stage not in ("purifier", "sealed") or bundle.has_purifier]
    target = bundle.path / EXPORT_DIR
    target.mkdir(exist_ok=True)
    records = {}
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        staged = {stage: Path(scratch) / f"{stage}.onnx" for stage in stages}
        for stage, path in staged.items():
            _write_graph(pipeline, stage, bundle.input_shape, path)
        # an imported classifier's classifier.onnx stays the user's graph, byte for byte
        imported = isinstance(pipeline.classifier, ImportedClassifier)
        weights = share_weights([path for stage, path in staged.items() if not (imported and stage == "classifier")])
        for stage, path in staged.items():
            if stage == "sealed":
                sealed_check(pipeline, path, bundle.input_shape, seed)
                records[stage] = {"file": f"{EXPORT_DIR}/{stage}.onnx", "inputs": ["image"], "outputs": ["logits", "purified"],
                                  "randomness": "drawn in the graph (RandomUniformLike, RandomNormalLike), fresh on every call"}
                continue
            difference = parity(pipeline, stage, path, bundle.input_shape, seed)
            print(f"{stage}.onnx: max abs difference vs PyTorch {difference:.2e} (tolerance {tolerance:.0e})", file=sys.stderr)
            if not difference <= tolerance:
                raise ExportParityError(
                    f"{stage}.onnx differs from PyTorch by {difference:.3g} > {tolerance:g}; the graph is wrong, nothing was written to {target}"
                )
            inputs, outputs = GRAPHS[stage]
            records[stage] = {"file": f"{EXPORT_DIR}/{stage}.onnx", "inputs": list(inputs), "outputs": list(outputs), "max_abs_diff": difference}
        weights.replace(target / weights.name)  # before the graphs that point at it; the old graphs point at the old file
        for path in staged.values():
            path.replace(target / path.name)
    exports = {"onnx": {
        "opset": OPSET, "graphs": records, "weights": f"{EXPORT_DIR}/{weights.name}", "parity_tolerance": tolerance, "parity_seed": seed,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
    }}
    old_weights = (bundle.manifest.get("exports") or {}).get("onnx", {}).get("weights")
    stale = old_weights if old_weights != exports["onnx"]["weights"] else None

    def record_export(manifest: dict) -> None:
        manifest["files"].pop(stale, None)
        manifest.update(exports=exports)  # a new float export replaces every record derived from the old one (INT8 graphs, engines)

    updated = update_manifest(bundle, record_export, [exports["onnx"]["weights"], *(record["file"] for record in records.values())])
    if stale:
        bundle.file(stale).unlink(missing_ok=True)
    print(f"exported {', '.join(stages)} to {target}")
    return updated
