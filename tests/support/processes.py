"""Worker and API processes for tests that need real processes (shared limits, crashes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

from app.settings import Settings, settings_environment

PROVIDERS_TOML = """
[[upstreams]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
max_concurrency = {cap}
timeout_s = 120

[[models]]
id = "fake/gpt-image-1"
upstream = "fake"
upstream_model = "gpt-image-1"
"""


def write_providers(path: Path, base_url: str, cap: int) -> Path:
    """A providers file with one fake upstream capped at ``cap`` concurrent calls."""
    path.write_text(PROVIDERS_TOML.format(base_url=base_url, cap=cap))
    return path


class ServiceProcess:
    """An editq command configured like ``settings``, in its own process."""

    command: tuple[str, ...] = ()

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self._environment = {**os.environ, **settings_environment(settings)}
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the process."""
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                list(self.command),
                env=self._environment,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self._process is not None
        return self._process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def send(self, signum: signal.Signals) -> None:
        """Send ``signum`` (SIGTERM to drain, SIGSTOP/SIGCONT to pause) without waiting."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signum)

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self._process is None else self._process.poll()

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM (after SIGCONT, in case it was paused), then SIGKILL if it lingers."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGCONT)
        self._process.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait(self, timeout_s: float) -> int:
        """The exit status once the process ends within ``timeout_s``."""
        assert self._process is not None
        return self._process.wait(timeout_s)


class WorkerProcess(ServiceProcess):
    """``python -m worker`` configured like ``settings``, in its own process."""

    command = (sys.executable, "-m", "worker")


class ApiProcess(ServiceProcess):
    """``editq api`` configured like ``settings`` on ``port`` (``crash_at`` set: a test
    makes it die at a named point; see ``app.crash_points``)."""

    def __init__(
        self, settings: Settings, log_path: Path, port: int, *, crash_at: str = ""
    ) -> None:
        super().__init__(settings.model_copy(update={"crash_at": ()}), log_path)
        self._environment["EDITQ_CRASH_AT"] = crash_at
        self.command = (str(Path(sys.executable).with_name("editq")), "api", "--port", str(port))
        self.base_url = f"http://127.0.0.1:{port}"
