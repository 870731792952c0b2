"""The Python client's models held against the OpenAPI document the server serves.

The client (``app.client``) imports nothing of the server, so this is where the two
meet: for each answer the client parses, the server's schema is read off
``/openapi.json`` and the client's model is walked against it, field by field and
into nested models. A client model agrees with the server when

- every field it declares is one the server sends (in some alternative, when the
  server sends one of several objects, as ``ImageUrl | ImageB64``);
- every field it requires, the server always sends (a client default for a field the
  server always sends is fine: the client is lenient on purpose);
- its type reads every value the server may send there, ``null`` included, and each
  ``Literal`` it knows equals the server's enum;
- each plain default it assumes is a value the server could send.

The client's status sets (``JOB_TERMINAL``, ``BATCH_TERMINAL``) and ``terminal``
properties must name exactly the server's terminal statuses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from openapi_schema_validator import OAS31Validator
from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

from app.client import models as client_models
from app.client.models import (
    BATCH_TERMINAL,
    JOB_TERMINAL,
    BatchCounts,
    BatchObject,
    JobObject,
    JobPage,
)
from app.core import batches, jobs
from app.core.providers_config import ProvidersConfig
from app.http.app import create_app
from app.http.app_keys import API_DOCUMENT
from app.settings import Settings

Schema = dict[str, Any]

READS: list[tuple[str, str, type[BaseModel]]] = [
    ("post", "/v1/jobs", JobObject),
    ("get", "/v1/jobs/{job_id}", JobObject),
    ("post", "/v1/jobs/{job_id}/cancel", JobObject),
    ("post", "/v1/jobs/{job_id}/retry", JobObject),
    ("get", "/v1/jobs", JobPage),
    ("post", "/v1/batches", BatchObject),
    ("get", "/v1/batches/{batch_id}", BatchObject),
    ("post", "/v1/batches/{batch_id}/cancel", BatchObject),
    ("get", "/v1/batches/{batch_id}/jobs", JobPage),
]
"""Each operation whose answer a method of ``app.client.api`` parses, and with which model."""

SCALARS: dict[Any, tuple[str, ...]] = {
    str: ("string",),
    int: ("integer",),
    float: ("number", "integer"),
    bool: ("boolean",),
}
"""The JSON types each Python scalar reads (pydantic reads a whole number as a float)."""


@pytest.fixture
def spec(settings: Settings, providers: ProvidersConfig) -> Schema:
    """The OpenAPI document, byte for byte what GET /openapi.json serves."""
    document: Schema = json.loads(create_app(settings, providers)[API_DOCUMENT].body)
    return document


@dataclass
class Contract:
    """Walks client models against the server's schemas in ``spec``; every check
    answers the problems it found, each naming the client field at fault."""

    spec: Schema
    compared: set[type[BaseModel]] = field(default_factory=set)
    _walking: set[tuple[type[BaseModel], str]] = field(default_factory=set)

    def answer(self, method: str, path: str) -> Schema:
        """The JSON body schema of the operation's success answers (a submit's 201 and
        202 alike), which must all be the same one."""
        responses = self.spec["paths"][path][method]["responses"]
        successes = [self.resolve(r) for code, r in responses.items() if code.startswith("2")]
        schemas = [success["content"]["application/json"]["schema"] for success in successes]
        assert schemas, f"{method} {path} has no success answer"
        assert all(other == schemas[0] for other in schemas), f"{method} {path}: 2xx bodies differ"
        schema: Schema = schemas[0]
        return schema

    def resolve(self, node: Schema) -> Schema:
        """``node`` with every ``$ref`` followed."""
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def options(self, schema: Schema) -> list[Schema]:
        """The alternatives the server may send for ``schema``, unions flattened."""
        schema = self.resolve(schema)
        for union in ("anyOf", "oneOf"):
            if union in schema:
                return [option for branch in schema[union] for option in self.options(branch)]
        if len(schema.get("allOf", [])) == 1:
            return self.options(schema["allOf"][0])
        if isinstance(schema.get("type"), list):
            return [{**schema, "type": kind} for kind in schema["type"]]
        return [schema]

    def model(self, where: str, model: type[BaseModel], objects: list[Schema]) -> list[str]:
        """``model`` against the object schemas the server may send at ``where``."""
        self.compared.add(model)
        walk = (model, json.dumps(objects, sort_keys=True))
        if walk in self._walking:  # a recursive schema: this comparison is under way
            return []
        self._walking.add(walk)
        try:
            return self.fields(where, model, objects)
        finally:
            self._walking.discard(walk)

    def fields(self, where: str, model: type[BaseModel], objects: list[Schema]) -> list[str]:
        """Each field of ``model`` against the objects' properties of its name."""
        problems = []
        for name, info in model.model_fields.items():
            key = info.alias or name
            here = f"{where}.{key}"
            sent = [o["properties"][key] for o in objects if key in o.get("properties", {})]
            if not sent:
                problems.append(f"{here}: the server never sends it")
                continue
            lax = [o.get("title", "?") for o in objects if key not in o.get("required", [])]
            if info.is_required() and lax:
                problems.append(f"{here}: required, but the server's {lax} may leave it out")
            for schema in sent:
                problems += self.value(here, info.annotation, schema)
                problems += self.default(here, info, schema)
        return problems

    def value(self, where: str, annotation: Any, schema: Schema) -> list[str]:
        """Whether a field of type ``annotation`` reads everything ``schema`` allows."""
        kinds = _members(annotation)
        if Any in kinds:
            return []
        options = self.options(schema)
        problems = []
        models = [kind for kind in kinds if _is_model(kind)]
        objects = [o for o in options if o.get("type") == "object" and "properties" in o]
        if len(models) == 1 and objects:  # one client model reads every object sent here
            problems += self.model(where, models[0], objects)
            options = [option for option in options if option not in objects]
        for option in options:
            attempts = [self.kind(where, kind, option) for kind in kinds]
            if all(attempts):  # no member of the client's type reads this option
                fewest: list[str] = min(attempts, key=len)
                problems += fewest
        return problems

    def kind(self, where: str, kind: Any, option: Schema) -> list[str]:
        """Whether ``kind`` (no union) reads the one server ``option``."""
        origin, args = get_origin(kind), get_args(kind)
        sent = option.get("type", "anything")
        mismatch = [f"{where}: the client's {_name(kind)} cannot read the server's {sent}"]
        if origin is Literal:
            enum = option.get("enum", [option["const"]] if "const" in option else None)
            if enum is None or set(args) != set(enum):
                return [f"{where}: the client knows {sorted(args)}, the server sends {enum}"]
            return []
        if _is_model(kind):
            return self.model(where, kind, [option]) if sent == "object" else mismatch
        if origin in (list, tuple, set, frozenset, Sequence):
            if sent != "array":
                return mismatch
            return self.value(f"{where}[]", args[0] if args else Any, option.get("items", {}))
        if origin in (dict, Mapping):
            return (
                self.values(where, args[1] if args else Any, option)
                if sent == "object"
                else mismatch
            )
        if kind is NoneType:
            return [] if sent == "null" else mismatch
        return [] if sent in SCALARS.get(kind, ()) else mismatch

    def values(self, where: str, annotation: Any, option: Schema) -> list[str]:
        """Whether a mapping's value type reads each value of the server's object."""
        if annotation is Any:
            return []
        extra = option.get("additionalProperties")
        sent = list(option.get("properties", {}).values())
        sent += [extra] if isinstance(extra, dict) else []
        if not sent or extra is True:
            return [f"{where}: the client's {_name(annotation)} values cannot read any value"]
        return [
            problem for schema in sent for problem in self.value(f"{where}{{}}", annotation, schema)
        ]

    def default(self, where: str, info: FieldInfo, schema: Schema) -> list[str]:
        """A plain default the client assumes must be valid where the server sends it."""
        if info.is_required() or info.default_factory is not None or info.default is None:
            return []
        validator = OAS31Validator({**schema, "components": self.spec["components"]})
        if validator.is_valid(info.default):
            return []
        return [f"{where}: the client's default {info.default!r} is never sent by the server"]

    def enum(self, schema: Schema) -> set[str]:
        """The values of the enum ``schema`` is (through its ``$ref``)."""
        (option,) = self.options(schema)
        return set(option["enum"])


def _members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else repr(kind).replace("typing.", "")


def client_model_classes() -> set[type[BaseModel]]:
    """Every public pydantic model of ``app.client.models``."""
    return {
        value
        for name, value in vars(client_models).items()
        if not name.startswith("_") and _is_model(value) and value.__module__ == "app.client.models"
    }


@pytest.mark.parametrize(("method", "path", "model"), READS, ids=[f"{m} {p}" for m, p, _ in READS])
def test_the_client_model_reads_what_the_server_answers(
    spec: Schema, method: str, path: str, model: type[BaseModel]
) -> None:
    contract = Contract(spec)
    assert contract.value(model.__name__, model, contract.answer(method, path)) == []


def test_every_client_model_is_held_against_the_server(spec: Schema) -> None:
    contract = Contract(spec)
    for method, path, model in READS:
        contract.value(model.__name__, model, contract.answer(method, path))
    assert contract.compared == client_model_classes()


def test_the_client_knows_the_servers_job_statuses(spec: Schema) -> None:
    contract = Contract(spec)
    job = contract.resolve(contract.answer("get", "/v1/jobs/{job_id}"))
    statuses = contract.enum(job["properties"]["status"])
    terminal = {status.value for status in jobs.TERMINAL}
    assert terminal <= statuses
    assert JOB_TERMINAL == terminal
    for status in statuses:
        client_job = JobObject(id="job_1", status=status, model="m", created_at=0)
        assert client_job.terminal == (status in terminal), status
        counts = BatchCounts.model_validate({status: 1})
        assert counts.finished == (1 if status in terminal else 0), status


def test_the_client_knows_the_servers_batch_statuses(spec: Schema) -> None:
    contract = Contract(spec)
    batch = contract.resolve(contract.answer("get", "/v1/batches/{batch_id}"))
    statuses = contract.enum(batch["properties"]["status"])
    terminal = {status.value for status in batches.TERMINAL}
    assert terminal <= statuses
    assert BATCH_TERMINAL == terminal
    for status in statuses:
        client_batch = BatchObject(id="batch_1", status=status, total=1, created_at=0)
        assert client_batch.terminal == (status in terminal), status


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _UnsentField(_Open):
    id: str
    colour: str | None = None


class _RequiredButOptional(_Open):
    images: list[dict[str, Any]]
    mask: dict[str, Any]


class _WrongType(_Open):
    created_at: str


class _NotNullable(_Open):
    finished_at: int


class _ShortEnum(_Open):
    status: Literal["queued", "running"]


class _WrongDefault(_Open):
    object: str = "job"


class _Job(_Open):
    id: str
    request: _RequiredButOptional


class _WrongImage(_Open):
    url: str


class _WrongResult(_Open):
    data: list[_WrongImage]


class _WrongNested(_Open):
    result: _WrongResult | None = None


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        (_UnsentField, "JobObject.colour: the server never sends it"),
        (_Job, "JobObject.request.mask: required, but the server's ['JobRequestView'] may"),
        (_Job, "JobObject.request.mask: the client's dict[str, Any] cannot read the server's null"),
        (_WrongType, "JobObject.created_at: the client's str cannot read the server's integer"),
        (_NotNullable, "JobObject.finished_at: the client's int cannot read the server's null"),
        (_ShortEnum, "JobObject.status: the client knows ['queued', 'running'], the server"),
        (_WrongDefault, "JobObject.object: the client's default 'job' is never sent"),
        (_WrongNested, "JobObject.result.data[].url: required, but the server's ['ImageB64']"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_a_drifted_client_model_is_caught(
    spec: Schema, model: type[BaseModel], problem: str
) -> None:
    contract = Contract(spec)
    problems = contract.value("JobObject", model, contract.answer("get", "/v1/jobs/{job_id}"))
    assert any(found.startswith(problem) for found in problems), problems
