"""The README's quick start, for real: ``editq dev`` in its own process, the curl
commands it prints pasted into a shell, and Ctrl-C stopping all of it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.embedded import free_port
from tests.support.images import decode

pytestmark = pytest.mark.slow


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def dev_server() -> Iterator[tuple[subprocess.Popen[str], list[str], int]]:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EDITQ_")}
    editq = Path(sys.executable).with_name("editq")
    process = subprocess.Popen(
        [str(editq), "dev", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("The result's data[0].url"):
            break
    try:
        yield process, lines, port
    finally:
        if process.poll() is None:
            # Ctrl-C, as a user stops it: editq dev then stops the worker, Redis and S3
            # it started. SIGKILL would orphan them, running on through later tests.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()


def _commands(lines: list[str]) -> list[str]:
    """The curl commands of the banner, continuation lines joined."""
    text = "\n".join(lines).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]


def test_make_run_quick_start(dev_server: tuple[subprocess.Popen[str], list[str], int]) -> None:
    process, lines, port = dev_server
    assert any(f"http://127.0.0.1:{port}" in line for line in lines), lines
    submit, fetch = _commands(lines)

    submitted = json.loads(
        subprocess.run(
            ["bash", "-c", submit], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    )
    assert submitted["status"] in ("queued", "running", "succeeded"), submitted
    job_id = submitted["id"]

    fetched = json.loads(
        subprocess.run(
            ["bash", "-c", fetch.replace("JOB_ID", job_id)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert fetched["status"] == "succeeded", fetched
    with urllib.request.urlopen(fetched["result"]["data"][0]["url"], timeout=10) as response:
        image = decode(response.read())
    assert (image.format, image.size) == ("PNG", (512, 512))

    s3_ports = {
        int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)/", fetched["result"]["data"][0]["url"])
    }
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert not _port_open(port)
    assert not any(_port_open(p) for p in s3_ports)


def test_the_dev_banner_says_where_to_look_and_what_is_kept(
    dev_server: tuple[subprocess.Popen[str], list[str], int],
) -> None:
    """The banner names the dashboard and the dev key, says the data is gone on exit and
    that webhooks may call this machine; a webhook to 127.0.0.1 is then accepted."""
    _, lines, port = dev_server
    text = "\n".join(lines)
    assert f"http://127.0.0.1:{port}/ui" in text, text
    assert "sk-editq-dev" in text
    assert "in memory" in text and "gone" in text, text
    assert "private" in text and "webhook" in text, text

    submit = (
        f"curl -s http://127.0.0.1:{port}/v1/jobs -H 'Authorization: Bearer sk-editq-dev'"
        " -F model=local/editor -F prompt=sepia -F image=@"
        + _sample(lines)
        + f" -F webhook_url=http://127.0.0.1:{free_port()}/hook"
    )
    answer = json.loads(
        subprocess.run(
            ["bash", "-c", submit], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    )
    assert answer.get("object") == "edit.job", answer


def _sample(lines: list[str]) -> str:
    """The sample image the banner's example uploads."""
    found = re.search(r"image=@(\S+)", "\n".join(lines))
    assert found is not None, lines
    return found.group(1)
