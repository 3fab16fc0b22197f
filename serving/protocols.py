"""Request and response formats the server speaks, independent of TorchServe.

One TorchServe request item (a dict of the HTTP body and form fields) becomes a ``Request``:
the images it carries, how it asked for them to be answered, and whether it wants the purified
images back. Accepted forms:

- raw bytes: the image file as the body (PNG, JPEG, WebP, BMP, TIFF, GIF first frame);
- multipart/form-data: the image file in any field (``return_purified`` may be another field);
- JSON: ``{"image": "<base64 image file>", "return_purified": true}``;
- Open Inference Protocol v2 (KServe/Triton, at ``/v2/models/NAME/infer``):
  ``{"id": ..., "inputs": [{"name": ..., "datatype": "BYTES", "shape": [N], "data": [base64 files]}]}``
  or ``"datatype": "UINT8"`` with ``shape`` [N, H, W, C] (pixels) or ``"FP32"`` with [N, C, H, W]
  in [0, 1]; ``"parameters": {"return_purified": true}``; ``"outputs"`` picks the outputs answered;
  the binary tensor data extension (serving.v2_binary, tritonclient's default) in both directions.

``return_purified`` may also come as the HTTP header ``X-Return-Purified: true`` (any form; the
only way for a raw-bytes body). TorchServe does not hand the handler the query string of
``/predictions``, so ``?return_purified=true`` cannot work and is not offered. Anything
unreadable raises BadInputError with a reason code, which the handler answers with a 400; a body
that curl sent as a form (``-d`` without ``Content-Type``) is recognised and the message names the
header to add.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from purifier.errors import ImageDecodeError, RequestFormatError
from purifier.images import decode_image, encode_png
from serving import v2_binary

V2_DATATYPES = ("UINT8", "FP32")  # besides BYTES (encoded image files)
V2_OUTPUTS = ("label", "index", "probabilities", "purification_changed_prediction", "purified", "smoothed_index", "certified_radius")
OPTION = "return_purified"
OPTION_HEADER = "x-return-purified"
CERTIFY = "certify"
CERTIFY_HEADER = "x-certify"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_IMAGES_PER_REQUEST = 256


@dataclass
class Request:
    """The images of one request as uint8 (N, H, W, C), and how to answer it."""

    images: np.ndarray
    protocol: str  # "raw" | "json" | "v2"
    return_purified: bool = False
    request_id: str | None = None
    certify: bool = False
    outputs: dict[str, bool] | None = None  # v2: the requested outputs, each with whether to answer it as binary data
    binary_outputs: bool = False  # v2: answer outputs not listed in ``outputs`` as binary data


def _flag(value) -> bool:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes"))


def _b64(text, what: str) -> bytes:
    if not isinstance(text, str):
        raise RequestFormatError(f"{what} must be a base64 string, got {type(text).__name__}", "bad_base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestFormatError(f"{what} is not valid base64; encode the image file with standard base64", "bad_base64") from None


def _stack(images: list[np.ndarray]) -> np.ndarray:
    if not images:
        raise RequestFormatError("the request carries no image", "empty")
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise RequestFormatError(f"{len(images)} images in one request; send at most {MAX_IMAGES_PER_REQUEST}", "too_many_images")
    return np.stack(images)


def _v2_tensor(tensor: dict, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """The images of one v2 input tensor, as uint8 (H, W, C) arrays."""
    if not isinstance(tensor, dict) or not {"datatype", "shape", "data"} <= set(tensor):
        raise RequestFormatError("each v2 input needs name, datatype, shape and data", "bad_tensor")
    datatype, dims, data = tensor["datatype"], tensor["shape"], tensor["data"]
    if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise RequestFormatError(f"v2 input shape must be a list of non-negative integers, got {dims!r}", "bad_tensor")
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else None
        if flat is None or len(dims) not in (1, 2) or int(np.prod(dims)) != len(flat):
            raise RequestFormatError(f"a BYTES input has shape [N] with N base64 image files as data; got shape {dims}", "bad_tensor")
        return [decode_image(item if isinstance(item, bytes) else _b64(item, "v2 BYTES data"), shape) for item in flat]
    if datatype not in V2_DATATYPES:
        raise RequestFormatError(f"v2 datatype {datatype!r} is not accepted; use BYTES (image files), UINT8 or FP32", "bad_tensor")
    channels, height, width = shape
    expected = [None, height, width, channels] if datatype == "UINT8" else [None, channels, height, width]
    if len(dims) != 4 or dims[1:] != expected[1:]:
        layout = "[N, H, W, C]" if datatype == "UINT8" else "[N, C, H, W]"
        raise RequestFormatError(f"a {datatype} input must have shape {layout} = {['N'] + expected[1:]}, got {dims}", "bad_tensor")
    try:
        array = np.asarray(data, dtype=np.float64).reshape(dims)
    except (ValueError, TypeError):
        raise RequestFormatError(f"v2 data does not hold {int(np.prod(dims))} numbers for shape {dims}", "bad_tensor") from None
    if datatype == "UINT8":
        if array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise RequestFormatError("UINT8 pixel values must lie in 0..255", "bad_tensor")
        return list(array.astype(np.uint8))
    if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 1:
        raise RequestFormatError("FP32 pixel values must be finite and lie in [0, 1]", "bad_tensor")
    return list(np.rint(array * 255).astype(np.uint8).transpose(0, 2, 3, 1))


def parse_request(item: dict, shape: tuple[int, int, int], headers: dict[str, str] | None = None) -> Request:
    """One TorchServe request item (and its HTTP headers, names in lower case) -> Request; raises BadInputError
    (ImageDecodeError / RequestFormatError)."""
    headers = headers or {}
    body = item.get("body", item.get("data"))
    request = _parse_body(item, body, shape, headers)
    certify = _flag(item.get(CERTIFY)) or _flag(headers.get(CERTIFY_HEADER))
    if isinstance(body, dict):
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        certify = certify or _flag(body.get(CERTIFY)) or _flag(parameters.get(CERTIFY))
    request.certify = certify
    return request


def _parse_body(item: dict, body, shape: tuple[int, int, int], headers: dict[str, str]) -> Request:
    return_purified = _flag(item.get(OPTION)) or _flag(headers.get(OPTION_HEADER))
    if body is None and headers.get("content-type", "").split(";")[0].strip().lower() == FORM_CONTENT_TYPE:
        if any(str(key).lstrip().startswith(("{", "[")) for key in item):
            raise RequestFormatError("JSON sent as a form (curl -d without a Content-Type); add the header "
                                     "'Content-Type: application/json'", "bad_json")
        raise RequestFormatError("the body was sent as a form (Content-Type: application/x-www-form-urlencoded, curl's default for -d and "
                                 "--data-binary); send the image file with curl -T FILE, or add 'Content-Type: application/octet-stream'", "bad_request")
    if body is None:  # multipart/form-data: the image is the first binary field that is not an option
        files = [value for key, value in item.items() if key not in (OPTION, CERTIFY) and isinstance(value, (bytes, bytearray))]
        if not files:
            raise ImageDecodeError("empty request: send the image file as the body, a form field, JSON or a v2 request", "empty")
        return Request(_stack([decode_image(bytes(files[0]), shape)]), "raw", return_purified)
    if isinstance(body, (bytes, bytearray)) and v2_binary.HEADER in headers:
        body = v2_binary.split_request(bytes(body), headers[v2_binary.HEADER])
    elif isinstance(body, (bytes, bytearray)) and bytes(body[:1]) in (b"{", b"["):
        try:  # JSON sent without Content-Type: application/json (tritonclient does so)
            body = json.loads(bytes(body))
        except ValueError:
            raise RequestFormatError("the body looks like JSON but does not parse; send valid JSON with Content-Type: application/json",
                                     "bad_json") from None
    if isinstance(body, (bytes, bytearray)):
        return Request(_stack([decode_image(bytes(body), shape)]), "raw", return_purified)
    if isinstance(body, str):
        raise RequestFormatError("text body; send the image file's bytes, or JSON with Content-Type: application/json", "bad_json")
    if not isinstance(body, dict):
        raise RequestFormatError("the JSON body must be an object: {\"image\": base64} or a v2 request with \"inputs\"", "bad_json")
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise RequestFormatError("a v2 request needs exactly one input tensor in \"inputs\"", "bad_tensor")
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        request_id = body.get("id") if isinstance(body.get("id"), str) else None
        outputs = _requested_outputs(body.get("outputs"))
        return_purified = return_purified or _flag(parameters.get(OPTION)) or "purified" in (outputs or {})
        return Request(_stack(_v2_tensor(inputs[0], shape)), "v2", return_purified, request_id, outputs=outputs,
                       binary_outputs=parameters.get("binary_data_output") is True)
    if "image" not in body:
        raise RequestFormatError("a JSON request needs \"image\" (base64 image file) or v2 \"inputs\"", "bad_json")
    return Request(_stack([decode_image(_b64(body["image"], "\"image\""), shape)]), "json", return_purified or _flag(body.get(OPTION)))


def _requested_outputs(outputs) -> dict[str, bool] | None:
    """A v2 request's ``outputs`` as {name: binary?}; None when it names none (every output is answered)."""
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise RequestFormatError("v2 \"outputs\" must be a list of {\"name\": ...}", "bad_tensor")
    unknown = [o["name"] for o in outputs if o["name"] not in V2_OUTPUTS]
    if unknown:
        raise RequestFormatError(f"unknown v2 output(s) {unknown}; this server answers {list(V2_OUTPUTS)}", "bad_tensor")
    return {o["name"]: (o.get("parameters") or {}).get("binary_data") is True for o in outputs}


def selected_outputs(request: Request, body: dict) -> list[tuple[dict, bool]]:
    """The v2 outputs to answer (those requested, or all) and whether each goes as binary data."""
    chosen = body["outputs"] if request.outputs is None else [o for o in body["outputs"] if o["name"] in request.outputs]
    return [(output, (request.outputs or {}).get(output["name"], request.binary_outputs)) for output in chosen]


def encode_body(request: Request, body: dict) -> tuple[dict | bytes, dict[str, str]]:
    """The response as sent: v2 outputs narrowed to those requested, and as binary data where asked, with the HTTP
    headers that frame it; other bodies unchanged."""
    if request.protocol != "v2" or "outputs" not in body:
        return body, {}
    selected = selected_outputs(request, body)
    body = {**body, "outputs": [output for output, _ in selected]}
    binary = {output["name"] for output, as_binary in selected if as_binary}
    if not binary:
        return body, {}
    payload, header_length = v2_binary.encode_response(body, binary)
    return payload, {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}


def _png_base64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def certification_fields(certificate, prediction, class_names: list[str]) -> dict:
    """The fields a certified answer adds: the smoothed classifier's label and its certified L2 radius (null when it abstains)."""
    smoothed = None if certificate.prediction is None else class_names[certificate.prediction]
    fields = {"smoothed_label": smoothed, "certified_radius": None if certificate.radius is None else round(certificate.radius, 6)}
    if smoothed != prediction.label:
        fields["labels_differ"] = ("'label' is the prediction of one random draw; 'smoothed_label' is the smoothed classifier's, the one "
                                   "the radius certifies" if smoothed is not None else "the smoothed classifier abstains: no certified label")
    return fields


def format_response(request: Request, predictions: list, purified: np.ndarray, model_name: str, class_names: list[str],
                    certificates: list | None = None) -> dict:
    """The response body for a classified request (predictions are serving.service.Prediction; ``certificates``
    purifier.smoothing.Certificate per image when the request asked to certify)."""
    if request.protocol == "v2":
        count = len(predictions)
        outputs = [
            {"name": "label", "datatype": "BYTES", "shape": [count], "data": [p.label for p in predictions]},
            {"name": "index", "datatype": "INT64", "shape": [count], "data": [p.index for p in predictions]},
            {"name": "probabilities", "datatype": "FP32", "shape": [count, len(class_names)],
             "data": [float(v) for p in predictions for v in p.scores]},
            {"name": "purification_changed_prediction", "datatype": "BOOL", "shape": [count],
             "data": [p.purification_changed_prediction for p in predictions]},
        ]
        if request.return_purified:
            outputs.append({"name": "purified", "datatype": "BYTES", "shape": [count], "data": [_png_base64(i) for i in purified]})
        if certificates is not None:  # abstention: smoothed index -1 and radius -1 (v2 tensors hold no nulls)
            outputs.append({"name": "smoothed_index", "datatype": "INT64", "shape": [count],
                            "data": [-1 if c.prediction is None else c.prediction for c in certificates]})
            outputs.append({"name": "certified_radius", "datatype": "FP32", "shape": [count],
                            "data": [-1.0 if c.radius is None else c.radius for c in certificates]})
        response = {"model_name": model_name, "outputs": outputs}
        return {**response, "id": request.request_id} if request.request_id else response
    (prediction,) = predictions
    body = prediction.to_dict()
    if certificates is not None:
        body.update(certification_fields(certificates[0], prediction, class_names))
    if request.return_purified:
        body["purified_png_base64"] = _png_base64(purified[0])
    return body


def format_purified(request: Request, purified: np.ndarray, model_name: str) -> dict:
    """The response body of the purify-only model: the purified images as base64 PNGs."""
    images = [_png_base64(image) for image in purified]
    if request.protocol == "v2":
        response = {"model_name": model_name, "outputs": [{"name": "purified", "datatype": "BYTES", "shape": [len(images)], "data": images}]}
        return {**response, "id": request.request_id} if request.request_id else response
    return {"purified_png_base64": images[0]}


def error_body(error: Exception) -> dict:
    return {"error": str(error), "reason": getattr(error, "reason", "bad_request")}

