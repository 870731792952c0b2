"""``python -m worker`` / ``editq worker``: run one arq worker process.

``--check`` probes the health-check key a live worker refreshes and exits 0 if it
is fresh, 1 otherwise (for container liveness probes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from arq.worker import async_check_health

from app.core.jobs import Lane
from app.core.providers_config import ProvidersConfig, ProvidersFileError, load_providers
from app.dispatch import health_check_key, redis_settings
from app.obs.logs import configure_logging
from app.settings import Settings
from worker.process.lanes import LaneWorkers


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line (``python -m worker`` and ``editq worker``)."""
    parser = argparse.ArgumentParser(
        prog="editq worker",
        description="Run a worker: it takes jobs from the queue in Redis and calls the "
        "upstreams. Start as many as you like, on any machine; each reads its settings "
        "from the EDITQ_* environment variables, like the API.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker refreshed its health key recently, else 1 "
        "(for container liveness probes)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGINT/SIGTERM; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    if args.check:
        return asyncio.run(
            async_check_health(
                redis_settings(settings.redis_url),
                health_check_key(settings.queue_name, Lane.INTERACTIVE),
                settings.queue_name,
            )
        )
    try:
        providers = load_providers(settings.providers_file, os.environ)
    except ProvidersFileError as exc:
        print(f"editq worker: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(settings, providers))
    return 0


async def _serve(settings: Settings, providers: ProvidersConfig) -> None:
    # arq's Worker captures the event loop when it is built: build it inside ours.
    await LaneWorkers(settings, providers).run()
