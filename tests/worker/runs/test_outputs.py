"""Re-encoding an upstream's image into the client's output format."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from app.errors import UpstreamBadResponse
from tests.support.bombs import declared_png, record_decodes
from worker.runs import outputs
from worker.runs.outputs import convert_output


def encoded(image: Image.Image, fmt: str = "PNG", *, lossless: bool = False) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, lossless=lossless)
    return buffer.getvalue()


def photo_like(width: int = 256, height: int = 256) -> Image.Image:
    """Gradients plus noise: detailed enough that compression levels differ."""
    noise = Image.effect_noise((width, height), 40).convert("L")
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (gradient, noise, gradient.rotate(90)))


def half_transparent() -> Image.Image:
    image = Image.new("RGBA", (32, 16), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 16, 16))
    return image


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of every image Pillow decodes from now on."""
    return record_decodes(monkeypatch)


def test_png_keeps_alpha() -> None:
    result = convert_output(encoded(half_transparent(), "WEBP", lossless=True), "png", None, None)
    image = decoded(result.data)
    assert (result.content_type, result.width, result.height) == ("image/png", 32, 16)
    assert image.format == "PNG"
    assert image.getpixel((0, 0)) == (0, 0, 0, 0)
    assert image.getpixel((20, 5)) == (0, 0, 255, 255)


def test_webp_keeps_alpha_unless_opaque() -> None:
    kept = decoded(convert_output(encoded(half_transparent()), "webp", 0, None).data)
    assert kept.format == "WEBP"
    assert kept.convert("RGBA").getchannel("A").getextrema() == (0, 255)
    flat = decoded(convert_output(encoded(half_transparent()), "webp", 0, "opaque").data)
    assert flat.convert("RGBA").getchannel("A").getextrema() == (255, 255)


def test_jpeg_flattens_alpha_onto_white() -> None:
    result = convert_output(encoded(half_transparent()), "jpeg", None, None)
    image = decoded(result.data)
    assert result.content_type == "image/jpeg"
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 16))
    pixel = image.getpixel((4, 8))
    assert isinstance(pixel, tuple)
    assert min(pixel) > 240


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_more_compression_gives_fewer_bytes(output_format: str) -> None:
    source = encoded(photo_like())
    sizes = [
        len(convert_output(source, output_format, level, None).data) for level in (0, 30, 60, 90)
    ]
    assert sizes == sorted(sizes, reverse=True)
    assert len(set(sizes)) == len(sizes)


def test_png_compression_sets_the_zlib_level() -> None:
    source = encoded(photo_like())
    stored = convert_output(source, "png", 0, None).data
    packed = convert_output(source, "png", 100, None).data
    assert len(stored) > len(packed)
    assert decoded(stored).tobytes() == decoded(packed).tobytes()


def test_an_image_already_as_asked_is_kept_byte_for_byte() -> None:
    source = encoded(photo_like(64, 48))
    kept = convert_output(source, "png", None, None)
    assert (kept.data, kept.content_type, kept.width, kept.height) == (
        source,
        "image/png",
        64,
        48,
    )
    assert convert_output(source, "png", 50, None).data != source  # a level was asked for
    assert decoded(convert_output(source, "jpeg", None, None).data).format == "JPEG"
    transparent = encoded(half_transparent())
    assert convert_output(transparent, "png", None, None).data == transparent
    flat = convert_output(transparent, "png", None, "opaque").data
    assert decoded(flat).convert("RGBA").getchannel("A").getextrema() == (255, 255)


def test_palette_and_grayscale_inputs_convert() -> None:
    palette = Image.new("P", (8, 8), 3)
    assert decoded(convert_output(encoded(palette), "jpeg", None, None).data).mode == "RGB"
    gray = encoded(Image.new("LA", (8, 8), (100, 0)))
    assert decoded(convert_output(gray, "png", None, None).data).mode == "RGBA"


def test_a_megapixel_converts_quickly() -> None:
    source = encoded(photo_like(1000, 1000))
    started = time.monotonic()
    for output_format in ("png", "jpeg", "webp"):
        assert convert_output(source, output_format, None, None).width == 1000
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image", b"<html>502 Bad Gateway</html>", encoded(photo_like(32, 32))[:80]],
)
def test_undecodable_bytes_are_a_bad_response(data: bytes) -> None:
    with pytest.raises(UpstreamBadResponse, match="not a decodable image"):
        convert_output(data, "png", None, None)


def test_images_over_100_megapixels_are_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, loads: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # only our own guard applies
    with pytest.raises(UpstreamBadResponse, match="over the 100000000 pixel limit"):
        convert_output(declared_png(12_000, 10_000), "png", None, None)
    assert loads == []


def test_a_real_bomb_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, loads: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(outputs, "MAX_PIXELS", 1_000_000)
    bomb = encoded(Image.new("1", (8000, 8000)))  # 64 MP, under Pillow's own limit
    assert len(bomb) < 20_000
    with pytest.raises(UpstreamBadResponse, match="8000x8000, over the 1000000 pixel limit"):
        convert_output(bomb, "png", None, None)
    assert loads == []
    assert convert_output(encoded(half_transparent()), "png", None, None).width == 32
    assert loads == [(32, 16)]  # the spy does see decodes


def test_pillow_bomb_limit_is_a_bad_response(loads: list[tuple[int, int]]) -> None:
    with pytest.raises(UpstreamBadResponse, match="too large"):
        convert_output(declared_png(40_000, 40_000), "png", None, None)
    assert loads == []


def test_bad_arguments_are_programming_errors() -> None:
    source = encoded(half_transparent())
    with pytest.raises(ValueError, match="output_format"):
        convert_output(source, "gif", None, None)
    with pytest.raises(ValueError, match="output_compression"):
        convert_output(source, "jpeg", 101, None)
