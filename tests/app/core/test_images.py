"""Decoding untrusted images, and checking uploaded ones: formats, corrupt and oversized
files, masks, data URLs."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image

from app.core.images import (
    CheckedImage,
    DeclaredImage,
    Undecodable,
    check_image,
    check_mask,
    decode_data_url,
    open_untrusted,
    read_header,
)
from app.errors import EditqError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from tests.support.bombs import declared_png, record_decodes
from tests.support.images import data_url, encode, mask, png

MAX_PIXELS = 50_000_000


def checked(data: bytes, max_pixels: int = MAX_PIXELS) -> CheckedImage:
    return check_image(data, param="image[]", max_pixels=max_pixels)


def declared(data: bytes, max_pixels: int = MAX_PIXELS) -> DeclaredImage:
    return read_header(data, param="image[]", max_pixels=max_pixels)


def with_ihdr_size(data: bytes, width: int, height: int, *, fix_crc: bool = True) -> bytes:
    """``data`` (a PNG) with its IHDR declaring ``width``x``height``."""
    patched = bytearray(data)
    assert patched[12:16] == b"IHDR"
    patched[16:24] = struct.pack(">II", width, height)
    if fix_crc:
        patched[29:33] = struct.pack(">I", zlib.crc32(bytes(patched[12:29])))
    return bytes(patched)


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
    header = declared(data)  # the header alone says the same
    assert header == DeclaredImage(content_type, 64, 48, has_alpha)


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
    return record_decodes(monkeypatch)


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


class Refused(Exception):
    """A caller's own error for bytes ``open_untrusted`` would not decode."""

    def __init__(self, why: Undecodable) -> None:
        super().__init__(why.detail)
        self.why = why


def refusal(
    data: bytes, *, max_pixels: int = MAX_PIXELS, formats: set[str] | None = None
) -> Undecodable:
    """Why ``open_untrusted`` refused ``data``; it must raise the caller's error."""
    with pytest.raises(Refused) as caught:
        open_untrusted(data, max_pixels=max_pixels, refuse=Refused, formats=formats)
    return caught.value.why


def test_open_untrusted_decodes_up_to_the_cap(loads: list[tuple[int, int]]) -> None:
    with open_untrusted(png(64, 48), max_pixels=64 * 48, refuse=Refused) as image:
        assert (image.format, image.size) == ("PNG", (64, 48))
        assert loads == [(64, 48)]  # decoded already, not lazily later
        assert image.getpixel((32, 24)) == (20, 20, 220)
    loads.clear()
    why = refusal(png(64, 48), max_pixels=64 * 48 - 1)
    assert (why.reason, why.image_format, why.width, why.height) == ("pixels", "PNG", 64, 48)
    assert loads == []


def test_open_untrusted_refuses_a_bomb_before_decoding(loads: list[tuple[int, int]]) -> None:
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")  # under Pillow's own limit
    assert len(bomb) < 20_000
    why = refusal(bomb, max_pixels=1_000_000)
    assert (why.reason, why.width, why.height) == ("pixels", 8000, 8000)
    assert "8000x8000" in why.detail
    assert refusal(declared_png(30_000, 30_000), max_pixels=10**10).reason == "bomb"
    assert loads == []


def test_open_untrusted_checks_the_format_first(loads: list[tuple[int, int]]) -> None:
    gif_bomb = encode(Image.new("1", (8000, 8000)), "GIF")
    why = refusal(gif_bomb, max_pixels=1_000_000, formats={"PNG", "JPEG"})
    assert (why.reason, why.image_format) == ("format", "GIF")
    assert refusal(gif_bomb, max_pixels=1_000_000).reason == "pixels"
    assert loads == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "unknown"),
        (b"<html>502 Bad Gateway</html>", "unknown"),
        (encode(Image.effect_noise((128, 128), 60).convert("RGB"), "PNG")[:2000], "corrupt"),
        (encode(Image.effect_noise((128, 128), 60).convert("RGB"), "JPEG")[:1000], "corrupt"),
    ],
)
def test_open_untrusted_turns_pillow_errors_into_the_callers(data: bytes, reason: str) -> None:
    why = refusal(data)
    assert why.reason == reason
    assert why.detail


def test_a_header_tells_what_a_decode_would_refuse_without_decoding(
    loads: list[tuple[int, int]],
) -> None:
    cases: list[tuple[bytes, int, type[EditqError], str]] = [
        (b"", MAX_PIXELS, InvalidRequest, "empty"),
        (b"<html>502 Bad Gateway</html>", MAX_PIXELS, UnsupportedMediaType, "not an image"),
        (encode(Image.new("RGB", (16, 16)), "GIF"), MAX_PIXELS, UnsupportedMediaType, "GIF"),
        (declared_png(8000, 8000), 1_000_000, InvalidRequest, "8000x8000"),
        (declared_png(30_000, 30_000), 10**10, InvalidRequest, "too many pixels"),
    ]
    for data, max_pixels, error, words in cases:
        with pytest.raises(error) as caught:
            declared(data, max_pixels=max_pixels)
        assert caught.value.param == "image[]"
        assert words in str(caught.value)
    assert declared(declared_png(7000, 7000)) == DeclaredImage("image/png", 7000, 7000, False)
    assert loads == []


def test_mask_matching_image_accepted() -> None:
    check_mask(declared(mask(64, 48)), declared(png(64, 48)))


def test_mask_of_another_size() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_mask(declared(mask(32, 48)), declared(png(64, 48)))
    assert caught.value.param == "mask"
    assert "32x48" in caught.value.message and "64x48" in caught.value.message


def test_mask_without_alpha() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_mask(declared(png(64, 48)), declared(png(64, 48)))
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


def test_a_webp_pixel_counts_four_times_in_the_cap(loads: list[tuple[int, int]]) -> None:
    """A WebP decodes at 16 bytes a pixel against 4 for PNG and JPEG (Pillow 13), so
    it may have a quarter of the pixels; refused from its header, never decoded."""
    webp = encode(Image.new("RGB", (100, 100)), "WEBP")
    assert checked(webp, max_pixels=40_000).content_type == "image/webp"
    with pytest.raises(InvalidRequest) as caught:
        checked(webp, max_pixels=39_999)
    assert "the limit is 9999 pixels for a WebP" in caught.value.message
    assert checked(png(100, 100), max_pixels=10_000).width == 100
    decoded = len(loads)
    with pytest.raises(InvalidRequest):
        read_header(webp, param="image", max_pixels=39_999)
    assert len(loads) == decoded
    header = read_header(webp, param="image", max_pixels=40_000)
    assert (header.pixels, header.decode_cost) == (10_000, 40_000)
    assert read_header(png(100, 100), param="image", max_pixels=40_000).decode_cost == 10_000
