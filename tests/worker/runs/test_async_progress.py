"""Where a run on asynchronous upstreams stands, read from its record; the poll cadence."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.edit_params import EditParams
from app.core.jobs import (
    Attempt,
    CallHandle,
    Job,
    JobInputs,
    JobSpec,
    JobStatus,
    Lane,
    StoredImage,
)
from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.core.routing_options import RoutingOptions
from app.store.job_records import call_json
from worker.runs.async_progress import (
    MIN_POLL_DELAY_S,
    attempt_deadline,
    is_async_run,
    pending_calls,
    poll_delay,
    progress_of,
    resumes,
)
from worker.runs.plan import plan_run

IMAGE = StoredImage(key="outputs/j/0.png", content_type="image/png", bytes=1, width=1, height=1)
HANDLE = CallHandle(request_id="r1", poll_url="https://api.us1.bfl.ai/v1/get_result?id=r1")


def job(status: JobStatus = JobStatus.RUNNING, *calls: Attempt, run: int = 2) -> Job:
    spec = JobSpec(
        id="job_0123456789ab0123456789ab",
        tenant="t",
        created_at=1.0,
        request=EditParams(model="bfl/kontext", prompt="p", n=2),
        inputs=JobInputs(images=(IMAGE,)),
    )
    return Job(spec=spec, status=status, run=run, attempt=3, attempts=calls)


def call(outcome: str = "in_flight", *, index: int = 0, **fields: Any) -> Attempt:
    values: dict[str, Any] = {
        "run": 2,
        "attempt": 3,
        "output_index": index,
        "upstream": "bfl",
        "model": "bfl/kontext",
        "outcome": outcome,
        "started_at": 100.0,
    }
    return Attempt.model_validate(values | fields)


@pytest.mark.parametrize(
    ("age", "delay"),
    [(0, 0.5), (0.2, 0.3), (0.5, 1.0), (1.5, 2.0), (3.5, 4.0), (7.5, 5.0), (12.5, 5.0)],
)
def test_polls_fall_at_doubling_waits_counted_from_the_submission(age: float, delay: float) -> None:
    assert poll_delay(age, 0.5, 5.0) == pytest.approx(delay)


def test_a_long_wait_polls_every_max_seconds_in_step() -> None:
    assert poll_delay(100.01, 0.5, 5.0) == pytest.approx(2.49)  # polls at 102.5, 107.5 …
    assert poll_delay(3.0, 10.0, 10.0) == pytest.approx(7.0)


def test_a_late_delivery_is_not_followed_at_once() -> None:
    assert poll_delay(3.4999, 0.5, 5.0) == MIN_POLL_DELAY_S


def test_a_fresh_run_calls_every_output_first_model() -> None:
    progress = progress_of(job(JobStatus.RUNNING), 2)
    assert [(p.index, p.done, p.pending, p.model_index, p.retries_used) for p in progress] == [
        (0, None, None, 0, 0),
        (1, None, None, 0, 0),
    ]


def test_a_call_with_a_handle_is_pending_and_a_succeeded_one_with_output_is_done() -> None:
    pending = call(handle=HANDLE)
    done = call("succeeded", index=1, output=IMAGE)
    first, second = progress_of(job(JobStatus.RUNNING, pending, done), 2)
    assert first.pending == pending and first.done is None
    assert second.done == done and second.pending is None


def test_failed_calls_say_how_far_routing_went() -> None:
    calls = (
        call("failed", next_action="retry"),
        call("failed", next_action="fallback"),
        call("failed", next_action="retry"),
        call("failed", next_action="retry"),
        call(handle=HANDLE, model="other"),
    )
    [progress, _] = progress_of(job(JobStatus.RUNNING, *calls), 2)
    assert (progress.model_index, progress.retries_used) == (1, 2)
    assert progress.pending is not None and progress.pending.model == "other"


def test_a_call_never_given_its_handle_is_unrecorded_and_made_again() -> None:
    lost = call()
    [progress, _] = progress_of(job(JobStatus.RUNNING, lost), 2)
    assert progress.unrecorded == (lost,)
    assert progress.pending is None and progress.done is None


def test_calls_of_other_runs_and_claims_do_not_count() -> None:
    old = (call("succeeded", output=IMAGE, attempt=2), call(handle=HANDLE, run=1))
    [progress, _] = progress_of(job(JobStatus.RUNNING, *old), 2)
    assert progress.done is None and progress.pending is None
    assert not resumes(job(JobStatus.RUNNING, *old))


def test_a_running_job_whose_claim_made_calls_resumes_without_a_new_claim() -> None:
    assert resumes(job(JobStatus.RUNNING, call(handle=HANDLE)))
    assert not resumes(job(JobStatus.RUNNING))  # claimed, then lost before any call
    assert not resumes(job(JobStatus.QUEUED))
    assert not resumes(job(JobStatus.CANCELED, call(handle=HANDLE)))


def test_a_canceled_jobs_waiting_edits_are_still_found_to_cancel() -> None:
    waiting = call("lost", handle=HANDLE)  # how a canceled job's record reads it
    never_handled = call("lost", index=1)
    assert pending_calls(job(JobStatus.CANCELED, waiting, never_handled)) == [waiting]


def test_the_budget_counts_from_the_claims_first_submission() -> None:
    calls = (call("failed", started_at=50.0), call(started_at=80.0), call(started_at=70.0, run=1))
    assert attempt_deadline(job(JobStatus.RUNNING, *calls), 300, now=90.0) == 350.0
    assert attempt_deadline(job(JobStatus.RUNNING), 300, now=90.0) == 390.0


def test_a_run_is_asynchronous_if_any_model_it_may_call_is() -> None:
    providers = ProvidersConfig(
        upstreams=(
            UpstreamConfig(name="bfl", kind="bfl"),
            UpstreamConfig(name="oa", kind="openai", base_url="http://oa"),
        ),
        models=(
            ModelConfig(id="bfl/kontext", upstream="bfl", upstream_model="flux-kontext-pro"),
            ModelConfig(id="oa/gpt", upstream="oa", upstream_model="gpt-image-1"),
        ),
    )

    def plan(model: str, *fallbacks: str) -> bool:
        routing = RoutingOptions.model_validate({"fallbacks": [{"model": m} for m in fallbacks]})
        request = EditParams(model=model, prompt="p", routing=routing)
        return is_async_run(plan_run(request, Lane.INTERACTIVE, providers, reserve=0), providers)

    assert plan("bfl/kontext")
    assert plan("oa/gpt", "bfl/kontext")
    assert not plan("oa/gpt")


def test_the_public_view_of_a_call_has_no_upstream_urls_nor_storage_keys() -> None:
    recorded = call("succeeded", handle=HANDLE, output=IMAGE)
    public = recorded.public()
    assert public.handle == CallHandle(request_id="r1")
    shown = public.model_dump_json()
    assert "get_result" not in shown and IMAGE.key not in shown
    assert "output" not in Attempt.model_json_schema(mode="serialization")["properties"]
    assert call().public() == call()


def test_the_record_keeps_the_output_for_the_next_delivery() -> None:
    recorded = call("succeeded", handle=HANDLE, output=IMAGE)
    assert Attempt.model_validate_json(call_json(recorded)) == recorded
