"""Building the upstream adapters a worker talks to, one per ``[[upstreams]]`` entry.

A synchronous kind's adapter is an ``Upstream``; an asynchronous kind's (``bfl`` …,
``app.core.providers_config.ASYNC_KINDS``) an ``AsyncUpstream``, built with the
model entries that run on it (their ``max_images`` and input fields).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor

import aiohttp

from app.core.providers_config import ModelConfig, ProvidersConfig, UpstreamConfig
from worker.providers.base import AsyncUpstream, Upstream
from worker.providers.bfl import BflUpstream
from worker.providers.local.editor import LocalUpstream
from worker.providers.openai import OpenAIUpstream
from worker.providers.orq import OrqUpstream
from worker.providers.requesty import RequestyUpstream

AnyUpstream = Upstream | AsyncUpstream
"""An adapter of either shape (see ``worker.providers.base``)."""

_HTTP_ADAPTERS: dict[str, Callable[[UpstreamConfig, aiohttp.ClientSession], Upstream]] = {
    "openai": OpenAIUpstream,
    "requesty": RequestyUpstream,
    "orq": OrqUpstream,
}

_ASYNC_ADAPTERS: dict[
    str,
    Callable[[UpstreamConfig, aiohttp.ClientSession, Mapping[str, ModelConfig]], AsyncUpstream],
] = {
    "bfl": BflUpstream,
}


def build_upstream(
    config: UpstreamConfig,
    session: aiohttp.ClientSession,
    executor: Executor,
    models: Mapping[str, ModelConfig] | None = None,
) -> AnyUpstream:
    """The adapter for one upstream entry, by its ``kind``; ``executor`` is the local
    kind's, ``models`` (by ``upstream_model``) the asynchronous kinds'. KeyError for a
    kind this version has no adapter for."""
    if config.kind == "local":
        return LocalUpstream(config, executor)
    if config.kind in _ASYNC_ADAPTERS:
        return _ASYNC_ADAPTERS[config.kind](config, session, models or {})
    return _HTTP_ADAPTERS[config.kind](config, session)


def build_upstreams(
    providers: ProvidersConfig, session: aiohttp.ClientSession, executor: Executor
) -> dict[str, AnyUpstream]:
    """Every configured upstream, by name."""
    return {
        config.name: build_upstream(
            config,
            session,
            executor,
            {m.upstream_model: m for m in providers.models if m.upstream == config.name},
        )
        for config in providers.upstreams
    }
