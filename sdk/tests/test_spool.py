"""The on-disk spool: spill when the queue is full, durable mode, and adoption of what a process left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from conftest import Sink
from espbridge import Client


def _segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*/*.seg"))


def test_a_full_queue_spills_to_disk_and_everything_arrives_in_order(make_client: Any, sink: Sink) -> None:
    sink.responder = lambda request, batch: httpx.Response(503)
    client: Client = make_client(max_queue_size=10, retry_min_backoff=0.05, retry_max_backoff=0.1)
    sent = [client.track("u1", "E", {"n": n}) for n in range(300)]
    assert client.flush(0.3) is False
    stats = client.stats()
    assert stats.spooled_bytes > 0 and stats.dropped == 0
    sink.responder = None
    assert client.flush(10)
    assert sink.message_ids() == sent
    assert client.stats().spooled_bytes == 0


def test_durable_mode_writes_each_message_to_disk_before_returning(make_client: Any, spool_dir: Path) -> None:
    client: Client = make_client(durable=True, flush_interval=30, max_batch_size=1000)
    mid = client.track("u1", "Durable", {"n": 1})
    on_disk = b"".join(path.read_bytes() for path in _segments(spool_dir))
    assert json.loads(on_disk.splitlines()[-1])["messageId"] == mid


def test_what_shutdown_could_not_deliver_is_sent_by_the_next_client(
    sink: Sink, spool_dir: Path, tmp_path: Path
) -> None:
    down = Client(
        "key",
        "http://espbridge.test",
        spool_dir=spool_dir,
        transport=httpx.MockTransport(lambda request: httpx.Response(503)),
        retry_min_backoff=0.05,
        retry_max_backoff=0.1,
    )
    sent = [down.track("u1", "E", {"n": n}) for n in range(50)]
    assert down.shutdown(timeout=0.3) is False
    assert _segments(spool_dir), "the undelivered messages are on disk"

    other_key = Client("other-key", "http://espbridge.test", spool_dir=spool_dir, transport=httpx.MockTransport(sink))
    assert other_key.flush(2) and sink.messages == []  # a spool is only ever sent with its own key
    other_key.shutdown(1)

    restarted = Client("key", "http://espbridge.test", spool_dir=spool_dir, transport=httpx.MockTransport(sink))
    assert restarted.flush(5)
    assert sorted(sink.message_ids()) == sorted(sent)
    restarted.shutdown(2)
    assert _segments(spool_dir) == []  # delivered segments are removed


def test_adoption_resumes_after_the_acknowledged_offset_and_skips_a_torn_line(
    make_client: Any, sink: Sink, spool_dir: Path
) -> None:
    # Given a segment left by a crashed process: two records delivered (its .ack says so), two not, and the
    # first bytes of a fifth that the crash cut off (that call never returned)
    probe: Client = make_client(send=False)
    directory = _spool_directory_of(probe, spool_dir)
    records = [json.dumps({"type": "track", "event": "E", "userId": "u", "messageId": f"m{n}"}) for n in range(4)]
    segment = directory / "00000000000000000001-999999-deadbeef.seg"
    body = "".join(record + "\n" for record in records).encode()
    segment.write_bytes(body + b'{"type":"tra')
    acked = len((records[0] + "\n" + records[1] + "\n").encode())
    segment.with_suffix(".ack").write_bytes(b"%020d\n" % acked)

    # When a client on that spool starts
    client: Client = make_client()
    assert client.flush(5)

    # Then exactly the undelivered complete records are sent
    assert sink.message_ids() == ["m2", "m3"]


def _spool_directory_of(client: Client, spool_dir: Path) -> Path:
    # The directory is derived from (host, write key); make_client uses these.
    from espbridge._client import _spool_directory

    directory = _spool_directory(spool_dir, "http://espbridge.test", "test-write-key")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_a_spool_that_cannot_be_written_falls_back_to_memory_and_reports_what_it_drops(
    make_client: Any, sink: Sink, tmp_path: Path
) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    sink.responder = lambda request, batch: httpx.Response(503)
    dropped: list[int] = []
    client: Client = make_client(
        spool_dir=not_a_directory,
        max_queue_size=5,
        retry_min_backoff=0.05,
        retry_max_backoff=0.1,
        on_error=lambda error, messages: dropped.append(getattr(error, "count", 0)),
    )
    for n in range(20):
        client.track("u1", "E", {"n": n})  # never raises, though every spill fails
    sink.responder = None
    assert client.flush(5)
    assert sum(dropped) == client.stats().dropped > 0
    assert len(sink.messages) + client.stats().dropped == 20


def test_a_damaged_record_in_an_adopted_segment_is_skipped_and_the_rest_delivered(
    make_client: Any, sink: Sink, spool_dir: Path
) -> None:
    directory = _spool_directory_of(make_client(send=False), spool_dir)
    good = [json.dumps({"type": "track", "event": "E", "userId": "u", "messageId": f"m{n}"}) for n in range(2)]
    (directory / "00000000000000000001-999999-deadbeef.seg").write_text(f"{good[0]}\n\x00\x00garbage\n{good[1]}\n")
    client: Client = make_client()
    assert client.flush(5)
    assert sink.message_ids() == ["m0", "m1"]
    assert client.stats().queued == 0
