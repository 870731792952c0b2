"""Fuzzing the live API from its own OpenAPI document with schemathesis.

Every operation of ``/openapi.json`` gets ``MAX_EXAMPLES`` requests built from its
schemas (positive mode) and as many that break them (negative mode), with a valid
key. No answer may be a 5xx or take longer than ``REQUEST_TIMEOUT_S``, and every
answer must have a documented status, content type, headers and body shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation.case import Case as AnyCase
from schemathesis.schemas import APIOperation as AnyOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.providers_config import ProvidersConfig
from app.settings import Settings
from tests.support.images import data_url, png
from tests.support.numeric_fields import NON_FINITE, editq_examples, numeric_fields
from tests.support.service import RunningService

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 50
REQUEST_TIMEOUT_S = 10.0
AUTH = RunningService.auth("key-a")
Operation = AnyOperation[Any, Any, Any, Any]
Case = AnyCase[Operation]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Tally:
    """What the fuzzing sent and what went wrong (each with a curl command to replay)."""

    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    unfuzzable: list[str] = field(default_factory=list)


def fuzz(base_url: str) -> Tally:
    """Run every operation of the live document in both modes (blocking: call it in a thread)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    tally = Tally()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation: Operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    run_examples(operation, mode, lambda case: send(case, base_url, session, tally))
                except Unsatisfiable:  # nothing in the operation can be made invalid
                    tally.unfuzzable.append(f"{mode.value} {operation.label}")
    return tally


def run_examples(operation: Operation, mode: GenerationMode, test: Callable[[Case], None]) -> None:
    """Call ``test`` on up to MAX_EXAMPLES generated cases of ``operation``."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def examples(case: Case) -> None:
        test(case)

    examples()


def send(case: Case, base_url: str, session: requests.Session, tally: Tally) -> None:
    """Send one case and record how its answer fails the checks, if it does."""
    replay = case.as_curl_command(headers=AUTH, base_url=base_url)
    started = time.monotonic()
    try:
        response = case.call(
            base_url=base_url, session=session, headers=AUTH, timeout=REQUEST_TIMEOUT_S
        )
    except requests.Timeout:
        tally.hangs.append(replay)
        return
    tally.requests += 1
    tally.slowest_s = max(tally.slowest_s, time.monotonic() - started)
    if response.status_code >= 500:
        tally.server_errors.append(f"{response.status_code} {response.text[:300]}\n{replay}")
    try:
        case.validate_response(response, checks=CHECKS, headers=AUTH)
    except (AssertionError, FailureGroup) as exc:  # one failure, or several
        tally.nonconforming.append(f"{exc}\n{replay}")


@pytest.mark.timeout(240)
async def test_fuzzing_every_operation_finds_no_server_error(service: RunningService) -> None:
    started = time.monotonic()
    tally = await asyncio.to_thread(fuzz, service.base_url)
    print(
        f"\nschemathesis: {tally.requests} requests in {time.monotonic() - started:.0f} s, "
        f"{len(tally.server_errors)} 5xx, {len(tally.hangs)} hangs, "
        f"{len(tally.nonconforming)} nonconforming, slowest {tally.slowest_s:.2f} s; "
        f"nothing to negate in: {', '.join(tally.unfuzzable)}"
    )
    assert tally.requests >= 1000
    assert tally.server_errors == []
    assert tally.hangs == []
    assert tally.nonconforming == [], "\n\n".join(tally.nonconforming[:5])


@pytest.fixture
async def unlimited(
    settings: Settings, providers: ProvidersConfig
) -> AsyncIterator[RunningService]:
    """The API and a worker, with no per-key rate limit in the way of many requests."""
    lifted = settings.model_copy(update={"rate_limit_per_minute": 10**9})
    async with RunningService(lifted, providers) as running:
        yield running


async def test_a_non_finite_number_in_any_numeric_field_is_a_4xx_naming_it(
    unlimited: RunningService,
) -> None:
    """Every numeric field the served document describes (JSON bodies, multipart parts
    and the JSON inside them, query parameters) gets 1e400, -1e400, Infinity, -Infinity
    and NaN as raw JSON text: each is refused with the error body naming that field,
    and nothing is accepted."""
    service = unlimited
    _, job, _ = await service.submit()
    image = png(16, 16)
    defaults = {"model": "local/editor", "prompt": "p", "images": [{"image_url": data_url(image)}]}
    _, batch = await service.post("/v1/batches", body={"defaults": defaults, "n": 1})
    async with service.client.get(service.url("/openapi.json")) as response:
        document = await response.json()
    examples = editq_examples("local/editor", image, job_id=job["id"], batch_id=batch["id"])
    fields = numeric_fields(document, examples)
    wrong: list[str] = []
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for numeric in fields:
            for number in NON_FINITE:
                status, body = await numeric.send(session, service.base_url, number)
                error = body.get("error") if isinstance(body, dict) else None
                if not (
                    400 <= status < 500
                    and isinstance(error, dict)
                    and set(error) == {"message", "type", "code", "param"}
                    and error["param"] == numeric.param
                ):
                    wrong.append(f"{numeric.label} = {number}: {status} {str(body)[:300]}")
    print(f"\n{len(fields)} numeric fields x {len(NON_FINITE)} numbers")
    assert wrong == [], "\n".join(wrong)
    assert {f.label for f in fields} >= {
        "POST /v1/jobs json timeout.call_timeout",
        "POST /v1/jobs multipart orq.timeout.call_timeout",
        "POST /v1/batches json defaults.load_balancer.models[0].weight",
        "POST /v1/batches multipart n",
        "GET /v1/jobs query limit",
        "POST /v1/files multipart expires_after[seconds]",
        "GET /v1/files query limit",
    }
    _, jobs = await service.get("/v1/jobs")
    assert [j["id"] for j in jobs["data"]] == [job["id"]]
    _, batches = await service.get("/v1/batches")
    assert [b["id"] for b in batches["data"]] == [batch["id"]]
