"""The Prometheus endpoint of the API."""

from __future__ import annotations

import logging

from aiohttp import web
from redis.exceptions import RedisError

from app.core.jobs import Lane
from app.http.app_keys import METRICS, QUEUE
from app.http.openapi import Reply, operation
from app.obs.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)


@operation(
    "Prometheus metrics",
    tags=("health",),
    replies={200: Reply(media_type=CONTENT_TYPE, description="the Prometheus text format")},
)
async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this process's metrics, with each lane's queue depth read now.

    Needs an API key unless ``EDITQ_METRICS_PUBLIC`` is true. When Redis does not
    answer, the depths are left out rather than reported stale.
    """
    registry = request.app[METRICS]
    try:
        for lane in Lane:
            depth = await request.app[QUEUE].depth(lane)
            registry.queue_depth.labels(lane.value).set(depth)
    except (RedisError, OSError) as exc:
        log.warning("queue depth unavailable for /metrics: %s", exc)
        registry.queue_depth.clear()
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE})
