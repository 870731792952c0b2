"""The Server-Sent Events frames editq writes and the resume ids it accepts."""

from __future__ import annotations

import pytest

from app.client.models import SseDecoder
from app.errors import InvalidRequest
from app.http.responses.sse import KEEPALIVE, encode_event, parse_stream_id


def test_a_frame_decodes_to_the_same_event() -> None:
    data = {"status": "succeeded", "text": "two\nlines", "emoji": "✓"}
    decoder = SseDecoder()
    events = decoder.feed(KEEPALIVE + encode_event("1712345678901-3", "job.succeeded", data))
    assert len(events) == 1
    assert (events[0].id, events[0].event) == ("1712345678901-3", "job.succeeded")
    assert events[0].json() == data


@pytest.mark.parametrize("value", ["1712345678901-0", "0-1", "0", "18446744073709551615-7"])
def test_stream_ids_are_accepted(value: str) -> None:
    assert parse_stream_id(value, param="Last-Event-ID") == value


@pytest.mark.parametrize("value", [None, ""])
def test_an_absent_id_means_from_the_start(value: str | None) -> None:
    assert parse_stream_id(value, param="Last-Event-ID") is None


@pytest.mark.parametrize(
    "value", ["x", "1-", "-1", "1-2-3", " 1-0", "1-0\n", "18446744073709551616-0", "+", "(1-0"]
)
def test_anything_else_is_refused_naming_the_param(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_stream_id(value, param="last_event_id")
    assert caught.value.param == "last_event_id"
