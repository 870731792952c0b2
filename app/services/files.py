"""What the API does with uploaded files: store, read, list, delete, expire, and load
one named by ``file_id`` in an edit request.

The bytes of a tenant's files are stored once per content (``app.blobs.file_blob_key``,
by the SHA-256 the image check computed): two uploads of the same image are two
records over one object, which goes when the last record does. A job that names a
file gets its own copy of the bytes at submit (as any input), so deleting or
expiring the file later never touches a queued or running job.
"""

from __future__ import annotations

import logging
import time

from app.blobs import ObjectStore, file_blob_key
from app.core.files import FileRecord, new_file_id
from app.core.images import CheckedImage
from app.errors import InvalidRequest, NotFound
from app.store.files import FilePage, FileStore

log = logging.getLogger(__name__)
SWEEP_BATCH = 200


class FileService:
    """The file operations behind the HTTP handlers, scoped to one tenant per call."""

    def __init__(self, *, store: FileStore, storage: ObjectStore) -> None:
        self._store = store
        self._storage = storage

    async def create(
        self,
        tenant: str,
        image: CheckedImage,
        *,
        filename: str,
        purpose: str,
        created_at: int,
        expires_at: int | None,
    ) -> FileRecord:
        """Store a checked image's bytes (once per content) and record the upload."""
        record = FileRecord(
            id=new_file_id(),
            tenant=tenant,
            bytes=len(image.data),
            created_at=created_at,
            expires_at=expires_at,
            filename=filename,
            purpose=purpose,
            sha256=image.sha256,
            content_type=image.content_type,
        )
        # Always written (the same key for the same bytes: still one object), so an
        # upload never relies on an object a concurrent delete is removing.
        await self._storage.put(file_blob_key(tenant, image.sha256), image.data, image.content_type)
        await self._store.create(record)
        return record

    async def get(self, file_id: str, tenant: str) -> FileRecord:
        """The tenant's live file; NotFound otherwise (another key's files included)."""
        record = await self._store.get(file_id, tenant, now=time.time())
        if record is None:
            raise NotFound(f"no file {file_id}", param="file_id")
        return record

    async def content(self, file_id: str, tenant: str) -> tuple[FileRecord, bytes]:
        """The tenant's live file and its bytes; NotFound otherwise."""
        record = await self.get(file_id, tenant)
        return record, await self._storage.get(file_blob_key(tenant, record.sha256))

    async def page(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None,
        newest_first: bool,
        purpose: str | None,
    ) -> FilePage:
        """One page of the tenant's live files."""
        return await self._store.page(
            tenant,
            limit=limit,
            after=after,
            newest_first=newest_first,
            purpose=purpose,
            now=time.time(),
        )

    async def delete(self, file_id: str, tenant: str) -> FileRecord:
        """Delete the tenant's file (and its object when no other file uses it)."""
        record = await self.get(file_id, tenant)
        await self._forget(record)
        return record

    async def load(self, tenant: str, file_id: object, param: str) -> tuple[bytes, str]:
        """The bytes of the file an edit request names at ``param`` (``images[0].file_id``)
        and the object key holding them; InvalidRequest naming ``param`` when the tenant
        has no such live file."""
        if not isinstance(file_id, str):
            raise InvalidRequest(f"{param} must be a string", param=param)
        record = await self._store.get(file_id, tenant, now=time.time())
        if record is None:
            raise InvalidRequest(f"{param}: no file {file_id}", param=param)
        key = file_blob_key(tenant, record.sha256)
        return await self._storage.get(key), key

    async def sweep_expired(self) -> int:
        """Remove every expired file's record, and its object when no other file of its
        tenant uses it; how many files were removed."""
        swept = 0
        while expired := await self._store.expired(now=time.time(), count=SWEEP_BATCH):
            for record in expired:
                await self._forget(record)
            swept += len(expired)
        if swept:
            log.info("files: removed %d expired files", swept)
        return swept

    async def _forget(self, record: FileRecord) -> None:
        if await self._store.remove(record):
            await self._storage.delete_keys([file_blob_key(record.tenant, record.sha256)])
