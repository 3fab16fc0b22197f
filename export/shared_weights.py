"""One weight file for a bundle's ONNX graphs: each distinct tensor stored once (ONNX external data).

classifier.onnx, pipeline.onnx and sealed.onnx each embed the classifier's weights, and purifier.onnx,
pipeline.onnx and sealed.onnx the purifier's, so a bundle's export held each three times (a 555k-
parameter classifier took its bundle past 5 MB). ``share_weights`` moves every initializer of at
least ``MIN_BYTES`` out of the graphs into one ``weights-<hash>.bin`` beside them, writing each
distinct byte string once, and points the graphs at it through ONNX's external-data fields
(location, offset, length). The bytes are unchanged, so the graphs compute exactly what they did;
ONNX Runtime and ``onnx.load`` find the file next to the graph they open. Deploying a graph
elsewhere means copying that file with it.

    >>> share_weights([Path("onnx/classifier.onnx"), Path("onnx/pipeline.onnx")])  # doctest: +SKIP
    PosixPath('onnx/weights-5d1c0e8f2a9b3c47.bin')
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

MIN_BYTES = 1024  # smaller tensors (biases, shapes) stay in the graph
ALIGNMENT = 64  # each tensor starts on a 64-byte boundary in the weight file


def share_weights(graphs: list[Path]) -> Path:
    """Rewrite ``graphs`` (one folder, weights embedded) to keep their large initializers in one file; returns its path.

    The file is named after its content, ``weights-<sha256 prefix>.bin``, so graphs written by an
    earlier export keep pointing at their own weights until they are replaced."""
    models = [onnx.load(str(path)) for path in graphs]
    tensors = [tensor for model in models for tensor in model.graph.initializer if len(tensor.raw_data) >= MIN_BYTES]
    digests = [hashlib.sha256(tensor.raw_data).digest() for tensor in tensors]
    blob, stored = bytearray(), {}  # sha256 of a tensor's bytes -> (offset, length) in the weight file
    for tensor, digest in zip(tensors, digests):
        if digest not in stored:
            blob += b"\0" * (-len(blob) % ALIGNMENT)
            stored[digest] = (len(blob), len(tensor.raw_data))
            blob += tensor.raw_data
    path = graphs[0].parent / f"weights-{hashlib.sha256(blob).hexdigest()[:16]}.bin"
    path.write_bytes(blob)
    for tensor, digest in zip(tensors, digests):
        offset, length = stored[digest]
        set_external_data(tensor, location=path.name, offset=offset, length=length)
        tensor.ClearField("raw_data")
    for model, graph in zip(models, graphs):
        onnx.save(model, str(graph))
    return path
