"""A real service process for tests: ``python -m service`` (or uvicorn) on a free loopback port.

Shared by the API, reliability, client and browser tests, so that each starts the service
the way a deployment does — settings as ``UNET_*`` environment variables only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition`` until true, for tests ordered by the server's events rather than by the
    clock; the timeout only stops a broken server from hanging the test."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A service process on a loopback port; ``client`` talks to it."""

    def __init__(
        self, env: dict[str, str], log_path: Path, module: bool = True, port: int | None = None
    ) -> None:
        self.port = port or free_port()  # a given port: a restart where the last process listened
        self.url = f"http://127.0.0.1:{self.port}"
        # Settings reach the process only through ``env``: inherited UNET_* variables are dropped.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("UNET_")}
        full_env = {
            **inherited,
            "UNET_PROVIDERS": "cpu",
            "UNET_INTRA_OP_THREADS": "1",
            "UNET_HOST": "127.0.0.1",
            "UNET_PORT": str(self.port),
            # Its own jobs folder (beside its log): a server that starts fails the jobs it finds
            # running, so two servers must never share one.
            "UNET_JOBS_DIR": str(log_path.parent / f"{log_path.stem}-jobs"),
            **env,
        }
        if module:  # the production entry point
            cmd = [sys.executable, "-m", "service"]
        else:  # the other documented entry point
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "service.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # Generous start-up bounds: on a shared 2-core machine a niced test run can wait a minute
    # for the CPU before the service has even imported (about 1 s of CPU).
    def wait_live(self, timeout_s: float = 180) -> Server:
        return self._wait("/livez", timeout_s)

    def wait_ready(self, timeout_s: float = 180) -> Server:
        return self._wait("/readyz", timeout_s)

    def _wait(self, path: str, timeout_s: float) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get(path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} not 200 after {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
