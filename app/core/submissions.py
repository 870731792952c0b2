"""A validated request, as the services take it: parameters and checked images.

The HTTP edge (``app.http.requests``) reads the wire shapes into these; the
services never see a request object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.batches import DEFAULT_BATCH_EVENTS, BatchEventType
from app.core.edit_params import EditParams
from app.core.images import CheckedImage


@dataclass(frozen=True)
class Submission:
    """A validated edit request: parameters, input images and optional mask."""

    params: EditParams
    images: list[CheckedImage]
    mask: CheckedImage | None


class BatchOptions(BaseModel):
    """The batch-level fields."""

    model_config = ConfigDict(extra="ignore")

    webhook_url: str | None = Field(None, max_length=2048)
    webhook_events: tuple[BatchEventType, ...] = Field(DEFAULT_BATCH_EVENTS, min_length=1)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _event_list(cls, value: object) -> object:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if isinstance(value, str):
            return json.loads(value)
        return value


@dataclass(frozen=True)
class BatchSubmission:
    """A validated batch: one EditParams per variant, the shared inputs, the options."""

    variants: list[EditParams]
    images: list[CheckedImage]
    mask: CheckedImage | None
    options: BatchOptions
    overrides: list[frozenset[str]]  # the fields each variant set itself
