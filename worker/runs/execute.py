"""One run of an edit job: load the inputs, make the ``n`` outputs in parallel (each
through ``upstream_calls``), convert and store each output."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from app.background import retry_until
from app.blobs import ObjectStore, output_key
from app.core.concurrency import gather_or_cancel
from app.core.jobs import Job, JobInputs, JobOutcome, StoredImage, Usage
from app.errors import ServiceUnavailable
from worker.process.leases import Lease
from worker.process.resources import WorkerContext
from worker.providers.base import EditCall, InputImage
from worker.runs.calls import OutputCalls, call_with_routing
from worker.runs.inputs import with_references
from worker.runs.outputs import convert_output
from worker.runs.partials import partial_sink
from worker.runs.plan import RunPlan

T = TypeVar("T")
log = logging.getLogger(__name__)
# How long an outage of the object store (or of Redis, to record how a call ended) is
# waited out, past the upstream budget: the upstream's work is paid for.
STORE_RETRY_S = 55.0
# What an object-store outage raises (``app.blobs`` maps every S3 failure to it).
STORE_OUTAGE = (ServiceUnavailable,)


@dataclass(frozen=True)
class StoredOutput:
    """One output, stored, and the usage its upstream reported."""

    image: StoredImage
    usage: Usage | None


async def execute_run(
    context: WorkerContext,
    job: Job,
    *,
    plan: RunPlan,
    lease: Lease,
    deadline: float,
) -> JobOutcome:
    """Produce and store all of ``job``'s outputs; raises on the first failed output.

    ``plan`` holds each output's models in order; calls whose first choice shares an
    upstream take turns on the slots the job was admitted with (``plan.slots``), so
    a run never has more calls in flight than it holds slots.
    """
    request = job.spec.request
    base = await base_call(context, job)
    turns = {name: asyncio.Semaphore(slots.need) for name, slots in plan.slots.items()}
    rng = random.Random()

    async def produce(index: int) -> StoredOutput:
        models = plan.models[index]
        calls = OutputCalls(
            context, job, index, models, deadline, deadline + STORE_RETRY_S, lease, rng
        )
        call = base
        if index == 0 and request.partial_images:
            # Only the first output streams previews: a client shows one image growing.
            call = replace(
                base,
                partial_images=request.partial_images,
                on_partial=partial_sink(context, job),
            )
        async with turns[plan.upstreams[index]]:
            result = await call_with_routing(calls, call)
        # The upstream's bytes stay in memory until stored: an object-store outage is
        # retried here and never costs a second upstream call.
        return await store_output(context, job, index, result.image, result.usage)

    outputs = await gather_or_cancel([produce(index) for index in range(request.n)])
    return outcome_of(job, outputs)


async def base_call(context: WorkerContext, job: Job) -> EditCall:
    """The job's edit as one call (no model yet), its inputs loaded from the object
    store (an outage is waited out for ``STORE_RETRY_S``)."""
    images, mask = await retry_until(
        lambda: _load_inputs(context.storage, job.spec.inputs),
        until=asyncio.get_running_loop().time() + STORE_RETRY_S,
        retry_on=STORE_OUTAGE,
        what=f"loading the inputs of {job.id}",
    )
    return _edit_call(job, images, mask)


def call_by_reference(context: WorkerContext, job: Job) -> EditCall:
    """The job's edit as one call whose inputs are presigned URLs of the stored copies
    and no bytes (``input_transfer = "url"``): no input is read into the worker."""
    return with_references(_edit_call(job, (), None), context.storage, job.spec.inputs)


def _edit_call(job: Job, images: tuple[InputImage, ...], mask: InputImage | None) -> EditCall:
    request = job.spec.request
    return EditCall(
        model="",
        prompt=request.prompt,
        images=images,
        mask=mask,
        size=request.size,
        quality=request.quality,
        background=request.background,
        output_format=request.output_format,
        output_compression=request.output_compression,
        input_fidelity=request.input_fidelity,
        user=request.user,
    )


def outcome_of(job: Job, outputs: Sequence[StoredOutput]) -> JobOutcome:
    """The job's outcome from its stored outputs, in order (usage summed)."""
    request = job.spec.request
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


async def store_output(
    context: WorkerContext, job: Job, index: int, image: bytes, usage: Usage | None
) -> StoredOutput:
    """Convert output ``index`` to the client's format and store it under the job's
    attempt. The upstream's bytes stay in memory until stored: an object-store outage
    is retried (``STORE_RETRY_S``) and never costs a second upstream call."""
    return await retry_until(
        lambda: _store_output(context, job, index, image, usage),
        until=asyncio.get_running_loop().time() + STORE_RETRY_S,
        retry_on=STORE_OUTAGE,
        what=f"storing output {index} of {job.id}",
    )


async def _store_output(
    context: WorkerContext, job: Job, index: int, image: bytes, usage: Usage | None
) -> StoredOutput:
    request = job.spec.request
    converted = await asyncio.get_running_loop().run_in_executor(
        context.executor,
        convert_output,
        image,
        request.output_format,
        request.output_compression,
        request.background,
    )
    key = output_key(job.id, index, request.output_format, job.attempt)
    await context.storage.put(key, converted.data, converted.content_type)
    stored = StoredImage(
        key=key,
        content_type=converted.content_type,
        bytes=len(converted.data),
        width=converted.width,
        height=converted.height,
    )
    return StoredOutput(image=stored, usage=usage)
