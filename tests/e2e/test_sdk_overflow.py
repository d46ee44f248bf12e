"""The overflow policy, with the service down long enough for the spool to reach its cap; then the service comes
up and the client delivers what it kept.

What these tests prove, message by message (every messageId is the test's own, in tracking order):

- ``drop_oldest``: the messages stored + the messages reported dropped == the messages tracked, and
  ``stats().dropped`` == the sum of the ``Dropped.count`` reported to ``on_error``. What is dropped is one
  contiguous run of the *oldest spooled* messages: the stored messages are the very first ones (already taken
  into memory for sending before the spool filled, never dropped) plus the newest ones (the spool's content,
  at most its cap), the last message tracked included. The Dropped errors of the spool carry counts, not
  messages (whole segments are discarded unread).
- ``block``: a call made while the spool is at its cap blocks for ``block_timeout``, then drops *that* message
  and reports it (count 1, the message itself); the messages already queued are kept and all delivered, so the
  stored messages are exactly the tracked ones minus those reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from espbridge import Client, Dropped

from connector.store import Database
from connector.tenancy import NewStore
from tests.conftest import stored_counts
from tests.services import free_port

from .conftest import Launcher
from .sdk_support import not_once, segments, serve_on

pytestmark = pytest.mark.slow

SPOOL_CAP = 64 * 1024
QUEUE = 100
BLOCK_TIMEOUT = 0.2
PADDING = "p" * 100
#: Bytes per spooled message (its JSON and a newline): 329 to 333 here, as ``n`` has 1 to 4 digits.
RECORD_MIN, RECORD_MAX = 320, 340
#: drop_oldest discards whole segments; a segment holds an eighth of the cap.
SEGMENT = SPOOL_CAP // 8


class Reports:
    def __init__(self) -> None:
        self.errors: list[tuple[Exception, list[dict[str, Any]]]] = []

    def __call__(self, error: Exception, messages: list[dict[str, Any]]) -> None:
        self.errors.append((error, messages))

    def dropped(self) -> list[tuple[Dropped, list[dict[str, Any]]]]:
        return [(error, messages) for error, messages in self.errors if isinstance(error, Dropped)]


def _client(store: NewStore, port: int, spool_dir: Path, reports: Reports, **options: Any) -> Client:
    return Client(
        store.write_key,
        host=f"http://127.0.0.1:{port}",
        spool_dir=spool_dir,
        spool_max_bytes=SPOOL_CAP,
        max_queue_size=QUEUE,
        retry_min_backoff=0.05,
        retry_max_backoff=0.2,
        on_error=reports,
        **options,
    )


def _first_scan_done(client: Client) -> None:
    """Wait for the consumer's first scan of the spool for orphans (flush() does, with nothing queued).

    A scan that runs while this process creates a segment can take it for a dead process's leftover and unlink it
    (sdk/tests/test_overflow.py::test_a_segment_just_created_is_not_taken_for_an_orphan_by_a_concurrent_scan); here
    the next scan is 30 s away, so what these tests see is the overflow policy alone.
    """
    assert client.flush(timeout=5)


def _track(client: Client, n: int) -> str | None:
    return client.track(f"user-{n % 7}", "Product Viewed", {"n": n, "padding": PADDING}, message_id=f"ov-{n:05d}")


def test_drop_oldest_keeps_the_newest_and_accounts_for_every_message(
    launcher: Launcher, service_env: dict[str, str], store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given a client whose service is down (nothing listens on its port), with a 64 KiB spool and drop_oldest
    port = free_port()
    reports = Reports()
    client = _client(store, port, tmp_path / "spool", reports, overflow="drop_oldest")
    try:
        _first_scan_done(client)
        # When it tracks far more than the queue and the spool can hold
        tracked = [_track(client, n) for n in range(2_000)]

        # Then the calls returned, some messages were dropped and every drop was reported with its count
        dropped = client.stats().dropped
        assert dropped > 0
        assert [error for error, _ in reports.errors if not isinstance(error, Dropped)] == []
        assert sum(error.count for error, _ in reports.dropped()) == dropped
        assert all("spool reached its cap of 65,536 bytes" in error.reason for error, _ in reports.dropped())
        assert SPOOL_CAP - SEGMENT - RECORD_MAX <= client.stats().spooled_bytes <= SPOOL_CAP

        # When the service comes up on that port and the client flushes
        serve_on(launcher, service_env, port)
        assert client.flush(timeout=30)
    finally:
        client.shutdown(timeout=5)

    # Then stored + dropped == tracked, each stored exactly once
    stored = stored_counts(db, store.id)
    assert not_once(stored) == {}
    assert set(stored) <= set(tracked)
    assert len(stored) + dropped == len(tracked)
    # And the dropped ones are one contiguous run: the stored ones are the first few (taken for sending before the
    # spool filled) and the newest, up to the spool's cap
    kept = [mid in stored for mid in tracked]
    head = kept.index(False)
    tail = kept[::-1].index(False)
    assert head + tail == len(stored), f"the dropped messages are not one run: {kept}"
    assert 0 < head <= 2 * QUEUE
    assert kept[-1], "the newest message was dropped"
    # (the spool's content: at most its cap, at least its cap less the one segment dropped last)
    assert (SPOOL_CAP - SEGMENT) // RECORD_MAX <= tail <= SPOOL_CAP // RECORD_MIN
    assert segments(tmp_path / "spool") == []


def test_block_blocks_for_block_timeout_then_drops_the_new_message_and_keeps_the_oldest(
    launcher: Launcher, service_env: dict[str, str], store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given a client whose service is down, with a 64 KiB spool and overflow="block", block_timeout=0.2
    port = free_port()
    reports = Reports()
    client = _client(store, port, tmp_path / "spool", reports, overflow="block", block_timeout=BLOCK_TIMEOUT)
    try:
        _first_scan_done(client)
        # When it tracks until a call is dropped (the spool is at its cap), then three calls more
        tracked: list[str | None] = []
        took: list[float] = []
        for n in range(2_000):
            started = time.monotonic()
            tracked.append(_track(client, n))
            took.append(time.monotonic() - started)
            if reports.errors:
                break
        assert reports.errors, "the spool never reached its cap"
        full_at = len(tracked) - 1
        for n in range(len(tracked), len(tracked) + 3):
            started = time.monotonic()
            tracked.append(_track(client, n))
            took.append(time.monotonic() - started)

        # Then each of those four calls blocked about block_timeout, and was dropped and reported alone
        blocked = [f"ov-{n:05d}" for n in range(full_at, full_at + 4)]
        assert [min(t, 5.0) >= BLOCK_TIMEOUT for t in took[full_at:]] == [True] * 4
        assert max(took[full_at:]) < BLOCK_TIMEOUT + 1.0
        assert [(error.count, [m["messageId"] for m in messages]) for error, messages in reports.dropped()] == [
            (1, [mid]) for mid in blocked
        ]
        assert len(reports.errors) == 4
        assert client.stats().dropped == 4

        # When the service comes up on that port and the client flushes
        serve_on(launcher, service_env, port)
        assert client.flush(timeout=30)
    finally:
        client.shutdown(timeout=5)

    # Then exactly the messages queued before the cap are stored, once each: the oldest were kept
    stored = stored_counts(db, store.id)
    assert not_once(stored) == {}
    assert sorted(stored) == tracked[:full_at]
    # (what was kept: the queue's content, then the spool's up to its cap)
    assert QUEUE + SPOOL_CAP // RECORD_MAX <= full_at <= 2 * QUEUE + SPOOL_CAP // RECORD_MIN
    assert segments(tmp_path / "spool") == []
