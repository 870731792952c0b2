"""The request rules that single jobs and batch variants share, written once.

``check_models`` is the one check that every model a request names (its main
model, each fallback and each load-balancer model) exists and edits images.
``in_variant`` relabels an error raised for one variant of a batch so that its
``param`` points at the variant (``variants[3].size``) or at the batch's
defaults (``defaults.size``), whichever set the field at fault.
"""

from __future__ import annotations

from collections.abc import Collection

from app.core.edit_params import EditParams
from app.core.providers_config import ProvidersConfig
from app.errors import EditqError


def check_models(params: EditParams, providers: ProvidersConfig) -> None:
    """Raise ModelNotFound or ModelCapabilityMismatch (400, ``param`` at fault) unless
    every model the request names exists and edits images."""
    providers.edit_model(params.model)
    routing = params.routing
    for index, fallback in enumerate(routing.fallbacks):
        providers.edit_model(fallback.model, param=f"fallbacks[{index}].model")
    if routing.load_balancer is not None:
        for index, weighted in enumerate(routing.load_balancer.models):
            providers.edit_model(weighted.model, param=f"load_balancer.models[{index}].model")


def in_variant(error: EditqError, index: int, override: Collection[str]) -> EditqError:
    """``error`` (raised for variant ``index``) located in the batch request: under
    ``variants[index]`` when the variant itself set the field at fault (``override``
    holds the fields it set), else under ``defaults``. Returns the same error."""
    root = (error.param or "").split(".")[0].split("[")[0]
    where = f"variants[{index}]" if root in override else "defaults"
    error.param = f"{where}.{error.param}" if error.param else where
    error.message = f"{where}: {error.message}"
    return error
