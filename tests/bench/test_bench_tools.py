"""The benchmarks' own tools: figures, the results table, the floor handler, the call
finder, the command counter and ``/proc`` readings (the benchmarks themselves run
with ``make bench``, not here)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from app.blobs import ObjectStore
from app.cli.embedded import EmbeddedRedis, free_port
from app.settings import Settings
from tests.bench.client import CallFinder, edit_body, png_of_bytes
from tests.bench.cost import CommandCounter
from tests.bench.figures import Row, ms, percentile
from tests.bench.floor import floor_app
from tests.bench.probe import Prober
from tests.bench.proc import RssSampler, cpu_seconds, peak_rss_bytes, rss_bytes
from tests.bench.results import commit, merge, render
from tests.support.fakes.upstream import FakeUpstream
from tests.support.images import png


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([7.0], 1) == 7.0
    assert ms([0.010, 0.020], 50) == 10.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_the_table_shows_figure_floor_ratio_and_verdict() -> None:
    rows = [
        Row("accept", "jobs/s", 90.0, "jobs/s", ">= 0.8x floor", True, floor=100.0),
        Row("pickup", "p50", 30.0, "ms", "<= 20 ms", False, note="measured idle"),
        Row("cost", "lua", 12.0, "cmds", "—", None),
    ]
    document = render(rows, elapsed_s=12, notes=["extra"])
    assert "| accept | jobs/s | 90.0 jobs/s | 100 | 0.90x | >= 0.8x floor | yes |" in document
    assert "| pickup | p50 | 30.0 ms | — | — | <= 20 ms | **no** |" in document
    assert "| cost | lua | 12.0 cmds | — | — | — | — |" in document
    assert "- **pickup, p50**: measured idle" in document
    assert document.rstrip().endswith("- extra")
    assert rows[0].ratio == 0.9 and rows[1].ratio is None


def test_a_benchmark_run_alone_replaces_only_its_rows_and_notes() -> None:
    full = render(
        [
            Row("accept", "jobs/s", 90.0, "jobs/s", ">= 0.8x floor", True, note="32 clients"),
            Row("abuse", "peak RSS", 700.0, "MB", "< 600 MB", False),
            Row("cost", "cmds", 12.0, "cmds", "—", None),
        ],
        elapsed_s=300,
        notes=["abuse: the old run", "cost: counted"],
    )
    again = [Row("abuse", "peak RSS", 500.0, "MB", "< 600 MB", True)]
    merged = merge(full, again, benchmarks={"abuse"}, elapsed_s=60, notes=["abuse: new"])
    table = [line for line in merged.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[2:]] == ["| accept", "| abuse", "| cost"]
    assert "| abuse | peak RSS | 500 MB |" in merged and "700" not in merged
    assert "- **accept, jobs/s**: 32 clients" in merged and "- cost: counted" in merged
    assert "- abuse: new" in merged and "the old run" not in merged
    assert "`make bench` took 300 s" in merged
    twice = merge(merged, again, benchmarks={"abuse"}, elapsed_s=61)
    assert twice.count("- re-run alone: abuse (") == 1 and "61 s" in twice
    assert "- abuse: new" not in twice
    added = merge(full, [Row("new", "x", 1.0, "s", "—", None)], benchmarks={"new"}, elapsed_s=1)
    rows = [line for line in added.splitlines() if line.startswith("| ")]
    assert rows[-1] == "| new | x | 1 s | — | — | — | — |"


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    yield tmp_path


def test_the_commit_is_read_from_git_files(repository: Path) -> None:
    git = repository / ".git"
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert commit(repository) == "unknown"
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert commit(repository) == "a" * 12
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert commit(repository) == "b" * 12
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert commit(repository) == "c" * 12


def test_the_commit_of_a_worktree_is_read_through_its_git_file(tmp_path: Path) -> None:
    main, tree = tmp_path / "main", tmp_path / "tree"
    private = main / ".git" / "worktrees" / "tree"
    (main / ".git" / "refs" / "heads").mkdir(parents=True)
    private.mkdir(parents=True)
    tree.mkdir()
    (tree / ".git").write_text(f"gitdir: {private}\n")
    (private / "commondir").write_text("../..\n")
    (private / "HEAD").write_text("ref: refs/heads/topic\n")
    (main / ".git" / "packed-refs").write_text("d" * 40 + " refs/heads/topic\n")
    assert commit(tree) == "d" * 12
    (main / ".git" / "refs" / "heads" / "topic").write_text("e" * 40 + "\n")
    assert commit(tree) == "e" * 12


def test_proc_readings_of_this_process() -> None:
    before = cpu_seconds(os.getpid())
    sum(range(2_000_000))
    assert cpu_seconds(os.getpid()) >= before
    assert 10 * 1024 * 1024 < rss_bytes(os.getpid()) <= peak_rss_bytes(os.getpid())


async def test_the_sampler_counts_a_peak_between_two_samples() -> None:
    sampler = RssSampler(os.getpid(), interval_s=60)
    before = rss_bytes(os.getpid())
    spike = bytearray(200 * 1024 * 1024)
    spike[::4096] = b"x" * len(spike[::4096])  # touch every page: resident
    del spike
    assert await sampler.stop() >= before + 150 * 1024 * 1024  # freed before any sample


async def test_the_probe_counts_probes_that_got_no_answer() -> None:
    prober = Prober(f"http://127.0.0.1:{free_port()}/healthz", interval_s=0.02)
    await prober.start()
    await asyncio.sleep(2)  # the child imports aiohttp first
    probes = await prober.stop()
    assert probes and prober.failed == len(probes)


def test_png_of_bytes_is_about_that_big() -> None:
    assert 60_000 < len(png_of_bytes(64 * 1024)) < 72_000


async def test_the_floor_stores_the_image_and_enqueues_one_job(
    settings: Settings, redis_url: str
) -> None:
    image = png(64, 48)
    queue = f"{settings.queue_name}:floor"
    app = floor_app(redis_url, str(settings.s3_endpoint_url), settings.s3_bucket, queue)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    storage, redis = ObjectStore(settings), Redis.from_url(redis_url)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/v1/jobs", data=edit_body(image, "x")) as answer,
        ):
            assert answer.status == 202
            job_id = (await answer.json())["id"]
        assert await storage.get(f"floor/{job_id}.png") == image
        assert await redis.zcard(queue) == 1
    finally:
        await redis.delete(queue)
        await redis.aclose()
        storage.close()
        await runner.cleanup()


async def test_the_call_finder_finds_a_call_by_prompt(fake_upstream: FakeUpstream) -> None:
    finder = CallFinder(fake_upstream)
    async with aiohttp.ClientSession() as session:
        for prompt in ("first", "second"):
            async with session.post(
                f"{fake_upstream.base_url}/images/edits",
                data=edit_body(png(), prompt),
                headers={"Content-Type": "application/json"},
            ) as response:
                assert response.status == 200
    second = await finder.wait_for("second", timeout_s=5)
    first = await finder.wait_for("first", timeout_s=5)
    assert first.received_at < second.received_at
    assert second.answered_at is not None and second.answered_at >= second.received_at
    with pytest.raises(TimeoutError):
        await finder.wait_for("third", timeout_s=0.05)


async def test_the_counter_tells_sent_commands_from_scripted_ones() -> None:
    server = EmbeddedRedis()
    server.start()
    redis = Redis.from_url(server.url)
    try:
        counter = CommandCounter(server.url)
        await counter.start()
        for index in range(3):
            await redis.set(f"k{index}", index)
        await redis.eval("redis.call('SET', KEYS[1], 1); return redis.call('GET', KEYS[1])", 1, "s")
        await asyncio.sleep(0.1)
        counts = await counter.stop()
    finally:
        await redis.aclose()
        server.stop()
    assert counts[("client", "SET")] == 3
    assert counts[("client", "EVAL")] == 1
    assert (counts[("lua", "SET")], counts[("lua", "GET")]) == (1, 1)
