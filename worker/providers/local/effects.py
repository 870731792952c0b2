"""The local upstream's editor: prompt words turned into Pillow effects, and its usage.

Pure functions, no I/O; Pillow work is CPU-bound, so callers run them in an executor.
The prompt vocabulary is a table: adding a word or phrase is one line in ``_WORDS``
(and ``_NUMBERS`` when it takes a number); ``VOCABULARY`` describes it for people.
A prompt with no known word yields no effects; ``understood`` tells the caller so
that it can refuse the edit rather than hand back a copy.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageColor, ImageEnhance, ImageFilter, ImageOps

from app.core.jobs import Usage


@dataclass(frozen=True)
class Effect:
    """One edit step: its name and numeric parameters (degrees, radius, factor, RGB)."""

    name: str
    params: tuple[float, ...] = ()


# Phrase (lower-case words) -> the effect with its default parameters.
_WORDS: dict[str, Effect] = {
    "grayscale": Effect("grayscale"),
    "greyscale": Effect("grayscale"),
    "black and white": Effect("grayscale"),
    "monochrome": Effect("grayscale"),
    "sepia": Effect("sepia"),
    "vintage": Effect("sepia"),
    "invert": Effect("invert"),
    "negative": Effect("invert"),
    "blur": Effect("blur", (2.0,)),
    "slight blur": Effect("blur", (1.0,)),
    "strong blur": Effect("blur", (8.0,)),
    "heavy blur": Effect("blur", (8.0,)),
    "sharpen": Effect("sharpen"),
    "mirror": Effect("mirror"),
    "flip horizontally": Effect("mirror"),
    "flip": Effect("flip"),
    "flip vertically": Effect("flip"),
    "flip upside down": Effect("flip"),
    "upside down": Effect("flip"),
    "rotate": Effect("rotate", (90.0,)),
    "brighten": Effect("brightness", (1.4,)),
    "brighter": Effect("brightness", (1.4,)),
    "lighten": Effect("brightness", (1.4,)),
    "darken": Effect("brightness", (0.6,)),
    "darker": Effect("brightness", (0.6,)),
    "contrast": Effect("contrast", (1.6,)),
    "more contrast": Effect("contrast", (1.6,)),
    "increase contrast": Effect("contrast", (1.6,)),
    "less contrast": Effect("contrast", (0.6,)),
    "posterize": Effect("posterize", (3.0,)),
    "pixelate": Effect("pixelate", (8.0,)),
    "pixelated": Effect("pixelate", (8.0,)),
    "emboss": Effect("emboss"),
    "edges": Effect("edges"),
    "outline": Effect("edges"),
    "sketch": Effect("edges"),
}
_PHRASES = {tuple(phrase.split()): effect for phrase, effect in _WORDS.items()}
_LONGEST = max(len(words) for words in _PHRASES)

# Effects that take an optional number right after their word ("blur 5", "rotate by 45").
_NUMBERS: dict[str, tuple[float, float]] = {
    "blur": (0.1, 100.0),
    "rotate": (-360.0, 360.0),
    "pixelate": (2.0, 256.0),
    "posterize": (1.0, 8.0),
}

# A colour tint is "tint red", "make it teal", "blue tint", ... (any ImageColor name).
_TINT_BEFORE = {("tint",), ("tint", "it"), ("tinted",), ("make", "it"), ("turn", "it")}
_TINT_AFTER = {"tint", "tinted", "hue", "filter"}
_TINT_STRENGTH = 0.4

_COLLAGE = {("collage",), ("combine",), ("combined",), ("merge",), ("side", "by", "side")}
_BACKGROUND_DISTANCE = 40  # max per-channel difference from the corner that counts as background
_TOKEN = re.compile(r"[a-z]+|(?<![a-z])-?\d+(?:\.\d+)?")

_Match = tuple[Effect, int]  # the effect and the index of the first token after it

VOCABULARY = (
    ", ".join(_WORDS)
    + f"; {', '.join(_NUMBERS)} take a number ('rotate 45', 'blur by 5')"
    + "; a colour tint ('tint teal', 'make it blue', 'red filter')"
    + "; with several images, 'collage' or 'side by side'"
)
"""The words and phrases the local editor understands, as one line for people."""


def understood(prompt: str, image_count: int) -> bool:
    """Whether ``prompt`` asks for anything the editor can do with ``image_count`` images:
    an effect, or a collage of several images."""
    return bool(parse_effects(prompt)) or (image_count > 1 and _wants_collage(prompt))


def parse_effects(prompt: str) -> list[Effect]:
    """The effects a free-text prompt asks for, in order; unknown words are ignored."""
    tokens = _TOKEN.findall(prompt.lower())
    effects: list[Effect] = []
    index = 0
    while index < len(tokens):
        match = _match_word(tokens, index) or _match_tint(tokens, index)
        if match is None:
            index += 1
            continue
        effect, index = match
        effects.append(effect)
    return effects


def _match_word(tokens: Sequence[str], start: int) -> _Match | None:
    for length in range(_LONGEST, 0, -1):
        effect = _PHRASES.get(tuple(tokens[start : start + length]))
        if effect is None:
            continue
        end = start + length
        if effect.name not in _NUMBERS:
            return effect, end
        if tokens[end : end + 1] == ["by"]:
            end += 1
        number = _number(tokens[end]) if end < len(tokens) else None
        if number is None:
            return effect, start + length
        low, high = _NUMBERS[effect.name]
        return dataclasses.replace(effect, params=(min(max(number, low), high),)), end + 1
    return None


def _match_tint(tokens: Sequence[str], start: int) -> _Match | None:
    for length in (2, 1):
        if tuple(tokens[start : start + length]) in _TINT_BEFORE:
            rgb = _colour(tokens, start + length)
            if rgb is not None:
                return Effect("tint", rgb), start + length + 1
    rgb = _colour(tokens, start)
    if rgb is not None and start + 1 < len(tokens) and tokens[start + 1] in _TINT_AFTER:
        return Effect("tint", rgb), start + 2
    return None


def _colour(tokens: Sequence[str], index: int) -> tuple[float, ...] | None:
    """The RGB of a colour name at ``index``, unless that word starts an effect phrase."""
    if index >= len(tokens) or tokens[index] not in ImageColor.colormap:
        return None
    if _match_word(tokens, index) is not None:  # "make it black and white" is not a tint
        return None
    return tuple(float(v) for v in ImageColor.getrgb(tokens[index])[:3])


def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def _wants_collage(prompt: str) -> bool:
    tokens = tuple(_TOKEN.findall(prompt.lower()))
    return any(
        tokens[i : i + len(phrase)] == phrase for phrase in _COLLAGE for i in range(len(tokens))
    )


_Operation = Callable[[Image.Image, tuple[float, ...]], Image.Image]


def _keep_alpha(operation: _Operation) -> _Operation:
    """Run an RGB-only operation on an RGBA image, keeping its alpha channel."""

    def apply(image: Image.Image, params: tuple[float, ...]) -> Image.Image:
        result = operation(image.convert("RGB"), params).convert("RGBA")
        result.putalpha(image.getchannel("A"))
        return result

    return apply


def _sepia(image: Image.Image, params: tuple[float, ...]) -> Image.Image:
    gray = ImageOps.grayscale(image)
    return ImageOps.colorize(gray, (40, 26, 13), (255, 240, 192), mid=(160, 120, 80))


def _pixelate(image: Image.Image, params: tuple[float, ...]) -> Image.Image:
    block = int(params[0])
    small = (max(1, image.width // block), max(1, image.height // block))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)


def _tint(image: Image.Image, params: tuple[float, ...]) -> Image.Image:
    layer = Image.new("RGB", image.size, tuple(int(v) for v in params[:3]))
    return Image.blend(image, layer, _TINT_STRENGTH)


def _rotate(image: Image.Image, params: tuple[float, ...]) -> Image.Image:
    # Clockwise, as photo apps rotate; the canvas grows so no corner is cut off.
    return image.rotate(-params[0], resample=Image.Resampling.BICUBIC, expand=True)


_OPERATIONS: dict[str, _Operation] = {
    "grayscale": _keep_alpha(lambda image, _: ImageOps.grayscale(image)),
    "sepia": _keep_alpha(_sepia),
    "invert": _keep_alpha(lambda image, _: ImageOps.invert(image)),
    "blur": lambda image, params: image.filter(ImageFilter.GaussianBlur(params[0])),
    "sharpen": _keep_alpha(lambda image, _: image.filter(ImageFilter.SHARPEN)),
    "mirror": lambda image, _: ImageOps.mirror(image),
    "flip": lambda image, _: ImageOps.flip(image),
    "rotate": _rotate,
    "brightness": _keep_alpha(lambda image, p: ImageEnhance.Brightness(image).enhance(p[0])),
    "contrast": _keep_alpha(lambda image, p: ImageEnhance.Contrast(image).enhance(p[0])),
    "posterize": _keep_alpha(lambda image, p: ImageOps.posterize(image, int(p[0]))),
    "pixelate": _pixelate,
    "emboss": _keep_alpha(lambda image, _: image.filter(ImageFilter.EMBOSS)),
    "edges": _keep_alpha(lambda image, _: image.filter(ImageFilter.CONTOUR)),
    "tint": _keep_alpha(_tint),
}


def apply_effects(image: Image.Image, effects: Sequence[Effect]) -> Image.Image:
    """``image`` (as RGBA) with each effect applied in turn; KeyError for an unknown name."""
    result = image.convert("RGBA")
    for effect in effects:
        result = _OPERATIONS[effect.name](result, effect.params)
    return result


def edit_image(
    images: list[Image.Image],
    mask: Image.Image | None,
    prompt: str,
    size: tuple[int, int] | None,
    background: str | None,
) -> Image.Image:
    """Edit ``images[0]`` (or all of them side by side for a collage) as ``prompt`` says.

    The mask follows OpenAI's convention: where its alpha is 0 the edit shows, where it
    is opaque the original stays (blended in between). It is stretched to the base if
    the sizes differ, and ignored when an effect changes the canvas size (rotate).
    ``size`` (width, height) resizes exactly; ``background`` "transparent" clears pixels
    close to the top-left corner's colour, "opaque" flattens onto white. Returns RGBA;
    ValueError when ``images`` is empty.
    """
    if not images:
        raise ValueError("edit_image needs at least one image")
    if len(images) > 1 and _wants_collage(prompt):
        base = _side_by_side(images)
    else:
        base = images[0].convert("RGBA")
    result = apply_effects(base, parse_effects(prompt))
    if mask is not None and result.size == base.size:
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.size != base.size:
            alpha = alpha.resize(base.size, Image.Resampling.NEAREST)
        result = Image.composite(base, result, alpha)
    if size is not None and size != result.size:
        result = result.resize(size, Image.Resampling.LANCZOS)
    if background == "transparent":
        result = _clear_background(result)
    elif background == "opaque":
        result = Image.alpha_composite(Image.new("RGBA", result.size, "white"), result)
    return result


def _side_by_side(images: list[Image.Image]) -> Image.Image:
    height = images[0].height
    tiles = [
        image.convert("RGBA").resize(
            (max(1, round(image.width * height / image.height)), height), Image.Resampling.LANCZOS
        )
        for image in images
    ]
    canvas = Image.new("RGBA", (sum(tile.width for tile in tiles), height), (0, 0, 0, 0))
    left = 0
    for tile in tiles:
        canvas.paste(tile, (left, 0))
        left += tile.width
    return canvas


def _clear_background(image: Image.Image) -> Image.Image:
    rgb = image.convert("RGB")
    corner = rgb.crop((0, 0, 1, 1)).resize(rgb.size, Image.Resampling.NEAREST)
    red, green, blue = ImageChops.difference(rgb, corner).split()
    distance = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    threshold = _BACKGROUND_DISTANCE
    keep = distance.point([0] * (threshold + 1) + [255] * (255 - threshold))
    result = image.convert("RGBA")
    result.putalpha(ImageChops.darker(result.getchannel("A"), keep))
    return result


def estimate_usage(prompt: str, inputs: list[tuple[int, int]], output: tuple[int, int]) -> Usage:
    """Token usage as OpenAI would report it for this edit, from word count and image sizes.

    Text is about 1.3 tokens a word; each image costs 85 + 170 per 512-px tile once
    scaled to fit 2048x2048 and then down to a shortest side of 768 (OpenAI's vision
    tiling); the output image is counted the same way.
    """
    text_tokens = round(len(prompt.split()) * 1.3)
    image_tokens = sum(_image_tokens(size) for size in inputs)
    input_tokens = text_tokens + image_tokens
    output_tokens = _image_tokens(output)
    return Usage(
        total_tokens=input_tokens + output_tokens,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_tokens_details={"text_tokens": text_tokens, "image_tokens": image_tokens},
    )


def _image_tokens(size: tuple[int, int]) -> int:
    width, height = max(1, size[0]), max(1, size[1])
    fit = min(1.0, 2048 / max(width, height))
    width, height = max(1, round(width * fit)), max(1, round(height * fit))
    shrink = min(1.0, 768 / min(width, height))
    width, height = max(1, round(width * shrink)), max(1, round(height * shrink))
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)
