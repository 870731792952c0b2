"""The records of uploaded files in Redis (keys in ``app.store.keys``).

A record is written and removed in one MULTI with the tenant's index of files, the
expiry index and the set of the tenant's files sharing its bytes, so the set always
says whether the stored object is still used: ``remove`` answers whether it became
unused (the caller then deletes the object). An expired file reads as absent at
once; its record and object go when the janitor (``expired``) finds it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from app.core.files import FileRecord, is_file_id
from app.store.keys import Keys

SCAN_CHUNK = 100
MAX_SCANNED = 2000  # ids examined per page, so a filter matching nothing ends anyway


@dataclass(frozen=True)
class FilePage:
    """One page of a tenant's files; ``last_id`` is where the next page starts."""

    files: list[FileRecord]
    has_more: bool
    last_id: str | None


class FileStore:
    """Reads and writes file records; every read is scoped to one tenant."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def create(self, record: FileRecord) -> None:
        """Record an upload whose bytes are stored already."""
        keys = self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.file(record.id), mapping=_row(record))
            pipe.zadd(keys.tenant_files(record.tenant), {record.id: 0})
            pipe.sadd(keys.file_blob_users(record.tenant, record.sha256), record.id)
            if record.expires_at is not None:
                pipe.zadd(keys.files_expiry, {record.id: record.expires_at * 1000})
            await pipe.execute()

    async def get(self, file_id: str, tenant: str, *, now: float) -> FileRecord | None:
        """The tenant's file ``file_id``; None when there is none, it is another
        tenant's or it has expired at ``now`` (unix seconds)."""
        record = await self._read(file_id)
        if record is None or record.tenant != tenant or record.expired(now):
            return None
        return record

    async def page(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None,
        newest_first: bool,
        purpose: str | None,
        now: float,
    ) -> FilePage:
        """Up to ``limit`` of the tenant's live files after the id ``after``, in creation
        order or (``newest_first``) its reverse, only those of ``purpose`` if given."""
        key = self._keys.tenant_files(tenant)
        found: list[FileRecord] = []
        bound = f"({after}" if after else None
        scanned = 0
        last_scanned: str | None = None
        while scanned < MAX_SCANNED:
            if newest_first:
                ids = await self._redis.zrevrangebylex(
                    key, bound or "+", "-", start=0, num=SCAN_CHUNK
                )
            else:
                ids = await self._redis.zrangebylex(key, bound or "-", "+", start=0, num=SCAN_CHUNK)
            if not ids:
                return FilePage(found, has_more=False, last_id=None)
            for file_id in ids:
                record = await self._read(file_id)
                if record is None:
                    await self._redis.zrem(key, file_id)  # removed meanwhile
                elif not record.expired(now) and purpose in (None, record.purpose):
                    if len(found) == limit:
                        return FilePage(found, has_more=True, last_id=found[-1].id)
                    found.append(record)
                scanned += 1
                last_scanned = file_id
            bound = f"({ids[-1]}"
        return FilePage(found, has_more=True, last_id=last_scanned)

    async def remove(self, record: FileRecord) -> bool:
        """Delete the record; whether no other file of its tenant shares its bytes now
        (the stored object is then unused)."""
        keys = self._keys
        users = keys.file_blob_users(record.tenant, record.sha256)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file(record.id))
            pipe.zrem(keys.tenant_files(record.tenant), record.id)
            pipe.zrem(keys.files_expiry, record.id)
            pipe.srem(users, record.id)
            pipe.scard(users)
            results = await pipe.execute()
        return int(results[-1]) == 0

    async def expired(self, *, now: float, count: int) -> list[FileRecord]:
        """Up to ``count`` files whose expiry passed at ``now``; ids whose record is
        already gone leave the expiry index."""
        ids = await self._redis.zrangebyscore(
            self._keys.files_expiry, "-inf", int(now * 1000), start=0, num=count
        )
        records = []
        for file_id in ids:
            record = await self._read(file_id)
            if record is None:
                await self._redis.zrem(self._keys.files_expiry, file_id)
            else:
                records.append(record)
        return records

    async def _read(self, file_id: str) -> FileRecord | None:
        if not is_file_id(file_id):
            return None
        row = await cast(Awaitable[dict[str, str]], self._redis.hgetall(self._keys.file(file_id)))
        return _record(file_id, row) if row else None


def _row(record: FileRecord) -> dict[str, str | int]:
    return {
        "tenant": record.tenant,
        "bytes": record.bytes,
        "created_at": record.created_at,
        "expires_at": "" if record.expires_at is None else record.expires_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "sha256": record.sha256,
        "content_type": record.content_type,
    }


def _record(file_id: str, row: dict[str, str]) -> FileRecord:
    return FileRecord(
        id=file_id,
        tenant=row["tenant"],
        bytes=int(row["bytes"]),
        created_at=int(row["created_at"]),
        expires_at=int(row["expires_at"]) if row["expires_at"] else None,
        filename=row["filename"],
        purpose=row["purpose"],
        sha256=row["sha256"],
        content_type=row["content_type"],
    )
