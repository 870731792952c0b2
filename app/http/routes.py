"""The URL table of the HTTP API."""

from __future__ import annotations

from aiohttp import web

from app.http.handlers import (
    batch_download,
    batches,
    docs,
    events,
    files,
    health,
    images_compat,
    job_inputs,
    jobs,
    metrics,
    models,
    queue_status,
    ui,
    webhooks,
)


def add_routes(app: web.Application) -> None:
    """Register every endpoint on ``app``."""
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/docs", docs.docs)
    app.router.add_get("/openapi.json", docs.openapi_json)
    app.router.add_get("/metrics", metrics.metrics)
    app.router.add_get("/", ui.root)
    app.router.add_get("/ui", ui.index)
    app.router.add_get("/ui/{name:[^/]*}", ui.asset)
    app.router.add_get("/v1/queue", queue_status.queue_status)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model_id:.+}", models.get_model)
    app.router.add_post("/v1/jobs", jobs.submit_job)
    app.router.add_get("/v1/jobs", jobs.list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", jobs.get_job)
    app.router.add_get("/v1/jobs/{job_id}/events", events.job_events)
    app.router.add_post("/v1/jobs/{job_id}/events/url", events.job_stream_url)
    app.router.add_get("/v1/jobs/{job_id}/inputs", job_inputs.job_inputs)
    app.router.add_post("/v1/jobs/{job_id}/cancel", jobs.cancel_job)
    app.router.add_post("/v1/jobs/{job_id}/retry", jobs.retry_job)
    app.router.add_get("/v1/jobs/{job_id}/deliveries", webhooks.list_deliveries)
    app.router.add_post("/v1/jobs/{job_id}/deliveries/redeliver", webhooks.redeliver)
    app.router.add_get("/v1/webhooks/secret", webhooks.webhook_secret)
    app.router.add_post("/v1/webhooks/secret/rotate", webhooks.rotate_webhook_secret)
    app.router.add_post("/v1/batches", batches.submit_batch)
    app.router.add_get("/v1/batches", batches.list_batches)
    app.router.add_get("/v1/batches/{batch_id}", batches.get_batch)
    app.router.add_get("/v1/batches/{batch_id}/jobs", batches.batch_jobs)
    app.router.add_get("/v1/batches/{batch_id}/results", batches.batch_results)
    app.router.add_get("/v1/batches/{batch_id}/events", events.batch_events)
    app.router.add_post("/v1/batches/{batch_id}/events/url", events.batch_stream_url)
    app.router.add_get("/v1/batches/{batch_id}/download", batch_download.download_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", batches.cancel_batch)
    app.router.add_post("/v1/files", files.upload_file)
    app.router.add_get("/v1/files", files.list_files)
    app.router.add_get("/v1/files/{file_id}", files.get_file)
    app.router.add_delete("/v1/files/{file_id}", files.delete_file)
    app.router.add_get("/v1/files/{file_id}/content", files.file_content)
    app.router.add_post("/v1/images/edits", images_compat.edit_image)
    app.router.add_post("/v2/router/images/edits", images_compat.edit_image)
