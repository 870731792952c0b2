"""Output conversion: an upstream's image re-encoded in the format the client asked for
(or kept as it came when it already is that).

Pure and CPU-bound (Pillow); callers run ``convert_output`` in an executor.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from app.core.images import Undecodable, has_alpha, open_untrusted
from app.errors import UpstreamBadResponse

MAX_PIXELS = 100_000_000  # larger images are refused before decoding (decompression bombs)
DEFAULT_QUALITY = 90  # jpeg/webp quality when the client gave no output_compression
DEFAULT_PNG_LEVEL = 6  # zlib level when the client gave no output_compression

# output_format -> (Pillow format, content type)
_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}


@dataclass(frozen=True)
class ConvertedImage:
    """An encoded output image and its dimensions in pixels."""

    data: bytes
    content_type: str
    width: int
    height: int


def convert_output(
    image_bytes: bytes,
    output_format: str,
    output_compression: int | None,
    background: str | None,
) -> ConvertedImage:
    """Decode an upstream's image and encode it as ``output_format`` (png, jpeg or webp).

    ``output_compression`` is OpenAI's 0-100 level: jpeg/webp quality is
    ``max(1, 100 - compression)``, png's zlib level ``round(compression * 9 / 100)``.
    Alpha is kept for png and webp unless ``background`` is "opaque"; jpeg is always
    flattened onto white. An image that already is what was asked for (that format, a
    single RGB or RGBA frame, nothing to flatten, no compression level given) is kept
    byte for byte once it decoded. Raises UpstreamBadResponse when the bytes are not a
    decodable image or it is over MAX_PIXELS; ValueError for an unknown format or a
    compression outside 0-100 (the request validation rules those out).
    """
    if output_format not in _FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}")
    if output_compression is not None and not 0 <= output_compression <= 100:
        raise ValueError(f"output_compression must be 0-100, got {output_compression}")
    pillow_format, content_type = _FORMATS[output_format]
    image = open_untrusted(image_bytes, max_pixels=MAX_PIXELS, refuse=_bad_response)
    if _already_as_asked(image, pillow_format, output_compression, background):
        # Re-encoding would give the same pixels at a high CPU cost (1 MP PNG: ~0.4 s).
        return ConvertedImage(image_bytes, content_type, image.width, image.height)
    image = _rgb_or_rgba(image)
    flatten = pillow_format == "JPEG" or background == "opaque"
    image = _flattened(image) if flatten else image
    buffer = io.BytesIO()
    try:
        image.save(buffer, pillow_format, **_encoder_options(pillow_format, output_compression))
    except (OSError, ValueError) as exc:
        raise UpstreamBadResponse(
            f"cannot encode the upstream's image as {output_format}: {exc}"
        ) from exc
    return ConvertedImage(buffer.getvalue(), content_type, image.width, image.height)


def _bad_response(why: Undecodable) -> UpstreamBadResponse:
    """The error for an upstream's image that ``open_untrusted`` would not decode."""
    if why.reason == "pixels":
        return UpstreamBadResponse(
            f"the upstream's image is {why.width}x{why.height}, over the {MAX_PIXELS} pixel limit"
        )
    if why.reason == "bomb":
        return UpstreamBadResponse(f"the upstream's image is too large: {why.detail}")
    return UpstreamBadResponse(f"the upstream's answer is not a decodable image: {why.detail}")


def _already_as_asked(
    image: Image.Image, pillow_format: str, compression: int | None, background: str | None
) -> bool:
    """Whether converting ``image`` would only re-encode the same pixels in its own format."""
    if image.format != pillow_format or compression is not None:
        return False
    if getattr(image, "n_frames", 1) != 1 or "transparency" in image.info:
        return False
    if image.mode == "RGB":
        return True
    return image.mode == "RGBA" and pillow_format != "JPEG" and background != "opaque"


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    """``image`` as RGB or RGBA (first frame of an animation)."""
    return image.convert("RGBA" if has_alpha(image) else "RGB")


def _flattened(image: Image.Image) -> Image.Image:
    """``image`` composited onto white, as RGB."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")


def _encoder_options(pillow_format: str, compression: int | None) -> dict[str, int]:
    if pillow_format == "PNG":
        level = DEFAULT_PNG_LEVEL if compression is None else round(compression * 9 / 100)
        return {"compress_level": level}
    quality = DEFAULT_QUALITY if compression is None else max(1, 100 - compression)
    return {"quality": quality}
