"""The multipart bodies the Python client uploads: edit fields and image parts."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

ImageInput = str | os.PathLike[str] | bytes
"""An image to upload: a file path or the encoded bytes (PNG, JPEG or WebP)."""


async def multipart_form(
    fields: Mapping[str, Any],
    images: ImageInput | Sequence[ImageInput],
    mask: ImageInput | None = None,
) -> aiohttp.FormData:
    """``fields`` as form fields (None skipped, non-strings as JSON text), then each
    image as an ``image[]`` file part and the mask as ``mask``. Reading a path may
    raise OSError."""
    form = aiohttp.FormData()
    for name, value in fields.items():
        if value is not None:
            form.add_field(name, value if isinstance(value, str) else json.dumps(value))
    if isinstance(images, str | bytes | os.PathLike):
        images = [images]
    parts: list[tuple[str, ImageInput]] = [("image[]", image) for image in images]
    if mask is not None:
        parts.append(("mask", mask))
    for index, (name, image) in enumerate(parts):
        data, filename = await _read(image, f"image-{index}")
        form.add_field(name, data, filename=filename, content_type=image_type(data, filename))
    return form


def image_type(data: bytes, filename: str) -> str:
    """The content type of encoded image bytes, by their signature, else by file name."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def _read(image: ImageInput, fallback_name: str) -> tuple[bytes, str]:
    if isinstance(image, bytes):
        return image, fallback_name
    path = Path(image)
    return await asyncio.to_thread(path.read_bytes), path.name
