"""Job records in Redis: one hash per job, a per-tenant index, atomic transitions.

Layout (``P`` is the key prefix)::

    P:job:{id}                 hash: spec (JSON), tenant, status, run, started_at,
                               finished_at, attempts (JSON array), error, outcome
    P:tenant:{tenant}:jobs     sorted set of job ids, all score 0: lexical order is
                               creation order because ids are time-ordered
    P:retention                job and batch ids by expiry (ms), for the S3 janitor
    P:job:{id}:log             stream of the job's creation and transitions (status, run, at ms):
                               the ids Server-Sent Events resume from
    P:events                   pub/sub channel: {"id", "status", "run"} per transition
    P:wh:event:{event id}      a webhook event (see ``app.store.webhooks``), created by
    P:wh:outbox                the transition script when the job subscribed to it

Every status change goes through one Lua script that checks the current status
(against ``app.core.jobs.TRANSITIONS``) and the run number (the fencing token), applies
the change and publishes the event in one atomic step, so a late or duplicate run
can never move a job that has moved on. When the job asked for a webhook on that
transition, the same step records the event and puts it in the delivery outbox:
an accepted transition and its event are never separated by a crash.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from arq.constants import job_key_prefix
from redis.asyncio import Redis

from app.core.jobs import Attempt, Job, JobError, JobOutcome, JobSpec, JobStatus, sources_of

# A released batch variant's arq job lives as long as arq's own default (a day).
ARQ_JOB_TTL_MS = 24 * 3600 * 1000

TRANSITION_SCRIPT = """
-- ARGV: 1 allowed sources, 2 target, 3 expected run, 4 next run?, 5 attempts JSON,
-- 6 events channel, 7 retention s, 8 key prefix, 9 now ms, 10 bulk queue,
-- 11 arq job key prefix, 12 arq job ttl ms, 13 expected attempt, 14 next attempt?,
-- 15.. field/value pairs
local prefix, now, retention = ARGV[8], ARGV[9], tonumber(ARGV[7])

local function add_event(subject_key, subject, event, kind, tenant)
  local event_key = prefix .. ':wh:event:' .. event
  if redis.call('EXISTS', event_key) == 1 then return end
  redis.call('HSET', event_key, 'subject', subject, 'type', kind, 'tenant', tenant,
    'state', 'pending', 'attempts', 0, 'created_at', now)
  redis.call('EXPIRE', event_key, retention)
  redis.call('RPUSH', subject_key .. ':wh-events', event)
  redis.call('EXPIRE', subject_key .. ':wh-events', retention)
  redis.call('ZADD', prefix .. ':wh:outbox', now, event)
end

local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'canceled'
end

local function add_usage(bkey, outcome)
  local ok, decoded = pcall(cjson.decode, outcome)
  if not ok or type(decoded.usage) ~= 'table' then return end
  local usage = decoded.usage
  for _, name in ipairs({'total_tokens', 'input_tokens', 'output_tokens'}) do
    if type(usage[name]) == 'number' then
      redis.call('HINCRBY', bkey, 'u_' .. name, math.floor(usage[name]))
    end
  end
  if type(usage.input_tokens_details) == 'table' then
    for name, value in pairs(usage.input_tokens_details) do
      if type(value) == 'number' then
        redis.call('HINCRBY', bkey, 'ud_' .. name, math.floor(value))
      end
    end
  end
end

local function release_next(bkey)
  local item = redis.call('LPOP', bkey .. ':pending')
  if not item then return end
  local sep = string.find(item, '|', 1, true)
  local arq_id = string.sub(item, 1, sep - 1)
  redis.call('PSETEX', ARGV[11] .. arq_id, ARGV[12], string.sub(item, sep + 1))
  redis.call('ZADD', ARGV[10], now, arq_id)
end

local function update_batch(batch, previous, target, job_key)
  local bkey = prefix .. ':batch:' .. batch
  redis.call('EXPIRE', bkey, retention)
  redis.call('ZADD', prefix .. ':retention', tonumber(now) + retention * 1000, batch)
  redis.call('HINCRBY', bkey, 'n_' .. previous, -1)
  redis.call('HINCRBY', bkey, 'n_' .. target, 1)
  if target == 'succeeded' then add_usage(bkey, redis.call('HGET', job_key, 'outcome')) end
  local bstatus = redis.call('HGET', bkey, 'status')
  if is_terminal(target) and not is_terminal(previous) then
    release_next(bkey)
    local counts = redis.call('HMGET', bkey, 'total', 'n_succeeded', 'n_failed', 'n_canceled')
    local done = tonumber(counts[2] or 0) + tonumber(counts[3] or 0) + tonumber(counts[4] or 0)
    if done == tonumber(counts[1]) then
      bstatus = redis.call('HGET', bkey, 'cancel_requested') and 'canceled' or 'completed'
      local round = redis.call('HINCRBY', bkey, 'completions', 1)
      redis.call('HSET', bkey, 'status', bstatus, 'finished_at', now)
      local subscribed = redis.call('HGET', bkey, 'webhook_events')
      if subscribed and string.find(subscribed, ' batch.completed ', 1, true) then
        add_event(bkey, batch, 'evt_' .. string.sub(batch, 7) .. '_completed_' .. round,
          'batch.completed', redis.call('HGET', bkey, 'tenant'))
      end
    end
  elseif is_terminal(previous) and not is_terminal(target) and bstatus ~= 'running' then
    bstatus = 'running'
    redis.call('HSET', bkey, 'status', bstatus)
    redis.call('HDEL', bkey, 'finished_at')
  end
  local n = redis.call('HMGET', bkey, 'n_queued', 'n_running', 'n_succeeded', 'n_failed',
    'n_canceled')
  redis.call('XADD', bkey .. ':log', 'MAXLEN', '~', 50000, '*', 'status', bstatus,
    'counts', string.format(
      '{"queued":%d,"running":%d,"succeeded":%d,"failed":%d,"canceled":%d}',
      tonumber(n[1] or 0), tonumber(n[2] or 0), tonumber(n[3] or 0), tonumber(n[4] or 0),
      tonumber(n[5] or 0)),
    'at', now)
  redis.call('EXPIRE', bkey .. ':log', retention)
  redis.call('PUBLISH', ARGV[6],
    string.format('{"id":"%s","status":"%s","run":0}', batch, bstatus))
end

local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, '', 0, 0} end
local run = tonumber(redis.call('HGET', KEYS[1], 'run'))
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if ARGV[3] ~= '' and run ~= tonumber(ARGV[3]) then return {-1, status, run, attempt} end
if ARGV[13] ~= '' and attempt ~= tonumber(ARGV[13]) then return {-1, status, run, attempt} end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {-2, status, run, attempt}
end
if ARGV[4] == '1' then run = run + 1 end
if ARGV[14] == '1' then attempt = attempt + 1 end
if ARGV[5] ~= '' then
  local existing = redis.call('HGET', KEYS[1], 'attempts') or '[]'
  if existing == '[]' then existing = ARGV[5]
  else existing = string.sub(existing, 1, -2) .. ',' .. string.sub(ARGV[5], 2) end
  redis.call('HSET', KEYS[1], 'attempts', existing)
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'run', run, 'attempt', attempt)
for i = 15, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], retention)
local id = string.match(KEYS[1], '[^:]+$')
redis.call('ZADD', prefix .. ':retention', tonumber(now) + retention * 1000, id)
local subscribed = redis.call('HGET', KEYS[1], 'webhook_events')
if subscribed and string.find(subscribed, ' job.' .. ARGV[2] .. ' ', 1, true) then
  add_event(KEYS[1], id, 'evt_' .. string.sub(id, 5) .. '_' .. run .. '_' .. ARGV[2],
    'job.' .. ARGV[2], redis.call('HGET', KEYS[1], 'tenant'))
end
redis.call('XADD', KEYS[1] .. ':log', 'MAXLEN', '~', 1000, '*', 'status', ARGV[2],
  'run', run, 'at', now)
redis.call('EXPIRE', KEYS[1] .. ':log', retention)
redis.call('PUBLISH', ARGV[6],
  string.format('{"id":"%s","status":"%s","run":%d}', id, ARGV[2], run))
local batch = redis.call('HGET', KEYS[1], 'batch')
if batch then update_batch(batch, status, ARGV[2], KEYS[1]) end
return {1, status, run, attempt}
"""

APPEND_ATTEMPTS_SCRIPT = """
local run = redis.call('HGET', KEYS[1], 'run')
if not run or tonumber(run) ~= tonumber(ARGV[1]) then return 0 end
local existing = redis.call('HGET', KEYS[1], 'attempts') or '[]'
if existing == '[]' then existing = ARGV[2]
else existing = string.sub(existing, 1, -2) .. ',' .. string.sub(ARGV[2], 2) end
redis.call('HSET', KEYS[1], 'attempts', existing)
return 1
"""


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


_OUTCOMES = {1: "applied", 0: "missing", -1: "stale", -2: "refused"}


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
        *,
        prefix: str,
        retention_s: int,
        bulk_queue: str = "",
        on_transition: Callable[[JobStatus, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._on_transition = on_transition  # told each applied status change (metrics)
        self._prefix = prefix
        self._bulk_queue = bulk_queue
        self._retention_s = retention_s
        self._transition = redis.register_script(TRANSITION_SCRIPT)
        self._append = redis.register_script(APPEND_ATTEMPTS_SCRIPT)

    @property
    def events_channel(self) -> str:
        """The pub/sub channel every transition is published on."""
        return f"{self._prefix}:events"

    @property
    def retention_key(self) -> str:
        """Sorted set of job and batch ids by the time (ms) their records expire."""
        return f"{self._prefix}:retention"

    def job_key(self, job_id: str) -> str:
        """The Redis key of one job's hash."""
        return f"{self._prefix}:job:{job_id}"

    def _tenant_key(self, tenant: str) -> str:
        return f"{self._prefix}:tenant:{tenant}:jobs"

    async def notify(self, job_id: str) -> None:
        """Publish the job's current state again (wakes listeners, e.g. dispatchers)."""
        job = await self.get(job_id)
        if job is not None:
            payload = json.dumps({"id": job_id, "status": job.status.value, "run": job.run})
            await self._redis.publish(self.events_channel, payload)

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._redis.ping()

    async def log_since(
        self, subject_key: str, last_id: str | None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries of a job's (or batch's) transition log after ``last_id``, oldest first.

        ``subject_key`` is the job's or batch's hash key; the log is ``<key>:log``.
        """
        start = f"({last_id}" if last_id else "-"
        entries = await self._redis.xrange(f"{subject_key}:log", min=start, count=count)
        return [(str(entry_id), dict(fields)) for entry_id, fields in entries]

    async def create(self, spec: JobSpec) -> Job:
        """Store a new queued job (run 1) and index it for its tenant."""
        job = Job(spec=spec, status=JobStatus.QUEUED)
        key = self.job_key(spec.id)
        fields: dict[str, str | int] = {
            "spec": spec.model_dump_json(),
            "tenant": spec.tenant,
            "status": job.status.value,
            "run": job.run,
            "attempts": "[]",
        }
        if spec.request.webhook_url:
            # Space-delimited so the transition script can test membership exactly.
            fields["webhook_events"] = f" {' '.join(spec.request.webhook_events)} "
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._retention_s)
            # The log starts with the queued state, so a stream replays the whole life.
            at_ms = int(spec.created_at * 1000)
            pipe.xadd(f"{key}:log", {"status": job.status.value, "run": job.run, "at": at_ms})
            pipe.expire(f"{key}:log", self._retention_s)
            pipe.zadd(self._tenant_key(spec.tenant), {spec.id: 0})
            await pipe.execute()
        if self._on_transition is not None:
            self._on_transition(JobStatus.QUEUED, 1)
        return job

    async def get(self, job_id: str) -> Job | None:
        """The job, or None if there is none (or it expired)."""
        row = await cast(Awaitable[dict[str, str]], self._redis.hgetall(self.job_key(job_id)))
        return _job_from_hash(row)

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Several jobs in one round trip, in the order asked."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.job_key(job_id))
            rows = await pipe.execute()
        return [_job_from_hash(row) for row in rows]

    async def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expect_run: int | None = None,
        expect_attempt: int | None = None,
        sources: Iterable[JobStatus] | None = None,
        next_run: bool = False,
        next_attempt: bool = False,
        attempts: Iterable[Attempt] = (),
        fields: dict[str, str | float | None] | None = None,
    ) -> TransitionResult:
        """Move the job to ``target`` if its status allows it and its run is ``expect_run``
        (and its attempt ``expect_attempt``: the fencing token of one worker's go at a run).

        ``next_attempt`` starts a new attempt (a claim or take-over); ``sources``
        narrows the statuses it may move from (default: all that ``TRANSITIONS``
        allows); ``next_run`` starts a new run (retry); ``attempts`` are appended;
        ``fields`` are set (None deletes). Every change restarts the retention clock.
        """
        allowed = sources_of(target)
        if sources is None:
            allowed = allowed - {target}  # a take-over (running -> running) is asked for
        else:
            allowed = allowed & frozenset(sources)
        source_names = " ".join(status.value for status in allowed)
        args: list[str | int | float] = [
            source_names,
            target.value,
            "" if expect_run is None else expect_run,
            "1" if next_run else "0",
            _attempts_json(attempts),
            self.events_channel,
            self._retention_s,
            self._prefix,
            int(time.time() * 1000),
            self._bulk_queue,
            job_key_prefix,
            ARQ_JOB_TTL_MS,
            "" if expect_attempt is None else expect_attempt,
            "1" if next_attempt else "0",
        ]
        for name, value in (fields or {}).items():
            args.extend([name, "" if value is None else value])
        code, status, run, attempt = await self._transition(keys=[self.job_key(job_id)], args=args)
        if int(code) == 1 and self._on_transition is not None:
            self._on_transition(target, 1)
        return TransitionResult(
            outcome=_OUTCOMES[int(code)],
            previous=JobStatus(status) if status else None,
            run=int(run),
            attempt=int(attempt),
        )

    async def append_attempts(self, job_id: str, run: int, attempts: Iterable[Attempt]) -> bool:
        """Record calls of a running job; False when ``run`` is no longer current."""
        payload = _attempts_json(attempts)
        if not payload:
            return True
        return bool(await self._append(keys=[self.job_key(job_id)], args=[run, payload]))

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
        key = self._tenant_key(tenant)
        upper = f"({after}" if after else "+"
        found: list[Job] = []
        last_scanned: str | None = None
        scanned = 0
        while scanned < scan_limit:
            chunk = limit - len(found) + 1 if status is None else 50
            ids = await self._redis.zrevrangebylex(key, upper, "-", start=0, num=chunk)
            if not ids:
                return _page(found, has_more=False)
            jobs = await self.get_many(ids)
            await self._forget_expired(key, ids, jobs)
            for job_id, job in zip(ids, jobs, strict=True):
                if job is not None and (status is None or job.status == status):
                    if len(found) == limit:
                        return _page(found, has_more=True)
                    found.append(job)
                scanned += 1
                last_scanned = job_id
            upper = f"({ids[-1]}"
        return JobPage(found, has_more=True, last_id=last_scanned)

    async def _forget_expired(self, key: str, ids: list[str], jobs: list[Job | None]) -> None:
        expired = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
        if expired:
            await self._redis.zrem(key, *expired)


def _page(jobs: list[Job], *, has_more: bool) -> JobPage:
    return JobPage(jobs, has_more=has_more, last_id=jobs[-1].id if jobs else None)


def _attempts_json(attempts: Iterable[Attempt]) -> str:
    items = [attempt.model_dump(mode="json") for attempt in attempts]
    return json.dumps(items, separators=(",", ":")) if items else ""


def _job_from_hash(row: dict[str, str]) -> Job | None:
    if not row or "spec" not in row:
        return None
    fields: dict[str, Any] = {
        "spec": JobSpec.model_validate_json(row["spec"]),
        "status": JobStatus(row["status"]),
        "run": int(row.get("run", 1)),
        "attempt": int(row.get("attempt", 0)),
        "attempts": json.loads(row.get("attempts") or "[]"),
    }
    for name in ("started_at", "finished_at"):
        if row.get(name):
            fields[name] = float(row[name])
    if row.get("error"):
        fields["error"] = JobError.model_validate_json(row["error"])
    if row.get("outcome"):
        fields["outcome"] = JobOutcome.model_validate_json(row["outcome"])
    fields["cached"] = row.get("cached") == "1"
    return Job.model_validate(fields)
