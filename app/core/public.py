"""The objects the API shows of jobs, batches and models, as pydantic models.

These models are both the serializers and the schemas: ``job_json`` and
``batch_json`` build and dump them (``job_object``, ``batch_object``), and the
OpenAPI document (``app.http.openapi``, through ``app.http.schema``) is generated
from the very same classes, so the wire shape is written once. Where a domain model
already is the shape (``EditParams``, ``Attempt``, ``JobError``, ``Usage``) it is
reused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from app.core.batches import Batch, BatchStatus
from app.core.edit_params import EditParams
from app.core.jobs import Attempt, Job, JobError, JobStatus, StoredImage, Usage
from app.core.providers_config import ModelConfig


class ImageDescription(BaseModel):
    """A stored input image, described without its bytes (``bytes`` is its size)."""

    content_type: str
    bytes: int
    width: int
    height: int


class JobRequestView(EditParams):
    """The job's request: its parameters and its input images' sizes, never the bytes."""

    # The job object shows the metadata once, at its top level.
    metadata: dict[str, str] = Field(default_factory=dict, exclude=True)
    images: list[ImageDescription]
    mask: ImageDescription | None = Field(None, exclude_if=lambda mask: mask is None)


class ImageUrl(BaseModel):
    """An output by presigned URL (expires after ``EDITQ_URL_EXPIRY_S``)."""

    url: str


class ImageB64(BaseModel):
    """An output inline, base64-encoded."""

    b64_json: str


class ImagesResponse(BaseModel):
    """The OpenAI images response."""

    created: int
    data: list[ImageUrl | ImageB64]
    output_format: str
    size: str
    quality: str
    usage: Usage


class JobUrls(BaseModel):
    """Where to read, cancel and follow the job: paths on this API."""

    get: str
    cancel: str
    events: str = Field(description="its Server-Sent Events")


class BatchUrls(JobUrls):
    """Where to read, cancel and follow the batch, and fetch its outputs."""

    results: str = Field(description="one JSON line per variant")
    download: str = Field(description="the outputs as a zip file")


def job_urls(job_id: str) -> JobUrls:
    """The paths of the job ``job_id``."""
    base = f"/v1/jobs/{job_id}"
    return JobUrls(get=base, cancel=f"{base}/cancel", events=f"{base}/events")


def batch_urls(batch_id: str) -> BatchUrls:
    """The paths of the batch ``batch_id``."""
    base = f"/v1/batches/{batch_id}"
    return BatchUrls(
        get=base,
        cancel=f"{base}/cancel",
        events=f"{base}/events",
        results=f"{base}/results",
        download=f"{base}/download",
    )


class JobObject(BaseModel):
    """The job object (``object: "edit.job"``); times are Unix seconds."""

    id: str
    object: Literal["edit.job"]
    status: JobStatus
    model: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    request: JobRequestView
    attempts: list[Attempt]
    error: JobError | None
    result: ImagesResponse | None
    cached: bool
    batch_id: str | None
    variant_index: int | None
    queue_position: int | None = Field(description="jobs ahead of it, while queued")
    metadata: dict[str, str]
    urls: JobUrls


class JobList(BaseModel):
    """A page of jobs."""

    object: Literal["list"]
    data: list[JobObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


# One field per job status, in the status machine's order, so the counts cannot miss one.
_COUNT_FIELDS: dict[str, Any] = {status.value: (int, ...) for status in JobStatus}
BatchCounts = create_model(
    "BatchCounts", __doc__="How many of a batch's jobs are in each status.", **_COUNT_FIELDS
)


class BatchObject(BaseModel):
    """The batch object (``object: "edit.batch"``); times are Unix seconds."""

    id: str
    object: Literal["edit.batch"]
    status: BatchStatus
    total: int
    counts: BatchCounts
    created_at: int
    finished_at: int | None
    usage: Usage
    metadata: dict[str, str]
    webhook_url: str | None
    urls: BatchUrls


class BatchList(BaseModel):
    """A page of batches."""

    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchResultLine(BaseModel):
    """One line of a batch's results (JSON Lines), per variant in order."""

    index: int
    job_id: str | None
    status: str = Field(description="the job's status, or expired")
    outputs: list[str] | None = Field(None, description="presigned output URLs")
    usage: Usage | None = None
    error: JobError | None = None


class LinkedImage(ImageDescription):
    """A stored image with a presigned link (expires after ``EDITQ_URL_EXPIRY_S``)."""

    url: str


class JobInputLinks(BaseModel):
    """A job's input images and mask, each with a presigned link."""

    object: Literal["edit.job.inputs"]
    job_id: str
    images: list[LinkedImage]
    mask: LinkedImage | None = None


class ModelArchitecture(BaseModel):
    """What a model takes and gives."""

    input_modalities: list[str]
    output_modalities: list[str]
    features: list[str]


class ModelObject(BaseModel):
    """A configured model in the OpenAI models shape."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    description: str
    capabilities: list[str]
    architecture: ModelArchitecture


class ModelList(BaseModel):
    """The configured models."""

    object: Literal["list"]
    data: list[ModelObject]


def model_object(model: ModelConfig) -> ModelObject:
    """The model object of a configured model (``owned_by`` names its upstream)."""
    return ModelObject(
        id=model.id,
        object="model",
        created=0,
        owned_by=model.upstream,
        description=model.description,
        capabilities=list(model.capabilities),
        architecture=ModelArchitecture(
            input_modalities=["text", "image"],
            output_modalities=["image"],
            features=list(model.capabilities),
        ),
    )


def job_object(
    job: Job, urls: list[dict[str, Any]] | None, queue_position: int | None = None
) -> JobObject:
    """The job object of ``job``.

    ``urls`` is the ``data`` of its result (``{"url": ...}`` or ``{"b64_json": ...}``
    items); a job shows a result only when it has an outcome and ``urls`` is given.
    ``queue_position`` shows only while the job is queued. Raises pydantic's
    ValidationError when an item of ``urls`` has neither shape.
    """
    spec, outcome = job.spec, job.outcome
    inputs = spec.inputs
    result = None
    if outcome is not None and urls is not None:
        result = ImagesResponse(
            created=outcome.created,
            data=urls,
            output_format=outcome.output_format,
            size=outcome.size,
            quality=outcome.quality,
            usage=outcome.usage,
        )
    return JobObject(
        id=spec.id,
        object="edit.job",
        status=job.status,
        model=spec.request.model,
        created_at=int(spec.created_at),
        started_at=_seconds(job.started_at),
        finished_at=_seconds(job.finished_at),
        # Stored requests were validated when accepted: not again on every read.
        request=JobRequestView.model_construct(
            **dict(spec.request),
            images=[_described(image) for image in inputs.images],
            mask=None if inputs.mask is None else _described(inputs.mask),
        ),
        attempts=[call.public() for call in job.attempts],
        error=job.error,
        result=result,
        cached=job.cached,
        batch_id=spec.batch_id,
        variant_index=spec.variant_index,
        queue_position=queue_position if job.status == JobStatus.QUEUED else None,
        metadata=spec.request.metadata,
        urls=job_urls(spec.id),
    )


def batch_object(batch: Batch) -> BatchObject:
    """The batch object of ``batch``; pydantic's ValidationError when its counts miss a
    job status or its usage is not one."""
    spec = batch.spec
    return BatchObject(
        id=spec.id,
        object="edit.batch",
        status=batch.status,
        total=spec.total,
        counts=BatchCounts.model_validate(batch.counts),
        created_at=int(spec.created_at),
        finished_at=_seconds(batch.finished_at),
        usage=Usage.model_validate(batch.usage),
        metadata=spec.metadata,
        webhook_url=spec.webhook_url,
        urls=batch_urls(spec.id),
    )


def _described(image: StoredImage) -> ImageDescription:
    return ImageDescription.model_validate(image, from_attributes=True)


def _seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def job_json(
    job: Job, urls: list[dict[str, Any]] | None, queue_position: int | None = None
) -> dict[str, Any]:
    """The job object of ``job`` as JSON data (see ``job_object``)."""
    return job_object(job, urls, queue_position).model_dump(mode="json")


def batch_json(batch: Batch) -> dict[str, Any]:
    """The batch object of ``batch`` as JSON data (see ``batch_object``)."""
    return batch_object(batch).model_dump(mode="json")
