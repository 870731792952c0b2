"""Object storage: the S3-compatible bucket that holds input and output images.

boto3 is synchronous, so every call that does I/O runs in a thread pool; presigning
is pure computation (HMAC) and runs inline. Failures of the store surface as
``ServiceUnavailable`` so the API answers 503 and a worker can retry the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.errors import ServiceUnavailable
from app.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef


def input_key(job_id: str, index: int, extension: str) -> str:
    """Where a job's input image ``index`` is stored."""
    return f"inputs/{job_id}/image-{index}.{extension}"


def mask_key(job_id: str, extension: str) -> str:
    """Where a job's mask is stored."""
    return f"inputs/{job_id}/mask.{extension}"


def file_blob_key(tenant: str, sha256: str) -> str:
    """Where the bytes of a tenant's uploaded files with this SHA-256 are stored: once
    per tenant and content, however many uploads carried them."""
    return f"files/{tenant}/{sha256}"


def output_key(job_id: str, index: int, extension: str, attempt: int = 0) -> str:
    """Where output ``index`` of a job's ``attempt`` goes: each attempt writes its own
    keys, so a stale attempt never overwrites the outputs another one committed."""
    return f"outputs/{job_id}/a{attempt}/{index}.{extension}"


def partial_key(job_id: str, index: int, extension: str, attempt: int = 0) -> str:
    """Where partial image ``index`` of a job's ``attempt`` goes (a preview streamed by
    the upstream before the output)."""
    return f"partials/{job_id}/a{attempt}/{index}.{extension}"


class ObjectStore:
    """An S3 bucket reached through boto3, with async methods that never block the loop."""

    def __init__(
        self, settings: Settings, *, on_error: Callable[[str], None] | None = None
    ) -> None:
        self._on_error = on_error  # told the failed operation's name (metrics)
        self._bucket = settings.s3_bucket
        self._expiry_s = settings.url_expiry_s
        self._executor = ThreadPoolExecutor(
            max_workers=settings.s3_max_connections, thread_name_prefix="s3"
        )
        self._client = self._make_client(settings, settings.s3_endpoint_url)
        self._presigner = (
            self._make_client(settings, settings.presign_endpoint_url)
            if settings.presign_endpoint_url != settings.s3_endpoint_url
            else self._client
        )

    @staticmethod
    def _make_client(settings: Settings, endpoint_url: str | None) -> S3Client:
        config = Config(
            signature_version="s3v4",
            max_pool_connections=settings.s3_max_connections,
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        key_id = settings.s3_access_key_id
        secret = settings.s3_secret_access_key
        client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )
        return client

    async def _run(self, func: Any, /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(func, **kwargs))
        except (BotoCoreError, ClientError) as exc:
            if self._on_error is not None:
                self._on_error(getattr(func, "__name__", "unknown").lstrip("_"))
            raise ServiceUnavailable(f"object storage failed: {exc}", retry_after=5) from exc

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (overwriting)."""
        await self._run(
            self._client.put_object,
            Bucket=self._bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
        )

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``."""
        response = await self._run(self._client.get_object, Bucket=self._bucket, Key=key)
        body = response["Body"]
        try:
            data: bytes = await asyncio.get_running_loop().run_in_executor(
                self._executor, body.read
            )
        finally:
            body.close()
        return data

    async def copy(self, source_key: str, target_key: str) -> None:
        """Copy an object within the bucket, server-side (no bytes pass through here)."""
        await self._run(
            self._client.copy_object,
            Bucket=self._bucket,
            Key=target_key,
            CopySource={"Bucket": self._bucket, "Key": source_key},
        )

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``."""
        return list(await self._run(self._list_sync, prefix=prefix))

    def _list_sync(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete these objects (in requests of at most 1000 keys)."""
        for start in range(0, len(keys), 1000):
            objects: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[start : start + 1000]
            ]
            await self._run(
                self._client.delete_objects, Bucket=self._bucket, Delete={"Objects": objects}
            )

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; returns how many."""
        return int(await self._run(self._delete_prefix_sync, prefix=prefix))

    def _delete_prefix_sync(self, prefix: str) -> int:
        deleted = 0
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"]} for item in page.get("Contents", [])
            ]
            if keys:
                self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": keys})
                deleted += len(keys)
        return deleted

    def presigned_url(self, key: str) -> str:
        """A time-limited GET URL for ``key`` (no I/O: a signature computed locally)."""
        url: str = self._presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self._bucket, "Key": key},
            ExpiresIn=self._expiry_s,
        )
        return url

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (development and tests)."""
        try:
            await self._run(self._client.head_bucket, Bucket=self._bucket)
        except ServiceUnavailable:
            await self._run(self._client.create_bucket, Bucket=self._bucket)

    async def ping(self) -> None:
        """Raise ServiceUnavailable unless the bucket answers."""
        await self._run(self._client.head_bucket, Bucket=self._bucket)

    def close(self) -> None:
        """Release the thread pool and connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        if self._presigner is not self._client:
            self._presigner.close()
