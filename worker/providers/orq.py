"""The adapter for orq.ai's router: ``POST {base_url}/v2/router/images/edits``, multipart.

The body is OpenAI's multipart shape (``worker.providers.openai.build_form``) plus
``response_format=b64_json``, since orq answers with a ``url`` by default. The answer
is the OpenAI images shape. Sending, answer parsing and error mapping are
``worker.providers.http_upstream``'s.
"""

from __future__ import annotations

import aiohttp

from app.providers_config import UpstreamConfig
from worker.providers.base import EditCall, EditOutput
from worker.providers.http_upstream import MAX_RESPONSE_BYTES, HttpUpstreamClient, adapt_mask
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


class OrqUpstream:
    """orq.ai's router (base_url like ``https://api.orq.ai``) over a shared aiohttp session.

    The session belongs to the caller: ``close`` leaves it open. Adapts the mask to
    the config's ``mask_convention`` and ``supports_mask``.
    """

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self._client = HttpUpstreamClient(config, session)
        self._config = config
        self.name = config.name
        self._url = orq_edits_url(config.base_url or "")

    async def edit(self, call: EditCall) -> EditOutput:
        """Make one edit within ``call.timeout_s`` seconds; raises UpstreamError on failure."""
        call = await adapt_mask(call, self._config)
        form = build_orq_form(call)
        return await self._client.post_edit(self._url, form, call.timeout_s, MAX_RESPONSE_BYTES)

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""
