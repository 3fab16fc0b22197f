"""A classifier the user brought as an ONNX graph: served as that graph, attacked and trained against as its PyTorch twin.

The bundle keeps the user's graph unchanged (``classifier.onnx`` inside the bundle). Two views of it:

- ``serving_graph``: the graph wrapped for ONNX Runtime, image in [0, 1] -> logits, with the
  normalisation x̂ = (x − mean) / std as two nodes in front of the user's own nodes (renamed with a
  prefix, otherwise untouched). ``purifier export`` serves this, composed behind the purifier.
- ``ImportedClassifier``: the same graph converted to a differentiable PyTorch module by onnx2torch,
  so attacks and purifier training see gradients; ``purifier import-classifier`` checks the two agree.

Like every classifier (timm-style interface) it takes images in [0, 1] with normalisation inside.
An opaque graph names no feature layer, so ``forward_features`` returns the logits as a (N, K, 1, 1)
map and JATP's feature-similarity loss compares logits.

onnx2torch declares torchvision as a dependency for two detection operators (NonMaxSuppression,
RoiAlign) that no classifier uses; it is installed without dependencies, and while it is imported a
stand-in for ``torchvision.ops`` is in place, removed right after (those two operators then refuse).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from purifier.errors import BundleError, PurifierError, first_line

CONVERTER = "onnx2torch"
INSTALL_CONVERTER = "pip install --no-deps onnx2torch==1.5.15"
CONVERTER_OPSET = 17  # the newest opset whose every operator form onnx2torch 1.5 converts


class ConversionError(PurifierError):
    """A graph that cannot become a PyTorch module (an operator without converter, a failing conversion)."""


def _onnx2torch():
    """The onnx2torch package, imported with a stand-in for the torchvision it needs only for detection operators."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    stand_ins = {}
    try:
        import torchvision  # noqa: F401  (a working torchvision serves the detection operators itself)
    except Exception:  # absent, or a build that does not match this torch ('operator torchvision::nms does not exist')
        def detection_only(*args, **kwargs):
            raise ConversionError("this graph uses a detection operator (NonMaxSuppression or RoiAlign) that needs torchvision; "
                                  "import a classifier graph without it")
        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.box_convert = ops.roi_align = detection_only
        stand_ins = {"torchvision": types.ModuleType("torchvision"), "torchvision.ops": ops}
        stand_ins["torchvision"].ops = ops
        for name in stand_ins:
            sys.modules.pop(name, None)
        sys.modules.update(stand_ins)
    try:
        import onnx2torch
    except ImportError:
        raise ConversionError(f"importing an ONNX classifier needs onnx2torch; {INSTALL_CONVERTER}") from None
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return onnx2torch


def graph_input(model):
    """The graph's one real input (initializers listed as inputs by old exporters are skipped)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ConversionError(f"the graph takes {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); a classifier takes one image batch")
    if len(model.graph.output) < 1:
        raise ConversionError("the graph has no output; a classifier returns logits")
    return inputs[0]


def unconvertible_operators(model) -> list[str]:
    """'Op (domain, opset N)' for every operator of the graph that onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    missing = set()
    for node in model.graph.node:
        domain = node.domain or ""
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain or "")
        except NotImplementedError:
            missing.add(f"{node.op_type} ({domain or 'ai.onnx'}, opset {opsets.get(domain, 1)})")
    return sorted(missing)


def convert(model) -> nn.Module:
    """The ONNX graph as a PyTorch module (onnx2torch), in eval mode; ConversionError names what cannot convert.

    For this view only, the graph is first simplified: lowered to opset 17 by ONNX's version converter when newer
    (onnx2torch 1.5 lacks some operators' opset-18 forms, such as ReduceMean with axes as an input, what torch's
    exporter writes), then constant-folded by onnxscript's optimizer (onnx2torch needs weights as initializers,
    not as Identity or Constant nodes, which torch's TorchScript exporter writes for shared constants)."""
    onnx2torch = _onnx2torch()
    model = _folded(_lowered(model, CONVERTER_OPSET))
    missing = unconvertible_operators(model)
    if missing:
        raise ConversionError(f"{CONVERTER} {version()} cannot convert operator(s) {', '.join(missing)} to PyTorch; "
                              "re-export the classifier without them (a plain opset-17/18 export of a standard CNN converts)")
    try:
        return onnx2torch.convert(model).eval()
    except ConversionError:
        raise
    except Exception as error:  # the converter's own failures come as any exception type
        raise ConversionError(f"{CONVERTER} failed on this graph ({first_line(error)}); re-export it with a standard opset (17 or 18)") from None


def default_opset(model) -> int:
    """The version of the default (ai.onnx) operator set a graph imports."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def at_opset(model, opset: int):
    """``model`` with its default operator set at ``opset``, by ONNX's version converter (raising or lowering)."""
    from onnx import version_converter

    return model if default_opset(model) == opset else version_converter.convert_version(model, opset)


def _lowered(model, opset: int):
    """``model`` at ``opset`` when it is newer and ONNX's version converter can lower it; else unchanged."""
    if default_opset(model) <= opset:
        return model
    try:
        return at_opset(model, opset)
    except Exception:  # the converter refuses some operators; the graph is then converted as it is
        return model


def _folded(model):
    """``model`` with constants folded and identities removed by onnxscript's optimizer; unchanged if it fails."""
    import onnxscript.optimizer

    try:
        return onnxscript.optimizer.optimize(model)
    except Exception:  # the optimizer's failures come as any exception type; the graph is then converted as it is
        return model


def version() -> str:
    from importlib.metadata import version as installed

    return installed(CONVERTER)


def serving_graph(model, mean: Sequence[float], std: Sequence[float], input_name: str = "image", output_name: str = "logits"):
    """The user's graph behind the normalisation, as an ONNX model: ``input_name`` (N, C, H, W) in [0, 1] -> ``output_name``.

    Every name of the user's graph gets the prefix ``classifier/``; its nodes, weights and opset are unchanged."""
    import onnx
    from onnx import helper, numpy_helper

    prefixed = onnx.compose.add_prefix(model, "classifier/")
    graph = prefixed.graph
    source_input, source_output = graph_input(prefixed), graph.output[0]
    channels, height, width = (dimension.dim_value for dimension in source_input.type.tensor_type.shape.dim[1:])
    shape = (1, len(mean), 1, 1)
    initializers = [numpy_helper.from_array(np.asarray(mean, dtype=np.float32).reshape(shape), "normalise/mean"),
                    numpy_helper.from_array(np.asarray(std, dtype=np.float32).reshape(shape), "normalise/std")]
    nodes = [helper.make_node("Sub", [input_name, "normalise/mean"], ["normalise/centred"], name="normalise/sub"),
             helper.make_node("Div", ["normalise/centred", "normalise/std"], [source_input.name], name="normalise/div"),
             *graph.node,
             helper.make_node("Identity", [source_output.name], [output_name], name="classifier/logits")]
    wrapped = helper.make_graph(
        nodes, "imported_classifier",
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, ["batch", channels or len(mean), height or None, width or None])],
        [helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, ["batch", None])],
        initializer=[*initializers, *graph.initializer], value_info=list(graph.value_info),
    )
    wrapped.sparse_initializer.extend(graph.sparse_initializer)
    result = helper.make_model(wrapped, opset_imports=list(prefixed.opset_import), ir_version=prefixed.ir_version,
                               producer_name="adversarial-purifier import-classifier")
    result.functions.extend(prefixed.functions)
    return result


class ImportedClassifier(nn.Module):
    """f(x) = converted_graph((x − mean) / std): the user's ONNX classifier as a differentiable module.

    >>> import onnx  # doctest: +SKIP
    >>> model = ImportedClassifier(onnx.load("classifier.onnx").SerializeToString(), mean=(0.5,), std=(0.5,))  # doctest: +SKIP
    >>> model(torch.rand(2, 1, 28, 28)).shape  # doctest: +SKIP
    torch.Size([2, 10])
    """

    def __init__(self, graph: bytes, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), num_classes: int | None = None,
                 in_channels: int | None = None) -> None:
        import onnx

        super().__init__()
        self.graph = graph
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.network = convert(onnx.load_from_string(graph))
        self.num_classes, self.in_channels = num_classes, in_channels

    @classmethod
    def from_file(cls, path: Path, **config) -> "ImportedClassifier":
        try:
            return cls(Path(path).read_bytes(), **config)
        except ConversionError as error:
            raise BundleError(f"{path}: {error}") from None

    def onnx_model(self, input_name: str = "image", output_name: str = "logits"):
        """``serving_graph`` of this classifier's graph with its normalisation."""
        import onnx

        return serving_graph(onnx.load_from_string(self.graph), self.mean.flatten().tolist(), self.std.flatten().tolist(), input_name, output_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - self.mean) / self.std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The logits as a (N, K, 1, 1) map: an opaque graph names no feature layer."""
        return self.forward(x)[:, :, None, None]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1)
