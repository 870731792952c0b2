"""The built-in local upstream: real Pillow edits behind the Upstream interface."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from PIL import Image

from app.core.providers_config import UpstreamConfig
from app.errors import UnsupportedPrompt, UpstreamRejected
from tests.support.bombs import declared_png, record_decodes
from worker.providers.base import EditCall, InputImage, Upstream
from worker.providers.local.editor import LocalUpstream

T = TypeVar("T")


class RecordingExecutor(ThreadPoolExecutor):
    """A thread pool that counts the work handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Iterator[RecordingExecutor]:
    pool = RecordingExecutor()
    yield pool
    pool.shutdown(wait=True)


def upstream(delay_s: float = 0.0, executor: RecordingExecutor | None = None) -> LocalUpstream:
    config = UpstreamConfig(name="builtin", kind="local", delay_s=delay_s)
    return LocalUpstream(config, executor)


def png(image: Image.Image) -> InputImage:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return InputImage(buffer.getvalue(), "image/png")


def colourful() -> Image.Image:
    image = Image.new("RGB", (40, 20))
    image.putdata([(200, x * 6, y * 12) for y in range(20) for x in range(40)])
    return image


def call(prompt: str, *images: InputImage, **options: Any) -> EditCall:
    return EditCall(
        model="local-edit", prompt=prompt, images=images or (png(colourful()),), **options
    )


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Equal within JPEG's rounding."""
    return all(abs(a - b) <= 3 for a, b in zip(actual, expected, strict=True))


async def test_it_is_an_upstream_named_by_its_config() -> None:
    local: Upstream = upstream()
    assert local.name == "builtin"
    await local.close()


async def test_grayscale_edit_returns_a_gray_png(executor: RecordingExecutor) -> None:
    output = await upstream(executor=executor).edit(call("make it black and white"))
    image = opened(output.image)
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (40, 20))
    for xy in [(0, 0), (21, 7), (39, 19)]:
        red, green, blue, _ = pixel(image, xy)
        assert red == green == blue
    assert executor.submitted == 1


async def test_size_mask_and_jpeg_input() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (10, 20, 30)).save(buffer, "JPEG", quality=100)
    mask = Image.new("RGBA", (40, 20), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 20, 20))
    edit = call(
        "invert",
        InputImage(buffer.getvalue(), "image/jpeg"),
        mask=png(mask),
        size="80x40",
    )
    image = opened((await upstream().edit(edit)).image)
    assert image.size == (80, 40)
    assert close_to(pixel(image, (10, 20)), (245, 235, 225, 255))  # edited: inverted
    assert close_to(pixel(image, (70, 20)), (10, 20, 30, 255))  # kept


async def test_a_prompt_it_does_not_understand_is_refused() -> None:
    """No known word: a clear failure naming what it knows, never an unchanged copy."""
    with pytest.raises(UnsupportedPrompt) as caught:
        await upstream().edit(call("paint it in the style of Van Gogh", size="80x40"))
    error = caught.value
    assert (error.status, error.type, error.code) == (400, "upstream_error", "unsupported_prompt")
    assert "Van Gogh" in error.message
    for word in ("grayscale", "sepia", "invert", "blur", "rotate", "tint teal", "collage"):
        assert word in error.message


async def test_a_collage_of_several_images_needs_no_effect_word() -> None:
    output = await upstream().edit(
        call("put them side by side", png(colourful()), png(colourful()))
    )
    assert opened(output.image).size == (80, 20)


async def test_transparent_background_is_kept_in_the_png() -> None:
    image = Image.new("RGB", (30, 30), "white")
    image.paste((0, 0, 0), (10, 10, 20, 20))
    output = await upstream().edit(call("", png(image), background="transparent"))
    assert pixel(opened(output.image), (0, 0))[3] == 0


async def test_usage_is_estimated() -> None:
    output = await upstream().edit(call("rotate 90 please", size="1024x1024"))
    assert output.usage is not None
    assert output.usage.input_tokens_details == {"text_tokens": 4, "image_tokens": 255}
    assert output.usage.output_tokens == 765
    assert output.usage.total_tokens == output.usage.input_tokens + output.usage.output_tokens


async def test_delay_is_honoured() -> None:
    started = time.monotonic()
    await upstream(delay_s=0.2).edit(call("sepia"))
    assert time.monotonic() - started >= 0.19


async def test_the_delay_can_be_cancelled(executor: RecordingExecutor) -> None:
    task = asyncio.create_task(upstream(delay_s=30, executor=executor).edit(call("sepia")))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1
    assert executor.submitted == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (call("sepia", InputImage(b"not an image", "image/png")), "image 0 .* cannot be decoded"),
        (call("sepia", mask=InputImage(b"\x89PNG\r\n", "image/png")), "mask .* cannot be decoded"),
        (call("sepia", size="wide"), "size must be"),
        (call("sepia", size="0x10"), "size must be"),
    ],
)
async def test_bad_input_is_rejected(edit: EditCall, message: str) -> None:
    with pytest.raises(UpstreamRejected, match=message):
        await upstream().edit(edit)


async def test_a_call_without_images_is_rejected() -> None:
    edit = EditCall(model="local-edit", prompt="sepia", images=())
    with pytest.raises(UpstreamRejected, match="at least one image"):
        await upstream().edit(edit)


async def test_a_bomb_among_the_inputs_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = record_decodes(monkeypatch)
    bomb_mask = InputImage(declared_png(40_000, 40_000), "image/png")
    with pytest.raises(UpstreamRejected, match="mask is too large"):  # Pillow's own limit
        await upstream().edit(call("sepia", mask=bomb_mask))
    assert loads == [(40, 20)]  # the image, not the mask
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # only our own guard applies
    bomb = InputImage(declared_png(12_000, 10_000), "image/png")
    with pytest.raises(UpstreamRejected, match="image 0 is 12000x10000, over 100000000 pixels"):
        await upstream().edit(call("sepia", bomb))
    assert loads == [(40, 20)]
