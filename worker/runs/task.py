"""The arq task: admit a job's run to its upstreams, claim it, execute it under a
lease, record how it ended.

A run whose upstreams have no free slot is not claimed: it goes back to the queue,
deferred, as a waiter the next freed slot wakes (``upstream_gate``); it holds no
worker slot meanwhile and stays ``queued``.

A run that may call an asynchronous upstream (BFL …) is carried by many short
deliveries of the same arq job instead (``_run_async``): each submits or polls once
(``worker.runs.async_calls``) and defers the job to the next poll, so the wait holds
no worker slot and no connection, and a crash costs no second submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from arq.worker import RetryJob
from redis.exceptions import RedisError

from app.background import retry_until
from app.blobs import output_key
from app.core.jobs import Job, JobError, JobOutcome, JobStatus, Lane, StoredImage
from app.dispatch import arq_job_id, lane_queue
from app.errors import EditqError
from app.obs.logs import bind_log_fields
from worker.capacity.gate import SlotGrant, ticket_for
from worker.process.leases import Lease
from worker.process.resources import CONTEXT_KEY, WorkerContext
from worker.runs import fallback_slots
from worker.runs.async_calls import (
    AsyncRun,
    Deferred,
    MovedOn,
    advance_run,
)
from worker.runs.async_cancel import cancel_pending
from worker.runs.async_progress import attempt_deadline, is_async_run, pending_calls, resumes
from worker.runs.execute import STORE_RETRY_S, execute_run
from worker.runs.plan import RunPlan, plan_run
from worker.runs.result_cache import request_digest

log = logging.getLogger(__name__)

# A deferred waiter is woken when a slot frees; this only bounds a lost wake-up.
WAITER_SAFETY_DEFER_S = 300
# Subtracted from single jobs' enqueue times so they rank ahead of any variant.
SINGLE_JOB_PRIORITY_MS = 10**13


async def run_edit(ctx: dict[str, Any], job_id: str, run: int) -> None:
    """Run ``run`` of job ``job_id`` (arq task ``run_edit``; arguments are ids only).

    A run that is no longer current (canceled, retried, finished) is skipped. A
    client's cancel abandons the work; a worker shutdown hands the job back at once.
    Losing Redis ends this delivery only once Redis answers again, and the run is
    delivered again (taken over within a lease if it was claimed).
    """
    try:
        await _run_edit(ctx, job_id, run)
    except RedisError as exc:
        # Were this an ordinary failure, arq would drop the delivery (the job would stay
        # queued forever) or, with Redis still away, leave its ~400 s in-progress key.
        log.warning("job %s run %d lost Redis (%s); it will run again", job_id, run, exc)
        await _until_redis_answers(ctx[CONTEXT_KEY])
        raise RetryJob() from exc


async def _until_redis_answers(context: WorkerContext) -> None:
    """Wait (up to ``STORE_RETRY_S``) until Redis answers a ping again."""
    with contextlib.suppress(RedisError, OSError):
        await retry_until(
            context.redis.ping,
            until=asyncio.get_running_loop().time() + STORE_RETRY_S,
            retry_on=(RedisError, OSError),
            what="reaching Redis",
        )


async def _run_edit(ctx: dict[str, Any], job_id: str, run: int) -> None:
    context: WorkerContext = ctx[CONTEXT_KEY]
    bind_log_fields(job_id=job_id)  # arq runs each job in its own task: no reset needed
    arq_id = arq_job_id(job_id, run)
    job = await context.store.get(job_id)
    if job is None or job.run != run or job.status.terminal:
        if job is not None and job.run == run and job.status == JobStatus.CANCELED:
            await _cancel_upstream(context, job, arq_id)
        log.info("job %s run %d skipped: no longer current", job_id, run)
        return
    bind_log_fields(tenant=job.spec.tenant)
    queue = lane_queue(context.settings.queue_name, job.lane)
    with context.cancellations.watch(job_id):
        try:
            plan = _plan(context, job)
            if is_async_run(plan, context.providers):
                await _run_async(context, ctx, job, plan, arq_id, queue)
                return
            if await _answer_from_cache(context, job):
                return
            grants = await _admit(context, ctx, job, plan, arq_id)
            async with context.leases.hold(arq_id, queue) as lease:
                lease.slots.extend(grants)
                claimed = await _claim(context, job)
                if claimed is None:
                    return
                context.metrics.pickup(ctx.get("enqueue_time"), job.lane)
                with context.metrics.run_duration.time():
                    await _execute_and_record(context, claimed, plan, lease)
        except asyncio.CancelledError:
            if context.cancellations.was_canceled(job_id):
                log.info("job %s run %d abandoned: canceled by its client", job_id, run)
                with contextlib.suppress(RedisError, OSError, EditqError):
                    await asyncio.shield(_cancel_upstream(context, None, arq_id, job_id))
                return
            with contextlib.suppress(RedisError, OSError):  # else it returns after its lease
                await asyncio.shield(context.leases.hand_back(arq_id, queue))
            raise


def _plan(context: WorkerContext, job: Job) -> RunPlan:
    """The run's plan; the load balancer's choices follow from the job and run, so every
    delivery of a run on asynchronous upstreams sees the same plan."""
    return plan_run(
        job.spec.request,
        job.lane,
        context.providers,
        reserve=context.settings.interactive_reserve_slots,
        rng=random.Random(f"{job.id}:{job.run}"),
    )


async def _run_async(
    context: WorkerContext,
    ctx: dict[str, Any],
    job: Job,
    plan: RunPlan,
    arq_id: str,
    queue: str,
) -> None:
    """One delivery of a run on asynchronous upstreams (``worker.runs.async_calls``).

    The first delivery is admitted and claims the job as any other; a later one
    (the job running, its claim's calls on record) carries the run on under the same
    claim and finds its slots again. A delivery that leaves edits with the upstreams
    defers the arq job to the next poll and ends (``RetryJob``), its slots kept: the
    wait holds no worker slot and no connection. A worker that dies mid-delivery
    leaves the job leased: it comes back within one lease, to poll the same handles.
    """
    resuming = resumes(job)
    if resuming:
        needs = {name: slots.need for name, slots in plan.slots.items()}
        grants = context.gate.grants_for(needs, arq_id)
        grants += fallback_slots.held(context.gate, plan, job, arq_id)
    else:
        if await _answer_from_cache(context, job):
            return
        grants = await _admit(context, ctx, job, plan, arq_id)
    async with context.leases.hold(arq_id, queue) as lease:
        lease.slots.extend(grants)
        if resuming:
            claimed: Job | None = job
            await context.gate.hold(grants, context.settings.job_lease_s)
        else:
            claimed = await _claim(context, job)
            if claimed is not None:
                context.metrics.pickup(ctx.get("enqueue_time"), job.lane)
        if claimed is not None:
            await _advance_and_record(context, claimed, plan, lease)


def _job_error(job: Job, exc: Exception) -> JobError:
    """The job's error for what its run raised: an ``EditqError`` as it says, anything
    else (logged with its traceback) as an internal error."""
    if isinstance(exc, EditqError):
        return JobError(type=exc.type, code=exc.code, message=exc.message)
    log.exception("job %s run %d failed unexpectedly", job.id, job.run)
    return JobError(type="server_error", code="internal_error", message=str(exc))


async def _advance_and_record(
    context: WorkerContext, job: Job, plan: RunPlan, lease: Lease
) -> None:
    """Move the run on once; record its end, or defer it (raising ``RetryJob``)."""
    deadline = attempt_deadline(job, context.settings.attempt_budget_s, time.time())
    try:
        result = await advance_run(AsyncRun(context, job, plan, lease, deadline))
    except MovedOn:
        log.info("job %s run %d moved on while it was delivered", job.id, job.run)
        await _cancel_upstream(context, None, lease.arq_job_id, job.id)  # if it was canceled
        return
    except RedisError:
        raise  # not the job's failure: ``run_edit`` has it delivered again
    except Exception as exc:
        error = _job_error(job, exc)
    else:
        if isinstance(result, Deferred):
            await context.leases.defer(lease, result.delay_s)
            raise RetryJob()
        await _record_success(context, job, result)
        return
    await context.store.fail(job, error)


async def _cancel_upstream(
    context: WorkerContext, job: Job | None, arq_id: str, job_id: str = ""
) -> None:
    """A canceled job's edits at asynchronous upstreams are canceled there (where the
    API allows; recorded on each call either way) and its slots given back."""
    if job is None:
        job = await context.store.get(job_id)
        if job is None or job.status != JobStatus.CANCELED:
            return
    if not pending_calls(job):
        return
    await cancel_pending(context, job, reason="canceled by its client")
    plan = _plan(context, job)
    needs = {name: slots.need for name, slots in plan.slots.items()}
    grants = context.gate.grants_for(needs, arq_id) + fallback_slots.held(
        context.gate, plan, job, arq_id
    )
    for grant in grants:
        await context.gate.release(
            grant, context.providers.upstream(grant.upstream).max_concurrency
        )


def waiter_rank(job: Job, ctx: dict[str, Any]) -> float:
    """The order in which waiters for a full upstream are woken (lowest first).

    Single jobs rank by enqueue time, all before any batch variant. A variant ranks by
    the bulk lane's virtual clock when its batch arrived plus its index, so batches
    running at the same time are served in turn — one variant of each, then the next
    — rather than the first batch until it is done (start-time fair queuing).
    """
    if job.lane == Lane.BULK:
        return job.spec.rank if job.spec.rank is not None else float(job.spec.variant_index or 0)
    enqueued_ms = ctx["enqueue_time"].timestamp() * 1000 if "enqueue_time" in ctx else 0.0
    return enqueued_ms - SINGLE_JOB_PRIORITY_MS


async def _admit(
    context: WorkerContext,
    ctx: dict[str, Any],
    job: Job,
    plan: RunPlan,
    arq_id: str,
) -> list[SlotGrant]:
    """Take the job's upstream slots, or park it as a waiter and end this delivery.

    The gate parks the arq job in the same atomic step that queues its ticket, so a
    wake-up can never be lost; ``RetryJob`` makes arq end the delivery without
    touching that score (arq's ``Retry`` would add its defer on top of a wake-up).
    Admission comes before the lease, whose renewal would overwrite a wake-up too.
    """
    rank = waiter_rank(job, ctx)
    grants = await context.gate.admit(
        {name: (slots.need, slots.cap) for name, slots in plan.slots.items()},
        holder=arq_id,
        ticket=ticket_for(job.lane, arq_id),
        ticket_score=rank,
        park_s=WAITER_SAFETY_DEFER_S,
    )
    if grants is not None and job.lane == Lane.BULK:
        await context.gate.advance_clock(rank)
    if grants is None:
        raise RetryJob()
    return grants


async def _claim(context: WorkerContext, job: Job) -> Job | None:
    """Start a new attempt at the job's run: from queued, or taking over a run whose
    worker died or stalled past its lease (arq only redelivers it then). The job as
    claimed, carrying its attempt number (the fencing token), or None."""
    result = await context.store.claim(job)
    if not result.applied:
        log.info("job %s run %d skipped: %s (%s)", job.id, job.run, result.outcome, result.previous)
        return None
    if result.previous == JobStatus.RUNNING:
        log.warning("job %s run %d taken over as attempt %d", job.id, job.run, result.attempt)
    return job.model_copy(update={"status": JobStatus.RUNNING, "attempt": result.attempt})


async def _answer_from_cache(context: WorkerContext, job: Job) -> bool:
    """Serve a job whose request asked for the cache from a live identical result."""
    options = job.spec.request.routing.cache
    digest = request_digest(job.spec) if options is not None else None
    if digest is None:
        return False
    cached = await context.cache.get(job.spec.tenant, digest)
    if cached is None:
        return False
    claimed = await _claim(context, job)
    if claimed is None:
        return True  # canceled or finished meanwhile: nothing left to do
    try:
        outputs = [
            await _copy_output(context, claimed, index, image)
            for index, image in enumerate(cached.outputs)
        ]
    except EditqError as exc:
        log.info("job %s: cached outputs unusable (%s); a miss", job.id, exc)
        return False
    outcome = cached.model_copy(update={"outputs": tuple(outputs), "created": int(time.time())})
    await context.store.succeed(claimed, outcome, cached=True)
    return True


async def _copy_output(
    context: WorkerContext, job: Job, index: int, image: StoredImage
) -> StoredImage:
    key = output_key(job.id, index, image.key.rsplit(".", 1)[-1], job.attempt)
    await context.storage.copy(image.key, key)
    return image.model_copy(update={"key": key})


async def _execute_and_record(
    context: WorkerContext, job: Job, plan: RunPlan, lease: Lease
) -> None:
    budget = context.settings.attempt_budget_s
    deadline = asyncio.get_running_loop().time() + budget
    try:
        # Upstream calls keep to ``deadline``; storing may take a little longer.
        async with asyncio.timeout(budget + STORE_RETRY_S):
            outcome = await execute_run(context, job, plan=plan, lease=lease, deadline=deadline)
    except TimeoutError:
        error = JobError(
            type="upstream_error",
            code="upstream_error",
            message=f"the upstream did not finish within this attempt's {budget:g}-second budget",
        )
    except RedisError:
        raise  # not the job's failure: ``run_edit`` has it delivered again
    except Exception as exc:
        error = _job_error(job, exc)
    else:
        await _record_success(context, job, outcome)
        return
    await context.store.fail(job, error)


async def _record_success(context: WorkerContext, job: Job, outcome: JobOutcome) -> None:
    # Cache before the job shows as succeeded: a client resubmitting the moment it
    # sees the result must already hit.
    options = job.spec.request.routing.cache
    digest = request_digest(job.spec) if options is not None else None
    if options is not None and digest is not None:
        await context.cache.put(job.spec.tenant, digest, outcome, options.ttl)
    # The upstream's work is paid for: a Redis blip is waited out (with the lease still
    # held), not answered by another worker calling the upstream again. Repeating the
    # fenced transition is safe; if a try applied but its reply was lost, the job is
    # already succeeded under this very attempt.
    result = await retry_until(
        lambda: context.store.succeed(job, outcome),
        until=asyncio.get_running_loop().time() + STORE_RETRY_S,
        what=f"recording that {job.id} succeeded",
        retry_on=(RedisError, OSError),
    )
    mine = (result.previous, result.run, result.attempt) == (
        JobStatus.SUCCEEDED,
        job.run,
        job.attempt,
    )
    await _commit_outputs(context, job, outcome, committed=result.applied or mine)


async def _commit_outputs(
    context: WorkerContext, job: Job, outcome: JobOutcome, *, committed: bool
) -> None:
    """Keep exactly one set of outputs: a fenced-off attempt removes its own; the
    committing attempt removes what stale attempts of this job left behind."""
    mine = {output.key for output in outcome.outputs}
    if not committed:
        log.warning("job %s attempt %d was fenced off; dropping its outputs", job.id, job.attempt)
        await context.storage.delete_keys(sorted(mine))
        return
    if job.attempt <= 1:
        return  # the job's first attempt ever (attempts count across runs): nothing stale
    stale = [
        key for key in await context.storage.list_keys(f"outputs/{job.id}/") if key not in mine
    ]
    await context.storage.delete_keys(stale)
