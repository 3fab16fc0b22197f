"""FP16 ONNX graphs of a bundle: the input of TensorRT 11's strongly typed FP16 engines (and of any FP16 runtime).

    purifier export BUNDLE --fp16

TensorRT 11 takes a graph's precision from the graph itself (its weak-typing flag ``BuilderFlag.FP16`` is gone), so
each float graph is converted offline by onnxconverter-common's float16 converter, inputs and outputs kept float32.
A graph output that other nodes also read is first routed through an Identity: otherwise the converter's output cast
feeds those nodes float32 beside float16 and the graph is invalid. Each converted graph is checked in ONNX Runtime on
the CPU against the float graph on the same inputs (random images, the bundle's random transform) before it is
written as ``onnx/NAME.fp16.onnx`` and recorded under ``exports.onnx_fp16`` with the differences measured.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import helper

from purifier.bundle import Bundle, load_bundle, update_manifest
from purifier.errors import PurifierError

STAGES = ("classifier", "purifier", "pipeline")  # sealed.onnx draws its randomness in-graph: served float, outside TensorRT
LOGIT_TOLERANCE = 0.05  # max |FP16 − float| logit difference accepted on the check's images
AGREEMENT_FLOOR = 0.98  # and the least fraction of images with the same predicted class
CHECK_IMAGES = 64


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with float32 weights and arithmetic in float16, its inputs and outputs still float32."""
    from onnxconverter_common import float16

    model = _outputs_routed_through_identity(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number … will be truncated": weights below float16's range
        return float16.convert_float_to_float16(model, keep_io_types=True)


def _outputs_routed_through_identity(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    consumed = {name for node in copy.graph.node for name in node.input}
    for output in copy.graph.output:
        if output.name not in consumed:
            continue
        inner = f"{output.name}/inner"
        for node in copy.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        copy.graph.node.append(helper.make_node("Identity", [inner], [output.name], name=f"{output.name}/output"))
    return copy


def _feeds(bundle: Bundle, inputs: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = rng.random((CHECK_IMAGES, *bundle.input_shape), dtype=np.float32)
    mask, noise = bundle.transform.sample(CHECK_IMAGES, bundle.input_shape, rng)
    return {name: value for name, value in {"image": image, "mask": mask, "noise": noise}.items() if name in inputs}


def parity(float_path: Path, converted: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest |FP16 − float| of every output, and (for logits) the fraction of images with the same class."""
    reference = onnxruntime.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    half = onnxruntime.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in reference.get_outputs()]
    figures = {}
    for name, want, got in zip(names, reference.run(None, feeds), half.run(None, feeds)):
        figures[f"max_abs_diff_{name}"] = float(np.abs(want - got).max())
        if name == "logits":
            figures["argmax_agreement"] = float((want.argmax(1) == got.argmax(1)).mean())
    return figures


def export_float16(bundle_path: Path, seed: int = 0) -> Bundle:
    """Write ``onnx/NAME.fp16.onnx`` for the bundle's float graphs, each checked against float; nothing is written on a failure."""
    bundle = load_bundle(bundle_path)
    graphs = (bundle.manifest.get("exports") or {}).get("onnx", {}).get("graphs")
    if not graphs:
        raise PurifierError(f"bundle {bundle.path} has no ONNX export; run 'purifier export {bundle.path}' first")
    rng = np.random.default_rng(seed)
    records = {}
    with tempfile.TemporaryDirectory(dir=bundle.path / "onnx") as scratch:
        for stage in (stage for stage in STAGES if stage in graphs):
            record = graphs[stage]
            converted = to_float16(onnx.load(str(bundle.file(record["file"]))))
            figures = parity(bundle.file(record["file"]), converted, _feeds(bundle, record["inputs"], rng))
            if figures.get("max_abs_diff_logits", 0.0) > LOGIT_TOLERANCE or figures.get("argmax_agreement", 1.0) < AGREEMENT_FLOOR:
                raise PurifierError(f"the FP16 {stage} graph differs from float beyond the tolerance ({figures}); nothing was written")
            onnx.save(converted, str(Path(scratch) / f"{stage}.fp16.onnx"))
            records[stage] = {"file": f"onnx/{stage}.fp16.onnx", "inputs": record["inputs"], "outputs": record["outputs"], **figures}
            print(f"{stage}.fp16.onnx: " + ", ".join(f"{key} {value:.3g}" for key, value in figures.items()))
        for stage, record in records.items():
            (Path(scratch) / f"{stage}.fp16.onnx").replace(bundle.path / record["file"])
    protocol = {"images": CHECK_IMAGES, "inputs": "uniform random images and the bundle's random transform", "seed": seed,
                "logit_tolerance": LOGIT_TOLERANCE, "agreement_floor": AGREEMENT_FLOOR, "converter": "onnxconverter-common float16, keep_io_types"}
    return update_manifest(bundle, lambda manifest: manifest["exports"].update(onnx_fp16={"graphs": records, "check": protocol}),
                           [record["file"] for record in records.values()])
