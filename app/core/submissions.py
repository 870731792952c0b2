"""A validated request, as the services take it: parameters and checked images.

The HTTP edge (``app.http.requests``) reads the wire shapes into these; the
services never see a request object.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.batches import DEFAULT_BATCH_EVENTS, BatchEventType
from app.core.edit_params import EditParams
from app.core.images import CheckedImage
from app.core.request_fields import Metadata, WebhookUrl, event_list


@dataclass(frozen=True)
class Submission:
    """A validated edit request: parameters, input images and optional mask."""

    params: EditParams
    images: list[CheckedImage]
    mask: CheckedImage | None


class BatchOptions(BaseModel):
    """The batch-level fields."""

    model_config = ConfigDict(extra="ignore")

    webhook_url: WebhookUrl | None = None
    webhook_events: tuple[BatchEventType, ...] = Field(DEFAULT_BATCH_EVENTS, min_length=1)
    metadata: Metadata = Field(default_factory=dict)

    _event_list = field_validator("webhook_events", mode="before")(event_list)


@dataclass(frozen=True)
class BatchSubmission:
    """A validated batch: one EditParams per variant, the shared inputs, the options."""

    variants: list[EditParams]
    images: list[CheckedImage]
    mask: CheckedImage | None
    options: BatchOptions
    overrides: list[frozenset[str]]  # the fields each variant set itself
