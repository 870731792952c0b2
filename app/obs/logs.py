"""Log lines: one JSON object per line (``EDITQ_LOG_FORMAT=json``) or plain text.

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``
and, when known, ``request_id``, ``job_id`` and ``tenant``: from the record's
``extra=`` or bound to the current task with ``bind_log_fields``; ``exc`` holds
a traceback. Both formats replace the secrets they are given (API keys, signing
secrets, credentials) with ``[redacted]`` wherever they appear, and write a bytes
argument as its length, never its content (no image ever reaches a log).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from urllib.parse import urlsplit

from app.settings import Settings

CONTEXT_FIELDS = ("request_id", "job_id", "tenant")
REDACTED = "[redacted]"
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")

_bound: ContextVar[Mapping[str, str]] = ContextVar("editq_log_fields")


def bind_log_fields(**fields: str) -> Token[Mapping[str, str]]:
    """Add ``fields`` to every line logged in this task from now on (until reset)."""
    return _bound.set({**_bound.get({}), **fields})


def reset_log_fields(token: Token[Mapping[str, str]]) -> None:
    """Undo the ``bind_log_fields`` that returned ``token``."""
    _bound.reset(token)


class _Redacting(logging.Formatter):
    def __init__(self, fmt: str | None = None, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted]``."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def message(self, record: logging.LogRecord) -> str:
        """The record's message with bytes arguments shown as their length."""
        if isinstance(record.msg, bytes | bytearray):
            return _describe(record.msg)
        if isinstance(record.args, tuple) and any(_is_bytes(arg) for arg in record.args):
            record = logging.makeLogRecord(
                {**record.__dict__, "args": tuple(_scrub(arg) for arg in record.args)}
            )
        return record.getMessage()


class TextFormatter(_Redacting):
    """``time level logger message [fields]``, for people at a terminal."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", secrets=secrets)

    def format(self, record: logging.LogRecord) -> str:
        """One redacted text line (plus a traceback, if any)."""
        record.message = self.message(record)
        record.asctime = self.formatTime(record)
        line = self.formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{name}={value}" for name, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(line)


class JsonFormatter(_Redacting):
    """One JSON object per line, for log collectors."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets=secrets)

    def format(self, record: logging.LogRecord) -> str:
        """One redacted JSON line (redacted before encoding, where secrets look as sent)."""
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": self.message(record),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps({name: self.redact(value) for name, value in entry.items()})


def log_secrets(settings: Settings) -> list[str]:
    """Every secret ``settings`` holds, for the formatters to redact."""
    secrets = [key.get_secret_value() for key in settings.api_keys]
    for value in (
        settings.webhook_secret,
        settings.s3_secret_access_key,
        settings.s3_access_key_id,
    ):
        if value is not None:
            secrets.append(value.get_secret_value())
    password = urlsplit(settings.redis_url).password
    if password:
        secrets.append(password)
    return secrets


def configure_logging(settings: Settings, root: logging.Logger | None = None) -> None:
    """Send every line to stderr in ``settings.log_format`` (default JSON) at
    ``settings.log_level``, replacing ``root``'s handlers (default the root logger).

    The libraries in ``QUIET_LOGGERS`` stay at INFO or above even when editq logs
    DEBUG: at DEBUG they write request headers and bodies, images included.
    """
    root = root if root is not None else logging.getLogger()
    secrets = log_secrets(settings)
    handler = logging.StreamHandler()
    handler.setFormatter(
        TextFormatter(secrets=secrets)
        if settings.log_format == "text"
        else JsonFormatter(secrets=secrets)
    )
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


def _fields(record: logging.LogRecord) -> dict[str, str]:
    bound = _bound.get({})
    fields: dict[str, str] = {}
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None) or bound.get(name)
        if value is not None:
            fields[name] = _describe(value)
    return fields


def _is_bytes(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _scrub(value: object) -> object:
    return _describe(value) if _is_bytes(value) else value


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return str(value)
