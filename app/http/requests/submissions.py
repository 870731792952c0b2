"""Reading an edit request off the wire, in either shape the seeds document.

``multipart/form-data``: text fields plus ``image`` / ``image[]`` files and ``mask``.
``application/json``: the same fields with ``images: [{"image_url": ...}]`` and
``mask: {"image_url": ...}``, each a base64 data URL or an http(s) URL fetched now,
concurrently, through the SSRF guard (``app.net``), or ``{"file_id": ...}``, the bytes
of the tenant's uploaded file (``app.services.files``). Both end as one
``Submission``: validated parameters and decoded, checked images. Sizes are enforced
while reading, so an oversized body or remote image is refused before it is held in
memory, and the whole body must arrive within ``body_read_timeout_s`` (else 408), so a
stalled or slow-loris upload cannot hold a connection.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import web

from app.core.concurrency import gather_or_cancel
from app.core.edit_params import (
    LIST_FIELDS,
    SINGLE_FIELDS,
    EditParams,
    parse_edit_params,
    unmodeled,
)
from app.core.images import check_mask, decode_data_url
from app.core.submissions import Submission
from app.errors import InvalidRequest, UnsupportedMediaType
from app.http.requests.bodies import (
    IMAGE_FIELDS,
    MASK_FIELD,
    Form,
    body_deadline,
    image_param,
    read_body,
    read_form,
    refuse_declared_length,
)
from app.http.requests.decoding import ImageDecoder
from app.http.requests.form_fields import FormShape, form_fields
from app.http.requests.ignored import note_ignored
from app.net import check_url, fetch_bounded
from app.settings import Settings

LoadFile = Callable[[object, str], Awaitable[tuple[bytes, str]]]
"""The bytes of the caller's uploaded file with this id (named by the param, which an
unknown id's InvalidRequest names) and the object key holding them:
``FileService.load`` bound to the request's tenant."""

EDIT_FORM = FormShape(lists=LIST_FIELDS, singles=SINGLE_FIELDS)
"""The form fields of an edit request."""


@dataclass
class RawRequest:
    """A request's fields and undecoded image bytes (each with the param naming it)."""

    fields: dict[str, Any]
    images: list[tuple[str, bytes]]
    mask: tuple[str, bytes] | None
    stored: dict[str, str] = field(default_factory=dict)  # param -> object key (file_id)


async def read_submission(
    request: web.Request,
    settings: Settings,
    decoder: ImageDecoder,
    fetch_session: aiohttp.ClientSession,
    load_file: LoadFile,
) -> Submission:
    """Parse, size-check and decode the request; raises an EditqError naming the field.

    ``fetch_session`` (a ``url_guard.guarded_session``) fetches remote ``image_url``
    inputs; ``load_file`` reads ``file_id`` ones.
    """
    raw = await read_raw(request, settings, fetch_session, load_file)
    params = parse_edit_params(raw.fields, max_prompt_chars=settings.max_prompt_chars)
    note_ignored(request, unmodeled(raw.fields))
    return await check_inputs(raw.images, raw.mask, settings, decoder, params, raw.stored)


async def read_raw(
    request: web.Request,
    settings: Settings,
    fetch_session: aiohttp.ClientSession,
    load_file: LoadFile,
    shape: FormShape = EDIT_FORM,
) -> RawRequest:
    """The request's fields and image bytes, in either shape, with sizes enforced; a
    form body's fields read by ``form_fields`` with ``shape``."""
    refuse_declared_length(request, settings.max_body_bytes)
    if request.content_type == "multipart/form-data":
        async with body_deadline(settings):
            form = await read_form(request, settings)
        raw = _raw_from_form(form, settings, shape)
    elif request.content_type == "application/json":
        document = await read_json_object(request, settings)
        raw = await document_images(document, settings, fetch_session, load_file)
    elif request.content_type == "application/x-www-form-urlencoded":
        async with body_deadline(settings):
            posted = await request.post()  # fields only: files need multipart
        pairs = [(k, v) for k, v in posted.items() if isinstance(v, str)]
        raw = RawRequest(fields=dict(form_fields(pairs, shape)), images=[], mask=None)
    else:
        raise UnsupportedMediaType(
            f"content type {request.content_type or 'none'} is not accepted; "
            "send multipart/form-data or application/json"
        )
    return raw


async def check_inputs(
    images: list[tuple[str, bytes]],
    mask: tuple[str, bytes] | None,
    settings: Settings,
    decoder: ImageDecoder,
    params: EditParams,
    stored: Mapping[str, str] | None = None,
) -> Submission:
    """Check the count, every image (within the decoder's pixel budgets) and the mask;
    whatever the headers show is refused before any image is decoded. ``stored`` maps
    the params of images already in object storage (``file_id``) to their keys, so the
    job's copy is made there, server-side."""
    if not images:
        raise InvalidRequest("at least one image is required", param="image")
    if len(images) > settings.max_images:
        raise InvalidRequest(
            f"{len(images)} images sent; at most {settings.max_images} are allowed", param="image"
        )
    inputs = [*images, *([mask] if mask is not None else [])]
    declared = decoder.read_headers(inputs)
    if mask is not None:
        check_mask(declared[-1], declared[0], param=mask[0])
    decoded = [
        replace(image, stored_at=(stored or {}).get(param))
        for (param, _), image in zip(inputs, await decoder.decode(inputs, declared), strict=True)
    ]
    checked_mask = decoded[-1] if mask is not None else None
    return Submission(params=params, images=decoded[: len(images)], mask=checked_mask)


def _raw_from_form(form: Form, settings: Settings, shape: FormShape) -> RawRequest:
    """The fields, images and mask of a parsed multipart body."""
    raw = RawRequest(fields={}, images=[], mask=None)
    texts: list[tuple[str, str]] = []
    for part in form.checked_parts():
        if part.name in IMAGE_FIELDS:
            if len(raw.images) >= settings.max_images:
                raise InvalidRequest(f"more than {settings.max_images} images sent", param="image")
            raw.images.append((image_param(len(raw.images)), part.data))
        elif part.name == MASK_FIELD:
            raw.mask = (MASK_FIELD, part.data)
        else:
            try:
                texts.append((part.name, part.data.decode("utf-8")))
            except UnicodeDecodeError:
                raise InvalidRequest(f"{part.name} is not valid UTF-8", param=part.name) from None
    raw.fields.update(form_fields(texts, shape))
    return raw


async def read_json_object(request: web.Request, settings: Settings) -> dict[str, Any]:
    """The request body as a JSON object, size-limited; InvalidRequest otherwise."""
    async with body_deadline(settings):
        body = await read_body(request, settings.max_body_bytes)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidRequest("request body must be a JSON object")
    return document


async def document_images(
    document: dict[str, Any],
    settings: Settings,
    fetch_session: aiohttp.ClientSession,
    load_file: LoadFile,
    *,
    prefix: str = "",
) -> RawRequest:
    """Take ``images``/``mask`` out of a JSON request object and load their bytes;
    the rest of the object is the request's fields. ``prefix`` goes before params."""
    images = document.pop("images", None)
    mask = document.pop("mask", None)
    if images is None and isinstance(document.get("image"), list | dict | str):
        images = document.pop("image")
    if isinstance(images, dict | str):
        images = [images]
    if not isinstance(images, list) or not images:
        raise InvalidRequest(
            "images must be a non-empty list of {image_url} or {file_id}",
            param=f"{prefix}images",
        )
    if len(images) > settings.max_images:  # before anything is decoded or fetched
        raise InvalidRequest(
            f"{len(images)} images sent; at most {settings.max_images} are allowed",
            param=f"{prefix}images",
        )
    references = [_image_reference(item, f"{prefix}images[{i}]") for i, item in enumerate(images)]
    if mask is not None:
        references.append(_image_reference(mask, f"{prefix}mask"))
    sources = await gather_or_cancel(
        [_load(reference, settings, fetch_session, load_file) for reference in references]
    )
    loaded = [(param, data) for param, data, _ in sources]
    stored = {param: key for param, _, key in sources if key is not None}
    if mask is not None:
        return RawRequest(fields=document, images=loaded[:-1], mask=loaded[-1], stored=stored)
    return RawRequest(fields=document, images=loaded, mask=None, stored=stored)


@dataclass(frozen=True)
class _Reference:
    """One image as a JSON body names it: by ``image_url`` or by ``file_id``."""

    param: str  # where it is named: images[0].image_url, mask.file_id
    url: str | None
    file_id: object = None


def _image_reference(item: object, param: str) -> _Reference:
    if isinstance(item, str):
        url: object = item
    elif isinstance(item, Mapping):
        if "file_id" in item and "image_url" not in item:
            return _Reference(f"{param}.file_id", None, item["file_id"])
        url = item.get("image_url")
        if isinstance(url, Mapping):  # the chat-completions shape {"image_url": {"url": ...}}
            url = url.get("url")
    else:
        raise InvalidRequest(f"{param} must be an object with image_url or file_id", param=param)
    if not isinstance(url, str):
        raise InvalidRequest(f"{param}.image_url must be a string", param=f"{param}.image_url")
    return _Reference(f"{param}.image_url", url)


async def _load(
    reference: _Reference,
    settings: Settings,
    fetch_session: aiohttp.ClientSession,
    load_file: LoadFile,
) -> tuple[str, bytes, str | None]:
    """The bytes ``reference`` names, with its param and, for a file, its object key."""
    if reference.url is None:
        data, key = await load_file(reference.file_id, reference.param)
        return reference.param, data, key
    param, data = await _load_image(reference.param, reference.url, settings, fetch_session)
    return param, data, None


async def _load_image(
    param: str, url: str, settings: Settings, fetch_session: aiohttp.ClientSession
) -> tuple[str, bytes]:
    """The bytes behind one ``image_url``: a data URL decoded, an http(s) URL fetched."""
    scheme = url.partition(":")[0].lower()
    if scheme in ("http", "https"):
        target = check_url(url, param=param, allow_private=settings.allow_private_urls)
        data = await fetch_bounded(
            fetch_session,
            target,
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.remote_fetch_timeout_s,
            param=param,
        )
        return param, data
    if scheme != "data":
        raise InvalidRequest(
            f"{param} must be an http(s) URL or a base64 data URL (data:image/png;base64,...)",
            param=param,
        )
    return param, decode_data_url(url, param=param, max_bytes=settings.max_image_bytes)
