"""The one rule for form fields: lists by repetition or ``name[]``, one value otherwise."""

from __future__ import annotations

import pytest

from app.core.edit_params import LIST_FIELDS, SINGLE_FIELDS, parse_edit_params
from app.errors import InvalidRequest
from app.http.requests.form_fields import FormShape, form_fields

SHAPE = FormShape(lists=("codes",), singles=("prompt",))


def test_a_list_field_by_repetition_or_brackets_keeps_every_part_in_order() -> None:
    assert form_fields([("codes", "1"), ("codes", "2")], SHAPE) == {"codes": ["1", "2"]}
    assert form_fields([("codes[]", "1"), ("codes[]", "2")], SHAPE) == {"codes": ["1", "2"]}
    assert form_fields([("codes[]", "1")], SHAPE) == {"codes": ["1"]}


def test_a_list_field_in_one_part_stays_text_for_its_own_parser() -> None:
    assert form_fields([("codes", "[1, 2]")], SHAPE) == {"codes": "[1, 2]"}


@pytest.mark.parametrize(
    "pairs", [[("prompt", "a"), ("prompt", "b")], [("prompt[]", "a")], [("prompt[]", "a")] * 2]
)
def test_a_one_value_field_sent_as_a_list_is_refused_by_name(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(InvalidRequest) as raised:
        form_fields(pairs, SHAPE)
    assert raised.value.param == "prompt"


def test_an_unknown_field_is_kept_as_sent_for_the_endpoint_to_ignore() -> None:
    assert form_fields([("extra", "a"), ("extra", "b")], SHAPE) == {"extra": "b"}


def test_the_edit_fields_are_split_by_their_types() -> None:
    assert {"fallbacks", "fallback_on_codes", "webhook_events"} <= LIST_FIELDS
    assert {"prompt", "model", "n", "size", "orq", "retry", "metadata"} <= SINGLE_FIELDS
    assert not LIST_FIELDS & SINGLE_FIELDS


def test_repeated_parts_of_json_fields_are_read_item_by_item() -> None:
    params = parse_edit_params(
        {
            "model": "m",
            "prompt": "p",
            "fallback_on_codes": ["400", "422"],
            "fallbacks": ['{"model": "a"}'],
            "webhook_events": ["job.failed", "job.succeeded"],
        },
        max_prompt_chars=100,
    )
    assert params.routing.fallback_on_codes == (400, 422)
    assert [fallback.model for fallback in params.routing.fallbacks] == ["a"]
    assert params.webhook_events == ("job.failed", "job.succeeded")
