"""GET /v1/models and /v1/models/{id}: the configured models and what they can do."""

from __future__ import annotations

from aiohttp import web

from app.core.public import model_object
from app.errors import NotFound
from app.http.app_keys import PROVIDERS
from app.http.openapi import operation
from app.http.schema import ModelList, ModelObject


@operation("List models", tags=("models",), replies={200: ModelList})
async def list_models(request: web.Request) -> web.Response:
    """The models of the providers file, in the OpenAI list shape."""
    data = [model_object(model).model_dump(mode="json") for model in request.app[PROVIDERS].models]
    return web.json_response({"object": "list", "data": data})


@operation("Read a model", tags=("models",), replies={200: ModelObject}, errors=(404,))
async def get_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model_id}: one model in the OpenAI shape (ids may contain ``/``);
    404 ``model_not_found`` for an id the providers file does not name."""
    model_id = request.match_info["model_id"]
    try:
        model = request.app[PROVIDERS].model(model_id)
    except KeyError:
        raise NotFound(
            f"the model {model_id!r} does not exist; GET /v1/models lists them",
            param="model",
            code="model_not_found",
        ) from None
    return web.json_response(model_object(model).model_dump(mode="json"))
