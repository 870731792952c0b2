"""The ``editq`` command: ``dev`` (everything embedded), ``api`` and ``worker``, and
the client commands ``edit``, ``status``, ``wait``, ``cancel`` and ``batch``.

``editq worker`` starts the worker program (``python -m worker``) by name, so the
front end never imports worker code. The client commands live in ``app.cli.client_commands``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from app.cli.client_commands import (
    CLIENT_COMMANDS,
    CLIENT_EPILOG,
    add_client_commands,
    run_client_command,
)
from app.cli.dev import serve_dev
from app.core.providers_config import ProvidersConfig, ProvidersFileError, load_providers
from app.http.app import create_app
from app.http.server import serve
from app.obs.logs import configure_logging
from app.settings import Settings

DESCRIPTION = """\
editq: an asynchronous job queue for slow AI image edits.

Run the service with "editq dev" (everything on this machine, data in memory), or
"editq api" and "editq worker" (configured from EDITQ_* environment variables).
Talk to a running service with edit, status, wait, cancel and batch."""

SERVER_HELP = {
    "dev": (
        "run the API, a worker, Redis and S3 on this machine",
        "Run everything on this machine for trying editq out: the API, one worker, and "
        "a Redis and an S3-compatible server of its own unless EDITQ_REDIS_URL and "
        "EDITQ_S3_ENDPOINT_URL name others. Prints the dashboard's address, the API "
        "key and an example; its data is in memory and gone on exit. Ctrl-C stops it.",
    ),
    "api": (
        "run the HTTP API",
        "Run the HTTP API, configured from EDITQ_* environment variables "
        "(EDITQ_API_KEYS, EDITQ_REDIS_URL, EDITQ_S3_ENDPOINT_URL ...). Run workers "
        "with editq worker.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``editq`` command line; ``worker``'s own options are ``worker.process.main``'s."""
    parser = argparse.ArgumentParser(
        prog="editq",
        description=DESCRIPTION,
        epilog=CLIENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, description) in SERVER_HELP.items():
        command = commands.add_parser(name, help=help_text, description=description)
        command.add_argument("--host", default="127.0.0.1", help="address to listen on")
        command.add_argument("--port", type=int, default=8080, help="port to listen on")
    commands.add_parser(
        "worker", help="run a worker (editq worker --help for its options)", add_help=False
    )
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "worker":
        os.execv(sys.executable, [sys.executable, "-m", "worker", *rest])
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    settings = Settings()
    if args.command == "dev" and settings.log_format is None:
        # People read dev logs; the worker it starts inherits this through the environment.
        settings = settings.model_copy(update={"log_format": "text"})
    configure_logging(settings)
    try:
        providers = load_providers(settings.providers_file, os.environ)
    except ProvidersFileError as exc:
        print(f"editq: {exc}", file=sys.stderr)
        return 2
    if args.command == "dev":
        return asyncio.run(serve_dev(settings, providers, args.host, args.port))
    return _serve_api(settings, providers, args.host, args.port)


def _serve_api(settings: Settings, providers: ProvidersConfig, host: str, port: int) -> int:
    if not settings.api_keys:
        print(
            "editq api: EDITQ_API_KEYS is empty, so no client could call the API", file=sys.stderr
        )
        return 2
    asyncio.run(serve(create_app(settings, providers), host, port))
    return 0
