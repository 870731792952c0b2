"""Job records in Redis: one hash per job, a per-tenant index, atomic transitions.

The keys are ``app.store.keys``'s (``job``, ``log``, ``tenant_jobs``, ``retention``,
``events_channel``). A job's hash holds spec (JSON), tenant, status, run, attempt,
started_at, finished_at, error, outcome, cached, and for a batch variant its batch;
``tx``/``tx_from`` mark the last applied transition. Each upstream call is a field
of its own, ``call:<n>`` (JSON), written as the call starts and again as it ends
(``record_call.lua``, fenced on the run and attempt that made it), numbered by the
``calls`` counter; ``attempts`` (a JSON array) holds the calls of records written
before calls had fields of their own, and starts empty in new ones.

Every status change is one MULTI: ``move_job.lua`` checks the current status
(against ``app.core.jobs.TRANSITIONS``) and the run and attempt numbers (the
fencing tokens), applies the change, logs and publishes it; the scripts that
report on it follow in the same MULTI and act only if it applied: the job's
webhook event (``webhook_event.lua``), and for a batch variant the batch's counts
(``batch_progress.lua``), the release of the batch's next variant
(``app.dispatch``'s ``release_window.lua``) and the ``batch.completed`` event.
A late or duplicate run can never move a job that has moved on, and an accepted
transition and its events are never separated by a crash.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from app.core.jobs import (
    PARTIAL,
    Attempt,
    Job,
    JobError,
    JobOutcome,
    JobSpec,
    JobStatus,
    sources_of,
)
from app.core.webhooks import batch_completed_event_id, event_id, event_type
from app.dispatch import BatchWindow
from app.store.job_records import call_json, job_from_row
from app.store.keys import Keys
from app.store.scripts import register


@dataclass(frozen=True)
class TransitionResult:
    """What a transition did: ``applied``, or why not (``missing``, ``stale``, ``refused``).

    ``previous`` is the status the job had when the transition was tried; ``run`` and
    ``attempt`` its run and attempt numbers afterwards.
    """

    outcome: str  # applied | missing | stale | refused
    previous: JobStatus | None
    run: int
    attempt: int = 0

    @property
    def applied(self) -> bool:
        """True when the job moved."""
        return self.outcome == "applied"


AfterMove = Callable[[Pipeline, str, str, int], Awaitable[None]]
"""Adds to a transition's MULTI what acts only if the move applied: handed the job's
key, the move's token and the run after the move."""

_OUTCOMES = {1: "applied", 0: "missing", -1: "stale", -2: "refused"}
WRONG_BATCH = -3


class TransitionMisuse(RuntimeError):
    """A caller named the wrong batch for a job: a bug, never a client's error."""


@dataclass(frozen=True)
class JobPage:
    """One page of a tenant's jobs, newest first."""

    jobs: list[Job]
    has_more: bool
    last_id: str | None


class JobStore:
    """Reads and writes job records; every status change is atomic and fenced."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        window: BatchWindow,
        *,
        retention_s: int,
        on_transition: Callable[[JobStatus, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._window = window  # releases a batch's next variant when one finishes
        self._on_transition = on_transition  # told each applied status change (metrics)
        self._retention_s = retention_s
        self._move = register(redis, "move_job")
        self._record = register(redis, "record_call")
        self._batch_progress = register(redis, "batch_progress")
        self._webhook_event = register(redis, "webhook_event")

    @property
    def keys(self) -> Keys:
        """The key layout this store writes."""
        return self._keys

    async def notify(self, job_id: str) -> None:
        """Publish the job's current state again (wakes listeners, e.g. dispatchers)."""
        job = await self.get(job_id)
        if job is not None:
            payload = json.dumps({"id": job_id, "status": job.status.value, "run": job.run})
            await self._redis.publish(self._keys.events_channel, payload)

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._redis.ping()

    async def log_since(
        self, subject_id: str, last_id: str | None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries of a job's (or batch's) transition log after ``last_id``, oldest first."""
        start = f"({last_id}" if last_id else "-"
        entries = await self._redis.xrange(self._keys.log(subject_id), min=start, count=count)
        return [(str(entry_id), dict(fields)) for entry_id, fields in entries]

    async def log_partial(self, job_id: str, run: int, index: int, key: str) -> None:
        """Append partial image ``index`` of ``run`` (stored at ``key``) to the job's log
        as a ``partial`` entry and announce it, as a transition is announced.

        Not fenced: a partial image is a preview, and one from an attempt that lost the
        job changes nothing of the job itself.
        """
        at_ms = int(time.time() * 1000)
        payload = json.dumps({"id": job_id, "status": PARTIAL, "run": run})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self._keys.log(job_id),
                {"status": PARTIAL, "run": run, "at": at_ms, "index": index, "key": key},
            )
            pipe.publish(self._keys.events_channel, payload)
            await pipe.execute()

    async def create(self, spec: JobSpec, enqueue: Callable[[Pipeline], None] | None = None) -> Job:
        """Store a new queued job (run 1) and index it for its tenant; ``enqueue`` adds
        the queueing of its run to the same MULTI, so the job is never recorded
        without being queued (nor queued without its record)."""
        job = Job(spec=spec, status=JobStatus.QUEUED)
        key = self._keys.job(spec.id)
        fields: dict[str, str | int] = {
            "spec": spec.model_dump_json(),
            "tenant": spec.tenant,
            "status": job.status.value,
            "run": job.run,
            "attempts": "[]",
        }
        if spec.request.webhook_url:
            # Space-delimited so webhook_event.lua can test membership exactly.
            fields["webhook_events"] = f" {' '.join(spec.request.webhook_events)} "
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._retention_s)
            # The log starts with the queued state, so a stream replays the whole life.
            at_ms = int(spec.created_at * 1000)
            log = self._keys.log(spec.id)
            pipe.xadd(log, {"status": job.status.value, "run": job.run, "at": at_ms})
            pipe.expire(log, self._retention_s)
            pipe.zadd(self._keys.tenant_jobs(spec.tenant), {spec.id: 0})
            if enqueue is not None:
                enqueue(pipe)
            await pipe.execute()
        if self._on_transition is not None:
            self._on_transition(JobStatus.QUEUED, 1)
        return job

    async def get(self, job_id: str) -> Job | None:
        """The job, or None if there is none (or it expired, or cannot be read)."""
        row = await cast(Awaitable[dict[str, str]], self._redis.hgetall(self._keys.job(job_id)))
        return job_from_row(job_id, row)

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several jobs in one round trip, in the order asked (None: missing or unreadable)."""
        rows = await self._rows(job_ids)
        return [job_from_row(job_id, row) for job_id, row in zip(job_ids, rows, strict=True)]

    async def _rows(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._keys.job(job_id))
            rows: list[dict[str, str]] = await pipe.execute()
        return rows

    async def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expect_run: int | None = None,
        batch_id: str | None = None,
        expect_attempt: int | None = None,
        sources: Iterable[JobStatus] | None = None,
        next_run: bool = False,
        next_attempt: bool = False,
        fields: dict[str, str | float | None] | None = None,
        then: AfterMove | None = None,
    ) -> TransitionResult:
        """Move the job to ``target`` if its status allows it and its run is ``expect_run``
        (and its attempt ``expect_attempt``: the fencing token of one worker's go at a run).

        A caller that fences on ``expect_run`` names the job's ``batch_id`` too (None for
        a single job; a mismatch raises TransitionMisuse); without ``expect_run`` both are
        read first and the move is fenced on the run read. ``next_attempt`` starts a new
        attempt (a claim or take-over); ``sources`` narrows the statuses it may move from
        (default: all that ``TRANSITIONS`` allows); ``next_run`` starts a new run (retry);
        ``fields`` are set (None deletes); ``then`` adds to the same MULTI what must
        happen exactly when the move applies (it is handed the job's key, the move's
        token and the run after it). Every change restarts the retention clock. The
        upstream calls of an attempt are recorded one by one (``call_started``).
        """
        if expect_run is None:
            current = await self._current(job_id)
            if current is None:
                return TransitionResult(outcome="missing", previous=None, run=0)
            expect_run, batch_id = current
        allowed = sources_of(target)
        if sources is None:
            allowed = allowed - {target}  # a take-over (running -> running) is asked for
        else:
            allowed = allowed & frozenset(sources)
        run_after = expect_run + 1 if next_run else expect_run
        token = os.urandom(12).hex()
        now_ms = int(time.time() * 1000)
        keys = self._keys
        job_key = keys.job(job_id)
        args: list[str | int | float] = [
            token,
            " ".join(status.value for status in allowed),
            target.value,
            expect_run,
            "1" if next_run else "0",
            "" if expect_attempt is None else expect_attempt,
            "1" if next_attempt else "0",
            self._retention_s,
            now_ms,
            job_id,
            keys.events_channel,
            batch_id or "",
        ]
        for name, value in (fields or {}).items():
            args.extend([name, "" if value is None else value])
        async with self._redis.pipeline(transaction=True) as pipe:
            await self._move(
                keys=[job_key, keys.log(job_id), keys.retention], args=args, client=pipe
            )
            await self._event(
                pipe,
                job_id,
                event_type(target.value),
                event_id(job_id, run_after, target.value),
                token,
                now_ms,
            )
            if batch_id is not None:
                await self._batch_progress(
                    keys=[job_key, keys.batch(batch_id), keys.log(batch_id), keys.retention],
                    args=[token, self._retention_s, now_ms, batch_id, keys.events_channel],
                    client=pipe,
                )
                await self._window.release_next(
                    pipe, job_key=job_key, pending_key=keys.batch_pending(batch_id), token=token
                )
                completed = batch_completed_event_id(batch_id, job_id, run_after)
                await self._event(pipe, batch_id, "batch.completed", completed, token, now_ms)
            if then is not None:
                await then(pipe, job_key, token, run_after)
            replies = await pipe.execute()
        code, status, run, attempt = replies[0]
        if int(code) == WRONG_BATCH:
            raise TransitionMisuse(f"job {job_id} is not in batch {batch_id!r}")
        if int(code) == 1 and self._on_transition is not None:
            self._on_transition(target, 1)
        return TransitionResult(
            outcome=_OUTCOMES[int(code)],
            previous=JobStatus(status) if status else None,
            run=int(run),
            attempt=int(attempt),
        )

    async def claim(self, job: Job) -> TransitionResult:
        """Start a new attempt at the job's current run: from queued, or taking over a
        run whose worker died or stalled (running -> running)."""
        return await self.transition(
            job.id,
            JobStatus.RUNNING,
            expect_run=job.run,
            batch_id=job.spec.batch_id,
            sources=[JobStatus.QUEUED, JobStatus.RUNNING],
            next_attempt=True,
            fields={"started_at": job.started_at or time.time()},
        )

    async def succeed(
        self,
        job: Job,
        outcome: JobOutcome,
        *,
        cached: bool = False,
    ) -> TransitionResult:
        """Record the outcome of the attempt ``job`` carries (fenced on its run and attempt)."""
        fields: dict[str, str | float | None] = {
            "outcome": outcome.model_dump_json(),
            "finished_at": time.time(),
        }
        if cached:
            fields["cached"] = "1"
        return await self._end_attempt(job, JobStatus.SUCCEEDED, fields)

    async def fail(self, job: Job, error: JobError) -> TransitionResult:
        """Record why the attempt ``job`` carries failed (fenced on its run and attempt)."""
        fields: dict[str, str | float | None] = {
            "error": error.model_dump_json(),
            "finished_at": time.time(),
        }
        return await self._end_attempt(job, JobStatus.FAILED, fields)

    async def _end_attempt(
        self, job: Job, target: JobStatus, fields: dict[str, str | float | None]
    ) -> TransitionResult:
        return await self.transition(
            job.id,
            target,
            expect_run=job.run,
            batch_id=job.spec.batch_id,
            expect_attempt=job.attempt,
            sources=[JobStatus.RUNNING],
            fields=fields,
        )

    async def _event(
        self, pipe: Pipeline, subject_id: str, kind: str, event: str, token: str, now_ms: int
    ) -> None:
        keys = self._keys
        await self._webhook_event(
            keys=[
                keys.subject(subject_id),
                keys.webhook_event(event),
                keys.webhook_events(subject_id),
                keys.webhook_outbox,
            ],
            args=[token, kind, subject_id, self._retention_s, now_ms, event],
            client=pipe,
        )

    async def _current(self, job_id: str) -> tuple[int, str | None] | None:
        """The job's run and batch id, or None if there is no such job."""
        run, batch = await cast(
            Awaitable[list[str | None]], self._redis.hmget(self._keys.job(job_id), ["run", "batch"])
        )
        return None if run is None else (int(run), batch)

    async def call_started(self, job_id: str, call: Attempt) -> int:
        """Record a call as it starts (``in_flight``), fenced on the run and claim that
        make it (``call.run``, ``call.attempt``). Its number for ``call_ended``; 0 when
        the job is no longer running that run and claim (nothing is recorded)."""
        return await self._record_call(job_id, call, None)

    async def call_ended(
        self, job_id: str, number: int, call: Attempt, *, once_canceled: bool = False
    ) -> bool:
        """Record how call ``number`` ended (or, for an asynchronous upstream, the handle
        it was accepted under); False when the job has moved on (taken over, canceled,
        ended) since: the call then stays as it was, and reads as lost.
        ``once_canceled`` records it on a job canceled meanwhile too (the cancel of an
        asynchronous upstream's edit, which follows the job's)."""
        statuses = "running canceled" if once_canceled else "running"
        return await self._record_call(job_id, call, number, statuses) != 0

    async def _record_call(
        self, job_id: str, call: Attempt, number: int | None, statuses: str = "running"
    ) -> int:
        args = [
            call.run,
            call.attempt,
            "" if number is None else number,
            call_json(call),
            statuses,
        ]
        return int(await self._record(keys=[self._keys.job(job_id)], args=args))

    async def list_for_tenant(
        self,
        tenant: str,
        *,
        status: JobStatus | None,
        limit: int,
        after: str | None,
        scan_limit: int = 1000,
    ) -> JobPage:
        """A page of the tenant's jobs, newest first, starting after job id ``after``.

        With a ``status`` filter at most ``scan_limit`` ids are examined per page;
        ``has_more`` and ``last_id`` let the client continue from where the scan stopped.
        """
        key = self._keys.tenant_jobs(tenant)
        upper = f"({after}" if after else "+"
        found: list[Job] = []
        last_scanned: str | None = None
        scanned = 0
        while scanned < scan_limit:
            chunk = limit - len(found) + 1 if status is None else 50
            ids = await self._redis.zrevrangebylex(key, upper, "-", start=0, num=chunk)
            if not ids:
                return _page(found, has_more=False)
            rows = await self._rows(ids)
            await self._forget_expired(key, ids, rows)
            jobs = [job_from_row(job_id, row) for job_id, row in zip(ids, rows, strict=True)]
            for job_id, job in zip(ids, jobs, strict=True):
                if job is not None and (status is None or job.status == status):
                    if len(found) == limit:
                        return _page(found, has_more=True)
                    found.append(job)
                scanned += 1
                last_scanned = job_id
            upper = f"({ids[-1]}"
        return JobPage(found, has_more=True, last_id=last_scanned)

    async def _forget_expired(self, key: str, ids: list[str], rows: list[dict[str, str]]) -> None:
        # Only records that are gone: an unreadable one stays indexed (and is skipped).
        expired = [job_id for job_id, row in zip(ids, rows, strict=True) if not row]
        if expired:
            await self._redis.zrem(key, *expired)


def _page(jobs: list[Job], *, has_more: bool) -> JobPage:
    return JobPage(jobs, has_more=has_more, last_id=jobs[-1].id if jobs else None)
