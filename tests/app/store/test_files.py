"""File records in real Redis: tenant-scoped reads, expiry, and the set of a tenant's
files sharing one stored object, which says when the object became unused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.core.files import FileRecord, new_file_id
from app.settings import Settings
from app.store.files import FileStore
from app.store.keys import Keys

SHA = "a" * 64


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[FileStore]:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    yield FileStore(redis, Keys(settings.key_prefix))
    await redis.aclose()


def record(tenant: str = "t1", sha256: str = SHA, expires_at: int | None = None) -> FileRecord:
    return FileRecord(
        id=new_file_id(),
        tenant=tenant,
        bytes=3,
        created_at=1000,
        expires_at=expires_at,
        filename="a.png",
        purpose="vision",
        sha256=sha256,
        content_type="image/png",
    )


async def test_a_file_reads_only_for_its_tenant_and_until_it_expires(store: FileStore) -> None:
    mine = record(expires_at=2000)
    await store.create(mine)
    assert await store.get(mine.id, "t1", now=1999) == mine
    assert await store.get(mine.id, "t2", now=1999) is None
    assert await store.get(mine.id, "t1", now=2000) is None
    assert await store.get("file-not-an-id", "t1", now=0) is None


async def test_the_object_is_unused_only_when_its_last_file_goes(store: FileStore) -> None:
    first, second, elsewhere = record(), record(), record(tenant="t2")
    for each in (first, second, elsewhere):
        await store.create(each)
    assert await store.remove(first) is False  # the second still uses the bytes
    assert await store.remove(second) is True  # t2's file has its own object
    assert await store.get(second.id, "t1", now=0) is None
    assert await store.remove(elsewhere) is True


async def test_expired_lists_due_files_once_they_are_due(store: FileStore) -> None:
    due, later, never = record(expires_at=1500), record(expires_at=5000), record()
    for each in (due, later, never):
        await store.create(each)
    assert await store.expired(now=1500, count=10) == [due]
    await store.remove(due)
    assert await store.expired(now=1500, count=10) == []
    assert await store.expired(now=5000, count=10) == [later]


async def test_a_page_skips_expired_files_and_other_purposes(store: FileStore) -> None:
    kept, gone = record(), record(expires_at=1500)
    await store.create(kept)
    await store.create(gone)
    page = await store.page("t1", limit=10, after=None, newest_first=True, purpose=None, now=1600)
    assert [f.id for f in page.files] == [kept.id] and not page.has_more
    empty = await store.page("t1", limit=10, after=None, newest_first=True, purpose="batch", now=0)
    assert empty.files == []
