"""Structured logs: one JSON object per line, the request/job/tenant fields, and no
keys or image bytes in any line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from typing import Any

import pytest
from pydantic import SecretStr

from app.obs.logs import (
    JsonFormatter,
    TextFormatter,
    bind_log_fields,
    configure_logging,
    log_secrets,
    reset_log_fields,
)
from app.settings import Settings
from tests.support.images import png
from tests.support.service import RunningService


def record(message: str, *args: object, **extra: Any) -> logging.LogRecord:
    """A record as ``logging.getLogger("editq.test").info(message, *args, extra=extra)``."""
    made = logging.getLogger("editq.test").makeRecord(
        "editq.test", logging.INFO, __file__, 1, message, args, None, extra=extra
    )
    return made


def line(formatter: logging.Formatter, log_record: logging.LogRecord) -> dict[str, Any]:
    """The formatted record, which must be exactly one JSON object on one line."""
    text = formatter.format(log_record)
    assert "\n" not in text
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_a_line_has_time_level_logger_and_message() -> None:
    entry = line(JsonFormatter(), record("job %s run %d", "job_1", 2))
    assert entry["level"] == "INFO"
    assert entry["logger"] == "editq.test"
    assert entry["message"] == "job job_1 run 2"
    assert entry["time"].endswith("+00:00")
    assert not {"request_id", "job_id", "tenant"} & entry.keys()


def test_extra_fields_are_included() -> None:
    entry = line(JsonFormatter(), record("hello", request_id="req-1", job_id="job_1", tenant="t1"))
    assert (entry["request_id"], entry["job_id"], entry["tenant"]) == ("req-1", "job_1", "t1")


def test_bound_fields_apply_until_reset_and_extra_wins() -> None:
    token = bind_log_fields(job_id="job_bound", tenant="t1")
    try:
        entry = line(JsonFormatter(), record("inside", tenant="t2"))
    finally:
        reset_log_fields(token)
    assert (entry["job_id"], entry["tenant"]) == ("job_bound", "t2")
    assert "job_id" not in line(JsonFormatter(), record("after"))


async def test_bound_fields_stay_in_their_task() -> None:
    seen: dict[str, dict[str, Any]] = {}

    async def run(job_id: str) -> None:
        bind_log_fields(job_id=job_id)
        await asyncio.sleep(0.01)
        seen[job_id] = line(JsonFormatter(), record("working"))

    await asyncio.gather(run("job_a"), run("job_b"))
    assert seen["job_a"]["job_id"] == "job_a"
    assert seen["job_b"]["job_id"] == "job_b"
    assert "job_id" not in line(JsonFormatter(), record("outside"))


def test_secrets_are_redacted_everywhere() -> None:
    formatter = JsonFormatter(secrets=["sk-live-123", "whsec_abc"])
    try:
        raise ValueError("bad key sk-live-123")
    except ValueError:
        failing = record("key %s and %s", "sk-live-123", "whsec_abc", tenant="sk-live-123")
        failing.exc_info = sys.exc_info()
    text = formatter.format(failing)
    assert "sk-live-123" not in text
    assert "whsec_abc" not in text
    entry = json.loads(text)
    assert entry["message"] == "key [redacted] and [redacted]"
    assert "ValueError: bad key [redacted]" in entry["exc"]


def test_bytes_are_written_as_their_length() -> None:
    image = png()
    entry = line(JsonFormatter(), record("got %s for job %s (%d)", image, "job_1", 3))
    assert entry["message"] == f"got <{len(image)} bytes> for job job_1 (3)"
    assert line(JsonFormatter(), record("%s", bytearray(b"\x89PNG")))["message"] == "<4 bytes>"


def test_text_lines_carry_the_fields_and_are_redacted() -> None:
    text = TextFormatter(secrets=["key-a"]).format(record("saw key-a", request_id="req-9"))
    assert text.endswith("INFO editq.test saw [redacted] request_id=req-9")


def test_the_secrets_come_from_the_settings() -> None:
    settings = Settings(
        api_keys=(SecretStr("key-1"), SecretStr("key-2")),
        webhook_secret=SecretStr("whsec_x"),
        s3_secret_access_key=SecretStr("s3-secret"),
        redis_url="redis://:hunter2@redis:6379/0",
    )
    assert set(log_secrets(settings)) >= {"key-1", "key-2", "whsec_x", "s3-secret", "hunter2"}


@pytest.mark.parametrize(("log_format", "kind"), [(None, JsonFormatter), ("text", TextFormatter)])
def test_configure_logging_picks_the_format_and_quiets_libraries(
    log_format: str | None, kind: type[logging.Formatter]
) -> None:
    root = logging.Logger("editq-test-root")
    configure_logging(Settings(log_format=log_format, log_level="DEBUG"), root)
    [handler] = root.handlers
    assert isinstance(handler.formatter, kind)
    assert root.level == logging.DEBUG
    assert logging.getLogger("botocore").level == logging.INFO


async def test_a_job_logs_no_key_and_no_image(
    service: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    image = png(32, 32)
    _, job, _ = await service.submit(images=[image], prompt="make it sepia")
    await service.wait(job["id"])
    async with service.client.get(
        service.url("/v1/jobs"), headers={"Authorization": "Bearer not-a-key"}
    ) as response:
        assert response.status == 401
    formatter = JsonFormatter()  # no secrets to redact: nothing may need redacting
    stream = io.StringIO()
    for each in caplog.records:
        if not each.name.startswith(("botocore", "boto3", "s3transfer", "urllib3")):
            stream.write(formatter.format(each) + "\n")
    text = stream.getvalue()
    assert job["id"] in text  # the job did log
    for leaked in ("key-a", "not-a-key", "Bearer", "iVBORw0KGgo", "\\u0089PNG", "\\x89PNG"):
        assert leaked not in text
