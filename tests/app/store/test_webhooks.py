"""A tenant's webhook signing secrets in Redis: created once, rotated atomically, seen
alike by every process (each store here has its own connection, as each API and
worker process does), one tenant's rotation never touching another's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.core.webhooks import derived_secret
from app.settings import Settings
from app.store.keys import Keys
from app.store.webhooks import WebhookStore

ROOT = "whsec_cm9vdC1zZWNyZXQ="
A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
DAY_S = 86400


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two connections, standing for two processes."""
    first = Redis.from_url(settings.redis_url, decode_responses=True)
    second = Redis.from_url(settings.redis_url, decode_responses=True)
    yield first, second
    await first.aclose()
    await second.aclose()


def stores(
    settings: Settings, clients: tuple[Redis, Redis], root: str | None = None
) -> tuple[WebhookStore, WebhookStore]:
    keys = Keys(settings.key_prefix)
    return (
        WebhookStore(clients[0], keys, retention_s=3600, root_secret=root),
        WebhookStore(clients[1], keys, retention_s=3600, root_secret=root),
    )


async def test_a_generated_secret_is_made_once_and_shared(
    settings: Settings, clients: tuple[Redis, Redis]
) -> None:
    api, worker = stores(settings, clients)
    first = await asyncio.gather(*(store.signing_secrets(A) for store in (api, worker) * 4))
    assert len({secrets.current for secrets in first}) == 1
    assert first[0].previous is None and first[0].previous_until is None
    assert (await worker.signing_secrets(B)).current != first[0].current


async def test_a_rotation_keeps_the_old_secret_for_the_overlap_and_spares_others(
    settings: Settings, clients: tuple[Redis, Redis]
) -> None:
    api, worker = stores(settings, clients)
    before, other = await api.signing_secrets(A), await api.signing_secrets(B)
    rotated = await api.rotate_secret(A, keep_previous_s=DAY_S, now=1_000.5)
    assert rotated.current not in (before.current, other.current)
    assert (rotated.previous, rotated.previous_until) == (before.current, 1_000.5 + DAY_S)
    assert await worker.signing_secrets(A) == rotated
    assert await worker.signing_secrets(B) == other
    again = await worker.rotate_secret(A, keep_previous_s=0, now=2_000.0)
    assert (again.previous, again.previous_until) == (rotated.current, 2_000.0)
    assert again.in_use(2_000.0) == (again.current,)
    assert await api.signing_secrets(A) == again


async def test_rotating_before_any_secret_was_handed_out_keeps_none(
    settings: Settings, clients: tuple[Redis, Redis]
) -> None:
    api, worker = stores(settings, clients)
    rotated = await api.rotate_secret(A, keep_previous_s=DAY_S)
    assert rotated.previous is None
    assert await worker.signing_secrets(A) == rotated
    assert rotated.in_use(time.time()) == (rotated.current,)


async def test_concurrent_rotations_each_replace_the_secret_the_last_one_made(
    settings: Settings, clients: tuple[Redis, Redis]
) -> None:
    api, worker = stores(settings, clients)
    original = (await api.signing_secrets(A)).current
    results = await asyncio.gather(
        *(store.rotate_secret(A, keep_previous_s=DAY_S) for store in (api, worker) * 5)
    )
    replaced = {result.previous: result.current for result in results}
    chain = [original]
    while chain[-1] in replaced:
        chain.append(replaced[chain[-1]])
    assert len(chain) == 11  # one unbroken line of ten rotations, none lost
    assert (await worker.signing_secrets(A)).current == chain[-1]


async def test_with_a_root_each_rotation_derives_the_next_generation_and_stores_no_secret(
    settings: Settings, clients: tuple[Redis, Redis]
) -> None:
    api, worker = stores(settings, clients, root=ROOT)
    assert await api.signing_secrets(A) == await worker.signing_secrets(A)
    assert (await api.signing_secrets(A)).current == derived_secret(ROOT, A)
    first = await api.rotate_secret(A, keep_previous_s=60, now=500.0)
    assert (first.current, first.previous, first.previous_until) == (
        derived_secret(ROOT, A, 1),
        derived_secret(ROOT, A, 0),
        560.0,
    )
    second = await worker.rotate_secret(A, keep_previous_s=60, now=510.0)
    assert (second.current, second.previous) == (
        derived_secret(ROOT, A, 2),
        derived_secret(ROOT, A, 1),
    )
    assert await api.signing_secrets(A) == second
    assert await api.signing_secrets(B) == await worker.signing_secrets(B)
    assert (await api.signing_secrets(B)).current == derived_secret(ROOT, B)
    stored = [
        value
        async for key in clients[0].scan_iter(match=f"{settings.key_prefix}:*")
        for value in await _values(clients[0], key)
    ]
    assert not any("whsec_" in value for value in stored)  # Redis holds no secret


async def _values(redis: Redis, key: str) -> list[str]:
    kind = await redis.type(key)
    if kind == "hash":
        return list((await redis.hgetall(key)).values())  # type: ignore[misc]
    if kind == "string":
        return [str(await redis.get(key))]
    return []
