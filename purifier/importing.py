"""``purifier import-classifier``: a classifier trained elsewhere (an ONNX file, or a PyTorch factory plus weights) as a bundle.

The bundle holds the classifier as an ONNX graph, the one the server runs. A PyTorch classifier is exported to
ONNX here, once: its code runs only during the import (``trust_code``), never when the bundle is loaded. For
purifier training and white-box evaluation the graph is converted back to PyTorch (``ImportedClassifier``);
before anything is written, the import checks on random images that ONNX Runtime and the converted module
agree (and the PyTorch original, when there is one), and records the figures in bundle.json.
Refused in one line, with nothing written: files that are not ONNX graphs, graphs with other than one input,
batch axes fixed to one size, outputs that are not (batch, classes) logits, NaN outputs, sizes that contradict
the graph, class lists of the wrong length, operators the converter lacks, and disagreeing conversions.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from purifier.bundle import Bundle, write_bundle
from purifier.data import load_dataset
from purifier.errors import PurifierError, first_line
from purifier.fsutil import sha256_file
from purifier.models.imported import ImportedClassifier, graph_input, serving_graph, version

PARITY_IMAGES = 32  # random images of the conversion check
PARITY_TOLERANCE = 1e-3  # max |logit difference|, relative to the largest |logit| (at least 1)
ONNX_OPSET = 18  # of the export of a PyTorch classifier


@dataclass(frozen=True)
class ImportOptions:
    """What the model expects. ``input_size`` (H, W) and ``channels`` are read from the graph where it states them;
    ``mean``/``std`` default to a model that takes [0, 1] images; ``class_names`` default to the class indices."""

    input_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    data_dir: Path | None = None


def import_onnx(path: Path, out: Path, options: ImportOptions, command: str | None = None) -> Bundle:
    """An ONNX classifier file as a bundle at ``out``."""
    started = time.perf_counter()
    graph = _read_onnx(Path(path))
    source = {"format": "onnx", "file": str(Path(path).resolve()), "sha256": sha256_file(Path(path))}
    return _write(graph, out, options, source, None, started, command)


def import_pytorch(factory: str, weights: Path, out: Path, options: ImportOptions, trust_code: bool = False,
                   command: str | None = None) -> Bundle:
    """``package.module:function()`` with the state dict in ``weights`` (safetensors, or torch.save loaded with weights_only),
    exported to ONNX, as a bundle at ``out``. Runs the factory's code: refused unless ``trust_code``."""
    if not trust_code:
        raise PurifierError(f"importing {factory} runs its Python code with your privileges; pass --trust-code if you trust it "
                            "(the bundle keeps an ONNX graph and never runs that code again)")
    started = time.perf_counter()
    if options.input_size is None or options.channels is None:
        raise PurifierError("a PyTorch classifier states no input size; pass --input-size H[xW] and --channels C")
    module = _build_factory(factory, Path(weights))
    graph = _export_module(module, (options.channels, *options.input_size))
    source = {"format": "pytorch", "factory": factory, "weights": str(Path(weights).resolve()), "sha256": sha256_file(Path(weights)),
              "exported_opset": ONNX_OPSET}
    return _write(graph, out, options, source, module, started, command)


def _read_onnx(path: Path) -> bytes:
    import onnx

    if not path.is_file():
        raise PurifierError(f"{path} does not exist; pass the ONNX file of your classifier")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises DecodeError, ValidationError, and others on damaged files
        raise PurifierError(f"{path} is not a valid ONNX model ({first_line(error)}); export the classifier with torch.onnx.export or tf2onnx") from None
    return model.SerializeToString()


def _build_factory(factory: str, weights: Path) -> torch.nn.Module:
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise PurifierError(f"{factory!r} is not a factory; write it as package.module:function")
    sys.path.insert(0, os.getcwd())  # as `python -m` does: a package in the working directory is found
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise PurifierError(f"cannot import {factory} ({error}); run from the directory that holds its package, or put it on PYTHONPATH") from None
    finally:
        sys.path.remove(os.getcwd())
    model = function()
    if not isinstance(model, torch.nn.Module):
        raise PurifierError(f"{factory}() returned {type(model).__name__}, not a torch.nn.Module")
    if not weights.is_file():
        raise PurifierError(f"{weights} does not exist; pass the classifier's weights (safetensors or a torch.save state dict)")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as error:  # safetensors, pickle (weights_only refusals) and load_state_dict all raise differently
        raise PurifierError(f"{weights} does not load into {factory}() ({first_line(error)}); pass the state dict saved from that model") from None
    return model.eval()


def _export_module(module: torch.nn.Module, shape: tuple[int, int, int]) -> bytes:
    example = torch.rand(2, *shape)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), input_names=["input"], output_names=["output"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=ONNX_OPSET, dynamo=True,
                                        external_data=False, verbose=False)
            program.save(buffer)
    except Exception as error:  # torch.export reports unsupported Python as many exception types
        raise PurifierError(f"the classifier does not export to ONNX ({first_line(error)}); export it yourself and import the .onnx file") from None
    return buffer.getvalue()


def _input_shape(model, options: ImportOptions) -> tuple[int, int, int]:
    """(C, H, W): what the graph states, checked against (or completed by) the options."""
    dims = graph_input(model).type.tensor_type.shape.dim
    if len(dims) != 4:
        raise PurifierError(f"the graph's input has {len(dims)} dimensions; a classifier takes (batch, channels, height, width) images")
    stated = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims[1:]]
    given = [options.channels, *(options.input_size or (None, None))]
    names = ("channels", "height", "width")
    for name, graph_value, option in zip(names, stated, given):
        if graph_value is not None and option is not None and graph_value != option:
            raise PurifierError(f"the graph takes {name} {graph_value} but the options say {option}; drop the option or fix it")
    shape = tuple(option if graph_value is None else graph_value for graph_value, option in zip(stated, given))
    if None in shape:
        raise PurifierError("the graph does not state its input size; pass --input-size H[xW] and --channels C")
    if shape[0] not in (1, 3):
        raise PurifierError(f"the classifier takes {shape[0]} channels; purifiers are built for grey (1) or RGB (3) images")
    return shape


def _normalisation(values: tuple[float, ...] | None, default: float, channels: int, name: str) -> list[float]:
    if values is None:
        return [default] * channels
    if len(values) == 1:
        return list(values) * channels
    if len(values) != channels:
        raise PurifierError(f"--{name} has {len(values)} values for a {channels}-channel model; give 1 or {channels}")
    return list(values)


def _outputs(session, images: np.ndarray) -> np.ndarray:
    try:
        return session.run(None, {"image": images})[0]
    except Exception as error:  # ONNX Runtime raises its own Fail/InvalidArgument types
        raise PurifierError(f"the graph fails on a batch of {len(images)} images ({first_line(error, end=True)}); export it with a dynamic batch axis") from None


def _write(graph: bytes, out: Path, options: ImportOptions, source: dict[str, Any], original: torch.nn.Module | None, started: float,
           command: str | None) -> Bundle:
    import onnx
    import onnxruntime

    model = onnx.load_from_string(graph)
    shape = _input_shape(model, options)
    mean = _normalisation(options.mean, 0.0, shape[0], "mean")
    std = _normalisation(options.std, 1.0, shape[0], "std")
    if min(std) <= 0:
        raise PurifierError("--std values must be positive")
    try:
        session = onnxruntime.InferenceSession(serving_graph(model, mean, std).SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime's own exception types
        raise PurifierError(f"ONNX Runtime {onnxruntime.__version__} cannot load the graph ({first_line(error, end=True)}); export it at an opset and IR "
                            "version this ONNX Runtime supports") from None
    images = np.random.default_rng(0).random((PARITY_IMAGES, *shape), dtype=np.float32)
    served = np.concatenate([_outputs(session, images[:1]), _outputs(session, images[1:])])
    if served.ndim != 2 or served.shape[0] != len(images) or served.shape[1] < 2:
        raise PurifierError(f"the graph returns {served.shape[1:]} per image; a classifier returns one logit per class (batch, classes)")
    if not np.isfinite(served).all():
        raise PurifierError("the graph returns NaN or infinite logits on random images in [0, 1]; check the model and its --mean/--std")
    classes = served.shape[1]
    class_names = list(options.class_names) if options.class_names else [str(index) for index in range(classes)]
    if len(class_names) != classes:
        raise PurifierError(f"{len(class_names)} class names for a classifier with {classes} outputs; give one name per output")
    classifier = ImportedClassifier(graph, mean=mean, std=std, num_classes=classes, in_channels=shape[0])
    conversion = _conversion_parity(classifier, images, served, original)
    dataset = {"name": "folder", "input_shape": list(shape), "class_names": class_names}
    metrics = {}
    if options.data_dir is not None:
        test = load_dataset("folder", "test", Path(options.data_dir), shape).relabelled(tuple(class_names))
        test_images, test_labels = test.tensors()
        predictions = np.concatenate([_outputs(session, batch.numpy()).argmax(1) for batch in test_images.split(256)])
        metrics["clean_accuracy_classifier"] = {"value": round(float((predictions == test_labels.numpy()).mean()), 4),
                                                "protocol": {"split": "test", "images": len(test), "runtime": "onnxruntime"}}
        dataset = {**dataset, "name": f"folder:{Path(options.data_dir).name}", "data_dir": str(Path(options.data_dir).resolve())}
    record = {"stage": "classifier", "command": command, "wall_time_s": round(time.perf_counter() - started, 1),
              "arguments": {"source": source, "input_shape": list(shape), "mean": mean, "std": std}}
    manifest = {
        "name": Path(out).name, "dataset": dataset,
        "classifier": {"architecture": "onnx", "config": {"mean": mean, "std": std, "num_classes": classes, "in_channels": shape[0]},
                       "imported": {**source, "conversion": conversion}},
        "purifier": None, "training": [record], "metrics": metrics,
    }
    return write_bundle(Path(out), manifest, {"classifier": classifier})


def _conversion_parity(classifier: ImportedClassifier, images: np.ndarray, served: np.ndarray, original: torch.nn.Module | None) -> dict[str, Any]:
    """ONNX Runtime vs the converted module (and the PyTorch original) on the same random images; refused beyond the tolerance."""
    with torch.no_grad():
        converted = classifier(torch.from_numpy(images)).numpy()
        references = {"onnxruntime": served}
        if original is not None:  # the original takes normalised images, as it did before the import
            references["pytorch_original"] = original((torch.from_numpy(images) - classifier.mean) / classifier.std).numpy()
    scale = max(1.0, float(np.abs(served).max()))
    record = {"converter": "onnx2torch", "converter_version": version(), "images": len(images), "inputs": "uniform random in [0, 1]",
              "tolerance": PARITY_TOLERANCE, "relative_to": scale}
    for name, reference in references.items():
        difference = float(np.abs(converted - reference).max())
        agreement = float((converted.argmax(1) == reference.argmax(1)).mean())
        record[f"max_abs_logit_diff_vs_{name}"], record[f"argmax_agreement_vs_{name}"] = difference, agreement
        if not difference <= PARITY_TOLERANCE * scale:
            raise PurifierError(f"the PyTorch conversion differs from {name} by {difference:.3g} in the logits (tolerance "
                                f"{PARITY_TOLERANCE * scale:.3g}); the graph uses an operator onnx2torch converts wrongly, nothing was written")
    return record
