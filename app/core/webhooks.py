"""Webhook events, as plain functions: ids, payloads, signatures and the retry schedule.

An event is one job transition a job's ``webhook_events`` asked for (or a batch's
completion). Its id, ``evt_{job id}_{run}_{status}`` (a batch's:
``evt_{batch id}_completed_{job id}_{run}``, naming the variant run that completed
it), is fixed when the transition happens, so every attempt and every redelivery
of it carries the same ``webhook-id`` and receivers can deduplicate. Bodies are
``{"type", "timestamp", "data": <job object>}`` and are signed the Standard Webhooks
way with the ``standardwebhooks`` library.

A tenant can rotate its secret. The one it replaced keeps signing events next to the
new one until its overlap ends (``webhook-signature`` then carries two ``v1,<sig>``
entries, which Standard Webhooks receivers check one by one), so a receiver can
switch secrets without rejecting a single event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

MAX_PROMPT_IN_EVENT = 2000
STANDARD_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MAX_RETRY_AFTER_S = 86400
PREVIOUS_SECRET_DEFAULT_S = 24 * 3600
PREVIOUS_SECRET_MAX_S = 7 * 24 * 3600
"""How long, by default and at most, a rotated-out secret keeps signing (seconds)."""


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


def derived_secret(root: str, tenant: str, generation: int = 0) -> str:
    """The tenant's signing secret derived from the configured ``root`` (HMAC-SHA256):
    stable across processes and restarts, different for every tenant and every
    ``generation`` (how many times the tenant rotated), and never the root itself, so
    no tenant can sign as another."""
    message = b"editq webhook secret\x00" + tenant.encode()
    if generation:  # generation 0 keeps the secret keys had before rotation existed
        message += b"\x00" + str(generation).encode()
    mac = hmac.new(root.encode(), message, hashlib.sha256)
    return "whsec_" + base64.b64encode(mac.digest()).decode()


@dataclass(frozen=True)
class SigningSecrets:
    """A tenant's signing secrets: the current one and, after a rotation, the one it
    replaced, which keeps signing until ``previous_until`` (seconds since the epoch)."""

    current: str
    previous: str | None = None
    previous_until: float | None = None

    def previous_expires_at(self, now: float) -> float | None:
        """When the previous secret stops signing, or None if it already has at ``now``."""
        if self.previous is None or self.previous_until is None or now >= self.previous_until:
            return None
        return self.previous_until

    def in_use(self, now: float) -> tuple[str, ...]:
        """The secrets an event sent at ``now`` is signed with, the current one first."""
        if self.previous is None or self.previous_expires_at(now) is None:
            return (self.current,)
        return (self.current, self.previous)


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


def signed_headers(
    secrets: SigningSecrets, message_id: str, body: str, now: datetime
) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers of a
    delivery at ``now``: one space-separated ``v1,<sig>`` per secret in use then."""
    signature = " ".join(
        Webhook(secret).sign(message_id, now, body) for secret in secrets.in_use(now.timestamp())
    )
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
