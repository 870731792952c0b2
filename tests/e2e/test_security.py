"""Security properties of the real service: every route needs a key, keys are compared
in constant time and never written anywhere, one key cannot reach another's jobs or
batches, and nothing is ever pickled."""

from __future__ import annotations

import ast
import asyncio
import hmac
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from app.core.providers_config import ProvidersConfig
from app.errors import AuthenticationFailed
from app.http.app import create_app
from app.http.middleware.errors import PUBLIC_PATHS
from app.services.auth import ApiKeys, tenant_of
from app.settings import Settings
from tests.support.images import data_url, png
from tests.support.service import RunningService

PUBLIC = {"/healthz", "/readyz", "/docs", "/openapi.json"}
STATIC_UI = {"/", "/ui", "/ui/{name}"}  # the dashboard's files (and / redirecting to it)
SOURCE = Path(__file__).resolve().parents[2]
READERS: dict[str, tuple[str | int, ...]] = {  # Redis type: method and arguments
    "string": ("get",),
    "hash": ("hgetall",),
    "list": ("lrange", 0, -1),
    "set": ("smembers",),
    "zset": ("zrange", 0, -1),
    "stream": ("xrange", "-", "+"),
}
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"}


def _routes(settings: Settings, providers: ProvidersConfig) -> list[tuple[str, str]]:
    """(method, canonical path) of every route the application serves."""
    router = create_app(settings, providers).router
    return sorted(
        {
            (route.method, route.resource.canonical)
            for route in router.routes()
            if route.resource is not None and route.method != "HEAD"
        }
    )


def _concrete(path: str, **ids: str) -> str:
    return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: ids.get(m[1], "x"), path)


async def _call(
    service: RunningService, method: str, path: str, key: str | None
) -> tuple[int, str]:
    headers = service.auth(key) if key is not None else {}
    async with service.client.request(method, service.url(path), headers=headers) as response:
        text = await asyncio.wait_for(response.text(), 10) if response.status >= 400 else ""
        return response.status, text


def test_the_public_routes_are_exactly_the_documented_ones() -> None:
    assert set(PUBLIC_PATHS) == PUBLIC | STATIC_UI


@pytest.fixture
async def patient_api(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API (no worker) letting one address fail to authenticate once per route and
    more: the limit on failed authentications has tests of its own."""
    lenient = settings.model_copy(update={"auth_failures_per_minute": 10_000})
    async with RunningService(lenient, providers, worker=False) as running:
        yield running


@pytest.mark.parametrize("key", [None, "not-a-key", "key-a-but-longer", ""])
async def test_every_route_but_the_public_ones_needs_a_key(
    patient_api: RunningService, key: str | None
) -> None:
    api_only = patient_api
    routes = _routes(api_only.settings, api_only.providers)
    assert len(routes) >= 20
    refused = []
    for method, path in routes:
        if path in PUBLIC | STATIC_UI:
            continue
        status, body = await _call(api_only, method, _concrete(path), key)
        refused.append((method, path, status))
        assert status == 401, (method, path, body)
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert refused
    for path in PUBLIC:
        status, _ = await _call(api_only, "GET", path, None)
        assert status != 401, path


def test_keys_are_compared_in_constant_time_against_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    keys = ApiKeys(["key-a", "key-b", "key-c"])
    assert keys.authenticate("Bearer key-a") == tenant_of("key-a")
    assert compared == [(b"key-a", b"key-a"), (b"key-a", b"key-b"), (b"key-a", b"key-c")]
    compared.clear()
    with pytest.raises(AuthenticationFailed):
        keys.authenticate("Bearer key-")
    assert len(compared) == 3  # no early exit: a miss costs what a hit costs


@pytest.fixture
def secret_key() -> str:
    return f"sk-editq-{uuid.uuid4().hex}"


@pytest.fixture
async def secret_service(
    settings: Settings, providers: ProvidersConfig, secret_key: str
) -> AsyncIterator[RunningService]:
    """The service (with a worker) whose only key is ``secret_key``."""
    keyed = settings.model_copy(update={"api_keys": (SecretStr(secret_key),)})
    async with RunningService(keyed, providers) as running:
        yield running


async def test_keys_are_never_logged_nor_stored(
    secret_service: RunningService,
    secret_key: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = f"sk-editq-{uuid.uuid4().hex}"
    status, job, _ = await secret_service.submit(key=secret_key, metadata={"k": "v"})
    assert status == 202, job
    assert (await secret_service.wait(job["id"], key=secret_key))["status"] == "succeeded"
    for path in ("/v1/jobs", f"/v1/jobs/{job['id']}/deliveries", "/v1/jobs/job_none"):
        await secret_service.get(path, key=secret_key)
    await secret_service.post(f"/v1/jobs/{job['id']}/cancel", key=secret_key)
    await secret_service.submit(key=secret_key, n="99")
    status, _ = await secret_service.get("/v1/jobs", key=wrong_key)
    assert status == 401

    assert caplog.records
    for record in caplog.records:
        written = f"{record.getMessage()} {record.__dict__}"
        assert secret_key not in written, record
        assert wrong_key not in written, record
    stored = await _everything_stored(redis_url, secret_service.settings.key_prefix, job["id"])
    assert len(stored) > 3
    for key, value in stored.items():
        assert secret_key.encode() not in value, key
        assert wrong_key.encode() not in value, key


async def _everything_stored(redis_url: str, prefix: str, job_id: str) -> dict[bytes, bytes]:
    """Every Redis key of this test (and arq's keys of ``job_id``), each value flattened."""
    redis = Redis.from_url(redis_url)
    try:
        names = [name async for name in redis.scan_iter(match=f"{prefix}*", count=1000)]
        names += [name async for name in redis.scan_iter(match=f"arq:*{job_id}*", count=1000)]
        return {name: await _flattened(redis, name) for name in names}
    finally:
        await redis.aclose()


async def _flattened(redis: Redis, name: bytes) -> bytes:
    kind = (await redis.type(name)).decode()
    method, *args = READERS.get(kind, ("type",))
    read = getattr(redis, str(method))  # the reader for this kind of value
    return repr(await read(name, *args)).encode()


async def _wait_batch(service: RunningService, batch_id: str) -> dict[str, Any]:
    for _ in range(12):
        status, batch = await service.get(f"/v1/batches/{batch_id}?wait=5")
        assert status == 200, batch
        if batch["status"] != "running":
            return batch
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


async def test_one_key_cannot_reach_another_keys_jobs_or_batches(
    service: RunningService,
) -> None:
    status, job, _ = await service.submit(webhook_url="https://example.com/hook")
    assert status == 202, job
    body = {
        "defaults": {"model": "local/editor", "prompt": "invert", "images": [data_url(png())]},
        "n": 2,
    }
    status, batch = await service.post("/v1/batches", body=body)
    assert status == 202, batch
    finished = await service.wait(job["id"])
    assert finished["status"] == "succeeded"
    assert "X-Amz-Signature" in finished["result"]["data"][0]["url"]  # the owner's view
    await _wait_batch(service, batch["id"])

    ids = {"job_id": job["id"], "batch_id": batch["id"]}
    owned = [
        (method, path)
        for method, path in _routes(service.settings, service.providers)
        if "{job_id}" in path or "{batch_id}" in path
    ]
    assert len(owned) >= 10
    for method, path in owned:
        status, text = await _call(service, method, _concrete(path, **ids), "key-b")
        assert status == 404, (method, path, text)
        assert "X-Amz-" not in text

    for path in ("/v1/jobs", "/v1/batches", "/v1/queue"):
        status, text = await _call(service, "GET", path, "key-b")
        assert job["id"] not in text and batch["id"] not in text, (path, text)
        assert "X-Amz-" not in text
    status, mine = await service.get(f"/v1/jobs/{job['id']}")
    assert status == 200 and mine["status"] == "succeeded"  # untouched by key-b


async def test_arq_payloads_are_json_never_pickle(api_only: RunningService, redis_url: str) -> None:
    status, job, _ = await api_only.submit()
    assert status == 202, job
    redis = Redis.from_url(redis_url)
    try:
        stored = await redis.get(f"arq:job:{job['id']}:1")
    finally:
        await redis.aclose()
    assert stored is not None
    assert not stored.startswith(b"\x80")  # every pickle protocol >= 2 starts so
    payload = json.loads(stored)
    assert payload["f"] == "run_edit"
    assert payload["a"] == [job["id"], 1]


def test_no_code_imports_a_pickler() -> None:
    sources = [*SOURCE.joinpath("app").rglob("*.py"), *SOURCE.joinpath("worker").rglob("*.py")]
    assert len(sources) > 30
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = {node.value} if node.value in PICKLERS else set()
            else:
                continue
            assert not names & PICKLERS, f"{source}:{getattr(node, 'lineno', '?')}"
