"""Making one output's upstream calls under the request's routing knobs.

The loop follows ``worker.runs.routing``: try the planned models in order, retrying and
falling back as ``decide`` says, waiting out the shared cool-downs and rate limits
of ``UpstreamGate``. Every call is recorded in the job's record as it starts and
again when it ends (with what followed it), so a call whose worker is lost midway
stays on record. A fallback to a model on another upstream first takes a slot there
(the job was admitted with slots on its first choice only).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from redis.exceptions import RedisError

from app.background import Backoff, retry_until
from app.core.jobs import Attempt, Job
from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from worker.process.leases import Lease
from worker.process.resources import WorkerContext
from worker.providers.base import EditCall, EditOutput
from worker.runs import fallback_slots
from worker.runs.inputs import with_references
from worker.runs.routing import CallFailure, Decision, decide

MIN_CALL_S = 1.0
DEFAULT_COOL_DOWN_S = 1.0
SLOT_WAIT_MAX_S = 1.0


@dataclass
class OutputCalls:
    """Everything one output's calls need."""

    context: WorkerContext
    job: Job  # as claimed: its run and attempt fence what is recorded of the calls
    index: int
    plan: Sequence[str]  # model ids, first choice then fallbacks
    deadline: float  # loop time at which the attempt's budget runs out
    record_until: float  # loop time until which a Redis outage is waited out to record
    lease: Lease
    rng: random.Random
    failed: _EndedCall | None = None  # the failed call whose next action is not known yet

    def budget_left(self) -> float:
        """Seconds of the attempt's budget that remain."""
        return self.deadline - asyncio.get_running_loop().time()


@dataclass(frozen=True)
class _EndedCall:
    number: int  # in the job's record; 0 when the job had moved on as the call started
    call: Attempt


async def call_with_routing(calls: OutputCalls, base: EditCall) -> EditOutput:
    """One output image, following retries and fallbacks; raises the final error."""
    providers = calls.context.providers
    first_upstream = providers.edit_model(calls.plan[0]).upstream
    model_index, retries_used = 0, 0
    while True:
        model = providers.edit_model(calls.plan[model_index])
        upstream = providers.upstream(model.upstream)
        try:
            async with _slot(calls, upstream, extra=upstream.name != first_upstream):
                return await _call_once(calls, base, model, upstream)
        except UpstreamError as exc:
            decision = _decide(calls, exc, model_index, retries_used)
            # None when no call was made (no slot, or a rate limit past the budget).
            failed, calls.failed = calls.failed, None
            if failed is not None:
                next_action = None if decision.action == "give_up" else decision.action
                await _record_end(calls, failed, next_action=next_action)
            if exc.upstream_status == 429:
                cool_down = exc.retry_after or DEFAULT_COOL_DOWN_S
                await calls.context.gate.cool_down(upstream.name, cool_down)
            if decision.action == "give_up":
                if decision.out_of_budget:
                    raise _budget_spent(calls, exc) from exc
                raise
            if decision.action == "retry":
                retries_used += 1
                await asyncio.sleep(decision.delay_s)
            else:
                model_index, retries_used = model_index + 1, 0


def _decide(
    calls: OutputCalls, exc: UpstreamError, model_index: int, retries_used: int
) -> Decision:
    return decide(
        CallFailure(
            status=exc.upstream_status,
            code=exc.code,
            retry_after=exc.retry_after,
            rejected=isinstance(exc, UpstreamRejected),
        ),
        routing=calls.job.spec.request.routing,
        retries_used=retries_used,
        has_next_model=model_index + 1 < len(calls.plan),
        budget_left_s=calls.budget_left(),
        min_call_s=MIN_CALL_S,
        rng=calls.rng,
    )


async def _call_once(
    calls: OutputCalls, base: EditCall, model: ModelConfig, upstream: UpstreamConfig
) -> EditOutput:
    context = calls.context
    wait = await context.gate.permit(upstream.name, upstream.requests_per_minute)
    if wait >= calls.budget_left():
        raise UpstreamError(
            f"{upstream.name} asked callers to wait {wait:.0f} s, past this attempt's budget"
        )
    await asyncio.sleep(wait)
    timeout = min(upstream.timeout_s, calls.budget_left())
    routing_timeout = calls.job.spec.request.routing.timeout
    if routing_timeout is not None:
        timeout = min(timeout, routing_timeout.call_timeout / 1000)
    if upstream.input_transfer == "url":
        # The upstream fetches the stored inputs itself (they were loaded for the others).
        base = with_references(base, context.storage, calls.job.spec.inputs)
    call = replace(base, model=model.upstream_model, model_entry=model, timeout_s=timeout)
    started = Attempt(
        run=calls.job.run,
        attempt=calls.job.attempt,
        output_index=calls.index,
        upstream=upstream.name,
        model=model.id,
        outcome="in_flight",
        started_at=time.time(),
    )
    number = await context.store.call_started(calls.job.id, started)
    began = time.monotonic()

    def ended(status: int | None, error_code: str | None) -> _EndedCall:
        took = time.monotonic() - began
        context.metrics.upstream_call(upstream.name, status, error_code, took)
        update = {
            "outcome": "failed" if error_code else "succeeded",
            "status": status,
            "error_code": error_code,
            "duration_ms": round(took * 1000),
        }
        return _EndedCall(number, started.model_copy(update=update))

    try:
        async with asyncio.timeout(timeout):
            output = await context.upstream(upstream.name).edit(call)
    except TimeoutError:
        calls.failed = ended(None, "upstream_timeout")
        raise UpstreamTimeout(f"{upstream.name} did not answer within {timeout:g} s") from None
    except UpstreamError as exc:
        calls.failed = ended(exc.upstream_status, exc.code)
        raise
    await _record_end(calls, ended(200, None), next_action=None)
    return output


async def _record_end(
    calls: OutputCalls, ended: _EndedCall, *, next_action: Literal["retry", "fallback"] | None
) -> None:
    """Record how a call ended. The call is paid for: a Redis outage is waited out (up
    to ``calls.record_until``) rather than ending the run and calling again."""
    if not ended.number:
        return  # the job had moved on before the call started: nothing to update
    call = ended.call.model_copy(update={"next_action": next_action})
    job_id = calls.job.id
    await retry_until(
        lambda: calls.context.store.call_ended(job_id, ended.number, call),
        until=calls.record_until,
        retry_on=(RedisError, OSError),
        what=f"recording how a call of {job_id} ended",
    )


@contextlib.asynccontextmanager
async def _slot(
    calls: OutputCalls, upstream: UpstreamConfig, *, extra: bool
) -> AsyncIterator[None]:
    """Nothing for the admitted upstream; a slot of its own for a fallback elsewhere."""
    if not extra:
        yield
        return
    gate, backoff = calls.context.gate, Backoff(0.05, SLOT_WAIT_MAX_S)
    holder = fallback_slots.holder(calls.lease.arq_job_id, calls.index, upstream.name)
    while (
        grants := await gate.admit(
            {upstream.name: (1, upstream.max_concurrency)}, holder=holder, ticket="", ticket_score=0
        )
    ) is None:
        if backoff.peek() >= calls.budget_left():
            raise UpstreamError(f"no free slot on {upstream.name} within this attempt's budget")
        await asyncio.sleep(backoff.next())
    calls.lease.slots.extend(grants)
    try:
        yield
    finally:
        for grant in grants:
            calls.lease.slots.remove(grant)
            await gate.release(grant, upstream.max_concurrency)


def _budget_spent(calls: OutputCalls, last: UpstreamError) -> UpstreamError:
    budget = calls.context.settings.attempt_budget_s
    return UpstreamError(
        f"the upstream did not finish within this attempt's {budget:g}-second budget "
        f"(last error: {last.message})",
        upstream_status=last.upstream_status,
    )
