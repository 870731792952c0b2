"""The local upstream's prompt vocabulary, its Pillow effects, and its usage estimate."""

from __future__ import annotations

import pytest
from PIL import Image

from worker.providers.local.effects import (
    Effect,
    apply_effects,
    edit_image,
    estimate_usage,
    parse_effects,
)


def colourful(width: int = 40, height: int = 20) -> Image.Image:
    """An RGBA image whose every pixel has distinct R, G and B."""
    image = Image.new("RGBA", (width, height))
    image.putdata(
        [(200, (x * 5) % 256, (y * 9 + 30) % 256, 255) for y in range(height) for x in range(width)]
    )
    return image


def rgba(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.convert("RGBA").getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Make it GRAYSCALE please", [Effect("grayscale")]),
        ("make it black and white", [Effect("grayscale")]),
        ("old vintage look, then invert", [Effect("sepia"), Effect("invert")]),
        ("blur 5 and rotate 180 degrees", [Effect("blur", (5.0,)), Effect("rotate", (180.0,))]),
        ("strong blur", [Effect("blur", (8.0,))]),
        ("rotate by 45", [Effect("rotate", (45.0,))]),
        ("rotate it", [Effect("rotate", (90.0,))]),
        ("blur 1000", [Effect("blur", (100.0,))]),
        ("pixelated 16", [Effect("pixelate", (16.0,))]),
        ("mirror, then flip upside down", [Effect("mirror"), Effect("flip")]),
        ("darker with more contrast", [Effect("brightness", (0.6,)), Effect("contrast", (1.6,))]),
        ("tint red", [Effect("tint", (255.0, 0.0, 0.0))]),
        ("make it teal", [Effect("tint", (0.0, 128.0, 128.0))]),
        ("a blue tint", [Effect("tint", (0.0, 0.0, 255.0))]),
        ("a red car, blurry, unsharpened", []),
        ("", []),
    ],
)
def test_parse_effects(prompt: str, expected: list[Effect]) -> None:
    assert parse_effects(prompt) == expected


def test_grayscale_makes_channels_equal() -> None:
    result = apply_effects(colourful(), [Effect("grayscale")])
    for xy in [(0, 0), (13, 7), (39, 19)]:
        red, green, blue, alpha = rgba(result, xy)
        assert red == green == blue
        assert alpha == 255


def test_invert_known_colour_keeps_alpha() -> None:
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 128))
    assert rgba(apply_effects(image, [Effect("invert")]), (1, 1)) == (245, 235, 225, 128)


def test_rotate_90_is_clockwise_and_swaps_sides() -> None:
    image = Image.new("RGBA", (40, 20), "blue")
    image.putpixel((0, 0), (255, 0, 0, 255))
    result = apply_effects(image, [Effect("rotate", (90.0,))])
    assert result.size == (20, 40)
    assert rgba(result, (19, 0)) == (255, 0, 0, 255)


def test_mirror_and_flip_move_a_corner() -> None:
    image = Image.new("RGBA", (10, 6), "black")
    image.putpixel((0, 0), (255, 255, 255, 255))
    assert rgba(apply_effects(image, [Effect("mirror")]), (9, 0))[:3] == (255, 255, 255)
    assert rgba(apply_effects(image, [Effect("flip")]), (0, 5))[:3] == (255, 255, 255)


def test_sepia_tint_and_brightness_shift_colours() -> None:
    gray = Image.new("RGBA", (8, 8), (128, 128, 128, 255))
    red, green, blue, _ = rgba(apply_effects(gray, [Effect("sepia")]), (4, 4))
    assert red > green > blue
    red, green, blue, _ = rgba(apply_effects(gray, [Effect("tint", (255.0, 0.0, 0.0))]), (4, 4))
    assert red > 128 > green
    assert rgba(apply_effects(gray, [Effect("brightness", (0.5,))]), (4, 4))[0] < 100


def test_pixelate_makes_uniform_blocks() -> None:
    result = apply_effects(colourful(), [Effect("pixelate", (10.0,))])
    assert result.size == (40, 20)
    assert rgba(result, (0, 0)) == rgba(result, (9, 9))
    assert rgba(result, (0, 0)) != rgba(result, (10, 0))


def test_every_parsed_effect_runs() -> None:
    prompt = (
        "grayscale sepia invert blur sharpen mirror flip rotate 30 brighten darken "
        "contrast posterize pixelate emboss edges tint orange"
    )
    effects = parse_effects(prompt)
    assert len(effects) == 16
    assert apply_effects(colourful(), effects).mode == "RGBA"


def test_mask_limits_the_edit_to_its_transparent_part() -> None:
    original = colourful()
    mask = Image.new("RGBA", original.size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 20, 20))  # left half transparent: edit there
    result = edit_image([original], mask, "invert", None, None)
    for y in range(0, 20, 3):
        for x in range(20, 40, 3):
            assert rgba(result, (x, y)) == rgba(original, (x, y))
        red, green, blue, _ = rgba(original, (y, y))
        assert rgba(result, (y, y)) == (255 - red, 255 - green, 255 - blue, 255)


def test_mask_is_ignored_when_the_canvas_changes() -> None:
    mask = Image.new("RGBA", (40, 20), (0, 0, 0, 255))
    assert edit_image([colourful()], mask, "rotate", None, None).size == (20, 40)


def test_no_known_word_copies_the_image() -> None:
    original = colourful()
    result = edit_image([original], None, "a portrait of a cat", None, None)
    assert result.tobytes() == original.tobytes()


def test_size_is_honoured() -> None:
    result = edit_image([colourful()], None, "sepia", (64, 48), None)
    assert result.size == (64, 48)


def test_transparent_background_clears_the_corner_colour() -> None:
    image = Image.new("RGB", (30, 30), (250, 250, 250))
    image.paste((200, 0, 0), (10, 10, 20, 20))
    result = edit_image([image], None, "", None, "transparent")
    for corner in [(0, 0), (29, 0), (0, 29), (29, 29)]:
        assert rgba(result, corner)[3] == 0
    assert rgba(result, (15, 15)) == (200, 0, 0, 255)


def test_opaque_background_flattens_onto_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.putpixel((5, 5), (0, 0, 255, 255))
    result = edit_image([image], None, "", None, "opaque")
    assert rgba(result, (0, 0)) == (255, 255, 255, 255)
    assert rgba(result, (5, 5)) == (0, 0, 255, 255)


def test_collage_places_images_side_by_side() -> None:
    left = Image.new("RGB", (20, 10), "red")
    right = Image.new("RGB", (40, 20), "blue")
    result = edit_image([left, right], None, "put them side by side", None, None)
    assert result.size == (40, 10)
    assert rgba(result, (5, 5)) == (255, 0, 0, 255)
    assert rgba(result, (35, 5)) == (0, 0, 255, 255)
    assert edit_image([left, right], None, "sepia", None, None).size == (20, 10)


def test_edit_image_needs_an_image() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        edit_image([], None, "invert", None, None)


def test_usage_follows_openai_tiling() -> None:
    usage = estimate_usage("make it grayscale please", [(1024, 1024), (2048, 4096)], (512, 512))
    assert usage.input_tokens_details == {"text_tokens": 5, "image_tokens": 765 + 1105}
    assert usage.input_tokens == 5 + 765 + 1105
    assert usage.output_tokens == 85 + 170
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_usage_of_extreme_shapes_is_positive() -> None:
    usage = estimate_usage("", [(1, 100_000)], (100_000, 1))
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
