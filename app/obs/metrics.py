"""Prometheus metrics: every metric editq exports, defined here and nowhere else.

Each process (an API, a worker) builds one ``Metrics`` with a registry of its own
(tests build as many as they like) and serves it in the Prometheus text format:
the API at ``GET /metrics``, a worker on ``EDITQ_WORKER_METRICS_PORT``.

Counters and histograms count what *this process* did: sum them across
instances. Gauges refreshed from Redis at scrape time (queue depth, upstream
slots) show state every instance shares: take their ``max``, not their sum.

The API also counts its HTTP requests by method, route template (``/v1/jobs/{job_id}``,
never the concrete path, so the series stay few) and status, with their latency.
``*_created`` series are not exported: they double every counter and histogram and
no dashboard reads them.

There is no gauge of jobs per status: counting them would mean scanning every
job record. ``editq_job_transitions_total{status}`` counts the status changes
each process applied instead (submits, starts, successes, failures, cancels);
its rates are the throughput and error figures.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.process_collector import ProcessCollector

from app.core.jobs import JobStatus, Lane

# What generate_latest writes (newer clients advertise 1.0.0 as "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LANES = tuple(lane.value for lane in Lane)
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")
PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 300)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route matched (a 404): one series for all of them."""
RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 240, 300, 360)


# Process-wide in prometheus_client (the library leaves this function untyped).
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The metric objects of one process, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and co.
        self.queue_depth = self._gauge(
            "editq_queue_depth", "Runs in a lane's arq queue: waiting, parked or running", "lane"
        )
        self.job_transitions = Counter(
            "editq_job_transitions",
            "Job status changes this process applied (queued: jobs created or retried)",
            ["status"],
            registry=self.registry,
        )
        self.pickup_latency = Histogram(
            "editq_pickup_latency_seconds",
            "From a run's enqueue to a worker claiming it (slot waits included)",
            ["lane"],
            buckets=PICKUP_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "editq_run_duration_seconds",
            "From a run's claim to its recorded outcome",
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.upstream_calls = Counter(
            "editq_upstream_calls",
            "Upstream calls by upstream and HTTP status (or error code when none came back)",
            ["upstream", "status"],
            registry=self.registry,
        )
        self.upstream_call_duration = Histogram(
            "editq_upstream_call_duration_seconds",
            "Time of one upstream call, whatever its outcome",
            ["upstream"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.upstream_slots_held = self._gauge(
            "editq_upstream_slots_held", "Unexpired upstream slots held by all workers", "upstream"
        )
        self.upstream_max_concurrency = self._gauge(
            "editq_upstream_max_concurrency", "An upstream's configured slot cap", "upstream"
        )
        self.webhook_deliveries = Counter(
            "editq_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.s3_errors = Counter(
            "editq_s3_errors", "Failed object storage calls", ["operation"], registry=self.registry
        )
        self.http_requests = Counter(
            "editq_http_requests",
            "API requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_request_duration = Histogram(
            "editq_http_request_duration_seconds",
            "From a request's arrival to its answer (a stream: to its end), by route template",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        for status in JobStatus:
            self.job_transitions.labels(status.value)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)

    def _gauge(self, name: str, documentation: str, label: str) -> Gauge:
        return Gauge(name, documentation, [label], registry=self.registry)

    def job_transition(self, status: JobStatus, count: int = 1) -> None:
        """Count ``count`` jobs moved to ``status`` (a JobStore/BatchStore hook)."""
        self.job_transitions.labels(status.value).inc(count)

    def pickup(self, enqueued_at: datetime | None, lane: Lane) -> None:
        """Record a claimed run's wait since arq's enqueue time (ignored when unknown)."""
        if enqueued_at is not None:
            seconds = (datetime.now(tz=UTC) - enqueued_at).total_seconds()
            self.pickup_latency.labels(lane.value).observe(max(0.0, seconds))

    def upstream_call(
        self, upstream: str, status: int | None, error_code: str | None, seconds: float
    ) -> None:
        """Count one upstream call; ``status`` None means no HTTP answer (``error_code``)."""
        label = str(status) if status is not None else (error_code or "error")
        self.upstream_calls.labels(upstream, label).inc()
        self.upstream_call_duration.labels(upstream).observe(seconds)

    def http_request(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one answered API request; ``route`` is its template, None when no route
        matched. An unknown method is labelled ``other``."""
        method = method if method in HTTP_METHODS else "other"
        route = route or UNMATCHED_ROUTE
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_request_duration.labels(method, route).observe(seconds)

    def s3_error(self, operation: str) -> None:
        """Count a failed object storage call (an ``ObjectStore`` hook)."""
        self.s3_errors.labels(operation).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
