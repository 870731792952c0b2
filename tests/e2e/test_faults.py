"""Fault tests with real processes (issue 7): nothing accepted is lost, nothing is doubled.

Workers run as ``python -m worker`` subprocesses and are killed, stopped, paused and
resumed with real signals; Redis is a private ``redis-server`` restarted mid-run; S3
is cut off by closing a TCP proxy in front of it. The API runs in this process
(``RunningService(worker=False)``), like the fake upstream and the webhook receiver.
Each test prints what it measured (``pytest -m slow -s`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from redis.asyncio import Redis

from app.cli.embedded import EmbeddedRedis
from app.core.providers_config import ProvidersConfig, load_providers
from app.dispatch import BatchWindow
from app.settings import Settings
from app.store.jobs import JobStore
from app.store.keys import Keys
from tests.support.fakes.receiver import WebhookReceiver
from tests.support.fakes.tcp_proxy import TcpProxy
from tests.support.fakes.upstream import FakeUpstream, Fault
from tests.support.processes import WorkerProcess, write_providers
from tests.support.service import TERMINAL, RunningService

pytestmark = pytest.mark.slow
MODEL = "fake/gpt-image-1"
CAP = 200  # generous: no job ever waits for an upstream slot unless a test lowers it
RUN_EDIT_LINE = re.compile(r"s (?P<arrow>\S) (?P<job>job_[0-9a-f]+):\d+:run_edit")


# --- helpers ---------------------------------------------------------------------------


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Return once ``check()`` holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


def log_messages(path: Path) -> list[str]:
    """The messages of a worker's JSON log lines."""
    if not path.exists():
        return []
    messages = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            messages.append(str(json.loads(line).get("message", "")))
    return messages


def unfinished_runs(path: Path) -> set[str]:
    """Jobs whose ``run_edit`` the worker logging to ``path`` started and did not end."""
    started: set[str] = set()
    ended: set[str] = set()
    for message in log_messages(path):
        if match := RUN_EDIT_LINE.search(message):
            (started if match["arrow"] == "→" else ended).add(match["job"])
    return started - ended


async def start_worker(
    workers: list[WorkerProcess], settings: Settings, log_path: Path
) -> WorkerProcess:
    """Start a worker process and return once both of its lanes poll Redis."""
    process = WorkerProcess(settings, log_path).start()
    workers.append(process)
    await until(
        lambda: sum("redis_version=" in m for m in log_messages(log_path)) >= 2,
        f"worker {log_path.stem} ready",
    )
    return process


async def until_exited(process: WorkerProcess, timeout_s: float) -> int:
    """The process's exit status, once it has exited by itself."""
    await until(lambda: process.returncode is not None, "worker exit", timeout_s)
    assert process.returncode is not None
    return process.returncode


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningService]:
    """The API alone, in this process, configured like the workers."""
    async with RunningService(
        settings, load_providers(settings.providers_file, os.environ), worker=False
    ) as running:
        yield running


async def submit_many(api: RunningService, count: int, **fields: Any) -> list[str]:
    """Submit ``count`` jobs on the fake upstream (prompts ``job 0``…); their ids."""
    answers = await asyncio.gather(
        *(api.submit(model=MODEL, prompt=f"job {i}", **fields) for i in range(count))
    )
    assert [status for status, _, _ in answers] == [202] * count, answers[0][1]
    return [job["id"] for _, job, _ in answers]


async def wait_all(api: RunningService, job_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Every job once terminal."""
    return list(await asyncio.gather(*(api.wait(job_id, timeout=timeout) for job_id in job_ids)))


class Bucket:
    """The test's bucket, read with boto3 straight from the S3 server (not through editq)."""

    def __init__(self, settings: Settings, endpoint_url: str) -> None:
        self.name = settings.s3_bucket
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        assert key_id is not None and secret is not None
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value(),
            aws_secret_access_key=secret.get_secret_value(),
        )

    async def keys(self, prefix: str) -> set[str]:
        """Every key under ``prefix``."""
        listing = await asyncio.to_thread(
            self._client.list_objects_v2, Bucket=self.name, Prefix=prefix
        )
        return {item["Key"] for item in listing.get("Contents", [])}

    def result_keys(self, job: dict[str, Any]) -> set[str]:
        """The object keys behind a succeeded job's presigned output URLs."""
        paths = (urlsplit(item["url"]).path for item in job["result"]["data"])
        return {path.removeprefix(f"/{self.name}/") for path in paths}

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    async def assert_one_set_of_outputs(self, job: dict[str, Any]) -> None:
        """Exactly the committed attempt's ``n`` outputs are stored under the job."""
        committed = self.result_keys(job)
        attempts = {key.split("/")[2] for key in committed}
        assert len(committed) == job["request"]["n"] and len(attempts) == 1, committed
        assert await self.keys(f"outputs/{job['id']}/") == committed


def terminal_event_ids(receiver: WebhookReceiver) -> dict[str, set[str]]:
    """For each job, the distinct ``webhook-id`` values of its terminal events received."""
    ids: dict[str, set[str]] = defaultdict(set)
    for received in receiver.received:
        event = json.loads(received.body)
        if event["type"].removeprefix("job.") in TERMINAL:
            ids[event["data"]["id"]].add(received.headers["webhook-id"])
    return ids


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def rig_settings(settings: Settings, fake_upstream: FakeUpstream, tmp_path: Path) -> Settings:
    """The fake upstream capped at ``CAP``; webhooks to this machine; a claimed webhook
    delivery whose worker died is re-sent after 5 s (not 60), so test 1 stays short."""
    providers_file = write_providers(tmp_path / "providers.toml", fake_upstream.base_url, CAP)
    return settings.model_copy(
        update={
            "providers_file": providers_file,
            "allow_private_urls": True,
            "webhook_claim_lease_s": 5.0,
            "worker_drain_s": 1.0,
        }
    )


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test started; stopped (resumed first if paused) afterwards."""
    started: list[WorkerProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def bucket(settings: Settings) -> Iterator[Bucket]:
    """The test's bucket, straight from the S3 server."""
    assert settings.s3_endpoint_url is not None
    view = Bucket(settings, settings.s3_endpoint_url)
    yield view
    view.close()


# --- 1. SIGKILL one of two workers with 100 jobs in flight -----------------------------


async def test_sigkill_one_of_two_workers_with_100_jobs_in_flight(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    bucket: Bucket,
    tmp_path: Path,
) -> None:
    doomed_log, survivor_log = tmp_path / "doomed.log", tmp_path / "survivor.log"
    fake_upstream.latency_s = 3
    async with serving(rig_settings) as api, WebhookReceiver() as receiver:
        doomed, _ = await asyncio.gather(
            start_worker(workers, rig_settings, doomed_log),
            start_worker(workers, rig_settings, survivor_log),
        )
        job_ids = await submit_many(api, 100, webhook_url=receiver.url())
        await until(
            lambda: bool(unfinished_runs(doomed_log) and unfinished_runs(survivor_log)),
            "both workers running jobs",
        )
        doomed.kill()
        killed_at = time.monotonic()
        jobs = await wait_all(api, job_ids, timeout=90)
        assert [job["status"] for job in jobs] == ["succeeded"] * 100
        await until(lambda: len(terminal_event_ids(receiver)) == 100, "100 terminal webhooks")
    orphans = {f"job {job_ids.index(job_id)}" for job_id in unfinished_runs(doomed_log)}
    restarts = [
        request.received_at
        for request in fake_upstream.requests
        if request.prompt in orphans and request.received_at > killed_at
    ]
    assert restarts, "none of the killed worker's jobs was taken over"
    recovered_after = max(restarts) - killed_at
    for job in jobs:
        await bucket.assert_one_set_of_outputs(job)
    events = terminal_event_ids(receiver)
    assert all(len(events[job_id]) == 1 for job_id in job_ids), events
    print(
        f"\nSIGKILL with 100 in flight: {len(orphans)} jobs were running on the killed "
        f"worker; {len(restarts)} of their calls restarted, the last "
        f"{recovered_after:.1f} s after the kill (lease {rig_settings.job_lease_s:g} s); "
        f"100/100 succeeded, jobs lost 0, one output set each, one terminal event id each "
        f"({len(receiver.received) - 100} duplicate deliveries of the same ids); "
        f"{len(fake_upstream.requests)} upstream calls"
    )
    assert recovered_after < 15, recovered_after


async def test_the_call_a_sigkilled_worker_made_stays_in_the_attempts_marked_lost(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    fake_upstream.fail_next(Fault.hang(60))  # held until the worker holding it is gone
    async with serving(rig_settings) as api:
        doomed = await start_worker(workers, rig_settings, tmp_path / "doomed.log")
        [job_id] = await submit_many(api, 1)
        await fake_upstream.wait_for_requests(1, timeout_s=15)
        _, during = await api.get(f"/v1/jobs/{job_id}")
        doomed.kill()
        await start_worker(workers, rig_settings, tmp_path / "rescuer.log")
        job = await api.wait(job_id, timeout=30)
    assert job["status"] == "succeeded", job
    assert len(fake_upstream.requests) == 2
    # Both calls, in order: the killed worker's, then the one that took the job over.
    assert [(a["status"], a.get("outcome")) for a in job["attempts"]] == [
        (None, "lost"),
        (200, "succeeded"),
    ], job["attempts"]
    lost, answered = job["attempts"]
    assert (lost["run"], lost["attempt"], lost["duration_ms"]) == (1, 1, None)
    assert (answered["run"], answered["attempt"]) == (1, 2)
    assert lost["started_at"] <= answered["started_at"]
    # While the call was held, the job already showed it.
    assert [(a["status"], a.get("outcome")) for a in during["attempts"]] == [(None, "in_flight")]


# --- 2. SIGTERM drains -----------------------------------------------------------------


async def test_sigterm_lets_a_running_job_finish_and_takes_no_new_ones(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    fake_upstream.latency_s = 1
    log_path = tmp_path / "draining.log"
    async with serving(rig_settings) as api:
        draining = await start_worker(
            workers, rig_settings.model_copy(update={"worker_drain_s": 10.0}), log_path
        )
        [running] = await submit_many(api, 1)
        await fake_upstream.wait_for_requests(1, timeout_s=15)
        draining.send(signal.SIGTERM)
        signalled_at = time.monotonic()
        await until(lambda: any("draining" in m for m in log_messages(log_path)), "drain start")
        [late] = await submit_many(api, 1)
        exit_code = await until_exited(draining, timeout_s=15)
        exited_after = time.monotonic() - signalled_at
        _, finished = await api.get(f"/v1/jobs/{running}")
        _, waiting = await api.get(f"/v1/jobs/{late}")
    print(f"\nSIGTERM, drain 10 s: the 1 s job finished there; worker exited {exited_after:.1f} s")
    assert finished["status"] == "succeeded", finished
    assert waiting["status"] == "queued", waiting  # a draining worker takes nothing new
    assert len(fake_upstream.requests) == 1  # finished where it ran: no second call
    assert exit_code == 0
    assert exited_after < 10


async def test_sigterm_hands_a_job_outliving_the_drain_back_at_once(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    fake_upstream.fail_next(Fault.hang(60))  # the first call takes 60 s; later ones are quick
    async with serving(rig_settings) as api:
        first = await start_worker(workers, rig_settings, tmp_path / "first.log")
        [job_id] = await submit_many(api, 1)
        await fake_upstream.wait_for_requests(1, timeout_s=15)
        await start_worker(workers, rig_settings, tmp_path / "second.log")
        first.send(signal.SIGTERM)  # worker_drain_s is 1 s
        signalled_at = time.monotonic()
        await fake_upstream.wait_for_requests(2, timeout_s=rig_settings.job_lease_s)
        handed_over_after = fake_upstream.calls_started[1] - signalled_at
        job = await api.wait(job_id, timeout=30)
        exit_code = await until_exited(first, timeout_s=10)
    print(
        f"\nSIGTERM, drain 1 s: the 60 s job was running on the second worker "
        f"{handed_over_after:.1f} s later (lease {rig_settings.job_lease_s:g} s)"
    )
    assert job["status"] == "succeeded", job
    assert len(fake_upstream.requests) == 2
    assert exit_code == 0
    assert handed_over_after < 3.5, handed_over_after


# --- 3. Redis restart with append-only persistence ------------------------------------


async def probe_outage(api: RunningService, job_id: str, rounds: int = 5) -> list[int]:
    """Submit and read during an outage; every status seen (each must carry Retry-After)."""
    statuses = []
    for _ in range(rounds):
        status, _, response = await api.submit(model=MODEL)
        statuses.append(status)
        assert response.headers.get("Retry-After"), (status, response.headers)
        async with api.client.get(api.url(f"/v1/jobs/{job_id}"), headers=api.auth()) as read:
            statuses.append(read.status)
            assert read.headers.get("Retry-After"), (read.status, read.headers)
        await asyncio.sleep(0.3)
    return statuses


async def test_a_redis_restart_loses_nothing_and_the_api_recovers_by_itself(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    (tmp_path / "redis").mkdir()
    redis = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis")
    redis.start()
    providers = write_providers(tmp_path / "capped.toml", fake_upstream.base_url, 4)
    tuned = rig_settings.model_copy(update={"redis_url": redis.url, "providers_file": providers})
    fake_upstream.latency_s = 1
    try:
        async with serving(tuned) as api:
            await start_worker(workers, tuned, tmp_path / "worker.log")
            job_ids = await submit_many(api, 20)
            await fake_upstream.wait_for_requests(6, timeout_s=30)
            redis.stop()
            down_at = time.monotonic()
            statuses = await probe_outage(api, job_ids[0])
            calls_before = len(fake_upstream.requests)
            redis.start()
            back_at = time.monotonic()
            jobs = await wait_all(api, job_ids, timeout=60)
            all_done_after = time.monotonic() - back_at
            [fresh] = await submit_many(api, 1)  # the same API process accepts again
            jobs.append(await api.wait(fresh, timeout=30))
    finally:
        redis.stop()
    print(
        f"\nRedis down {back_at - down_at:.1f} s (after {calls_before} calls): API answered "
        f"{sorted(set(statuses))} x{len(statuses)}; 20/20 succeeded {all_done_after:.1f} s "
        f"after it returned, jobs lost 0; {len(fake_upstream.requests)} upstream calls"
    )
    assert set(statuses) == {503}, statuses
    assert [job["status"] for job in jobs] == ["succeeded"] * 21
    assert len(fake_upstream.requests) == 21  # a call that ended during the outage counts


# --- 4. S3 outage ----------------------------------------------------------------------


async def test_an_s3_outage_mid_run_costs_no_extra_upstream_calls(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    bucket: Bucket,
    tmp_path: Path,
) -> None:
    assert rig_settings.s3_endpoint_url is not None
    target = urlsplit(rig_settings.s3_endpoint_url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.start()
    tuned = rig_settings.model_copy(update={"s3_endpoint_url": proxy.url})
    fake_upstream.latency_s = 2
    try:
        async with serving(tuned) as api:
            await start_worker(workers, tuned, tmp_path / "worker.log")
            job_ids = await submit_many(api, 10)
            await fake_upstream.wait_for_requests(10, timeout_s=30)  # inputs read: all calling
            await proxy.stop()
            down_at = time.monotonic()
            during, _, _ = await api.submit(model=MODEL)
            await asyncio.sleep(10 - (time.monotonic() - down_at))
            waiting = [(await api.get(f"/v1/jobs/{job_id}"))[1]["status"] for job_id in job_ids]
            await proxy.start()
            back_at = time.monotonic()
            jobs = await wait_all(api, job_ids, timeout=60)
            done_after = time.monotonic() - back_at
    finally:
        await proxy.stop()
    print(
        f"\nS3 down {back_at - down_at:.1f} s mid-run: submit answered {during}; 10/10 "
        f"succeeded {done_after:.1f} s after it returned with "
        f"{len(fake_upstream.requests)} upstream calls (10 jobs)"
    )
    assert during == 503
    assert waiting == ["running"] * 10  # nothing could finish while S3 was away
    assert [job["status"] for job in jobs] == ["succeeded"] * 10
    assert len(fake_upstream.requests) == 10
    for job in jobs:
        await bucket.assert_one_set_of_outputs(job)


# --- 5. A stale attempt -----------------------------------------------------------------


async def test_a_stale_attempt_resumed_after_a_take_over_changes_nothing(
    rig_settings: Settings,
    fake_upstream: FakeUpstream,
    workers: list[WorkerProcess],
    bucket: Bucket,
    tmp_path: Path,
) -> None:
    fake_upstream.fail_next(Fault.hang(15))  # the stalled worker's call outlives its stop
    stalled_log = tmp_path / "stalled.log"
    async with serving(rig_settings) as api:
        stalled = await start_worker(workers, rig_settings, stalled_log)
        [job_id] = await submit_many(api, 1)
        await fake_upstream.wait_for_requests(1, timeout_s=15)
        stalled.send(signal.SIGSTOP)
        stopped_at = time.monotonic()
        await start_worker(workers, rig_settings, tmp_path / "rescuer.log")
        committed = await api.wait(job_id, timeout=30)
        taken_over_after = fake_upstream.calls_started[1] - stopped_at
        stalled.send(signal.SIGCONT)
        await until(
            lambda: any("fenced off" in m for m in log_messages(stalled_log)),
            "the stale attempt's end",
            timeout_s=30,
        )
        _, after = await api.get(f"/v1/jobs/{job_id}")
        record, history = await stored_record(rig_settings, job_id)
    print(
        f"\nstale attempt: taken over {taken_over_after:.1f} s after SIGSTOP; "
        f"resumed, its call ended {fake_upstream.requests[0].status} and was fenced off"
    )
    assert committed["status"] == after["status"] == "succeeded"
    assert bucket.result_keys(after) == bucket.result_keys(committed)
    assert (after["finished_at"], after["attempts"]) == (
        committed["finished_at"],
        committed["attempts"],
    )
    assert fake_upstream.requests[0].status == 200  # the stale call did finish
    await bucket.assert_one_set_of_outputs(after)
    assert {key.split("/")[2] for key in bucket.result_keys(after)} == {"a2"}
    assert record == 2 and history == ["queued", "running", "running", "succeeded"]


async def stored_record(settings: Settings, job_id: str) -> tuple[int, list[str]]:
    """The job record's attempt number and the statuses of its transition log."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        store = JobStore(
            redis,
            Keys(settings.key_prefix),
            BatchWindow(redis, settings.queue_name),
            retention_s=settings.retention_s,
        )
        job = await store.get(job_id)
        assert job is not None
        log = await store.log_since(job_id, None)
    finally:
        await redis.aclose()
    return job.attempt, [fields["status"] for _, fields in log]


# --- 6. Retention ------------------------------------------------------------------------


async def test_expired_jobs_leave_no_objects_behind(
    settings: Settings, providers: ProvidersConfig, bucket: Bucket
) -> None:
    short = settings.model_copy(update={"retention_s": 2, "janitor_interval_s": 0.5})
    running = RunningService(short, providers)  # API and worker in this process
    await running.start()
    try:
        status, job, _ = await running.submit()
        assert status == 202, job
        job_id = job["id"]
        assert (await running.wait(job_id))["status"] == "succeeded"
        finished_at = time.monotonic()
        areas = (f"inputs/{job_id}/", f"outputs/{job_id}/")
        assert all([await bucket.keys(area) for area in areas])
        deadline = finished_at + 10
        while time.monotonic() < deadline:
            gone = (await running.get(f"/v1/jobs/{job_id}"))[0] == 404
            if gone and not any([await bucket.keys(area) for area in areas]):
                break
            await asyncio.sleep(0.2)
        cleared_after = time.monotonic() - finished_at
    finally:
        await running.stop()
    print(f"\nretention 2 s: record and images gone {cleared_after:.1f} s after success")
    assert cleared_after < 10, "the job or its images outlived retention"
