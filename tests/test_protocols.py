"""Request formats and bad input, on real Fashion-MNIST images, without a server (serving/protocols.py)."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from purifier.assets import REFERENCE_PIPELINE
from purifier.errors import BadInputError
from purifier.images import encode_png
from serving.protocols import (
    encode_body,
    format_purified,
    format_response,
    parse_request,
)
from serving.service import PurificationService

SHAPE = (1, 28, 28)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pngs(fmnist_test):
    return [encode_png(image) for image in fmnist_test.images[:4]]


def test_every_accepted_form_yields_the_same_pixels(pngs, fmnist_test):
    expected = fmnist_test.images[:1]
    forms = {
        "raw": {"body": pngs[0]},
        "multipart": {"file": pngs[0], "return_purified": b"true"},
        "json": {"body": {"image": _b64(pngs[0]), "return_purified": True}},
        "v2 bytes": {"body": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(pngs[0])]}]}},
        "v2 uint8": {"body": {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28, 1], "data": expected.reshape(-1).tolist()}]}},
        "v2 fp32": {"body": {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": (expected.reshape(-1) / 255).tolist()}]}},
    }
    for name, item in forms.items():
        request = parse_request(item, SHAPE)
        assert np.array_equal(request.images, expected), name
    assert parse_request(forms["multipart"], SHAPE).return_purified and parse_request(forms["json"], SHAPE).return_purified
    assert not parse_request(forms["raw"], SHAPE).return_purified


def test_v2_request_of_several_images_gets_v2_outputs(pngs, fmnist_test):
    body = {"id": "r-1", "parameters": {"return_purified": True},
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [4], "data": [_b64(p) for p in pngs]}]}
    request = parse_request({"body": body}, SHAPE)
    service = PurificationService.from_bundle(None, seed=0)
    outcome = service.run(request.images)
    response = format_response(request, outcome.predictions, outcome.purified, "fmnist-default", service.bundle.class_names)
    outputs = {output["name"]: output for output in response["outputs"]}
    assert response["id"] == "r-1" and response["model_name"] == "fmnist-default"
    assert outputs["label"]["shape"] == [4] and outputs["probabilities"]["shape"] == [4, 10]
    assert len(outputs["probabilities"]["data"]) == 40 and abs(sum(outputs["probabilities"]["data"][:10]) - 1) < 1e-4
    assert outputs["index"]["data"] == [p.index for p in outcome.predictions]
    purified = Image.open(io.BytesIO(base64.b64decode(outputs["purified"]["data"][2])))
    assert purified.size == (28, 28)
    only = format_purified(request, outcome.purified, "fmnist-default-purify")
    assert only["outputs"][0]["shape"] == [4]


def _truncated_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="JPEG")
    return buffer.getvalue()[:200]


def _png_claiming(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD = {
    "empty body": ({"body": b""}, "empty"),
    "no field at all": ({}, "empty"),
    "non-image bytes": ({"body": b"hello, this is not an image"}, "not_an_image"),
    "truncated png": (lambda png, jpeg: {"body": png[:60]}, "corrupt"),
    "truncated jpeg": (lambda png, jpeg: {"body": jpeg}, "corrupt"),
    "decompression bomb": ({"body": _png_claiming(5000, 5000)}, "too_many_pixels"),
    "absurd dimensions": ({"body": _png_claiming(4000, 1)}, "bad_dimensions"),
    "invalid base64": ({"body": {"image": "not base64!!"}}, "bad_base64"),
    "malformed json": ({"body": b'{"image": "abc"'}, "bad_json"),
    "json without image": ({"body": {"picture": "abc"}}, "bad_json"),
    "v2 wrong shape": ({"body": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 32, 32, 1], "data": [0] * 1024}]}}, "bad_tensor"),
    "v2 wrong datatype": ({"body": {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 28, 28, 1], "data": [0] * 784}]}}, "bad_tensor"),
    "v2 too little data": ({"body": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1, 28, 28, 1], "data": [0] * 10}]}}, "bad_tensor"),
    "v2 out of range": ({"body": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [2.0] * 784}]}}, "bad_tensor"),
    "v2 no inputs": ({"body": {"inputs": []}}, "bad_tensor"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_bad_input_error_with_its_reason(case, pngs, fmnist_test):
    item, reason = BAD[case]
    if callable(item):
        item = item(pngs[0], _truncated_jpeg(fmnist_test.images[0]))
    with pytest.raises(BadInputError) as error:
        parse_request(item, SHAPE)
    assert error.value.reason == reason and "\n" not in str(error.value)


def test_special_image_modes_are_converted(fmnist_test):
    image = fmnist_test.images[0][..., 0]
    forms = []
    for mode in ("I;16", "CMYK", "RGBA", "P"):
        buffer = io.BytesIO()
        converted = Image.fromarray(image).convert(mode) if mode != "I;16" else Image.fromarray(image.astype(np.uint16) * 257)
        converted.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
        forms.append(buffer.getvalue())
    for data in forms:
        (decoded,) = parse_request({"body": data}, SHAPE).images
        assert np.abs(decoded.astype(int) - fmnist_test.images[0].astype(int)).mean() < 3


def test_return_purified_comes_from_the_header_for_any_form(pngs):
    """TorchServe drops the query string of /predictions; the X-Return-Purified header is the raw body's way."""
    assert parse_request({"body": pngs[0]}, SHAPE, {"x-return-purified": "true"}).return_purified
    assert not parse_request({"body": pngs[0]}, SHAPE, {"x-return-purified": "false"}).return_purified


def test_a_body_curl_sent_as_a_form_gets_the_header_to_add(pngs):
    """curl -d / --data-binary without Content-Type send application/x-www-form-urlencoded: TorchServe decodes the body as form
    fields, and the message says which header or option to use instead of blaming the image."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    with pytest.raises(BadInputError, match="Content-Type: application/json") as json_as_form:
        parse_request({'{"image": "iVBORw0KGgo': b'"}'}, SHAPE, form)
    assert json_as_form.value.reason == "bad_json"
    with pytest.raises(BadInputError, match="curl -T FILE"):
        parse_request({"\x89PNG\r\n": b""}, SHAPE, form)


def _binary_request(header: dict, *chunks: bytes) -> tuple[dict, dict]:
    encoded = json.dumps(header).encode()
    return {"body": encoded + b"".join(chunks)}, {"inference-header-content-length": str(len(encoded))}


def test_v2_binary_tensors_decode_to_the_same_pixels_as_json(pngs, fmnist_test):
    images = fmnist_test.images[:2]
    item, headers = _binary_request({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 28, 28, 1],
                                                 "parameters": {"binary_data_size": images.nbytes}}]}, images.tobytes())
    assert np.array_equal(parse_request(item, SHAPE, headers).images, images)
    files = b"".join(struct.pack("<I", len(png)) + png for png in pngs[:2])
    item, headers = _binary_request({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(files)}}],
                                     "outputs": [{"name": "index", "parameters": {"binary_data": True}}, {"name": "label"}]}, files)
    request = parse_request(item, SHAPE, headers)
    assert np.array_equal(request.images, images) and request.outputs == {"index": True, "label": False}


@pytest.mark.parametrize("header, data, reason", [
    ("9999", b"", "bad_json"),
    (None, b"\x00" * 3, "bad_tensor"),   # binary_data_size 784 but 3 bytes sent
    (None, b"\x00" * 900, "bad_tensor"),  # bytes left over after the last input
])
def test_malformed_binary_framing_is_a_400_with_a_reason(header, data, reason):
    item, headers = _binary_request({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28, 1],
                                                 "parameters": {"binary_data_size": 784}}]}, data)
    headers = {"inference-header-content-length": header} if header else headers
    with pytest.raises(BadInputError) as error:
        parse_request(item, SHAPE, headers)
    assert error.value.reason == reason


def test_requested_outputs_narrow_the_answer_and_binary_outputs_round_trip(pngs):
    service = PurificationService.from_bundle(REFERENCE_PIPELINE, seed=0)
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [_b64(p) for p in pngs[:2]]}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}]}
    request = parse_request({"body": body}, SHAPE)
    outcome = service.run(request.images)
    payload, headers = encode_body(request, format_response(request, outcome.predictions, outcome.purified, "m", service.bundle.class_names))
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(payload[:length])
    assert [o["name"] for o in header["outputs"]] == ["label", "probabilities"]
    probabilities = np.frombuffer(payload[length:], dtype="<f4").reshape(2, 10)
    assert np.allclose(probabilities, [p.scores for p in outcome.predictions], atol=1e-6)
    with pytest.raises(BadInputError, match="unknown v2 output"):
        parse_request({"body": {**body, "outputs": [{"name": "logits"}]}}, SHAPE)
