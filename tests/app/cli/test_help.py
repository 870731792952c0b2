"""Every ``editq`` command's ``--help`` is written for the person typing it: plain text
(no reStructuredText markup, no notes about the code), and the client commands say
how they find the service."""

from __future__ import annotations

import re

import pytest

from app.cli.main import main
from worker.process.main import build_parser as worker_parser

CLIENT_COMMANDS = ("edit", "status", "wait", "cancel", "batch")
# What only the code's readers care about: module paths, markup, import rules.
INTERNAL = re.compile(r"``|\bapp\.\w|\bworker\.\w|python -m|imports?\b|\barq\b")


def help_text(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [(), ("dev",), ("api",), *((c,) for c in CLIENT_COMMANDS)])
def test_help_is_for_users(capsys: pytest.CaptureFixture[str], command: tuple[str, ...]) -> None:
    text = help_text(capsys, *command)
    assert not INTERNAL.search(text), text


def test_the_worker_help_is_for_users() -> None:
    text = worker_parser().format_help()
    assert not INTERNAL.search(text), text


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_client_commands_name_their_settings(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = help_text(capsys, command)
    assert "EDITQ_URL" in text and "EDITQ_API_KEY" in text, text


def test_the_overview_names_the_client_settings(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    assert "EDITQ_URL" in text and "EDITQ_API_KEY" in text, text
