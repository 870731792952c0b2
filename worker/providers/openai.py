"""The adapter for any OpenAI-compatible ``POST {base_url}/images/edits`` upstream.

``OpenAIUpstream.edit`` sends one multipart request (``n=1``) and returns the image
the upstream answered with; sending, answer parsing and error mapping are
``worker.providers.http.client``'s (see there for which failure raises what).
``usage_from`` and ``parse_edit_response`` are re-exported from
``worker.providers.http.responses``.
"""

from __future__ import annotations

import aiohttp

from worker.providers.base import EditCall, PartialSink
from worker.providers.http.client import MAX_RESPONSE_BYTES, HttpEditUpstream, RequestBody
from worker.providers.http.responses import parse_edit_response, usage_from

__all__ = [
    "MAX_RESPONSE_BYTES",
    "OpenAIUpstream",
    "build_form",
    "edits_url",
    "parse_edit_response",
    "streams",
    "usage_from",
]


def edits_url(base_url: str) -> str:
    """The edit endpoint under ``base_url`` (``http://host/v1`` -> ``http://host/v1/images/edits``)."""
    return base_url.rstrip("/") + "/images/edits"


def build_form(call: EditCall) -> aiohttp.FormData:
    """The multipart body for one call, as the official openai SDK shapes it.

    One image goes in field ``image``, several in repeated ``image[]``; optional
    parameters appear only when set. A call that takes partial images asks for them
    with ``stream=true`` and ``partial_images``.
    """
    form = aiohttp.FormData()
    form.add_field("model", call.model)
    form.add_field("prompt", call.prompt)
    field = "image" if len(call.images) == 1 else "image[]"
    for index, image in enumerate(call.images):
        filename = f"image-{index}.{image.extension}"
        form.add_field(field, image.data, filename=filename, content_type=image.content_type)
    if call.mask is not None:
        mask = call.mask
        form.add_field(
            "mask", mask.data, filename=f"mask.{mask.extension}", content_type=mask.content_type
        )
    form.add_field("n", "1")
    optional: dict[str, object | None] = {
        "size": call.size,
        "quality": call.quality,
        "background": call.background,
        "output_format": call.output_format,
        "output_compression": call.output_compression,
        "input_fidelity": call.input_fidelity,
        "user": call.user,
    }
    for name, value in optional.items():
        if value is not None:
            form.add_field(name, str(value))
    if streams(call):
        form.add_field("stream", "true")
        form.add_field("partial_images", str(call.partial_images))
    return form


def streams(call: EditCall) -> bool:
    """Whether ``call`` asks the upstream for partial images (an event stream)."""
    return call.partial_images > 0 and call.on_partial is not None


class OpenAIUpstream(HttpEditUpstream):
    """An OpenAI-compatible image-edit upstream (multipart, ``image``/``image[]``).

    Sends ``Authorization: Bearer <api_key>`` when the config has a key.
    """

    def edits_url(self, base_url: str) -> str:
        return edits_url(base_url)

    async def body(self, call: EditCall) -> RequestBody:
        return build_form(call)

    def partial_sink(self, call: EditCall) -> PartialSink | None:
        return call.on_partial if streams(call) else None
