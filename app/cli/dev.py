"""``editq dev``: the whole service on one machine, with embedded defaults.

Starts what is not configured (a Redis server, an S3-compatible server, a dev API
key), one worker process and the API, prints a ready-to-paste example, and stops
everything cleanly on Ctrl-C. Unless ``EDITQ_ALLOW_PRIVATE_URLS`` says otherwise,
webhooks and image URLs may reach private addresses (this machine), as is usual in
local development.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image, ImageDraw
from pydantic import SecretStr

from app.blobs import ObjectStore
from app.cli.embedded import DEV_S3_ACCESS_KEY, DEV_S3_SECRET_KEY, EmbeddedRedis, EmbeddedS3
from app.core.providers_config import ProvidersConfig
from app.http.app import create_app
from app.http.server import ApiRunner
from app.settings import Settings, settings_environment

DEV_API_KEY = "sk-editq-dev"
WORKER_STOP_GRACE_S = 15


async def serve_dev(base: Settings, providers: ProvidersConfig, host: str, port: int) -> int:
    """Run everything until SIGINT/SIGTERM (or the worker dies); returns an exit code."""
    redis = EmbeddedRedis() if "redis_url" not in base.model_fields_set else None
    s3 = EmbeddedS3() if "s3_endpoint_url" not in base.model_fields_set else None
    overrides: dict[str, Any] = {}
    if not base.api_keys:
        overrides["api_keys"] = (SecretStr(DEV_API_KEY),)
    with contextlib.ExitStack() as stack:
        if redis is not None:
            redis.start()
            stack.callback(redis.stop)
            overrides["redis_url"] = redis.url
        if s3 is not None:
            s3.start()
            stack.callback(s3.stop)
            overrides["s3_endpoint_url"] = s3.endpoint_url
            overrides["s3_access_key_id"] = SecretStr(DEV_S3_ACCESS_KEY)
            overrides["s3_secret_access_key"] = SecretStr(DEV_S3_SECRET_KEY)
        if "allow_private_urls" not in base.model_fields_set:
            # Local development: webhook receivers and image servers run on this machine.
            overrides["allow_private_urls"] = True
        if "worker_drain_s" not in base.model_fields_set:
            overrides["worker_drain_s"] = 5.0  # Ctrl-C in development: hand back quickly
        settings = base.model_copy(update=overrides)
        storage = ObjectStore(settings)
        try:
            await storage.ensure_bucket()
        finally:
            storage.close()
        in_memory = redis is not None or s3 is not None
        return await _serve(settings, providers, host, port, in_memory=in_memory)


async def _serve(
    settings: Settings, providers: ProvidersConfig, host: str, port: int, *, in_memory: bool
) -> int:
    # Its own session: a terminal's Ctrl-C reaches only us, and we stop it in order.
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        env={**os.environ, **settings_environment(settings)},
        start_new_session=True,
    )
    runner = ApiRunner(create_app(settings, providers))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        with tempfile.TemporaryDirectory(prefix="editq-") as scratch:
            sample = write_sample_image(Path(scratch) / "sample.png")
            url = f"http://{host}:{port}"
            print(banner(settings, providers, url, sample, in_memory=in_memory), flush=True)
            return await _until_stopped(worker)
    finally:
        await runner.cleanup()
        await _stop_worker(worker)


async def _until_stopped(worker: asyncio.subprocess.Process) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(worker.wait())
    await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if exited.done():
        print(f"editq dev: the worker exited with code {worker.returncode}", file=sys.stderr)
        return 1
    exited.cancel()
    print("\neditq dev: stopping", flush=True)
    return 0


async def _stop_worker(worker: asyncio.subprocess.Process) -> None:
    if worker.returncode is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(worker.wait(), WORKER_STOP_GRACE_S)
    except TimeoutError:
        worker.kill()
        await worker.wait()


def write_sample_image(path: Path) -> Path:
    """A colourful 512x512 PNG to try edits on."""
    image = Image.new("RGB", (512, 512))
    draw = ImageDraw.Draw(image)
    for y in range(512):
        draw.line([(0, y), (511, y)], fill=(y // 2, 90, 255 - y // 2))
    draw.ellipse([136, 136, 376, 376], fill=(250, 200, 40))
    draw.rectangle([40, 400, 220, 480], fill=(30, 160, 80))
    image.save(path)
    return path


def banner(
    settings: Settings, providers: ProvidersConfig, base_url: str, sample: Path, *, in_memory: bool
) -> str:
    """What ``editq dev`` prints once it is serving; ``in_memory`` when it started its own
    Redis or S3 server, whose data goes with it."""
    key = settings.api_keys[0].get_secret_value()
    model = providers.models[0].id
    data = (
        "in memory: jobs, batches and images are gone when editq dev exits"
        if in_memory
        else "in the Redis and S3 set by EDITQ_REDIS_URL and EDITQ_S3_ENDPOINT_URL"
    )
    webhooks = (
        "may call 127.0.0.1 and other private addresses, as may image URLs"
        if settings.allow_private_urls
        else "public addresses only (EDITQ_ALLOW_PRIVATE_URLS is false)"
    )
    return f"""
editq is serving on {base_url}   (Ctrl-C stops everything)
  dashboard : {base_url}/ui   (sign in with the API key)
  API key   : {key}
  models    : {", ".join(model.id for model in providers.models)}
  docs      : {base_url}/docs
  data      : {data}
  webhooks  : {webhooks}

Submit an edit, then fetch the job (it waits up to 30 s for the result):

  curl -s {base_url}/v1/jobs -H "Authorization: Bearer {key}" \\
       -F model={model} -F "prompt=make it sepia and mirror it" -F image=@{sample}

  curl -s "{base_url}/v1/jobs/JOB_ID?wait=30" -H "Authorization: Bearer {key}"

The result's data[0].url downloads the edited image.
"""
