"""Driving an adapter against a fake upstream, as the adapter tests all do: its
``UpstreamConfig`` pointed at the fake, and an async edit polled until it ends."""

from __future__ import annotations

import asyncio
from typing import Any

from app.core.providers_config import UpstreamConfig
from app.errors import UpstreamError
from worker.providers.base import AsyncUpstream, PollFailed, PollPending, PollResult, UpstreamHandle


def upstream_config(
    kind: str, base_url: str, api_key: str | None = None, /, **changes: Any
) -> UpstreamConfig:
    """A ``kind`` upstream named after its kind at ``base_url``; ``changes`` override any
    field, ``base_url`` and ``api_key`` too (validated as a providers file would be)."""
    fields: dict[str, Any] = {"name": kind, "kind": kind, "base_url": base_url}
    if api_key is not None:
        fields["api_key"] = api_key
    return UpstreamConfig.model_validate(fields | changes)


async def poll_until_done(
    upstream: AsyncUpstream, handle: UpstreamHandle, timeout_s: float = 5.0, every_s: float = 0.02
) -> PollResult:
    """Poll ``handle`` every ``every_s`` (as the scheduler would, only faster) until the edit
    is no longer pending; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while isinstance(result := await upstream.poll(handle), PollPending):
            await asyncio.sleep(every_s)
    return result


def failure(result: PollResult) -> UpstreamError:
    """The error of a failed edit (an AssertionError when it did not fail)."""
    assert isinstance(result, PollFailed), result
    return result.error
