"""The edit job: its status machine, what it records, and how new ids are made.

Status moves only along ``TRANSITIONS``::

    queued ──> running ──> succeeded      (running ──> running: a take-over)
       │          │──────> failed ───┐
       │          └──────> canceled ─┤ (retry)
       └─────────────────> canceled  └──> queued

``run`` counts the job's runs (1 for the first, +1 per retry); ``attempt`` counts
the workers' goes at them (+1 per claim, including a take-over from a worker that
died or stalled). A worker presents both when it records the end of its attempt,
so a late duplicate of an earlier run or attempt can never move the job, and its
outputs (written under its attempt's own keys) are never the committed ones.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.edit_params import EditParams


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True once nothing will change the job unless a client retries it."""
        return self in TERMINAL


class Lane(StrEnum):
    """Which poll loop serves a job: single jobs are interactive, batch variants bulk.

    ``JobSpec.lane`` is the one place that decides it; everyone else asks the job.
    """

    INTERACTIVE = "interactive"
    BULK = "bulk"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

PARTIAL = "partial"
"""The ``status`` of a job log entry that records a partial image (an upstream's
preview while the job runs), not a transition: the job's status is unchanged."""

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
            JobStatus.QUEUED,
            JobStatus.RUNNING,  # another worker takes over a run whose worker died
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELED: frozenset({JobStatus.QUEUED}),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which a job may move to ``target``."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


def new_job_id(now: float | None = None) -> str:
    """A job id that sorts by creation time: ``job_`` + 12 hex digits of ms + 12 random."""
    return f"job_{_time_ordered(now)}"


def new_batch_id(now: float | None = None) -> str:
    """A batch id that sorts by creation time, like job ids."""
    return f"{BATCH_PREFIX}{_time_ordered(now)}"


JOB_ID = re.compile(r"job_[0-9a-f]{24}", re.ASCII)
BATCH_PREFIX = "batch_"
BATCH_ID = re.compile(BATCH_PREFIX + r"[0-9a-f]{24}", re.ASCII)


def is_job_id(value: str) -> bool:
    """Whether ``value`` has exactly the form ``new_job_id`` makes (nothing else may
    reach a Redis key: ``job_…:log`` is not a job)."""
    return JOB_ID.fullmatch(value) is not None


def names_a_batch(subject_id: str) -> bool:
    """Whether a (well-formed) job-or-batch id is a batch's: its prefix says so."""
    return subject_id.startswith(BATCH_PREFIX)


def is_batch_id(value: str) -> bool:
    """Whether ``value`` has exactly the form ``new_batch_id`` makes."""
    return BATCH_ID.fullmatch(value) is not None


def _time_ordered(now: float | None) -> str:
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{os.urandom(6).hex()}"


class Usage(BaseModel):
    """Token usage in the OpenAI images shape; upstream extras are kept."""

    model_config = ConfigDict(extra="allow")

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_details: dict[str, int] = Field(
        default_factory=lambda: {"text_tokens": 0, "image_tokens": 0}
    )

    def plus(self, other: Usage) -> Usage:
        """The sum of two usages (details added key by key)."""
        details = dict(self.input_tokens_details)
        for key, value in other.input_tokens_details.items():
            details[key] = details.get(key, 0) + value
        return Usage(
            total_tokens=self.total_tokens + other.total_tokens,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            input_tokens_details=details,
        )


class StoredImage(BaseModel):
    """An image held in object storage, described without its bytes."""

    key: str
    content_type: str
    bytes: int
    width: int
    height: int
    sha256: str | None = None


CallOutcome = Literal["in_flight", "succeeded", "failed", "lost", "canceled"]


class CallHandle(BaseModel):
    """Where an asynchronous upstream keeps an edit it accepted (its request id, and
    the URLs to poll, fetch and cancel it), recorded with the call before any waiting
    so any worker can carry on with it. The URLs stay in the job's record: the public
    view shows the request id only (``public``)."""

    request_id: str
    poll_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None

    def public(self) -> CallHandle:
        """The handle as clients see it: its request id only."""
        return CallHandle(request_id=self.request_id)


class Attempt(BaseModel):
    """One upstream call, recorded as it starts (``in_flight``) and again as it ends.

    A call that will never end is ``lost``: the worker making it died, stalled past its
    lease or gave the run up first. The upstream may have done the work; none of it
    was used.
    """

    run: int
    attempt: int = Field(
        description="the worker's claim of the job that made the call: 1 for the first, "
        "+1 for each later one (a take-over from a lost worker included), across runs"
    )
    output_index: int
    upstream: str
    model: str
    outcome: CallOutcome
    status: int | None = Field(None, description="the upstream's HTTP status, if it answered")
    error_code: str | None = None
    duration_ms: int | None = Field(None, description="null while in flight, and when lost")
    started_at: float
    next_action: Literal["retry", "fallback"] | None = Field(
        None, description="what followed this failed call, if anything"
    )
    handle: CallHandle | None = Field(
        None, description="an asynchronous upstream's request, recorded as it was accepted"
    )
    upstream_canceled: bool | None = Field(
        None, description="canceled calls: whether the upstream accepted the cancel"
    )
    output: StoredImage | None = Field(
        None,
        exclude=True,  # kept in the job's record (``call_json``), never shown to clients
        description="the stored image a succeeded asynchronous call made",
    )
    usage: Usage | None = Field(None, description="what the upstream reported for this call")
    number: int = Field(0, exclude=True, description="its place in the job's record (read)")

    def public(self) -> Attempt:
        """The call as clients see it: no upstream URLs (``output`` is never serialized)."""
        if self.handle is None:
            return self
        return self.model_copy(update={"handle": self.handle.public()})


def settle_calls(calls: Iterable[Attempt], job_attempt: int, running: bool) -> tuple[Attempt, ...]:
    """The job's calls as they stand: one still ``in_flight`` although its worker no
    longer holds the job (another claim took it over, or it is no longer running)
    will never end, and reads as ``lost``. ``job_attempt`` is the job's current claim."""
    return tuple(
        call.model_copy(update={"outcome": "lost"})
        if call.outcome == "in_flight" and (not running or call.attempt != job_attempt)
        else call
        for call in calls
    )


class JobError(BaseModel):
    """Why a job failed, in the OpenAI error vocabulary."""

    type: str
    code: str
    message: str


class JobInputs(BaseModel):
    """The job's input images and mask, as stored."""

    images: tuple[StoredImage, ...]
    mask: StoredImage | None = None


class JobOutcome(BaseModel):
    """A succeeded job's outputs and what the upstream reported."""

    created: int
    outputs: tuple[StoredImage, ...]
    output_format: str
    size: str
    quality: str
    usage: Usage


class JobSpec(BaseModel):
    """The part of a job fixed at submission."""

    id: str
    tenant: str
    created_at: float
    request: EditParams
    inputs: JobInputs
    batch_id: str | None = None
    variant_index: int | None = None
    rank: float | None = Field(None, description="a variant's place in fair-share order")

    @property
    def lane(self) -> Lane:
        """The lane the job runs on: bulk for a batch variant, else interactive."""
        return Lane.BULK if self.batch_id is not None else Lane.INTERACTIVE


class Job(BaseModel):
    """A job as stored: its spec plus everything that changes while it runs."""

    spec: JobSpec
    status: JobStatus
    run: int = 1
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: tuple[Attempt, ...] = ()
    error: JobError | None = None
    outcome: JobOutcome | None = None
    cached: bool = False

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def lane(self) -> Lane:
        """The lane the job runs on (see ``JobSpec.lane``)."""
        return self.spec.lane
