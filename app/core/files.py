"""Uploaded files (OpenAI's Files API shape): the record, its public object and the
rules of an upload's fields.

A file is an input image a tenant uploads once and then names by ``file_id`` in any
edit request instead of sending the bytes again. Its bytes are stored once per tenant
and content (``app.blobs.file_blob_key``); the record here is what one upload made.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.errors import InvalidRequest

PURPOSES = ("vision", "user_data", "assistants", "batch", "fine-tune", "evals")
"""OpenAI's file purposes; any is accepted, the file is an input image whatever it says."""

EXPIRES_AFTER_MIN_S = 3600
EXPIRES_AFTER_MAX_S = 30 * 24 * 3600
"""The bounds OpenAI sets on ``expires_after[seconds]`` (one hour to 30 days)."""

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FILE_ID = re.compile(r"file-[0-9A-Za-z]{24}", re.ASCII)


def new_file_id(now: float | None = None) -> str:
    """``file-`` + 24 letters and digits, as OpenAI's file ids look; the first 12 are
    the creation time in ms (hex), so ids sort by creation like job ids."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"file-{millis:012x}" + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def is_file_id(value: str) -> bool:
    """Whether ``value`` has exactly the form ``new_file_id`` makes (nothing else may
    reach a Redis key)."""
    return FILE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class FileRecord:
    """One upload: who owns it, what it holds and until when (``expires_at`` unix
    seconds, None for never)."""

    id: str
    tenant: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    sha256: str
    content_type: str

    def expired(self, now: float) -> bool:
        """Whether the file has expired at ``now`` (unix seconds): it then reads as 404."""
        return self.expires_at is not None and self.expires_at <= now

    def public(self) -> dict[str, Any]:
        """The OpenAI file object."""
        return FileObject(
            id=self.id,
            bytes=self.bytes,
            created_at=self.created_at,
            expires_at=self.expires_at,
            filename=self.filename,
            purpose=self.purpose,
        ).model_dump(mode="json")


class FileObject(BaseModel):
    """An uploaded file, as OpenAI's Files API shows it."""

    id: str = Field(description="file-...")
    object: Literal["file"] = "file"
    bytes: int = Field(description="size in bytes")
    created_at: int = Field(description="unix seconds")
    expires_at: int | None = Field(description="unix seconds; null: kept until deleted")
    filename: str
    purpose: str
    status: Literal["processed"] = Field(
        "processed", description="always processed: an upload is checked before it is stored"
    )


class FileDeleted(BaseModel):
    """The answer to deleting a file."""

    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True


def check_purpose(value: str | None) -> str:
    """The upload's ``purpose``; InvalidRequest unless it is one of OpenAI's."""
    if value not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    return value


def expiry_of(anchor: str | None, seconds: str | None, *, created_at: int) -> int | None:
    """``expires_at`` from the form's ``expires_after[anchor]`` and
    ``expires_after[seconds]`` (as the openai SDK sends them), None when both are
    absent; InvalidRequest for any other anchor than ``created_at`` or seconds outside
    ``EXPIRES_AFTER_MIN_S``..``EXPIRES_AFTER_MAX_S``."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be created_at", param="expires_after[anchor]"
        )
    try:
        value = int(seconds or "")
    except ValueError:
        raise InvalidRequest(
            "expires_after[seconds] must be an integer", param="expires_after[seconds]"
        ) from None
    if not EXPIRES_AFTER_MIN_S <= value <= EXPIRES_AFTER_MAX_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be between {EXPIRES_AFTER_MIN_S} and "
            f"{EXPIRES_AFTER_MAX_S}",
            param="expires_after[seconds]",
        )
    return created_at + value
