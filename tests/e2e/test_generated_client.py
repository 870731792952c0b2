"""A client generated from the served /openapi.json by openapi-python-client: the
generator accepts the document without dropping a schema, and the generated submit
functions upload image files that the service really edits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import png
from tests.support.service import RunningService

pytestmark = pytest.mark.slow

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "editq_generated"
PNG_MAGIC = b"\x89PNG"

# The generator omits responses whose content type it cannot model (JSON Lines, zip):
# those operations still exist, their bodies are read as bytes. Nothing else may warn.
OMITTED_RESPONSES = ("application/jsonl", "application/zip")

# Runs in its own interpreter with the generated package importable: one multipart
# submit per endpoint that takes files, each answer printed as a JSON line.
UPLOAD_SCRIPT = """
import io, json, sys
from editq_generated import AuthenticatedClient
from editq_generated.api.batches import post_v1_batches
from editq_generated.api.images import post_v1_images_edits
from editq_generated.api.jobs import post_v1_jobs
from editq_generated.models import BatchForm, EditForm, SyncEditForm
from editq_generated.types import File

base_url, image_path = sys.argv[1], sys.argv[2]
image = open(image_path, "rb").read()

def upload():
    return [File(payload=io.BytesIO(image), file_name="in.png", mime_type="image/png")]

with AuthenticatedClient(base_url=base_url, token="key-a", timeout=60.0) as client:
    job = post_v1_jobs.sync_detailed(
        client=client,
        body=EditForm(model="local/editor", prompt="invert it", image=upload()),
    )
    print(json.dumps({"status": int(job.status_code), "body": json.loads(job.content)}))
    edit = post_v1_images_edits.sync_detailed(
        client=client,
        body=SyncEditForm(model="local/editor", prompt="mirror it", image=upload()),
    )
    print(json.dumps({"status": int(edit.status_code), "body": json.loads(edit.content)}))
    batch = post_v1_batches.sync_detailed(
        client=client,
        body=BatchForm(
            image=upload(),
            defaults=json.dumps({"model": "local/editor"}),
            variants=json.dumps([{"prompt": "sepia"}, {"prompt": "blur"}]),
        ),
    )
    print(json.dumps({"status": int(batch.status_code), "body": json.loads(batch.content)}))
"""


def _warnings(output: str) -> list[str]:
    """The generator's warning blocks (a warning and the lines up to the next blank one)
    that are not an omitted response of a known content type."""
    blocks = [block.strip() for block in output.split("\n\n") if block.strip()]
    found = []
    for index, block in enumerate(blocks):
        if not block.startswith(("WARNING", "Unable", "Skipping")):
            continue
        detail = " ".join(blocks[index : index + 2])
        if block.startswith("WARNING") and any(
            f"Unsupported content_type {kind}" in detail for kind in OMITTED_RESPONSES
        ):
            continue
        found.append(detail)
    return found


def _generate(document: bytes, tmp_path: Path) -> Path:
    """Generate the client package from ``document`` into ``tmp_path``."""
    path = tmp_path / "openapi.json"
    path.write_bytes(document)
    package = tmp_path / PACKAGE
    # The generator formats its output with ruff, which it finds on PATH.
    environment = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(GENERATOR), "generate", "--path", str(path), "--meta", "none"]
    run = subprocess.run(
        [*command, "--output-path", str(package)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "python_name" not in output, output
    assert _warnings(output) == [], output
    return package


async def test_a_generated_client_uploads_files(service: RunningService, tmp_path: Path) -> None:
    async with service.client.get(service.url("/openapi.json")) as response:
        package = _generate(await response.read(), tmp_path)
    form = (package / "models" / "edit_form.py").read_text()
    assert "image: list[File] | Unset" in form
    image = tmp_path / "in.png"
    image.write_bytes(png(32, 32))
    script = tmp_path / "upload.py"
    script.write_text(UPLOAD_SCRIPT)
    # In a thread: the service answering it runs on this event loop.
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script), service.base_url, str(image)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    job, edit, batch = (json.loads(line) for line in run.stdout.splitlines())

    assert job["status"] == 202, job
    finished = await service.wait(job["body"]["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["request"]["images"][0]["bytes"] > 0, finished["request"]

    assert edit["status"] == 200, edit
    # The generated form sends the document's response_format default: b64_json, as
    # OpenAI's edit endpoint answers.
    assert base64.b64decode(edit["body"]["data"][0]["b64_json"]).startswith(PNG_MAGIC), edit

    assert batch["status"] == 202, batch
    assert batch["body"]["total"] == 2
