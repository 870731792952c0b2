"""Checking input images before anything is stored or enqueued.

Every file is decoded fully with Pillow (so a truncated or corrupt file is caught
here, not in a worker minutes later), its real format is read from its bytes (the
file name and declared content type are ignored), and its pixel count is checked
against a cap *before* decoding, which defeats decompression bombs. These are
CPU-bound, synchronous functions: callers run them in an executor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from app.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.I)


@dataclass(frozen=True)
class CheckedImage:
    """An input image that decoded cleanly, with what was learnt about it."""

    data: bytes
    content_type: str
    width: int
    height: int
    has_alpha: bool
    sha256: str

    @property
    def extension(self) -> str:
        """png, jpeg or webp."""
        return self.content_type.removeprefix("image/")


def check_image(data: bytes, *, param: str, max_pixels: int) -> CheckedImage:
    """Decode ``data`` fully and describe it.

    Raises InvalidRequest (empty, truncated, corrupt, too many pixels) or
    UnsupportedMediaType (not a PNG, JPEG or WebP), naming ``param``.
    """
    if not data:
        raise InvalidRequest(f"{param} is empty", param=param)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
            if image_format not in CONTENT_TYPES:
                raise UnsupportedMediaType(
                    f"{param} is {image_format or 'an unknown'} image; use PNG, JPEG or WebP",
                    param=param,
                )
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    f"{param} is {width}x{height} ({width * height} pixels); "
                    f"the limit is {max_pixels} pixels",
                    param=param,
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            if image_format == "PNG" and not png_data_complete(data):
                raise InvalidRequest(
                    f"{param} is corrupt: its pixel data does not match its header", param=param
                )
            has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                "transparency" in image.info
            )
    except UnidentifiedImageError:
        if _has_allowed_signature(data):
            raise InvalidRequest(
                f"{param} could not be decoded (corrupt header)", param=param
            ) from None
        raise UnsupportedMediaType(
            f"{param} is not an image (PNG, JPEG or WebP expected)", param=param
        ) from None
    except Image.DecompressionBombError:  # Pillow's own guard, when Image.open sees the size
        raise InvalidRequest(
            f"{param} has too many pixels; the limit is {max_pixels} pixels", param=param
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(
            f"{param} could not be decoded (truncated or corrupt): {exc}", param=param
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    return CheckedImage(data, CONTENT_TYPES[image_format], width, height, has_alpha, digest)


def _has_allowed_signature(data: bytes) -> bool:
    return (
        data.startswith(b"\x89PNG\r\n\x1a\n")
        or data.startswith(b"\xff\xd8\xff")
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )


def check_mask(mask: CheckedImage, first: CheckedImage, *, param: str = "mask") -> None:
    """A mask must have an alpha channel and the first image's dimensions."""
    if (mask.width, mask.height) != (first.width, first.height):
        raise InvalidRequest(
            f"mask is {mask.width}x{mask.height} but the image is "
            f"{first.width}x{first.height}; they must match",
            param=param,
        )
    if not mask.has_alpha:
        raise InvalidRequest(
            "mask needs an alpha channel: transparent pixels mark the area to edit",
            param=param,
        )


def decode_data_url(url: str, *, param: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:<type>;base64,...`` URL.

    Raises InvalidRequest for anything else (remote URLs included) and
    PayloadTooLarge when the decoded bytes would exceed ``max_bytes``.
    """
    match = DATA_URL.match(url)
    if match is None:
        raise InvalidRequest(
            f"{param} must be a base64 data URL (data:image/png;base64,...)", param=param
        )
    encoded = url[match.end() :]
    if len(encoded) * 3 // 4 > max_bytes + 2:
        raise PayloadTooLarge(f"{param} is larger than {max_bytes} bytes", param=param)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64", param=param) from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{param} is larger than {max_bytes} bytes", param=param)
    return data


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def png_data_complete(data: bytes) -> bool:
    """True when a PNG's inflated pixel data is exactly as long as its header implies.

    Pillow pads a short image with black and ignores extra rows; this catches a
    header that lies about the size either way. Streams the inflation (bounded).
    """
    width, height, depth, colour, interlace = struct.unpack(">IIBB2xB", data[16:29])
    bits = depth * PNG_CHANNELS.get(colour, 4)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    expected = 0
    for x0, y0, dx, dy in passes:
        columns, rows = math.ceil((width - x0) / dx), math.ceil((height - y0) / dy)
        if columns > 0 and rows > 0:
            expected += rows * (1 + math.ceil(columns * bits / 8))
    inflater = zlib.decompressobj()
    produced = 0
    for chunk in _idat_chunks(data):
        pending = chunk
        while pending and produced <= expected:
            produced += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
        if produced > expected:
            return False
    produced += len(inflater.flush())
    return produced == expected


def _idat_chunks(data: bytes) -> list[bytes]:
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return chunks
