"""Image bytes <-> uint8 arrays with Pillow: any common format and mode in, model-shaped arrays out."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from purifier.errors import ImageDecodeError

MAX_IMAGE_PIXELS = 4096 * 4096
"""Decompression-bomb limit: larger images are refused before their pixels are decoded."""
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
MAX_IMAGE_SIDE = 16384
MAX_ASPECT_RATIO = 32


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode (16-bit, CMYK, palette, alpha, ...) to 'L' or 'RGB'."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or np.asarray(image).max() > 255 else 1.0
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) * scale, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # Fashion-MNIST-style black ground
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def _check_dimensions(width: int, height: int) -> None:
    """Refuse sizes no photograph of an object has, before any pixel is decompressed."""
    if width < 1 or height < 1 or max(width, height) > MAX_IMAGE_SIDE or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageDecodeError(
            f"absurd image dimensions {width}x{height} (sides up to {MAX_IMAGE_SIDE}, aspect ratio up to {MAX_ASPECT_RATIO}); send the photo itself",
            "bad_dimensions",
        )


def decode_image(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Decode encoded image bytes into a uint8 (H, W, C) array of model ``shape`` = (C, H, W).

    EXIF orientation is applied, any mode is converted, and the image is resized (area
    averaging) when its size differs. Raises ImageDecodeError with a one-line reason.
    """
    channels, height, width = shape
    if not data:
        raise ImageDecodeError("empty image: send the image file's bytes as the request body", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                _check_dimensions(*opened.size)
                opened.seek(0)  # first frame of animations
                image = ImageOps.exif_transpose(opened)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"image exceeds the limit of {MAX_IMAGE_PIXELS} pixels; send a smaller image", "too_many_pixels") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a decodable image: send PNG, JPEG, WebP, BMP, TIFF or GIF bytes", "not_an_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image ({error}); re-encode the file and send it again", "corrupt") from None
    image = _to_mode(image, channels)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BOX if image.width >= width else Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, C) array with C in {1, 3} as PNG bytes."""
    squeezed = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(squeezed).save(buffer, format="PNG")
    return buffer.getvalue()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float NCHW in [0, 1] -> uint8 NHWC (rounded), the inverse of ImageDataset.tensors()."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
