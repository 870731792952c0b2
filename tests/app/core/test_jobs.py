"""The job model: its status machine, ids, usage sums and public shape."""

from __future__ import annotations

import re

import pytest

from app.core.edit_params import EditParams
from app.core.jobs import (
    TERMINAL,
    TRANSITIONS,
    Attempt,
    CallOutcome,
    Job,
    JobError,
    JobInputs,
    JobOutcome,
    JobSpec,
    JobStatus,
    StoredImage,
    Usage,
    new_job_id,
    settle_calls,
    sources_of,
)
from app.core.public import job_json

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELED,
)


def test_terminal_states() -> None:
    assert {status for status in JobStatus if status.terminal} == {SUCCEEDED, FAILED, CANCELED}
    assert frozenset({SUCCEEDED, FAILED, CANCELED}) == TERMINAL


def test_transition_table() -> None:
    assert {
        QUEUED: {RUNNING, CANCELED},
        RUNNING: {SUCCEEDED, FAILED, CANCELED, QUEUED, RUNNING},  # RUNNING: a take-over
        SUCCEEDED: set(),
        FAILED: {QUEUED},
        CANCELED: {QUEUED},
    } == TRANSITIONS
    assert set(TRANSITIONS) == set(JobStatus)


def test_succeeded_is_final() -> None:
    assert TRANSITIONS[SUCCEEDED] == frozenset()
    assert SUCCEEDED not in sources_of(QUEUED)


@pytest.mark.parametrize("status", [FAILED, CANCELED])
def test_retry_edges(status: JobStatus) -> None:
    assert TRANSITIONS[status] == {QUEUED}
    assert status in sources_of(QUEUED)


@pytest.mark.parametrize(
    ("target", "sources"),
    [
        (QUEUED, {RUNNING, FAILED, CANCELED}),
        (RUNNING, {QUEUED, RUNNING}),
        (SUCCEEDED, {RUNNING}),
        (FAILED, {RUNNING}),
        (CANCELED, {QUEUED, RUNNING}),
    ],
)
def test_sources_of(target: JobStatus, sources: set[JobStatus]) -> None:
    assert sources_of(target) == sources


def test_sources_of_mirrors_the_table() -> None:
    for source in JobStatus:
        for target in JobStatus:
            assert (target in TRANSITIONS[source]) == (source in sources_of(target))


def test_job_id_shape_and_clock() -> None:
    job_id = new_job_id(now=1_700_000_000.123)
    assert re.fullmatch(r"job_[0-9a-f]{24}", job_id)
    assert int(job_id[4:16], 16) == 1_700_000_000_123


def test_job_ids_sort_by_time() -> None:
    times = [0.0, 0.001, 0.016, 1.0, 4096.0, 1_700_000_000.0, 1_700_000_000.001, 4_000_000_000.0]
    ids = [new_job_id(now=now) for now in times]
    assert sorted(ids) == ids
    assert new_job_id() > new_job_id(now=1_700_000_000.0)


def test_job_ids_unique() -> None:
    ids = {new_job_id(now=1_700_000_000.0) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_usage_plus() -> None:
    first = Usage(
        total_tokens=10,
        input_tokens=6,
        output_tokens=4,
        input_tokens_details={"text_tokens": 2, "image_tokens": 4},
    )
    second = Usage(
        total_tokens=5,
        input_tokens=3,
        output_tokens=2,
        input_tokens_details={"image_tokens": 3, "cached_tokens": 1},
    )
    total = first.plus(second)
    assert (total.total_tokens, total.input_tokens, total.output_tokens) == (15, 9, 6)
    assert total.input_tokens_details == {"text_tokens": 2, "image_tokens": 7, "cached_tokens": 1}
    assert first.input_tokens_details == {"text_tokens": 2, "image_tokens": 4}
    assert Usage().plus(Usage()) == Usage()


def image(key: str, width: int = 64, height: int = 48) -> StoredImage:
    return StoredImage(key=key, content_type="image/png", bytes=123, width=width, height=height)


def job(**changes: object) -> Job:
    spec = JobSpec(
        id="job_018bcfe5680000aabbccddeeff",
        tenant="t1",
        created_at=1_700_000_000.9,
        request=EditParams(model="local/editor", prompt="sepia", metadata={"order": "7"}),
        inputs=JobInputs(images=(image("in/0"),), mask=image("in/mask")),
    )
    return Job.model_validate({"spec": spec, "status": QUEUED, **changes})


PUBLIC_KEYS = {
    "id",
    "object",
    "status",
    "model",
    "created_at",
    "started_at",
    "finished_at",
    "request",
    "attempts",
    "error",
    "result",
    "cached",
    "batch_id",
    "variant_index",
    "queue_position",
    "metadata",
    "urls",
}


def call(attempt: int, outcome: CallOutcome) -> Attempt:
    return Attempt(
        run=1,
        attempt=attempt,
        output_index=0,
        upstream="local",
        model="local/editor",
        outcome=outcome,
        started_at=1_700_000_000.0 + attempt,
    )


def test_a_call_in_flight_under_the_current_claim_stays_in_flight() -> None:
    calls = [call(1, "failed"), call(2, "in_flight")]
    assert settle_calls(calls, 2, running=True) == tuple(calls)


def test_a_call_in_flight_under_an_earlier_claim_is_lost() -> None:
    settled = settle_calls([call(1, "in_flight"), call(2, "in_flight")], 2, running=True)
    assert [c.outcome for c in settled] == ["lost", "in_flight"]
    assert settled[0] == call(1, "in_flight").model_copy(update={"outcome": "lost"})


@pytest.mark.parametrize("status", [QUEUED, SUCCEEDED, FAILED, CANCELED])
def test_a_call_in_flight_of_a_job_no_longer_running_is_lost(status: JobStatus) -> None:
    calls = [call(1, "in_flight"), call(1, "succeeded"), call(1, "failed")]
    settled = settle_calls(calls, 1, running=status == RUNNING)
    assert [c.outcome for c in settled] == ["lost", "succeeded", "failed"]


def test_public_shape_of_a_queued_job() -> None:
    public = job_json(job(), None)
    assert set(public) == PUBLIC_KEYS
    assert public["object"] == "edit.job"
    assert public["id"] == "job_018bcfe5680000aabbccddeeff"
    assert (public["status"], public["model"]) == ("queued", "local/editor")
    assert public["created_at"] == 1_700_000_000
    assert (public["started_at"], public["finished_at"]) == (None, None)
    assert (public["attempts"], public["error"], public["result"]) == ([], None, None)
    assert public["metadata"] == {"order": "7"}
    assert public["urls"]["events"] == "/v1/jobs/job_018bcfe5680000aabbccddeeff/events"
    assert public["cached"] is False
    request = public["request"]
    assert "metadata" not in request
    assert request["prompt"] == "sepia"
    described = {"content_type": "image/png", "bytes": 123, "width": 64, "height": 48}
    assert request["images"] == [described]
    assert request["mask"] == described


def test_public_without_outcome_has_no_result() -> None:
    urls = [{"url": "http://s3/out/0"}]
    assert job_json(job(status=FAILED), urls)["result"] is None


def test_public_of_a_finished_job() -> None:
    outcome = JobOutcome(
        created=1_700_000_005,
        outputs=(image("out/0"),),
        output_format="png",
        size="64x48",
        quality="auto",
        usage=Usage(total_tokens=3),
    )
    attempt = Attempt(
        run=1,
        attempt=1,
        output_index=0,
        upstream="local",
        model="local/editor",
        outcome="succeeded",
        status=200,
        duration_ms=12,
        started_at=1_700_000_001.5,
    )
    finished = job(
        status=SUCCEEDED,
        started_at=1_700_000_001.5,
        finished_at=1_700_000_004.99,
        attempts=(attempt,),
        outcome=outcome,
    )
    urls = [{"url": "http://s3/out/0"}]
    public = job_json(finished, urls)
    assert (public["started_at"], public["finished_at"]) == (1_700_000_001, 1_700_000_004)
    assert public["attempts"] == [attempt.model_dump(mode="json")]
    assert public["result"]["data"] == urls
    assert public["result"]["created"] == 1_700_000_005
    assert public["result"]["usage"]["total_tokens"] == 3
    assert job_json(finished, None)["result"] is None


def test_public_error() -> None:
    error = JobError(type="upstream_error", code="upstream_timeout", message="slow")
    public = job_json(job(status=FAILED, error=error), None)
    assert public["error"] == {
        "type": "upstream_error",
        "code": "upstream_timeout",
        "message": "slow",
    }
