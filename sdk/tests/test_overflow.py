"""The overflow policy without a spool (the in-memory queue's cap), and spilling while another process scans the
spool. The spool's cap, with a real service, is in tests/e2e/test_sdk_overflow.py."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Sink
from espbridge import Client, Dropped
from espbridge import _spool as spool_module

QUEUE = 10


class Reports:
    def __init__(self) -> None:
        self.dropped: list[tuple[Dropped, list[str]]] = []
        self.other: list[Exception] = []

    def __call__(self, error: Exception, messages: list[dict[str, Any]]) -> None:
        if isinstance(error, Dropped):
            self.dropped.append((error, [message["messageId"] for message in messages]))
        else:
            self.other.append(error)

    def dropped_ids(self) -> list[str]:
        return [mid for _, ids in self.dropped for mid in ids]


def _down(sink: Sink) -> None:
    sink.responder = lambda request, batch: httpx.Response(503)


def test_without_a_spool_drop_oldest_drops_the_oldest_queued_and_reports_them_by_id(
    make_client: Any, sink: Sink
) -> None:
    # Given a client without a spool, a 10-message queue and drop_oldest, whose service is down
    _down(sink)
    reports = Reports()
    client: Client = make_client(
        spool=False,
        max_queue_size=QUEUE,
        flush_interval=0.05,
        retry_min_backoff=0.05,
        retry_max_backoff=0.1,
        on_error=reports,
    )
    first = client.track("u1", "E", message_id="m-0")
    deadline = time.monotonic() + 5  # the consumer takes the first message and keeps retrying it
    while client.stats().retries == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.stats().retries > 0

    # When 100 more are tracked
    tracked = [first, *(client.track("u1", "E", message_id=f"m-{n}") for n in range(1, 101))]

    # Then the oldest queued were dropped and reported one by one with their messages, and the newest 10 kept
    assert reports.other == []
    assert all(error.count == len(ids) for error, ids in reports.dropped)
    assert reports.dropped_ids() == [f"m-{n}" for n in range(1, 91)]
    assert client.stats().dropped == 90

    # And once the service is back: delivered + dropped == tracked, the newest kept
    sink.responder = None
    assert client.flush(5)
    assert sink.message_ids() == ["m-0", *(f"m-{n}" for n in range(91, 101))]
    assert len(sink.messages) + client.stats().dropped == len(tracked)


def test_without_a_spool_block_waits_block_timeout_then_drops_the_new_message(make_client: Any, sink: Sink) -> None:
    # Given a client without a spool, a 10-message queue and overflow="block", whose service is down
    _down(sink)
    reports = Reports()
    client: Client = make_client(
        spool=False, max_queue_size=QUEUE, overflow="block", block_timeout=0.2, flush_interval=30, on_error=reports
    )
    tracked = [client.track("u1", "E", message_id=f"m-{n}") for n in range(QUEUE)]

    # When the queue is full and one more message is tracked
    started = time.monotonic()
    tracked.append(client.track("u1", "E", message_id="m-new"))
    took = time.monotonic() - started

    # Then the call blocked block_timeout, then dropped that message (not an older one) and reported it
    assert 0.2 <= took < 1.5
    assert [(error.count, ids) for error, ids in reports.dropped] == [(1, ["m-new"])]
    assert client.stats().dropped == 1

    # And the queued ones are all delivered once the service is back
    sink.responder = None
    assert client.flush(5)
    assert sink.message_ids() == tracked[:QUEUE]


def test_without_a_spool_what_is_left_at_exit_is_reported_dropped(make_client: Any, sink: Sink) -> None:
    _down(sink)
    reports = Reports()
    client: Client = make_client(
        spool=False, flush_interval=30, retry_min_backoff=0.05, retry_max_backoff=0.1, on_error=reports
    )
    tracked = [client.track("u1", "E", message_id=f"m-{n}") for n in range(20)]
    assert client.shutdown(timeout=0.3) is False
    assert sorted(reports.dropped_ids()) == sorted(f"m-{n}" for n in range(20)) == sorted(map(str, tracked))
    assert all("no spool" in error.reason for error, _ in reports.dropped)
    assert client.stats().dropped == 20


def test_a_segment_just_created_is_not_taken_for_an_orphan_by_a_concurrent_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spilling process creates a segment, locks it, then makes it visible to scans. A scan by another process
    (a sibling worker, or this process's own consumer at start) between the create and the lock must not take
    it for a dead process's leftover: it would be unlinked and the message would miss the spool (seen once in
    tests/e2e/test_sdk_overflow.py as a spurious drop)."""
    directory = tmp_path / "spool"
    writer = spool_module.Spool(directory, max_bytes=1 << 20, durable=True)
    scanner = spool_module.Spool(directory, max_bytes=1 << 20, durable=True)
    real_flock = fcntl.flock

    def scan_first(fd: int, operation: int) -> None:
        # The writer is about to lock its new segment: the scan of another process gets in first.
        monkeypatch.setattr(fcntl, "flock", real_flock)
        scanner.adopt_orphans()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", scan_first)
    assert writer.append(b'{"messageId":"m-1"}')
    assert [path.suffix for path in directory.iterdir()] == [".seg"]
    assert writer.read(10, 1 << 20) is not None
