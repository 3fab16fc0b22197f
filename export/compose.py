"""ONNX graphs of a bundle whose classifier was imported: our purifier's graph feeding the user's graph, unchanged.

``purifier export`` writes the purifier side (image[, mask, noise] -> purified) from PyTorch as for every
bundle, then joins it to the imported classifier's serving graph (normalisation nodes in front of the
user's own nodes) with ``onnx.compose.merge_models``. The older of the two opsets is raised to the newer
by ONNX's version converter, so a graph exported at opset 13–17 joins our opset-18 purifier.
"""

from __future__ import annotations

import onnx
from onnx import helper

from purifier.models.imported import ImportedClassifier, at_opset, default_opset

_HANDOVER = "handover/purified"  # the purifier side's output as the classifier's input


def behind_purifier(purifier_side: onnx.ModelProto, classifier: ImportedClassifier) -> onnx.ModelProto:
    """The purifier side's inputs -> (logits, purified): its ``purified`` output also feeds the imported classifier."""
    front = onnx.ModelProto()
    front.CopyFrom(purifier_side)
    front.graph.node.append(helper.make_node("Identity", ["purified"], [_HANDOVER], name="handover"))
    front.graph.output.append(helper.make_tensor_value_info(_HANDOVER, onnx.TensorProto.FLOAT, None))
    back = classifier.onnx_model(input_name="classifier/image", output_name="logits")
    opset = max(default_opset(front), default_opset(back))
    front, back = at_opset(front, opset), at_opset(back, opset)
    front.ir_version = back.ir_version = max(front.ir_version, back.ir_version)
    merged = onnx.compose.merge_models(front, back, io_map=[(_HANDOVER, "classifier/image")])
    opsets = {entry.domain or "": entry.version for entry in merged.opset_import}  # merge_models lists a shared domain twice
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    outputs = {output.name: output for output in merged.graph.output}
    del merged.graph.output[:]
    merged.graph.output.extend([outputs["logits"], outputs["purified"]])
    onnx.checker.check_model(merged)
    return merged
