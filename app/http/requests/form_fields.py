"""How the text fields of a form body become values: one rule for every submit endpoint,
multipart or url-encoded.

A list field may come as one part holding the whole list (JSON text; for
``webhook_events`` also comma-separated), as repeated parts of its name, or as
repeated ``name[]`` parts, the spelling orq's SDK and most form libraries use; the
repeated shapes give the parts' texts in order, as a list. A field that holds one
value takes one part: repeating it, or sending it as ``name[]``, is a 400 naming it,
never a silent last-one-wins. Fields the endpoint does not know are kept as sent
(the last of repeated ones), for the endpoint to ignore.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from app.errors import InvalidRequest

ARRAY_SUFFIX = "[]"

FormValue = str | list[str]


@dataclass(frozen=True)
class FormShape:
    """Which fields of an endpoint hold a list and which hold one value."""

    lists: Collection[str]
    singles: Collection[str]


def form_fields(pairs: Iterable[tuple[str, str]], shape: FormShape) -> dict[str, FormValue]:
    """The fields of ``(name, text)`` pairs in body order, by the rule above.

    Raises InvalidRequest (param: the field) for a one-value field sent more than once
    or as ``name[]``.
    """
    texts: dict[str, list[str]] = {}
    bracketed: set[str] = set()
    for name, text in pairs:
        base = name.removesuffix(ARRAY_SUFFIX)
        if base != name:
            bracketed.add(base)
        texts.setdefault(base, []).append(text)
    fields: dict[str, FormValue] = {}
    for name, values in texts.items():
        repeated = len(values) > 1 or name in bracketed
        if name in shape.lists:
            fields[name] = values if repeated else values[0]
        elif repeated and name in shape.singles:
            raise _one_value(name, len(values))
        else:
            fields[name] = values[-1]
    return fields


def _one_value(name: str, count: int) -> InvalidRequest:
    if count > 1:
        message = f"{name} was sent {count} times; it takes one value"
    else:
        message = f"{name} takes one value: send it as {name}, not {name}{ARRAY_SUFFIX}"
    return InvalidRequest(message, param=name)
