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


class EditQueue:
    """Enqueues and withdraws edit runs on the arq queue."""

    def __init__(self, pool: ArqRedis, queue_name: str) -> None:
        self._pool = pool
        self._queue_name = queue_name

    async def enqueue(self, job_id: str, run: int) -> None:
        """Queue run ``run`` of ``job_id`` for the next free worker."""
        await self._pool.enqueue_job(
            EDIT_TASK, job_id, run, _job_id=arq_job_id(job_id, run), _queue_name=self._queue_name
        )

    async def withdraw(self, job_id: str, run: int) -> None:
        """Remove a run that has not started yet (a canceled queued job)."""
        arq_id = arq_job_id(job_id, run)
        async with self._pool.pipeline(transaction=True) as pipe:
            pipe.zrem(self._queue_name, arq_id)
            pipe.delete(job_key_prefix + arq_id)
            await pipe.execute()

    async def depth(self) -> int:
        """How many runs wait in (or are leased from) the queue."""
        return int(await self._pool.zcard(self._queue_name))
