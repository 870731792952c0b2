"""What the fake upstream makes of a request: checked parameters, the edited image, usage.

The edit is simple and visible: the first image's colours are inverted (only where
the mask is transparent, when there is one), then it is resized to ``size`` and
encoded as ``output_format``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageChops, UnidentifiedImageError

from tests.support.fakes.upstream_requests import BadRequest, RecordedRequest

MAX_IMAGES = 16
"""Most input images one request may carry."""

MAX_SIDE = 4096
"""Largest width or height accepted in ``size``."""

FORMATS = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
"""Output formats: Pillow's name and the content type."""

PILLOW_FORMATS = frozenset(pillow_format for pillow_format, _ in FORMATS.values())
"""The image formats accepted as input."""

CHOICES = {
    "quality": frozenset({"auto", "low", "medium", "high", "standard", "hd"}),
    "background": frozenset({"auto", "transparent", "opaque"}),
    "output_format": frozenset(FORMATS),
    "response_format": frozenset({"url", "b64_json"}),
}
"""Allowed values of the enumerated parameters."""


@dataclass(frozen=True)
class EditSpec:
    """A checked edit request: what to produce."""

    prompt: str
    images: tuple[bytes, ...]
    mask: bytes | None
    n: int
    size: tuple[int, int] | None
    output_format: str
    compression: int | None
    quality: str
    background: str = "auto"
    stream: bool = False  # answer OpenAI's edit event stream instead of JSON
    partial_images: int = 0  # previews to stream before the final image (0-3)


def estimated_usage(spec: EditSpec, size: tuple[int, int]) -> dict[str, Any]:
    """The usage the fake reports, in the OpenAI images shape.

    Text tokens: one per 4 prompt characters (at least 1); image tokens: 85 per input
    image and mask; output tokens: one per 4096 output pixels (at least 1), times n.
    """
    text_tokens = max(1, len(spec.prompt) // 4)
    image_tokens = 85 * (len(spec.images) + (spec.mask is not None))
    output_tokens = spec.n * max(1, size[0] * size[1] // 4096)
    return {
        "total_tokens": text_tokens + image_tokens + output_tokens,
        "input_tokens": text_tokens + image_tokens,
        "output_tokens": output_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
    }


def check_edit_request(record: RecordedRequest) -> EditSpec:
    """The edit a parsed request asks for; BadRequest naming the bad parameter."""
    fields = record.fields
    for name in ("model", "prompt"):
        if not fields.get(name, "").strip():
            raise BadRequest(f"{name} is required", param=name)
    if not 1 <= record.image_count <= MAX_IMAGES:
        raise BadRequest(f"send 1 to {MAX_IMAGES} images, not {record.image_count}", param="image")
    for name, allowed in CHOICES.items():
        if name in fields and fields[name] not in allowed:
            raise BadRequest(f"{name} must be one of {sorted(allowed)}", param=name)
    for index, image in enumerate(record.images):
        _decode(image, f"image[{index}]", load=False)
    if record.mask is not None:
        _decode(record.mask, "mask", load=False)
    compression = _int_field(fields, "output_compression", 0, 100)
    return EditSpec(
        prompt=fields["prompt"],
        images=tuple(record.images),
        mask=record.mask,
        n=_int_field(fields, "n", 1, 10) or 1,
        size=_size(fields.get("size")),
        output_format=fields.get("output_format", "png"),
        compression=compression,
        quality=fields.get("quality", "auto"),
        background=fields.get("background", "auto"),
        stream=_flag(fields, "stream"),
        partial_images=_int_field(fields, "partial_images", 0, 3) or 0,
    )


def _flag(fields: Mapping[str, str], name: str) -> bool:
    value = fields.get(name, "false").lower()
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false", param=name)
    return value == "true"


def _int_field(fields: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if name not in fields:
        return None
    try:
        value = int(fields[name])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}", param=name)
    return value


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None or value == "auto":
        return None
    width, _, height = value.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise BadRequest("size must be 'auto' or WIDTHxHEIGHT", param="size")
    if not (1 <= int(width) <= MAX_SIDE and 1 <= int(height) <= MAX_SIDE):
        raise BadRequest(f"size must be at most {MAX_SIDE}x{MAX_SIDE}", param="size")
    return int(width), int(height)


def render_edit(spec: EditSpec) -> tuple[bytes, tuple[int, int]]:
    """The edited image's bytes and size (CPU work: run it in an executor).

    Inverts the first image's colours where the mask is transparent (everywhere
    without a mask), resizes to ``spec.size`` and encodes as ``spec.output_format``.
    """
    original = _decode(spec.images[0], "image").convert("RGBA")
    inverted = ImageChops.invert(original.convert("RGB")).convert("RGBA")
    inverted.putalpha(original.getchannel("A"))
    edited = inverted
    if spec.mask is not None:
        keep = _decode(spec.mask, "mask").convert("RGBA").getchannel("A").resize(original.size)
        edited = Image.composite(original, inverted, keep)
    if spec.size is not None:
        edited = edited.resize(spec.size)
    pillow_format, _ = FORMATS[spec.output_format]
    if pillow_format == "JPEG":
        edited = edited.convert("RGB")
    options: dict[str, Any] = {}
    if spec.compression is not None and pillow_format != "PNG":
        options["quality"] = 100 - spec.compression
    buffer = io.BytesIO()
    edited.save(buffer, pillow_format, **options)
    return buffer.getvalue(), edited.size


def _decode(data: bytes, param: str, *, load: bool = True) -> Image.Image:
    """The image in ``data`` (only its header read unless ``load``); BadRequest if none."""
    try:
        image = Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS))
        if image.width * image.height > MAX_SIDE * MAX_SIDE:
            raise BadRequest(f"{param} is larger than {MAX_SIDE}x{MAX_SIDE}", param=param)
        if load:
            image.load()
    except UnidentifiedImageError as exc:
        raise BadRequest(f"{param} is not a PNG, JPEG or WebP image", param=param) from exc
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"{param} cannot be decoded: {exc}", param=param) from exc
    return image
