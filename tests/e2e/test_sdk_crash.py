"""A storefront killed with SIGKILL mid-stream, with the SDK's durable spool on, loses nothing it tracked.

``durable=True`` appends every message to the spool (``os.write``, into the kernel) before the call returns. A
storefront process killed right after a call returned has therefore left that message on disk; the next process
using the same spool directory adopts the dead process's segments (their ``flock`` is gone) and delivers them,
resuming after the last acknowledged batch. A batch delivered just before the kill but not yet acknowledged in
the spool is sent again and dropped by the service as a duplicate: every message arrives exactly once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from connector.store import Database
from connector.tenancy import NewStore
from tests.conftest import stored_counts

from .processes import ServiceProcess, wait_until
from .sdk_support import driver, logged_ids, not_once, result, run_driver, segments

pytestmark = pytest.mark.slow

#: At most this many messages: the stream is bounded even if the kill never came.
STREAM = 20_000
#: Messages per second: steady, so the kill lands mid-stream rather than after the last call.
RATE = 2_000
KILL_AFTER = 2_500
#: Batches of 1,000 only (the flush interval never elapses): at the kill the last 500+ tracked messages were
#: certainly never sent, so the second process has something to deliver from the dead one's spool.
BATCH = 1_000


def test_kill_9_mid_stream_then_restart_delivers_every_tracked_message_exactly_once(
    serve: ServiceProcess, store: NewStore, db: Database, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    ids_log = tmp_path / "ids.log"
    common = {"write_key": store.write_key, "host": serve.url, "spool_dir": str(spool_dir)}
    durable = {"durable": True, "max_batch_size": BATCH, "flush_interval": 60.0}

    # Given a storefront tracking a steady stream with the durable spool on, logging each messageId it got back
    config = {
        **common,
        "client": durable,
        "count": STREAM,
        "rate": RATE,
        "ids_log": str(ids_log),
        "result": str(tmp_path / "first.json"),
    }
    with driver("stream", config, tmp_path / "first.log") as storefront:
        wait_until(
            lambda: len(logged_ids(ids_log)) >= KILL_AFTER, timeout=60, interval=0.01, what=f"{KILL_AFTER} calls"
        )

        # When the storefront process is killed with SIGKILL mid-stream
        assert storefront.poll() is None, "the stream ended before the kill"
        storefront.send_signal(signal.SIGKILL)
        assert storefront.wait(10) == -signal.SIGKILL
    tracked = logged_ids(ids_log)
    assert KILL_AFTER <= len(tracked) < STREAM
    assert tracked == [f"m-{n}" for n in range(len(tracked))]
    time.sleep(0.5)  # a request the kill cut off may still be committing on the service's side
    before_restart = stored_counts(db, store.id)
    assert len(before_restart) < len(tracked), "everything was delivered before the kill: nothing to recover"
    assert segments(spool_dir), "the killed storefront left no spool behind"

    # And a new storefront process starts on the same spool, tracks nothing new, and flushes
    config = {**common, "client": durable, "count": 0, "ids_log": str(tmp_path / "second-ids.log")}
    config.update(flush=30, shutdown=10, result=str(tmp_path / "second.json"))
    assert run_driver("stream", config, tmp_path / "second.log") == 0
    second = result(tmp_path / "second.json")
    assert second["flushed"] is True and second["shut_down"] is True
    assert second["errors"] == []

    # Then every message tracked before the kill is stored, exactly once
    stored = stored_counts(db, store.id)
    missing = sorted(set(tracked) - set(stored), key=lambda mid: int(mid[2:]))
    assert missing == [], f"{len(missing)} tracked messages lost, e.g. {missing[:5]}"
    assert not_once(stored) == {}
    # And nothing else: at most the one call the kill interrupted after its message reached the spool
    assert set(stored) - set(tracked) <= {f"m-{len(tracked)}"}
    # And the second process delivered the dead one's spool, and left no segment behind
    assert second["stats"]["sent"] >= len(tracked) - len(before_restart)
    assert segments(spool_dir) == []
    serve.kill()  # not a graceful stop: draining the projection of thousands of events is not under test (~8 s)
