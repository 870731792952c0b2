"""Masks in the form an upstream understands (pure Pillow; CPU work, run it in an executor).

A job's mask follows OpenAI's convention: transparent pixels mark the area to edit.
``to_convention`` converts it for an upstream that declares the opposite convention;
``mask_as_instruction`` words the prompt for an upstream that takes no mask at all
and gets it as its last input image instead.
"""

from __future__ import annotations

import io

from PIL import ImageChops

from app.core.images import open_untrusted
from app.core.providers_config import MaskConvention

MAX_MASK_PIXELS = 100_000_000  # larger masks are refused before decoding (decompression bombs)


def to_convention(mask_png: bytes, convention: MaskConvention) -> bytes:
    """The OpenAI-convention mask ``mask_png`` (PNG, JPEG or WebP) as ``convention`` wants it.

    ``transparent_edits`` returns the bytes unchanged; ``opaque_edits`` returns an
    RGBA PNG with the alpha channel inverted (colours kept). Raises ValueError when
    the mask cannot be decoded or is over MAX_MASK_PIXELS.
    """
    if convention == "transparent_edits":
        return mask_png
    decoded = open_untrusted(
        mask_png,
        max_pixels=MAX_MASK_PIXELS,
        refuse=lambda why: ValueError(f"mask cannot be decoded: {why.detail}"),
    )
    with decoded:
        mask = decoded.convert("RGBA")
    mask.putalpha(ImageChops.invert(mask.getchannel("A")))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def mask_as_instruction(prompt: str, convention: MaskConvention) -> str:
    """``prompt`` followed by the instruction that the last attached image is a mask.

    The instruction names which mask pixels (transparent or opaque, by ``convention``)
    mark the area of the first image to edit.
    """
    edit, keep = ("transparent", "opaque")
    if convention == "opaque_edits":
        edit, keep = keep, edit
    instruction = (
        "The last attached image is not an input but a mask for the first image: "
        f"its {edit} pixels mark the area to edit; leave everything under its {keep} "
        "pixels unchanged."
    )
    return f"{prompt.rstrip()}\n\n{instruction}"
