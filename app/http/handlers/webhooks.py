"""HTTP handlers for webhooks: the signing secret and its rotation, a job's
deliveries, redelivery."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from app.core.edit_params import invalid_request_from
from app.core.webhooks import SigningSecrets
from app.errors import Conflict, NotFound
from app.http.app_keys import JOB_SERVICE, JOB_STORE, SETTINGS, WEBHOOKS
from app.http.middleware.errors import TENANT
from app.http.openapi import operation
from app.http.requests.submissions import read_json_object
from app.http.schema import (
    Deliveries,
    DeliveryEvent,
    RedeliverRequest,
    RotateSecretRequest,
    WebhookSecret,
)
from app.store.webhooks import WebhookEvent

Options = TypeVar("Options", bound=BaseModel)


@operation(
    "Webhook signing secret", tags=("webhooks",), replies={200: WebhookSecret}, errors=(503,)
)
async def webhook_secret(request: web.Request) -> web.Response:
    """GET /v1/webhooks/secret: the secret (whsec_...) this key's webhooks are signed
    with, and when the one a rotation replaced stops signing next to it."""
    secrets = await request.app[WEBHOOKS].signing_secrets(request[TENANT])
    return web.json_response(_secret_json(secrets))


@operation(
    "Rotate the webhook signing secret",
    tags=("webhooks",),
    json_body=RotateSecretRequest,
    body_required=False,
    replies={200: WebhookSecret},
    errors=(400, 408, 413, 503),
)
async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """POST /v1/webhooks/secret/rotate [{"expire_previous_in_s"}]: a new signing secret
    for this key. Until the secret it replaces expires (after 24 h by default, at most
    7 days, 0 for at once) every event carries a signature by each, so a receiver can
    switch to the new secret without rejecting an event."""
    options = await _options(request, RotateSecretRequest)
    secrets = await request.app[WEBHOOKS].rotate_secret(
        request[TENANT], keep_previous_s=options.expire_previous_in_s
    )
    return web.json_response(_secret_json(secrets))


def _secret_json(secrets: SigningSecrets) -> dict[str, Any]:
    expires_at = secrets.previous_expires_at(time.time())
    return {
        "object": "webhook.secret",
        "secret": secrets.current,
        "previous_expires_at": None if expires_at is None else int(expires_at),
    }


async def _options(request: web.Request, model: type[Options]) -> Options:
    """The request's JSON object body as ``model``, whose defaults stand in for a
    missing body; InvalidRequest (naming the field) if it is not one."""
    document = await read_json_object(request, request.app[SETTINGS]) if request.body_exists else {}
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


@operation(
    "A job's webhook deliveries", tags=("webhooks",), replies={200: Deliveries}, errors=(404, 503)
)
async def list_deliveries(request: web.Request) -> web.Response:
    """GET /v1/jobs/{id}/deliveries: the job's events and every delivery attempt."""
    job = await request.app[JOB_SERVICE].get(request.match_info["job_id"], request[TENANT])
    hooks = request.app[WEBHOOKS]
    events = [
        event.summary(await hooks.due_at(event.id)) for event in await hooks.events_of(job.id)
    ]
    attempts = [attempt.model_dump(mode="json") for attempt in await hooks.deliveries(job.id)]
    return web.json_response(
        {
            "object": "list",
            "webhook_url": job.spec.request.webhook_url,
            "events": events,
            "data": attempts,
        }
    )


@operation(
    "Redeliver a webhook event",
    tags=("webhooks",),
    json_body=RedeliverRequest,
    body_required=False,
    replies={202: DeliveryEvent},
    errors=(400, 404, 408, 409, 413, 503),
)
async def redeliver(request: web.Request) -> web.Response:
    """POST /v1/jobs/{id}/deliveries/redeliver [{"event_id"}]: send an event again now
    (the latest one by default), as a fresh series of attempts with the same id."""
    job = await request.app[JOB_SERVICE].get(request.match_info["job_id"], request[TENANT])
    url = job.spec.request.webhook_url
    if url is None:
        raise Conflict(f"job {job.id} has no webhook_url")
    hooks = request.app[WEBHOOKS]
    events = await hooks.events_of(job.id)
    wanted = (await _options(request, RedeliverRequest)).event_id
    chosen: WebhookEvent | None = events[-1] if events and wanted is None else None
    for event in events:
        if event.id == wanted:
            chosen = event
    if chosen is None:
        raise NotFound(
            f"job {job.id} has no event {wanted}" if wanted else f"job {job.id} has no events yet",
            param="event_id" if wanted else None,
        )
    await hooks.redeliver(chosen, url)
    await request.app[JOB_STORE].notify(job.id)
    return web.json_response(chosen.summary(None) | {"state": "pending", "attempts": 0}, status=202)
