"""One delivery of a run on asynchronous upstreams: submit, poll, store, decide.

``advance_run`` looks at each output as the job's record has it
(``worker.runs.async_progress``) and moves it on once: an output whose call the
upstream works on is polled once (a finished image is downloaded, converted and
stored, and the call recorded as succeeded with it); an output that needs a call
gets one (submitted to an asynchronous upstream, its handle recorded before any
waiting; a synchronous fallback is called inline). A failed call goes through
``worker.runs.routing.decide`` as in ``worker.runs.calls``: retry (submit again),
fall back (the next model) or give up (the run fails, the other outputs' upstream
edits are canceled where the API allows). The result is the run's outcome, or
``Deferred``: when to come back.

A retry after a recorded call waits by deferring too: the next delivery makes it.
A call past its time limit (``timeout_s`` of its upstream, the request's
``call_timeout``) or the claim's budget is polled once more, then canceled upstream
and failed as ``upstream_timeout``.

A call whose worker died between the upstream accepting it and the handle being
recorded reads ``in_flight`` with no handle: it is recorded ``lost`` and the edit
submitted again (the one case where a crash can cost a second submission).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from app.background import retry_until
from app.core.jobs import Attempt, CallHandle, Job, JobOutcome, JobStatus
from app.core.providers_config import ModelConfig, UpstreamConfig
from app.errors import (
    EditqError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from worker.process.leases import Lease
from worker.process.resources import WorkerContext
from worker.providers.base import (
    EditCall,
    EditOutput,
    PollFailed,
    PollPending,
    PollResult,
)
from worker.runs import fallback_slots
from worker.runs.async_cancel import cancel_edit, cancel_pending, handle_of
from worker.runs.async_progress import (
    MIN_POLL_DELAY_S,
    OutputProgress,
    poll_delay,
    progress_of,
)
from worker.runs.calls import DEFAULT_COOL_DOWN_S, MIN_CALL_S
from worker.runs.execute import (
    STORE_RETRY_S,
    StoredOutput,
    base_call,
    call_by_reference,
    outcome_of,
    store_output,
)
from worker.runs.plan import RunPlan
from worker.runs.routing import CallFailure, decide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deferred:
    """The run waits on its upstreams: deliver it again in ``delay_s`` seconds."""

    delay_s: float


class MovedOn(Exception):
    """The job left this run and claim meanwhile (canceled, taken over): stop."""


@dataclass(frozen=True)
class _Waiting:
    delay_s: float


@dataclass(frozen=True)
class _Failed:
    call: Attempt  # as recorded (its ``number`` set)
    error: UpstreamError
    upstream_canceled: bool | None = None


_Step = StoredOutput | _Waiting | _Failed


@dataclass
class AsyncRun:
    """One delivery of one run: the job as claimed (or resumed), its plan, its lease."""

    context: WorkerContext
    job: Job
    plan: RunPlan
    lease: Lease
    deadline: float  # Unix time at which the claim's budget runs out
    rng: random.Random = field(default_factory=random.Random)
    _base: EditCall | None = None
    _loading: asyncio.Lock = field(default_factory=asyncio.Lock)

    def budget_left(self) -> float:
        """Seconds of the claim's budget that remain."""
        return self.deadline - time.time()

    async def base(self) -> EditCall:
        """The edit with its inputs, loaded once and only when a call is made (a poll
        reads no input)."""
        async with self._loading:
            if self._base is None:
                self._base = await base_call(self.context, self.job)
            return self._base


async def advance_run(run: AsyncRun) -> JobOutcome | Deferred:
    """Move every output of the run on once (see the module docstring). Raises the
    UpstreamError that failed the run (after canceling the other outputs' edits),
    or MovedOn."""
    job, plan = run.job, run.plan
    progress = progress_of(job, job.spec.request.n)
    busy = Counter(plan.upstreams[p.index] for p in progress if p.pending is not None)
    turns = {name: slots.need - busy[name] for name, slots in plan.slots.items()}
    steps: list[Coroutine[Any, Any, StoredOutput | _Waiting]] = []
    for output in progress:
        upstream = plan.upstreams[output.index]
        if output.done is None and output.pending is None:
            if turns[upstream] <= 0:  # its turn comes when another output of it ends
                steps.append(_wait(run, upstream))
                continue
            turns[upstream] -= 1
        steps.append(_advance_output(run, output))
    results = await asyncio.gather(*steps, return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    for failure in failures:
        if not isinstance(failure, EditqError):
            raise failure  # Redis lost, the job moved on: the edits are not the run's to end
    if failures:
        current = await _current(run)
        if (current.status, current.run, current.attempt) == (
            JobStatus.RUNNING,
            job.run,
            job.attempt,
        ):
            await cancel_pending(run.context, current, reason="run failed")
        raise failures[0]
    if all(isinstance(result, StoredOutput) for result in results):
        return outcome_of(job, [r for r in results if isinstance(r, StoredOutput)])
    delays = [r.delay_s for r in results if isinstance(r, _Waiting)]
    return Deferred(max(MIN_POLL_DELAY_S, min(delays)))


async def _wait(run: AsyncRun, upstream: str) -> _Waiting:
    return _Waiting(run.context.providers.upstream(upstream).poll_initial_s)


async def _current(run: AsyncRun) -> Job:
    return await run.context.store.get(run.job.id) or run.job


async def _advance_output(run: AsyncRun, output: OutputProgress) -> StoredOutput | _Waiting:
    if output.done is not None and output.done.output is not None:
        return StoredOutput(output.done.output, output.done.usage)
    for call in output.unrecorded:
        await _record(run, call, outcome="lost")
    model_index, retries_used = output.model_index, output.retries_used
    step: _Step
    if output.pending is not None:
        step = await _poll(run, output.pending)
    else:
        step = await _start(run, output.index, model_index)
    while isinstance(step, _Failed):
        has_next = model_index + 1 < len(run.plan.models[output.index])
        action, delay = await _after_failure(run, step, retries_used, has_next)
        if action == "retry":
            retries_used += 1
            if step.call.number and delay > MIN_POLL_DELAY_S:
                # The failed call is on record with ``retry``: the next delivery makes
                # the call; the backoff holds no worker slot either.
                return _Waiting(delay)
            await asyncio.sleep(delay)
        else:
            model_index, retries_used = model_index + 1, 0
        step = await _start(run, output.index, model_index)
    return step


async def _after_failure(
    run: AsyncRun, failed: _Failed, retries_used: int, has_next_model: bool
) -> tuple[str, float]:
    """Record the failed call with what follows it; raise when the run gives up."""
    exc = failed.error
    decision = decide(
        CallFailure(
            status=exc.upstream_status,
            code=exc.code,
            retry_after=exc.retry_after,
            rejected=isinstance(exc, UpstreamRejected),
        ),
        routing=run.job.spec.request.routing,
        retries_used=retries_used,
        has_next_model=has_next_model,
        budget_left_s=run.budget_left(),
        min_call_s=MIN_CALL_S,
        rng=run.rng,
    )
    next_action = None if decision.action == "give_up" else decision.action
    await _record(
        run,
        failed.call,
        outcome="canceled" if failed.upstream_canceled else "failed",
        status=exc.upstream_status,
        error_code=exc.code,
        next_action=next_action,
        upstream_canceled=failed.upstream_canceled,
    )
    await _release_extra(run, failed.call)
    if exc.upstream_status == 429:
        await run.context.gate.cool_down(
            failed.call.upstream, exc.retry_after or DEFAULT_COOL_DOWN_S
        )
    if decision.action == "give_up":
        if decision.out_of_budget:
            budget = run.context.settings.attempt_budget_s
            raise UpstreamTimeout(
                f"the upstream did not finish within this attempt's {budget:g}-second budget "
                f"(last error: {exc.message})",
                upstream_status=exc.upstream_status,
            ) from exc
        raise exc
    return decision.action, decision.delay_s


def _call_timeout(run: AsyncRun, upstream: UpstreamConfig) -> float:
    timeout = upstream.timeout_s
    routing_timeout = run.job.spec.request.routing.timeout
    if routing_timeout is not None:
        timeout = min(timeout, routing_timeout.call_timeout / 1000)
    return timeout


async def _poll(run: AsyncRun, call: Attempt) -> _Step:
    """Ask how the call's edit stands, once; store it when done."""
    context = run.context
    upstream = context.providers.upstream(call.upstream)
    adapter = context.async_upstream(call.upstream)
    handle = handle_of(call)
    due = min(call.started_at + _call_timeout(run, upstream), run.deadline)
    result: PollResult
    try:
        result = await adapter.poll(handle)
    except UpstreamRejected as exc:  # 401, 403: asking will not start working again
        return _Failed(call, exc)
    except UpstreamError as exc:  # the status request failed: ask again later
        if isinstance(exc, UpstreamRateLimited):
            await context.gate.cool_down(upstream.name, exc.retry_after or DEFAULT_COOL_DOWN_S)
        log.info("job %s: polling %s failed (%s); asking again", run.job.id, upstream.name, exc)
        result = PollPending(retry_after=exc.retry_after)
    if isinstance(result, EditOutput):
        return await _finish(run, call, result)
    if isinstance(result, PollFailed):
        return _Failed(call, result.error)
    now = time.time()
    if now >= due:
        canceled = await cancel_edit(adapter, handle)
        limit = "this attempt's budget" if due == run.deadline else f"{due - call.started_at:g} s"
        error = UpstreamTimeout(f"{upstream.name} did not finish the edit within {limit}")
        return _Failed(call, error, upstream_canceled=canceled)
    delay = poll_delay(now - call.started_at, upstream.poll_initial_s, upstream.poll_max_s)
    if result.retry_after is not None:
        delay = max(delay, result.retry_after)
    return _Waiting(min(delay, max(MIN_POLL_DELAY_S, due - now)))


async def _finish(run: AsyncRun, call: Attempt, result: EditOutput) -> StoredOutput:
    stored = await store_output(run.context, run.job, call.output_index, result.image, result.usage)
    await _record(
        run, call, outcome="succeeded", status=200, output=stored.image, usage=stored.usage
    )
    await _release_extra(run, call)
    return stored


async def _start(run: AsyncRun, index: int, model_index: int) -> _Step:
    """Make output ``index``'s next call, to model ``model_index`` of its plan."""
    context, job = run.context, run.job
    model = context.providers.edit_model(run.plan.models[index][model_index])
    upstream = context.providers.upstream(model.upstream)
    started = Attempt(
        run=job.run,
        attempt=job.attempt,
        output_index=index,
        upstream=upstream.name,
        model=model.id,
        outcome="in_flight",
        started_at=time.time(),
    )
    early = await _before_call(run, index, upstream)
    if early is not None:
        return _Failed(started, early)  # no call made: ``number`` 0, nothing to record
    base = call_by_reference(context, job) if upstream.input_transfer == "url" else await run.base()
    call = dataclasses.replace(
        base,
        model=model.upstream_model,
        model_entry=model,
        timeout_s=min(_call_timeout(run, upstream), max(MIN_CALL_S, run.budget_left())),
    )
    number = await context.store.call_started(job.id, started)
    if not number:
        raise MovedOn()
    started.number = number
    if upstream.is_async:
        return await _submit(run, started, call)
    return await _call_inline(run, started, call, model)


async def _before_call(run: AsyncRun, index: int, upstream: UpstreamConfig) -> UpstreamError | None:
    """Take a slot on a fallback's own upstream and wait out the shared rate limits;
    the error that stops the call before it is made, if any."""
    context = run.context
    if upstream.name != run.plan.upstreams[index]:
        if not await fallback_slots.take(context.gate, run.lease, index, upstream):
            return UpstreamError(f"no free slot on {upstream.name} for a fallback")
    wait = await context.gate.permit(upstream.name, upstream.requests_per_minute)
    if wait >= run.budget_left():
        return UpstreamError(
            f"{upstream.name} asked callers to wait {wait:.0f} s, past this attempt's budget"
        )
    await asyncio.sleep(wait)
    return None


async def _submit(run: AsyncRun, started: Attempt, call: EditCall) -> _Step:
    context = run.context
    adapter = context.async_upstream(started.upstream)
    try:
        handle = await adapter.submit(call)
    except UpstreamError as exc:
        return _Failed(started, exc)
    accepted = started.model_copy(
        update={
            "handle": CallHandle(
                request_id=handle.request_id,
                poll_url=handle.poll_url,
                result_url=handle.result_url,
                cancel_url=handle.cancel_url,
            )
        }
    )
    if not await _record_call(run, accepted, once_canceled=False):
        await cancel_edit(adapter, handle)  # canceled or taken over while it was submitted
        raise MovedOn()
    upstream = context.providers.upstream(started.upstream)
    return _Waiting(upstream.poll_initial_s)


async def _call_inline(
    run: AsyncRun, started: Attempt, call: EditCall, model: ModelConfig
) -> _Step:
    """A synchronous upstream (a fallback of an asynchronous model) is called at once."""
    try:
        async with asyncio.timeout(call.timeout_s):
            output = await run.context.upstream(model.upstream).edit(call)
    except TimeoutError:
        error = UpstreamTimeout(f"{model.upstream} did not answer within {call.timeout_s:g} s")
        return _Failed(started, error)
    except UpstreamError as exc:
        return _Failed(started, exc)
    return await _finish(run, started, output)


async def _release_extra(run: AsyncRun, call: Attempt) -> None:
    """Give back the slot a fallback call held on an upstream the run was not admitted to."""
    if call.upstream != run.plan.upstreams[call.output_index]:
        upstream = run.context.providers.upstream(call.upstream)
        await fallback_slots.give_back(run.context.gate, run.lease, call.output_index, upstream)


async def _record(run: AsyncRun, call: Attempt, **update: object) -> None:
    """Record how ``call`` ended (``update`` its fields); MovedOn if the job moved on."""
    if not call.number:
        return  # no call was made (no slot, or a rate limit past the budget)
    took = max(0.0, time.time() - call.started_at)
    status = update.get("status")
    error_code = update.get("error_code")
    run.context.metrics.upstream_call(
        call.upstream,
        status if isinstance(status, int) else None,
        error_code if isinstance(error_code, str) else None,
        took,
    )
    ended = call.model_copy(update={"duration_ms": round(took * 1000), **update})
    if not await _record_call(run, ended, once_canceled=False):
        raise MovedOn()


async def _record_call(run: AsyncRun, call: Attempt, *, once_canceled: bool) -> bool:
    """The call is paid for: a Redis outage is waited out, not answered by calling again."""
    store, job_id = run.context.store, run.job.id
    return await retry_until(
        lambda: store.call_ended(job_id, call.number, call, once_canceled=once_canceled),
        until=asyncio.get_running_loop().time() + STORE_RETRY_S,
        retry_on=(RedisError, OSError),
        what=f"recording a call of {job_id}",
    )
