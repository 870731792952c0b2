"""Prometheus metrics: the API's ``GET /metrics``, a worker's own port, and the hooks
that move the counters, against the real service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.blobs import ObjectStore
from app.cli.embedded import free_port
from app.core.jobs import JobStatus
from app.core.providers_config import ProvidersConfig
from app.errors import ServiceUnavailable
from app.obs.metrics import Metrics
from app.settings import Settings
from tests.support.fakes.receiver import WebhookReceiver
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.service import RunningService

FAMILIES = {
    "editq_queue_depth",
    "editq_job_transitions",
    "editq_pickup_latency_seconds",
    "editq_run_duration_seconds",
    "editq_upstream_calls",
    "editq_upstream_call_duration_seconds",
    "editq_upstream_slots_held",
    "editq_upstream_max_concurrency",
    "editq_webhook_deliveries",
    "editq_s3_errors",
    "editq_http_requests",
    "editq_http_request_duration_seconds",
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when the page does not have it."""
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The isolated settings, with the worker serving metrics on a free local port and
    webhooks allowed to reach the local receiver."""
    return settings.model_copy(
        update={
            "worker_metrics_host": "127.0.0.1",
            "worker_metrics_port": free_port(),
            "allow_private_urls": True,
        }
    )


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver on a real socket."""
    async with WebhookReceiver() as running:
        yield running


async def scrape(service: RunningService, url: str, key: str | None = "key-a") -> Samples:
    """GET a metrics page; its samples (asserting a 200 in the Prometheus text format)."""
    headers = service.auth(key) if key else {}
    async with service.client.get(url, headers=headers) as response:
        text = await response.text()
        assert response.status == 200, text
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(text)


def worker_url(service: RunningService) -> str:
    """The in-process worker's metrics endpoint."""
    return f"http://127.0.0.1:{service.settings.worker_metrics_port}/metrics"


async def scrape_until(
    service: RunningService, name: str, wanted: float, timeout_s: float = 10, **labels: str
) -> Samples:
    """Scrape the worker until sample ``name{labels}`` reaches ``wanted``."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(service, worker_url(service), key=None)
        if value(samples, name, **labels) == wanted or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


def test_every_family_is_exported_and_parses() -> None:
    families = {
        family.name for family in text_string_to_metric_families(Metrics().render().decode())
    }
    assert families >= FAMILIES
    assert "process_resident_memory_bytes" in families


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.job_transition(JobStatus.FAILED, 3)
    name = "editq_job_transitions_total"
    assert value(parse(first.render().decode()), name, status="failed") == 3
    assert value(parse(second.render().decode()), name, status="failed") == 0


def test_an_upstream_call_without_an_answer_is_labelled_with_its_error_code() -> None:
    metrics = Metrics()
    metrics.upstream_call("fake", None, "upstream_timeout", 2.5)
    metrics.upstream_call("fake", 429, "rate_limited", 0.1)
    samples = parse(metrics.render().decode())
    labels = {"upstream": "fake"}
    assert value(samples, "editq_upstream_calls_total", status="upstream_timeout", **labels) == 1
    assert value(samples, "editq_upstream_calls_total", status="429", **labels) == 1
    assert value(samples, "editq_upstream_call_duration_seconds_count", **labels) == 2
    assert value(samples, "editq_upstream_call_duration_seconds_sum", **labels) == 2.6


def test_no_created_series_are_exported() -> None:
    metrics = Metrics()
    metrics.job_transition(JobStatus.QUEUED)
    metrics.http_request("GET", "/v1/jobs/{job_id}", 200, 0.01)
    names = {name for name, _ in parse(metrics.render().decode())}
    assert "editq_job_transitions_total" in names
    assert not [name for name in names if name.endswith("_created")]


async def test_api_requests_are_counted_by_route_template(api_only: RunningService) -> None:
    for job_id in ("job_missing1", "job_missing2"):
        async with api_only.client.get(
            api_only.url(f"/v1/jobs/{job_id}"), headers=api_only.auth()
        ) as reply:
            assert reply.status == 404
    async with api_only.client.get(api_only.url("/no/such/page"), headers=api_only.auth()):
        pass
    async with api_only.client.delete(api_only.url("/v1/models"), headers=api_only.auth()):
        pass
    samples = await scrape(api_only, api_only.url("/metrics"))
    requests = "editq_http_requests_total"
    job = {"method": "GET", "route": "/v1/jobs/{job_id}"}
    assert value(samples, requests, status="404", **job) == 2
    assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
    assert value(samples, requests, method="DELETE", route="unmatched", status="405") == 1
    assert value(samples, "editq_http_request_duration_seconds_count", **job) == 2
    assert not [labels for name, labels in samples if "job_missing1" in str(labels)]


async def test_a_failed_object_storage_call_is_counted(settings: Settings) -> None:
    metrics = Metrics()
    storage = ObjectStore(settings, on_error=metrics.s3_error)
    try:
        with pytest.raises(ServiceUnavailable):
            await storage.get("inputs/missing/image-0.png")
        await storage.put("inputs/present/image-0.png", b"x", "image/png")
    finally:
        storage.close()
    samples = parse(metrics.render().decode())
    assert value(samples, "editq_s3_errors_total", operation="get_object") == 1
    assert value(samples, "editq_s3_errors_total", operation="put_object") is None


async def test_api_metrics_need_a_key(api_only: RunningService) -> None:
    async with api_only.client.get(api_only.url("/metrics")) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_api_key"


async def test_api_metrics_can_be_made_public(
    settings: Settings, providers: ProvidersConfig
) -> None:
    running = RunningService(settings.model_copy(update={"metrics_public": True}), providers)
    await running.start(worker=False)
    try:
        samples = await scrape(running, running.url("/metrics"), key=None)
    finally:
        await running.stop()
    assert value(samples, "editq_queue_depth", lane="interactive") == 0


async def test_queue_depth_counts_runs_waiting_per_lane(api_only: RunningService) -> None:
    for _ in range(2):
        status, _, _ = await api_only.submit()
        assert status == 202
    samples = await scrape(api_only, api_only.url("/metrics"))
    assert value(samples, "editq_queue_depth", lane="interactive") == 2
    assert value(samples, "editq_queue_depth", lane="bulk") == 0
    assert value(samples, "editq_job_transitions_total", status="queued") == 2


async def test_a_job_run_moves_the_worker_counters(
    service: RunningService, fake_upstream: FakeUpstream, receiver: WebhookReceiver
) -> None:
    fake_upstream.fail_next(Fault.status(503))
    _, job, _ = await service.submit(
        model="fake/gpt-image-1",
        retry={"count": 1, "on_codes": [503]},
        webhook_url=receiver.url(),
    )
    assert (await service.wait(job["id"]))["status"] == "succeeded"
    await receiver.wait_for(1)
    # The job shows as succeeded, and its webhook goes out, before its run has returned.
    await scrape_until(service, "editq_run_duration_seconds_count", 1)
    samples = await scrape_until(service, "editq_webhook_deliveries_total", 1, outcome="delivered")
    assert value(samples, "editq_webhook_deliveries_total", outcome="delivered") == 1
    for status in ("running", "succeeded"):
        assert value(samples, "editq_job_transitions_total", status=status) == 1
    assert value(samples, "editq_pickup_latency_seconds_count", lane="interactive") == 1
    assert value(samples, "editq_run_duration_seconds_count") == 1
    for status in ("503", "200"):
        assert value(samples, "editq_upstream_calls_total", upstream="fake", status=status) == 1
    assert value(samples, "editq_upstream_max_concurrency", upstream="fake") == (
        service.providers.upstream("fake").max_concurrency
    )
    assert value(samples, "editq_upstream_slots_held", upstream="fake") == 0
    api = await scrape(service, service.url("/metrics"))
    assert value(api, "editq_job_transitions_total", status="queued") == 1
    assert value(api, "editq_job_transitions_total", status="running") == 0


async def test_the_worker_port_needs_no_key_and_serves_only_metrics(
    service: RunningService,
) -> None:
    await scrape(service, worker_url(service), key=None)
    async with service.client.get(worker_url(service).replace("/metrics", "/v1/jobs")) as reply:
        assert reply.status == 404


async def test_a_busy_worker_port_does_not_stop_a_second_worker(
    settings: Settings, providers: ProvidersConfig
) -> None:
    first = RunningService(settings, providers)
    await first.start()
    second = RunningService(settings, providers)
    try:
        await second.start()  # the same worker metrics port: logged, not raised
        await first.stop_worker()  # only the second worker is left to run the job
        _, job, _ = await second.submit()
        assert (await second.wait(job["id"]))["status"] == "succeeded"
    finally:
        await second.stop()
        await first.stop()
