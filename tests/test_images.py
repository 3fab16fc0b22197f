"""Decoding every common format and mode, and refusing what is not a sane image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from purifier.errors import ImageDecodeError
from purifier.images import MAX_IMAGE_PIXELS, decode_image, encode_png, to_uint8

GREY = (1, 28, 28)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_png_roundtrip_is_exact(fmnist_test):
    image = fmnist_test.images[0]
    assert np.array_equal(decode_image(encode_png(image), GREY), image)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("L", "WEBP"), ("RGB", "BMP"), ("L", "TIFF"), ("I;16", "PNG")])
def test_modes_and_formats_become_model_shaped(fmnist_test, mode, fmt):
    grey = Image.fromarray(fmnist_test.images[0][..., 0])
    image = Image.fromarray((np.asarray(grey, dtype=np.uint16) * 257)) if mode == "I;16" else grey.convert(mode)
    decoded = decode_image(_encode(image, fmt), GREY)
    assert decoded.shape == (28, 28, 1) and decoded.dtype == np.uint8
    tolerance = 40 if fmt in ("JPEG", "WEBP") else 2
    assert np.abs(decoded.astype(int) - fmnist_test.images[0].astype(int)).mean() < tolerance


def test_resizes_and_converts_to_rgb():
    big = Image.new("L", (280, 140), 200)
    decoded = decode_image(_encode(big, "PNG"), (3, 32, 32))
    assert decoded.shape == (32, 32, 3) and int(decoded.mean()) == 200


def test_exif_orientation_is_applied():
    array = np.zeros((28, 28), dtype=np.uint8)
    array[:, :4] = 255  # bright stripe on the left
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_image(_encode(image, "JPEG", exif=exif, quality=100), GREY)[..., 0]
    assert decoded[:4, :].mean() > 200 and decoded[:, :4].mean() < 100  # stripe now on top


@pytest.mark.parametrize("payload,match", [
    (b"", "empty"),
    (b"definitely not an image", "not a decodable image"),
])
def test_garbage_is_refused(payload, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(payload, GREY)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmnist_test, fmt):
    data = _encode(Image.fromarray(fmnist_test.images[0][..., 0]).resize((200, 200)), fmt)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated|not a decodable"):
        decode_image(data[: len(data) // 2], GREY)


def test_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100
    bomb = _encode(Image.new("1", (side, side)), "PNG")  # a few kB that would decode to > 16 Mpx
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(bomb, GREY)


def test_to_uint8_inverts_tensors(fmnist_test):
    images, _ = fmnist_test.head(3).tensors()
    assert np.array_equal(to_uint8(images.numpy()), fmnist_test.images[:3])
