"""Reading a batch request: shared defaults (images included once) plus variants.

JSON: ``{"defaults": {<edit fields>, "images": [...], "mask": ...}, "variants": [{...}]
| "n": N, "webhook_url", "webhook_events", "metadata"}``. Multipart: the image files
as in an edit request, plus ``defaults``, ``variants`` (JSON parts), ``n``,
``webhook_url``, ``webhook_events`` and ``metadata``. Each variant is the defaults
overlaid with its own fields and validated like an edit request; an error names the
variant (``variants[3].size``) or the default (``defaults.size``) at fault.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from app.core.edit_params import EditParams, invalid_request_from, parse_edit_params, unmodeled
from app.core.submissions import BatchOptions, BatchSubmission
from app.core.validation import in_variant
from app.errors import InvalidRequest, UnsupportedMediaType
from app.http.requests.decoding import ImageDecoder
from app.http.requests.form_fields import FormShape
from app.http.requests.ignored import note_ignored
from app.http.requests.submissions import (
    LoadFile,
    check_inputs,
    document_images,
    read_json_object,
    read_raw,
)
from app.settings import Settings

BATCH_FIELDS = ("webhook_url", "webhook_events", "metadata")
BATCH_FORM = FormShape(
    lists=("variants", "webhook_events"), singles=("defaults", "n", "webhook_url", "metadata")
)
"""The form fields of a batch request."""

YIELD_EVERY = 500  # variants validated between two turns of the event loop


async def read_batch_submission(
    request: web.Request,
    settings: Settings,
    decoder: ImageDecoder,
    fetch_session: aiohttp.ClientSession,
    load_file: LoadFile,
) -> BatchSubmission:
    """Parse and check a batch request; raises an EditqError naming the field at fault."""
    if request.content_type == "multipart/form-data":
        raw = await read_raw(request, settings, fetch_session, load_file, BATCH_FORM)
        top: dict[str, Any] = {k: _json_part(k, v) for k, v in raw.fields.items()}
        defaults = top.get("defaults") or {}
    elif request.content_type == "application/json":
        top = await read_json_object(request, settings)
        defaults = top.get("defaults")
        if not isinstance(defaults, dict):
            raise InvalidRequest("defaults must be an object of edit fields", param="defaults")
        raw = await document_images(
            defaults, settings, fetch_session, load_file, prefix="defaults."
        )
        defaults = raw.fields
    else:
        raise UnsupportedMediaType("send a batch as application/json or multipart/form-data")
    if not isinstance(defaults, dict):
        raise InvalidRequest("defaults must be a JSON object", param="defaults")
    options = _options(top)
    overrides = _variants(top, settings.max_batch_variants)
    shared = {k: v for k, v in defaults.items() if k not in ("webhook_url", "webhook_events")}
    variants = []
    for index, override in enumerate(overrides):
        variants.append(_variant(shared, override, index, settings))
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)  # 10,000 validations must not hold the loop at once
    checked = await check_inputs(raw.images, raw.mask, settings, decoder, variants[0], raw.stored)
    note_ignored(request, _ignored(top, defaults, overrides))
    return BatchSubmission(
        variants,
        checked.images,
        checked.mask,
        options,
        [frozenset(override) for override in overrides],
    )


def _ignored(
    top: dict[str, Any], defaults: dict[str, Any], overrides: list[dict[str, Any]]
) -> list[str]:
    """The batch's fields that are neither batch nor edit fields, by their path."""
    known = {*BATCH_FORM.lists, *BATCH_FORM.singles}
    names = [name for name in top if name not in known]
    names.extend(f"defaults.{name}" for name in unmodeled(defaults))
    in_variants = {name for override in overrides for name in override} - {"images", "mask"}
    names.extend(f"variants[].{name}" for name in unmodeled(in_variants))
    return sorted(names)


def _json_part(name: str, value: Any) -> Any:
    """A batch form field's value: ``defaults``, ``variants`` and ``metadata`` are JSON
    text, and so is each repeated ``variants[]`` part (an object)."""
    if name not in ("defaults", "variants", "metadata"):
        return value
    if isinstance(value, list):
        return [_json_text(f"{name}[{index}]", item) for index, item in enumerate(value)]
    return _json_text(name, value)


def _json_text(param: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"{param} must be valid JSON", param=param) from None


def _options(top: dict[str, Any]) -> BatchOptions:
    try:
        return BatchOptions.model_validate({k: top[k] for k in BATCH_FIELDS if k in top})
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    except ValueError:
        raise InvalidRequest("webhook_events must be a list", param="webhook_events") from None


def _variants(top: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    variants, count = top.get("variants"), top.get("n")
    if variants is not None and count is not None:
        raise InvalidRequest("send either variants or n, not both", param="n")
    if variants is None:
        try:
            number = int(float(count)) if count is not None else 0
        except (TypeError, ValueError, OverflowError):  # "inf", 1e400, -Infinity
            raise InvalidRequest("n must be a whole number", param="n") from None
        if not 1 <= number <= limit:
            raise InvalidRequest(f"n must be between 1 and {limit}", param="n")
        return [{} for _ in range(number)]
    if not isinstance(variants, list) or not variants:
        raise InvalidRequest("variants must be a non-empty list of objects", param="variants")
    if len(variants) > limit:
        raise InvalidRequest(
            f"{len(variants)} variants sent; at most {limit} are allowed", param="variants"
        )
    for index, variant in enumerate(variants):
        if not isinstance(variant, dict):
            raise InvalidRequest("each variant must be an object", param=f"variants[{index}]")
    return variants


def _variant(
    defaults: dict[str, Any], override: dict[str, Any], index: int, settings: Settings
) -> EditParams:
    fields = {**defaults, **{k: v for k, v in override.items() if k not in ("images", "mask")}}
    try:
        return parse_edit_params(fields, max_prompt_chars=settings.max_prompt_chars)
    except InvalidRequest as exc:
        raise in_variant(exc, index, override) from None
