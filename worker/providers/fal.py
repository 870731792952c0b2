"""The adapter for fal's queue API (``kind = "fal"``): submit an edit, then poll it.

::

    POST {base_url}/{upstream_model}   Authorization: Key <key>, the model's JSON input
         -> {request_id, status_url, response_url, cancel_url}
    GET  status_url    -> 202 IN_QUEUE (queue_position) | 202 IN_PROGRESS | 200 COMPLETED
    GET  response_url  -> {images: [{url, content_type}], has_nsfw_concepts?}, or the
                          error the model ended with (422 content_policy_violation ...)
    PUT  cancel_url    -> CANCELLATION_REQUESTED | ALREADY_COMPLETED | NOT_FOUND

The input is built by ``worker.providers.fal_answers.input_body`` (prompt and image
fields from the model entry; images by presigned URL with ``input_transfer = "url"``,
else as data URIs). The key is sent only to the configured origin: result images on
fal's CDN are downloaded without it, at once (their URLs may expire), up to
``MAX_DOWNLOAD_BYTES``.

Failures: a refused submission raises (``fal_answers.fal_error``). ``poll`` raises
only when asking failed (a status or result request answered 401/403, 429 or 5xx, or
not at all), so the caller asks again or gives up; it returns ``PollFailed`` when the
edit itself failed: the model's error answer, fal's moderation (``ContentFiltered``,
also for an output its safety checker flagged), a request fal no longer knows (404), a
result image that cannot be downloaded any more (its URL expired).
"""

from __future__ import annotations

import asyncio

import aiohttp

from app.core.providers_config import UpstreamConfig
from app.errors import ContentFiltered, UpstreamBadResponse, UpstreamError, UpstreamRejected
from worker.providers.base import (
    EditCall,
    EditOutput,
    PollFailed,
    PollPending,
    PollResult,
    UpstreamHandle,
)
from worker.providers.fal_answers import (
    QueueStatus,
    TooManyImages,
    failed_status_error,
    fal_error,
    input_body,
    read_cancel,
    read_handle,
    read_result,
    read_status,
)
from worker.providers.http.client import (
    MAX_RESPONSE_BYTES,
    HttpAnswer,
    HttpUpstreamClient,
    adapt_mask,
)
from worker.providers.http.errors import parse_retry_after

QUEUE_REQUEST_TIMEOUT_S = 30.0
"""Cap on one status, result or cancel request (the edit's own time is not spent here)."""

MAX_STATUS_BYTES = 1024 * 1024
"""Largest status or submit answer read (with logs, a status can be long)."""


class FalUpstream:
    """fal's queue API for one ``[[upstreams]]`` entry, over a shared aiohttp session
    (which ``close`` leaves open); see the module docstring."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        key = config.api_key.get_secret_value() if config.api_key else ""
        auth = {"Authorization": f"Key {key}"} if key else {}
        self._client = HttpUpstreamClient(config, session, auth=auth)
        self._config = config
        self._base_url = (config.base_url or "").rstrip("/")
        self.name = config.name

    async def submit(self, call: EditCall) -> UpstreamHandle:
        """Queue the edit at ``{base_url}/{call.model}``; the handle holds fal's URLs.

        Raises UpstreamRejected (``invalid_request_error``) before sending anything when
        the call has more images than the model takes, or its mask must be converted but
        was passed by URL; otherwise the mapped error of a refused submission.
        """
        adapted = await self._adapted(call)
        try:
            body = input_body(adapted)
        except TooManyImages as exc:
            message = str(exc)
            if call.mask is not None and adapted.mask is None:
                message += f" (the mask is one of them: upstream {self.name} takes no mask)"
            raise UpstreamRejected(message, code="invalid_request_error") from exc
        url = f"{self._base_url}/{adapted.model.strip('/')}"
        headers = {"Accept": "application/json", **self._client.auth_for(url)}
        answer = await self._client.exchange(
            "POST",
            url,
            adapted.timeout_s,
            MAX_STATUS_BYTES,
            headers,
            body=aiohttp.JsonPayload(body),
        )
        if not 200 <= answer.status < 300:
            raise fal_error(answer.status, answer.body, answer.retry_after)
        return read_handle(answer.body, answer.status)

    async def poll(self, handle: UpstreamHandle) -> PollResult:
        """How the edit stands; a finished one's image is downloaded before returning."""
        answer = await self._get(handle.poll_url, MAX_STATUS_BYTES)
        if answer.status == 404:
            return PollFailed(
                UpstreamError(
                    f"fal no longer knows request {handle.request_id}", upstream_status=404
                )
            )
        if not 200 <= answer.status < 300:
            raise fal_error(answer.status, answer.body, answer.retry_after)
        status = read_status(answer.body, answer.status)
        if status.state != "COMPLETED":
            return PollPending(
                queue_position=status.queue_position if status.state == "IN_QUEUE" else None,
                retry_after=parse_retry_after(answer.retry_after),
            )
        return await self._result(handle, status)

    async def cancel(self, handle: UpstreamHandle) -> bool:
        """Ask fal to drop the request: True when it took the cancel, False when nothing
        was left to cancel (``ALREADY_COMPLETED``, ``NOT_FOUND``). Raises the mapped
        error when the cancel request itself failed."""
        if not handle.cancel_url:
            return False
        headers = {"Accept": "application/json", **self._client.auth_for(handle.cancel_url)}
        answer = await self._client.exchange(
            "PUT", handle.cancel_url, QUEUE_REQUEST_TIMEOUT_S, MAX_STATUS_BYTES, headers
        )
        state = read_cancel(answer.body)
        if state in ("ALREADY_COMPLETED", "NOT_FOUND") and answer.status in (400, 404):
            return False
        if not 200 <= answer.status < 300:
            raise fal_error(answer.status, answer.body, answer.retry_after)
        return True

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""

    async def _adapted(self, call: EditCall) -> EditCall:
        """``call`` with its mask as the upstream takes it (``adapt_mask``); a mask that
        must be converted needs its bytes, which a mask passed by URL does not carry."""
        mask = call.mask
        if (
            mask is not None
            and not mask.data
            and mask.url
            and self._config.supports_mask
            and self._config.mask_convention != "transparent_edits"
        ):
            raise UpstreamRejected(
                f"upstream {self.name} converts masks ({self._config.mask_convention}), which "
                'needs the mask\'s bytes: give it input_transfer = "inline"',
                code="invalid_request_error",
            )
        return await adapt_mask(call, self._config)

    async def _result(self, handle: UpstreamHandle, status: QueueStatus) -> PollResult:
        """The finished request's image (downloaded now), or how it failed."""
        # fal's response_url is its status_url without "/status".
        url = handle.result_url or handle.poll_url.removesuffix("/status")
        answer = await self._get(url, MAX_RESPONSE_BYTES)
        if not 200 <= answer.status < 300:
            error = fal_error(answer.status, answer.body, answer.retry_after)
            if _asking_failed(answer.status, status):
                raise error
            return PollFailed(error)
        if status.error is not None:
            return PollFailed(failed_status_error(status))
        try:
            result = read_result(answer.body, answer.status)
        except UpstreamBadResponse as exc:
            return PollFailed(exc)
        if result.flagged:
            return PollFailed(
                ContentFiltered(
                    "fal's safety checker flagged the edited image", upstream_status=answer.status
                )
            )
        image = result.image
        if image is None:
            deadline = asyncio.get_running_loop().time() + self._config.timeout_s
            try:
                image = await self._client.download(result.url or "", deadline, answer.status)
            except UpstreamBadResponse as exc:
                return PollFailed(_undownloadable(exc))
        return EditOutput(image=image, usage=result.usage)

    async def _get(self, url: str, limit: int) -> HttpAnswer:
        headers = {"Accept": "application/json", **self._client.auth_for(url)}
        return await self._client.exchange("GET", url, QUEUE_REQUEST_TIMEOUT_S, limit, headers)


def _undownloadable(cause: UpstreamBadResponse) -> UpstreamBadResponse:
    """A result image that cannot be downloaded any more, worded as such."""
    return UpstreamBadResponse(
        f"fal's result image cannot be downloaded (its URL may have expired): {cause.message}",
        upstream_status=cause.upstream_status,
    )


def _asking_failed(http_status: int, status: QueueStatus) -> bool:
    """Whether a result request's error answer is about the asking (ask again, or the
    key is refused), not the edit's outcome: fal stores a failed edit's answer, with its
    status, at the result URL, and says so in the status (``error``)."""
    if http_status in (401, 403, 429):
        return True
    return http_status >= 500 and status.error is None
