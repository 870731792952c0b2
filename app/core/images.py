"""Decoding untrusted images safely, and checking input images before anything is
stored or enqueued.

``open_untrusted`` is the one decode of image bytes from outside (a client's inputs,
an upstream's answers): the real format is read from the bytes (file names and
declared content types are ignored), the pixel count is checked against a cap
*before* decoding, which defeats decompression bombs, and every way Pillow fails
becomes the caller's own error. An input is checked in two steps: ``read_header``
reads what its header declares (format, size, alpha) and refuses what that alone
shows, so a request's inputs can all be refused, and a mask compared with its image
(``check_mask``), before any of them is decoded; then ``check_image`` decodes it, so a
truncated or corrupt file is caught here, not in a worker minutes later.
``check_image`` is CPU-bound: callers run it in an executor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import struct
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Literal

from PIL import Image, UnidentifiedImageError

from app.errors import EditqError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DECODE_WEIGHT = {"image/webp": 4}
"""How many pixels of a PNG or JPEG (4 bytes each while Pillow decodes them) one pixel of
a format costs in memory while it is decoded. Pillow decodes a WebP into an RGBA buffer
and copies it twice on the way to an image: 16 bytes a pixel (measured with Pillow 13:
773 MB at peak for a 7000x7000 lossless WebP, 211 MB for the same PNG). Pixel caps and
decode budgets count ``pixels x weight``, so a WebP may have a quarter of the pixels."""
DATA_URL = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.I | re.ASCII
)


@dataclass(frozen=True)
class CheckedImage:
    """An input image that decoded cleanly, with what was learnt about it."""

    data: bytes
    content_type: str
    width: int
    height: int
    has_alpha: bool
    sha256: str
    stored_at: str | None = None  # an object key already holding exactly these bytes

    @property
    def extension(self) -> str:
        """png, jpeg or webp."""
        return self.content_type.removeprefix("image/")


@dataclass(frozen=True)
class DeclaredImage:
    """What an input image's header declares, nothing decoded: content type, width and
    height in pixels, and whether it has alpha (a mode with alpha or a transparent
    colour, both known before any pixel is decoded)."""

    content_type: str
    width: int
    height: int
    has_alpha: bool

    @property
    def pixels(self) -> int:
        """Width x height."""
        return self.width * self.height

    @property
    def decode_cost(self) -> int:
        """The pixels its decode costs in memory (``pixels x DECODE_WEIGHT``)."""
        return self.pixels * decode_weight(self.content_type)


@dataclass(frozen=True)
class Undecodable:
    """Why ``open_untrusted`` did not decode some bytes, for its caller to word an error.

    ``reason`` is ``unknown`` (no image format recognised), ``format`` (a format the
    caller does not take), ``pixels`` (over the caller's pixel cap), ``bomb`` (over
    Pillow's own decompression-bomb limit) or ``corrupt`` (truncated or corrupt).
    ``detail`` says it in words (Pillow's message when Pillow refused); ``image_format``
    is Pillow's name of the format and ``width`` x ``height`` the declared size in
    pixels, when they were read ("" and 0 otherwise).
    """

    reason: Literal["unknown", "format", "pixels", "bomb", "corrupt"]
    detail: str
    image_format: str = ""
    width: int = 0
    height: int = 0
    limit: int = 0  # with "pixels": the most pixels an image of its format may have


def decode_weight(content_type: str) -> int:
    """The ``DECODE_WEIGHT`` of an image type (1 for any not listed)."""
    return DECODE_WEIGHT.get(content_type, 1)


def open_untrusted(
    data: bytes,
    *,
    max_pixels: int,
    refuse: Callable[[Undecodable], Exception],
    formats: Collection[str] | None = None,
    decode: bool = True,
) -> Image.Image:
    """The image in ``data``, fully decoded, once it was safe to decode it.

    Its format is read from the bytes and, when ``formats`` (Pillow names: "PNG",
    "JPEG", ...) is given, must be one of them; then its declared width x height must
    be at most ``max_pixels``, all before any pixel is decoded (and again after, for
    formats that learn their size while decoding; Pillow's own bomb limit bounds that
    case). Any failure raises ``refuse(why)``: the caller's error class and wording.
    With ``decode=False`` only the header is read and checked: the image comes back
    undecoded, for its declared format, size and mode.
    """
    image: Image.Image | None = None
    cause: Exception | None = None
    try:
        image = Image.open(io.BytesIO(data))
        why = _declared_problem(image, max_pixels, formats)
        if why is None and not decode:
            return image
        if why is None:
            image.load()
            # Some formats find their real size only while decoding: check it again.
            # (No warnings filter here: it is process-wide state, and this runs in
            # several executor threads at once.)
            why = _declared_problem(image, max_pixels, formats)
            if why is None:
                return image
    except UnidentifiedImageError as exc:
        why, cause = Undecodable("unknown", str(exc)), exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        why, cause = Undecodable("bomb", str(exc)), exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        why, cause = Undecodable("corrupt", str(exc) or type(exc).__name__), exc
    if image is not None:
        image.close()
    raise refuse(why) from cause


def _declared_problem(
    image: Image.Image, max_pixels: int, formats: Collection[str] | None
) -> Undecodable | None:
    image_format = image.format or ""
    if formats is not None and image_format not in formats:
        detail = f"{image_format or 'an unknown format'} is not one of {', '.join(formats)}"
        return Undecodable("format", detail, image_format)
    width, height = image.size
    weight = decode_weight(CONTENT_TYPES.get(image_format, ""))
    if width * height * weight > max_pixels:
        limit = max_pixels // weight
        detail = f"{width}x{height} is over {limit} pixels"
        return Undecodable("pixels", detail, image_format, width, height, limit)
    return None


def read_header(data: bytes, *, param: str, max_pixels: int) -> DeclaredImage:
    """What ``data``'s header declares, nothing decoded (cheap enough for the event loop).

    Raises what ``check_image`` would for an image its header alone refuses, naming
    ``param``: InvalidRequest (empty, a corrupt header, more than ``max_pixels``) or
    UnsupportedMediaType (not a PNG, JPEG or WebP).
    """
    refuse = partial(_input_refusal, data=data, param=param, max_pixels=max_pixels)
    with open_untrusted(
        data, max_pixels=max_pixels, refuse=refuse, formats=CONTENT_TYPES, decode=False
    ) as image:
        width, height = image.size
        return DeclaredImage(CONTENT_TYPES[image.format or ""], width, height, has_alpha(image))


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` has an alpha channel or a transparent colour."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def check_image(data: bytes, *, param: str, max_pixels: int) -> CheckedImage:
    """Decode ``data`` fully and describe it.

    Raises InvalidRequest (empty, truncated, corrupt, too many pixels) or
    UnsupportedMediaType (not a PNG, JPEG or WebP), naming ``param``.
    """
    refuse = partial(_input_refusal, data=data, param=param, max_pixels=max_pixels)
    with open_untrusted(data, max_pixels=max_pixels, refuse=refuse, formats=CONTENT_TYPES) as image:
        content_type = CONTENT_TYPES[image.format or ""]
        if content_type == "image/png" and not png_data_complete(data):
            raise InvalidRequest(
                f"{param} is corrupt: its pixel data does not match its header", param=param
            )
        width, height = image.size
        alpha = has_alpha(image)
    digest = hashlib.sha256(data).hexdigest()
    return CheckedImage(data, content_type, width, height, alpha, digest)


def _input_refusal(why: Undecodable, *, data: bytes, param: str, max_pixels: int) -> EditqError:
    if not data:
        return InvalidRequest(f"{param} is empty", param=param)
    if why.reason == "unknown" and _has_allowed_signature(data):
        return InvalidRequest(f"{param} could not be decoded (corrupt header)", param=param)
    if why.reason == "unknown":
        return UnsupportedMediaType(
            f"{param} is not an image (PNG, JPEG or WebP expected)", param=param
        )
    if why.reason == "format":
        return UnsupportedMediaType(
            f"{param} is {why.image_format or 'an unknown'} image; use PNG, JPEG or WebP",
            param=param,
        )
    if why.reason == "pixels":
        return InvalidRequest(
            f"{param} is {why.width}x{why.height} ({why.width * why.height} pixels); "
            f"the limit is {why.limit or max_pixels} pixels"
            + (" for a WebP (it decodes at 4x the memory)" if why.image_format == "WEBP" else ""),
            param=param,
        )
    if why.reason == "bomb":  # Pillow's own guard, when it sees the size first
        return InvalidRequest(
            f"{param} has too many pixels; the limit is {max_pixels} pixels", param=param
        )
    return InvalidRequest(
        f"{param} could not be decoded (truncated or corrupt): {why.detail}", param=param
    )


def _has_allowed_signature(data: bytes) -> bool:
    return (
        data.startswith(b"\x89PNG\r\n\x1a\n")
        or data.startswith(b"\xff\xd8\xff")
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )


def check_mask(mask: DeclaredImage, first: DeclaredImage, *, param: str = "mask") -> None:
    """A mask must have an alpha channel and the first image's dimensions; both as
    their headers declare them, so it is refused before either is decoded."""
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
