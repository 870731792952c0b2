"""GET /v1/batches/{id}/download: every succeeded variant's outputs as one zip, streamed."""

from __future__ import annotations

import logging

from aiohttp import web

from app.blobs import ObjectStore
from app.core.jobs import StoredImage
from app.errors import EditqError
from app.http.app_keys import BATCH_SERVICE, STORAGE
from app.http.middleware.errors import REQUEST_ID, TENANT
from app.http.openapi import Reply, operation
from app.http.responses.streaming import started_stream
from app.http.responses.zip_stream import ZipStream

log = logging.getLogger(__name__)


@operation(
    "Download a batch's outputs",
    tags=("batches",),
    replies={200: Reply(media_type="application/zip", description="a zip, streamed")},
    errors=(404, 503),
)
async def download_batch(request: web.Request) -> web.StreamResponse:
    """A zip of the batch's outputs (``variant-0007-0.png``: variant 7, output 0), built
    while it streams; an output that cannot be read becomes a ``.error.txt`` member."""
    app = request.app
    service, storage = app[BATCH_SERVICE], app[STORAGE]
    batch = await service.get(request.match_info["batch_id"], request[TENANT])
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{batch.id}.zip"',
            "x-request-id": request[REQUEST_ID],
        }
    )
    async with started_stream(request, response, f"download of {batch.id}"):
        archive = ZipStream()
        index = 0
        async for job in service.all_jobs(batch):
            if job is not None and job.outcome is not None:
                modified = job.finished_at
                for number, output in enumerate(job.outcome.outputs):
                    name = f"variant-{index:04d}-{number}"
                    await response.write(await _member(archive, storage, name, output, modified))
            index += 1
        await response.write(archive.finish())
    return response


async def _member(
    archive: ZipStream, storage: ObjectStore, name: str, output: StoredImage, modified: float | None
) -> bytes:
    extension = output.key.rsplit(".", 1)[-1]
    try:
        data = await storage.get(output.key)
    except EditqError as exc:
        # The headers are sent: a readable archive that names the gap beats a broken one.
        log.warning("batch download: cannot read %s: %s", output.key, exc.message)
        return archive.add(f"{name}.error.txt", exc.message.encode(), modified=modified)
    return archive.add(f"{name}.{extension}", data, modified=modified)
