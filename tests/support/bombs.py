"""Decompression bombs: PNGs that declare far more pixels than they carry, lossless
WebPs of a few bytes that really decode to tens of millions of pixels, and a spy
that tells whether Pillow decoded any of them."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile


def declared_png(width: int, height: int) -> bytes:
    """A grayscale PNG that declares ``width``x``height`` but carries a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@functools.cache
def lossless_webp(side: int = 7000) -> bytes:
    """A valid lossless WebP of ``side`` x ``side`` pixels of one colour: under 100 bytes,
    ``side**2`` pixels (49 million, just under the per-image cap, by default) once
    decoded. Made once per size and process (encoding it takes a second or two)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(
        buffer, format="WEBP", lossless=True, quality=0, method=0
    )
    return buffer.getvalue()


def record_decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of every image Pillow decodes from now on, until ``monkeypatch`` undoes."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls
