"""Webhook events, as plain functions: ids, payloads, signatures and the retry schedule.

An event is one job transition a job's ``webhook_events`` asked for (or a batch's
completion). Its id, ``evt_{job id}_{run}_{status}`` (a batch's:
``evt_{batch id}_completed_{job id}_{run}``, naming the variant run that completed
it), is fixed when the transition happens, so every attempt and every redelivery
of it carries the same ``webhook-id`` and receivers can deduplicate. Bodies are
``{"type", "timestamp", "data": <job object>}`` and are signed the Standard Webhooks
way with the ``standardwebhooks`` library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

MAX_PROMPT_IN_EVENT = 2000
STANDARD_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MAX_RETRY_AFTER_S = 86400


def event_id(job_id: str, run: int, status: str) -> str:
    """The id of the event a job's transition to ``status`` in run ``run`` produces."""
    return f"evt_{job_id.removeprefix('job_')}_{run}_{status}"


def batch_completed_event_id(batch_id: str, job_id: str, run: int) -> str:
    """The id of the ``batch.completed`` event that run ``run`` of variant ``job_id``
    produces when it is the batch's last variant to finish (a batch completes again
    after a variant is retried, and each completion is its own event)."""
    return f"evt_{batch_id.removeprefix('batch_')}_completed_{job_id.removeprefix('job_')}_{run}"


def event_type(status: str) -> str:
    """``job.<status>``."""
    return f"job.{status}"


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form ``whsec_<base64>``."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def derived_secret(root: str, tenant: str) -> str:
    """The tenant's signing secret derived from the configured ``root`` (HMAC-SHA256):
    stable across processes and restarts, different for every tenant, and never the
    root itself, so no tenant can sign as another."""
    mac = hmac.new(root.encode(), b"editq webhook secret\x00" + tenant.encode(), hashlib.sha256)
    return "whsec_" + base64.b64encode(mac.digest()).decode()


def event_body(kind: str, occurred_at: float, job: dict[str, Any]) -> str:
    """The JSON body of an event; long prompts are cut so bodies stay small."""
    data = dict(job)
    request = dict(data.get("request") or {})
    prompt = request.get("prompt")
    if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_IN_EVENT:
        request["prompt"] = prompt[:MAX_PROMPT_IN_EVENT]
        request["prompt_truncated"] = True
    data["request"] = request
    timestamp = datetime.fromtimestamp(occurred_at, tz=UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": kind, "timestamp": timestamp, "data": data}, separators=(",", ":"))


def signed_headers(secret: str, message_id: str, body: str, now: datetime) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers."""
    signature = Webhook(secret).sign(message_id, now, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "editq-webhooks/1",
    }


def next_delay(
    attempts_made: int,
    schedule: Sequence[float],
    *,
    retry_after: float | None,
    rng: random.Random,
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones, or None when
    the schedule is exhausted. ``schedule[i]`` is the wait before attempt ``i + 1``
    (the first is normally 0); waits get ±10 % jitter; a receiver's ``Retry-After``
    (on 429/503) wins when longer."""
    if attempts_made >= len(schedule):
        return None
    base = float(schedule[attempts_made])
    delay = base * rng.uniform(0.9, 1.1) if base else 0.0
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"0,5,300"`` -> (0.0, 5.0, 300.0); ValueError for anything else."""
    values = tuple(float(item) for item in text.split(",") if item.strip())
    if not values or any(value < 0 for value in values):
        raise ValueError("a retry schedule is a comma-separated list of seconds >= 0")
    return values
