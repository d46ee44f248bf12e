"""The spine in one test: a batch is acknowledged, projected, and its outbox rows delivered."""

from __future__ import annotations

import time

import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.runtime import Runtime
from connector.store import Contact, Database, Event, OutboxRow
from connector.tenancy import NewStore
from tests.conftest import post_messages, track


def test_batch_is_stored_projected_and_delivered(
    client: FlaskClient, runtime: Runtime, db: Database, store: NewStore
) -> None:
    # Given a running embedded worker and relay
    runtime.start_background()
    # When a storefront sends an identify and a track
    response = post_messages(
        client,
        store.write_key,
        [
            {"type": "identify", "userId": "u1", "messageId": "m1", "traits": {"email": "Ann@Example.com"}},
            track("Product Viewed", "m2", product_id="p1"),
        ],
    )
    # Then both are committed before the 200
    assert response.status_code == 200, response.json
    assert response.json == {"success": True, "accepted": 2, "duplicates": 0}
    with db.reader() as session:
        assert session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store.id)) == 2
    # And the worker projects them and delivers every outbox row
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with db.reader() as session:
            statuses = set(session.scalars(sa.select(OutboxRow.status)))
            contact = session.scalar(sa.select(Contact).where(Contact.store_id == store.id))
        if contact is not None and statuses == {"done"}:
            break
        time.sleep(0.05)
    assert contact is not None and contact.email == "ann@example.com"
    assert statuses == {"done"}
