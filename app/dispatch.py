"""Handing jobs to the workers through arq, by task name and with JSON payloads.

The front end never imports worker code: it enqueues ``run_edit`` with the job id
and run number, nothing else (images stay in object storage). arq's default
serializer is pickle; both sides use ``serialize``/``deserialize`` here instead.
"""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job

from app.core.jobs import Lane

EDIT_TASK = "run_edit"


def serialize(payload: dict[str, Any]) -> bytes:
    """arq job payload to bytes, as JSON (never pickle)."""
    return json.dumps(payload, separators=(",", ":")).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    """Bytes back to an arq job payload."""
    payload: dict[str, Any] = json.loads(data)
    return payload


def arq_job_id(job_id: str, run: int) -> str:
    """arq's id for one run of a job: each run is its own arq job."""
    return f"{job_id}:{run}"


def lane_queue(queue_name: str, lane: Lane) -> str:
    """The arq queue of a lane: single jobs are interactive, batch variants bulk.

    Each lane has its own workers' poll loop, so a deep bulk queue never delays
    the pickup of an interactive job.
    """
    return f"{queue_name}:bulk" if lane == Lane.BULK else queue_name


def edit_payload(job_id: str, run: int, enqueued_ms: int) -> bytes:
    """arq's serialized job for a run (with arq's own format function), for bulk writes."""
    return serialize_job(EDIT_TASK, (job_id, run), {}, None, enqueued_ms, serializer=serialize)


class EditQueue:
    """Enqueues and withdraws edit runs on the arq queues."""

    def __init__(self, pool: ArqRedis, queue_name: str) -> None:
        self._pool = pool
        self._queue_name = queue_name

    def queue_for(self, lane: Lane) -> str:
        """The arq queue of the lane."""
        return lane_queue(self._queue_name, lane)

    async def enqueue(self, job_id: str, run: int, lane: Lane) -> None:
        """Queue run ``run`` of ``job_id`` for the next free worker of its lane."""
        await self._pool.enqueue_job(
            EDIT_TASK,
            job_id,
            run,
            _job_id=arq_job_id(job_id, run),
            _queue_name=self.queue_for(lane),
        )

    async def withdraw(self, job_id: str, run: int, lane: Lane) -> None:
        """Remove a run that has not started yet (a canceled queued job)."""
        arq_id = arq_job_id(job_id, run)
        async with self._pool.pipeline(transaction=True) as pipe:
            pipe.zrem(self.queue_for(lane), arq_id)
            pipe.delete(job_key_prefix + arq_id)
            await pipe.execute()

    async def position(self, job_id: str, run: int, lane: Lane) -> int | None:
        """How many runs are ahead of this one in its lane (None if not in the queue)."""
        queue = self.queue_for(lane)
        score = await self._pool.zscore(queue, arq_job_id(job_id, run))
        if score is None:
            return None
        return int(await self._pool.zcount(queue, "-inf", f"({score}"))

    async def depth(self, lane: Lane) -> int:
        """How many runs wait in (or are leased from) a lane's queue."""
        return int(await self._pool.zcard(self.queue_for(lane)))
