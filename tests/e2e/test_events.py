"""Server-Sent Events of jobs and batches, over real HTTP against the running service:
live order, resuming with Last-Event-ID, replay of finished subjects, keepalives,
ownership and bad resume ids; and the Python client's ``events()``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from app.client.api import AsyncEditqClient
from app.client.models import ServerSentEvent, SseDecoder
from app.http.handlers import events as events_handler
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.images import data_url, png
from tests.support.service import RunningService


class EventReader:
    """An open event stream: ``next()`` one event, ``rest()`` the rest until it ends."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.text = ""
        self._decoder = SseDecoder()
        self._ready: list[ServerSentEvent] = []
        self._chunks = response.content.iter_any()

    async def next(self) -> ServerSentEvent:
        """The next event; StopAsyncIteration if the stream ends first."""
        while not self._ready:
            await self._read()
        return self._ready.pop(0)

    async def read_until(self, text: str) -> None:
        """Read on until the raw stream contains ``text`` (comments included)."""
        while text not in self.text:
            await self._read()

    async def _read(self) -> None:
        chunk = await anext(self._chunks)
        self.text += chunk.decode()
        self._ready.extend(self._decoder.feed(chunk))

    async def rest(self) -> list[ServerSentEvent]:
        """Every remaining event, once the server has ended the stream."""
        found = []
        while True:
            try:
                found.append(await self.next())
            except StopAsyncIteration:
                return found + self._decoder.end()


@asynccontextmanager
async def open_events(
    service: RunningService, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET an event stream as key-a, with at most 30 s for the whole read."""
    async with service.client.get(
        service.url(path),
        headers={**service.auth(), **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        yield response


async def read_events(
    service: RunningService, path: str, headers: dict[str, str] | None = None
) -> list[ServerSentEvent]:
    """Every event of a stream, read until the server ends it."""
    async with open_events(service, path, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await EventReader(response).rest()


def names(events: list[ServerSentEvent]) -> list[str]:
    return [event.event for event in events]


def assert_ids_increase(events: list[ServerSentEvent]) -> None:
    keys = [tuple(int(part) for part in (event.id or "").split("-")) for event in events]
    assert keys == sorted(set(keys)), [event.id for event in events]


def batch_body(n: int) -> dict[str, Any]:
    return {
        "defaults": {
            "model": "fake/gpt-image-1",
            "prompt": "x",
            "images": [{"image_url": data_url(png())}],
        },
        "n": n,
    }


@pytest.fixture
async def client(service: RunningService) -> AsyncIterator[AsyncEditqClient]:
    """The async client for key-a of the running service."""
    async with AsyncEditqClient(service.base_url, "key-a") as client:
        yield client


async def test_a_job_stream_follows_the_job_live_and_ends_with_the_result(
    api_only: RunningService, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No keepalive reread within the 30 s read: only pub/sub can deliver the events.
    monkeypatch.setattr(events_handler, "KEEPALIVE_S", 600.0)
    fake_upstream.latency_s = 0.3
    status, job, _ = await api_only.submit(model="fake/gpt-image-1", prompt="x")
    assert status == 202, job
    async with open_events(api_only, f"/v1/jobs/{job['id']}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["x-request-id"]
        reader = EventReader(response)
        queued = await reader.next()
        await api_only.start_worker()  # the job runs only now, while the stream is open
        later = await reader.rest()
    events = [queued, *later]
    assert names(events) == ["job.queued", "job.running", "job.succeeded"]
    assert_ids_increase(events)
    data = [event.json() for event in events]
    assert [item["status"] for item in data] == ["queued", "running", "succeeded"]
    assert [item["run"] for item in data] == [1, 1, 1]
    assert data[0]["at"] <= data[1]["at"] <= data[2]["at"]
    assert abs(data[0]["at"] - job["created_at"]) < 2
    assert "job" not in data[0] and "job" not in data[1]
    final = data[2]["job"]
    assert (final["id"], final["status"]) == (job["id"], "succeeded")
    assert final["result"]["data"][0]["url"].startswith("http")


async def test_resuming_from_the_middle_sends_exactly_the_rest(
    api_only: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.2
    _, job, _ = await api_only.submit(model="fake/gpt-image-1", prompt="x")
    path = f"/v1/jobs/{job['id']}/events"
    async with open_events(api_only, path) as response:
        first = await EventReader(response).next()  # then the connection drops
    assert first.event == "job.queued"
    await api_only.start_worker()
    resumed = await read_events(api_only, path, headers={"Last-Event-ID": first.id or ""})
    assert names(resumed) == ["job.running", "job.succeeded"]

    everything = await read_events(api_only, path)
    assert [(e.id, e.event, e.data) for e in everything][1:] == [
        (e.id, e.event, e.data) for e in resumed
    ]
    assert everything[0].id == first.id
    by_query = await read_events(api_only, f"{path}?last_event_id={everything[1].id}")
    assert [e.id for e in by_query] == [everything[2].id]
    async with open_events(
        api_only, path, headers={"Last-Event-ID": everything[2].id or ""}
    ) as at_the_end:
        assert at_the_end.status == 204  # nothing after the last event: stop reconnecting


async def test_a_finished_job_is_replayed_whole_and_the_stream_ends(
    service: RunningService,
) -> None:
    _, job, _ = await service.submit(model="local/editor", prompt="make it sepia")
    done = await service.wait(job["id"])
    events = await read_events(service, f"/v1/jobs/{job['id']}/events")
    assert names(events) == ["job.queued", "job.running", "job.succeeded"]
    assert_ids_increase(events)
    final = events[-1].json()["job"]
    assert final["id"] == done["id"]
    assert final["finished_at"] == done["finished_at"]
    assert len(final["result"]["data"]) == 1


async def test_a_canceled_job_ends_its_live_stream(api_only: RunningService) -> None:
    _, job, _ = await api_only.submit()
    async with open_events(api_only, f"/v1/jobs/{job['id']}/events") as response:
        reader = EventReader(response)
        assert (await reader.next()).event == "job.queued"
        status, _ = await api_only.post(f"/v1/jobs/{job['id']}/cancel")
        assert status == 200
        rest = await reader.rest()
    assert names(rest) == ["job.canceled"]
    assert rest[0].json()["job"]["status"] == "canceled"


async def test_a_retried_job_replays_through_its_failed_run(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(Fault.status(400))
    _, job, _ = await service.submit(model="fake/gpt-image-1", prompt="x")
    assert (await service.wait(job["id"]))["status"] == "failed"
    status, _ = await service.post(f"/v1/jobs/{job['id']}/retry")
    assert status == 202
    await service.wait(job["id"])
    events = await read_events(service, f"/v1/jobs/{job['id']}/events")
    assert names(events) == [
        "job.queued",
        "job.running",
        "job.failed",
        "job.queued",
        "job.running",
        "job.succeeded",
    ]
    assert [event.json()["run"] for event in events] == [1, 1, 1, 2, 2, 2]
    # Only the event that is still the job's state carries the job object.
    assert "job" not in events[2].json()
    assert events[-1].json()["job"]["status"] == "succeeded"


async def test_a_batch_stream_counts_up_to_completion(
    service: RunningService, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.latency_s = 0.2
    status, batch = await service.post("/v1/batches", body=batch_body(5))
    assert status == 202, batch
    events = await read_events(service, f"/v1/batches/{batch['id']}/events")
    assert_ids_increase(events)
    assert names(events) == ["batch.progress"] * (len(events) - 1) + ["batch.completed"]
    data = [event.json() for event in events]
    assert data[0]["counts"]["queued"] == 5
    succeeded = [item["counts"]["succeeded"] for item in data]
    assert succeeded == sorted(succeeded) and succeeded[-1] == 5
    assert set(succeeded) == {0, 1, 2, 3, 4, 5}
    assert all(sum(item["counts"].values()) == 5 for item in data)
    assert data[-1]["status"] == "completed"
    assert data[-1]["batch"]["id"] == batch["id"]
    assert data[-1]["batch"]["counts"]["succeeded"] == 5
    assert data[-1]["at"] >= data[0]["at"]
    # Progress is a bounded summary: the batch (and its metadata) only on the last event.
    assert all(set(item) == {"status", "counts", "at"} for item in data[:-1])

    resumed = await read_events(
        service, f"/v1/batches/{batch['id']}/events", headers={"Last-Event-ID": events[-2].id or ""}
    )
    assert [event.id for event in resumed] == [events[-1].id]


async def test_keepalives_fill_silence(
    api_only: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_handler, "KEEPALIVE_S", 0.1)
    _, job, _ = await api_only.submit()
    async with open_events(api_only, f"/v1/jobs/{job['id']}/events") as response:
        reader = EventReader(response)
        assert (await reader.next()).event == "job.queued"
        await reader.read_until(": keepalive\n\n")
        await api_only.start_worker()
        assert names(await reader.rest()) == ["job.running", "job.succeeded"]


async def test_another_key_gets_404(service: RunningService) -> None:
    _, job, _ = await service.submit()
    _, batch = await service.post("/v1/batches", body=batch_body(1))
    for path in (
        f"/v1/jobs/{job['id']}/events",
        f"/v1/batches/{batch['id']}/events",
        "/v1/jobs/job_missing/events",
        "/v1/batches/batch_missing/events",
    ):
        status, body = await service.get(path, key="key-b")
        assert status == 404, (path, body)
        assert body["error"]["code"] == "not_found"
    async with service.client.get(service.url(f"/v1/jobs/{job['id']}/events")) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("headers", "query", "param"),
    [
        ({"Last-Event-ID": "not-an-id"}, "", "Last-Event-ID"),
        ({"Last-Event-ID": "1-2-3"}, "", "Last-Event-ID"),
        ({"Last-Event-ID": "99999999999999999999-0"}, "", "Last-Event-ID"),
        ({}, "?last_event_id=abc", "last_event_id"),
    ],
)
async def test_a_malformed_last_event_id_is_a_400(
    service: RunningService, headers: dict[str, str], query: str, param: str
) -> None:
    _, job, _ = await service.submit()
    for path in (f"/v1/jobs/{job['id']}/events", "/v1/batches/batch_x/events"):
        async with service.client.get(
            service.url(path + query), headers={**service.auth(), **headers}
        ) as response:
            body = await response.json()
            assert response.status == 400, body
            assert body["error"]["param"] == param
            assert response.headers["x-request-id"]


async def test_the_python_client_reads_and_resumes_the_real_stream(
    client: AsyncEditqClient,
) -> None:
    job = await client.submit([png()], "make it grayscale", model="local/editor")
    events = [event async for event in client.events(job.id)]
    assert names(events) == ["job.queued", "job.running", "job.succeeded"]
    assert events[-1].json()["job"]["status"] == "succeeded"
    resumed = [event async for event in client.events(job.id, last_event_id=events[0].id)]
    assert resumed == events[1:]
