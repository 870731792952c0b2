"""A job's Redis hash and the ``Job`` it holds, both ways (see ``app.store.jobs``).

Reading is forgiving on purpose: a record today's models cannot read (written by an
older version, or damaged) is logged and read as absent, so one bad record never
breaks a read, a page or a batch of others.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.core.jobs import (
    Attempt,
    Job,
    JobError,
    JobOutcome,
    JobSpec,
    JobStatus,
    settle_calls,
)

log = logging.getLogger(__name__)


CALL_FIELD = "call:"
"""Each upstream call is its own field of the job's hash: ``call:1``, ``call:2`` … in the
order the calls started (``record_call.lua`` numbers them)."""


def call_json(call: Attempt) -> str:
    """One call as its field of the job's hash holds it: as clients see it, plus the
    ``output`` an asynchronous call stored (read back by the next delivery)."""
    if call.output is None:
        return call.model_dump_json()
    document = call.model_dump(mode="json")
    document["output"] = call.output.model_dump(mode="json")
    return json.dumps(document)


def job_from_row(job_id: str, row: dict[str, str]) -> Job | None:
    """The job in ``row``; None when there is none, and when it cannot be read (logged)."""
    try:
        return _job_from_hash(row)
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError included
        log.error("job %s has an unreadable record (%s); it is skipped", job_id, exc)
        return None


def _job_from_hash(row: dict[str, str]) -> Job | None:
    if not row or "spec" not in row:
        return None
    status, attempt = JobStatus(row["status"]), int(row.get("attempt", 0))
    fields: dict[str, Any] = {
        "spec": JobSpec.model_validate_json(row["spec"]),
        "status": status,
        "run": int(row.get("run", 1)),
        "attempt": attempt,
        "attempts": settle_calls(_calls(row, attempt), attempt, status == JobStatus.RUNNING),
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


def _calls(row: dict[str, str], attempt: int) -> list[Attempt]:
    """The job's calls in the order they started.

    A record written before calls had fields of their own holds them, all ended, as
    one JSON array in ``attempts``; they come first, under the job's latest claim.
    """
    legacy = [
        Attempt.model_validate(
            {"attempt": attempt, "outcome": "succeeded" if item.get("status") == 200 else "failed"}
            | item
        )
        for item in json.loads(row.get("attempts") or "[]")
    ]
    numbered = sorted(
        (int(name.removeprefix(CALL_FIELD)), value)
        for name, value in row.items()
        if name.startswith(CALL_FIELD)
    )
    calls = []
    for number, value in numbered:
        call = Attempt.model_validate_json(value)
        call.number = number
        calls.append(call)
    return legacy + calls
