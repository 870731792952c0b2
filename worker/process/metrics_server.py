"""A worker's Prometheus endpoint: ``GET /metrics`` on a port of its own.

Served on ``EDITQ_WORKER_METRICS_HOST``:``EDITQ_WORKER_METRICS_PORT`` (0: not
served), without authentication: it shows counts and timings, never job data.
Each scrape first reads every upstream's held slots from Redis, next to its cap.
A port already in use is logged and skipped rather than fatal, so several workers
on one host still run (only the first serves metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web
from redis.exceptions import RedisError

from app.core.providers_config import UpstreamConfig
from app.obs.metrics import CONTENT_TYPE, Metrics
from worker.capacity.gate import UpstreamGate

log = logging.getLogger(__name__)


class MetricsServer:
    """Serves ``metrics`` over HTTP between ``start`` and ``stop``."""

    def __init__(
        self,
        metrics: Metrics,
        gate: UpstreamGate,
        upstreams: Sequence[UpstreamConfig],
        *,
        host: str,
        port: int,
    ) -> None:
        self._metrics = metrics
        self._gate = gate
        self._upstreams = list(upstreams)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen (unless the port is 0); a port in use is logged, not raised."""
        if self._port == 0:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            log.warning("worker metrics not served on port %d: %s", self._port, exc)
            await runner.cleanup()
            return
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        try:
            for upstream in self._upstreams:
                held = await self._gate.held(upstream.name)
                self._metrics.upstream_slots_held.labels(upstream.name).set(held)
                cap = self._metrics.upstream_max_concurrency.labels(upstream.name)
                cap.set(upstream.max_concurrency)
        except (RedisError, OSError) as exc:
            log.warning("upstream slots unavailable for /metrics: %s", exc)
            self._metrics.upstream_slots_held.clear()
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})
