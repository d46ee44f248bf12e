"""Abandoned carts: the relay marks a shopper's inactive cart abandoned, and each connected ESP gets a cart sync
item (ActiveCampaign turns it into Deep Data for its own abandoned-cart automations; Klaviyo's flows run on the
checkout events it already has, so its item is skipped without a request). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.commerce import mark_abandoned
from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.jobs.broker import EmbeddedBroker
from connector.jobs.relay import Relay, enqueue_due
from connector.jobs.tasks import Jobs
from connector.outbox import Topic
from connector.sandbox.klaviyo import DEFAULT_API_KEY, KlaviyoSandbox
from connector.settings import Settings
from connector.store import Cart, Database, OutboxRow, SyncItem, SyncItemStatus, SyncKind, utcnow
from connector.sync import queue
from connector.sync.adapters import AdapterOptions
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track

HOUR = dt.timedelta(hours=1)
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


def at(message: dict[str, Any], when: dt.datetime) -> dict[str, Any]:
    return {**message, "timestamp": when.isoformat().replace("+00:00", "Z")}


def send(client: FlaskClient, db: Database, store: NewStore, messages: list[dict[str, Any]]) -> None:
    response = post_messages(client, store.write_key, messages)
    assert response.status_code == 200 and response.json["accepted"] == len(messages), response.json
    project_all(db, store.id)


def cart_rows(db: Database, store_id: int) -> list[Cart]:
    with db.reader() as session:
        return list(session.scalars(sa.select(Cart).where(Cart.store_id == store_id).order_by(Cart.id)))


def abandoned_rows(db: Database, store_id: int) -> list[str]:
    with db.reader() as session:
        query = sa.select(OutboxRow.subject_id).where(
            OutboxRow.store_id == store_id, OutboxRow.topic == Topic.CART_ABANDONED
        )
        return list(session.scalars(query))


def mark(db: Database, now: dt.datetime) -> int:
    return mark_abandoned(db, now, HOUR)


def checkout(message_id: str, **extra: Any) -> dict[str, Any]:
    product = {"product_id": "p1", "price": 20, "quantity": 2}
    return track("Checkout Started", message_id, cart_id="c-1", currency="USD", products=[product], **extra)


def test_an_inactive_cart_is_abandoned_once(client: FlaskClient, db: Database, store: NewStore) -> None:
    send(client, db, store, [at(checkout("m1"), T0)])
    # Not before an hour without activity
    assert mark(db, T0 + HOUR - dt.timedelta(minutes=1)) == 0
    assert mark(db, T0 + 2 * HOUR) == 1
    [cart] = cart_rows(db, store.id)
    assert cart.status == "abandoned"
    assert abandoned_rows(db, store.id) == [str(cart.id)]
    # And once: a later scan finds nothing more
    assert mark(db, T0 + 3 * HOUR) == 0
    assert len(abandoned_rows(db, store.id)) == 1


def test_empty_carts_are_never_abandoned(client: FlaskClient, db: Database, store: NewStore) -> None:
    send(
        client,
        db,
        store,
        [
            at(track("Product Added", "m1", cart_id="c-1", product_id="p1"), T0),
            at(track("Product Removed", "m2", cart_id="c-1", product_id="p1"), T0),
        ],
    )
    assert mark(db, T0 + 2 * HOUR) == 0


def test_a_shopper_coming_back_reopens_the_cart_and_an_order_converts_it(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    send(client, db, store, [at(checkout("m1"), T0)])
    assert mark(db, T0 + 2 * HOUR) == 1
    # When the shopper adds to the same cart, it is open again (the same row, not a new cart)
    send(client, db, store, [at(track("Product Added", "m2", cart_id="c-1", product_id="p2"), T0 + 3 * HOUR)])
    [cart] = cart_rows(db, store.id)
    assert cart.status == "open"
    # And abandoned again when they leave again
    assert mark(db, T0 + 5 * HOUR) == 1
    # When the order for that cart completes, the abandoned cart is converted to it
    order = track("Order Completed", "m3", order_id="o-1", cart_id="c-1", total=40, products=[])
    send(client, db, store, [at(order, T0 + 6 * HOUR)])
    [cart] = cart_rows(db, store.id)
    assert (cart.status, cart.order_id) == ("converted", "o-1")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url, secret_key="test-secret", credentials_key=new_key(), cart_abandon_after=1
    )


@pytest.fixture
def jobs(settings: Settings, db: Database) -> Iterator[Jobs]:
    options = AdapterOptions(transport=httpx.WSGITransport(app=KlaviyoSandbox()))
    broker = EmbeddedBroker()
    yield Jobs(settings=settings, db=db, broker=broker, adapter_options=options)
    broker.close()


def test_the_relay_abandons_carts_and_each_esp_settles_its_cart_item(
    client: FlaskClient, db: Database, store: NewStore, settings: Settings, jobs: Jobs
) -> None:
    with db.writer() as session:
        cipher = CredentialCipher(settings.credentials_key)
        connections.connect(
            session, cipher, store.id, "klaviyo", api_key=DEFAULT_API_KEY, base_url="http://klaviyo.sandbox"
        )
    # A checkout two seconds ago (the store abandons after one)
    send(client, db, store, [at(checkout("m1"), utcnow() - dt.timedelta(seconds=2))])
    # When the relay ticks
    report = Relay(jobs).tick()
    assert report.carts_abandoned == 1
    # Then the cart reaches the sync queue of the connected ESP as a cart item
    enqueue_due(db, jobs._deliver_outbox)
    with db.reader() as session:
        [item] = session.scalars(sa.select(SyncItem).where(SyncItem.kind == SyncKind.CART))
    assert (item.esp, item.subject_id) == ("klaviyo", str(cart_rows(db, store.id)[0].id))
    # And Klaviyo, whose abandoned-cart flows run on the checkout events, settles it without a request
    queue.claim_due(db, jobs._sync_items)
    with db.reader() as session:
        item = session.get_one(SyncItem, item.id)
    assert item.status == SyncItemStatus.SKIPPED
    assert item.last_error is not None and "checkout events" in item.last_error
