"""Building the upstream adapters a worker talks to, one per ``[[upstreams]]`` entry.

A synchronous kind's adapter is an ``Upstream`` (``build_upstream``); an
asynchronous kind's (``bfl``, ``replicate``, ``fal``: ``UpstreamConfig.is_async``)
an ``AsyncUpstream`` (``build_async_upstream``). ``build_upstreams`` builds each entry
in its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import aiohttp

from app.core.providers_config import ProvidersConfig, UpstreamConfig
from worker.providers.base import AsyncUpstream, Upstream
from worker.providers.bfl import BflUpstream
from worker.providers.fal import FalUpstream
from worker.providers.gemini import GeminiUpstream
from worker.providers.local.editor import LocalUpstream
from worker.providers.openai import OpenAIUpstream
from worker.providers.orq import OrqUpstream
from worker.providers.replicate import ReplicateUpstream
from worker.providers.requesty import RequestyUpstream

AnyUpstream = Upstream | AsyncUpstream
"""An adapter of either shape (see ``worker.providers.base``)."""

_HTTP_ADAPTERS: dict[str, Callable[[UpstreamConfig, aiohttp.ClientSession], Upstream]] = {
    "openai": OpenAIUpstream,
    "requesty": RequestyUpstream,
    "orq": OrqUpstream,
    "gemini": GeminiUpstream,
}

_ASYNC_ADAPTERS: dict[str, Callable[[UpstreamConfig, aiohttp.ClientSession], AsyncUpstream]] = {
    "bfl": BflUpstream,
    "fal": FalUpstream,
    "replicate": ReplicateUpstream,
}


def build_upstream(
    config: UpstreamConfig, session: aiohttp.ClientSession, executor: Executor
) -> Upstream:
    """The adapter for one upstream entry, by its ``kind``; ``executor`` is the local kind's."""
    if config.kind == "local":
        return LocalUpstream(config, executor)
    return _HTTP_ADAPTERS[config.kind](config, session)


def build_async_upstream(config: UpstreamConfig, session: aiohttp.ClientSession) -> AsyncUpstream:
    """The adapter for an entry whose kind is submitted and polled (``config.is_async``)."""
    return _ASYNC_ADAPTERS[config.kind](config, session)


def build_upstreams(
    providers: ProvidersConfig, session: aiohttp.ClientSession, executor: Executor
) -> dict[str, AnyUpstream]:
    """Every configured upstream, by name, each in its shape."""
    return {
        config.name: (
            build_async_upstream(config, session)
            if config.is_async
            else build_upstream(config, session, executor)
        )
        for config in providers.upstreams
    }
