"""The Python client of the editq HTTP API (imports no other ``app`` module).

``EditqClient`` (blocking) and ``AsyncEditqClient`` (asyncio) speak to a running
editq; every answer is one of the typed models below, and every failure is an
``EditqClientError`` (``EditqConnectionError`` when the service cannot be reached).
``SseDecoder`` reads an event stream fetched some other way into ``ServerSentEvent``s.
``__all__`` is the whole public surface (``tests/app/client/test_exported.py``).
"""

from app.client.api import AsyncEditqClient, EditqClient
from app.client.models import (
    BATCH_TERMINAL,
    JOB_TERMINAL,
    BatchCounts,
    BatchObject,
    EditqClientError,
    EditqConnectionError,
    ErrorObject,
    ImageData,
    ImagesResult,
    JobObject,
    JobPage,
    ServerSentEvent,
    SseDecoder,
)
from app.client.uploads import ImageInput

__all__ = [
    "BATCH_TERMINAL",
    "JOB_TERMINAL",
    "AsyncEditqClient",
    "BatchCounts",
    "BatchObject",
    "EditqClient",
    "EditqClientError",
    "EditqConnectionError",
    "ErrorObject",
    "ImageData",
    "ImageInput",
    "ImagesResult",
    "JobObject",
    "JobPage",
    "ServerSentEvent",
    "SseDecoder",
]
