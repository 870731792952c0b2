"""Hostile but well-formed requests, built once and sent many times: a multipart body
of thousands of tiny parts and metadata at every cap."""

from __future__ import annotations

import functools

from app.core.request_fields import (
    METADATA_MAX_KEY_CHARS,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_CHARS,
)

BOUNDARY = "editq-many-parts"
MANY_PARTS_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
WIDE = "\U0001f600"
"""A character of four bytes in UTF-8 and twelve in ASCII-escaped JSON (a surrogate pair)."""


@functools.cache
def many_parts(count: int = 10_000, model: str = "local/editor") -> bytes:
    """A ``MANY_PARTS_TYPE`` body: ``model``, ``prompt`` and then ``count`` one-byte
    text parts, about 70 bytes each on the wire."""
    lines = [_part("model", model), _part("prompt", "p")]
    lines += [_part(f"x{index}", "v") for index in range(count)]
    return "".join(lines).encode() + f"--{BOUNDARY}--\r\n".encode()


def _part(name: str, value: str) -> str:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'


def maximal_metadata(char: str = WIDE) -> dict[str, str]:
    """Metadata at every cap: the most keys, each key and value as long as allowed, of
    ``char`` (by default one that takes the most bytes); the key's number up front
    keeps the keys distinct."""
    return {
        f"{index:02d}".ljust(METADATA_MAX_KEY_CHARS, char): char * METADATA_MAX_VALUE_CHARS
        for index in range(METADATA_MAX_KEYS)
    }
