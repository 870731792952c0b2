"""Every numeric field the API takes, found by walking its served OpenAPI document,
and requests that put a number written as raw JSON text in each one.

``json.dumps`` refuses to write ``1e400``, ``Infinity`` or ``NaN``; a client need not.
``numeric_fields`` walks each operation's JSON body schema, each multipart part (a
number part as text; a JSON-text part by the schema the operation's JSON body gives
the field of that name) and each query parameter, following ``$ref``, ``anyOf`` and
arrays into every nested object. Each ``NumericField`` it finds sends a request that
is valid except for that one number, so the answer must be a 4xx naming ``param``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from tests.support.images import data_url

NON_FINITE = ("1e400", "-1e400", "Infinity", "-Infinity", "NaN")
NUMERIC = ("number", "integer")
_HOLE = "\x00the number\x00"
"""Where the raw number goes: ``json.dumps`` writes it as a string, replaced after."""

Path = tuple[str | int, ...]
Location = Literal["json", "multipart", "query"]
Part = tuple[str, str | bytes]
"""A multipart part: its name and its text, or the bytes of a file."""


@dataclass(frozen=True)
class Examples:
    """Valid requests the numbers are planted in, by the name of their body schema
    (``components/schemas``), and the values of path parameters by name.

    A schema may have several examples, for fields that exclude each other (a batch's
    ``n`` and ``variants``): a field is planted in the first example that sets it,
    else in the first example.
    """

    json: Mapping[str, Sequence[Mapping[str, Any]]]
    forms: Mapping[str, Sequence[Sequence[Part]]]
    path_params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NumericField:
    """One numeric field of one operation, and the request that sets it to a number."""

    method: str
    url: str
    location: Location
    param: str
    """The name the API's error must give: ``timeout.call_timeout``, ``variants[0].n``."""
    template: str | Sequence[Part]
    """The JSON body or the multipart parts with ``_HOLE`` where the number goes; for
    a query parameter, its name."""

    @property
    def label(self) -> str:
        """``POST /v1/jobs json timeout.call_timeout``: which field, for messages."""
        return f"{self.method} {self.url} {self.location} {self.param}"

    async def send(
        self, session: aiohttp.ClientSession, base_url: str, number: str
    ) -> tuple[int, Any]:
        """Send the request with ``number`` (raw text such as ``1e400``) in the field;
        the status and the body (parsed JSON, else the text)."""
        kwargs: dict[str, Any] = {}
        if self.location == "query":
            assert isinstance(self.template, str)
            kwargs["params"] = {self.template: number}
        elif isinstance(self.template, str):
            kwargs["data"] = self.template.replace(json.dumps(_HOLE), number).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        else:
            kwargs["data"] = _form(self.template, number)
        async with session.request(self.method, base_url + self.url, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text


def _form(parts: Sequence[Part], number: str) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for index, (name, value) in enumerate(parts):
        if isinstance(value, bytes):
            form.add_field(name, value, filename=f"in-{index}.png", content_type="image/png")
        else:
            form.add_field(name, value.replace(json.dumps(_HOLE), number).replace(_HOLE, number))
    return form


def numeric_fields(document: Mapping[str, Any], examples: Examples) -> list[NumericField]:
    """Every numeric field of every operation of ``document`` (an OpenAPI 3.1 document)
    that has one; KeyError when an operation needs an example ``examples`` lacks."""
    walker = _Walker(document)
    found: list[NumericField] = []
    for template_url, operations in document["paths"].items():
        for method, spec in operations.items():
            fields = list(walker.operation(method.upper(), template_url, spec, examples))
            if fields:  # only then does it need the values of its path parameters
                url = _fill_path(template_url, spec, examples.path_params)
                found += [dataclasses.replace(numeric, url=url) for numeric in fields]
    return found


def _fill_path(url: str, spec: Mapping[str, Any], values: Mapping[str, str]) -> str:
    for parameter in spec.get("parameters", []):
        if parameter["in"] == "path":
            url = url.replace("{" + parameter["name"] + "}", values[parameter["name"]])
    return url


def param_name(path: Path) -> str:
    """``("load_balancer", "models", 0, "weight")`` as the API names it:
    ``load_balancer.models[0].weight``."""
    name = ""
    for step in path:
        name += f"[{step}]" if isinstance(step, int) else f".{step}" if name else step
    return name


class _Walker:
    """Finds the numeric fields under the schemas of one document."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self._schemas: Mapping[str, Any] = document.get("components", {}).get("schemas", {})

    def operation(
        self, method: str, url: str, spec: Mapping[str, Any], examples: Examples
    ) -> Iterator[NumericField]:
        """The numeric query parameters and body fields of one operation."""
        for parameter in spec.get("parameters", []):
            if parameter["in"] == "query" and self._is_numeric(parameter["schema"]):
                name = parameter["name"]
                yield NumericField(method, url, "query", name, name)
        content = spec.get("requestBody", {}).get("content", {})
        json_schema = content.get("application/json", {}).get("schema")
        if json_schema is not None:
            bases = examples.json[self._name(json_schema)]
            for name, schema in self._resolve(json_schema).get("properties", {}).items():
                base = _first_with(bases, name)
                for path, value in self.holes(schema, base.get(name)):
                    document = json.dumps({**base, name: value})
                    yield NumericField(method, url, "json", param_name((name, *path)), document)
        form_schema = content.get("multipart/form-data", {}).get("schema")
        if form_schema is not None:
            forms = examples.forms[self._name(form_schema)]
            yield from self._form_fields(method, url, form_schema, json_schema, forms)

    def _form_fields(
        self,
        method: str,
        url: str,
        form_schema: Mapping[str, Any],
        json_schema: Mapping[str, Any] | None,
        forms: Sequence[Sequence[Part]],
    ) -> Iterator[NumericField]:
        """A number part holds the raw number; a JSON-text part (a field the JSON body
        takes as an object or array) holds a document with the number inside."""
        as_json = self._resolve(json_schema or {}).get("properties", {})
        for name, schema in self._resolve(form_schema).get("properties", {}).items():
            parts = _first_with([dict(form) for form in forms], name)
            if self._is_numeric(schema):
                yield NumericField(method, url, "multipart", name, _with_part(parts, name, _HOLE))
                continue
            if name not in as_json or not self._is_structured(as_json[name]):
                continue
            text = parts.get(name)
            base = json.loads(text) if isinstance(text, str) else None
            for path, document in self.holes(as_json[name], base):
                planted = _with_part(parts, name, json.dumps(document))
                yield NumericField(method, url, "multipart", param_name((name, *path)), planted)

    def holes(
        self, schema: Mapping[str, Any], base: Any, seen: frozenset[str] = frozenset()
    ) -> Iterator[tuple[Path, Any]]:
        """``(path, document)`` for each numeric field under ``schema``: ``document`` is
        ``base`` (or the least valid instance) with ``_HOLE`` at ``path``."""
        ref = schema.get("$ref")
        if ref is not None:
            if ref in seen:  # a recursive schema: one level is enough
                return
            seen = seen | {ref}
        schema = self._resolve(schema)
        found: dict[Path, Any] = {}
        for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
            for path, document in self.holes(branch, base, seen):
                found.setdefault(path, document)
        kind = schema.get("type")
        if kind in NUMERIC:
            found.setdefault((), _HOLE)
        elif kind == "object":
            start = dict(base) if isinstance(base, dict) else self.least(schema)
            for name, sub in schema.get("properties", {}).items():
                for path, value in self.holes(sub, start.get(name), seen):
                    found.setdefault((name, *path), {**start, name: value})
        elif kind == "array" and "items" in schema:
            first = base[0] if isinstance(base, list) and base else None
            for path, value in self.holes(schema["items"], first, seen):
                found.setdefault((0, *path), [value])
        yield from found.items()

    def least(self, schema: Mapping[str, Any]) -> Any:
        """A small valid instance of ``schema``: required properties only, the first
        of each choice, the lower bound of each number."""
        schema = self._resolve(schema)
        branches = [b for b in schema.get("anyOf", []) if self._resolve(b).get("type") != "null"]
        if branches:
            return self.least(branches[0])
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object":
            properties = schema.get("properties", {})
            return {name: self.least(properties[name]) for name in schema.get("required", [])}
        if kind == "array":
            return [self.least(schema.get("items", {}))] * schema.get("minItems", 0)
        if kind in NUMERIC:
            return schema.get("minimum", 1)
        if kind == "boolean":
            return False
        return "x" * max(1, schema.get("minLength", 1))

    def _is_numeric(self, schema: Mapping[str, Any]) -> bool:
        return bool(self._kinds(schema) & set(NUMERIC))

    def _is_structured(self, schema: Mapping[str, Any]) -> bool:
        return bool(self._kinds(schema) & {"object", "array"})

    def _kinds(self, schema: Mapping[str, Any]) -> set[str]:
        schema = self._resolve(schema)
        kinds = {schema["type"]} if isinstance(schema.get("type"), str) else set()
        for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
            kinds |= self._kinds(branch)
        return kinds

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self._schemas[self._name(schema)]
        return schema

    @staticmethod
    def _name(schema: Mapping[str, Any]) -> str:
        return str(schema["$ref"]).rsplit("/", 1)[-1]


def _first_with(bases: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    """The first of ``bases`` that sets ``name``, else the first."""
    return next((base for base in bases if name in base), bases[0])


def _with_part(parts: Mapping[str, str | bytes], name: str, text: str) -> list[Part]:
    """``parts`` with the text part ``name`` set to ``text`` (added when absent)."""
    return [*((n, value) for n, value in parts.items() if n != name), (name, text)]


def editq_examples(model: str, image: bytes, *, job_id: str, batch_id: str) -> Examples:
    """Valid requests of each body schema of editq's document, for ``model`` with
    ``image`` as the input, and the ids of an existing job and batch."""
    job = {"model": model, "prompt": "p", "images": [{"image_url": data_url(image)}]}
    defaults = json.dumps({"model": model, "prompt": "p"})
    return Examples(
        json={
            "EditJsonRequest": [job],
            "SyncEditJsonRequest": [job],
            "BatchJsonRequest": [{"defaults": job, "n": 1}, {"defaults": job, "variants": [{}]}],
            "RedeliverRequest": [{}],
            "RotateSecretRequest": [{"expire_previous_in_s": 60}],
        },
        forms={
            "EditForm": [[("model", model), ("prompt", "p"), ("image[]", image)]],
            "SyncEditForm": [[("model", model), ("prompt", "p"), ("image[]", image)]],
            "BatchForm": [
                [("defaults", defaults), ("image[]", image), ("n", "1")],
                [("defaults", defaults), ("image[]", image), ("variants", "[{}]")],
            ],
            "FileUploadForm": [
                [("purpose", "vision"), ("expires_after[anchor]", "created_at"), ("file", image)]
            ],
        },
        path_params={"job_id": job_id, "batch_id": batch_id},
    )
