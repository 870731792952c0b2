"""The adapter for Replicate's predictions API (``kind = "replicate"``), an async upstream.

``submit`` creates a prediction and returns its handle at once (no ``Prefer: wait``:
waiting is the caller's scheduled work): ``POST {base_url}/v1/models/{owner}/{name}/predictions``
with ``{"input": {...}}``, or ``POST {base_url}/v1/predictions`` with ``{"version", "input"}``
when the call's model entry (``EditCall.model_entry``) names a ``version``; the entry
also names the input fields (``prompt_field``, ``image_field``). An image goes as its
presigned URL when the call has one (``input_transfer = "url"``), else as a data URI.
With ``max_images`` above 1 the image field is a list; a mask goes in ``mask``,
converted by ``adapt_mask``.

``poll`` reads ``urls.get``: ``starting``/``processing`` are pending; ``succeeded``
downloads the first output URL at once (Replicate deletes outputs after an hour);
``failed``, ``canceled`` and ``aborted`` are ``PollFailed``, moderation as
``ContentFiltered``. ``cancel`` posts to ``urls.cancel``. HTTP errors are mapped by
``worker.providers.http.errors``; a 429 without ``Retry-After`` takes its wait from
the ``detail`` text ("Expected available in 1 second", "resets in ~30s").
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from app.core.jobs import Usage
from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import (
    ContentFiltered,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from worker.providers.base import (
    EditCall,
    EditOutput,
    InputImage,
    PollFailed,
    PollPending,
    PollResult,
    UpstreamHandle,
)
from worker.providers.http.client import (
    MAX_RESPONSE_BYTES,
    HttpAnswer,
    HttpUpstreamClient,
    adapt_mask,
)
from worker.providers.http.errors import error_for_status

MAX_PREDICTION_BYTES = MAX_RESPONSE_BYTES
"""Largest prediction object read: it echoes the input, whose images may be data URIs."""

POLL_TIMEOUT_S = 30.0
"""Cap on one status request or cancel: they answer at once or not at all."""

MASK_FIELD = "mask"
"""The input field Replicate's inpainting models take their mask in."""

PENDING = frozenset({"starting", "processing"})
MODERATION = re.compile(r"flagged as sensitive|\(E005\)|nsfw|content (?:policy|moderation)", re.I)
"""What a failed prediction's ``error`` says when moderation refused the input or output."""
INVALID_INPUT = re.compile(r"^\s*input validation (?:error|failed)", re.I)
_WAIT_HINT = re.compile(r"\bin\s*~?\s*(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.I)
"""A throttled answer's wait in words: "Expected available in 1 second", "resets in ~30s"."""


@dataclass(frozen=True)
class Prediction:
    """The parts of a prediction object editq uses (see Replicate's HTTP API reference)."""

    id: str
    status: str
    output_urls: tuple[str, ...] = ()
    error: str | None = None
    get_url: str | None = None
    cancel_url: str | None = None
    data_removed: bool = False
    metrics: dict[str, float] | None = None


def parse_prediction(body: bytes, status: int) -> Prediction:
    """The prediction in a 2xx answer; UpstreamBadResponse when it is not one.

    ``output`` may be one URL or a list of them (other shapes give no URLs).
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpstreamBadResponse(
            "Replicate answered with no JSON", upstream_status=status
        ) from exc
    if not isinstance(document, dict):
        raise UpstreamBadResponse("Replicate answered with no prediction", upstream_status=status)
    ident, state = document.get("id"), document.get("status")
    if not isinstance(ident, str) or not ident or not isinstance(state, str):
        raise UpstreamBadResponse(
            "Replicate's prediction has no id or status", upstream_status=status
        )
    output = document.get("output")
    items = output if isinstance(output, list) else [output]
    links = document.get("urls")
    urls: dict[str, Any] = links if isinstance(links, dict) else {}
    metrics = document.get("metrics")
    return Prediction(
        id=ident,
        status=state,
        output_urls=tuple(item for item in items if isinstance(item, str) and item),
        error=_text(document.get("error")),
        get_url=_text(urls.get("get")),
        cancel_url=_text(urls.get("cancel")),
        data_removed=document.get("data_removed") is True,
        metrics=_numbers(metrics) if isinstance(metrics, dict) else None,
    )


def usage_of(prediction: Prediction) -> Usage | None:
    """Replicate's ``metrics`` (``predict_time`` seconds, ``image_count`` ...) as usage
    extras; None when it reported none. Replicate counts no tokens."""
    if not prediction.metrics:
        return None
    return Usage.model_validate(prediction.metrics)


def failure_of(prediction: Prediction) -> UpstreamError:
    """The error of a prediction that ended without output: moderation is final
    (``ContentFiltered``), invalid input a rejection, a deadline a timeout, the rest
    an UpstreamError worth retrying."""
    reason = prediction.error or f"the prediction ended {prediction.status}"
    message = f"Replicate prediction {prediction.id} {prediction.status}: {reason}"
    if MODERATION.search(reason):
        return ContentFiltered(message)
    if INVALID_INPUT.search(reason):
        return UpstreamRejected(message, code="invalid_request_error")
    if prediction.status == "aborted":
        return UpstreamTimeout(message)
    if prediction.status == "canceled":
        return UpstreamError(message, code="upstream_canceled")
    return UpstreamError(message)


def retry_hint(answer: HttpAnswer) -> str | None:
    """A 429's wait: its ``Retry-After`` header, else the seconds its ``detail`` names."""
    if answer.retry_after is not None or answer.status != 429:
        return answer.retry_after
    found = _WAIT_HINT.search(answer.body.decode("utf-8", errors="replace"))
    return found.group(1) if found else None


def image_value(image: InputImage) -> str:
    """How Replicate takes a file input: its URL, else a base64 data URI."""
    if image.url:
        return image.url
    return f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"


def prediction_body(call: EditCall, model: ModelConfig) -> bytes:
    """The JSON body creating one prediction for ``call`` (CPU work for inline images)."""
    if len(call.images) > model.max_images:
        raise UpstreamRejected(
            f"model {model.upstream_model} takes at most {model.max_images} input image(s), "
            f"not {len(call.images)}",
            code="invalid_request_error",
        )
    images = [image_value(image) for image in call.images]
    inputs: dict[str, Any] = {
        model.prompt_field: call.prompt,
        model.image_field: images if model.max_images > 1 else images[0],
    }
    if call.mask is not None:
        inputs[MASK_FIELD] = image_value(call.mask)
    document: dict[str, Any] = {"input": inputs}
    if model.version:
        document = {"version": model.version, **document}
    return json.dumps(document).encode()


def create_url(base_url: str, model: ModelConfig) -> str:
    """Where a prediction of ``model`` is created: the version endpoint when it names a
    version, else the model's own (``upstream_model`` is ``owner/name``)."""
    root = base_url.rstrip("/")
    if model.version:
        return f"{root}/v1/predictions"
    owner, _, name = model.upstream_model.partition("/")
    if not owner or not name or "/" in name:
        raise UpstreamRejected(
            f"Replicate model {model.upstream_model!r} is not owner/name and has no version",
            code="invalid_request_error",
        )
    return f"{root}/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions"


class ReplicateUpstream:
    """Replicate's predictions API over a shared aiohttp session (``close`` leaves it
    open); ``Authorization: Bearer <api_key>``, sent only to ``base_url``'s origin."""

    def __init__(self, config: UpstreamConfig, session: aiohttp.ClientSession) -> None:
        self._client = HttpUpstreamClient(config, session)
        self._config = config
        self._base_url = config.base_url or ""
        self.name = config.name

    def _model(self, call: EditCall) -> ModelConfig:
        """The call's model entry; the defaults (``prompt``, ``image``, no version, one
        image) for a call that carries none."""
        if call.model_entry is not None:
            return call.model_entry
        return ModelConfig(id=call.model, upstream=self.name, upstream_model=call.model)

    async def submit(self, call: EditCall) -> UpstreamHandle:
        """Create the prediction; raises UpstreamError when Replicate refuses it."""
        model = self._model(call)
        url = create_url(self._base_url, model)
        call = await self._with_mask(call)
        body = await asyncio.to_thread(prediction_body, call, model)
        payload = aiohttp.BytesPayload(body, content_type="application/json")
        answer = await self._send("POST", url, call.timeout_s, body=payload)
        prediction = await self._prediction(answer)
        root = f"{self._base_url.rstrip('/')}/v1/predictions/{quote(prediction.id, safe='')}"
        return UpstreamHandle(
            request_id=prediction.id,
            poll_url=prediction.get_url or root,
            cancel_url=prediction.cancel_url or f"{root}/cancel",
        )

    async def _with_mask(self, call: EditCall) -> EditCall:
        """The call with its mask as the config takes it. A mask sent by URL has no
        bytes to convert, so a conversion it would need is refused, not guessed."""
        mask = call.mask
        if (
            mask is not None
            and not mask.data
            and self._config.mask_convention != "transparent_edits"
        ):
            raise UpstreamRejected(
                f"upstream {self.name} takes inputs by URL, so the mask cannot be converted "
                f'to {self._config.mask_convention}; set input_transfer = "inline"',
                code="invalid_request_error",
            )
        return await adapt_mask(call, self._config)

    async def poll(self, handle: UpstreamHandle) -> PollResult:
        """How the prediction stands; a finished image is downloaded before returning.
        Raises UpstreamError only when asking (or a download) failed transiently."""
        timeout_s = min(POLL_TIMEOUT_S, self._config.timeout_s)
        answer = await self._send("GET", handle.poll_url, timeout_s)
        prediction = await self._prediction(answer)
        if prediction.status in PENDING:
            return PollPending()
        if prediction.status != "succeeded":
            return PollFailed(failure_of(prediction))
        return await self._result(prediction, answer.status)

    async def _result(self, prediction: Prediction, status: int) -> PollResult:
        if not prediction.output_urls:
            why = "its output was deleted" if prediction.data_removed else "it has no output URL"
            message = f"Replicate prediction {prediction.id} succeeded but {why}"
            code = "upstream_result_expired" if prediction.data_removed else None
            return PollFailed(UpstreamBadResponse(message, upstream_status=status, code=code))
        url = prediction.output_urls[0]
        deadline = asyncio.get_running_loop().time() + self._config.timeout_s
        try:
            image = await self._client.download(url, deadline, status)
        except UpstreamBadResponse as exc:
            if exc.upstream_status in (403, 404, 410):
                exc = UpstreamBadResponse(
                    f"the output of Replicate prediction {prediction.id} is gone "
                    f"(HTTP {exc.upstream_status}): it expired",
                    upstream_status=exc.upstream_status,
                    code="upstream_result_expired",
                )
            return PollFailed(exc)
        return EditOutput(image=image, usage=usage_of(prediction))

    async def cancel(self, handle: UpstreamHandle) -> bool:
        """Cancel the prediction (Replicate answers with it, whatever its status)."""
        url = handle.cancel_url or f"{handle.poll_url.rstrip('/')}/cancel"
        timeout_s = min(POLL_TIMEOUT_S, self._config.timeout_s)
        answer = await self._send("POST", url, timeout_s)
        if not 200 <= answer.status < 300:
            raise error_for_status(answer.status, answer.body, retry_hint(answer))
        return True

    async def _send(
        self, method: str, url: str, timeout_s: float, body: aiohttp.Payload | None = None
    ) -> HttpAnswer:
        """One request to Replicate's API; the key goes only to its own origin."""
        headers = {"Accept": "application/json", **self._client.auth_for(url)}
        return await self._client.exchange(
            method, url, timeout_s, MAX_PREDICTION_BYTES, headers, body=body
        )

    async def _prediction(self, answer: HttpAnswer) -> Prediction:
        if not 200 <= answer.status < 300:
            raise error_for_status(answer.status, answer.body, retry_hint(answer))
        return await asyncio.to_thread(parse_prediction, answer.body, answer.status)

    async def close(self) -> None:
        """Nothing to release: the shared session is closed by its owner."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _numbers(raw: dict[str, Any]) -> dict[str, float]:
    return {
        key: value
        for key, value in raw.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
