"""What the fake Replicate knows: its models, its predictions, its error bodies, its edit.

A ``FakeModel`` is one model with its input schema (which field is the prompt, which the
image, whether the image is a list, the mask field and which mask pixels it edits). A
``FakePrediction`` is one prediction as Replicate's HTTP API shows it. ``problem``
builds Replicate's error answers (``{"title", "detail", "status"}``). ``render`` makes
the edit: the first image's colours inverted (where the mask says, if there is one),
as the OpenAI fake does.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageChops

from tests.support.fakes.upstream_edits import FORMATS, EditSpec, render_edit
from tests.support.fakes.upstream_faults import Fault
from tests.support.fakes.upstream_requests import BadRequest

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
"""Statuses a prediction never leaves."""

MODERATED_ERROR = (
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
)
"""The ``error`` of a prediction its model's safety checker refused."""

MAX_WAIT_S = 60
"""Longest ``Prefer: wait`` a create honours."""

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest input file fetched from a URL."""

OUTPUT_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
"""``output_format`` input values and the fake edit's format for each."""


@dataclass(frozen=True)
class FakeModel:
    """One model: ``name`` is ``owner/name``; ``version`` its one version id."""

    name: str
    version: str
    prompt_field: str = "prompt"
    image_field: str = "input_image"
    image_list: bool = False  # the image field takes a list of files (up to max_images)
    max_images: int = 1
    mask_field: str | None = None
    mask_edits_opaque: bool = False  # white/opaque mask pixels mark the area to edit
    output_list: bool = False  # ``output`` is a list of URLs, not one URL

    def check_input(self, inputs: object) -> list[dict[str, str]]:
        """Replicate's ``invalid_fields`` for ``inputs`` (empty when it is valid)."""
        if not isinstance(inputs, dict):
            return [_invalid("input", "required", "input is required and must be an object")]
        problems: list[dict[str, str]] = []
        prompt = inputs.get(self.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(_invalid(self.prompt_field, "required", "prompt is required"))
        image = inputs.get(self.image_field)
        files = image if self.image_list else [image]
        if (
            not isinstance(files, list)
            or not 1 <= len(files) <= self.max_images
            or not all(isinstance(f, str) and f for f in files)
        ):
            shape = f"a list of 1 to {self.max_images} files" if self.image_list else "a file"
            problems.append(_invalid(self.image_field, "type", f"must be {shape}"))
        mask = inputs.get("mask") if self.mask_field is None else inputs.get(self.mask_field)
        if self.mask_field is None and mask is not None:
            problems.append(_invalid("mask", "additional_property", "this model takes no mask"))
        elif mask is not None and not isinstance(mask, str):
            problems.append(_invalid(self.mask_field or "mask", "type", "must be a file"))
        fmt = inputs.get("output_format", "png")
        if fmt not in OUTPUT_FORMATS:
            problems.append(_invalid("output_format", "enum", f"must be one of {OUTPUT_FORMATS}"))
        return problems


def _invalid(name: str, kind: str, description: str) -> dict[str, str]:
    return {"type": kind, "field": f"input.{name}", "description": description}


@dataclass
class FakePrediction:
    """One prediction; ``to_json(origin)`` is what the API answers about it."""

    id: str
    model: FakeModel
    inputs: dict[str, Any]
    status: str = "starting"
    output_urls: list[str] = field(default_factory=list)
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    data_removed: bool = False
    predict_time_s: float | None = None

    @property
    def done(self) -> bool:
        """Whether the prediction reached a terminal status."""
        return self.status in TERMINAL

    def to_json(self, origin: str) -> dict[str, Any]:
        """The prediction object, with ``urls`` under ``origin``."""
        output: object = None
        if self.output_urls and not self.data_removed:
            output = list(self.output_urls) if self.model.output_list else self.output_urls[0]
        document: dict[str, Any] = {
            "id": self.id,
            "model": self.model.name,
            "version": self.model.version,
            "input": {} if self.data_removed else self.inputs,
            "logs": "",
            "output": output,
            "data_removed": self.data_removed,
            "error": self.error,
            "status": self.status,
            "created_at": _timestamp(self.created_at),
            "urls": {
                "get": f"{origin}/v1/predictions/{self.id}",
                "cancel": f"{origin}/v1/predictions/{self.id}/cancel",
                "web": f"{origin}/p/{self.id}",
            },
        }
        if self.started_at is not None:
            document["started_at"] = _timestamp(self.started_at)
        if self.completed_at is not None:
            document["completed_at"] = _timestamp(self.completed_at)
        if self.done and self.predict_time_s is not None:
            document["metrics"] = {"predict_time": self.predict_time_s, "image_count": 1}
        return document


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def problem(
    status: int, detail: str, *, title: str | None = None, retry_after: float | None = None
) -> Fault:
    """Replicate's error answer: ``{"title", "detail", "status"}`` (problem details),
    with a ``Retry-After`` header when ``retry_after`` is set."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    return Fault.raw(
        status,
        problem_body(status, detail, title=title),
        content_type="application/problem+json",
        headers=headers,
    )


def problem_response(status: int, detail: str, **extra: Any) -> web.Response:
    """A problem-details answer (``extra`` fields such as ``invalid_fields`` added)."""
    return web.Response(
        status=status,
        body=problem_body(status, detail, **extra),
        content_type="application/problem+json",
    )


def problem_body(status: int, detail: str, *, title: str | None = None, **extra: Any) -> bytes:
    """The JSON bytes of a problem-details body."""
    document = {"title": title or _TITLES.get(status, "Error"), "detail": detail, "status": status}
    return json.dumps({**document, **extra}).encode()


_TITLES = {
    401: "Unauthenticated",
    402: "Insufficient credit",
    403: "Forbidden",
    404: "Not found",
    422: "Input validation failed",
    429: "Too many requests",
    500: "Internal server error",
}

UNAUTHENTICATED = "You did not pass a valid authentication token"
NO_CREDIT = (
    "You have insufficient credit to run this model. "
    "Go to https://replicate.com/account/billing#billing to purchase credit."
)


def throttled(seconds: int, *, header: bool = True) -> Fault:
    """Replicate's 429: the wait in ``detail`` and, with ``header``, in ``Retry-After``."""
    unit = "second" if seconds == 1 else "seconds"
    detail = f"Request was throttled. Expected available in {seconds} {unit}."
    return problem(429, detail, retry_after=seconds if header else None)


def prefer_wait(value: str | None) -> float:
    """Seconds a ``Prefer`` header asks a create to wait: 0 without ``wait``,
    ``MAX_WAIT_S`` for a bare ``wait``; BadRequest (400) for a wait out of 1 to 60."""
    if value is None:
        return 0.0
    for preference in value.split(","):
        name, _, seconds = preference.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not seconds:
            return float(MAX_WAIT_S)
        if not seconds.strip().isdigit() or not 1 <= int(seconds) <= MAX_WAIT_S:
            raise BadRequest(f"Prefer: wait must be 1 to {MAX_WAIT_S} seconds", status=400)
        return float(seconds)
    return 0.0


async def read_file(client: aiohttp.ClientSession | None, value: str) -> bytes:
    """A file input's bytes: a data URI's, or an http(s) URL's, fetched as Replicate
    does; BadRequest saying why when neither works."""
    inline = data_uri_bytes(value)
    if inline is not None:
        return inline
    if not value.startswith(("http://", "https://")) or client is None:
        raise BadRequest(f"{value[:60]!r} is neither a URL nor a data URI")
    try:
        async with client.get(value, timeout=aiohttp.ClientTimeout(total=10)) as answer:
            body = await answer.content.read(MAX_FILE_BYTES + 1)
            if answer.status != 200 or len(body) > MAX_FILE_BYTES:
                raise BadRequest(f"could not fetch {value[:200]}: HTTP {answer.status}")
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BadRequest(f"could not fetch {value[:200]}: {exc!r}") from exc


def data_uri_bytes(value: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URI; None when ``value`` is not one."""
    head, sep, payload = value.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def render(
    images: list[bytes], mask: bytes | None, prompt: str, output_format: str, model: FakeModel
) -> tuple[bytes, str]:
    """The edited image and its content type (CPU work: run it in an executor).

    A mask in the model's opaque convention is turned to OpenAI's before the shared
    edit (``render_edit``) applies it. Raises the fake's BadRequest for undecodable input.
    """
    if mask is not None and model.mask_edits_opaque:
        mask = _invert_alpha(mask)
    fmt = OUTPUT_FORMATS[output_format]
    spec = EditSpec(
        prompt=prompt,
        images=tuple(images),
        mask=mask,
        n=1,
        size=None,
        output_format=fmt,
        compression=None,
        quality="auto",
    )
    image, _ = render_edit(spec)
    return image, FORMATS[fmt][1]


def _invert_alpha(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    image.putalpha(ImageChops.invert(image.getchannel("A")))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
