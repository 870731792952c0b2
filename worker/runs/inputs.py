"""Inputs by reference: an upstream with ``input_transfer = "url"`` fetches the stored
copies of a job's inputs itself, from short-lived presigned URLs."""

from __future__ import annotations

import dataclasses

from app.blobs import ObjectStore
from app.core.jobs import JobInputs, StoredImage
from worker.providers.base import EditCall, InputImage


def with_references(call: EditCall, storage: ObjectStore, inputs: JobInputs) -> EditCall:
    """``call`` with its images and mask replaced by presigned GET URLs of the stored
    ``inputs`` and no bytes (computing a presigned URL is local: no I/O)."""

    def reference(image: StoredImage) -> InputImage:
        url = storage.presigned_url(image.key)
        return InputImage(data=b"", content_type=image.content_type, url=url)

    mask = reference(inputs.mask) if inputs.mask is not None else None
    return dataclasses.replace(
        call, images=tuple(reference(image) for image in inputs.images), mask=mask
    )
