"""The OpenAPI 3.1 document of the HTTP API, generated from the route table.

Each handler declares its operation next to its code with ``@operation(...)``: a
summary, the pydantic models of its query string, request bodies and replies, and
the error statuses it can answer. ``build_document`` walks ``app.router.routes()``,
looks each handler up and renders one operation per route; a route whose handler
was never declared still appears (from its docstring) and is listed by
``undescribed_routes``, which the tests require to be empty. Schemas come from the
models themselves (``pydantic.json_schema.models_json_schema``), error responses
from the exception tree in ``app.errors``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)
from pydantic_core import core_schema

from app.errors import EditqError
from app.http.schema import ErrorBody

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HandlerT = TypeVar("HandlerT", bound=Handler)
ModelKey = tuple[type[BaseModel], JsonSchemaMode]

REF_TEMPLATE = "#/components/schemas/{model}"
PATH_PARAMETER = re.compile(r"\{(\w+)\}")
HEADERS: dict[str, dict[str, Any]] = {
    "x-request-id": {
        "description": "the request's id (the client's own x-request-id when it is valid)",
        "schema": {"type": "string"},
    },
    "Location": {"description": "where to read the created resource", "schema": {"type": "string"}},
    "x-job-id": {"description": "the job behind this answer", "schema": {"type": "string"}},
    "Preference-Applied": {
        "description": "wait=N: the answer was held up to N seconds, as Prefer asked",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "string"},
    },
}
RETRY_AFTER_STATUSES = frozenset({429, 503})
AUTHENTICATED_ERRORS = (401, 429, 503)
"""What every route behind a key can answer: no key, over its rate limit, Redis down."""


@dataclass(frozen=True)
class Reply:
    """A response body: a pydantic model as JSON, or another media type (described
    in words, with ``model`` as the shape of each line for JSON Lines); no body when
    ``media_type`` is empty."""

    model: type[BaseModel] | None = None
    media_type: str = "application/json"
    description: str = ""
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """What one handler takes and answers; see ``operation``."""

    summary: str
    description: str
    tags: tuple[str, ...]
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    json_body: type[BaseModel] | None = None
    form_body: type[BaseModel] | None = None
    body_required: bool = True

    def models(self) -> Iterator[ModelKey]:
        """Every model the operation mentions, with the JSON Schema mode it is used in."""
        for request_model in (self.query, self.headers, self.json_body, self.form_body):
            if request_model is not None:
                yield request_model, "validation"
        for reply in self.replies.values():
            if reply.model is not None:
                yield reply.model, "serialization"


_OPERATIONS: dict[Callable[..., Any], Operation] = {}


def operation(
    summary: str,
    *,
    tags: tuple[str, ...],
    replies: Mapping[int, Reply | type[BaseModel]],
    errors: Collection[int] = (),
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
    json_body: type[BaseModel] | None = None,
    form_body: type[BaseModel] | None = None,
    body_required: bool = True,
) -> Callable[[HandlerT], HandlerT]:
    """Declare the handler's operation (its docstring becomes the description).

    ``replies`` maps success statuses to a model or a ``Reply``; ``errors`` lists the
    error statuses it can answer (``AUTHENTICATED_ERRORS`` are added for every route
    that needs a key). ``query`` and ``headers`` are models whose fields (by alias)
    are the query and header parameters.
    """

    def register(handler: HandlerT) -> HandlerT:
        _OPERATIONS[handler] = Operation(
            summary=summary,
            description=inspect.getdoc(handler) or "",
            tags=tags,
            replies={
                status: reply if isinstance(reply, Reply) else Reply(reply)
                for status, reply in replies.items()
            },
            errors=tuple(sorted(set(errors))),
            query=query,
            headers=headers,
            json_body=json_body,
            form_body=form_body,
            body_required=body_required,
        )
        return handler

    return register


def operation_of(handler: Callable[..., Any]) -> Operation | None:
    """The operation declared for ``handler``, if any."""
    return _OPERATIONS.get(handler)


def undescribed_routes(app: web.Application) -> list[str]:
    """``"METHOD /path"`` of every route whose handler declares no operation."""
    return [
        f"{method} {path}" for method, path, handler in _routes(app) if not operation_of(handler)
    ]


@dataclass(frozen=True)
class ApiDocument:
    """The OpenAPI document, and its JSON as served."""

    spec: dict[str, Any]
    body: bytes


def build_document(app: web.Application, *, public_paths: Collection[str]) -> ApiDocument:
    """The OpenAPI 3.1 document of every route of ``app`` (HEAD excepted); routes under
    ``public_paths`` need no key."""
    routes = [
        (method, path, operation_of(handler) or _from_docstring(handler))
        for method, path, handler in _routes(app)
    ]
    schemas = _Schemas(
        [(ErrorBody, "serialization"), *(k for _, _, op in routes for k in op.models())]
    )
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in routes:
        public = path in public_paths
        paths.setdefault(path, {})[method.lower()] = _operation_object(
            method, path, op, schemas, public=public
        )
    spec = {
        "openapi": "3.1.0",
        "info": _info(),
        "servers": [{"url": "/", "description": "this editq server"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": tag} for tag in dict.fromkeys(t for _, _, op in routes for t in op.tags)],
        "paths": paths,
        "components": {
            "schemas": schemas.definitions,
            "responses": _error_responses(
                sorted({*AUTHENTICATED_ERRORS, *(s for _, _, op in routes for s in op.errors)})
            ),
            "headers": HEADERS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key from EDITQ_API_KEYS",
                }
            },
        },
    }
    return ApiDocument(spec=spec, body=json.dumps(spec, indent=1).encode())


def _routes(app: web.Application) -> Iterator[tuple[str, str, Callable[..., Any]]]:
    for route in app.router.routes():
        if route.method != "HEAD" and route.resource is not None:
            yield route.method, route.resource.canonical, route.handler


def _from_docstring(handler: Callable[..., Any]) -> Operation:
    doc = inspect.getdoc(handler) or handler.__name__
    return Operation(
        summary=doc.splitlines()[0], description=doc, tags=("undescribed",), replies={200: Reply()}
    )


def _info() -> dict[str, Any]:
    try:
        version = metadata.version("editq")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return {
        "title": "editq",
        "version": version,
        "summary": "An asynchronous job queue for slow AI image edits.",
        "description": "Submit an image edit, get a job id at once, poll or long-poll "
        'for the result. Every error is `{"error": {"message", "type", "code", '
        '"param"}}` and every response carries `x-request-id`.',
    }


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema, without ``default: null`` on a field that cannot be null
    (an optional multipart part): a default must be valid against its schema."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) is None and not _nullable(json_schema):
            del json_schema["default"]
        return json_schema


def _nullable(schema: JsonSchemaValue) -> bool:
    kinds = schema.get("type")
    options = schema.get("anyOf", [])
    return (
        kinds == "null"
        or (isinstance(kinds, list) and "null" in kinds)
        or any(option.get("type") == "null" for option in options)
    )


class _Schemas:
    """The component schemas of a set of models, and references to them."""

    def __init__(self, keys: Collection[ModelKey]) -> None:
        unique = list(dict.fromkeys(keys))
        refs, top = models_json_schema(
            unique, ref_template=REF_TEMPLATE, schema_generator=_Generator
        )
        self._refs = refs
        self.definitions: dict[str, Any] = top.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        """The schema that points at ``model``'s component."""
        return dict(self._refs[(model, mode)])

    def fields(self, model: type[BaseModel]) -> tuple[dict[str, Any], list[str]]:
        """A request model's properties and required names, in validation mode."""
        name = self._refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        definition = self.definitions[name]
        return definition.get("properties", {}), definition.get("required", [])


def _operation_object(
    method: str, path: str, op: Operation, schemas: _Schemas, *, public: bool
) -> dict[str, Any]:
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    result: dict[str, Any] = {
        "operationId": f"{method.lower()}_{slug}",
        "summary": op.summary,
        "description": op.description,
        "tags": list(op.tags),
    }
    parameters = _parameters(path, op, schemas)
    if parameters:
        result["parameters"] = parameters
    body = _request_body(op, schemas)
    if body is not None:
        result["requestBody"] = body
    responses = {str(status): _reply(reply, schemas) for status, reply in op.replies.items()}
    errors = set(op.errors) if public else {*op.errors, *AUTHENTICATED_ERRORS}
    for status in sorted(errors):
        responses[str(status)] = {"$ref": f"#/components/responses/{_error_name(status)}"}
    result["responses"] = responses
    if public:
        result["security"] = []
    return result


def _parameters(path: str, op: Operation, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in PATH_PARAMETER.findall(path)
    ]
    for where, model in (("query", op.query), ("header", op.headers)):
        if model is None:
            continue
        properties, required = schemas.fields(model)
        for name, schema in properties.items():
            parameter = {"name": name, "in": where, "required": name in required}
            if "description" in schema:
                parameter["description"] = schema["description"]
            parameters.append(parameter | {"schema": _parameter_schema(schema)})
    return parameters


def _parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema as a parameter's: absent rather than null, no title or description."""
    result = {k: v for k, v in schema.items() if k not in ("title", "description")}
    options = [option for option in result.pop("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        result |= options[0]
    elif options:
        result["anyOf"] = options
    if result.get("default", ...) is None:
        del result["default"]
    return result


def _request_body(op: Operation, schemas: _Schemas) -> dict[str, Any] | None:
    content: dict[str, Any] = {}
    if op.json_body is not None:
        content["application/json"] = {"schema": schemas.ref(op.json_body, "validation")}
    if op.form_body is not None:
        content["multipart/form-data"] = {"schema": schemas.ref(op.form_body, "validation")}
    if not content:
        return None
    return {"required": op.body_required, "content": content}


def _reply(reply: Reply, schemas: _Schemas) -> dict[str, Any]:
    description = reply.description or (
        inspect.getdoc(reply.model) or "" if reply.model is not None else ""
    )
    result: dict[str, Any] = {"description": description.splitlines()[0] if description else "OK"}
    result["headers"] = _headers(("x-request-id", *reply.headers))
    if not reply.media_type:  # no body (204)
        return result
    schema: dict[str, Any]
    if reply.media_type == "application/json":
        schema = schemas.ref(reply.model, "serialization") if reply.model else {"type": "object"}
    else:
        schema = {"type": "string"}
        if reply.model is not None:
            schema["description"] = f"each line one {reply.model.__name__} (JSON)"
            schema["x-line-schema"] = schemas.ref(reply.model, "serialization")
    result["content"] = {reply.media_type: {"schema": schema}}
    return result


def _headers(names: Collection[str]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _error_name(status: int) -> str:
    return "".join(word.capitalize() for word in HTTPStatus(status).name.split("_"))


def _error_responses(statuses: list[int]) -> dict[str, Any]:
    """One response per error status, described by the exception classes answering it."""
    ref = {"$ref": REF_TEMPLATE.format(model=ErrorBody.__name__)}
    responses: dict[str, Any] = {}
    for status in statuses:
        headers = ["x-request-id"]
        if status in RETRY_AFTER_STATUSES:
            headers.append("Retry-After")
        responses[_error_name(status)] = {
            "description": _error_description(status),
            "content": {"application/json": {"schema": ref}},
            "headers": _headers(headers),
        }
    return responses


def _error_description(status: int) -> str:
    reasons: list[str] = []
    pending: list[type[EditqError]] = [EditqError]
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        doc = inspect.getdoc(cls)
        if cls.status == status and not cls.__name__.startswith("_") and doc:
            reasons.append(f"{cls.__name__} ({cls.default_code}): {doc.splitlines()[0]}")
    return " ".join(reasons) or HTTPStatus(status).phrase
