"""GET /v1/models: the configured models and what they can do."""

from __future__ import annotations

from aiohttp import web

from app.http.app_keys import PROVIDERS
from app.http.openapi import operation
from app.http.schema import ModelList


@operation("List models", tags=("models",), replies={200: ModelList})
async def list_models(request: web.Request) -> web.Response:
    """The models of the providers file, in the OpenAI list shape."""
    providers = request.app[PROVIDERS]
    data = [
        {
            "id": model.id,
            "object": "model",
            "created": 0,
            "owned_by": model.upstream,
            "description": model.description,
            "capabilities": list(model.capabilities),
            "architecture": {
                "input_modalities": ["text", "image"],
                "output_modalities": ["image"],
                "features": list(model.capabilities),
            },
        }
        for model in providers.models
    ]
    return web.json_response({"object": "list", "data": data})
