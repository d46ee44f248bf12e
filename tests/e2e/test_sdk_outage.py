"""The ingestion service down for a minute under a steady load loses nothing, and never slows the storefront.

The storefront's calls keep returning at once while the client retries; its in-memory queue fills and the rest
goes to the on-disk spool. When ``espbridge serve`` is back on the same port and database, the client delivers
everything, oldest first, and a batch the service committed just before it went down is not stored twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connector.store import Database
from connector.tenancy import NewStore
from tests.conftest import stored_counts

from .conftest import Launcher
from .processes import wait_until
from .sdk_support import driver, logged_ids, not_once, result, segments, serve_on, stored_total

pytestmark = pytest.mark.slow

RATE = 150  # messages per second
OUTAGE = 60.0  # seconds
QUEUE = 1_000  # the in-memory queue: the outage's ~9,000 messages overflow it into the spool


# One backend only: the minute of downtime is the cost of this test, and what it exercises is the SDK's retries
# and spool, which do not depend on the service's database (the exactly-once storage of retried batches is the
# same code on both backends, covered by test_sdk_crash and test_crash on both).
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_minute_of_downtime_under_load_loses_nothing(
    launcher: Launcher, service_env: dict[str, str], store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given espbridge serve, and a storefront process tracking 150 messages a second through the SDK
    server = launcher.serve(service_env)
    stop_file = tmp_path / "stop"
    ids_log = tmp_path / "ids.log"
    config = {
        "write_key": store.write_key,
        "host": server.url,
        "spool_dir": str(tmp_path / "spool"),
        "client": {"max_queue_size": QUEUE, "retry_max_backoff": 2.0},
        "count": 100_000,  # a bound: the stop file ends the stream long before
        "rate": RATE,
        "stop_file": str(stop_file),
        "ids_log": str(ids_log),
        "flush": 60,
        "shutdown": 10,
        "result": str(tmp_path / "result.json"),
    }
    with driver("stream", config, tmp_path / "storefront.log") as storefront:
        wait_until(lambda: stored_total(db, store.id) >= RATE, timeout=30, what="the first messages stored")

        # When the service is killed and stays down for a minute while the storefront keeps tracking
        server.kill()
        tracked_at_kill = len(logged_ids(ids_log))
        time.sleep(0.5)  # a request the kill cut off may still be committing
        stored_at_kill = stored_total(db, store.id)
        deadline = time.monotonic() + OUTAGE
        while time.monotonic() < deadline:
            assert storefront.poll() is None, "the storefront process died during the outage"
            time.sleep(0.5)
        tracked_during = len(logged_ids(ids_log)) - tracked_at_kill
        assert stored_total(db, store.id) == stored_at_kill
        assert segments(tmp_path / "spool"), "nothing was spooled during the outage"

        # And espbridge serve is started again on the same port and database, and the storefront then flushes
        serve_on(launcher, service_env, server.port or 0)
        time.sleep(2.0)  # still tracking while the backlog drains
        stop_file.touch()
        assert storefront.wait(90) == 0
    outcome = result(tmp_path / "result.json")
    tracked = logged_ids(ids_log)

    # Then the storefront's calls kept their pace through the outage: none waited for the network
    assert tracked_during >= 0.9 * RATE * OUTAGE
    assert outcome["slowest_call"] < 1.0
    # And its flush delivered the backlog; nothing was dropped or refused, and the client did retry
    assert outcome["flushed"] is True and outcome["shut_down"] is True
    assert outcome["errors"] == []
    assert outcome["stats"]["dropped"] == outcome["stats"]["rejected"] == 0
    assert outcome["stats"]["retries"] > 0
    # And every tracked message is stored exactly once, and nothing else
    stored = stored_counts(db, store.id)
    assert len(tracked) == outcome["tracked"]
    missing = sorted(set(tracked) - set(stored), key=lambda mid: int(mid[2:]))
    assert missing == [], f"{len(missing)} tracked messages lost, e.g. {missing[:5]}"
    assert set(stored) == set(tracked)
    assert not_once(stored) == {}
    assert segments(tmp_path / "spool") == []
