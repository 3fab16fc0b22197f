"""The binary tensor data extension of the Open Inference Protocol v2 (KServe, Triton): what tritonclient sends
by default. The body is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
tensors, each input giving its byte count in ``parameters.binary_data_size``; BYTES elements are each a
4-byte little-endian length and the bytes. Outputs come back the same way when the request asks
(``parameters.binary_data`` on a requested output, or ``binary_data_output`` for all).
"""

from __future__ import annotations

import json
import struct

import numpy as np

from purifier.errors import RequestFormatError

HEADER = "inference-header-content-length"
NUMERIC = {"UINT8": "<u1", "FP32": "<f4", "INT64": "<i8", "BOOL": "|b1"}


def _bytes_elements(chunk: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise RequestFormatError("binary BYTES data ends inside an element's 4-byte length", "bad_tensor")
        (size,) = struct.unpack_from("<I", chunk, offset)
        if offset + 4 + size > len(chunk):
            raise RequestFormatError("binary BYTES element is longer than the data sent", "bad_tensor")
        elements.append(chunk[offset + 4:offset + 4 + size])
        offset += 4 + size
    return elements


def split_request(body: bytes, header_length: str) -> dict:
    """The v2 request of a binary body, with each binary input's ``data`` filled in (an array, or a list of bytes for BYTES)."""
    try:
        length = int(header_length)
        if not 0 < length <= len(body):
            raise ValueError
        request = json.loads(body[:length])
    except ValueError:
        raise RequestFormatError(f"Inference-Header-Content-Length {header_length!r} does not frame a JSON header in a body of "
                                 f"{len(body)} bytes", "bad_json") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestFormatError("a v2 request needs \"inputs\"", "bad_tensor")
    offset = length
    for tensor in request["inputs"]:
        size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor, dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise RequestFormatError(f"binary_data_size {size!r} runs past the {len(body) - length} bytes of binary data sent", "bad_tensor")
        chunk, offset = body[offset:offset + size], offset + size
        datatype = tensor.get("datatype")
        if datatype == "BYTES":
            tensor["data"] = _bytes_elements(chunk)
        elif datatype in NUMERIC:
            if size % np.dtype(NUMERIC[datatype]).itemsize:
                raise RequestFormatError(f"{size} bytes are not a whole number of {datatype} values", "bad_tensor")
            tensor["data"] = np.frombuffer(chunk, dtype=NUMERIC[datatype])
        else:
            raise RequestFormatError(f"v2 datatype {datatype!r} is not accepted; use BYTES (image files), UINT8 or FP32", "bad_tensor")
    if offset != len(body):
        raise RequestFormatError(f"{len(body) - offset} bytes after the last binary input", "bad_tensor")
    return request


def _encode(data: list, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [item if isinstance(item, bytes) else str(item).encode() for item in data]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return np.asarray(data, dtype=NUMERIC[datatype]).tobytes()


def encode_response(response: dict, binary: set[str]) -> tuple[bytes, int]:
    """The response as a JSON header followed by the outputs named in ``binary``; (body, header length)."""
    header, buffers = dict(response), []
    outputs = []
    for output in response["outputs"]:
        if output["name"] in binary:
            buffers.append(_encode(output["data"], output["datatype"]))
            output = {key: value for key, value in output.items() if key != "data"}
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(buffers[-1])}
        outputs.append(output)
    header["outputs"] = outputs
    encoded = json.dumps(header).encode()
    return encoded + b"".join(buffers), len(encoded)
