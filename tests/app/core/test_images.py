"""Checking uploaded images: formats, corrupt and oversized files, masks, data URLs."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageFile

from app.core.images import CheckedImage, check_image, check_mask, decode_data_url
from app.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from tests.support.images import data_url, encode, mask, png

MAX_PIXELS = 50_000_000


def checked(data: bytes, max_pixels: int = MAX_PIXELS) -> CheckedImage:
    return check_image(data, param="image[]", max_pixels=max_pixels)


def with_ihdr_size(data: bytes, width: int, height: int, *, fix_crc: bool = True) -> bytes:
    """``data`` (a PNG) with its IHDR declaring ``width``x``height``."""
    patched = bytearray(data)
    assert patched[12:16] == b"IHDR"
    patched[16:24] = struct.pack(">II", width, height)
    if fix_crc:
        patched[29:33] = struct.pack(">I", zlib.crc32(bytes(patched[12:29])))
    return bytes(patched)


def declared_png(width: int, height: int) -> bytes:
    """A grayscale PNG that declares ``width``x``height`` but carries a few bytes of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def palette_with_transparency() -> bytes:
    image = Image.new("P", (64, 48))
    image.info["transparency"] = 0
    return encode(image, "PNG")


@pytest.mark.parametrize(
    ("make", "content_type", "has_alpha"),
    [
        (lambda: png(64, 48), "image/png", False),
        (lambda: mask(64, 48), "image/png", True),
        (palette_with_transparency, "image/png", True),
        (lambda: encode(Image.new("RGB", (64, 48), "red"), "JPEG"), "image/jpeg", False),
        (lambda: encode(Image.new("RGB", (64, 48), "red"), "WEBP"), "image/webp", False),
        (lambda: encode(Image.new("RGBA", (64, 48), (1, 2, 3, 4)), "WEBP"), "image/webp", True),
    ],
)
def test_accepted_formats(make: Callable[[], bytes], content_type: str, has_alpha: bool) -> None:
    data = make()
    image = checked(data)
    assert (image.content_type, image.has_alpha) == (content_type, has_alpha)
    assert (image.width, image.height) == (64, 48)
    assert image.data == data
    assert image.extension == content_type.removeprefix("image/")


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF"])
def test_other_formats_unsupported(image_format: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        checked(encode(Image.new("RGB", (16, 16), "blue"), image_format))
    assert caught.value.status == 415
    assert caught.value.param == "image[]"
    assert image_format in caught.value.message


def test_random_bytes_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        checked(random.Random(7).randbytes(4096))
    assert caught.value.status == 415


def test_empty_file() -> None:
    with pytest.raises(InvalidRequest) as caught:
        checked(b"")
    assert (caught.value.status, caught.value.param) == (400, "image[]")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_truncated_file(image_format: str) -> None:
    data = encode(Image.effect_noise((128, 128), 60).convert("RGB"), image_format)
    with pytest.raises(InvalidRequest) as caught:
        checked(data[: len(data) // 2])
    assert caught.value.status == 400
    assert "truncated or corrupt" in caught.value.message


def test_pixel_cap() -> None:
    assert checked(png(64, 48), max_pixels=64 * 48).width == 64
    with pytest.raises(InvalidRequest) as caught:
        checked(png(64, 48), max_pixels=64 * 48 - 1)
    assert caught.value.status == 400
    assert "the limit is 3071 pixels" in caught.value.message


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of every image Pillow decodes from now on."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_decompression_bomb_refused_before_decoding(loads: list[tuple[int, int]]) -> None:
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")
    assert len(bomb) < 20_000
    assert loads == []
    with pytest.raises(InvalidRequest) as caught:
        checked(bomb, max_pixels=1_000_000)
    assert "64000000 pixels" in caught.value.message
    assert "the limit is 1000000" in caught.value.message
    assert loads == []
    checked(png(16, 16), max_pixels=1_000_000)
    assert loads == [(16, 16)]  # the spy does see decodes


@pytest.mark.parametrize("side", [10_000, 30_000])
def test_beyond_pillows_own_limit_refused(side: int, loads: list[tuple[int, int]]) -> None:
    with pytest.raises(InvalidRequest):
        checked(declared_png(side, side), max_pixels=10**10)
    assert loads == []


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (4096, 4096),
        (128, 48),
        (65, 48),
        (64, 96),
        (64, 24),
    ],
)
def test_lying_header_never_accepted(width: int, height: int) -> None:
    liar = with_ihdr_size(png(64, 48), width, height)
    with pytest.raises(InvalidRequest) as caught:
        checked(liar)
    assert caught.value.param == "image[]"


def test_bad_header_crc_refused() -> None:
    with pytest.raises((InvalidRequest, UnsupportedMediaType)):
        checked(with_ihdr_size(png(64, 48), 64, 96, fix_crc=False))


def test_mask_matching_image_accepted() -> None:
    check_mask(checked(mask(64, 48)), checked(png(64, 48)))


def test_mask_of_another_size() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_mask(checked(mask(32, 48)), checked(png(64, 48)))
    assert caught.value.param == "mask"
    assert "32x48" in caught.value.message and "64x48" in caught.value.message


def test_mask_without_alpha() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_mask(checked(png(64, 48)), checked(png(64, 48)))
    assert caught.value.param == "mask"
    assert "alpha" in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        data_url(b"hello image"),
        data_url(b"hello image", "image/webp"),
        "data:;base64," + base64.b64encode(b"hello image").decode(),
        "DATA:image/png;name=a.png;base64," + base64.b64encode(b"hello image").decode(),
    ],
)
def test_data_url_decoded(url: str) -> None:
    assert decode_data_url(url, param="images[0].image_url", max_bytes=1000) == b"hello image"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "data:image/png,rawbytes",
        "image/png;base64,aGk=",
        "",
    ],
)
def test_not_a_data_url(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_data_url(url, param="images[0].image_url", max_bytes=1000)
    assert caught.value.param == "images[0].image_url"
    assert "data URL" in caught.value.message


@pytest.mark.parametrize("payload", ["!!!!", "aGk", "aG k=", "aGk=\n"])
def test_data_url_invalid_base64(payload: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_data_url(f"data:image/png;base64,{payload}", param="u", max_bytes=1000)
    assert caught.value.param == "u"
    assert "base64" in caught.value.message


def test_data_url_size_limit() -> None:
    assert decode_data_url(data_url(b"x" * 10), param="u", max_bytes=10) == b"x" * 10
    with pytest.raises(PayloadTooLarge) as caught:
        decode_data_url(data_url(b"x" * 1000), param="u", max_bytes=10)
    assert (caught.value.status, caught.value.param) == (413, "u")


@pytest.mark.parametrize("size", [11, 12])
def test_data_url_just_over_the_limit(size: int) -> None:
    with pytest.raises(PayloadTooLarge):
        decode_data_url(data_url(b"x" * size), param="u", max_bytes=10)
