"""What an attack run found, driven through the HTTP API of a running stack as an
attacker would: non-finite numbers, Redis key suffixes in ids, non-ASCII digits,
non-UTF-8 headers, wrong methods, and records that cannot be read."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import MultipartReader
from aiohttp.compression_utils import HAS_BROTLI
from PIL import Image
from redis.asyncio import Redis

from app.core.batches import Batch
from app.core.jobs import Job
from app.core.providers_config import ProvidersConfig
from app.errors import ServiceUnavailable
from app.http.requests.decoding import PixelBudget
from app.services.batches import BatchService
from app.settings import Settings
from app.store.jobs import JobStore
from app.store.keys import Keys
from tests.support.bombs import declared_png, record_decodes
from tests.support.images import data_url, encode, mask, png
from tests.support.service import RunningService


def job_body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "local/editor",
        "prompt": "grayscale",
        "images": [{"image_url": data_url(png(16, 16))}],
        **fields,
    }


async def post_raw(
    service: RunningService, path: str, text: str, **headers: str
) -> tuple[int, dict[str, Any]]:
    """POST a JSON text as sent (``json.dumps`` cannot write 1e400 or Infinity)."""
    async with service.client.post(
        service.url(path),
        data=text.encode(),
        headers={**service.auth(), "Content-Type": "application/json", **headers},
    ) as response:
        return response.status, await response.json()


NON_FINITE = ["1e400", "-1e400", "Infinity", "-Infinity", "NaN"]


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    ("template", "param"),
    [
        ('"timeout": {{"call_timeout": {n}}}', "timeout.call_timeout"),
        ('"orq": {{"timeout": {{"call_timeout": {n}}}}}', "orq.timeout.call_timeout"),
        (
            '"load_balancer": {{"type": "weight_based", "models": '
            '[{{"model": "local/editor", "weight": {n}}}]}}',
            "load_balancer.models[0].weight",
        ),
        ('"n": {n}', "n"),
        ('"output_compression": {n}', "output_compression"),
        ('"cache": {{"type": "exact_match", "ttl": {n}}}', "cache.ttl"),
        ('"retry": {{"count": {n}}}', "retry.count"),
    ],
)
async def test_a_non_finite_number_anywhere_in_a_job_is_a_400(
    api_only: RunningService, template: str, param: str, number: str
) -> None:
    body = json.dumps(job_body())[:-1] + ", " + template.format(n=number) + "}"
    status, answer = await post_raw(api_only, "/v1/jobs", body)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    _, page = await api_only.get("/v1/jobs")
    assert page["data"] == []  # nothing was accepted


async def test_a_call_timeout_longer_than_an_attempt_is_refused(api_only: RunningService) -> None:
    status, answer = await api_only.post(
        "/v1/jobs", body=job_body(timeout={"call_timeout": 300_001})
    )
    assert (status, answer["error"]["param"]) == (400, "timeout.call_timeout")


@pytest.mark.parametrize("number", NON_FINITE)
async def test_non_finite_numbers_in_a_batch_and_the_drop_in_are_400(
    api_only: RunningService, number: str
) -> None:
    plain = json.dumps(job_body())
    timed = plain[:-1] + f', "timeout": {{"call_timeout": {number}}}}}'
    status, answer = await post_raw(api_only, "/v1/batches", f'{{"defaults": {timed}, "n": 2}}')
    assert (status, answer["error"]["param"]) == (400, "defaults.timeout.call_timeout")
    status, answer = await post_raw(
        api_only, "/v1/batches", f'{{"defaults": {plain}, "n": {number}}}'
    )
    assert (status, answer["error"]["param"]) == (400, "n"), answer
    status, answer = await post_raw(api_only, "/v1/images/edits", timed)
    assert (status, answer["error"]["param"]) == (400, "timeout.call_timeout")


async def test_a_non_finite_number_in_a_multipart_json_part_is_a_400(
    api_only: RunningService,
) -> None:
    status, answer, response = await api_only.submit(timeout='{"call_timeout": 1e400}')
    assert (status, answer["error"]["param"]) == (400, "timeout.call_timeout")
    assert "x-job-id" not in response.headers


async def test_an_unreadable_record_does_not_break_reads_or_lists(
    service: RunningService, redis_url: str
) -> None:
    """A record written by an older version that today's models refuse (here the
    ``null`` an infinite timeout was once stored as) is skipped, never a 500."""
    _, good, _ = await service.submit()
    _, bad, _ = await service.submit()
    await service.wait(good["id"])
    await service.wait(bad["id"])
    keys = Keys(service.settings.key_prefix)
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        spec = json.loads(await redis.hget(keys.job(bad["id"]), "spec") or "{}")
        spec["request"]["routing"]["timeout"] = {"call_timeout": None}
        await redis.hset(keys.job(bad["id"]), "spec", json.dumps(spec))
    finally:
        await redis.aclose()
    status, page = await service.get("/v1/jobs")
    assert status == 200
    assert [job["id"] for job in page["data"]] == [good["id"]]
    assert (await service.get(f"/v1/jobs/{bad['id']}"))[0] == 404
    assert (await service.post(f"/v1/jobs/{bad['id']}/cancel"))[0] == 404
    assert (await service.get(f"/v1/jobs/{good['id']}"))[0] == 200


@pytest.mark.parametrize("suffix", [":log", ":deliveries", ":wh-events", ":jobs", ":pending"])
async def test_an_id_with_a_key_suffix_is_just_not_found(
    service: RunningService, suffix: str
) -> None:
    _, job, _ = await service.submit()
    _, batch = await service.post("/v1/batches", body={"defaults": job_body(), "n": 1})
    for path in (
        f"/v1/jobs/{job['id']}{suffix}",
        f"/v1/jobs/{job['id']}{suffix}/events",
        f"/v1/jobs/{job['id']}{suffix}/inputs",
        f"/v1/jobs/{job['id']}{suffix}/deliveries",
        f"/v1/batches/{batch['id']}{suffix}",
        f"/v1/batches/{batch['id']}{suffix}/jobs",
        f"/v1/batches/{batch['id']}{suffix}/results",
        f"/v1/batches/{batch['id']}{suffix}/events",
    ):
        async with service.client.get(service.url(path), headers=service.auth()) as response:
            assert response.status == 404, path
    missing = f"/v1/batches/{batch['id']}/jobs?after={job['id']}{suffix}"
    assert (await service.get(missing))[0] == 404


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("size", "\u0661\u0660\u0662\u0664x\u0661\u0660\u0662\u0664", "size"),  # Arabic-Indic
        ("size", "\uff11\uff10\uff12\uff14x\uff11\uff10\uff12\uff14", "size"),  # full-width
    ],
)
async def test_non_ascii_digits_are_refused(
    api_only: RunningService, field: str, value: str, param: str
) -> None:
    status, answer = await api_only.post("/v1/jobs", body=job_body(**{field: value}))
    assert (status, answer["error"]["param"]) == (400, param)


async def test_a_non_ascii_last_event_id_is_refused(service: RunningService) -> None:
    _, job, _ = await service.submit()
    status, answer = await service.get(
        f"/v1/jobs/{job['id']}/events?last_event_id=\u0661\u0662\u0663-\u0660"
    )
    assert (status, answer["error"]["param"]) == (400, "last_event_id")


async def test_a_non_utf8_authorization_header_is_a_401(api_only: RunningService) -> None:
    reader, writer = await _open(api_only)
    try:
        writer.write(
            b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-\xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["error"]["code"] == "invalid_api_key"


async def _open(service: RunningService) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", service.port)


async def test_a_wrong_method_is_a_405_with_allow(api_only: RunningService) -> None:
    async with api_only.client.delete(
        api_only.url("/v1/jobs"), headers=api_only.auth()
    ) as response:
        assert response.status == 405
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        assert {"GET", "POST"} <= allowed
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_a_retry_of_a_rejected_request_still_works(api_only: RunningService) -> None:
    """After every refusal above, the same client can still submit normally."""
    status, job = await api_only.post("/v1/jobs", body=job_body())
    assert status == 202, job
    async with aiohttp.ClientSession() as session:
        async with session.get(api_only.url("/healthz")) as response:
            assert response.status == 200


SUBMIT_ROUTES = ["/v1/jobs", "/v1/batches", "/v1/images/edits", "/v2/router/images/edits"]


@pytest.mark.parametrize("path", SUBMIT_ROUTES)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_body_that_does_not_decode_is_a_400(
    api_only: RunningService, path: str, encoding: str, idempotent: bool
) -> None:
    headers = {"Content-Encoding": encoding}
    if idempotent:
        headers["Idempotency-Key"] = f"undecodable-{path}-{encoding}"
    status, answer = await post_raw(api_only, path, "this is not compressed at all", **headers)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "code", "param"}


@pytest.mark.parametrize("encoding", ["compress", "gzip, snappy", "x-unknown"])
async def test_an_encoding_that_cannot_be_decoded_here_is_a_415(
    api_only: RunningService, encoding: str
) -> None:
    status, answer = await post_raw(api_only, "/v1/jobs", "{}", **{"Content-Encoding": encoding})
    assert status == 415, answer
    assert answer["error"]["code"] == "unsupported_media_type"


async def test_a_gzipped_body_is_accepted(api_only: RunningService) -> None:
    body = gzip.compress(json.dumps(job_body()).encode())
    async with api_only.client.post(
        api_only.url("/v1/jobs"),
        data=body,
        headers={
            **api_only.auth(),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
    ) as response:
        assert response.status == 202, await response.text()


async def _raw_exchange(service: RunningService, request: bytes) -> bytes:
    reader, writer = await _open(service)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def _answer_parts(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-case names) and body of one raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


POST_JOB = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
REFUSED_BY_THE_HTTP_PARSER = {
    "a control character in a header value": b"GET /healthz HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
    "a header name with a space": b"GET /healthz HTTP/1.1\r\nX A: b\r\n\r\n",
    "an over-size header": b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n",
    "an over-size request line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\n"
    + b"".join(b"X-%d: v\r\n" % i for i in range(200))
    + b"\r\n",
    "a Content-Length that is no number": POST_JOB + b"Content-Length: ten\r\n\r\n",
    "two Content-Lengths": POST_JOB + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "a bad chunk size": POST_JOB + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "a bad method": b"G(T /healthz HTTP/1.1\r\n\r\n",
    "a bad HTTP version": b"GET /healthz HTTP/9.x\r\n\r\n",
}


@pytest.mark.parametrize(
    "request_bytes", REFUSED_BY_THE_HTTP_PARSER.values(), ids=list(REFUSED_BY_THE_HTTP_PARSER)
)
async def test_what_the_http_parser_refuses_is_answered_with_the_error_body(
    api_only: RunningService, request_bytes: bytes
) -> None:
    status, headers, body = _answer_parts(await _raw_exchange(api_only, request_bytes))
    assert status == 400, body
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"] and len(error["message"]) <= 300, error
    assert headers.get("x-request-id")


@pytest.mark.skipif(HAS_BROTLI, reason="Brotli is installed here: br decodes")
async def test_a_br_body_without_brotli_is_a_415_with_the_error_body(
    api_only: RunningService,
) -> None:
    request_bytes = POST_JOB + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}"
    status, headers, body = _answer_parts(await _raw_exchange(api_only, request_bytes))
    assert status == 415, body
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "unsupported_media_type")
    assert "br" in error["message"]


@pytest.mark.parametrize("path", ["/results", "/download", "/events"])
async def test_a_stream_that_fails_after_it_started_is_cut_short_not_garbled(
    service: RunningService, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    _, batch = await service.post("/v1/batches", body={"defaults": job_body(), "n": 2})
    done = await service.get(f"/v1/batches/{batch['id']}?wait=30")
    assert done[1]["status"] == "completed"

    real_all_jobs = BatchService.all_jobs

    async def all_jobs_then_fail(
        self: BatchService, batch: Batch, chunk: int = 500
    ) -> AsyncIterator[Job | None]:
        async for job in real_all_jobs(self, batch, chunk):
            yield job
            raise RuntimeError("injected failure after the headers were sent")

    async def log_fails(*args: object, **kwargs: object) -> list[tuple[str, dict[str, str]]]:
        raise RuntimeError("injected failure after the headers were sent")

    # Fault injection where each stream reads its data, after its headers are out.
    monkeypatch.setattr(BatchService, "all_jobs", all_jobs_then_fail)
    monkeypatch.setattr(JobStore, "log_since", log_fails)
    answer = await _raw_exchange(
        service,
        f"GET /v1/batches/{batch['id']}{path} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer key-a\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # no second status line in the body
    assert not answer.endswith(b"0\r\n\r\n")  # no final chunk: the client sees it cut short


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_body_of_many_tiny_parts_is_refused(
    api_only: RunningService, idempotent: bool
) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("model", "local/editor")
    form.add_field("prompt", "p")
    for index in range(10_000):
        form.add_field(f"x{index}", "v")
    headers = api_only.auth()
    if idempotent:
        headers["Idempotency-Key"] = "many-parts"
    async with api_only.client.post(
        api_only.url("/v1/jobs"), data=form, headers=headers
    ) as response:
        assert response.status == 400
        assert "at most 64 parts" in (await response.json())["error"]["message"]
    _, page = await api_only.get("/v1/jobs")
    assert page["data"] == []


async def test_a_request_of_sixteen_images_and_all_fields_fits_the_part_cap(
    service: RunningService,
) -> None:
    fields: dict[str, Any] = {
        "n": 2,
        "size": "32x32",
        "quality": "low",
        "background": "auto",
        "output_format": "png",
        "response_format": "url",
        "user": "u",
        "name": "n",
        "metadata": {"k": "v"},
        "retry": {"count": 1},
        "cache": {"type": "exact_match", "ttl": 60},
    }
    status, job, _ = await service.submit(images=[png(16, 16)] * 16, mask=mask(16, 16), **fields)
    assert status == 202, job


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_multipart_body_is_parsed_once_giving_the_loop_turns(
    api_only: RunningService, monkeypatch: pytest.MonkeyPatch, idempotent: bool
) -> None:
    """With an ``Idempotency-Key`` a multipart body used to be parsed twice, the
    fingerprint's pass and the handler's, each from memory without ever letting another
    request run. Now one reader parses it, and a task that only counts its own turns
    of the event loop gets at least one between every two parts."""
    readers: list[MultipartReader] = []
    turns_at_part: list[int] = []
    turns = 0
    original_next = MultipartReader.next

    async def next_part(self: MultipartReader) -> object:
        if not any(reader is self for reader in readers):
            readers.append(self)
        turns_at_part.append(turns)
        return await original_next(self)

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(MultipartReader, "next", next_part)
    form = aiohttp.FormData()
    form.add_field("model", "local/editor")
    form.add_field("prompt", "make it grayscale")
    for index in range(8):
        form.add_field(f"note_{index}", "x" * 100_000)  # not a field: ignored
    for index in range(4):
        form.add_field("image[]", png(16, 16), filename=f"{index}.png", content_type="image/png")
    headers = api_only.auth()
    if idempotent:
        headers["Idempotency-Key"] = "parsed-once"
    counter = asyncio.create_task(count_turns())
    try:
        async with api_only.client.post(
            api_only.url("/v1/jobs"), data=form, headers=headers
        ) as response:
            status, answer = response.status, await response.json()
    finally:
        counter.cancel()
    assert status == 202, answer
    assert len(readers) == 1
    assert len(turns_at_part) == 15  # 14 parts, then the end
    assert all(a < b for a, b in itertools.pairwise(turns_at_part))


@pytest.fixture
async def guarded(settings: Settings, providers: ProvidersConfig) -> AsyncIterator[RunningService]:
    tuned = settings.model_copy(update={"auth_failures_per_minute": 5})
    async with RunningService(tuned, providers, worker=False) as running:
        yield running


async def test_failed_logins_are_throttled_per_address(guarded: RunningService) -> None:
    service = guarded
    for attempt in range(5):
        async with service.client.get(
            service.url("/v1/jobs"), headers={"Authorization": f"Bearer guess-{attempt}"}
        ) as response:
            assert response.status == 401
    async with service.client.get(
        service.url("/v1/jobs"), headers={"Authorization": "Bearer guess-6"}
    ) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
    # The address is refused even with a valid key: guessing cannot go on.
    assert (await service.get("/v1/jobs"))[0] == 429
    # A valid key's clients elsewhere are not locked out.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as elsewhere:
        async with elsewhere.get(service.url("/v1/jobs"), headers=service.auth()) as response:
            assert response.status == 200


async def test_a_request_of_many_big_images_is_refused_before_any_decode(
    api_only: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixteen images each under the pixel cap (7000x7000 = 49 MP) declare 784 MP in
    all: refused by the per-request budget before a single pixel is decoded."""
    decodes = record_decodes(monkeypatch)
    bombs = [declared_png(7000, 7000) for _ in range(16)]
    status, answer, _ = await api_only.submit(images=bombs)
    assert status == 400, answer
    assert "pixels in all" in answer["error"]["message"]
    assert decodes == []


async def test_a_mask_of_another_size_is_refused_before_any_decode(
    api_only: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mask's header says 7000x7000 (under the pixel cap) and carries a few bytes:
    decoding it would fail as truncated. Its size is compared with the image's from
    both headers, so the answer is the size mismatch and nothing is decoded."""
    decodes = record_decodes(monkeypatch)
    status, answer, _ = await api_only.submit(images=[png(16, 16)], mask=declared_png(7000, 7000))
    assert status == 400, answer
    assert answer["error"]["param"] == "mask"
    assert answer["error"]["code"] == "invalid_request_error"
    assert "mask is 7000x7000 but the image is 16x16" in answer["error"]["message"]
    assert decodes == []


@pytest.mark.parametrize(
    ("last", "mask_image", "status", "param", "words"),
    [
        (encode(Image.new("RGB", (16, 16)), "GIF"), None, 415, "image[15]", "GIF"),
        (declared_png(8000, 8000), None, 400, "image[15]", "8000x8000"),
        (b"", None, 400, "image[15]", "empty"),
        (png(16, 16), png(16, 16), 400, "mask", "alpha channel"),
    ],
    ids=["format", "pixels", "empty", "mask-alpha"],
)
async def test_what_a_header_shows_is_refused_before_any_image_is_decoded(
    api_only: RunningService,
    monkeypatch: pytest.MonkeyPatch,
    last: bytes,
    mask_image: bytes | None,
    status: int,
    param: str,
    words: str,
) -> None:
    """Fifteen good images, then one (or a mask) that its header alone refuses: the
    refusal comes before the good ones are decoded, not after."""
    decodes = record_decodes(monkeypatch)
    images = [png(16, 16)] * 15 + [last]
    got, answer, _ = await api_only.submit(images=images, mask=mask_image)
    assert got == status, answer
    assert answer["error"]["param"] == param
    assert words in answer["error"]["message"]
    assert decodes == []


async def test_concurrent_decodes_share_the_process_budget() -> None:
    budget = PixelBudget(100)
    order: list[str] = []

    async def decode(name: str, pixels: int, hold_s: float) -> None:
        async with budget.hold(pixels, wait_s=5):
            order.append(f"{name}+")
            await asyncio.sleep(hold_s)
            order.append(f"{name}-")

    await asyncio.gather(decode("a", 70, 0.05), decode("b", 70, 0.0))
    assert order == ["a+", "a-", "b+", "b-"]  # b waited: 70 + 70 > 100
    assert budget.free == 100
    async with budget.hold(100, wait_s=5):
        with pytest.raises(ServiceUnavailable) as refused:
            async with budget.hold(1, wait_s=0.05):
                pass
    assert refused.value.headers()["Retry-After"] == "1"
    assert budget.free == 100
