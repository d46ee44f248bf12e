"""espbridge as real processes: ``espbridge serve`` (gunicorn) and ``espbridge worker`` (Dramatiq), each in its
own process group so a test can stop it gracefully (SIGTERM) or crash it (SIGKILL to the whole group).

Every wait is bounded; a process that fails to start or to stop fails the test with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.services import tail

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 45.0
STOP_TIMEOUT = 25.0
HOST = "127.0.0.1"

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy (returned) or ``timeout`` passes (the test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last probe: {result!r}", pytrace=False)
        time.sleep(interval)


@dataclass
class ServiceProcess:
    """One espbridge command running as a child process in a new session (its own process group)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.name} listens on no port"
        return f"http://{HOST}:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid  # start_new_session=True: the child leads its own process group

    def start(self) -> ServiceProcess:
        assert self.proc is None, f"{self.name} is already running"
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor; ours is closed at once
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def failure(self, message: str) -> str:
        return f"{self.name}: {message}\n--- {self.log_path} (tail) ---\n{tail(self.log_path)}"

    def wait_healthy(self, timeout: float = READY_TIMEOUT) -> ServiceProcess:
        """Wait until GET /healthz answers 200 (``espbridge serve`` is ready)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as http:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(self.failure(f"exited with status {self.proc.returncode} before it was ready"))
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/healthz").status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    pytest.fail(self.failure(f"/healthz did not answer 200 within {timeout:.0f}s"))
                time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Crash it: SIGKILL to every process of the group (gunicorn master and workers alike), then reap."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _signal_group(proc, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)

    def stop(self) -> int | None:
        """Graceful stop: SIGTERM to the group, SIGKILL to the group if it is still running after STOP_TIMEOUT.

        Returns the exit status of the group leader, or None when SIGKILL was needed (or it never started).
        """
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        _signal_group(proc, signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)  # the leader is not reaped yet, so its group id is still ours
            proc.wait(STOP_TIMEOUT)
            return None


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)  # start_new_session=True: the child leads its own process group


def serve_argv(port: int, *, workers: int = 2, threads: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "web.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "web.cli", "worker"]
