"""The README's examples, run as written against a running service with the built-in
models, in a fresh folder of a checkout holding a ``photo.png``: each line of its
``editq`` block in bash, and its Python snippets that call the service with the
project's Python (only the URL, the key and ``JOB_ID`` are replaced)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.providers_config import load_providers
from app.settings import Settings
from tests.support.images import decode, png
from tests.support.service import RunningService

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
VENV = Path(sys.executable).parent.parent


def cli_block() -> list[str]:
    """The lines of the README's shell block that runs ``editq edit``."""
    blocks: list[str] = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    block = next(block for block in blocks if "editq edit photo.png" in block)
    return block.strip().splitlines()


def python_blocks() -> list[str]:
    """The README's Python snippets that call a local editq."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block for block in blocks if "http://127.0.0.1:8080" in block]


@pytest.fixture
async def built_in(settings: Settings) -> AsyncIterator[RunningService]:
    """The service with the built-in models (local/editor and local/slow-editor), the
    slow one slower still: the job the README cancels must not finish while a loaded
    machine starts the next command."""
    providers = load_providers(None, {})
    upstreams = tuple(
        upstream.model_copy(update={"delay_s": 120.0}) if upstream.delay_s else upstream
        for upstream in providers.upstreams
    )
    async with RunningService(
        settings, providers.model_copy(update={"upstreams": upstreams})
    ) as running:
        yield running


async def test_the_readme_cli_examples_work_as_written(
    built_in: RunningService, tmp_path: Path
) -> None:
    setup, *commands = cli_block()  # the first line sets the environment up
    setup = setup.replace("http://127.0.0.1:8080", built_in.base_url)
    setup = setup.replace("sk-editq-dev", "key-a")
    # A checkout: .venv where make put it; nothing of the venv on PATH beforehand.
    (tmp_path / ".venv").symlink_to(VENV)
    (tmp_path / "photo.png").write_bytes(png(64, 48))
    path = os.pathsep.join(
        entry for entry in os.environ["PATH"].split(os.pathsep) if Path(entry) != VENV / "bin"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITQ_")}
    environment["PATH"] = path

    job_ids: list[str] = []
    outputs: list[str] = []
    for command in commands:
        if "JOB_ID" in command:
            command = command.replace("JOB_ID", job_ids[-1])
        run = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", f"{setup}\n{command}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environment,
            timeout=90,
            check=False,
        )
        assert run.returncode == 0, (command, run.stdout, run.stderr)
        outputs.append(run.stdout)
        if command.startswith("editq edit"):
            job_ids.append(run.stdout.split()[0])

    assert all(job_id.startswith("job_") for job_id in job_ids), job_ids
    first, slow = job_ids
    saved = sorted(path.name for path in (tmp_path / "out").iterdir())
    variants = ["0000-make-it-sepia-0.png", "0001-invert-it-0.png", "0002-tint-teal-0.png"]
    assert saved == sorted([f"{first}-0.png", f"{first}-1.png", *variants])
    assert decode((tmp_path / "out" / "0002-tint-teal-0.png").read_bytes()).size == (64, 48)
    assert outputs[-1].split() == [slow, "canceled"]


@pytest.mark.parametrize("snippet", python_blocks(), ids=["client", "drop-in"])
async def test_the_readme_python_examples_work_as_written(
    built_in: RunningService, tmp_path: Path, snippet: str
) -> None:
    (tmp_path / "photo.png").write_bytes(png(64, 48))
    code = snippet.replace("http://127.0.0.1:8080", built_in.base_url)
    code = code.replace("sk-editq-dev", "key-a")
    run = await asyncio.to_thread(
        subprocess.run,
        [str(VENV / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    written = [path for path in tmp_path.rglob("*.png") if path.name != "photo.png"]
    assert len(written) == 1, written
    assert decode(written[0].read_bytes()).size == (64, 48)
