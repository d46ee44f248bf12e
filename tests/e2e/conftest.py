"""End-to-end fixtures: the service runs as real processes on the test's fresh database.

- ``service_env``: the environment of an espbridge process on ``database_url`` (embedded broker unless a test
  adds ESPBRIDGE_REDIS_URL).
- ``launcher``: starts ``espbridge serve`` / ``espbridge worker`` subprocesses and stops whatever is still
  running when the test ends.
- ``serve``: ``espbridge serve --workers 2 --threads 4`` started after ``store`` exists, ready (/healthz 200).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.tenancy import NewStore
from tests.services import free_port

from .processes import ServiceProcess, serve_argv, worker_argv

#: Relay ticks in the child processes (default 1 s): the recovery paths under test run on ticks.
RELAY_INTERVAL = "0.2"


@pytest.fixture
def service_env(database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ESPBRIDGE_")}
    env.update(
        ESPBRIDGE_DATABASE_URL=database_url,
        ESPBRIDGE_SECRET_KEY="e2e-secret",
        ESPBRIDGE_RELAY_INTERVAL=RELAY_INTERVAL,
        ESPBRIDGE_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


class Launcher:
    """Starts espbridge subprocesses, each logging to its own file under ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []
        self._counter = itertools.count(1)

    def _start(self, name: str, argv: list[str], env: dict[str, str], port: int | None = None) -> ServiceProcess:
        log_path = self.log_dir / f"{next(self._counter):02d}-{name}.log"
        process = ServiceProcess(name=name, argv=argv, env=env, log_path=log_path, port=port).start()
        self.started.append(process)
        return process

    def serve(self, env: dict[str, str], *, workers: int = 2, threads: int = 4) -> ServiceProcess:
        """``espbridge serve`` on a free port, returned once /healthz answers 200."""
        port = free_port()
        process = self._start("serve", serve_argv(port, workers=workers, threads=threads), env, port)
        return process.wait_healthy()

    def worker(self, env: dict[str, str]) -> ServiceProcess:
        """``espbridge worker`` (Dramatiq worker threads and the relay); it has no readiness endpoint."""
        return self._start("worker", worker_argv(), env)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def launcher(tmp_path: Path, database_url: str) -> Iterator[Launcher]:
    """Depends on ``database_url`` so that its processes stop before the test database is dropped."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    running = Launcher(log_dir)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def serve(launcher: Launcher, service_env: dict[str, str], store: NewStore) -> ServiceProcess:
    """``espbridge serve`` (embedded broker) on the test database, which already holds ``store``."""
    return launcher.serve(service_env)
