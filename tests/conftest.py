"""Shared fixtures: a real Redis, an S3 server over HTTP, the fake upstream, the service.

Redis is the one at 127.0.0.1:6379 when it answers, otherwise an embedded one.
Every test gets its own key prefix, queue and bucket, so tests never see each
other's data and nothing needs flushing.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from app.blobs import ObjectStore
from app.cli.embedded import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, EmbeddedRedis, EmbeddedS3
from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from app.settings import Settings
from tests.support.fakes.upstream import FakeUpstream
from tests.support.service import RunningService

API_KEYS = ("key-a", "key-b")


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis on 6379, or an embedded one when it is not there."""
    if _redis_answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    server = EmbeddedRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, over HTTP, for the whole session."""
    server = EmbeddedS3()
    server.start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture
async def settings(redis_url: str, s3_endpoint: str) -> AsyncIterator[Settings]:
    """Settings isolated to this test (own key prefix, queue and bucket)."""
    tag = uuid.uuid4().hex[:12]
    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"editq-test-{tag}",
        queue_name=f"editq-test-{tag}:queue",
        s3_endpoint_url=s3_endpoint,
        s3_bucket=f"editq-test-{tag}",
        s3_access_key_id=SecretStr(DEV_S3_ACCESS_KEY),
        s3_secret_access_key=SecretStr(DEV_S3_SECRET_KEY),
        api_keys=tuple(SecretStr(key) for key in API_KEYS),
        retention_s=3600,
        worker_metrics_port=0,  # tests run side by side: no worker may claim a fixed port
    )
    storage = ObjectStore(settings)
    await storage.ensure_bucket()
    storage.close()
    yield settings
    redis = Redis.from_url(redis_url)
    keys = [key async for key in redis.scan_iter(match=f"editq-test-{tag}*", count=1000)]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """The fake OpenAI-compatible upstream, on a real socket."""
    async with FakeUpstream() as upstream:
        yield upstream


def make_providers(fake_upstream: FakeUpstream) -> ProvidersConfig:
    """The local editor, the fake upstream (twice) and a model that cannot edit."""
    return ProvidersConfig(
        upstreams=(
            UpstreamConfig(name="local", kind="local"),
            UpstreamConfig(name="fake", kind="openai", base_url=fake_upstream.base_url),
        ),
        models=(
            ModelConfig(id="local/editor", upstream="local", upstream_model="pillow"),
            ModelConfig(id="fake/gpt-image-1", upstream="fake", upstream_model="gpt-image-1"),
            ModelConfig(id="fake/flux-kontext", upstream="fake", upstream_model="flux-kontext"),
            ModelConfig(
                id="text/chat-only",
                upstream="fake",
                upstream_model="chat",
                capabilities=("chat",),
            ),
        ),
    )


@pytest.fixture
def providers(fake_upstream: FakeUpstream) -> ProvidersConfig:
    """Providers pointing at this test's fake upstream."""
    return make_providers(fake_upstream)


@pytest.fixture
async def service(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API and one worker."""
    async with RunningService(settings, providers) as running:
        yield running


@pytest.fixture
async def api_only(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    """The API with no worker running (jobs stay queued until ``start_worker``)."""
    async with RunningService(settings, providers, worker=False) as running:
        yield running
