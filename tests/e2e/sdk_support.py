"""Helpers of the SDK's end-to-end tests (tests/e2e/test_sdk_*.py): storefront driver processes, ``espbridge serve``
on a chosen port, and what the database stored per messageId."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connector.store import Database, Event

from .conftest import Launcher
from .processes import REPO_ROOT, ServiceProcess, serve_argv

DRIVER_TIMEOUT = 120.0


def driver_argv(scenario: str, config: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.e2e.sdk_driver", scenario, json.dumps(config)]


def driver_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("ESPBRIDGE_")}


@contextlib.contextmanager
def driver(scenario: str, config: dict[str, Any], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A storefront process running ``scenario``; killed (SIGKILL) if still running when the block ends."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            driver_argv(scenario, config),
            cwd=REPO_ROOT,
            env=driver_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DRIVER_TIMEOUT)


def run_driver(scenario: str, config: dict[str, Any], log_path: Path, timeout: float = DRIVER_TIMEOUT) -> int:
    """Run a storefront process to its end; its exit status."""
    with driver(scenario, config, log_path) as proc:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the storefront ran longer than {timeout:.0f}s:\n{log_path.read_text()}", pytrace=False)


def result(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def logged_ids(path: Path) -> list[str]:
    """The messageIds a driver logged; a torn last line (the process was killed mid-write) is left out."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def serve_on(launcher: Launcher, env: dict[str, str], port: int) -> ServiceProcess:
    """``espbridge serve`` on ``port``: the SDK's host (and so its spool directory) names one port for good, so a
    service that comes back must come back there. Stopped by the launcher when the test ends."""
    log_path = launcher.log_dir / f"{len(launcher.started) + 1:02d}-serve-{port}.log"
    process = ServiceProcess(name="serve", argv=serve_argv(port), env=env, log_path=log_path, port=port)
    launcher.started.append(process.start())
    return process.wait_healthy()


def stored_total(db: Database, store_id: int) -> int:
    with db.reader() as session:
        return session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id)) or 0


def not_once(counts: dict[str, int]) -> dict[str, int]:
    return {message_id: n for message_id, n in counts.items() if n != 1}


def spooled_records(spool_dir: Path) -> int:
    """Complete records in the spool's segment files (acknowledged ones included)."""
    return sum(path.read_bytes().count(b"\n") for path in spool_dir.rglob("*.seg"))


def segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.rglob("*.seg"))
