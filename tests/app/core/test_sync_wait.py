"""When a synchronous edit answers, and which requests are a client's retries."""

from __future__ import annotations

import pytest

from app.core.sync_wait import answer_within_s, parse_seconds, retry_count


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2.0", 2.0), (" 600 ", 600.0), ("0.5", 0.5), (None, None), ("", None), ("soon", None)],
)
def test_parse_seconds_takes_positive_finite_numbers(
    value: str | None, seconds: float | None
) -> None:
    assert parse_seconds(value) == seconds


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "1e999"])
def test_parse_seconds_refuses_what_is_no_timeout(value: str) -> None:
    assert parse_seconds(value) is None


@pytest.mark.parametrize(
    ("client_timeout_s", "within_s"),
    [
        (None, 330.0),  # the client said nothing: the server's limit
        (2.0, 1.0),  # 1 s before, and at most half of it
        (1.0, 0.5),
        (30.0, 27.0),  # 10 % before
        (600.0, 330.0),  # the server's limit comes first
    ],
)
def test_answer_within_ends_a_margin_before_the_client_gives_up(
    client_timeout_s: float | None, within_s: float
) -> None:
    assert answer_within_s(330.0, client_timeout_s) == pytest.approx(within_s)


@pytest.mark.parametrize(
    ("value", "count"), [("0", 0), ("2", 2), (None, 0), ("x", 0), ("-1", 0), (" 1 ", 1)]
)
def test_retry_count_reads_the_attempt_number(value: str | None, count: int) -> None:
    assert retry_count(value) == count
