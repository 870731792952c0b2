"""A job's inputs in object storage (a real S3 server over HTTP): an image that came
from an uploaded file is copied server-side into the job's own key, so the job keeps
it whatever happens to the file; when the file's object is gone the bytes are put."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from app.blobs import ObjectStore
from app.core.images import CheckedImage, check_image
from app.core.providers_config import ProvidersConfig
from app.obs.metrics import Metrics
from app.resources import Resources, open_resources
from app.services.jobs import JobService
from app.settings import Settings
from tests.support.images import png


class CountingStore(ObjectStore):
    """The S3 client, counting the puts and copies it makes."""

    puts = 0
    copies = 0

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.puts += 1
        await super().put(key, data, content_type)

    async def copy(self, source_key: str, target_key: str) -> None:
        self.copies += 1
        await super().copy(source_key, target_key)


@pytest.fixture
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    async with open_resources(settings, Metrics(), executor_name="test") as opened:
        yield opened


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[CountingStore]:
    store = CountingStore(settings)
    yield store
    store.close()


def checked(data: bytes, *, stored_at: str) -> CheckedImage:
    """``data`` checked, as if it came from the uploaded file at ``stored_at``."""
    image = check_image(data, param="image[0]", max_pixels=10**6)
    return dataclasses.replace(image, stored_at=stored_at)


def job_service(
    resources: Resources, storage: ObjectStore, providers: ProvidersConfig
) -> JobService:
    return JobService(
        store=resources.jobs,
        storage=storage,
        queue=resources.queue,
        events=resources.events,
        providers=providers,
    )


async def test_an_uploaded_files_bytes_are_copied_server_side(
    resources: Resources, storage: CountingStore, providers: ProvidersConfig
) -> None:
    data = png(12, 12)
    await storage.put("files/t/abc", data, "image/png")
    image = dataclasses.replace(
        check_image(data, param="i", max_pixels=10**6), stored_at="files/t/abc"
    )
    inputs = await job_service(resources, storage, providers).store_inputs("job_x", [image], None)
    assert (storage.puts, storage.copies) == (1, 1)  # the upload's put, then the copy
    await storage.delete_keys(["files/t/abc"])
    assert await storage.get(inputs.images[0].key) == data  # the job's own object


async def test_a_file_object_gone_meanwhile_is_written_from_the_bytes(
    resources: Resources, storage: CountingStore, providers: ProvidersConfig
) -> None:
    data = png(13, 13)
    image = dataclasses.replace(
        check_image(data, param="i", max_pixels=10**6), stored_at="files/t/gone"
    )
    inputs = await job_service(resources, storage, providers).store_inputs("job_y", [image], None)
    assert (storage.puts, storage.copies) == (1, 1)
    assert await storage.get(inputs.images[0].key) == data
