"""The arq task that POSTs one webhook event to its receiver and settles the outcome.

Success is a 2xx within ``webhook_timeout_s``; redirects are not followed (a 3xx
fails). A failure is retried on the Standard Webhooks schedule (a receiver's
``Retry-After`` on 429/503 wins when longer); 410 Gone stops all delivery to that
URL; an exhausted schedule marks the event failed. The job is untouched either way.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from app.core.jobs import names_a_batch
from app.core.public import batch_json
from app.core.webhooks import event_body, next_delay, signed_headers
from app.errors import EditqError
from app.net import check_url
from app.services.job_views import render_job
from app.store.webhooks import DeliveryAttempt, WebhookEvent
from worker.process.resources import CONTEXT_KEY, WorkerContext
from worker.providers.http.errors import parse_retry_after

log = logging.getLogger(__name__)

RETRY_AFTER_STATUSES = (429, 503)


@dataclass(frozen=True)
class PostResult:
    """What one POST got: the status (None if no answer), error text, Retry-After."""

    status: int | None
    error: str | None
    retry_after: float | None
    duration_ms: int


async def deliver_webhook(ctx: dict[str, Any], event_id: str) -> None:
    """Deliver event ``event_id`` once (arq task ``deliver_webhook``), under a lease like
    every running task (so a delivery outliving one lease is not started twice)."""
    context: WorkerContext = ctx[CONTEXT_KEY]
    async with context.leases.hold(ctx["job_id"], context.settings.queue_name):
        await _deliver(context, event_id)


async def _deliver(context: WorkerContext, event_id: str) -> None:
    event = await context.webhooks.get(event_id)
    if event is None or event.state != "pending":
        return
    subject = await _subject(context, event.subject)
    if subject is None:
        await _settle(context, event, "", PostResult(None, "its job or batch expired", None, 0))
        return
    url, data = subject
    if await context.webhooks.is_gone(event.tenant, url):
        result = PostResult(None, "the receiver answered 410 Gone earlier", None, 0)
        await _settle(context, event, url, result, final=True)
        return
    body = event.body
    if body is None:
        body = event_body(event.type, event.created_at, await data())
        await context.webhooks.keep_body(event.id, body)
    result = await _post(context, event, url, body)
    await _settle(context, event, url, result)


async def _subject(
    context: WorkerContext, subject_id: str
) -> tuple[str, Callable[[], Awaitable[dict[str, Any]]]] | None:
    """The webhook URL of a job or batch and how to render it for the event body."""
    if names_a_batch(subject_id):
        batch = await context.batches.get(subject_id)
        if batch is None or batch.spec.webhook_url is None:
            return None

        async def batch_data() -> dict[str, Any]:
            return batch_json(batch)

        return batch.spec.webhook_url, batch_data
    job = await context.store.get(subject_id)
    if job is None or job.spec.request.webhook_url is None:
        return None

    async def job_data() -> dict[str, Any]:
        return await render_job(job, context.storage)

    return job.spec.request.webhook_url, job_data


async def _post(context: WorkerContext, event: WebhookEvent, url: str, body: str) -> PostResult:
    settings = context.settings
    secrets = await context.webhooks.signing_secrets(event.tenant)
    headers = signed_headers(secrets, event.id, body, datetime.now(tz=UTC))
    began = time.monotonic()

    def elapsed() -> int:
        return round((time.monotonic() - began) * 1000)

    try:
        target = check_url(url, param="webhook_url", allow_private=settings.allow_private_urls)
        async with context.webhook_http.post(
            target,
            data=body.encode(),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s),
        ) as response:
            await response.content.read(64 * 1024)  # drain a little; the body is not used
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return PostResult(response.status, None, retry_after, elapsed())
    except EditqError as exc:
        return PostResult(None, f"refused: {exc.message}", None, elapsed())
    except TimeoutError:
        return PostResult(
            None, f"no answer within {settings.webhook_timeout_s:g} s", None, elapsed()
        )
    except (aiohttp.ClientError, OSError) as exc:
        return PostResult(None, f"connection failed: {exc}", None, elapsed())


async def _settle(
    context: WorkerContext,
    event: WebhookEvent,
    url: str,
    result: PostResult,
    *,
    final: bool = False,
) -> None:
    attempt_no = event.attempts + 1
    status = result.status
    next_due: float | None = None
    if status is not None and 200 <= status < 300:
        outcome = "delivered"
    elif status == 410 or final:
        outcome = "failed"
        if status == 410:
            await context.webhooks.mark_gone(event.tenant, url)
    else:
        retry_after = result.retry_after if status in RETRY_AFTER_STATUSES else None
        delay = next_delay(
            attempt_no,
            context.settings.retry_schedule,
            retry_after=retry_after,
            rng=random.Random(),
        )
        outcome = "failed" if delay is None else "retrying"
        next_due = None if delay is None else time.time() + delay
    error = result.error
    if error is None and outcome != "delivered":
        error = f"the receiver answered {status}"
    attempt = DeliveryAttempt(
        event_id=event.id,
        type=event.type,
        attempt=attempt_no,
        at=time.time(),
        url=url,
        status_code=status,
        duration_ms=result.duration_ms,
        error=error,
        outcome=outcome,
    )
    await asyncio.shield(context.webhooks.record(event, attempt, next_due))
    context.metrics.webhook_deliveries.labels(outcome).inc()
    log.info("webhook %s attempt %d: %s (%s)", event.id, attempt_no, outcome, status)
