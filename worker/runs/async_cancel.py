"""Canceling the edits asynchronous upstreams work on for a job.

Where the upstream's API has a cancel (Replicate, fal) it is asked to stop; where it
has none (BFL) the edit runs on, unused. Either way each call is recorded
``canceled``, with ``upstream_canceled`` saying whether the upstream accepted.
"""

from __future__ import annotations

import logging
import time

from app.core.jobs import Attempt, Job
from app.errors import UpstreamError
from worker.process.resources import WorkerContext
from worker.providers.base import AsyncUpstream, UpstreamHandle
from worker.runs.async_progress import pending_calls

log = logging.getLogger(__name__)


def handle_of(call: Attempt) -> UpstreamHandle:
    """The adapter's handle of a call recorded with one (ValueError without)."""
    if call.handle is None or call.handle.poll_url is None:
        raise ValueError(f"call {call.number} has no upstream handle to poll")
    return UpstreamHandle(
        request_id=call.handle.request_id,
        poll_url=call.handle.poll_url,
        result_url=call.handle.result_url,
        cancel_url=call.handle.cancel_url,
    )


async def cancel_edit(adapter: AsyncUpstream, handle: UpstreamHandle) -> bool:
    """Ask the upstream to stop the edit; False when it has no cancel or asking failed."""
    try:
        return await adapter.cancel(handle)
    except UpstreamError as exc:
        log.warning("canceling upstream request %s failed: %s", handle.request_id, exc)
        return False


async def cancel_pending(context: WorkerContext, job: Job, *, reason: str) -> int:
    """Ask the upstreams to stop every edit of the job's current claim they work on
    (where their API has a cancel) and record each call as ``canceled`` either way,
    with whether the upstream accepted. How many calls there were."""
    calls = pending_calls(job)
    for call in calls:
        adapter = context.async_upstream(call.upstream)
        accepted = await cancel_edit(adapter, handle_of(call))
        log.info(
            "job %s: upstream request %s canceled (%s); the upstream accepted: %s",
            job.id,
            call.handle.request_id if call.handle else "?",
            reason,
            accepted,
        )
        took = max(0.0, time.time() - call.started_at)
        ended = call.model_copy(
            update={
                "outcome": "canceled",
                "upstream_canceled": accepted,
                "duration_ms": round(took * 1000),
            }
        )
        await context.store.call_ended(job.id, call.number, ended, once_canceled=True)
    return len(calls)
