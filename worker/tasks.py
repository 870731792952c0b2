"""The arq task: admit a job's run to its upstreams, claim it, execute it under a
lease, record how it ended.

A run whose upstreams have no free slot is not claimed: it goes back to the queue,
deferred, as a waiter the next freed slot wakes (``upstream_gate``); it holds no
worker slot meanwhile and stays ``queued``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from arq.worker import RetryJob

from app.errors import EditqError
from app.jobs import Attempt, Job, JobError, JobOutcome, JobStatus, StoredImage
from app.queue import arq_job_id, lane_queue
from app.storage import output_key
from worker.context import CONTEXT_KEY, WorkerContext
from worker.edit_run import execute_run, slot_needs
from worker.leases import Lease
from worker.result_cache import request_digest
from worker.routing import plan_models
from worker.upstream_gate import SlotGrant

log = logging.getLogger(__name__)

# A deferred waiter is woken when a slot frees; this only bounds a lost wake-up.
WAITER_SAFETY_DEFER_S = 300


async def run_edit(ctx: dict[str, Any], job_id: str, run: int) -> None:
    """Run ``run`` of job ``job_id`` (arq task ``run_edit``; arguments are ids only).

    A run that is no longer current (canceled, retried, finished) is skipped. A
    client's cancel abandons the work; a worker shutdown hands the job back at once.
    """
    context: WorkerContext = ctx[CONTEXT_KEY]
    arq_id = arq_job_id(job_id, run)
    job = await context.store.get(job_id)
    if job is None or job.run != run or job.status.terminal:
        log.info("job %s run %d skipped: no longer current", job_id, run)
        return
    queue = lane_queue(context.settings.queue_name, bulk=job.spec.batch_id is not None)
    with context.cancellations.watch(job_id):
        try:
            if await _answer_from_cache(context, job):
                return
            plans = _plan(job)
            grants = await _admit(context, ctx, job, plans, arq_id, queue)
            async with context.leases.hold(arq_id, queue) as lease:
                lease.slots.extend(grants)
                if not await _claim(context, job):
                    return
                await _execute_and_record(context, job, plans, lease)
        except asyncio.CancelledError:
            if context.cancellations.was_canceled(job_id):
                log.info("job %s run %d abandoned: canceled by its client", job_id, run)
                return
            await asyncio.shield(context.leases.hand_back(arq_id, queue))
            raise


def _plan(job: Job) -> list[list[str]]:
    """Each output's models in order; the load balancer chooses for each independently."""
    request, rng = job.spec.request, random.Random()
    return [plan_models(request.model, request.routing, rng) for _ in range(request.n)]


async def _admit(
    context: WorkerContext,
    ctx: dict[str, Any],
    job: Job,
    plans: list[list[str]],
    arq_id: str,
    queue: str,
) -> list[SlotGrant]:
    """Take the job's upstream slots, or park it as a waiter and end this delivery.

    The gate parks the arq job in the same atomic step that queues its ticket, so a
    wake-up can never be lost; ``RetryJob`` makes arq end the delivery without
    touching that score (arq's ``Retry`` would add its defer on top of a wake-up).
    Admission comes before the lease, whose renewal would overwrite a wake-up too.
    """
    enqueued_ms = ctx["enqueue_time"].timestamp() * 1000 if "enqueue_time" in ctx else 0
    grants = await context.gate.admit(
        slot_needs(context, plans, bulk=job.spec.batch_id is not None),
        holder=arq_id,
        ticket=f"{queue}|{arq_id}",
        ticket_score=enqueued_ms,
        park_s=WAITER_SAFETY_DEFER_S,
    )
    if grants is None:
        raise RetryJob()
    return grants


async def _claim(context: WorkerContext, job: Job) -> bool:
    result = await context.store.transition(
        job.id,
        JobStatus.RUNNING,
        expect_run=job.run,
        sources=[JobStatus.QUEUED],
        fields={"started_at": time.time()},
    )
    # A run already marked running was handed back or its worker died: take it over.
    if result.applied or (result.outcome == "refused" and result.previous == JobStatus.RUNNING):
        return True
    log.info("job %s run %d skipped: %s (%s)", job.id, job.run, result.outcome, result.previous)
    return False


async def _answer_from_cache(context: WorkerContext, job: Job) -> bool:
    """Serve a job whose request asked for the cache from a live identical result."""
    options = job.spec.request.routing.cache
    digest = request_digest(job.spec) if options is not None else None
    if digest is None:
        return False
    cached = await context.cache.get(job.spec.tenant, digest)
    if cached is None:
        return False
    try:
        outputs = [
            await _copy_output(context, job, index, image)
            for index, image in enumerate(cached.outputs)
        ]
    except EditqError as exc:
        log.info("job %s: cached outputs unusable (%s); a miss", job.id, exc)
        return False
    if not await _claim(context, job):
        return True  # canceled meanwhile: nothing left to do
    outcome = cached.model_copy(update={"outputs": tuple(outputs), "created": int(time.time())})
    await context.store.transition(
        job.id,
        JobStatus.SUCCEEDED,
        expect_run=job.run,
        sources=[JobStatus.RUNNING],
        fields={"outcome": outcome.model_dump_json(), "cached": "1", "finished_at": time.time()},
    )
    return True


async def _copy_output(
    context: WorkerContext, job: Job, index: int, image: StoredImage
) -> StoredImage:
    key = output_key(job.id, index, image.key.rsplit(".", 1)[-1])
    await context.storage.copy(image.key, key)
    return image.model_copy(update={"key": key})


async def _execute_and_record(
    context: WorkerContext, job: Job, plans: list[list[str]], lease: Lease
) -> None:
    attempts: list[Attempt] = []
    budget = context.settings.attempt_budget_s
    deadline = asyncio.get_running_loop().time() + budget
    try:
        async with asyncio.timeout(budget):
            outcome = await execute_run(
                context, job, plans=plans, lease=lease, deadline=deadline, attempts=attempts
            )
    except TimeoutError:
        error = JobError(
            type="upstream_error",
            code="upstream_error",
            message=f"the upstream did not finish within this attempt's {budget:g}-second budget",
        )
    except EditqError as exc:
        error = JobError(type=exc.type, code=exc.code, message=exc.message)
    except Exception as exc:
        log.exception("job %s run %d failed unexpectedly", job.id, job.run)
        error = JobError(type="server_error", code="internal_error", message=str(exc))
    else:
        await _record_success(context, job, outcome, attempts)
        return
    await context.store.transition(
        job.id,
        JobStatus.FAILED,
        expect_run=job.run,
        sources=[JobStatus.RUNNING],
        attempts=attempts,
        fields={"error": error.model_dump_json(), "finished_at": time.time()},
    )


async def _record_success(
    context: WorkerContext, job: Job, outcome: JobOutcome, attempts: list[Attempt]
) -> None:
    # Cache before the job shows as succeeded: a client resubmitting the moment it
    # sees the result must already hit.
    options = job.spec.request.routing.cache
    digest = request_digest(job.spec) if options is not None else None
    if options is not None and digest is not None:
        await context.cache.put(job.spec.tenant, digest, outcome, options.ttl)
    await context.store.transition(
        job.id,
        JobStatus.SUCCEEDED,
        expect_run=job.run,
        sources=[JobStatus.RUNNING],
        attempts=attempts,
        fields={"outcome": outcome.model_dump_json(), "finished_at": time.time()},
    )
