"""The ``editq`` client commands against the real running service, run as
``app.cli.main.main([...])`` in a thread (the test's event loop serves the API)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.cli.embedded import free_port
from app.cli.main import main
from tests.support.images import decode, png
from tests.support.service import RunningService


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 64x48 PNG on disk."""
    path = tmp_path / "photo.png"
    path.write_bytes(png(64, 48))
    return path


@pytest.fixture
def cli_env(service: RunningService, monkeypatch: pytest.MonkeyPatch) -> RunningService:
    """EDITQ_URL and EDITQ_API_KEY pointing the CLI at the running service."""
    monkeypatch.setenv("EDITQ_URL", service.base_url)
    monkeypatch.setenv("EDITQ_API_KEY", "key-a")
    return service


async def editq(*args: str) -> int:
    """Run ``editq ARGS`` in a thread; its exit status."""
    return await asyncio.to_thread(main, list(args))


def output(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], list[str]]:
    """The stdout and stderr lines printed since the last call."""
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


async def test_edit_wait_downloads_the_output(
    cli_env: RunningService, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert await editq("edit", str(photo), "make it sepia", "--wait", "-o", str(out)) == 0
    lines, errors = output(capsys)
    assert errors == []
    job_id, saved = lines
    assert job_id.startswith("job_")
    assert saved == str(out / f"{job_id}-0.png")
    image = decode(Path(saved).read_bytes())
    assert (image.format, image.size) == ("PNG", (64, 48))
    red, green, blue = image.convert("RGB").getpixel((1, 1))  # type: ignore[misc]
    assert red > green > blue  # sepia, not the red input (200, 40, 40)
    assert (red, green, blue) != (200, 40, 40)


async def test_edit_then_status_and_wait(
    cli_env: RunningService, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--n", "2", "--size", "32x24", "--output-format", "webp", "--model", "local/editor")
    assert await editq("edit", str(photo), "invert it", *args) == 0
    (job_id,), _ = output(capsys)

    assert await editq("wait", job_id, "-o", str(tmp_path)) == 0
    lines, errors = output(capsys)
    assert errors == []
    assert lines == [str(tmp_path / f"{job_id}-{index}.webp") for index in range(2)]
    assert decode(Path(lines[1]).read_bytes()).size == (32, 24)

    assert await editq("status", job_id) == 0
    lines, _ = output(capsys)
    assert lines[0] == f"{job_id}  succeeded  local/editor"
    assert sum(line.startswith("  output ") for line in lines) == 2

    assert await editq("status", job_id, "--json") == 0
    captured = capsys.readouterr()
    job = json.loads(captured.out)
    assert (job["id"], job["status"], job["request"]["n"]) == (job_id, "succeeded", 2)


async def test_edit_json_prints_the_job_object(
    cli_env: RunningService, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await editq("edit", str(photo), "blur it", "--json") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["object"] == "edit.job"
    assert job["request"]["prompt"] == "blur it"


async def test_cancel_of_a_finished_job_is_one_line_409(
    cli_env: RunningService, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await editq("edit", str(photo), "mirror it", "--wait") == 0
    job_id = output(capsys)[0][0]
    assert await editq("cancel", job_id) == 1
    lines, errors = output(capsys)
    assert lines == []
    assert len(errors) == 1
    assert errors[0].startswith("editq: 409 conflict: ")


async def test_bad_argument_is_one_line(
    cli_env: RunningService, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await editq("edit", str(photo), "blur it", "--n", "11") == 1
    lines, errors = output(capsys)
    assert lines == []
    assert errors == [
        "editq: 400 invalid_request_error (param n): n: Input should be less than or equal to 10"
    ]


async def test_missing_image_file_is_one_line(
    cli_env: RunningService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.png"
    assert await editq("edit", str(missing), "blur it") == 1
    assert output(capsys) == ([], [f"editq: {missing}: No such file or directory"])


async def test_unreachable_service_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("EDITQ_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("EDITQ_API_KEY", "key-a")
    assert await editq("status", "job_x") == 1
    assert output(capsys) == (
        [],
        [f"editq: cannot connect to http://127.0.0.1:{port}: Connection refused"],
    )


async def test_missing_api_key_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDITQ_API_KEY", raising=False)
    assert await editq("status", "job_x") == 2
    lines, errors = output(capsys)
    assert lines == []
    assert errors == ["editq: set EDITQ_API_KEY to one of the service's API keys"]


async def test_batch_downloads_each_variant(
    cli_env: RunningService, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("make it sepia\n\n  invert it  \nmirror it\n")
    out = tmp_path / "out"
    assert await editq("batch", str(photo), "--prompts", str(prompts), "-o", str(out)) == 0
    lines, errors = output(capsys)
    batch_id = lines[0]
    assert batch_id.startswith("batch_")
    saved = sorted(out.iterdir())
    # Named by variant index and prompt, so a listing reads in the prompts file's order.
    assert [path.name for path in saved] == [
        "0000-make-it-sepia-0.png",
        "0001-invert-it-0.png",
        "0002-mirror-it-0.png",
    ]
    assert sorted(lines[1:4]) == sorted(str(path) for path in saved)
    assert all(decode(path.read_bytes()).size == (64, 48) for path in saved)
    assert lines[-1] == f"{batch_id} completed: 3 succeeded, 0 failed, 0 canceled"
    assert not any(line.startswith("editq:") for line in errors)
