"""The accept benchmark's floor: a minimal hand-written aiohttp handler doing only the
unavoidable work of accepting a job — take the image out of the JSON body, store its
bytes in S3 (boto3 in a thread pool, as editq does) and enqueue one arq job — in a
process of its own::

    python -m tests.bench.floor --port P --redis-url URL --s3-endpoint URL --bucket B \
        --queue Q
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import boto3
from aiohttp import web
from arq.connections import ArqRedis, RedisSettings, create_pool
from botocore.config import Config

from app.cli.embedded import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

POOL = web.AppKey("pool", ArqRedis)
S3: web.AppKey[S3Client] = web.AppKey("s3")
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
CONNECTIONS = 64  # editq's default s3_max_connections


def _serialize(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def floor_app(redis_url: str, s3_endpoint: str, bucket: str, queue: str) -> web.Application:
    """The floor's application: ``POST /v1/jobs`` and ``GET /healthz``."""

    async def accept(request: web.Request) -> web.Response:
        document = await request.json()
        image = base64.b64decode(document["images"][0]["image_url"].partition(",")[2])
        job_id = uuid.uuid4().hex
        put = partial(
            request.app[S3].put_object,
            Bucket=bucket,
            Key=f"floor/{job_id}.png",
            Body=image,
            ContentType="image/png",
        )
        await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR], put)
        await request.app[POOL].enqueue_job("run_edit", job_id, 1, _queue_name=queue)
        return web.json_response({"id": job_id, "status": "queued"}, status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def resources(app: web.Application) -> AsyncIterator[None]:
        app[POOL] = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=_serialize)
        app[EXECUTOR] = ThreadPoolExecutor(max_workers=CONNECTIONS)
        app[S3] = boto3.session.Session().client(
            "s3",
            endpoint_url=s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id=DEV_S3_ACCESS_KEY,
            aws_secret_access_key=DEV_S3_SECRET_KEY,
            config=Config(max_pool_connections=CONNECTIONS, s3={"addressing_style": "path"}),
        )
        yield
        app[EXECUTOR].shutdown(wait=False)
        app[S3].close()
        await app[POOL].aclose()

    app = web.Application(client_max_size=100 * 1024 * 1024)
    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/jobs", accept)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    """Serve the floor until terminated."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor")
    for name in ("--redis-url", "--s3-endpoint", "--bucket", "--queue"):
        parser.add_argument(name, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = floor_app(args.redis_url, args.s3_endpoint, args.bucket, args.queue)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
