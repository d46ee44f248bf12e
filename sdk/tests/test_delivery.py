"""The consumer: batching by count, bytes and interval; gzip; keep-alive; retries with backoff honouring
Retry-After; a refused message dropped alone and reported; never an exception into the caller."""

from __future__ import annotations

import base64
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HttpSink, Sink
from espbridge import Client, Rejected


def test_batches_by_count_and_gzips_with_write_key_auth(make_client: Any, sink: Sink) -> None:
    client: Client = make_client(max_batch_size=100, flush_interval=30)
    for n in range(250):
        client.track("u1", "Tick", {"n": n})
    assert client.flush(5)
    assert [len(batch) for batch in sink.batches] == [100, 100, 50]
    request = sink.requests[0]
    assert request.url.path == "/v1/batch"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"test-write-key:").decode()
    assert request.headers["User-Agent"].startswith("espbridge-python/")


def test_batches_stay_under_the_byte_limit(make_client: Any, sink: Sink) -> None:
    client: Client = make_client(max_batch_bytes=64 * 1024, flush_interval=30)
    for n in range(40):
        client.track("u1", "Big", {"blob": "x" * 10_000, "n": n})
    assert client.flush(5)
    assert sum(len(batch) for batch in sink.batches) == 40
    assert all(len(batch) <= 6 for batch in sink.batches)  # 6 x ~10 KB fit in 64 KB; a 7th would not


def test_a_lone_message_is_sent_after_the_flush_interval(make_client: Any, sink: Sink) -> None:
    client: Client = make_client(flush_interval=0.2)
    client.track("u1", "Lonely")
    deadline = time.monotonic() + 5
    while not sink.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [message["event"] for message in sink.messages] == ["Lonely"]


def test_429_is_retried_after_retry_after(make_client: Any, sink: Sink) -> None:
    attempts: list[float] = []

    def limited(request: httpx.Request, batch: list[Any]) -> httpx.Response | None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"}, json={"success": False})
        return None

    sink.responder = limited
    client: Client = make_client(retry_min_backoff=0.01, retry_max_backoff=0.02)
    client.track("u1", "Limited")
    assert client.flush(10)
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 1.0  # the service's Retry-After, not our 10-20 ms backoff
    assert client.stats().retries == 1 and client.stats().sent == 1


def test_5xx_and_network_errors_are_retried_with_growing_backoff(make_client: Any, sink: Sink) -> None:
    attempts: list[float] = []

    def flaky(request: httpx.Request, batch: list[Any]) -> httpx.Response | None:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            return httpx.Response(503, json={"success": False})
        if len(attempts) <= 4:
            raise httpx.ConnectError("connection refused", request=request)
        return None

    sink.responder = flaky
    client: Client = make_client(retry_min_backoff=0.05, retry_max_backoff=0.4)
    client.track("u1", "Flaky")
    assert client.flush(10)
    assert len(attempts) == 5 and [m["event"] for m in sink.messages] == ["Flaky"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    # Equal jitter: each wait is between half and all of min * 2^(n-1), capped at the maximum.
    for n, gap in enumerate(gaps, start=1):
        ceiling = min(0.4, 0.05 * 2 ** (n - 1))
        assert ceiling / 2 <= gap < ceiling + 0.2, (n, gap)


def test_a_message_the_service_refuses_is_dropped_alone_and_reported(make_client: Any, sink: Sink) -> None:
    def refuse_second(request: httpx.Request, batch: list[Any]) -> httpx.Response:
        errors = [{"index": 1, "field": "timestamp", "reason": "too far in the future", "messageId": "m2"}]
        return httpx.Response(200, json={"success": True, "accepted": 2, "errors": errors})

    sink.responder = refuse_second
    reported: list[tuple[Exception, list[Any]]] = []
    client: Client = make_client(on_error=lambda error, messages: reported.append((error, messages)))
    for n in range(3):
        client.track("u1", "E", message_id=f"m{n + 1}")
    assert client.flush(5)
    assert len(reported) == 1
    error, messages = reported[0]
    assert isinstance(error, Rejected) and error.field == "timestamp" and "future" in error.reason
    assert [m["messageId"] for m in messages] == ["m2"]
    assert client.stats().sent == 2 and client.stats().rejected == 1


def test_a_bad_write_key_rejects_the_batch_and_reports_every_message(make_client: Any, sink: Sink) -> None:
    sink.responder = lambda request, batch: httpx.Response(401, json={"success": False, "error": "bad key"})
    reported: list[Exception] = []
    client: Client = make_client(on_error=lambda error, messages: reported.extend([error] * len(messages)))
    for _ in range(3):
        client.track("u1", "E")
    assert client.flush(5)
    assert len(reported) == 3 and all(isinstance(e, Rejected) and e.status == 401 for e in reported)


def test_413_splits_the_batch_until_it_fits(make_client: Any, sink: Sink) -> None:
    sink.responder = lambda request, batch: httpx.Response(413) if len(batch) > 2 else None
    client: Client = make_client(flush_interval=30)
    for n in range(8):
        client.track("u1", "E", {"n": n})
    assert client.flush(5)
    assert sorted(m["properties"]["n"] for m in sink.messages) == list(range(8))
    assert all(len(batch) <= 2 for batch in sink.batches)


def test_one_connection_is_kept_alive(http_sink: HttpSink, tmp_path: Path) -> None:
    client = Client("k", http_sink.url, spool_dir=tmp_path, max_batch_size=10)
    for n in range(100):
        client.track("u1", "E", {"n": n})
        if n % 10 == 9:
            assert client.flush(5)
    assert client.shutdown(5)
    assert len(http_sink.messages) == 100
    assert http_sink.connections == 1


def test_sync_mode_sends_each_call_before_returning_on_one_kept_alive_connection(
    http_sink: HttpSink, tmp_path: Path
) -> None:
    client = Client("k", http_sink.url, spool_dir=tmp_path, sync_mode=True, retry_min_backoff=0.01)
    for n in range(20):
        client.track("u1", "E", {"n": n})
        assert len(http_sink.messages) == n + 1
    http_sink.statuses = [503, 503]  # retried within the call
    client.track("u1", "After a hiccup")
    assert http_sink.messages[-1]["event"] == "After a hiccup"
    assert http_sink.connections == 1
    client.shutdown(2)


def test_sync_mode_survives_the_service_closing_an_idle_connection(http_sink: HttpSink, tmp_path: Path) -> None:
    http_sink.hang_up = True
    client = Client("k", http_sink.url, spool_dir=tmp_path, sync_mode=True)
    for n in range(3):
        client.track("u1", "E", {"n": n})
    assert [m["properties"]["n"] for m in http_sink.messages] == [0, 1, 2]
    assert http_sink.connections == 3
    assert client.stats().retries == 0  # a stale kept-alive connection is not a failure of the service
    client.shutdown(2)


def test_flush_returns_false_while_the_service_is_down_and_nothing_raises(make_client: Any, sink: Sink) -> None:
    sink.responder = lambda request, batch: httpx.Response(503)
    client: Client = make_client(retry_min_backoff=0.05, retry_max_backoff=0.1)
    assert client.track("u1", "E") is not None  # no exception into the caller
    started = time.monotonic()
    assert client.flush(0.5) is False
    assert time.monotonic() - started < 1.5
    assert client.stats().queued + (1 if client.stats().retries else 0) >= 1
    sink.responder = None
    assert client.flush(5)
    assert [m["event"] for m in sink.messages] == ["E"]


def test_debug_logging_never_shows_the_write_key(
    make_client: Any, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink.responder = lambda request, batch: httpx.Response(401, json={"success": False, "error": "bad key"})
    client: Client = make_client(debug=True)
    client.track("u1", "E")
    assert client.flush(5)
    assert any("POST /v1/batch" in record.getMessage() for record in caplog.records)
    encoded = base64.b64encode(b"test-write-key:").decode()
    for record in caplog.records:
        assert "test-write-key" not in record.getMessage() and encoded not in record.getMessage()


def test_sync_mode_sends_before_returning(make_client: Any, sink: Sink) -> None:
    client: Client = make_client(sync_mode=True)
    mid = client.track("u1", "Now")
    assert sink.message_ids() == [mid]
    assert "Content-Encoding" not in sink.requests[0].headers  # one small message is not worth compressing


def test_send_false_validates_but_sends_nothing(make_client: Any, sink: Sink, spool_dir: Any) -> None:
    client: Client = make_client(send=False)
    assert client.track("u1", "E") is not None
    assert client.flush(1)
    assert sink.requests == [] and not spool_dir.exists()
