"""The adapter for Requesty's router: ``POST {base_url}/images/edits`` with a JSON body.

Images travel as base64 ``data:`` URLs (``images: [{"image_url"}]``, ``mask:
{"image_url"}``); the answer is the OpenAI images shape, and errors in Requesty's
``{"error": {"origin", "message"}}`` shape keep their message and origin. Sending,
answer parsing and error mapping are ``worker.providers.http.client``'s.
"""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp

from worker.providers.base import EditCall, InputImage
from worker.providers.http.client import HttpEditUpstream, RequestBody
from worker.providers.openai import edits_url


def data_url(image: InputImage) -> str:
    """``image`` as a ``data:<content type>;base64,...`` URL."""
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"


def build_json(call: EditCall) -> bytes:
    """The JSON body for one call (``n`` is 1); optional parameters appear only when set.

    CPU work for large images (base64 and JSON encoding): run it in an executor.
    """
    document: dict[str, object] = {
        "model": call.model,
        "prompt": call.prompt,
        "images": [{"image_url": data_url(image)} for image in call.images],
    }
    if call.mask is not None:
        document["mask"] = {"image_url": data_url(call.mask)}
    document["n"] = 1
    optional: dict[str, object | None] = {
        "size": call.size,
        "quality": call.quality,
        "background": call.background,
        "output_format": call.output_format,
        "output_compression": call.output_compression,
        "user": call.user,
    }
    document.update({name: value for name, value in optional.items() if value is not None})
    return json.dumps(document).encode()


class RequestyUpstream(HttpEditUpstream):
    """Requesty's router (base_url like ``https://router.requesty.ai/v1``): JSON bodies
    with images as data URLs."""

    def edits_url(self, base_url: str) -> str:
        return edits_url(base_url)

    async def body(self, call: EditCall) -> RequestBody:
        encoded = await asyncio.to_thread(build_json, call)
        return aiohttp.BytesPayload(encoded, content_type="application/json")
