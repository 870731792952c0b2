"""The edit batch: many variants of one request, followed as one thing.

A batch's variants are ordinary jobs (``batch_id`` and ``variant_index`` set) that
share the batch's stored inputs. Its counts are kept by the job store's transition
script, so they are exact under concurrent completions, duplicates and cancels,
and reading a batch never scans its jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.edit_params import EditParams
from app.core.jobs import JobInputs, JobSpec, JobStatus

BatchEventType = Literal[
    "batch.completed", "job.running", "job.succeeded", "job.failed", "job.canceled"
]
DEFAULT_BATCH_EVENTS: tuple[BatchEventType, ...] = ("batch.completed",)


class BatchStatus(StrEnum):
    """``running`` until every variant is terminal, then ``completed`` (or ``canceled``)."""

    RUNNING = "running"
    COMPLETED = "completed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True once the batch will not change any more."""
        return self in TERMINAL


TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.CANCELED})

CREATING = "creating"
"""The stored status of a batch whose variants are still being written: no client
sees it (it is not there yet) and no variant of it runs until it is released."""


class BatchSpec(BaseModel):
    """The part of a batch fixed at submission."""

    id: str
    tenant: str
    created_at: float
    total: int
    inputs: JobInputs
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook_url: str | None = None
    webhook_events: tuple[BatchEventType, ...] = DEFAULT_BATCH_EVENTS
    first_rank: float = Field(
        0.0, description="the bulk lane's fair-share rank of variant 0 (the clock at creation)"
    )


def variant_jobs(
    spec: BatchSpec,
    job_ids: Sequence[str],
    variants: Sequence[EditParams],
    *,
    start: int = 0,
) -> list[JobSpec]:
    """The jobs of a batch's variants from index ``start`` (``job_ids`` and
    ``variants`` are that slice), in variant order: the same every time they are
    built from the same batch, ids and variants (a creation resumed after a crash
    writes exactly what the first attempt would have)."""
    return [
        JobSpec(
            id=job_id,
            tenant=spec.tenant,
            created_at=spec.created_at,
            request=params.model_copy(update={"webhook_url": spec.webhook_url}),
            inputs=spec.inputs,
            batch_id=spec.id,
            variant_index=index,
            rank=spec.first_rank + index,
        )
        for index, (job_id, params) in enumerate(zip(job_ids, variants, strict=True), start)
    ]


class Batch(BaseModel):
    """A batch as stored: its spec, status and counts by job status."""

    spec: BatchSpec
    status: BatchStatus
    counts: dict[str, int]
    usage: dict[str, Any]
    finished_at: float | None = None

    @property
    def id(self) -> str:
        return self.spec.id


def batch_from_hash(row: dict[str, str]) -> Batch | None:
    """Rebuild a batch from its Redis hash (see ``app.store.batches``); None when there
    is none or it is still being created."""
    if not row or "spec" not in row or row.get("status") == CREATING:
        return None
    counts = {status.value: int(row.get(f"n_{status.value}", 0)) for status in JobStatus}
    usage: dict[str, Any] = {
        name: int(row.get(f"u_{name}", 0))
        for name in ("total_tokens", "input_tokens", "output_tokens")
    }
    usage["input_tokens_details"] = {
        key.removeprefix("ud_"): int(value) for key, value in row.items() if key.startswith("ud_")
    }
    finished = row.get("finished_at")
    return Batch(
        spec=BatchSpec.model_validate_json(row["spec"]),
        status=BatchStatus(row["status"]),
        counts=counts,
        usage=usage,
        finished_at=int(finished) / 1000 if finished else None,
    )
