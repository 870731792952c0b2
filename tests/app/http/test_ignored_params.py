"""What ``x-editq-ignored-params`` says: the fields editq does not model, header-safe."""

from __future__ import annotations

from app.core.edit_params import unmodeled
from app.http.requests.ignored import MAX_NAMES, header_value


def test_only_fields_that_are_not_edit_fields_are_unmodeled() -> None:
    fields = ["model", "prompt", "input_fidelity", "quality", "fallbacks", "orq", "seed", "a"]
    assert unmodeled(fields) == ["a", "seed"]


def test_names_that_cannot_go_in_a_header_are_counted() -> None:
    assert header_value(["seed", "bad\r\nname", "ünï"]) == "seed, 2 more"
    many = [f"p{index}" for index in range(MAX_NAMES + 3)]
    assert header_value(many).endswith(", 3 more")
