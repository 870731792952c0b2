"""Building the upstream adapters a worker talks to, one per ``[[upstreams]]`` entry."""

from __future__ import annotations

from concurrent.futures import Executor

import aiohttp

from app.providers_config import ProvidersConfig, UpstreamConfig
from worker.providers.base import Upstream
from worker.providers.local import LocalUpstream
from worker.providers.openai import OpenAIUpstream


def build_upstream(
    config: UpstreamConfig, session: aiohttp.ClientSession, executor: Executor
) -> Upstream:
    """The adapter for one upstream entry, by its ``kind``."""
    if config.kind == "local":
        return LocalUpstream(config, executor)
    return OpenAIUpstream(config, session)


def build_upstreams(
    providers: ProvidersConfig, session: aiohttp.ClientSession, executor: Executor
) -> dict[str, Upstream]:
    """Every configured upstream, by name."""
    return {
        config.name: build_upstream(config, session, executor) for config in providers.upstreams
    }
