"""ZipStream: an archive whose pieces, sent in order, make a valid zip."""

from __future__ import annotations

import io
import zipfile

from app.http.responses.zip_stream import ZipStream


def test_the_pieces_make_a_valid_zip_of_stored_members() -> None:
    archive = ZipStream()
    first = archive.add("a.png", b"\x89PNG first", modified=1_700_000_000)
    second = archive.add("dir/b.txt", b"second " * 1000)
    last = archive.finish()
    assert first and second and last
    assert first.startswith(b"PK\x03\x04")  # sendable at once: a local header first
    with zipfile.ZipFile(io.BytesIO(first + second + last)) as result:
        assert result.testzip() is None
        assert result.namelist() == ["a.png", "dir/b.txt"]
        assert result.read("a.png") == b"\x89PNG first"
        assert result.read("dir/b.txt") == b"second " * 1000
        info = result.getinfo("a.png")
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.date_time[0] == 2023


def test_an_empty_archive_is_still_a_zip() -> None:
    data = ZipStream().finish()
    with zipfile.ZipFile(io.BytesIO(data)) as result:
        assert result.namelist() == []
