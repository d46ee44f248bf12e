"""A client created before ``fork()`` keeps working in the parent and in its children (gunicorn's preload,
multiprocessing's fork start method).

The child starts with an empty queue, its own consumer thread, connection and spool segments, and - the point of
this test - its own messageId prefix: with the parent's, the service would take the child's messages for
duplicates of the parent's and drop them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.store import Database
from connector.tenancy import NewStore
from tests.conftest import stored_counts

from .processes import ServiceProcess
from .sdk_support import not_once, result, run_driver, segments

pytestmark = pytest.mark.slow

MESSAGES = 300


def test_fork_and_multiprocessing_children_deliver_with_their_own_message_ids(
    serve: ServiceProcess, store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given a storefront process whose client was created (and used) before it forked:
    # - an os.fork() child tracks, flushes and exits with sys.exit(0);
    # - a multiprocessing (fork) child tracks and returns, without flush or shutdown: it ends with os._exit();
    # - the parent tracks before and after the forks, then shuts down.
    # The messageIds are the SDK's own.
    config = {
        "write_key": store.write_key,
        "host": serve.url,
        "spool_dir": str(tmp_path / "spool"),
        "client": {"flush_interval": 0.2},
        "count": MESSAGES,
        "out_dir": str(tmp_path),
        "result": str(tmp_path / "parent.json"),
    }

    # When it runs
    assert run_driver("fork", config, tmp_path / "storefront.log", timeout=90) == 0
    parent = result(tmp_path / "parent.json")
    fork_child = result(tmp_path / "fork-child.json")
    mp_child = result(tmp_path / "mp-child.json")

    # Then every process ended normally, and the fork child's flush returned True in bounded time
    assert parent["fork_exitcode"] == 0 and parent["mp_exitcode"] == 0
    assert parent["shut_down"] is True
    assert fork_child["flushed"] is True and fork_child["flush_seconds"] < 10
    assert parent["mp_seconds"] < 20  # the multiprocessing child's exit delivered within its exit_timeout
    assert parent["errors"] == fork_child["errors"] == mp_child["errors"] == []
    assert parent["stats"]["sent"] == 2 * MESSAGES  # the parent counts only its own

    # And no messageId is shared between processes: every process minted its own
    ids = {"parent": parent["ids"], "fork child": fork_child["ids"], "multiprocessing child": mp_child["ids"]}
    assert [len(values) for values in ids.values()] == [2 * MESSAGES, MESSAGES, MESSAGES]
    every = [mid for values in ids.values() for mid in values]
    assert len(set(every)) == len(every) == 4 * MESSAGES, "a messageId was minted twice"
    assert set(ids["parent"]).isdisjoint(ids["fork child"])
    assert set(ids["parent"]).isdisjoint(ids["multiprocessing child"])
    assert set(ids["fork child"]).isdisjoint(ids["multiprocessing child"])

    # And all 1,200 messages of the three processes are stored, exactly once
    stored = stored_counts(db, store.id)
    assert set(stored) == set(every)
    assert not_once(stored) == {}
    assert segments(tmp_path / "spool") == []
