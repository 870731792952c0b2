"""Replicate and fal through the asynchronous run path, end to end against their fakes:
one submission per edit, polled to success; moderation final although the request asks
for retries and a fallback; a wrong key and a 429 mapped as for any upstream; a cancel
in editq that the upstream's API carries out (BFL, which has none, is in
``test_async_upstreams``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from tests.support.fakes.fal import FakeFal, FalAnswer, Outcome
from tests.support.fakes.replicate import KONTEXT, FakeReplicate
from tests.support.fakes.replicate_predictions import throttled
from tests.support.images import decode
from tests.support.processes import WorkerProcess
from tests.support.service import RunningService

KEY = "upstream-key"


def one_upstream(kind: str, base_url: str, model: ModelConfig) -> ProvidersConfig:
    upstream = UpstreamConfig(
        name=model.upstream,
        kind=kind,
        base_url=base_url,
        api_key=SecretStr(KEY),
        poll_initial_s=0.1,
        poll_max_s=0.3,
    )
    return ProvidersConfig(upstreams=(upstream,), models=(model,))


@pytest.fixture
async def replicate() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(api_key=KEY, processing_s=0.5) as fake:
        yield fake


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal(api_key=KEY, queue_s=0.2, processing_s=0.5) as fake:
        yield fake


def replicate_providers(fake: FakeReplicate) -> ProvidersConfig:
    model = ModelConfig(
        id="replicate/kontext",
        upstream="replicate",
        upstream_model=KONTEXT.name,
        image_field="input_image",
    )
    return one_upstream("replicate", fake.origin, model)


def fal_providers(fake: FakeFal) -> ProvidersConfig:
    model = ModelConfig(id="fal/kontext", upstream="fal", upstream_model="fal-ai/flux-pro/kontext")
    return one_upstream("fal", fake.base_url, model)


async def succeeded_once(service: RunningService, model: str) -> dict[str, Any]:
    status, job, _ = await service.submit(model=model)
    assert status == 202, job
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded", (done["error"], done["attempts"])
    [call] = done["attempts"]
    assert call["outcome"] == "succeeded" and call["handle"]["request_id"]
    image = decode(await service.download(done["result"]["data"][0]["url"]))
    assert image.size == (64, 48)
    return done


async def canceled_upstream(service: RunningService, model: str) -> dict[str, Any]:
    """Submit, wait for the handle, cancel in editq; the job's call once recorded."""
    _, job, _ = await service.submit(model=model)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, current = await service.get(f"/v1/jobs/{job['id']}")
        if current["attempts"] and current["attempts"][0]["handle"]:
            break
        await asyncio.sleep(0.05)
    status, _ = await service.post(f"/v1/jobs/{job['id']}/cancel")
    assert status == 200
    while time.monotonic() < deadline:
        _, current = await service.get(f"/v1/jobs/{job['id']}")
        if current["attempts"][0]["outcome"] == "canceled":
            return dict(current["attempts"][0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the call was never recorded canceled: {current['attempts']}")


async def test_replicate_edit_is_submitted_once_and_polled(
    settings: Settings, replicate: FakeReplicate
) -> None:
    async with RunningService(settings, replicate_providers(replicate)) as service:
        await succeeded_once(service, "replicate/kontext")
    assert len(replicate.predictions) == 1
    assert replicate.polls >= 1


async def test_replicate_cancel_is_carried_out_upstream(
    settings: Settings, replicate: FakeReplicate
) -> None:
    replicate.processing_s = 60
    async with RunningService(settings, replicate_providers(replicate)) as service:
        call = await canceled_upstream(service, "replicate/kontext")
    assert call["upstream_canceled"] is True
    assert replicate.cancels == [call["handle"]["request_id"]]


async def test_fal_edit_is_submitted_once_and_polled(settings: Settings, fal: FakeFal) -> None:
    async with RunningService(settings, fal_providers(fal)) as service:
        await succeeded_once(service, "fal/kontext")
    assert fal.submissions == 1
    assert fal.status_polls >= 1


async def test_fal_cancel_is_carried_out_upstream(settings: Settings, fal: FakeFal) -> None:
    fal.processing_s = 60
    async with RunningService(settings, fal_providers(fal)) as service:
        call = await canceled_upstream(service, "fal/kontext")
    assert call["upstream_canceled"] is True
    assert fal.cancels == [call["handle"]["request_id"]]


KEY_ENV = "EDITQ_TEST_UPSTREAM_KEY"


def providers_toml(providers: ProvidersConfig) -> str:
    """``providers`` as a providers file, the key read from ``KEY_ENV``."""
    lines = []
    for upstream in providers.upstreams:
        fields = upstream.model_dump(exclude={"api_key"}, exclude_none=True)
        lines.append("[[upstreams]]")
        lines += [f"{name} = {json.dumps(value)}" for name, value in fields.items()]
        lines.append(f'api_key_env = "{KEY_ENV}"')
    for model in providers.models:
        lines.append("[[models]]")
        fields = model.model_dump(exclude_none=True)
        lines += [f"{name} = {json.dumps(value)}" for name, value in fields.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WorkerProcess]]:
    """Worker processes started by the test (stopped after it); they inherit the key."""
    monkeypatch.setenv(KEY_ENV, KEY)
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["replicate", "fal"])
async def test_a_sigkilled_worker_costs_no_second_submission(
    settings: Settings,
    tmp_path: Path,
    replicate: FakeReplicate,
    fal: FakeFal,
    processes: list[WorkerProcess],
    kind: str,
) -> None:
    replicate.processing_s = fal.processing_s = 3.0
    providers = replicate_providers(replicate) if kind == "replicate" else fal_providers(fal)
    model = providers.models[0].id

    def submissions() -> int:
        return len(replicate.predictions) if kind == "replicate" else fal.submissions

    path = tmp_path / "providers.toml"
    path.write_text(providers_toml(providers))
    stack = settings.model_copy(
        update={"providers_file": path, "job_lease_s": 2.0, "rate_limit_per_minute": 100_000}
    )
    async with RunningService(stack, providers, worker=False) as api:
        doomed = WorkerProcess(stack, tmp_path / "doomed.log").start()
        processes.append(doomed)
        jobs = [(await api.submit(model=model))[1]["id"] for _ in range(20)]
        await until(lambda: submissions() == 20, 30)
        await asyncio.sleep(0.5)  # every edit waits at the upstream, polled
        doomed.kill()
        killed_at = time.monotonic()
        processes.append(WorkerProcess(stack, tmp_path / "rescuer.log").start())
        done = [await api.wait(job_id, timeout=60) for job_id in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 20
    assert submissions() == 20  # zero extra submissions
    for job in done:
        [call] = job["attempts"]  # the same call carried on: no second claim, no second call
        assert call["outcome"] == "succeeded" and call["attempt"] == 1
    print(
        f"\nSIGKILL with 20 edits waiting at {kind}: {submissions()} submissions in all "
        f"(0 extra), all done {time.monotonic() - killed_at:.1f} s after the kill"
    )


async def test_inputs_go_by_presigned_url_where_the_upstream_takes_urls(
    settings: Settings, fal: FakeFal
) -> None:
    providers = fal_providers(fal)
    by_url = providers.upstreams[0].model_copy(update={"input_transfer": "url"})
    providers = providers.model_copy(update={"upstreams": (by_url,)})
    async with RunningService(settings, providers) as service:
        done = await succeeded_once(service, "fal/kontext")
    [(_, _, body)] = fal.requests
    assert body["image_url"].startswith(settings.s3_endpoint_url)  # fetched by fal itself
    assert "X-Amz-Signature" in body["image_url"]
    assert done["result"]["data"][0]["url"]


ROUTING: dict[str, Any] = {
    "retry": {"count": 2, "on_codes": [429, 500]},
    "fallback_on_codes": [400, 422, 502],
}
# Moderation must end the job although the request asks to retry and fall back on it.
INSISTENT: dict[str, Any] = {
    "retry": {"count": 2, "on_codes": [400, 422, 429, 500]},
    "fallback_on_codes": [400, 422, 502],
}


def with_fallback(providers: ProvidersConfig) -> tuple[ProvidersConfig, dict[str, Any]]:
    """``providers`` with a second model on the same upstream, and the routing fields
    that fall back to it."""
    (model,) = providers.models
    second = model.model_copy(update={"id": model.id + "-fallback"})
    routing = {**INSISTENT, "fallbacks": [{"model": second.id}]}
    return providers.model_copy(update={"models": (model, second)}), routing


async def failed_after(service: RunningService, model: str, **fields: Any) -> dict[str, Any]:
    status, job, _ = await service.submit(model=model, **fields)
    assert status == 202, job
    done = await service.wait(job["id"])
    assert done["status"] == "failed", done
    return done


async def test_replicate_moderation_is_final_after_one_submission(
    settings: Settings, replicate: FakeReplicate
) -> None:
    replicate.blocked_words = {"forbidden"}
    providers, routing = with_fallback(replicate_providers(replicate))
    async with RunningService(settings, providers) as service:
        done = await failed_after(
            service, "replicate/kontext", prompt="a forbidden edit", **routing
        )
    assert done["error"]["code"] == "content_filtered"
    assert len(replicate.predictions) == 1 and len(done["attempts"]) == 1


async def test_fal_moderation_is_final_after_one_submission(
    settings: Settings, fal: FakeFal
) -> None:
    fal.end_next(Outcome.moderated())
    providers, routing = with_fallback(fal_providers(fal))
    async with RunningService(settings, providers) as service:
        done = await failed_after(service, "fal/kontext", **routing)
    assert done["error"]["code"] == "content_filtered"
    assert fal.submissions == 1 and len(done["attempts"]) == 1


@pytest.mark.parametrize("kind", ["replicate", "fal"])
async def test_a_wrong_upstream_key_fails_the_job_as_an_auth_failure(
    settings: Settings, replicate: FakeReplicate, fal: FakeFal, kind: str
) -> None:
    replicate.api_key = fal.api_key = "another-key"
    providers, model = (
        (replicate_providers(replicate), "replicate/kontext")
        if kind == "replicate"
        else (fal_providers(fal), "fal/kontext")
    )
    async with RunningService(settings, providers) as service:
        done = await failed_after(service, model, **ROUTING)
    assert done["error"]["code"] == "upstream_auth_failed"
    assert [call["status"] for call in done["attempts"]] == [401]
    assert (replicate.submissions, fal.submissions) == (0, 0)


@pytest.mark.parametrize("kind", ["replicate", "fal"])
async def test_a_429_on_submit_is_retried_after_its_hint_and_then_succeeds(
    settings: Settings, replicate: FakeReplicate, fal: FakeFal, kind: str
) -> None:
    if kind == "replicate":
        replicate.fail_next("create", throttled(1))
        providers, model = replicate_providers(replicate), "replicate/kontext"
    else:
        fal.fail_next("submit", FalAnswer.error(429, "Too many requests", retry_after=1))
        providers, model = fal_providers(fal), "fal/kontext"
    async with RunningService(settings, providers) as service:
        status, job, _ = await service.submit(model=model, **ROUTING)
        assert status == 202, job
        done = await service.wait(job["id"])
    assert done["status"] == "succeeded", done
    first, second = done["attempts"]
    assert (first["status"], first["next_action"], second["outcome"]) == (
        429,
        "retry",
        "succeeded",
    )
    assert second["started_at"] - first["started_at"] >= 1.0  # the upstream's hint
    assert (replicate.submissions, fal.submissions) == ((1, 0) if kind == "replicate" else (0, 1))
