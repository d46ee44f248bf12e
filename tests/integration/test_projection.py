"""Projection: Segment messages ingested through the HTTP API become contacts, carts, orders, consent, waitlists,
catalog rows and outbox rows — exactly once, store by store, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from connector.errors import AppendOnlyViolation
from connector.ingest import projection
from connector.ingest.projection import project_pending
from connector.ledger import evidence_digest
from connector.store import (
    Cart,
    CartItem,
    ConsentEvidence,
    ConsentLedgerEntry,
    ConsentState,
    Contact,
    Database,
    Engagement,
    Event,
    Identity,
    IdentityKind,
    Order,
    OrderItem,
    OutboxRow,
    OutboxStatus,
    Product,
    Variant,
    WaitlistEntry,
)
from connector.store.base import utcnow
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track

Message = dict[str, Any]

T0 = "2026-03-01T10:00:00Z"
T1 = "2026-03-01T11:00:00Z"
T2 = "2026-03-01T12:00:00Z"


# --- helpers ------------------------------------------------------------------------------------------------------


def ingest(client: FlaskClient, store: NewStore, messages: list[Message]) -> None:
    """POST ``messages`` as one batch and insist every one was accepted as new."""
    response = post_messages(client, store.write_key, messages)
    assert response.status_code == 200, response.json
    assert response.json["accepted"] == len(messages), response.json
    assert "errors" not in response.json, response.json


def ingest_and_project(client: FlaskClient, db: Database, store: NewStore, messages: list[Message]) -> int:
    ingest(client, store, messages)
    return project_all(db, store.id)


def identify(
    message_id: str,
    user_id: str | None = None,
    *,
    anonymous_id: str | None = None,
    context: dict[str, Any] | None = None,
    timestamp: str | None = None,
    **traits: Any,
) -> Message:
    message: Message = {"type": "identify", "messageId": message_id, "traits": traits}
    if user_id is not None:
        message["userId"] = user_id
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    if context is not None:
        message["context"] = context
    if timestamp is not None:
        message["timestamp"] = timestamp
    return message


def anonymous_track(event: str, message_id: str, anonymous_id: str, **properties: Any) -> Message:
    message = track(event, message_id, user_id=None, **properties)
    message["anonymousId"] = anonymous_id
    return message


def at(message: Message, timestamp: str) -> Message:
    return {**message, "timestamp": timestamp}


def with_context(message: Message, **context: Any) -> Message:
    return {**message, "context": context}


def consent(message_id: str, user_id: str = "u1", **properties: Any) -> Message:
    return track("Consent Updated", message_id, user_id, **properties)


def count(session: Session, model: Any, *where: Any) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0


def contact_of(session: Session, store_id: int, kind: str, value: str) -> Contact:
    """The live contact an identity points at."""
    contact = session.scalar(
        sa.select(Contact)
        .join(Identity, Identity.contact_id == Contact.id)
        .where(Identity.store_id == store_id, Identity.kind == kind, Identity.value == value)
    )
    assert contact is not None, f"no contact for {kind}={value}"
    assert contact.merged_into_id is None
    return contact


def user(session: Session, store_id: int, user_id: str) -> Contact:
    return contact_of(session, store_id, IdentityKind.USER_ID, user_id)


def live_contacts(session: Session, store_id: int) -> list[Contact]:
    return list(
        session.scalars(
            sa.select(Contact)
            .where(Contact.store_id == store_id, Contact.merged_into_id.is_(None))
            .order_by(Contact.id)
        )
    )


def event(session: Session, store_id: int, message_id: str) -> Event:
    row = session.scalar(sa.select(Event).where(Event.store_id == store_id, Event.message_id == message_id))
    assert row is not None
    return row


def order(session: Session, store_id: int, order_id: str) -> Order:
    row = session.scalar(sa.select(Order).where(Order.store_id == store_id, Order.order_id == order_id))
    assert row is not None, f"no order {order_id}"
    return row


def order_items(session: Session, order_row: Order) -> list[tuple[str, str, int | None, int]]:
    items = session.scalars(sa.select(OrderItem).where(OrderItem.order_ref == order_row.id).order_by(OrderItem.id))
    return [(i.product_id, i.variant, i.price_cents, i.quantity) for i in items]


def cart_lines(session: Session, cart: Cart) -> dict[tuple[str, str], int]:
    items = session.scalars(sa.select(CartItem).where(CartItem.cart_ref == cart.id))
    return {(item.product_id, item.variant): item.quantity for item in items}


def carts_of(session: Session, contact: Contact) -> list[Cart]:
    return list(session.scalars(sa.select(Cart).where(Cart.contact_id == contact.id).order_by(Cart.id)))


def outbox_rows(session: Session, store_id: int, topic: str | None = None) -> list[OutboxRow]:
    query = sa.select(OutboxRow).where(OutboxRow.store_id == store_id).order_by(OutboxRow.id)
    if topic is not None:
        query = query.where(OutboxRow.topic == topic)
    return list(session.scalars(query))


def ledger(session: Session, store_id: int) -> list[ConsentLedgerEntry]:
    return list(
        session.scalars(
            sa.select(ConsentLedgerEntry).where(ConsentLedgerEntry.store_id == store_id).order_by(ConsentLedgerEntry.id)
        )
    )


def consent_state(session: Session, contact: Contact, channel: str = "email") -> ConsentState | None:
    return session.scalar(
        sa.select(ConsentState).where(ConsentState.contact_id == contact.id, ConsentState.channel == channel)
    )


def product(product_id: str, price: Any, quantity: int = 1, **extra: Any) -> dict[str, Any]:
    return {"product_id": product_id, "price": price, "quantity": quantity, **extra}


# --- identity -----------------------------------------------------------------------------------------------------


def test_identify_creates_a_contact_with_normalised_email_names_phone_traits_and_locale(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given an identify with mixed-case email, Segment's camelCase name traits, a phone and custom traits
    message = identify(
        "m1",
        "u1",
        email="  Ann.Smith@Example.COM ",
        firstName="Ann",
        lastName="Smith",
        phone="+49 30 1234567",
        plan="gold",
        visits=3,
        context={"locale": "de-DE", "timezone": "Europe/Berlin"},
    )
    # When it is ingested and projected
    assert ingest_and_project(client, db, store, [message]) == 1
    # Then one contact holds the normalised values, and the traits without a column are in properties
    with db.reader() as session:
        (contact,) = live_contacts(session, store.id)
        assert contact.external_id == "u1"
        assert contact.email == "ann.smith@example.com"
        assert (contact.first_name, contact.last_name) == ("Ann", "Smith")
        assert contact.phone == "+49 30 1234567"
        assert contact.properties == {"plan": "gold", "visits": 3}
        assert contact.locale == "de-DE"
        assert contact.timezone == "Europe/Berlin"
        assert contact_of(session, store.id, IdentityKind.EMAIL, "ann.smith@example.com").id == contact.id
        assert event(session, store.id, "m1").contact_id == contact.id
        assert event(session, store.id, "m1").projection_error is None


def test_snake_case_name_traits_are_read_too(client: FlaskClient, db: Database, store: NewStore) -> None:
    ingest_and_project(client, db, store, [identify("m1", "u1", first_name="Bea", last_name="Berg")])
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        assert (contact.first_name, contact.last_name) == ("Bea", "Berg")


def test_a_later_identify_updates_the_same_contact(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a known contact
    ingest_and_project(
        client,
        db,
        store,
        [identify("m1", "u1", email="ann@example.com", first_name="Ann", plan="silver", context={"locale": "en-GB"})],
    )
    # When a later identify changes some traits and adds others
    ingest_and_project(
        client,
        db,
        store,
        [
            identify(
                "m2", "u1", firstName="Anna", phone="+4915112345678", plan="gold", vip=True, context={"locale": "de"}
            )
        ],
    )
    # Then the same contact is updated: changed traits replaced, untouched ones kept
    with db.reader() as session:
        (contact,) = live_contacts(session, store.id)
        assert contact.first_name == "Anna"
        assert contact.email == "ann@example.com"
        assert contact.phone == "+4915112345678"
        assert contact.properties == {"plan": "gold", "vip": True}
        assert contact.locale == "de"
        assert event(session, store.id, "m2").contact_id == contact.id


def test_an_anonymous_visitor_who_identifies_is_one_contact_with_their_earlier_events(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given an anonymous visitor browsing and filling a cart
    ingest_and_project(
        client,
        db,
        store,
        [
            anonymous_track("Product Viewed", "m1", "anon-1", product_id="p1"),
            anonymous_track("Product Added", "m2", "anon-1", product_id="p1", price=10),
        ],
    )
    # When they sign up: identify with userId and the same anonymousId
    ingest_and_project(client, db, store, [identify("m3", "u1", anonymous_id="anon-1", email="new@example.com")])
    # Then there is one contact, known by both ids, and the anonymous events and cart point at it
    with db.reader() as session:
        (contact,) = session.scalars(sa.select(Contact).where(Contact.store_id == store.id)).all()
        assert contact.external_id == "u1"
        assert contact.email == "new@example.com"
        assert contact_of(session, store.id, IdentityKind.ANONYMOUS_ID, "anon-1").id == contact.id
        assert user(session, store.id, "u1").id == contact.id
        assert {event(session, store.id, m).contact_id for m in ("m1", "m2", "m3")} == {contact.id}
        (cart,) = carts_of(session, contact)
        assert cart_lines(session, cart) == {("p1", ""): 1}


def test_a_new_user_id_whose_email_is_on_an_anonymous_contact_merges_them(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given an anonymous newsletter sign-up (email only) and, on another device, an anonymous shopper with a cart
    ingest_and_project(
        client,
        db,
        store,
        [
            identify("m1", anonymous_id="anon-news", email="cleo@example.com", first_name="Cleo"),
            anonymous_track("Product Added", "m2", "anon-shop", product_id="p1", price=5, quantity=2),
        ],
    )
    with db.reader() as session:
        newsletter = contact_of(session, store.id, IdentityKind.ANONYMOUS_ID, "anon-news")
        shopper = contact_of(session, store.id, IdentityKind.ANONYMOUS_ID, "anon-shop")
        assert newsletter.id != shopper.id
    # When the shopper registers with a new userId and the newsletter's email (in another case)
    ingest_and_project(
        client, db, store, [identify("m3", "u-cleo", anonymous_id="anon-shop", email="CLEO@example.com")]
    )
    # Then both anonymous contacts are one person now: one survivor, the other marked merged into it
    with db.reader() as session:
        (survivor,) = live_contacts(session, store.id)
        merged = session.get(Contact, shopper.id if survivor.id == newsletter.id else newsletter.id)
        assert merged is not None and merged.merged_into_id == survivor.id
        assert survivor.external_id == "u-cleo"
        assert survivor.email == "cleo@example.com"
        assert survivor.first_name == "Cleo"
        for kind, value in [
            (IdentityKind.USER_ID, "u-cleo"),
            (IdentityKind.EMAIL, "cleo@example.com"),
            (IdentityKind.ANONYMOUS_ID, "anon-news"),
            (IdentityKind.ANONYMOUS_ID, "anon-shop"),
        ]:
            assert contact_of(session, store.id, kind, value).id == survivor.id
        # and the merged contact's history moved with it
        assert {event(session, store.id, m).contact_id for m in ("m1", "m2", "m3")} == {survivor.id}
        (cart,) = carts_of(session, survivor)
        assert cart_lines(session, cart) == {("p1", ""): 2}
        assert count(session, Event, Event.contact_id == merged.id) == 0
        assert count(session, Identity, Identity.contact_id == merged.id) == 0


def test_two_user_ids_sharing_an_anonymous_id_are_not_merged(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a family computer: one person logs in and orders
    ingest_and_project(
        client,
        db,
        store,
        [
            identify("m1", "u-anna", anonymous_id="shared-device", email="anna@example.com"),
            at(track("Order Completed", "m2", "u-anna", order_id="o-anna", products=[product("p1", 10)]), T0),
        ],
    )
    # When another person logs in on the same device (same anonymousId) and orders
    ingest_and_project(
        client,
        db,
        store,
        [
            identify("m3", "u-ben", anonymous_id="shared-device", email="ben@example.com"),
            at(track("Order Completed", "m4", "u-ben", order_id="o-ben", products=[product("p2", 20)]), T1),
        ],
    )
    # Then they stay two people, each with their own email and order
    with db.reader() as session:
        anna, ben = user(session, store.id, "u-anna"), user(session, store.id, "u-ben")
        assert anna.id != ben.id
        assert len(live_contacts(session, store.id)) == 2
        assert (anna.external_id, anna.email) == ("u-anna", "anna@example.com")
        assert (ben.external_id, ben.email) == ("u-ben", "ben@example.com")
        assert contact_of(session, store.id, IdentityKind.EMAIL, "anna@example.com").id == anna.id
        assert contact_of(session, store.id, IdentityKind.EMAIL, "ben@example.com").id == ben.id
        assert order(session, store.id, "o-anna").contact_id == anna.id
        assert order(session, store.id, "o-ben").contact_id == ben.id
        assert event(session, store.id, "m3").contact_id == ben.id


def test_a_new_user_id_with_the_email_of_another_known_person_is_not_merged_into_them(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a registered customer
    ingest_and_project(client, db, store, [identify("m1", "u1", email="shared@example.com", first_name="Ann")])
    # When a different userId identifies with the same (say, a shared household) email
    ingest_and_project(client, db, store, [identify("m2", "u2", email="shared@example.com", first_name="Ben")])
    # Then the first customer is untouched and the second is a contact of their own
    with db.reader() as session:
        first, second = user(session, store.id, "u1"), user(session, store.id, "u2")
        assert first.id != second.id
        assert (first.external_id, first.first_name) == ("u1", "Ann")
        assert (second.external_id, second.first_name) == ("u2", "Ben")
        assert contact_of(session, store.id, IdentityKind.EMAIL, "shared@example.com").id == first.id


def test_alias_merges_the_anonymous_contact_and_moves_its_carts_orders_and_events(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given an anonymous shopper with a cart and a guest order, and a separately known customer
    ingest_and_project(
        client,
        db,
        store,
        [
            anonymous_track("Product Added", "m1", "anon-7", product_id="p9", price=3),
            at(
                anonymous_track("Order Completed", "m2", "anon-7", order_id="guest-1", products=[product("p9", 3)]),
                T0,
            ),
            anonymous_track("Product Added", "m3", "anon-7", product_id="p8", price=4),
            identify("m4", "u7", email="dora@example.com"),
        ],
    )
    with db.reader() as session:
        anonymous = contact_of(session, store.id, IdentityKind.ANONYMOUS_ID, "anon-7")
        known = user(session, store.id, "u7")
        assert anonymous.id != known.id
    with db.writer() as session:  # an open an ESP reported for the anonymous contact (lifecycle and segments read it)
        session.add(
            Engagement(
                store_id=store.id,
                esp="klaviyo",
                esp_event_id="e1",
                kind="opened",
                contact_id=anonymous.id,
                occurred_at=utcnow(),
            )
        )
    # When the storefront aliases the anonymousId to the userId
    alias: Message = {"type": "alias", "messageId": "m5", "previousId": "anon-7", "userId": "u7"}
    ingest_and_project(client, db, store, [alias])
    # Then the anonymous contact is merged into the known one, with everything it had
    with db.reader() as session:
        merged = session.get(Contact, anonymous.id)
        assert merged is not None and merged.merged_into_id == known.id
        assert [c.id for c in live_contacts(session, store.id)] == [known.id]
        assert contact_of(session, store.id, IdentityKind.ANONYMOUS_ID, "anon-7").id == known.id
        assert order(session, store.id, "guest-1").contact_id == known.id
        carts = carts_of(session, known)
        assert [c.status for c in carts] == ["converted", "open"]
        assert cart_lines(session, carts[1]) == {("p8", ""): 1}
        assert {event(session, store.id, m).contact_id for m in ("m1", "m2", "m3", "m4", "m5")} == {known.id}
        for model in (Event, Cart, Order, Identity, Engagement):
            assert count(session, model, model.contact_id == anonymous.id) == 0
        assert count(session, Engagement, Engagement.contact_id == known.id) == 1
        merged_rows = outbox_rows(session, store.id, "contact.merged")
        assert [(r.subject_id, r.payload) for r in merged_rows] == [(str(anonymous.id), {"into": known.id})]


def test_alias_of_an_unseen_anonymous_id_links_it_for_later_events(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    alias: Message = {"type": "alias", "messageId": "m1", "previousId": "anon-new", "userId": "u1"}
    ingest_and_project(client, db, store, [alias, anonymous_track("Product Viewed", "m2", "anon-new", product_id="p")])
    with db.reader() as session:
        (contact,) = live_contacts(session, store.id)
        assert contact.external_id == "u1"
        assert event(session, store.id, "m2").contact_id == contact.id


# --- carts and orders ---------------------------------------------------------------------------------------------


def test_product_added_twice_adds_up_and_product_removed_takes_away(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given the same product added twice, a variant once, and another product once
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Product Added", "m1", product_id="p1", price=19.99, quantity=2, currency="EUR"),
            track("Product Added", "m2", product_id="p1", price=19.99, quantity=3),
            track("Product Added", "m3", product_id="p1", variant="XL", price="21.50"),
            track("Product Added", "m4", product_id="p2", price=5),
        ],
    )
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart.status == "open"
        assert cart.currency == "EUR"
        assert cart_lines(session, cart) == {("p1", ""): 5, ("p1", "XL"): 1, ("p2", ""): 1}
        prices = dict(
            session.execute(sa.select(CartItem.variant, CartItem.price_cents).where(CartItem.product_id == "p1")).all()
        )
        assert prices == {"": 1999, "XL": 2150}
    # When two of p1 are removed and p2 is removed without a quantity
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Product Removed", "m5", product_id="p1", quantity=2),
            track("Product Removed", "m6", product_id="p2"),
        ],
    )
    # Then p1 has three left and p2's line is gone
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart_lines(session, cart) == {("p1", ""): 3, ("p1", "XL"): 1}


def test_removing_more_than_is_in_the_cart_removes_the_line(client: FlaskClient, db: Database, store: NewStore) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Product Added", "m1", product_id="p1", quantity=2),
            track("Product Removed", "m2", product_id="p1", quantity=5),
            track("Product Removed", "m3", product_id="never-added"),
        ],
    )
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart_lines(session, cart) == {}
        assert count(session, Event, Event.store_id == store.id, Event.projection_error.is_not(None)) == 0


def test_cart_viewed_and_checkout_started_replace_the_items(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a cart built line by line
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Product Added", "m1", product_id="p1", quantity=4),
            track("Product Added", "m2", product_id="p2"),
        ],
    )
    # When Cart Viewed lists the cart's contents (a line repeated in products[] is one line)
    ingest_and_project(
        client,
        db,
        store,
        [
            track(
                "Cart Viewed",
                "m3",
                products=[product("p1", 10, 1), product("p3", "7.25", 2), product("p3", "7.25", 1)],
            )
        ],
    )
    # Then the listed products are the cart's items, and the cart is still open
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart.status == "open"
        assert cart_lines(session, cart) == {("p1", ""): 1, ("p3", ""): 3}
    # When the checkout starts with a different list
    ingest_and_project(
        client, db, store, [track("Checkout Started", "m4", currency="USD", products=[product("p4", 99.99, 1)])]
    )
    # Then the cart holds exactly that and is in checkout
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart.status == "checkout"
        assert cart.currency == "USD"
        assert cart_lines(session, cart) == {("p4", ""): 1}
        (price,) = session.scalars(sa.select(CartItem.price_cents).where(CartItem.cart_ref == cart.id))
        assert price == 9999


def test_cart_viewed_without_products_keeps_the_items(client: FlaskClient, db: Database, store: NewStore) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [track("Product Added", "m1", product_id="p1", quantity=2), track("Cart Viewed", "m2")],
    )
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart_lines(session, cart) == {("p1", ""): 2}


def test_order_completed_stores_exact_cents_items_and_converts_the_cart(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a checkout in progress
    ingest_and_project(client, db, store, [track("Checkout Started", "m1", products=[product("p1", 19.99, 3)])])
    # When the order completes with 3 x 19.99 and explicit amounts
    ingest_and_project(
        client,
        db,
        store,
        [
            at(
                track(
                    "Order Completed",
                    "m2",
                    order_id="o-1",
                    subtotal=59.97,
                    revenue=54.97,
                    discount=5,
                    shipping="4.90",
                    tax=10.44,
                    total=70.31,
                    coupon="SPRING",
                    currency="EUR",
                    products=[
                        product("p1", 19.99, 3, sku="SKU-1", name="Mug", category="Kitchen"),
                        product("p2", 0.1, 3, variant="red"),
                    ],
                ),
                T1,
            )
        ],
    )
    # Then the order holds exact cents, its items, and the cart is converted to it
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        row = order(session, store.id, "o-1")
        assert row.contact_id == contact.id
        assert row.status == "completed"
        assert row.currency == "EUR"
        assert (row.subtotal_cents, row.revenue_cents, row.total_cents) == (5997, 5497, 7031)
        assert (row.discount_cents, row.shipping_cents, row.tax_cents) == (500, 490, 1044)
        assert row.refunded_cents == 0
        assert row.coupon == "SPRING"
        assert row.placed_at.isoformat() == "2026-03-01T11:00:00+00:00"
        assert order_items(session, row) == [("p1", "", 1999, 3), ("p2", "red", 10, 3)]
        (item,) = session.scalars(sa.select(OrderItem).where(OrderItem.product_id == "p1"))
        assert (item.sku, item.name, item.category) == ("SKU-1", "Mug", "Kitchen")
        (cart,) = carts_of(session, contact)
        assert (cart.status, cart.order_id) == ("converted", "o-1")


def test_order_amounts_default_to_the_sum_of_the_lines(client: FlaskClient, db: Database, store: NewStore) -> None:
    # 3 x 19.99 in float arithmetic is 59.97000000000001; in cents it must be exactly 5997
    ingest_and_project(
        client,
        db,
        store,
        [track("Order Completed", "m1", order_id=1001, products=[product("p1", 19.99, 3), product("p2", "0.03", 1)])],
    )
    with db.reader() as session:
        row = order(session, store.id, "1001")  # a numeric order_id is the same id as its string
        assert (row.subtotal_cents, row.revenue_cents, row.total_cents) == (6000, 6000, 6000)
        assert (row.discount_cents, row.shipping_cents, row.tax_cents) == (None, None, None)


def test_resent_order_completed_updates_the_order_instead_of_duplicating_it(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a completed order (its cart converted) and a new cart started after it
    ingest_and_project(
        client,
        db,
        store,
        [
            at(track("Product Added", "m1", product_id="p1", price=10), T0),
            at(track("Order Completed", "m2", order_id="o-1", total=10, products=[product("p1", 10)]), T0),
            at(track("Product Added", "m3", product_id="p7", price=7), T1),
        ],
    )
    # When the storefront sends Order Completed for the same order again, corrected, under a new messageId
    ingest_and_project(
        client,
        db,
        store,
        [
            at(
                track(
                    "Order Completed", "m4", order_id="o-1", total=25, products=[product("p1", 10), product("p2", 15)]
                ),
                T2,
            )
        ],
    )
    # Then there is still one order, with the new amounts and exactly the new items
    with db.reader() as session:
        assert count(session, Order, Order.store_id == store.id) == 1
        row = order(session, store.id, "o-1")
        assert row.total_cents == 2500
        assert order_items(session, row) == [("p1", "", 1000, 1), ("p2", "", 1500, 1)]
        assert count(session, OrderItem, OrderItem.store_id == store.id) == 2
        # and the cart opened after the order is not mistaken for the order's cart
        converted, new_cart = carts_of(session, user(session, store.id, "u1"))
        assert (converted.status, converted.order_id) == ("converted", "o-1")
        assert (new_cart.status, new_cart.order_id) == ("open", None)
        assert cart_lines(session, new_cart) == {("p7", ""): 1}


def test_order_refunded_partially_then_fully(client: FlaskClient, db: Database, store: NewStore) -> None:
    ingest_and_project(client, db, store, [track("Order Completed", "m1", order_id="o-1", total=100)])
    # When part of the order is refunded
    ingest_and_project(client, db, store, [track("Order Refunded", "m2", order_id="o-1", total=30.10)])
    with db.reader() as session:
        row = order(session, store.id, "o-1")
        assert (row.status, row.refunded_cents) == ("partially_refunded", 3010)
    # And another part
    ingest_and_project(client, db, store, [track("Order Refunded", "m3", order_id="o-1", total="19.90")])
    with db.reader() as session:
        row = order(session, store.id, "o-1")
        assert (row.status, row.refunded_cents) == ("partially_refunded", 5000)
    # And the rest
    ingest_and_project(client, db, store, [track("Order Refunded", "m4", order_id="o-1", total=50)])
    with db.reader() as session:
        row = order(session, store.id, "o-1")
        assert (row.status, row.refunded_cents) == ("refunded", 10000)
        assert row.total_cents == 10000


@pytest.mark.parametrize("refund", [{}, {"total": 100}], ids=["without-amount", "whole-amount"])
def test_order_refunded_in_full(client: FlaskClient, db: Database, store: NewStore, refund: dict[str, Any]) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Order Completed", "m1", order_id="o-1", total=100),
            track("Order Refunded", "m2", order_id="o-1", **refund),
        ],
    )
    with db.reader() as session:
        row = order(session, store.id, "o-1")
        assert (row.status, row.refunded_cents) == ("refunded", 10000)


def test_order_cancelled(client: FlaskClient, db: Database, store: NewStore) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Order Completed", "m1", order_id="o-1", total=100),
            track("Order Cancelled", "m2", order_id="o-1"),
        ],
    )
    with db.reader() as session:
        row = order(session, store.id, "o-1")
        assert (row.status, row.refunded_cents) == ("cancelled", 0)
        assert event(session, store.id, "m2").projection_error is None


@pytest.mark.parametrize("name", ["Order Refunded", "Order Cancelled"])
def test_refund_or_cancel_of_an_unknown_order_records_a_projection_error(
    client: FlaskClient, db: Database, store: NewStore, name: str
) -> None:
    # Given a refund for an order the store never saw, between two good events
    projected = ingest_and_project(
        client,
        db,
        store,
        [
            track("Product Viewed", "m1", product_id="p1"),
            track(name, "m2", order_id="missing", total=5),
            track("Order Completed", "m3", order_id="o-1", total=5),
        ],
    )
    # Then every event is projected (none left pending), the bad one with a reason
    assert projected == 3
    with db.reader() as session:
        bad = event(session, store.id, "m2")
        assert bad.projected_at is not None
        assert bad.projection_error is not None and "missing" in bad.projection_error
        assert count(session, Order, Order.store_id == store.id, Order.order_id == "missing") == 0
        assert order(session, store.id, "o-1").status == "completed"
        assert event(session, store.id, "m3").projection_error is None
        # and the failed event left no trace in the outbox
        assert str(bad.id) not in {r.subject_id for r in outbox_rows(session, store.id, "event.tracked")}


# --- consent ------------------------------------------------------------------------------------------------------


CONSENT_TEXT = "Yes, send me news and offers by email. I can unsubscribe at any time."


def test_consent_updated_appends_a_ledger_row_with_its_evidence_and_sets_the_state(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a consent grant from a sign-up form, with the request's IP and user agent
    message = with_context(
        at(
            consent(
                "consent-msg-1",
                channel="email",
                status="subscribed",
                method="double_opt_in",
                source="https://shop.example.com/newsletter",
                form_id="footer-signup",
                form_version="3",
                consent_text=CONSENT_TEXT,
                consent_text_version="2026-01",
            ),
            T0,
        ),
        ip="203.0.113.7",
        userAgent="Mozilla/5.0 (X11; Linux x86_64)",
    )
    ingest_and_project(client, db, store, [message])
    # Then the ledger holds one row with every piece of evidence, and the state follows it
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        (row,) = ledger(session, store.id)
        assert row.contact_id == contact.id
        assert (row.channel, row.action, row.status_after) == ("email", "grant", "subscribed")
        assert row.occurred_at.isoformat() == "2026-03-01T10:00:00+00:00"
        assert row.recorded_at is not None
        assert row.method == "double_opt_in"
        assert row.source == "https://shop.example.com/newsletter"
        assert (row.form_id, row.form_version) == ("footer-signup", "3")
        assert row.consent_text_hash == hashlib.sha256(CONSENT_TEXT.encode()).hexdigest()
        assert row.consent_text_version == "2026-01"
        evidence = session.get(ConsentEvidence, row.id)
        assert evidence is not None
        assert (evidence.ip, evidence.user_agent) == ("203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64)")
        # the row itself holds only their salted digest, so erasing the evidence leaves the chain intact
        assert row.evidence_digest == evidence_digest(evidence.salt, evidence.ip, evidence.user_agent)
        assert row.evidence_ref == "consent-msg-1"
        assert row.actor == "storefront"
        state = consent_state(session, contact)
        assert state is not None
        assert (state.status, state.ledger_entry_id) == ("subscribed", row.id)
        assert state.occurred_at.isoformat() == "2026-03-01T10:00:00+00:00"


def test_every_consent_event_is_its_own_ledger_row_and_the_latest_wins(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [
            at(consent("c1", channel="email", status="pending"), T0),
            at(consent("c2", channel="email", status="subscribed"), T1),
            at(consent("c3", channel="sms", status="subscribed", method="checkbox", phone="+15555550100"), T1),
            at(consent("c4", channel="email", status="unsubscribed", method="link"), T2),
        ],
    )
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        rows = ledger(session, store.id)
        assert [(r.evidence_ref, r.channel, r.action) for r in rows] == [
            ("c1", "email", "pending"),
            ("c2", "email", "grant"),
            ("c3", "sms", "grant"),
            ("c4", "email", "withdraw"),
        ]
        assert rows[0].method == "api"  # the default when the event names none
        assert rows[0].consent_text_hash is None
        email, sms = consent_state(session, contact, "email"), consent_state(session, contact, "sms")
        assert email is not None and (email.status, email.ledger_entry_id) == ("unsubscribed", rows[3].id)
        assert sms is not None and (sms.status, sms.ledger_entry_id) == ("subscribed", rows[2].id)


def test_an_older_consent_event_arriving_later_is_recorded_but_does_not_change_the_state(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a withdrawal at 12:00
    ingest_and_project(client, db, store, [at(consent("late-news", channel="email", status="unsubscribed"), T2)])
    # When a grant made at 10:00 arrives afterwards (a delayed retry from the storefront)
    ingest_and_project(client, db, store, [at(consent("old-news", channel="email", status="subscribed"), T0)])
    # Then the ledger has both, but the state is still the withdrawal
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        withdrawal, grant = ledger(session, store.id)
        assert (withdrawal.evidence_ref, grant.evidence_ref) == ("late-news", "old-news")
        assert grant.status_after == "subscribed"
        state = consent_state(session, contact)
        assert state is not None
        assert (state.status, state.ledger_entry_id) == ("unsubscribed", withdrawal.id)
        assert state.occurred_at.isoformat() == "2026-03-01T12:00:00+00:00"
        # and no ESP is told of a change that did not happen
        assert len(outbox_rows(session, store.id, "consent.changed")) == 1


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"channel": "fax", "status": "subscribed"}, "channel"),
        ({"status": "subscribed"}, "channel"),
        ({"channel": "email", "status": "maybe"}, "status"),
        ({"channel": "email", "status": "subscribed", "method": "x" * 33}, "method"),
    ],
)
def test_an_invalid_consent_event_records_a_projection_error(
    client: FlaskClient, db: Database, store: NewStore, properties: dict[str, Any], field: str
) -> None:
    projected = ingest_and_project(
        client,
        db,
        store,
        [consent("bad", **properties), consent("good", channel="email", status="subscribed")],
    )
    assert projected == 2
    with db.reader() as session:
        bad = event(session, store.id, "bad")
        assert bad.projection_error is not None and bad.projection_error.startswith(f"properties.{field}")
        assert [r.evidence_ref for r in ledger(session, store.id)] == ["good"]


def test_consent_ledger_rows_cannot_be_changed_or_deleted_through_the_orm(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    ingest_and_project(client, db, store, [consent("c1", channel="email", status="subscribed", method="form")])
    with db.reader() as session:
        (original,) = ledger(session, store.id)
    # When code changes a ledger row through the ORM, the flush refuses
    with pytest.raises(AppendOnlyViolation), db.writer() as session:
        row = session.get(ConsentLedgerEntry, original.id)
        assert row is not None
        row.status_after = "unsubscribed"
        session.flush()
    # and so it does for a delete
    with pytest.raises(AppendOnlyViolation), db.writer() as session:
        row = session.get(ConsentLedgerEntry, original.id)
        session.delete(row)
        session.flush()
    # Then the row is as it was
    with db.reader() as session:
        (row,) = ledger(session, store.id)
        assert (row.id, row.status_after, row.method) == (original.id, "subscribed", "form")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE consent_ledger SET status_after = 'unsubscribed'",
        "UPDATE consent_ledger SET evidence_digest = NULL WHERE id = :id",
        "DELETE FROM consent_ledger WHERE id = :id",
        "DELETE FROM consent_ledger",
    ],
)
def test_consent_ledger_rows_cannot_be_changed_or_deleted_by_raw_sql(
    client: FlaskClient, db: Database, store: NewStore, statement: str
) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [with_context(consent("c1", channel="email", status="subscribed"), ip="198.51.100.1")],
    )
    with db.reader() as session:
        (original,) = ledger(session, store.id)
    # When SQL that bypasses the application tries to rewrite history, the database trigger refuses
    with pytest.raises(sa.exc.DBAPIError, match="consent_ledger is append-only"), db.engine.begin() as connection:
        connection.execute(sa.text(statement), {"id": original.id})
    # Then the row is as it was
    with db.reader() as session:
        (row,) = ledger(session, store.id)
        assert (row.id, row.status_after, row.evidence_digest) == (original.id, "subscribed", original.evidence_digest)
        assert row.evidence_digest is not None


# --- waitlists ----------------------------------------------------------------------------------------------------


def waitlist_entries(session: Session, store_id: int) -> list[WaitlistEntry]:
    query = sa.select(WaitlistEntry).where(WaitlistEntry.store_id == store_id).order_by(WaitlistEntry.id)
    return list(session.scalars(query))


def test_waitlist_join_leave_and_join_again(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a shopper joining two waitlists
    ingest_and_project(
        client,
        db,
        store,
        [
            at(track("Waitlist Joined", "m1", product_id="p1", variant_id="blue-M"), T0),
            at(track("Waitlist Joined", "m2", product_id="p2", channel="sms"), T0),
        ],
    )
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        first, second = waitlist_entries(session, store.id)
        assert (first.contact_id, first.product_id, first.variant_id, first.channel) == (
            contact.id,
            "p1",
            "blue-M",
            "email",
        )
        assert (second.product_id, second.variant_id, second.channel) == ("p2", "", "sms")
        assert first.status == second.status == "waiting"
    # When they leave the first
    ingest_and_project(client, db, store, [at(track("Waitlist Left", "m3", product_id="p1", variant_id="blue-M"), T1)])
    with db.reader() as session:
        first, second = waitlist_entries(session, store.id)
        assert (first.status, second.status) == ("left", "waiting")
        assert first.left_at is not None and first.left_at.isoformat() == "2026-03-01T11:00:00+00:00"
    # And join it again
    ingest_and_project(
        client, db, store, [at(track("Waitlist Joined", "m4", product_id="p1", variant_id="blue-M"), T2)]
    )
    # Then the same entry is waiting again, from the new date
    with db.reader() as session:
        first, second = waitlist_entries(session, store.id)
        assert (first.status, first.left_at) == ("waiting", None)
        assert first.joined_at.isoformat() == "2026-03-01T12:00:00+00:00"
        assert len(outbox_rows(session, store.id, "waitlist.changed")) == 4


def test_waitlist_events_without_a_product_record_a_projection_error(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    ingest_and_project(client, db, store, [track("Waitlist Joined", "m1", variant_id="v")])
    with db.reader() as session:
        assert event(session, store.id, "m1").projection_error == "properties.product_id: Field required"
        assert waitlist_entries(session, store.id) == []


def test_an_order_containing_the_product_converts_the_waitlist_entry(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a shopper waiting for two products, and another shopper waiting for one of them
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Waitlist Joined", "m1", product_id="p1"),
            track("Waitlist Joined", "m2", product_id="p2"),
            track("Waitlist Joined", "m3", "u2", product_id="p1"),
        ],
    )
    # When the first shopper orders one of them
    ingest_and_project(
        client, db, store, [track("Order Completed", "m4", order_id="o-1", products=[product("p1", 10)])]
    )
    # Then only that entry is converted
    with db.reader() as session:
        first = user(session, store.id, "u1")
        statuses = {(e.contact_id == first.id, e.product_id): e.status for e in waitlist_entries(session, store.id)}
        assert statuses == {(True, "p1"): "converted", (True, "p2"): "waiting", (False, "p1"): "waiting"}


# --- catalog ------------------------------------------------------------------------------------------------------


def inventory(message_id: str, **properties: Any) -> Message:
    return track("Inventory Updated", message_id, user_id=None, **properties)


def test_inventory_updated_upserts_product_and_variant(client: FlaskClient, db: Database, store: NewStore) -> None:
    # Given a server-side inventory event, which carries no person
    ingest_and_project(
        client,
        db,
        store,
        [
            inventory(
                "i1",
                product_id="p1",
                variant_id="v-red",
                quantity=12,
                price=24.99,
                sku="MUG-RED",
                title="Red mug",
                url="https://shop.example.com/p1",
                image_url="https://shop.example.com/p1.jpg",
                category="Kitchen",
            )
        ],
    )
    # Then the product and its variant are in the catalog, and no contact was made up
    with db.reader() as session:
        (prod,) = session.scalars(sa.select(Product).where(Product.store_id == store.id))
        assert (prod.product_id, prod.title, prod.category) == ("p1", "Red mug", "Kitchen")
        assert (prod.url, prod.image_url) == ("https://shop.example.com/p1", "https://shop.example.com/p1.jpg")
        (variant,) = session.scalars(sa.select(Variant).where(Variant.store_id == store.id))
        assert (variant.product_id, variant.variant_id, variant.sku) == ("p1", "v-red", "MUG-RED")
        assert (variant.price_cents, variant.inventory_quantity) == (2499, 12)
        assert live_contacts(session, store.id) == []
        assert event(session, store.id, "i1").contact_id is None
        assert event(session, store.id, "i1").projection_error is None
    # When a later update only changes the quantity
    ingest_and_project(client, db, store, [inventory("i2", product_id="p1", variant_id="v-red", quantity=3)])
    # Then the other fields are kept
    with db.reader() as session:
        (variant,) = session.scalars(sa.select(Variant).where(Variant.store_id == store.id))
        assert (variant.price_cents, variant.inventory_quantity, variant.sku) == (2499, 3, "MUG-RED")
        assert session.scalar(sa.select(Product.title).where(Product.store_id == store.id)) == "Red mug"


def test_a_restock_from_zero_emits_catalog_restocked_but_first_stock_does_not(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a variant first seen with stock, and another first seen sold out
    ingest_and_project(
        client,
        db,
        store,
        [
            inventory("i1", product_id="p1", quantity=5, price=10),
            inventory("i2", product_id="p2", variant_id="v", quantity=0),
        ],
    )
    with db.reader() as session:
        assert outbox_rows(session, store.id, "catalog.restocked") == []
    # When stock changes without ever reaching zero, and the sold-out variant gets 5 back
    ingest_and_project(
        client,
        db,
        store,
        [
            inventory("i3", product_id="p1", quantity=2),
            inventory("i4", product_id="p2", variant_id="v", quantity=5),
        ],
    )
    # Then only the restock of the sold-out variant is announced
    with db.reader() as session:
        (row,) = outbox_rows(session, store.id, "catalog.restocked")
        variant = session.scalar(sa.select(Variant).where(Variant.store_id == store.id, Variant.product_id == "p2"))
        assert variant is not None
        assert row.subject_id == str(variant.id)
        assert row.payload == {"product_id": "p2", "variant_id": "v", "quantity": 5}
        assert row.status == OutboxStatus.PENDING
    # And a price-only update of the restocked variant announces nothing more
    ingest_and_project(client, db, store, [inventory("i5", product_id="p2", variant_id="v", price=3)])
    with db.reader() as session:
        assert len(outbox_rows(session, store.id, "catalog.restocked")) == 1


# --- outbox -------------------------------------------------------------------------------------------------------


def test_many_identifies_of_one_contact_coalesce_into_one_pending_upsert(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given many identifies of one person, in one batch and across batches, before any delivery
    ingest_and_project(client, db, store, [identify(f"a{i}", "u1", visits=i) for i in range(5)])
    ingest_and_project(client, db, store, [identify(f"b{i}", "u1", visits=10 + i) for i in range(3)])
    # Then one pending contact.upsert row stands for them all
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        rows = outbox_rows(session, store.id, "contact.upsert")
        assert [(r.subject_id, r.status) for r in rows] == [(str(contact.id), OutboxStatus.PENDING)]
    # When that row is delivered, a further identify needs a new row
    with db.writer() as session:
        session.execute(sa.update(OutboxRow).values(status=OutboxStatus.DONE))
    ingest_and_project(client, db, store, [identify("c1", "u1", visits=99)])
    with db.reader() as session:
        rows = outbox_rows(session, store.id, "contact.upsert")
        assert [r.status for r in rows] == [OutboxStatus.DONE, OutboxStatus.PENDING]


def test_different_contacts_get_their_own_upsert_rows(client: FlaskClient, db: Database, store: NewStore) -> None:
    ingest_and_project(client, db, store, [identify("m1", "u1"), identify("m2", "u2"), identify("m3", "u1")])
    with db.reader() as session:
        ids = {str(user(session, store.id, u).id) for u in ("u1", "u2")}
        assert sorted(r.subject_id for r in outbox_rows(session, store.id, "contact.upsert")) == sorted(ids)


def test_outbox_rows_are_written_for_consent_orders_and_tracked_events(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    ingest_and_project(
        client,
        db,
        store,
        [
            track("Product Viewed", "m1", product_id="p1"),
            consent("m2", channel="sms", status="subscribed", phone="+15555550100"),
            track("Order Completed", "m3", order_id="o-1", total=5),
            track("Order Refunded", "m4", order_id="o-1"),
        ],
    )
    with db.reader() as session:
        contact = user(session, store.id, "u1")
        the_order = order(session, store.id, "o-1")
        (consent_row,) = outbox_rows(session, store.id, "consent.changed")
        assert (consent_row.subject_id, consent_row.payload) == (str(contact.id), {"channel": "sms"})
        # the order changed twice before delivery: one pending row
        (order_row,) = outbox_rows(session, store.id, "order.changed")
        assert order_row.subject_id == str(the_order.id)
        tracked = outbox_rows(session, store.id, "event.tracked")
        expected = [
            (str(event(session, store.id, m).id), name)
            for m, name in [
                ("m1", "Product Viewed"),
                ("m2", "Consent Updated"),
                ("m3", "Order Completed"),
                ("m4", "Order Refunded"),
            ]
        ]
        assert [(r.subject_id, r.payload["name"]) for r in tracked] == expected
        assert {r.status for r in outbox_rows(session, store.id)} == {OutboxStatus.PENDING}


# --- exactly once ------------------------------------------------------------------------------------------------


def test_projecting_again_projects_nothing_and_duplicates_nothing(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    ingest(
        client,
        store,
        [
            identify("m1", "u1", email="a@example.com"),
            track("Product Added", "m2", product_id="p1", quantity=2),
            track("Order Completed", "m3", order_id="o-1", products=[product("p1", 2, 2)]),
            consent("m4", channel="email", status="subscribed"),
            track("Waitlist Joined", "m5", product_id="p9"),
        ],
    )
    # When the projector runs, then runs again
    assert project_pending(db, store.id) == 5
    snapshot = table_counts(db, store.id)
    assert project_pending(db, store.id) == 0
    assert project_all(db, store.id) == 0
    # Then the second run changed nothing
    assert table_counts(db, store.id) == snapshot
    assert snapshot == {
        "contacts": 1,
        "carts": 1,
        "cart_items": 1,
        "orders": 1,
        "order_items": 1,
        "consent_ledger": 1,
        "waitlist_entries": 1,
        "outbox": 9,
    }
    # And a retried batch (same messageIds) is acknowledged as duplicates and projected no more
    response = post_messages(client, store.write_key, [track("Product Added", "m2", product_id="p1", quantity=2)])
    assert response.json["duplicates"] == 1
    assert project_all(db, store.id) == 0
    with db.reader() as session:
        (cart,) = carts_of(session, user(session, store.id, "u1"))
        assert cart_lines(session, cart) == {("p1", ""): 2}


def table_counts(db: Database, store_id: int) -> dict[str, int]:
    models = [Contact, Cart, CartItem, Order, OrderItem, ConsentLedgerEntry, WaitlistEntry, OutboxRow]
    with db.reader() as session:
        return {model.__tablename__: count(session, model, model.store_id == store_id) for model in models}


def test_projection_respects_the_batch_size_and_keeps_arrival_order(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    ingest(
        client,
        store,
        [at(consent(f"c{i}", channel="email", status=["subscribed", "unsubscribed"][i % 2]), T0) for i in range(7)],
    )
    assert [project_pending(db, store.id, batch_size=3) for _ in range(4)] == [3, 3, 1, 0]
    with db.reader() as session:
        assert [r.evidence_ref for r in ledger(session, store.id)] == [f"c{i}" for i in range(7)]
        # equal timestamps: the later arrival is the current state
        state = consent_state(session, user(session, store.id, "u1"))
        assert state is not None and state.status == "subscribed"


BAD_EVENTS: list[tuple[Message, str]] = [
    (track("Order Completed", "bad-price", order_id="o-bad1", products=[product("p1", "abc")]), "products.0.price"),
    (track("Order Completed", "bad-qty", order_id="o-bad2", products=[product("p1", 5, -1)]), "products.0.quantity"),
    (track("Order Completed", "bad-total", order_id="o-bad3", total=float("1e20")), "total"),
    (track("Order Completed", "huge-total", order_id="o-bad4", total="1e999999999"), "total"),
    (track("Order Completed", "no-order-id", total=5), "order_id"),
    (track("Product Added", "bad-add", product_id="p1", quantity="many"), "quantity"),
    (track("Product Added", "long-category", product_id="p1", category="c" * 300), "category"),
    (track("Product Added", "long-variant", product_id="p1", variant="v" * 300), "variant"),
    (
        track("Order Completed", "long-sku", order_id="o-bad5", products=[product("p1", 1, sku="s" * 300)]),
        "products.0.sku",
    ),
    (track("Order Completed", "long-coupon", order_id="o-bad6", coupon="x" * 300), "coupon"),
    (inventory("long-inventory-sku", product_id="p1", sku="s" * 300), "sku"),
    (inventory("long-inventory-category", product_id="p1", category="c" * 300), "category"),
    (inventory("bad-price-inventory", product_id="p1", price=True), "price"),
    (
        track(
            "Order Completed",
            "lines-too-large",
            order_id="o-bad7",
            products=[product("p1", 9_999_999_999_999, 1_000_000)],
        ),
        "products",
    ),
]


def test_bad_events_get_a_projection_error_and_the_rest_of_the_batch_projects(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given a batch where bad events sit between good ones
    good_before = track("Product Added", "good-1", product_id="p1", quantity=2)
    good_after = track("Order Completed", "good-2", order_id="o-good", products=[product("p1", 19.99, 3)])
    messages = [good_before, *(message for message, _ in BAD_EVENTS), good_after]
    # When the batch is projected
    assert ingest_and_project(client, db, store, messages) == len(messages)
    # Then each bad event says which property was wrong, and the good ones are projected in full
    with db.reader() as session:
        for message, field in BAD_EVENTS:
            row = event(session, store.id, message["messageId"])
            assert row.projected_at is not None
            assert row.projection_error is not None, message["messageId"]
            assert row.projection_error.startswith(f"properties.{field}"), (message["messageId"], row.projection_error)
        assert count(session, Order, Order.store_id == store.id) == 1
        assert order(session, store.id, "o-good").total_cents == 5997
        assert session.scalar(sa.select(sa.func.sum(CartItem.quantity)).where(CartItem.store_id == store.id)) == 2
        assert count(session, Variant, Variant.store_id == store.id) == 0
        assert count(session, Event, Event.store_id == store.id, Event.projected_at.is_(None)) == 0
        for message_id in ("good-1", "good-2"):
            assert event(session, store.id, message_id).projection_error is None


def test_an_event_that_meets_a_bug_is_recorded_and_does_not_block_the_store(
    client: FlaskClient, db: Database, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler with a bug for one kind of event
    def broken(*_args: Any) -> None:
        raise KeyError("oops")

    model, _ = projection.TRACK_HANDLERS["Waitlist Joined"]
    monkeypatch.setitem(projection.TRACK_HANDLERS, "Waitlist Joined", (model, broken))
    messages = [
        track("Waitlist Joined", "buggy", product_id="p1"),
        track("Product Added", "fine", product_id="p1", quantity=1),
    ]
    # When the batch is projected
    assert ingest_and_project(client, db, store, messages) == 2
    # Then the event is marked with the error, its savepoint undone, and the next event projected
    with db.reader() as session:
        assert event(session, store.id, "buggy").projection_error == "internal error: KeyError: 'oops'"
        assert event(session, store.id, "fine").projection_error is None
        assert count(session, Event, Event.store_id == store.id, Event.projected_at.is_(None)) == 0


def test_a_database_failure_fails_the_batch_so_it_is_projected_again(
    client: FlaskClient, db: Database, store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(client, store, [track("Product Added", "m1", product_id="p1", quantity=1)])
    model, apply = projection.TRACK_HANDLERS["Product Added"]

    def database_gone(*_args: Any) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))

    monkeypatch.setitem(projection.TRACK_HANDLERS, "Product Added", (model, database_gone))
    with pytest.raises(sa.exc.OperationalError):
        project_pending(db, store.id)
    monkeypatch.setitem(projection.TRACK_HANDLERS, "Product Added", (model, apply))
    assert project_all(db, store.id) == 1
    with db.reader() as session:
        assert event(session, store.id, "m1").projection_error is None


def test_concurrent_projectors_project_every_event_exactly_once(
    client: FlaskClient, db: Database, store: NewStore
) -> None:
    # Given many events whose effects would visibly double if any were projected twice
    consents = [at(consent(f"c{i}", f"u{i % 5}", channel="email", status="subscribed"), T0) for i in range(40)]
    additions = [track("Product Added", f"a{i}", "u-cart", product_id="p1") for i in range(40)]
    orders = [
        track("Order Completed", f"o{i}", f"u{i % 5}", order_id=f"o-{i}", products=[product("p1", 1), product("p2", 2)])
        for i in range(40)
    ]
    messages = [m for triple in zip(consents, additions, orders, strict=True) for m in triple]
    for start in range(0, len(messages), 30):
        ingest(client, store, messages[start : start + 30])
    # When two projectors work on the store at the same time, in small batches
    barrier = threading.Barrier(2)

    def projector() -> int:
        barrier.wait()
        total = 0
        while True:
            done = project_pending(db, store.id, batch_size=7)
            if done == 0:
                return total
            total += done

    with ThreadPoolExecutor(max_workers=2) as pool:
        totals = [future.result() for future in [pool.submit(projector) for _ in range(2)]]
    # Then between them they projected each event once, and every effect happened once
    assert sum(totals) == len(messages)
    assert project_all(db, store.id) == 0
    with db.reader() as session:
        assert count(session, Event, Event.store_id == store.id, Event.projection_error.is_not(None)) == 0
        assert count(session, ConsentLedgerEntry, ConsentLedgerEntry.store_id == store.id) == 40
        assert count(session, Order, Order.store_id == store.id) == 40
        assert count(session, OrderItem, OrderItem.store_id == store.id) == 80
        (cart,) = carts_of(session, user(session, store.id, "u-cart"))
        assert cart_lines(session, cart) == {("p1", ""): 40}
        assert len(live_contacts(session, store.id)) == 6
        tracked = outbox_rows(session, store.id, "event.tracked")
        assert len(tracked) == len({r.subject_id for r in tracked}) == len(messages)


# --- store scoping ------------------------------------------------------------------------------------------------


def same_story(prefix: str) -> list[Message]:
    """The same ids told to two stores; only a trait value differs, so each store's copy is recognisable."""
    return [
        identify("m1", "u1", anonymous_id="anon-1", email="same@example.com", first_name=prefix),
        track("Product Added", "m2", product_id="p1", quantity=2),
        track("Order Completed", "m3", order_id="o-1", total=10, products=[product("p1", 5, 2)]),
        consent("m4", channel="email", status="subscribed", form_id=prefix),
        track("Waitlist Joined", "m5", product_id="p2"),
        inventory("m6", product_id="p1", quantity=1, title=prefix),
    ]


def test_the_same_ids_in_two_stores_make_separate_rows(
    client: FlaskClient, db: Database, store: NewStore, other_store: NewStore
) -> None:
    # Given the same userId, anonymousId, email, order_id and messageIds sent to two stores
    ingest_and_project(client, db, store, same_story("First"))
    ingest_and_project(client, db, other_store, same_story("Other"))
    # Then each store has its own contact, order, ledger row, waitlist entry and product
    with db.reader() as session:
        mine, theirs = user(session, store.id, "u1"), user(session, other_store.id, "u1")
        assert mine.id != theirs.id
        assert (mine.store_id, mine.first_name) == (store.id, "First")
        assert (theirs.store_id, theirs.first_name) == (other_store.id, "Other")
        for store_id, contact in [(store.id, mine), (other_store.id, theirs)]:
            assert [c.id for c in live_contacts(session, store_id)] == [contact.id]
            the_order = order(session, store_id, "o-1")
            assert the_order.contact_id == contact.id
            assert order_items(session, the_order) == [("p1", "", 500, 2)]
            (row,) = ledger(session, store_id)
            assert row.contact_id == contact.id
            (entry,) = waitlist_entries(session, store_id)
            assert entry.contact_id == contact.id
            assert {event(session, store_id, f"m{i}").contact_id for i in range(1, 6)} == {contact.id}
            (cart,) = carts_of(session, contact)
            assert cart_lines(session, cart) == {("p1", ""): 2}
        assert ledger(session, store.id)[0].form_id == "First"
        assert ledger(session, other_store.id)[0].form_id == "Other"
        titles = dict(session.execute(sa.select(Product.store_id, Product.title)).all())
        assert titles == {store.id: "First", other_store.id: "Other"}
        assert count(session, Order) == 2


def test_projecting_one_store_never_touches_the_other(
    client: FlaskClient, db: Database, store: NewStore, other_store: NewStore
) -> None:
    # Given an order in the other store, and both stores' events waiting
    ingest_and_project(client, db, other_store, [track("Order Completed", "x1", order_id="o-1", total=10)])
    ingest(client, other_store, [track("Product Added", "x2", product_id="p1")])
    other_before = table_counts(db, other_store.id)
    ingest(
        client,
        store,
        [
            identify("m1", "u1", email="same@example.com"),
            track("Order Refunded", "m2", order_id="o-1"),  # only the other store knows o-1
            {"type": "alias", "messageId": "m3", "previousId": "anon-x", "userId": "u1"},
        ],
    )
    # When only this store is projected
    assert project_all(db, store.id) == 3
    # Then the other store's pending event is still pending, and its rows are untouched
    with db.reader() as session:
        assert event(session, other_store.id, "x2").projected_at is None
        assert order(session, other_store.id, "o-1").status == "completed"
        refund = event(session, store.id, "m2")
        assert refund.projection_error is not None and "o-1" in refund.projection_error
        assert [c.external_id for c in live_contacts(session, other_store.id)] == ["u1"]
    assert table_counts(db, other_store.id) == other_before
    # And projecting the other store does only its own work
    assert project_all(db, other_store.id) == 1
    assert project_all(db, store.id) == 0
