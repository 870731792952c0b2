"""Everything a worker process opens is closed: after a normal stop, and after a start-up
that fails half-way (the second S3 client the janitor used to get was never closed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.blobs import ObjectStore
from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from worker.process.lanes import LaneWorkers
from worker.process.metrics_server import MetricsServer


@pytest.fixture
def object_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[int], list[int]]]:
    """The ids of every real ObjectStore built, and of every one closed."""
    opened: list[int] = []
    closed: list[int] = []
    real_init, real_close = ObjectStore.__init__, ObjectStore.close

    def init(self: ObjectStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        opened.append(id(self))

    def close(self: ObjectStore) -> None:
        closed.append(id(self))
        real_close(self)

    monkeypatch.setattr(ObjectStore, "__init__", init)
    monkeypatch.setattr(ObjectStore, "close", close)
    yield opened, closed


async def test_a_worker_opens_one_object_store_and_closes_it(
    settings: Settings, providers: ProvidersConfig, object_stores: tuple[list[int], list[int]]
) -> None:
    opened, closed = object_stores
    workers = LaneWorkers(settings, providers)
    await workers.start()
    assert len(opened) == 1  # the tasks and the janitor share it
    await workers.stop()
    assert sorted(closed) == sorted(opened)


async def test_a_failed_start_up_closes_what_it_had_opened(
    settings: Settings,
    providers: ProvidersConfig,
    object_stores: tuple[list[int], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened, closed = object_stores

    async def port_taken(self: MetricsServer) -> None:
        raise OSError("address already in use")

    # The metrics port is the last thing a worker opens: everything else is open by then.
    monkeypatch.setattr(MetricsServer, "start", port_taken)
    workers = LaneWorkers(settings, providers)
    with pytest.raises(OSError, match="already in use"):
        await workers.start()
    assert opened and sorted(closed) == sorted(opened)
