"""The ``editq`` client commands: ``edit``, ``status``, ``wait``, ``cancel`` and ``batch``.

They call a running editq over HTTP with ``AsyncEditqClient``, configured by
``EDITQ_URL`` and ``EDITQ_API_KEY`` (``ClientSettings``, read once per command).
Output is for people unless ``--json`` asks for the raw object. An error is one
line on stderr and exit status 1 (2 when the configuration is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import textwrap
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from app.client.api import AsyncEditqClient
from app.client.models import BatchObject, EditqClientError, JobObject

CLIENT_COMMANDS = ("edit", "status", "wait", "cancel", "batch")
DEFAULT_MODEL = "local/editor"
DEFAULT_URL = "http://127.0.0.1:8080"
BATCH_POLL_S = 5.0
SLUG_CHARS = 40  # of a prompt, in a downloaded variant's file name


class ClientSettings(BaseSettings):
    """Where the client commands find the service, from ``EDITQ_URL``/``EDITQ_API_KEY``."""

    model_config = SettingsConfigDict(env_prefix="EDITQ_", frozen=True, extra="ignore")

    url: str = DEFAULT_URL
    api_key: SecretStr | None = None


CLIENT_EPILOG = f"""\
The client commands (edit, status, wait, cancel, batch) call the service at
EDITQ_URL (default {DEFAULT_URL}) with the API key in EDITQ_API_KEY, e.g.
  export EDITQ_URL={DEFAULT_URL} EDITQ_API_KEY=sk-editq-dev"""


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client subcommands on the ``editq`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the raw JSON object")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", metavar="DIR", type=Path, help="download outputs here")
    fields = argparse.ArgumentParser(add_help=False)
    fields.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    fields.add_argument("--size", help="WIDTHxHEIGHT or auto")
    fields.add_argument("--output-format", help="png, jpeg or webp")

    def add(
        name: str, parents: list[argparse.ArgumentParser], summary: str, details: str = ""
    ) -> Any:
        # The epilog keeps its lines, so the description is wrapped here.
        description = textwrap.fill(f"{summary[0].upper()}{summary[1:]}. {details}".strip(), 79)
        return commands.add_parser(
            name,
            parents=parents,
            help=summary,
            description=description,
            epilog=CLIENT_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    edit = add("edit", [common, fields, output], "submit an edit (-o implies --wait)")
    edit.add_argument("image", type=Path, help="the image file to edit (PNG, JPEG or WebP)")
    edit.add_argument("prompt", help="what to do, e.g. 'make it sepia'")
    edit.add_argument("--mask", type=Path, help="a PNG whose transparent pixels mark the edit")
    edit.add_argument("--n", type=int, default=1, help="how many outputs (1-10)")
    edit.add_argument("--wait", action="store_true", help="wait until the job finishes")
    status = add("status", [common], "show a job")
    status.add_argument("job_id", help="the job's id (job_...)")
    wait = add("wait", [common, output], "wait for a job to finish")
    wait.add_argument("job_id", help="the job's id (job_...)")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds")
    cancel = add("cancel", [common], "cancel a job")
    cancel.add_argument("job_id", help="the job's id (job_...)")
    batch = add(
        "batch",
        [common, fields, output],
        "one edit per line of a prompts file",
        "Shows a live progress bar; with -o, downloads each variant's outputs as it "
        "finishes, named by variant index and prompt (0007-make-it-sepia-0.png).",
    )
    batch.add_argument("image", type=Path, help="the image file every variant edits")
    batch.add_argument(
        "--prompts", metavar="FILE", type=Path, required=True, help="one prompt per line"
    )


def run_client_command(args: argparse.Namespace) -> int:
    """Run the client command ``args.command``; its exit status."""
    try:
        settings = ClientSettings()
    except ValidationError as exc:
        return _fail(f"bad EDITQ_ configuration: {exc.errors()[0]['msg']}", 2)
    api_key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not api_key:
        return _fail("set EDITQ_API_KEY to one of the service's API keys", 2)
    try:
        return asyncio.run(_run(args, settings.url, api_key))
    except EditqClientError as exc:
        return _fail(str(exc))
    except TimeoutError as exc:
        return _fail(str(exc) or "timed out")
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


async def _run(args: argparse.Namespace, url: str, api_key: str) -> int:
    command = COMMANDS[args.command]
    async with AsyncEditqClient(url, api_key) as client:
        return await command(client, args)


async def _edit(client: AsyncEditqClient, args: argparse.Namespace) -> int:
    job = await client.submit(
        args.image, args.prompt, model=args.model, mask=args.mask, n=args.n, **_fields(args)
    )
    if not (args.wait or args.output):
        _show(args, job, [job.id])
        return 0
    if not args.json:
        print(job.id, flush=True)
    return await _finish(client, job.id, args)


async def _wait(client: AsyncEditqClient, args: argparse.Namespace) -> int:
    return await _finish(client, args.job_id, args)


async def _finish(client: AsyncEditqClient, job_id: str, args: argparse.Namespace) -> int:
    """Wait for the job; download its outputs if asked; report how it ended."""
    job = await client.wait(job_id, getattr(args, "timeout", None))
    if job.status != "succeeded":
        _show(args, job, [])
        return _fail(_job_failure(job))
    if args.output is None:
        _show(args, job, _describe(job))
        return 0
    paths = await client.download_outputs(job, args.output)
    _show(args, job, [str(path) for path in paths])
    return 0


async def _status(client: AsyncEditqClient, args: argparse.Namespace) -> int:
    job = await client.get(args.job_id)
    _show(args, job, _describe(job))
    return 0


async def _cancel(client: AsyncEditqClient, args: argparse.Namespace) -> int:
    job = await client.cancel(args.job_id)
    _show(args, job, [f"{job.id} {job.status}"])
    return 0


async def _batch(client: AsyncEditqClient, args: argparse.Namespace) -> int:
    """Submit one variant per prompt line, then show progress until the batch ends,
    downloading each variant's outputs as it succeeds."""
    text = await asyncio.to_thread(args.prompts.read_text)
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        return _fail(f"{args.prompts}: no prompts (one per line)")
    defaults = {"model": args.model, **_fields(args)}
    batch = await client.submit_batch(args.image, defaults=defaults, prompts=prompts)
    if not args.json:
        print(batch.id, flush=True)
    fetched: set[str] = set()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(batch.id, total=batch.total, counts="")
        while True:
            if args.output is not None:
                await _fetch_succeeded(client, batch, args, fetched, prompts)
            progress.update(task, completed=batch.counts.finished, counts=_counts(batch))
            if batch.terminal:
                break
            batch = await client.get_batch(batch.id, wait=BATCH_POLL_S)
    return await _report_batch(client, batch, args)


async def _fetch_succeeded(
    client: AsyncEditqClient,
    batch: BatchObject,
    args: argparse.Namespace,
    fetched: set[str],
    prompts: list[str],
) -> None:
    """Download the outputs of succeeded jobs not fetched yet (pages through them all,
    since a newly finished job may sit on any page), each named by ``_variant_stem``."""
    after = None
    while batch.counts.succeeded > len(fetched):
        page = await client.batch_jobs(batch.id, status="succeeded", after=after)
        for job in page.data:
            if job.id not in fetched:
                fetched.add(job.id)
                stem = _variant_stem(job, prompts)
                for path in await client.download_outputs(job, args.output, stem=stem):
                    if not args.json:
                        print(path, flush=True)
        if not page.has_more or page.last_id is None:
            return
        after = page.last_id


async def _report_batch(
    client: AsyncEditqClient, batch: BatchObject, args: argparse.Namespace
) -> int:
    """Print how each variant ended (failures on stderr); 0 only if all succeeded."""
    results = await client.batch_results(batch.id)
    counts = batch.counts
    if args.json:
        _print_json(batch)
    else:
        if args.output is None:
            for result in results:
                print(result.get("index"), result.get("status"), *result.get("outputs", []))
        print(
            f"{batch.id} {batch.status}: {counts.succeeded} succeeded, "
            f"{counts.failed} failed, {counts.canceled} canceled"
        )
    for result in results:
        if error := result.get("error"):
            print(
                f"editq: variant {result.get('index')} ({result.get('job_id')}) "
                f"{result.get('status')}: {error.get('code')}: {error.get('message')}",
                file=sys.stderr,
            )
    return 0 if counts.succeeded == batch.total else 1


COMMANDS: dict[str, Callable[[AsyncEditqClient, argparse.Namespace], Awaitable[int]]] = {
    "edit": _edit,
    "status": _status,
    "wait": _wait,
    "cancel": _cancel,
    "batch": _batch,
}


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The optional edit fields given on the command line."""
    given = {"size": args.size, "output_format": args.output_format}
    return {name: value for name, value in given.items() if value is not None}


def _variant_stem(job: JobObject, prompts: list[str]) -> str:
    """A batch variant's file name stem: its index and a slug of its prompt
    (``0007-make-it-sepia``), so that a listing sorts in the prompts file's order."""
    index = job.variant_index if job.variant_index is not None else 0
    prompt = prompts[index] if index < len(prompts) else ""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:SLUG_CHARS].rstrip("-")
    return f"{index:04d}-{slug or 'variant'}"


def _describe(job: JobObject) -> list[str]:
    """A job for people: id, status and model, then when, outputs or error."""
    lines = [f"{job.id}  {job.status}  {job.model}"]
    created = datetime.fromtimestamp(job.created_at).strftime("%Y-%m-%d %H:%M:%S")
    ran = ""
    if job.started_at is not None and job.finished_at is not None:
        ran = f" (ran {job.finished_at - job.started_at} s)"
    lines.append(f"  created {created}{ran}")
    for index, item in enumerate(job.result.data if job.result else []):
        lines.append(f"  output {index}: {item.url or '(inline b64_json)'}")
    if job.error is not None:
        lines.append(f"  error: {job.error.code}: {job.error.message}")
    return lines


def _job_failure(job: JobObject) -> str:
    if job.error is None:
        return f"job {job.id} {job.status}"
    return f"job {job.id} {job.status}: {job.error.code}: {job.error.message}"


def _counts(batch: BatchObject) -> str:
    counts = batch.counts
    return (
        f"[green]{counts.succeeded} ok[/] [red]{counts.failed} failed[/] "
        f"{counts.canceled} canceled, {counts.running} running"
    )


def _show(args: argparse.Namespace, item: BaseModel, lines: list[str]) -> None:
    """``item`` as JSON with --json, else ``lines``."""
    if args.json:
        _print_json(item)
    else:
        for line in lines:
            print(line)


def _print_json(item: BaseModel) -> None:
    print(json.dumps(item.model_dump(mode="json"), indent=2))


def _fail(message: str, status: int = 1) -> int:
    print(f"editq: {message}", file=sys.stderr)
    return status
