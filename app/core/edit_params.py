"""The parameters of an edit request (everything but the image bytes), validated.

Both request shapes (multipart form fields, JSON body) reduce to a flat mapping of
field name to value; ``parse_edit_params`` turns it into ``EditParams`` or raises
``InvalidRequest`` naming the field at fault.

One policy for parameters: OpenAI's documented image-edit parameters are fields of
``EditParams`` (stored in the job's ``request`` and sent to ``openai``-kind
upstreams); anything else is ignored, and ``unmodeled`` names it so the HTTP edge
can say so (``x-editq-ignored-params``) instead of dropping it silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.core.request_fields import Metadata, WebhookUrl, event_list
from app.core.routing_options import RoutingOptions
from app.errors import InvalidRequest

ROUTING_FIELDS = (
    "retry",
    "fallbacks",
    "fallback_on_codes",
    "cache",
    "load_balancer",
    "timeout",
)
JSON_FIELDS = ("metadata", "orq", "webhook_events", *ROUTING_FIELDS)
WebhookEventType = Literal["job.running", "job.succeeded", "job.failed", "job.canceled"]
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEventType, ...] = (
    "job.succeeded",
    "job.failed",
    "job.canceled",
)
SIZE_PATTERN = re.compile(r"([0-9]{2,5})x([0-9]{2,5})", re.ASCII)
MAX_SIDE = 8192


class EditParams(BaseModel):
    """What the client asked for; stored on the job as ``request``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    prompt: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    quality: Literal["auto", "low", "medium", "high", "standard"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    input_fidelity: Literal["low", "high"] | None = None
    response_format: Literal["url", "b64_json"] = "url"
    stream: bool = Field(
        False,
        description="the synchronous edit endpoints answer with Server-Sent Events in "
        "OpenAI's image edit streaming format (image_edit.partial_image, "
        "image_edit.completed); the asynchronous ones follow /v1/jobs/{id}/events instead",
    )
    partial_images: int = Field(
        0,
        ge=0,
        le=3,
        description="partial images to stream before the final one (0-3); only an "
        "OpenAI-compatible upstream makes them, other upstreams send the final image only",
    )
    user: str | None = Field(None, max_length=256)
    name: str | None = Field(None, max_length=256)
    metadata: Metadata = Field(default_factory=dict)
    routing: RoutingOptions = Field(default_factory=RoutingOptions)
    webhook_url: WebhookUrl | None = None
    webhook_events: tuple[WebhookEventType, ...] = Field(DEFAULT_WEBHOOK_EVENTS, min_length=1)

    @field_validator("n", "partial_images", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        """Accept ``2``, ``"2"`` and ``"2.0"``; refuse ``"2.5"``."""
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                return value
            return int(number) if number.is_integer() else value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        match = SIZE_PATTERN.fullmatch(value)
        if not match:
            raise ValueError("size must be 'auto' or WIDTHxHEIGHT, e.g. 1024x1024")
        width, height = int(match[1]), int(match[2])
        if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
            raise ValueError(f"size sides must be between 16 and {MAX_SIDE} pixels")
        return value

    _event_list = field_validator("webhook_events", mode="before")(event_list)

    def output_size(self) -> tuple[int, int] | None:
        """The requested (width, height), or None for 'auto'/unset."""
        if self.size is None or self.size == "auto":
            return None
        width, height = self.size.split("x")
        return int(width), int(height)


def _field_names(*, lists: bool) -> frozenset[str]:
    """The request fields of ``EditParams`` and the top-level routing knobs: those that
    hold a list (``lists``), or those that hold one value."""
    return frozenset(
        name
        for source in (EditParams, RoutingOptions)
        for name, info in source.model_fields.items()
        if name != "routing" and (get_origin(info.annotation) in (tuple, list)) == lists
    )


LIST_FIELDS = _field_names(lists=True)
"""The edit fields that hold a list (``fallbacks``, ``fallback_on_codes``, ...)."""
SINGLE_FIELDS = _field_names(lists=False) | {"orq"}
"""The edit fields that hold one value (an object counts as one)."""


def unmodeled(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not edit fields (so are ignored), sorted."""
    return sorted(set(names) - LIST_FIELDS - SINGLE_FIELDS)


def parse_edit_params(fields: Mapping[str, Any], *, max_prompt_chars: int) -> EditParams:
    """Validate a flat mapping of request fields into EditParams.

    Values of JSON-valued fields (``metadata``, ``orq`` and the routing knobs) may
    be JSON text, as multipart parts are; a list of texts (a list field sent as
    repeated parts) has each item read the same way, an item that is not JSON kept
    as the text it is. Raises InvalidRequest naming the field.
    """
    decoded = {
        name: _json_field(name, value) if name in JSON_FIELDS else value
        for name, value in fields.items()
    }
    prompt = decoded.get("prompt")
    if isinstance(prompt, str) and len(prompt) > max_prompt_chars:
        raise InvalidRequest(
            f"prompt is {len(prompt)} characters; the limit is {max_prompt_chars}", param="prompt"
        )
    routing = _routing(decoded)
    try:
        params = EditParams.model_validate({**decoded, "routing": routing})
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    if params.background == "transparent" and params.output_format == "jpeg":
        raise InvalidRequest(
            "background=transparent needs output_format png or webp", param="background"
        )
    return params


def _routing(decoded: Mapping[str, Any]) -> RoutingOptions:
    """Merge the knobs nested in ``orq`` with the top-level ones (top level wins)."""
    nested = decoded.get("orq") or {}
    if not isinstance(nested, dict):
        raise InvalidRequest("orq must be a JSON object", param="orq")
    try:
        RoutingOptions.model_validate(nested)
    except ValidationError as exc:
        raise invalid_request_from(exc, prefix="orq") from None
    merged = {name: nested[name] for name in ROUTING_FIELDS if name in nested}
    merged.update({name: decoded[name] for name in ROUTING_FIELDS if name in decoded})
    try:
        return RoutingOptions.model_validate(merged)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


def _json_field(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_json_item(item) for item in value]
    if not isinstance(value, str):
        return value
    if name == "webhook_events" and not value.lstrip().startswith("["):
        return value  # "job.succeeded,job.failed" as a plain form field
    try:
        return json.loads(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be valid JSON", param=name) from None
    except RecursionError:
        raise InvalidRequest(f"{name} is nested too deeply", param=name) from None


def _json_item(value: Any) -> Any:
    """One repeated part of a list field: ``500`` and ``{"model": ...}`` are JSON, a
    bare word such as ``job.failed`` is itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def invalid_request_from(exc: ValidationError, *, prefix: str | None = None) -> InvalidRequest:
    """The first pydantic error as an InvalidRequest whose ``param`` is the field's path."""
    error = exc.errors()[0]
    parts: list[str] = [prefix] if prefix else []
    for loc in error["loc"]:
        if isinstance(loc, int):
            parts[-1:] = [f"{parts[-1]}[{loc}]"] if parts else [f"[{loc}]"]
        else:
            parts.append(str(loc))
    param = ".".join(parts) or None
    message = error["msg"]
    if error["type"] == "missing":
        message = "is required"
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)
