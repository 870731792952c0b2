"""The OpenAPI document: valid 3.1, generated from every route, schemas that resolve
and match what the API really answers; /openapi.json and /docs served without a key."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_instance
from openapi_spec_validator import OpenAPIV31SpecValidator

from app.core.jobs import JobStatus
from app.core.providers_config import ProvidersConfig
from app.http.app import create_app
from app.http.app_keys import API_DOCUMENT
from app.http.middleware.errors import PUBLIC_PATHS
from app.http.openapi import build_document, operation, undescribed_routes
from app.settings import Settings
from tests.support.service import RunningService

SUBMIT_PATHS = ("/v1/jobs", "/v1/images/edits", "/v2/router/images/edits", "/v1/batches")


@pytest.fixture(scope="module")
def app() -> web.Application:
    """The real application (nothing connects until it starts)."""
    providers = ProvidersConfig.model_validate(
        {
            "upstreams": [{"name": "local", "kind": "local"}],
            "models": [{"id": "local/editor", "upstream": "local", "upstream_model": "pillow"}],
        }
    )
    return create_app(Settings(api_keys="key-a"), providers)


@pytest.fixture(scope="module")
def spec(app: web.Application) -> dict[str, Any]:
    return app[API_DOCUMENT].spec


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` within the document until a node without one."""
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def conforms(spec: dict[str, Any], instance: object, schema: dict[str, Any]) -> None:
    """Validate ``instance`` against ``schema``, resolving refs within ``spec``."""
    validate_instance(instance, {**schema, "components": spec["components"]}, cls=OAS31Validator)


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(spec).validate()
    assert spec["servers"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_every_route_is_in_the_document_with_its_method(
    app: web.Application, spec: dict[str, Any]
) -> None:
    assert undescribed_routes(app) == []
    routes = [route for route in app.router.routes() if route.method != "HEAD"]
    assert len(routes) >= 20
    for route in routes:
        assert route.resource is not None
        path = route.resource.canonical
        assert route.method.lower() in spec["paths"].get(path, {}), f"{route.method} {path}"
    documented = sum(len(item) for item in spec["paths"].values())
    assert documented == len(routes)
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


async def undeclared(request: web.Request) -> web.Response:
    """GET /v9/undeclared: a handler nobody described."""
    return web.Response()


@operation("Declared", tags=("test",), replies={200: ProvidersConfig}, errors=(404,))
async def declared(request: web.Request) -> web.Response:
    """A described handler."""
    return web.Response()


def test_a_route_without_an_operation_is_reported_and_still_documented() -> None:
    app = web.Application()
    app.router.add_get("/v9/undeclared", undeclared)
    app.router.add_get("/v9/declared/{thing_id}", declared)
    assert undescribed_routes(app) == ["GET /v9/undeclared"]
    spec = build_document(app, public_paths=()).spec
    summary = spec["paths"]["/v9/undeclared"]["get"]["summary"]
    assert summary == "GET /v9/undeclared: a handler nobody described."
    operation_object = spec["paths"]["/v9/declared/{thing_id}"]["get"]
    assert operation_object["parameters"][0] == {
        "name": "thing_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    assert {"200", "401", "404"} <= set(operation_object["responses"])
    OpenAPIV31SpecValidator(spec).validate()


def test_the_job_object_resolves_with_its_status_enum(spec: dict[str, Any]) -> None:
    reply = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]
    job = resolve(spec, reply["content"]["application/json"]["schema"])
    assert {"id", "status", "request", "attempts", "result", "error"} <= set(job["required"])
    status = resolve(spec, job["properties"]["status"])
    assert status["enum"] == [status.value for status in JobStatus]
    attempt = resolve(spec, job["properties"]["attempts"]["items"])
    assert "duration_ms" in attempt["properties"]
    outcome = resolve(spec, attempt["properties"]["outcome"])
    assert outcome["enum"] == ["in_flight", "succeeded", "failed", "lost", "canceled"]


@pytest.mark.parametrize("path", SUBMIT_PATHS)
def test_submits_take_json_and_multipart(spec: dict[str, Any], path: str) -> None:
    body = spec["paths"][path]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "multipart/form-data"}
    form = resolve(spec, body["content"]["multipart/form-data"]["schema"])
    # One property for the files (generated clients drop a form whose names clash).
    images = [name for name in form["properties"] if name.startswith("image")]
    assert images == ["image[]"]
    assert form["properties"]["image[]"]["items"]["format"] == "binary"
    responses = spec["paths"][path]["post"]["responses"]
    assert {"400", "401", "413", "415", "503"} <= set(responses)


@pytest.mark.parametrize(
    ("path", "default"),
    [
        ("/v1/jobs", "url"),
        ("/v1/images/edits", "b64_json"),  # as OpenAI's edit endpoint answers
        ("/v2/router/images/edits", "b64_json"),
    ],
)
def test_each_submit_documents_the_response_format_it_applies(
    spec: dict[str, Any], path: str, default: str
) -> None:
    for content in spec["paths"][path]["post"]["requestBody"]["content"].values():
        body = resolve(spec, content["schema"])
        assert body["properties"]["response_format"]["default"] == default


def test_edit_json_body_reuses_the_edit_params(spec: dict[str, Any]) -> None:
    edit = spec["components"]["schemas"]["EditJsonRequest"]
    assert {"model", "prompt", "images"} <= set(edit["required"])
    assert edit["properties"]["n"]["maximum"] == 10
    assert "retry" in edit["properties"] and "routing" not in edit["properties"]


def test_a_batch_variant_is_described_by_the_edit_fields(spec: dict[str, Any]) -> None:
    """A variant overrides edit fields, so the document types them (and fuzzers and
    clients can reach every number inside a variant), none required."""
    batch = spec["components"]["schemas"]["BatchJsonRequest"]
    variants = next(b for b in batch["properties"]["variants"]["anyOf"] if b["type"] == "array")
    variant = resolve(spec, variants["items"])
    edit = spec["components"]["schemas"]["EditJsonRequest"]
    assert set(variant["properties"]) == set(edit["properties"]) - {"images", "mask"}
    assert variant["properties"]["n"]["maximum"] == 10
    assert not variant.get("required")
    assert resolve(spec, variant["properties"]["timeout"]["anyOf"][0])["properties"]


def test_query_parameters_come_from_their_models(spec: dict[str, Any]) -> None:
    def query(path: str) -> dict[str, dict[str, Any]]:
        parameters = spec["paths"][path]["get"]["parameters"]
        return {p["name"]: p["schema"] for p in parameters if p["in"] == "query"}

    assert query("/v1/jobs/{job_id}")["wait"] == {
        "default": 0,
        "maximum": 300,
        "minimum": 0,
        "type": "number",
    }
    listing = query("/v1/jobs")
    assert set(listing) == {"limit", "after", "status"}
    assert resolve(spec, listing["status"])["enum"] == [s.value for s in JobStatus]
    assert listing["limit"]["maximum"] == 100


def test_errors_share_the_error_body_and_public_routes_need_no_key(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for op in item.values():
            public = path in PUBLIC_PATHS
            assert (op.get("security") == []) == public, path
            assert ("401" in op["responses"]) != public, path
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and "$ref" in response:
                    content = resolve(spec, response)["content"]["application/json"]
                    assert resolve(spec, content["schema"]) == resolve(
                        spec, {"$ref": "#/components/schemas/ErrorBody"}
                    )
    error = spec["components"]["schemas"]["ErrorDetail"]
    assert "not_found" in error["properties"]["code"]["description"]
    assert "Retry-After" in spec["components"]["responses"]["TooManyRequests"]["headers"]


async def test_served_without_a_key_and_answers_conform(service: RunningService) -> None:
    async with service.client.get(service.url("/openapi.json")) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        spec: dict[str, Any] = await response.json()
    OpenAPIV31SpecValidator(spec).validate()
    status, job, _ = await service.submit()
    assert status == 202
    paths = spec["paths"]

    def schema(path: str, method: str, code: str) -> dict[str, Any]:
        content = resolve(spec, paths[path][method]["responses"][code])["content"]
        return dict(content["application/json"]["schema"])

    conforms(spec, job, schema("/v1/jobs", "post", "202"))
    done = await service.wait(job["id"])
    assert done["status"] == "succeeded" and done["result"]["data"][0]["url"]
    conforms(spec, done, schema("/v1/jobs/{job_id}", "get", "200"))
    for path, documented in (
        (f"/v1/jobs/{job['id']}", "/v1/jobs/{job_id}"),
        ("/v1/jobs", "/v1/jobs"),
        ("/v1/models", "/v1/models"),
        ("/v1/webhooks/secret", "/v1/webhooks/secret"),
        (f"/v1/jobs/{job['id']}/deliveries", "/v1/jobs/{job_id}/deliveries"),
    ):
        status, body = await service.get(path)
        assert status == 200, body
        conforms(spec, body, schema(documented, "get", "200"))
    status, body = await service.get("/v1/jobs/job_missing")
    assert status == 404
    conforms(spec, body, schema("/v1/jobs/{job_id}", "get", "404"))


async def test_the_docs_page_is_generated_from_the_document(api_only: RunningService) -> None:
    service = api_only
    async with service.client.get(service.url("/docs")) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    async with service.client.get(service.url("/openapi.json")) as response:
        spec: dict[str, Any] = await response.json()
    for path, item in spec["paths"].items():
        assert f"<code>{path}</code>" in page
        for op in item.values():
            assert f'id="{op["operationId"]}"' in page
    assert 'id="schema-JobObject"' in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
