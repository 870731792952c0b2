"""The adapter for orq.ai's router: ``POST {base_url}/v2/router/images/edits``, multipart.

The body is OpenAI's multipart shape (``worker.providers.openai.build_form``) plus
``response_format=b64_json``, since orq answers with a ``url`` by default. The answer
is the OpenAI images shape. Sending, answer parsing and error mapping are
``worker.providers.http.client``'s.
"""

from __future__ import annotations

import aiohttp

from worker.providers.base import EditCall
from worker.providers.http.client import HttpEditUpstream, RequestBody
from worker.providers.openai import build_form

EDITS_PATH = "/v2/router/images/edits"
"""The edit endpoint's path under orq's base URL."""


def orq_edits_url(base_url: str) -> str:
    """The edit endpoint under ``base_url``, without a double slash where they join."""
    return base_url.rstrip("/") + EDITS_PATH


def build_orq_form(call: EditCall) -> aiohttp.FormData:
    """The multipart body for one call: OpenAI's fields and ``response_format=b64_json``."""
    form = build_form(call)
    form.add_field("response_format", "b64_json")
    return form


class OrqUpstream(HttpEditUpstream):
    """orq.ai's router (base_url like ``https://api.orq.ai``): OpenAI's multipart at
    ``/v2/router/images/edits`` with ``response_format=b64_json``."""

    def edits_url(self, base_url: str) -> str:
        return orq_edits_url(base_url)

    async def body(self, call: EditCall) -> RequestBody:
        return build_orq_form(call)
