"""arq's WorkerSettings for editq, derived from the one ``Settings``.

- payloads are JSON (``app.dispatch``), never pickle;
- ``job_timeout`` is the upstream budget plus time to store the outputs;
- ``max_jobs`` is high: a running job mostly waits on an upstream;
- ``poll_delay`` is a few milliseconds, so pickup takes tens of milliseconds;
- ``keep_result=0``: job state lives in editq's own records, not arq's results;
- the health check key is refreshed every ``worker_health_check_interval_s``.
"""

from __future__ import annotations

from typing import Any

from arq.worker import func

from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig
from app.dispatch import (
    DELIVER_TASK,
    EDIT_TASK,
    deserialize,
    health_check_key,
    lane_queue,
    redis_settings,
    serialize,
)
from app.settings import Settings
from worker.runs.task import run_edit
from worker.webhooks.delivery import deliver_webhook

STORE_MARGIN_S = 90  # output stores may retry for 55 s past the upstream budget
# Runs are re-delivered after crashes, shutdowns and slot waits; editq's records decide
# whether a run is still current, so arq's try counter must not end a job first.
MAX_DELIVERIES = 1_000_000_000


def worker_settings(settings: Settings, providers: ProvidersConfig, lane: Lane) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` serving one lane (interactive or bulk).

    Start-up and shutdown are the caller's (``worker.process.lanes``): both lanes of a
    process share one context.
    """
    return {
        "functions": [
            func(run_edit, name=EDIT_TASK, max_tries=MAX_DELIVERIES),
            func(
                deliver_webhook,
                name=DELIVER_TASK,
                max_tries=MAX_DELIVERIES,
                timeout=settings.webhook_timeout_s + STORE_MARGIN_S,
            ),
        ],
        "queue_name": lane_queue(settings.queue_name, lane),
        "redis_settings": redis_settings(settings.redis_url),
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.attempt_budget_s + STORE_MARGIN_S,
        "keep_result": 0,
        "poll_delay": settings.worker_poll_delay_s,
        "queue_read_limit": 100,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "health_check_interval": settings.worker_health_check_interval_s,
        "health_check_key": health_check_key(settings.queue_name, lane),
        "max_tries": MAX_DELIVERIES,
    }
