"""A zip archive built piece by piece, for streaming: each added file comes back as bytes.

``zipfile`` writes to a sink that cannot seek, so every member carries a data
descriptor and nothing already written is revisited: the bytes returned by ``add``
can be sent at once, and ``finish`` returns the central directory that closes the
archive. Members are stored uncompressed: edited images are compressed already.
"""

from __future__ import annotations

import time
import zipfile


class _Sink:
    """A write-only file for ``zipfile`` that hands over what was written since last asked."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: chunks are taken with ``take``."""

    def close(self) -> None:
        """Nothing to close."""

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


class ZipStream:
    """Builds a zip archive member by member; send each returned chunk in order."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, mode="w", compression=zipfile.ZIP_STORED)

    def add(self, name: str, data: bytes, *, modified: float | None = None) -> bytes:
        """Add a member called ``name`` (its time ``modified``, epoch seconds; now if
        None); returns the archive bytes it produced."""
        stamp = time.localtime(time.time() if modified is None else modified)
        info = zipfile.ZipInfo(name, date_time=stamp[:6])
        info.compress_type = zipfile.ZIP_STORED
        self._zip.writestr(info, data)
        return self._sink.take()

    def finish(self) -> bytes:
        """Close the archive; returns its last bytes (the central directory)."""
        self._zip.close()
        return self._sink.take()
