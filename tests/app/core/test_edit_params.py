"""Validating edit request fields: ranges, enums, JSON-text fields and routing knobs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.core.edit_params import EditParams, parse_edit_params
from app.core.routing_options import DEFAULT_FALLBACK_CODES
from app.errors import InvalidRequest

MAX_PROMPT = 100


def parse(**fields: Any) -> EditParams:
    """Parse ``fields`` on top of a minimal valid request."""
    return parse_edit_params(
        {"model": "local/editor", "prompt": "make it blue", **fields}, max_prompt_chars=MAX_PROMPT
    )


def refused(**fields: Any) -> InvalidRequest:
    """The InvalidRequest that parsing ``fields`` raises."""
    with pytest.raises(InvalidRequest) as caught:
        parse(**fields)
    assert caught.value.status == 400
    return caught.value


def test_minimal_request_gets_defaults() -> None:
    params = parse()
    assert (params.model, params.prompt, params.n) == ("local/editor", "make it blue", 1)
    assert (params.size, params.output_format, params.response_format) == (None, "png", "url")
    assert params.metadata == {}
    assert params.routing.retry is None
    assert params.routing.fallback_on_codes == DEFAULT_FALLBACK_CODES
    assert params.output_size() is None


@pytest.mark.parametrize("missing", ["model", "prompt"])
def test_required_fields(missing: str) -> None:
    fields = {"model": "local/editor", "prompt": "p"}
    del fields[missing]
    with pytest.raises(InvalidRequest) as caught:
        parse_edit_params(fields, max_prompt_chars=MAX_PROMPT)
    assert caught.value.param == missing
    assert "is required" in caught.value.message


@pytest.mark.parametrize("value", [2, "2", "2.0", 2.0, " 2 "])
def test_n_accepts_whole_numbers(value: object) -> None:
    assert parse(n=value).n == 2


@pytest.mark.parametrize("value", ["2.5", 2.5, 0, 11, "abc", "", "inf", None])
def test_n_refuses_others(value: object) -> None:
    assert refused(n=value).param == "n"


@pytest.mark.parametrize(
    ("size", "expected"), [("auto", None), ("1024x1024", (1024, 1024)), ("16x8192", (16, 8192))]
)
def test_size_accepted(size: str, expected: tuple[int, int] | None) -> None:
    params = parse(size=size)
    assert params.size == size
    assert params.output_size() == expected


@pytest.mark.parametrize(
    "size", ["10x10", "1024", "99999x1", "8193x1024", "1024X1024", "1024x", "x1024", "-16x16"]
)
def test_size_refused(size: str) -> None:
    assert refused(size=size).param == "size"


def test_size_with_trailing_newline_refused() -> None:
    assert refused(size="1024x1024\n").param == "size"


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("quality", ["auto", "low", "medium", "high", "standard"], ["ultra", "HIGH", ""]),
        ("background", ["transparent", "opaque", "auto"], ["clear", 1]),
        ("output_format", ["png", "jpeg", "webp"], ["gif", "jpg", "PNG"]),
        ("response_format", ["url", "b64_json"], ["b64", "json"]),
    ],
)
def test_enums(field: str, good: list[str], bad: list[object]) -> None:
    for value in good:
        assert getattr(parse(**{field: value}), field) == value
    for wrong in bad:
        assert refused(**{field: wrong}).param == field


@pytest.mark.parametrize("value", [0, 55, 100, "80"])
def test_output_compression_in_range(value: object) -> None:
    assert parse(output_compression=value).output_compression == int(str(value))


@pytest.mark.parametrize("value", [-1, 101, "high"])
def test_output_compression_out_of_range(value: object) -> None:
    assert refused(output_compression=value).param == "output_compression"


def test_transparent_jpeg_refused() -> None:
    error = refused(background="transparent", output_format="jpeg")
    assert error.param == "background"
    assert "png or webp" in error.message


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_transparent_with_alpha_formats(output_format: str) -> None:
    params = parse(background="transparent", output_format=output_format)
    assert (params.background, params.output_format) == ("transparent", output_format)


def test_metadata_at_limits_accepted() -> None:
    metadata = {f"k{i:02d}".ljust(64, "x"): "v" * 512 for i in range(16)}
    assert parse(metadata=metadata).metadata == metadata


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k": "v" * 513}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": 1}, "metadata.k"),
        (["a"], "metadata"),
    ],
)
def test_metadata_refused(metadata: object, param: str) -> None:
    assert refused(metadata=metadata).param == param


def test_prompt_length() -> None:
    assert parse(prompt="p" * MAX_PROMPT).prompt == "p" * MAX_PROMPT
    error = refused(prompt="p" * (MAX_PROMPT + 1))
    assert error.param == "prompt"
    assert str(MAX_PROMPT) in error.message
    assert refused(prompt="").param == "prompt"


def test_unknown_fields_ignored() -> None:
    params = parse(seed=7, style="vivid")
    assert not {"seed", "style"} & set(params.model_dump())
    assert params.n == 1


def test_stream_and_partial_images_are_read_as_form_text() -> None:
    params = parse(stream="true", partial_images="2")
    assert (params.stream, params.partial_images) == (True, 2)
    assert (parse().stream, parse().partial_images) == (False, 0)


@pytest.mark.parametrize("value", [4, -1, "1.5", "many"])
def test_partial_images_outside_0_to_3_names_the_field(value: object) -> None:
    assert refused(partial_images=value).param == "partial_images"


def test_json_text_fields_parsed_as_multipart_sends_them() -> None:
    params = parse(
        metadata=json.dumps({"order": "42"}),
        retry=json.dumps({"count": 2, "on_codes": [429, 503]}),
        fallbacks=json.dumps([{"model": "fake/flux-kontext"}]),
        fallback_on_codes="[500]",
        orq=json.dumps({"cache": {"type": "exact_match", "ttl": 60}}),
    )
    assert params.metadata == {"order": "42"}
    assert params.routing.retry is not None
    assert (params.routing.retry.count, params.routing.retry.on_codes) == (2, (429, 503))
    assert [fallback.model for fallback in params.routing.fallbacks] == ["fake/flux-kontext"]
    assert params.routing.fallback_on_codes == (500,)
    assert params.routing.cache is not None
    assert params.routing.cache.ttl == 60


@pytest.mark.parametrize("field", ["metadata", "retry", "orq", "load_balancer", "timeout"])
def test_invalid_json_names_the_field(field: str) -> None:
    error = refused(**{field: "{not json"})
    assert error.param == field
    assert "JSON" in error.message


def test_orq_must_be_an_object() -> None:
    assert refused(orq="[1, 2]").param == "orq"


LOAD_BALANCER = {"type": "weight_based", "models": [{"model": "local/editor", "weight": 0}]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"retry": {"count": 0}}, "retry.count"),
        ({"retry": {"count": 6}}, "retry.count"),
        ({"retry": {"on_codes": [99]}}, "retry.on_codes[0]"),
        ({"retry": {"on_codes": [429, 600]}}, "retry.on_codes[1]"),
        ({"retry": {"on_codes": []}}, "retry.on_codes"),
        ({"fallback_on_codes": [600]}, "fallback_on_codes[0]"),
        ({"fallbacks": [{"model": ""}]}, "fallbacks[0].model"),
        ({"load_balancer": LOAD_BALANCER}, "load_balancer.models[0].weight"),
        ({"load_balancer": {"type": "weight_based", "models": []}}, "load_balancer.models"),
        ({"cache": {"type": "exact_match", "ttl": 259_201}}, "cache.ttl"),
        ({"cache": {"type": "semantic"}}, "cache.type"),
        ({"timeout": {"call_timeout": 0}}, "timeout.call_timeout"),
    ],
)
def test_routing_knobs_refused(fields: dict[str, Any], param: str) -> None:
    assert refused(**fields).param == param
    assert refused(orq=fields).param == f"orq.{param}"


def test_routing_knobs_at_their_limits() -> None:
    params = parse(
        retry={"count": 5, "on_codes": [100, 599]},
        cache={"type": "exact_match", "ttl": 259_200},
        load_balancer={"type": "weight_based", "models": [{"model": "a", "weight": 1}]},
        timeout={"call_timeout": 1},
    )
    routing = params.routing
    assert routing.retry is not None and routing.retry.count == 5
    assert routing.cache is not None and routing.cache.ttl == 259_200
    assert routing.load_balancer is not None
    assert routing.load_balancer.models[0].weight == 1
    assert routing.timeout is not None and routing.timeout.call_timeout == 1
    assert routing.model_ids() == ["a"]


def test_nested_orq_knobs_parsed() -> None:
    params = parse(
        orq={
            "retry": {"count": 4},
            "fallbacks": [{"model": "fake/gpt-image-1"}],
            "timeout": {"call_timeout": 2500},
        }
    )
    assert params.routing.retry is not None
    assert params.routing.retry.count == 4
    assert params.routing.model_ids() == ["fake/gpt-image-1"]
    assert params.routing.timeout is not None
    assert params.routing.timeout.call_timeout == 2500


def test_top_level_wins_over_orq() -> None:
    params = parse(
        retry={"count": 5},
        orq={"retry": {"count": 2}, "cache": {"type": "exact_match", "ttl": 10}},
    )
    assert params.routing.retry is not None
    assert params.routing.retry.count == 5
    assert params.routing.cache is not None
    assert params.routing.cache.ttl == 10


def test_routing_defaults() -> None:
    params = parse(retry={}, cache={"type": "exact_match"})
    assert params.routing.retry is not None
    assert params.routing.retry.count == 3
    assert params.routing.retry.on_codes == (429,)
    assert params.routing.fallback_on_codes == (408, 429, 500, 502, 503, 504, 529)
    assert params.routing.cache is not None
    assert params.routing.cache.ttl == 1800
    weighted = parse(load_balancer={"type": "weight_based", "models": [{"model": "a"}]})
    assert weighted.routing.load_balancer is not None
    assert weighted.routing.load_balancer.models[0].weight == 0.5
