"""GET /v1/queue: the queue's numbers for people (the dashboard's queue page)."""

from __future__ import annotations

from aiohttp import web

from app.http.app_keys import QUEUE_STATS
from app.http.openapi import operation
from app.services.queue_stats import QueueSnapshot


@operation("Queue status", tags=("queue",), replies={200: QueueSnapshot}, errors=(503,))
async def queue_status(request: web.Request) -> web.Response:
    """Each lane's depth and whether a worker serves it, and each upstream's calls in
    flight against its ``max_concurrency`` (across all workers) and jobs waiting."""
    snapshot = await request.app[QUEUE_STATS].read()
    return web.json_response(snapshot.public())
