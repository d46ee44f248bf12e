"""What the real service refuses reaches ``on_error`` as ``espbridge.Rejected``, with the service's field and reason;
it is not retried, and it takes nothing else down with it.

Nothing a caller can pass through the SDK's public calls passes the SDK's own checks yet fails the service's,
except integer ids longer than 200 digits, which is a gap in the SDK's checks (see
sdk/tests/test_invalid_input.py::test_an_integer_id_longer_than_the_services_200_characters_is_invalid) and will not
stay a way in. So the refused message reaches the service the way a message the SDK did not check does: from a
spool segment another process left behind (an older SDK version, say), which the client adopts and sends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from espbridge import Client, Rejected
from espbridge._client import _spool_directory

from connector.store import Database
from connector.tenancy import NewStore
from tests.conftest import stored_counts

from .processes import ServiceProcess
from .sdk_support import not_once, segments

pytestmark = pytest.mark.slow


class Reports:
    def __init__(self) -> None:
        self.errors: list[tuple[Exception, list[dict[str, Any]]]] = []

    def __call__(self, error: Exception, messages: list[dict[str, Any]]) -> None:
        self.errors.append((error, messages))


def _record(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "messageId": message_id, "properties": {"sku": "p1"}, **fields}


def test_a_message_the_service_refuses_is_reported_with_its_field_and_the_rest_of_the_batch_stored(
    serve: ServiceProcess, store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given a spool segment a dead process left: three messages, the middle one without userId or anonymousId
    spool_dir = tmp_path / "spool"
    directory = _spool_directory(spool_dir, serve.url, store.write_key)
    directory.mkdir(parents=True)
    left = [_record("old-0", userId="u0"), _record("old-1"), _record("old-2", anonymousId="a2")]
    segment = directory / "00000000000000000001-999999-deadbeef.seg"
    segment.write_bytes(b"".join(json.dumps(record).encode() + b"\n" for record in left))

    # When a client on that spool starts, tracks three messages of its own and flushes
    reports = Reports()
    client = Client(store.write_key, host=serve.url, spool_dir=spool_dir, on_error=reports)
    try:
        tracked = [client.track(f"u{n}", "Product Viewed", {"sku": "p2"}, message_id=f"new-{n}") for n in range(3)]
        assert client.flush(timeout=30)
        stats = client.stats()
    finally:
        client.shutdown(timeout=5)

    # Then the refused message is reported once, as Rejected with the service's field and reason, and the message
    [(error, messages)] = reports.errors
    assert isinstance(error, Rejected)
    assert (error.status, error.field, error.reason) == (400, "userId", "userId or anonymousId is required")
    assert messages == [left[1]]
    assert (stats.sent, stats.rejected, stats.retries, stats.dropped) == (5, 1, 0, 0)
    # And every other message, its batch's included, is stored once; the refused one is not; the spool is empty
    stored = stored_counts(db, store.id)
    assert set(stored) == {"old-0", "old-2", *(mid for mid in tracked if mid)}
    assert not_once(stored) == {}
    assert segments(spool_dir) == []


def test_a_wrong_write_key_is_reported_for_every_message_and_not_retried(
    serve: ServiceProcess, store: NewStore, db: Database, tmp_path: Path
) -> None:
    # Given a client with a write key the service does not know
    reports = Reports()
    client = Client("not-a-write-key", host=serve.url, spool_dir=tmp_path / "spool", on_error=reports)
    try:
        # When it tracks five messages and flushes
        tracked = [client.track("u1", "Product Viewed", message_id=f"m-{n}") for n in range(5)]
        started = time.monotonic()
        assert client.flush(timeout=30)
        took = time.monotonic() - started
        stats = client.stats()
    finally:
        client.shutdown(timeout=5)

    # Then each message is reported as Rejected with HTTP 401 and the service's reason, at once, without retries
    assert [type(error) for error, _ in reports.errors] == [Rejected] * 5
    assert {(error.status, error.reason) for error, _ in reports.errors if isinstance(error, Rejected)} == {
        (401, "a valid write key is required as the HTTP Basic user name")
    }
    assert sorted(messages[0]["messageId"] for _, messages in reports.errors) == tracked
    assert (stats.sent, stats.rejected, stats.retries) == (0, 5, 0)
    assert took < 5
    # And nothing is stored
    assert stored_counts(db, store.id) == {}
