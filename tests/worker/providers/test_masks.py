"""Mask conversion between conventions and the textual mask instruction, on real pixels."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.support.bombs import declared_png, record_decodes
from tests.support.images import decode, encode
from worker.providers.masks import mask_as_instruction, to_convention


def openai_mask() -> bytes:
    """8x8: left half transparent (edit), right half opaque red (keep), one half-alpha pixel."""
    mask = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    mask.paste((0, 0, 255, 0), (0, 0, 4, 8))
    mask.putpixel((7, 7), (10, 20, 30, 100))
    return encode(mask, "PNG")


def test_transparent_edits_returns_the_same_bytes() -> None:
    mask = openai_mask()

    assert to_convention(mask, "transparent_edits") is mask


def test_opaque_edits_inverts_alpha_and_keeps_colours() -> None:
    converted = decode(to_convention(openai_mask(), "opaque_edits"))

    assert (converted.format, converted.mode, converted.size) == ("PNG", "RGBA", (8, 8))
    assert converted.getpixel((1, 4)) == (0, 0, 255, 255)  # was transparent: now opaque
    assert converted.getpixel((6, 4)) == (255, 0, 0, 0)  # was opaque: now transparent
    assert converted.getpixel((7, 7)) == (10, 20, 30, 155)


def test_opaque_edits_twice_is_the_original_alpha() -> None:
    original = openai_mask()

    twice = to_convention(to_convention(original, "opaque_edits"), "opaque_edits")

    assert decode(twice).getchannel("A").tobytes() == decode(original).getchannel("A").tobytes()


def test_mask_without_alpha_counts_as_all_opaque() -> None:
    jpeg = encode(Image.new("RGB", (4, 4), (0, 0, 0)), "JPEG")

    converted = decode(to_convention(jpeg, "opaque_edits"))

    assert converted.getchannel("A").getextrema() == (0, 0)


def test_undecodable_mask_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mask cannot be decoded"):
        to_convention(b"not an image", "opaque_edits")


def test_a_mask_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = record_decodes(monkeypatch)
    with pytest.raises(ValueError, match="mask cannot be decoded"):
        to_convention(declared_png(40_000, 40_000), "opaque_edits")  # Pillow's own limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # only our own guard applies
    with pytest.raises(ValueError, match="12000x10000 is over 100000000 pixels"):
        to_convention(declared_png(12_000, 10_000), "opaque_edits")
    assert loads == []


def test_instruction_for_transparent_edits() -> None:
    prompt = mask_as_instruction("make the sky purple  ", "transparent_edits")

    head, _, instruction = prompt.partition("\n\n")
    assert head == "make the sky purple"
    assert "last attached image" in instruction
    assert "mask" in instruction
    assert "transparent pixels mark the area to edit" in instruction
    assert "under its opaque pixels unchanged" in instruction


def test_instruction_for_opaque_edits() -> None:
    instruction = mask_as_instruction("x", "opaque_edits")

    assert "opaque pixels mark the area to edit" in instruction
    assert "under its transparent pixels unchanged" in instruction
