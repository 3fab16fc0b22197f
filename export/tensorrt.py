"""TensorRT engines built from a bundle's ONNX graphs through TensorRT's Python API (TensorRT 10).

    purifier export BUNDLE --tensorrt fp16|int8      (after the ONNX export; needs an NVIDIA GPU)

Each graph is parsed with ``trt.OnnxParser``, given one optimisation profile over the batch
axis (1, ``opt_batch``, ``max_batch``) and built with ``builder.build_serialized_network``:
FP16 with ``BuilderFlag.FP16``; INT8 with ``BuilderFlag.INT8`` and an entropy calibrator fed
training images through the bundle's random transform (the classifier also on purified
images), as in quantize.py. Engines are written to ``BUNDLE/tensorrt/NAME.PRECISION.engine``
and listed in bundle.json. Device buffers are torch CUDA tensors, so no pycuda is needed.

Never run on the machine this project was written on: TensorRT's runtime libraries cannot be
installed there and it has no GPU. Everything here follows TensorRT's documented Python API.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from purifier.bundle import Bundle, load_bundle, update_manifest
from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_bytes
from serving.runtime import import_tensorrt

PRECISIONS = ("fp16", "int8")
ENGINE_DIR = "tensorrt"


def _calibrator(trt, feeds: list[dict[str, np.ndarray]], cache: Path):
    """An IInt8EntropyCalibrator2 that hands TensorRT one calibration batch per call, from GPU memory."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches, self._device = iter(feeds), {}

        def get_batch_size(self) -> int:
            return len(next(iter(feeds[0].values())))

        def get_batch(self, names):
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device = {name: torch.from_numpy(batch[name]).cuda().contiguous() for name in names}
            return [self._device[name].data_ptr() for name in names]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data) -> None:
            atomic_write_bytes(cache, bytes(data))

    return Calibrator()


def build_engine(onnx_path: Path, engine_path: Path, precision: str, feeds: list[dict[str, np.ndarray]] | None = None,
                 opt_batch: int = 32, max_batch: int = 256) -> None:
    """Parse ``onnx_path``, build a ``precision`` engine with a dynamic batch profile, write it to ``engine_path``."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise PurifierError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        sample = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *sample), (opt_batch, *sample), (max_batch, *sample))
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = _calibrator(trt, feeds or [], engine_path.with_suffix(".calibration"))
    else:
        raise PurifierError(f"unknown TensorRT precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PurifierError(f"TensorRT failed to build an engine from {onnx_path}; see the log above")
    atomic_write_bytes(engine_path, bytes(serialized))


def build_bundle_engines(bundle_path: Path, precision: str, calibration_images: int = 512) -> Bundle:
    """Build an engine per exported graph of the bundle and record them in bundle.json."""
    import_tensorrt()
    from export.quantize import calibration_feeds

    bundle = load_bundle(bundle_path)
    graphs = (bundle.manifest.get("exports") or {}).get("onnx", {}).get("graphs")
    if not graphs:
        raise PurifierError(f"bundle {bundle.path} has no ONNX export; run 'purifier export {bundle.path}' first")
    feeds = {}
    if precision == "int8":
        feeds = calibration_feeds(bundle, bundle.data("train").head(calibration_images).tensors()[0].numpy())
    (bundle.path / ENGINE_DIR).mkdir(exist_ok=True)
    records = {}
    for stage, record in graphs.items():
        engine = f"{ENGINE_DIR}/{stage}.{precision}.engine"
        build_engine(bundle.file(record["file"]), bundle.path / engine, precision, feeds.get(stage))
        records[stage] = {"file": engine, "inputs": record["inputs"], "outputs": record["outputs"]}
    return update_manifest(bundle, lambda manifest: manifest["exports"].update({f"tensorrt_{precision}": {"graphs": records}}),
                           [record["file"] for record in records.values()])
