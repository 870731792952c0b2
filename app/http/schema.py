"""The shapes of the HTTP API, as pydantic models, for the OpenAPI document.

They describe request bodies, query strings, headers and responses for the OpenAPI
document (``app.http.openapi``). The objects of jobs and batches live in
``app.core.public``, where they also write the answers (``Job.public``,
``Batch.public``), and are re-exported here, so the document comes from the very
classes that serialize; the other replies here only describe what handlers build.
Where a domain model already is the shape (``EditParams``, ``RoutingOptions``,
``DeliveryAttempt``, ``BatchOptions``) it is reused, so the document follows the code.
"""

from __future__ import annotations

from copy import copy
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, create_model

from app.core.edit_params import JSON_FIELDS, EditParams
from app.core.files import EXPIRES_AFTER_MAX_S, EXPIRES_AFTER_MIN_S, PURPOSES
from app.core.files import FileDeleted as FileDeleted
from app.core.files import FileObject as FileObject
from app.core.jobs import JobStatus
from app.core.public import BatchCounts as BatchCounts
from app.core.public import BatchList as BatchList
from app.core.public import BatchObject as BatchObject
from app.core.public import BatchResultLine as BatchResultLine
from app.core.public import ImageB64 as ImageB64
from app.core.public import ImageDescription as ImageDescription
from app.core.public import ImagesResponse as ImagesResponse
from app.core.public import ImageUrl as ImageUrl
from app.core.public import JobInputLinks as JobInputLinks
from app.core.public import JobList as JobList
from app.core.public import JobObject as JobObject
from app.core.public import JobRequestView as JobRequestView
from app.core.public import LinkedImage as LinkedImage
from app.core.public import ModelArchitecture as ModelArchitecture
from app.core.public import ModelList as ModelList
from app.core.public import ModelObject as ModelObject
from app.core.routing_options import RoutingOptions
from app.core.submissions import BatchOptions
from app.core.webhooks import PREVIOUS_SECRET_DEFAULT_S, PREVIOUS_SECRET_MAX_S
from app.errors import EditqError
from app.store.webhooks import DeliveryAttempt


def known_error_codes() -> list[str]:
    """Every default error code of the exception tree (``app.errors``), sorted."""
    codes: set[str] = set()
    pending: list[type[EditqError]] = [EditqError]
    while pending:
        cls = pending.pop()
        codes.add(cls.default_code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


class ErrorDetail(BaseModel):
    """What went wrong, in the OpenAI error vocabulary."""

    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, rate_limit_error, "
        "server_error or upstream_error"
    )
    code: str = Field(
        description="one of " + ", ".join(known_error_codes()) + " (or an upstream's)"
    )
    param: str | None = Field(description="the request field at fault, if one is")


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "code", "param"}}``."""

    error: ErrorDetail


class NotReadyBody(ErrorBody):
    """``/readyz`` when a dependency does not answer: the error plus each check's state."""

    checks: dict[str, str]


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Redis and object storage answer."""

    status: Literal["ready"]
    checks: dict[str, str]


class ImageReference(BaseModel):
    """An input image by reference: a base64 data URL, a public http(s) URL or an
    uploaded file (``POST /v1/files``) of this key; exactly one of the two."""

    image_url: str | None = Field(None, description="data:image/png;base64,... or https://...")
    file_id: str | None = Field(None, description="file-... from POST /v1/files")


def _edit_fields(*, form: bool) -> dict[str, Any]:
    """The edit fields as sent: ``EditParams`` with its routing knobs at the top level."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for source in (EditParams, RoutingOptions)
        for name, info in source.model_fields.items()
        if name != "routing"
    }
    if form:  # multipart parts are text, never null: JSON-valued fields are JSON text
        fields = {name: (_not_null(kind), info) for name, (kind, info) in fields.items()}
        for name in JSON_FIELDS:
            fields[name] = (str, Field(None, description=f"{name} as JSON text"))
        fields["webhook_events"] = (str, Field(None, description="comma-separated or JSON"))
    return fields


def _inherited(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` made optional without a default: one left out is taken from elsewhere
    (for a batch variant, from the batch's defaults)."""
    loose = {}
    for name, (kind, info) in fields.items():
        info = copy(info)
        info.default, info.default_factory = None, None
        loose[name] = (kind, info)
    return loose


def _not_null(annotation: Any) -> Any:
    """``annotation`` without ``None`` (``str | None`` is ``str``)."""
    if get_origin(annotation) in (Union, UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not NoneType]
        return Union[tuple(kinds)]  # noqa: UP007
    return annotation


EditJsonRequest = create_model(
    "EditJsonRequest",
    __doc__="An edit request as JSON; routing knobs may also be nested in ``orq``.",
    images=(list[ImageReference], Field(min_length=1, description="1-16 input images")),
    mask=(ImageReference | None, Field(None, description="transparent pixels mark the edit")),
    orq=(RoutingOptions | None, Field(None, description="routing knobs, nested")),
    **_edit_fields(form=False),
)

EditVariant = create_model(
    "EditVariant",
    __doc__="The edit fields one variant of a batch sets over the defaults (not images or mask).",
    orq=(RoutingOptions | None, Field(None, description="routing knobs, nested")),
    **_inherited(_edit_fields(form=False)),
)

# One property for the input files: two (``image`` and ``image[]``) share a name in
# generated clients, which then drop the whole form. The server reads both spellings.
_IMAGE_PARTS: dict[str, Any] = {
    "image": (
        list[bytes],
        Field(
            [],
            alias="image[]",
            description="input image files (PNG, JPEG, WebP), one part each; "
            "parts named `image` are accepted too",
        ),
    ),
    "mask": (bytes, Field(None, description="mask image file")),
}

EditForm = create_model(
    "EditForm",
    __doc__="An edit request as multipart/form-data: 1-16 image files plus text fields.",
    **_IMAGE_PARTS,
    **_edit_fields(form=True),
)


# The synchronous drop-in answers with ``b64_json`` unless ``url`` is asked for, as
# OpenAI's edit endpoint does (``app.http.handlers.images_compat.with_sync_defaults``).
_SYNC_RESPONSE_FORMAT: dict[str, Any] = {
    "response_format": (
        Literal["url", "b64_json"],
        Field("b64_json", description="b64_json unless url is asked for, as OpenAI answers"),
    )
}

SyncEditJsonRequest = create_model(
    "SyncEditJsonRequest",
    __base__=EditJsonRequest,
    __doc__="A synchronous edit as JSON; routing knobs may also be nested in ``orq``.",
    **_SYNC_RESPONSE_FORMAT,
)

SyncEditForm = create_model(
    "SyncEditForm",
    __base__=EditForm,
    __doc__="A synchronous edit as multipart/form-data: 1-16 image files plus text fields.",
    **_SYNC_RESPONSE_FORMAT,
)


class BatchJsonRequest(BatchOptions):
    """A batch as JSON: shared defaults (with the images) plus variants, or ``n`` copies."""

    defaults: EditJsonRequest = Field(
        description="edit fields every variant starts from; model and prompt may be per variant"
    )
    variants: list[EditVariant] | None = Field(
        None, description="edit fields each variant overrides (not images or mask)"
    )
    n: int | None = Field(None, ge=1, description="this many identical variants instead")


BatchForm = create_model(
    "BatchForm",
    __doc__="A batch as multipart/form-data: the image files plus JSON-text parts.",
    **_IMAGE_PARTS,
    defaults=(str, Field(None, description="edit fields as JSON text")),
    variants=(str, Field(None, description="a JSON list of variant overrides")),
    n=(int, Field(None, ge=1)),
    webhook_url=(str, Field(None, max_length=2048)),
    webhook_events=(str, Field(None, description="comma-separated or a JSON list")),
    metadata=(str, Field(None, description="a JSON object of strings")),
)


class RedeliverRequest(BaseModel):
    """Which event to send again; the latest when absent."""

    event_id: str | None = None


class WaitQuery(BaseModel):
    """Long-poll: answer as soon as the resource finishes, or after ``wait`` seconds."""

    wait: float = Field(0, ge=0, le=300, description="seconds to wait for it to finish")


class PageQuery(BaseModel):
    """A cursor page, newest first."""

    limit: int = Field(20, ge=1, le=100)
    after: str | None = Field(None, description="the last id of the previous page")


# Multipart parts are text, never null: the optional parts have no null in their type.
_UPLOAD_PARTS: dict[str, Any] = {
    "file": (bytes, Field(description="the image (PNG, JPEG or WebP), checked as inputs are")),
    "purpose": (
        Literal[PURPOSES],
        Field(description="OpenAI's file purposes are accepted; the file is an input image"),
    ),
    "expires_anchor": (
        Literal["created_at"],
        Field(None, alias="expires_after[anchor]", description="created_at (with seconds)"),
    ),
    "expires_seconds": (
        int,
        Field(
            None,
            alias="expires_after[seconds]",
            ge=EXPIRES_AFTER_MIN_S,
            le=EXPIRES_AFTER_MAX_S,
            description="the file expires this long after its upload (else it is kept)",
        ),
    ),
}

FileUploadForm = create_model(
    "FileUploadForm",
    __doc__="An upload to the Files API as multipart/form-data (OpenAI's shape).",
    **_UPLOAD_PARTS,
)


class FileList(BaseModel):
    """A page of files."""

    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FilePageQuery(BaseModel):
    """A cursor page of files, as OpenAI's Files API pages them."""

    after: str | None = Field(None, description="the last id of the previous page")
    limit: int = Field(20, ge=1, le=100)
    order: Literal["asc", "desc"] = Field("desc", description="by creation time")
    purpose: str | None = Field(None, description="only files of this purpose")


class JobPageQuery(PageQuery):
    """A cursor page of jobs, optionally of one status."""

    status: JobStatus | None = None


class WebhookSecret(BaseModel):
    """The secret this key's webhooks are signed with."""

    object: Literal["webhook.secret"]
    secret: str = Field(description="whsec_...")
    previous_expires_at: int | None = Field(
        description="when (Unix seconds) the secret the last rotation replaced stops signing "
        "events next to this one; null when only this one signs"
    )


class RotateSecretRequest(BaseModel):
    """How long the secret being replaced keeps signing events next to the new one."""

    expire_previous_in_s: int = Field(
        PREVIOUS_SECRET_DEFAULT_S,
        ge=0,
        le=PREVIOUS_SECRET_MAX_S,
        strict=True,
        description="seconds (0: at once)",
    )


class DeliveryEvent(BaseModel):
    """A webhook event and where its delivery stands."""

    id: str
    type: str
    state: str = Field(description="pending, delivered or failed")
    attempts: int
    created_at: int
    next_attempt_at: int | None


class Deliveries(BaseModel):
    """A job's webhook events and every delivery attempt, oldest first."""

    object: Literal["list"]
    webhook_url: str | None
    events: list[DeliveryEvent]
    data: list[DeliveryAttempt]


class EventsQuery(BaseModel):
    """Where to resume an event stream (the ``Last-Event-ID`` header wins)."""

    last_event_id: str | None = Field(None, description="replay the events after this id")
    token: str | None = Field(
        None, description="from a stream URL: opens this stream without a key"
    )


class StreamUrl(BaseModel):
    """A URL that opens one job's or batch's event stream without a key (for a browser's
    ``EventSource``, which cannot send one), until ``expires_at``."""

    object: Literal["stream_url"]
    url: str = Field(description="the events path with a signed ?token=; resume as usual")
    expires_at: int = Field(description="seconds since the epoch")


class EventsHeaders(BaseModel):
    """The standard Server-Sent Events resume header."""

    last_event_id: str | None = Field(
        None, alias="Last-Event-ID", description="replay the events after this id"
    )


class IdempotencyHeaders(BaseModel):
    """A retried submit with the same key creates nothing new (kept 24 h per API key)."""

    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="1-255 printable ASCII characters; same key and request: the first "
        "answer again (409 while it runs, 422 with another request)",
    )


class SyncEditHeaders(IdempotencyHeaders):
    """A synchronous edit answers before the client gives up, and a client's retry
    waits on the job of the call it repeats."""

    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="1-255 printable ASCII characters; same key and request: the same "
        "job's answer, waiting with the first request while it runs (422 with another "
        "request)",
    )
    request_timeout: float | None = Field(
        None,
        alias="Request-Timeout",
        gt=0,
        description="seconds the client waits: the answer (504 naming the job, if it is "
        "still running) comes 10 % (at least 1 s, at most half) before",
    )
    read_timeout: float | None = Field(
        None,
        alias="x-stainless-read-timeout",
        gt=0,
        description="the OpenAI SDKs' read timeout in seconds, taken as Request-Timeout",
    )
    retry_count: int | None = Field(
        None,
        alias="x-stainless-retry-count",
        ge=0,
        description="the OpenAI SDKs' attempt number: from 1, a retry, which waits on the "
        "job the same request (same API key and body) accepted in the last "
        "EDITQ_SYNC_RETRY_WINDOW_S instead of making another",
    )


class SubmitHeaders(IdempotencyHeaders):
    """A submit's headers: its ``Idempotency-Key`` and how long to hold the answer."""

    prefer: str | None = Field(
        None,
        alias="Prefer",
        description="wait=N: hold the answer up to N seconds (at most EDITQ_MAX_WAIT_S) "
        "for it to finish; 201 with the finished object, else 202 as without it",
    )
