"""``Prefer: wait=N`` read as RFC 7240 asks: other preferences and bad values ignored."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from app.http.requests.prefer import preferred_wait


def wait_of(*values: str, limit_s: float = 300) -> int | None:
    headers = CIMultiDict(("Prefer", value) for value in values)
    return preferred_wait(make_mocked_request("POST", "/v1/jobs", headers=headers), limit_s)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (("wait=10",), 10),
        (("respond-async, wait=5",), 5),
        (("respond-async", "WAIT = 7 ; x=y"), 7),
        (('wait="3"',), 3),
        (("wait=0",), None),
        (("wait=-1",), None),
        (("wait=1.5",), None),
        (("return=minimal",), None),
        ((), None),
    ],
)
def test_the_wait_asked_for(values: tuple[str, ...], expected: int | None) -> None:
    assert wait_of(*values) == expected


def test_the_wait_is_capped_by_the_longest_long_poll() -> None:
    assert wait_of("wait=600", limit_s=300) == 300
    assert wait_of("wait=600", limit_s=0) is None
