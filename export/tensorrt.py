"""TensorRT engines built from a bundle's ONNX graphs through TensorRT 11's Python API (strongly typed networks).

    purifier export BUNDLE --tensorrt fp16|int8      (after the ONNX export; needs an NVIDIA GPU and TensorRT 11)

TensorRT 11 removed the weak-typing builder flags (``BuilderFlag.FP16``, ``BuilderFlag.INT8``) and the INT8
calibrator: every network is strongly typed, its precision is the graph's. So the engines are built from graphs
that already carry it:

- fp16: the FP16 graphs of ``export/float16.py`` (``exports.onnx_fp16``, written first when missing);
- int8: the explicit Q/DQ graphs of ``purifier quantize`` (``exports.onnx_int8``), refused until they exist.

Each graph is parsed with ``trt.OnnxParser`` into ``builder.create_network()`` (strongly typed), given one
optimisation profile over the batch axis (1, ``opt_batch``, ``max_batch``) and built with
``builder.build_serialized_network``. Engines are written atomically to ``BUNDLE/tensorrt/NAME.PRECISION.engine`` and
listed in bundle.json. ``sealed.onnx`` (random operators in the graph) is not built: it is the graph for other servers.

Never run on the machine this project was written on: TensorRT's runtime libraries cannot be installed there and it
has no GPU. Everything here follows TensorRT 11's documented Python API; the FP16 conversion and its check, and every
refusal before TensorRT is needed, are tested on the CPU.
"""

from __future__ import annotations

from pathlib import Path

from purifier.bundle import Bundle, load_bundle, update_manifest
from purifier.errors import PurifierError
from purifier.fsutil import atomic_write_bytes
from serving.runtime import import_tensorrt

PRECISIONS = ("fp16", "int8")
SOURCES = {"fp16": "onnx_fp16", "int8": "onnx_int8"}  # which exports entry of bundle.json holds each precision's graphs
ENGINE_DIR = "tensorrt"


def build_engine(onnx_path: Path, engine_path: Path, opt_batch: int = 32, max_batch: int = 256) -> None:
    """Parse ``onnx_path`` into a strongly typed network, build it with a dynamic batch profile, write it to ``engine_path``."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network()  # strongly typed: TensorRT 11 has no other kind
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
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PurifierError(f"TensorRT failed to build an engine from {onnx_path}; see the log above")
    atomic_write_bytes(engine_path, bytes(serialized))


def _check_sources(bundle: Bundle, precision: str) -> None:
    """Refuse, before TensorRT is needed, a bundle that has no graphs to build ``precision`` engines from."""
    if precision not in PRECISIONS:
        raise PurifierError(f"unknown TensorRT precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    exports = bundle.manifest.get("exports") or {}
    if "onnx" not in exports:
        raise PurifierError(f"bundle {bundle.path} has no ONNX export; run 'purifier export {bundle.path}' first")
    if precision == "int8" and SOURCES["int8"] not in exports:
        raise PurifierError(f"TensorRT 11 builds INT8 engines from explicit Q/DQ graphs; run 'purifier quantize {bundle.path}' first")


def build_bundle_engines(bundle_path: Path, precision: str, max_batch: int = 256) -> Bundle:
    """Build an engine per graph of ``precision`` (FP16 graphs made first when missing), for batches up to ``max_batch``,
    and record them in bundle.json."""
    bundle = load_bundle(bundle_path)
    _check_sources(bundle, precision)
    import_tensorrt()
    if SOURCES[precision] not in bundle.manifest["exports"]:
        from export.float16 import export_float16

        bundle = export_float16(bundle.path)
    graphs = {stage: record for stage, record in bundle.manifest["exports"][SOURCES[precision]]["graphs"].items() if stage != "sealed"}
    (bundle.path / ENGINE_DIR).mkdir(exist_ok=True)
    records = {}
    for stage, record in graphs.items():
        engine = f"{ENGINE_DIR}/{stage}.{precision}.engine"
        build_engine(bundle.file(record["file"]), bundle.path / engine, max_batch=max_batch)
        records[stage] = {"file": engine, "inputs": record["inputs"], "outputs": record["outputs"], "built_from": record["file"]}
    return update_manifest(bundle, lambda manifest: manifest["exports"].update({f"tensorrt_{precision}": {"graphs": records}}),
                           [record["file"] for record in records.values()])
