"""A storefront process that ends without calling flush() or shutdown() loses nothing.

The SDK's atexit hook flushes for up to ``exit_timeout`` seconds; what it could not deliver in that time (the
service is down) stays in the spool, and the next process using the spool directory delivers it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connector.store import Database
from connector.tenancy import NewStore
from tests.conftest import stored_counts
from tests.services import free_port

from .conftest import Launcher
from .processes import ServiceProcess
from .sdk_support import logged_ids, not_once, result, run_driver, segments, serve_on, spooled_records

pytestmark = pytest.mark.slow

MESSAGES = 5_000
EXIT_TIMEOUT = 0.5


def test_exit_without_flush_delivers_everything_tracked(
    serve: ServiceProcess, store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given a storefront process that tracks 5,000 messages and simply returns: no flush(), no shutdown()
    config = {
        "write_key": store.write_key,
        "host": serve.url,
        "spool_dir": str(tmp_path / "spool"),
        "client": {},  # the defaults: exit_timeout=5
        "count": MESSAGES,
        "ids_log": str(tmp_path / "ids.log"),
        "result": str(tmp_path / "result.json"),
    }

    # When the process exits
    started = time.monotonic()
    assert run_driver("stream", config, tmp_path / "storefront.log") == 0
    took = time.monotonic() - started

    # Then all 5,000 are stored, exactly once, and the exit waited no longer than the 5 s exit_timeout allows
    tracked = logged_ids(tmp_path / "ids.log")
    assert len(tracked) == MESSAGES
    stored = stored_counts(db, store.id)
    assert set(stored) == set(tracked)
    assert not_once(stored) == {}
    assert took < 5 + 10, f"the storefront took {took:.1f}s to run and exit"
    assert segments(tmp_path / "spool") == []
    serve.kill()  # not a graceful stop: draining the projection of thousands of events is not under test (~8 s)


def test_exit_while_the_service_is_down_leaves_the_messages_for_the_next_process(
    launcher: Launcher, service_env: dict[str, str], store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given nothing listening on the port the storefront's SDK is configured with
    port = free_port()
    common = {
        "write_key": store.write_key,
        "host": f"http://127.0.0.1:{port}",
        "spool_dir": str(tmp_path / "spool"),
        "client": {"exit_timeout": EXIT_TIMEOUT, "retry_min_backoff": 0.05, "retry_max_backoff": 0.2},
    }

    # When a storefront process tracks 1,000 messages and exits without flushing
    config = {**common, "count": 1_000, "ids_log": str(tmp_path / "ids.log"), "result": str(tmp_path / "first.json")}
    started = time.monotonic()
    assert run_driver("stream", config, tmp_path / "first.log") == 0
    took = time.monotonic() - started
    tracked = logged_ids(tmp_path / "ids.log")
    assert len(tracked) == 1_000

    # Then its exit waited about exit_timeout, not more, and every message is in the spool
    assert took < EXIT_TIMEOUT + 10, f"the storefront took {took:.1f}s to run and exit"
    assert spooled_records(tmp_path / "spool") == 1_000
    assert stored_counts(db, store.id) == {}

    # When the service comes up on that port and another process with the same spool directory starts and flushes
    serve_on(launcher, service_env, port)
    config = {**common, "count": 0, "ids_log": str(tmp_path / "ids2.log"), "result": str(tmp_path / "second.json")}
    config.update(flush=30, shutdown=10)
    assert run_driver("stream", config, tmp_path / "second.log") == 0
    second = result(tmp_path / "second.json")

    # Then all 1,000 are stored, exactly once, and the spool is empty
    assert second["flushed"] is True and second["errors"] == []
    stored = stored_counts(db, store.id)
    assert set(stored) == set(tracked)
    assert not_once(stored) == {}
    assert segments(tmp_path / "spool") == []
