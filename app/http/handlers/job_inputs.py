"""GET /v1/jobs/{id}/inputs: presigned links to a job's input images and mask."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.blobs import ObjectStore
from app.core.jobs import StoredImage
from app.http.app_keys import JOB_SERVICE, STORAGE
from app.http.middleware.errors import TENANT
from app.http.openapi import operation
from app.http.schema import JobInputLinks


@operation("A job's input images", tags=("jobs",), replies={200: JobInputLinks}, errors=(404, 503))
async def job_inputs(request: web.Request) -> web.Response:
    """The job's input images and mask (or null), each with a presigned ``url`` (valid
    for ``EDITQ_URL_EXPIRY_S``), ``content_type``, ``bytes``, ``width`` and ``height``."""
    job = await request.app[JOB_SERVICE].get(request.match_info["job_id"], request[TENANT])
    storage = request.app[STORAGE]
    inputs = job.spec.inputs
    return web.json_response(
        {
            "object": "edit.job.inputs",
            "job_id": job.id,
            "images": [_linked(image, storage) for image in inputs.images],
            "mask": None if inputs.mask is None else _linked(inputs.mask, storage),
        }
    )


def _linked(image: StoredImage, storage: ObjectStore) -> dict[str, Any]:
    return {
        "url": storage.presigned_url(image.key),
        "content_type": image.content_type,
        "bytes": image.bytes,
        "width": image.width,
        "height": image.height,
    }
