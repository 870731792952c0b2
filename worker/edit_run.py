"""One run of an edit job: load the inputs, make the ``n`` upstream calls in parallel,
convert and store each output. Pure orchestration over the context's edges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from app.errors import UpstreamError, UpstreamTimeout
from app.jobs import Attempt, Job, JobInputs, JobOutcome, StoredImage, Usage
from app.providers_config import ModelConfig
from app.storage import ObjectStore, output_key
from worker.context import WorkerContext
from worker.outputs import convert_output
from worker.providers.base import EditCall, InputImage, Upstream

T = TypeVar("T")


@dataclass(frozen=True)
class _Output:
    image: StoredImage
    usage: Usage | None


async def execute_run(context: WorkerContext, job: Job, attempts: list[Attempt]) -> JobOutcome:
    """Produce and store all of ``job``'s outputs; raises on the first failed output.

    Every upstream call is appended to ``attempts`` as it finishes.
    """
    request = job.spec.request
    model = context.providers.edit_model(request.model)
    upstream = context.upstream(model.upstream)
    images, mask = await _load_inputs(context.storage, job.spec.inputs)
    call_timeout = context.providers.upstream(model.upstream).timeout_s
    if request.routing.timeout is not None:
        call_timeout = min(call_timeout, request.routing.timeout.call_timeout / 1000)
    call = EditCall(
        model=model.upstream_model,
        prompt=request.prompt,
        images=images,
        mask=mask,
        size=request.size,
        quality=request.quality,
        background=request.background,
        output_format=request.output_format,
        output_compression=request.output_compression,
        user=request.user,
        timeout_s=call_timeout,
    )
    outputs = await all_or_cancel(
        [
            _produce_output(context, job, index, upstream, model, call, attempts)
            for index in range(request.n)
        ]
    )
    usage = Usage()
    for output in outputs:
        if output.usage is not None:
            usage = usage.plus(output.usage)
    first = outputs[0].image
    return JobOutcome(
        created=int(time.time()),
        outputs=tuple(output.image for output in outputs),
        output_format=request.output_format,
        size=f"{first.width}x{first.height}",
        quality=request.quality or "auto",
        usage=usage,
    )


async def all_or_cancel(awaitables: list[Awaitable[T]]) -> list[T]:
    """Run all concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _load_inputs(
    storage: ObjectStore, inputs: JobInputs
) -> tuple[tuple[InputImage, ...], InputImage | None]:
    stored = list(inputs.images) + ([inputs.mask] if inputs.mask else [])
    blobs = await asyncio.gather(*(storage.get(image.key) for image in stored))
    loaded = [
        InputImage(data=blob, content_type=image.content_type)
        for blob, image in zip(blobs, stored, strict=True)
    ]
    if inputs.mask:
        return tuple(loaded[:-1]), loaded[-1]
    return tuple(loaded), None


async def _produce_output(
    context: WorkerContext,
    job: Job,
    index: int,
    upstream: Upstream,
    model: ModelConfig,
    call: EditCall,
    attempts: list[Attempt],
) -> _Output:
    started_at = time.time()
    began = time.monotonic()

    def record(status: int | None, error_code: str | None) -> None:
        attempts.append(
            Attempt(
                run=job.run,
                output_index=index,
                upstream=upstream.name,
                model=model.id,
                status=status,
                error_code=error_code,
                duration_ms=round((time.monotonic() - began) * 1000),
                started_at=started_at,
            )
        )

    try:
        async with asyncio.timeout(call.timeout_s):
            result = await upstream.edit(call)
    except TimeoutError:
        record(None, "upstream_timeout")
        raise UpstreamTimeout(
            f"{upstream.name} did not answer within {call.timeout_s:g} s"
        ) from None
    except UpstreamError as exc:
        record(exc.upstream_status, exc.code)
        raise
    record(200, None)
    request = job.spec.request
    converted = await asyncio.get_running_loop().run_in_executor(
        context.executor,
        convert_output,
        result.image,
        request.output_format,
        request.output_compression,
        request.background,
    )
    key = output_key(job.id, index, request.output_format)
    await context.storage.put(key, converted.data, converted.content_type)
    stored = StoredImage(
        key=key,
        content_type=converted.content_type,
        bytes=len(converted.data),
        width=converted.width,
        height=converted.height,
    )
    return _Output(image=stored, usage=result.usage)
