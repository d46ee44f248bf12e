"""A change that arrives while the contact's previous change is being sent must not be overtaken by it.

A job loads the contact's state, then sends it (outside any transaction, maybe after waiting on the rate limiter
or a slow ESP). If the contact changes meanwhile, a second item is queued for it. Were that item sent by another
job at once, the first job's request, carrying the older state, could reach the ESP last and stay there: a
stale profile, or worse a subscription that the person has since withdrawn, with both items done and nothing left
to correct it. The sandbox runs in process behind a transport that holds the first job's request until released.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import enqueue_due
from connector.jobs.tasks import Jobs
from connector.sandbox.klaviyo import DEFAULT_API_KEY, KlaviyoSandbox
from connector.settings import Settings
from connector.store import Database, SyncItem, SyncItemStatus
from connector.sync import queue
from connector.sync.adapters import AdapterOptions
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track

SANDBOX_URL = "http://127.0.0.1"  # served in process by the transport: no network
HOLD_TIMEOUT = 10.0


class HoldingTransport(httpx.BaseTransport):
    """The in-process sandbox; the first request to a path containing ``hold`` waits until ``release`` is set."""

    def __init__(self, app: KlaviyoSandbox) -> None:
        self.inner = httpx.WSGITransport(app=app)
        self.hold: str | None = None
        self.held = threading.Event()
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.hold is not None and self.hold in request.url.path:
            self.hold = None
            self.held.set()
            if not self.release.wait(HOLD_TIMEOUT):
                raise httpx.ReadTimeout("never released", request=request)
        return self.inner.handle_request(request)


@pytest.fixture
def sandbox() -> KlaviyoSandbox:
    return KlaviyoSandbox()


@pytest.fixture
def transport(sandbox: KlaviyoSandbox) -> HoldingTransport:
    return HoldingTransport(sandbox)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url, secret_key="test-secret", credentials_key=new_key(), retry_min_backoff=0.05
    )


@pytest.fixture
def jobs(settings: Settings, db: Database, store: NewStore, transport: HoldingTransport) -> Iterator[Jobs]:
    with db.writer() as session:
        cipher = CredentialCipher(settings.credentials_key)
        connections.connect(session, cipher, store.id, "klaviyo", api_key=DEFAULT_API_KEY, base_url=SANDBOX_URL)
    broker = EmbeddedBroker()
    yield Jobs(settings=settings, db=db, broker=broker, adapter_options=AdapterOptions(transport=transport))
    broker.close()


def identify(message_id: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": "u1",
        "messageId": message_id,
        "traits": {"email": "ada@example.com"} | traits,
    }


def consent(message_id: str, status: str) -> dict[str, Any]:
    return track("Consent Updated", message_id, "u1", channel="email", status=status)


def fan_out(db: Database, jobs: Jobs, store_id: int) -> None:
    project_all(db, store_id)
    enqueue_due(db, jobs._deliver_outbox)


def unsettled(db: Database) -> list[tuple[str, str]]:
    with db.reader() as session:
        rows = session.execute(sa.select(SyncItem.kind, SyncItem.status).where(SyncItem.status != SyncItemStatus.DONE))
        return [(kind, status) for kind, status in rows]


@pytest.mark.parametrize(
    ("hold", "first", "second"),
    [
        ("/api/profile-import", [identify("m1", firstName="Old")], [identify("m2", firstName="New")]),
        (
            "/api/profile-subscription-bulk-create-jobs",
            [identify("m1"), consent("m2", "subscribed")],
            [consent("m3", "unsubscribed")],
        ),
    ],
    ids=["profile", "consent"],
)
def test_a_change_made_while_the_previous_one_is_in_flight_reaches_the_esp_last(
    client: FlaskClient,
    db: Database,
    store: NewStore,
    jobs: Jobs,
    sandbox: KlaviyoSandbox,
    transport: HoldingTransport,
    hold: str,
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
) -> None:
    # Given the first state is queued, and a job has loaded it and is sending it (held on its way to the ESP)
    assert post_messages(client, store.write_key, first).status_code == 200
    fan_out(db, jobs, store.id)
    transport.hold = hold
    in_flight = threading.Thread(target=queue.claim_due, args=(db, jobs._sync_items))
    in_flight.start()
    try:
        assert transport.held.wait(HOLD_TIMEOUT), "the first job sent nothing"
        # When the contact changes meanwhile and the relay ticks
        assert post_messages(client, store.write_key, second).status_code == 200
        fan_out(db, jobs, store.id)
        queue.claim_due(db, jobs._sync_items)
    finally:
        # And the first job's request then arrives
        transport.release.set()
        in_flight.join(HOLD_TIMEOUT)
    assert not in_flight.is_alive()
    # And the relay ticks until nothing is due (bounded)
    for _ in range(5):
        if not queue.claim_due(db, jobs._sync_items):
            break

    # Then the ESP holds the latest state, and every item is done
    state = sandbox.state()
    [profile] = state["profiles"]
    if hold == "/api/profile-import":
        assert profile["attributes"]["first_name"] == "New"
    else:
        assert state["subscriptions"][profile["id"]] == {"email": "UNSUBSCRIBED"}
    assert unsettled(db) == []
