"""Reading an upstream's streamed edit answer, in OpenAI's image edit event format.

Asked with ``stream=true``, an OpenAI-compatible upstream answers
``text/event-stream``: ``image_edit.partial_image`` events (``b64_json``,
``partial_image_index``), then one ``image_edit.completed`` event (``b64_json``,
``usage``), or an ``error`` event. ``read_edit_events`` hands every partial image to
a ``PartialSink`` as it arrives and returns the body of the JSON answer the same
call would have had without ``stream`` (``{"data": [{"b64_json"}], "usage"}``, or
``{"error"}``), so ``parse_edit_response`` reads both alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from app.client.models import ServerSentEvent, SseDecoder
from app.errors import UpstreamBadResponse
from worker.providers.base import PartialSink
from worker.providers.http.responses import decode_base64

CHUNK_BYTES = 64 * 1024


async def read_edit_events(
    content: aiohttp.StreamReader,
    status: int,
    limit: int,
    too_large: Callable[[int], Exception],
    on_partial: PartialSink,
) -> bytes:
    """The equivalent JSON answer of an edit event stream, read up to ``limit`` bytes
    in all (``too_large(limit)`` is raised past it); partial images go to ``on_partial``.

    UpstreamBadResponse when an event is not JSON or a partial image is not base64,
    or when the stream ends without a completed or error event.
    """
    decoder, read = SseDecoder(), 0
    async for chunk in content.iter_chunked(CHUNK_BYTES):
        read += len(chunk)
        if read > limit:
            raise too_large(limit)
        for event in decoder.feed(chunk):
            answer = await _take(event, status, on_partial)
            if answer is not None:
                return answer
    for event in decoder.end():
        answer = await _take(event, status, on_partial)
        if answer is not None:
            return answer
    raise UpstreamBadResponse(
        "upstream event stream ended without image_edit.completed", upstream_status=status
    )


async def _take(event: ServerSentEvent, status: int, on_partial: PartialSink) -> bytes | None:
    """Act on one event: the final answer's body for a completed or error event, None
    after handing on a partial image (or for an event of another kind)."""
    data = _json(event, status)
    kind = str(data.get("type") or event.event)
    if event.event == "error" or kind == "error" or data.get("error"):
        return json.dumps({"error": data.get("error") or data}).encode()
    if kind.endswith(".completed"):
        answer = {"data": [{"b64_json": data.get("b64_json")}], "usage": data.get("usage")}
        return json.dumps(answer).encode()
    if kind.endswith(".partial_image"):
        index = data.get("partial_image_index")
        b64_json = data.get("b64_json")
        if isinstance(index, int) and isinstance(b64_json, str):
            await on_partial(index, decode_base64(b64_json, status))
    return None


def _json(event: ServerSentEvent, status: int) -> dict[str, Any]:
    try:
        data = json.loads(event.data)
    except (ValueError, RecursionError) as exc:
        raise UpstreamBadResponse(
            f"upstream event {event.event} is not JSON", upstream_status=status
        ) from exc
    if not isinstance(data, dict):
        raise UpstreamBadResponse(
            f"upstream event {event.event} is not a JSON object", upstream_status=status
        )
    return data
