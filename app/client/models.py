"""What the editq API answers, as the Python client sees it: typed response models,
the client's errors and the Server-Sent Events decoder.

The models accept fields they do not declare (``extra="allow"``), so a newer server
never breaks an older client; such fields stay reachable in ``model_extra`` and in
``model_dump()``. The client's exception tree::

    EditqClientError          the service answered non-2xx (``status``, ``code``, ``param``)
    └── EditqConnectionError  no answer: connection refused, reset or timed out
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

JOB_TERMINAL = frozenset({"succeeded", "failed", "canceled"})
BATCH_TERMINAL = frozenset({"completed", "canceled"})
_LINE_END = re.compile(r"\r\n|\r|\n")


class EditqClientError(Exception):
    """The service refused a request; ``status`` is its HTTP status, ``code``/``param``
    come from its OpenAI-style error body."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        *,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.type = type

    @classmethod
    def from_body(cls, status: int, body: str, reason: str | None = None) -> EditqClientError:
        """The error a non-2xx answer stands for, read from its OpenAI-style error body
        (``{"error": {"message", "type", "code", "param"}}``) when it has one."""
        try:
            error = json.loads(body)["error"]
            return cls(
                str(error.get("message") or reason),
                status,
                error.get("code"),
                error.get("param"),
                type=error.get("type"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            message = " ".join(body.split())[:300] or reason or "no message"
            return cls(message, status, "http_error")

    def __str__(self) -> str:
        """One line: ``400 invalid_request_error (param n): n: …``."""
        head = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        if self.param:
            head = f"{head} (param {self.param})"
        return f"{head}: {self.message}" if head else self.message


class EditqConnectionError(EditqClientError):
    """The service (or the storage serving an output URL) could not be reached in time."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorObject(_Open):
    """Why a job failed: ``type``, ``code``, ``message`` in the OpenAI vocabulary."""

    type: str = "server_error"
    code: str = "internal_error"
    message: str = ""


class ImageData(_Open):
    """One output image: a presigned ``url`` or inline ``b64_json``."""

    url: str | None = None
    b64_json: str | None = None


class ImagesResult(_Open):
    """A succeeded job's result, in the OpenAI images shape."""

    created: int
    data: list[ImageData]
    output_format: str = "png"
    size: str | None = None
    quality: str | None = None
    usage: dict[str, Any] | None = None


class JobObject(_Open):
    """The job object (``object: "edit.job"``); times are Unix seconds."""

    id: str
    object: str = "edit.job"
    status: str
    model: str
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    error: ErrorObject | None = None
    result: ImagesResult | None = None
    cached: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    batch_id: str | None = None
    variant_index: int | None = None

    @property
    def terminal(self) -> bool:
        """True once the job succeeded, failed or was canceled."""
        return self.status in JOB_TERMINAL


class JobPage(_Open):
    """One page of a cursor-paged job list; pass ``last_id`` as ``after`` for the next."""

    object: str = "list"
    data: list[JobObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class BatchCounts(_Open):
    """How many of a batch's jobs are in each status."""

    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0

    @property
    def finished(self) -> int:
        """Jobs that will not change any more."""
        return self.succeeded + self.failed + self.canceled


class BatchObject(_Open):
    """The batch object (``object: "edit.batch"``); times are Unix seconds."""

    id: str
    object: str = "edit.batch"
    status: str
    total: int
    counts: BatchCounts = Field(default_factory=BatchCounts)
    created_at: int
    finished_at: int | None = None
    usage: dict[str, Any] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True once every job of the batch has finished or the batch was canceled."""
        return self.status in BATCH_TERMINAL


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event; ``id`` is the last event id in effect (send it back as
    ``Last-Event-ID`` to resume), ``retry`` the server's reconnection time in ms."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """``data`` parsed as JSON; ValueError when it is not."""
        return json.loads(self.data)


class SseDecoder:
    """Turns a ``text/event-stream`` body, fed in chunks of bytes, into events, as the
    HTML standard's event-stream interpretation does (any line ending, comments,
    multi-line ``data``, ``id`` without NUL, numeric ``retry``)."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by ``chunk``."""
        text = self._pending + self._text.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        # A trailing CR may be the first half of CRLF: keep it for the next chunk.
        held = "\r" if text.endswith("\r") else ""
        lines = _LINE_END.split(text.removesuffix(held))
        self._pending = lines.pop() + held
        return [event for line in lines if (event := self._line(line)) is not None]

    def end(self) -> list[ServerSentEvent]:
        """Events completed at the end of the stream (an unfinished event is dropped)."""
        text = self._pending + self._text.decode(b"", final=True)
        self._pending = ""
        if not text.endswith("\r"):
            return []
        lines = _LINE_END.split(text)[:-1]
        return [event for line in lines if (event := self._line(line)) is not None]

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(
            event=event or "message", data="\n".join(data), id=self._last_id, retry=self._retry
        )
