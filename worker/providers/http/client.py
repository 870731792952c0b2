"""What every HTTP upstream adapter shares: one capped exchange, error mapping, masks.

An adapter (``openai``, ``requesty``, ``orq``) builds its request body and hands it to
``HttpUpstreamClient.post_edit``, which sends it and returns the edited image, read
from ``b64_json`` or downloaded from the answer's ``url``. Every failure is an
``app.errors.UpstreamError``: HTTP error answers are mapped by
``worker.providers.http.errors``; no answer in time is ``UpstreamTimeout``; no
connection is ``UpstreamError`` with code ``upstream_unreachable``; a 2xx that is not
a usable image response is ``UpstreamBadResponse``. Bodies are read up to a cap, so
an upstream cannot exhaust the worker's memory.

``adapt_mask`` rewrites a call's mask for the upstream's declared mask handling
before the adapter builds its body.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import aiohttp
from yarl import URL

from app.core.providers_config import UpstreamConfig
from app.errors import UpstreamBadResponse, UpstreamError, UpstreamRejected, UpstreamTimeout
from app.net import read_bounded
from worker.providers.base import EditCall, EditOutput, InputImage, PartialSink
from worker.providers.http.errors import error_for_status
from worker.providers.http.events import read_edit_events
from worker.providers.http.responses import parse_edit_response
from worker.providers.masks import mask_as_instruction, to_convention

MAX_RESPONSE_BYTES = 128 * 1024 * 1024
"""Largest edit response body read (base64 JSON of one image)."""

MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
"""Largest image downloaded when the upstream answers with a ``url``."""

MAX_ERROR_BODY_BYTES = 64 * 1024
"""How much of an error answer is read for its message."""

_CHUNK_BYTES = 64 * 1024

RequestBody = aiohttp.FormData | aiohttp.Payload
"""An edit request's body: multipart form data or a ready payload such as JSON."""


async def adapt_mask(call: EditCall, config: UpstreamConfig) -> EditCall:
    """``call`` with its mask as the upstream ``config`` takes it (Pillow runs in an executor).

    Without ``supports_mask`` the mask becomes the last input image and the prompt
    says so; with ``mask_convention = "opaque_edits"`` its alpha is inverted.
    Raises UpstreamRejected (``invalid_request_error``) when the mask cannot be decoded.
    """
    mask = call.mask
    if mask is None or (config.supports_mask and config.mask_convention == "transparent_edits"):
        return call
    if config.mask_convention == "opaque_edits":
        mask = await _converted(mask, config)
    if config.supports_mask:
        return dataclasses.replace(call, mask=mask)
    return dataclasses.replace(
        call,
        prompt=mask_as_instruction(call.prompt, config.mask_convention),
        images=(*call.images, mask),
        mask=None,
    )


async def _converted(mask: InputImage, config: UpstreamConfig) -> InputImage:
    loop = asyncio.get_running_loop()
    convert = partial(to_convention, mask.data, config.mask_convention)
    try:
        return InputImage(await loop.run_in_executor(None, convert), "image/png")
    except ValueError as exc:
        message = f"the mask cannot be converted for upstream {config.name}: {exc}"
        raise UpstreamRejected(message, code="invalid_request_error") from exc


@dataclass(frozen=True)
class HttpAnswer:
    """One upstream answer: its status, ``Retry-After`` header and (capped) body."""

    status: int
    retry_after: str | None
    body: bytes


class HttpUpstreamClient:
    """The HTTP side of one upstream, over a shared aiohttp session the caller owns.

    Sends ``Authorization: Bearer <api_key>`` when the config has a key (or the
    ``auth`` headers given instead, for APIs that take their key another way), and
    only to the upstream's own origin.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        session: aiohttp.ClientSession,
        *,
        auth: Mapping[str, str] | None = None,
    ) -> None:
        if not config.base_url:
            raise ValueError(f"upstream {config.name!r} has no base_url")
        self.name = config.name
        self._session = session
        self._origin = URL(config.base_url).origin()
        key = config.api_key.get_secret_value() if config.api_key else ""
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        if auth is not None:
            self._auth = dict(auth)

    def auth_for(self, url: str) -> dict[str, str]:
        """The authenticating headers for ``url``: none unless it is on the upstream's
        origin (the URLs in an answer must not learn the key)."""
        try:
            target = URL(url)
            same_origin = target.absolute and target.origin() == self._origin
        except ValueError:
            same_origin = False
        return dict(self._auth) if same_origin else {}

    async def post_edit(
        self,
        url: str,
        body: RequestBody,
        timeout_s: float,
        limit: int,
        on_partial: PartialSink | None = None,
    ) -> EditOutput:
        """POST ``body`` to ``url`` and return the image within ``timeout_s`` seconds.

        The answer is read up to ``limit`` bytes (``MAX_RESPONSE_BYTES`` is the usual cap);
        raises UpstreamError on failure. With ``on_partial`` an event-stream answer is
        read as OpenAI streams edits, each partial image handed to it on arrival.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        accept = "text/event-stream, application/json" if on_partial else "application/json"
        headers = {"Accept": accept, **self._auth}
        answer = await self.exchange(
            "POST", url, timeout_s, limit, headers, body=body, on_partial=on_partial
        )
        if not 200 <= answer.status < 300:
            raise error_for_status(answer.status, answer.body, answer.retry_after)
        result = await asyncio.to_thread(parse_edit_response, answer.body, answer.status)
        image = result.image
        if image is None:
            image = await self.download(result.url or "", deadline, answer.status)
        return EditOutput(image=image, usage=result.usage)

    async def download(self, url: str, deadline: float, status: int) -> bytes:
        """The image at ``url`` (http(s) only), read up to ``MAX_DOWNLOAD_BYTES`` before the
        loop time ``deadline``; the key goes along only to the upstream's own origin.
        ``status`` is that of the answer that named the url, for the errors: a 4xx (an
        expired or unknown url) is UpstreamBadResponse, a 5xx a retryable UpstreamError."""
        try:
            target = URL(url)
        except ValueError:
            target = URL()
        if target.scheme not in ("http", "https") or not target.host:
            raise UpstreamBadResponse(
                f"upstream image url is not http(s): {url[:200]!r}", upstream_status=status
            )
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise UpstreamTimeout(f"no time left to download from upstream {self.name}")
        answer = await self.exchange(
            "GET", url, remaining, MAX_DOWNLOAD_BYTES, self.auth_for(url), redirects=True
        )
        if not 200 <= answer.status < 300:
            kind = UpstreamError if answer.status >= 500 else UpstreamBadResponse
            message = f"downloading the edited image from {url[:200]} answered HTTP {answer.status}"
            raise kind(message, upstream_status=answer.status)
        if not answer.body:
            raise UpstreamBadResponse("downloaded image is empty", upstream_status=answer.status)
        return answer.body

    async def exchange(
        self,
        method: str,
        url: str,
        timeout_s: float,
        limit: int,
        headers: Mapping[str, str],
        *,
        body: RequestBody | None = None,
        redirects: bool = False,
        on_partial: PartialSink | None = None,
    ) -> HttpAnswer:
        """One HTTP exchange, body read up to ``limit``; transport failures become UpstreamError."""
        status: int | None = None
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.request(
                method, url, data=body, headers=headers, timeout=timeout, allow_redirects=redirects
            ) as response:
                status = response.status
                data = await _read_answer(response, limit, on_partial)
                return HttpAnswer(status, response.headers.get("Retry-After"), data)
        except TimeoutError as exc:
            message = f"upstream {self.name} did not answer within {timeout_s:.3g} s"
            raise UpstreamTimeout(message, upstream_status=status) from exc
        except aiohttp.ClientConnectionError as exc:
            code = "upstream_unreachable" if status is None else None
            message = f"connection to upstream {self.name} failed: {_describe(exc)}"
            raise UpstreamError(message, upstream_status=status, code=code) from exc
        except aiohttp.ClientError as exc:
            message = f"upstream {self.name} sent a broken answer: {_describe(exc)}"
            raise UpstreamBadResponse(message, upstream_status=status) from exc


async def _read_answer(
    response: aiohttp.ClientResponse, limit: int, on_partial: PartialSink | None
) -> bytes:
    """A 2xx body of at most ``limit`` bytes (UpstreamBadResponse when longer), or the
    first ``MAX_ERROR_BODY_BYTES`` of any other, enough for its error message. A 2xx
    event stream, when ``on_partial`` takes partial images, is read by
    ``read_edit_events`` into the body of the equivalent JSON answer."""
    status = response.status
    if not 200 <= status < 300:
        return await read_bounded(
            response.content, MAX_ERROR_BODY_BYTES, too_large=None, chunk_bytes=_CHUNK_BYTES
        )

    def too_large(_: int) -> UpstreamBadResponse:
        return UpstreamBadResponse(
            f"upstream answer is larger than {limit} bytes", upstream_status=status
        )

    if on_partial is not None and response.content_type == "text/event-stream":
        return await read_edit_events(response.content, status, limit, too_large, on_partial)
    return await read_bounded(
        response.content, limit, too_large=too_large, chunk_bytes=_CHUNK_BYTES
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class HttpEditUpstream:
    """An edit upstream over HTTP and a shared aiohttp session (which ``close`` leaves
    open). Each call's mask is adapted to the config's ``mask_convention`` and
    ``supports_mask``; subclasses say only where to send it (``edits_url``) and how
    to encode it (``body``)."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self._client = HttpUpstreamClient(config, session)
        self._config = config
        self.name = config.name
        self._url = self.edits_url(config.base_url or "")

    def edits_url(self, base_url: str) -> str:
        """The edit endpoint under the configured ``base_url``."""
        raise NotImplementedError

    async def body(self, call: EditCall) -> RequestBody:
        """The request body of one call."""
        raise NotImplementedError

    def partial_sink(self, call: EditCall) -> PartialSink | None:
        """Where the call's partial images go when ``body`` asked for a stream of them;
        None (the default) for an upstream that does not stream."""
        return None

    async def edit(self, call: EditCall) -> EditOutput:
        """Make one edit within ``call.timeout_s`` seconds; raises UpstreamError on failure."""
        call = await adapt_mask(call, self._config)
        return await self._client.post_edit(
            self._url,
            await self.body(call),
            call.timeout_s,
            MAX_RESPONSE_BYTES,
            self.partial_sink(call),
        )

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""
