"""HTTP handlers of the Files API (OpenAI's shape): upload, list, read, read the
content of and delete the caller's files."""

from __future__ import annotations

import time

from aiohttp import web

from app.errors import InvalidRequest
from app.http.app_keys import FILE_SERVICE, IMAGE_DECODER, SETTINGS
from app.http.middleware.errors import TENANT
from app.http.openapi import Reply, operation
from app.http.requests.file_uploads import read_upload
from app.http.requests.query import MAX_PAGE, float_query
from app.http.responses.lists import list_page
from app.http.schema import FileDeleted, FileList, FileObject, FilePageQuery, FileUploadForm


@operation(
    "Upload a file",
    tags=("files",),
    form_body=FileUploadForm,
    replies={200: FileObject},
    errors=(400, 408, 413, 415, 503),
)
async def upload_file(request: web.Request) -> web.Response:
    """POST /v1/files: store an input image once, to name it by ``file_id`` in edit
    requests (``images: [{"file_id": ...}]``, ``mask: {"file_id": ...}``)."""
    app, now = request.app, int(time.time())
    upload = await read_upload(request, app[SETTINGS], app[IMAGE_DECODER], created_at=now)
    record = await app[FILE_SERVICE].create(
        request[TENANT],
        upload.image,
        filename=upload.filename,
        purpose=upload.purpose,
        created_at=now,
        expires_at=upload.expires_at,
    )
    return web.json_response(record.public())


@operation(
    "List files",
    tags=("files",),
    query=FilePageQuery,
    replies={200: FileList},
    errors=(400, 503),
)
async def list_files(request: web.Request) -> web.Response:
    """GET /v1/files?after=&limit=&order=&purpose=: the caller's live files."""
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", param="order")
    page = await request.app[FILE_SERVICE].page(
        request[TENANT],
        limit=int(float_query(request, "limit", 20, 1, MAX_PAGE)),
        after=request.query.get("after") or None,
        newest_first=order == "desc",
        purpose=request.query.get("purpose") or None,
    )
    data = [record.public() for record in page.files]
    return web.json_response(list_page(data, has_more=page.has_more, last_id=page.last_id))


@operation("Read a file", tags=("files",), replies={200: FileObject}, errors=(404, 503))
async def get_file(request: web.Request) -> web.Response:
    """GET /v1/files/{file_id}."""
    record = await request.app[FILE_SERVICE].get(request.match_info["file_id"], request[TENANT])
    return web.json_response(record.public())


@operation(
    "Read a file's content",
    tags=("files",),
    replies={
        200: Reply(
            media_type="application/octet-stream", description="the file's bytes, as uploaded"
        )
    },
    errors=(404, 503),
)
async def file_content(request: web.Request) -> web.Response:
    """GET /v1/files/{file_id}/content: the bytes, with the image's content type."""
    record, data = await request.app[FILE_SERVICE].content(
        request.match_info["file_id"], request[TENANT]
    )
    return web.Response(body=data, content_type=record.content_type)


@operation("Delete a file", tags=("files",), replies={200: FileDeleted}, errors=(404, 503))
async def delete_file(request: web.Request) -> web.Response:
    """DELETE /v1/files/{file_id}: jobs already given the file keep their own copy."""
    record = await request.app[FILE_SERVICE].delete(request.match_info["file_id"], request[TENANT])
    return web.json_response(FileDeleted(id=record.id).model_dump(mode="json"))
