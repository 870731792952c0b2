"""The arq task: claim a job's run, execute it under a lease, record how it ended."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from app.errors import EditqError
from app.jobs import Attempt, Job, JobError, JobStatus
from app.queue import arq_job_id
from worker.context import CONTEXT_KEY, WorkerContext
from worker.edit_run import execute_run

log = logging.getLogger(__name__)


async def run_edit(ctx: dict[str, Any], job_id: str, run: int) -> None:
    """Run ``run`` of job ``job_id`` (arq task ``run_edit``; arguments are ids only).

    A run that is no longer current (canceled, retried, finished) is skipped. A
    client's cancel abandons the work; a worker shutdown hands the job back at once.
    """
    context: WorkerContext = ctx[CONTEXT_KEY]
    arq_id = arq_job_id(job_id, run)
    with context.cancellations.watch(job_id):
        job = await _claim(context, job_id, run)
        if job is None:
            return
        try:
            async with context.leases.hold(arq_id):
                await _execute_and_record(context, job)
        except asyncio.CancelledError:
            if context.cancellations.was_canceled(job_id):
                log.info("job %s run %d abandoned: canceled by its client", job_id, run)
                return
            await asyncio.shield(context.leases.hand_back(arq_id))
            raise


async def _claim(context: WorkerContext, job_id: str, run: int) -> Job | None:
    result = await context.store.transition(
        job_id,
        JobStatus.RUNNING,
        expect_run=run,
        sources=[JobStatus.QUEUED],
        fields={"started_at": time.time()},
    )
    # A run already marked running was handed back or its worker died: take it over.
    if result.applied or (result.outcome == "refused" and result.previous == JobStatus.RUNNING):
        return await context.store.get(job_id)
    log.info("job %s run %d skipped: %s (%s)", job_id, run, result.outcome, result.previous)
    return None


async def _execute_and_record(context: WorkerContext, job: Job) -> None:
    attempts: list[Attempt] = []
    budget = context.settings.attempt_budget_s
    try:
        async with asyncio.timeout(budget):
            outcome = await execute_run(context, job, attempts)
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
        await context.store.transition(
            job.id,
            JobStatus.SUCCEEDED,
            expect_run=job.run,
            sources=[JobStatus.RUNNING],
            attempts=attempts,
            fields={"outcome": outcome.model_dump_json(), "finished_at": time.time()},
        )
        return
    await context.store.transition(
        job.id,
        JobStatus.FAILED,
        expect_run=job.run,
        sources=[JobStatus.RUNNING],
        attempts=attempts,
        fields={"error": error.model_dump_json(), "finished_at": time.time()},
    )
