"""Test images made in memory with Pillow."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """An RGB PNG with a square in the middle, so edits are visible."""
    image = Image.new("RGB", (width, height), color)
    ImageDraw.Draw(image).rectangle(
        [width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(20, 20, 220)
    )
    return encode(image, "PNG")


def solid_png(
    colour: tuple[int, int, int, int] = (255, 0, 0, 255), size: tuple[int, int] = (8, 8)
) -> bytes:
    """An RGBA PNG of one colour (red unless told), so any pixel shows what an edit did."""
    return encode(Image.new("RGBA", size, colour), "PNG")


def rgba_at(data: bytes, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    """The RGBA value of image bytes at ``xy``."""
    value = decode(data).convert("RGBA").getpixel(xy)
    assert isinstance(value, tuple)
    return value


def mask(width: int = 64, height: int = 48) -> bytes:
    """An RGBA mask whose left half is transparent (the area to edit)."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    ImageDraw.Draw(image).rectangle([0, 0, width // 2 - 1, height - 1], fill=(0, 0, 0, 0))
    return encode(image, "PNG")


def encode(image: Image.Image, image_format: str) -> bytes:
    """``image`` encoded as ``image_format`` (PNG, JPEG, WEBP, GIF ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def data_url(data: bytes, content_type: str = "image/png") -> str:
    """A base64 data URL of ``data``."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def decode(data: bytes) -> Image.Image:
    """Open image bytes fully."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
