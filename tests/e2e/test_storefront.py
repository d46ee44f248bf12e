"""The example storefront (examples/storefront) sending through a real SDK client to a real ``espbridge serve``.

Each test clicks through the shop with Flask's test client, flushes the SDK, waits for the projection, and
reads what landed in the store's database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from espbridge import Client
from flask import Flask
from flask.testing import FlaskClient

from connector.store import (
    Cart,
    ConsentEvidence,
    ConsentLedgerEntry,
    ConsentState,
    Contact,
    Database,
    Event,
    Order,
    OrderItem,
    Product,
    Variant,
    WaitlistEntry,
)
from connector.tenancy import NewStore
from examples.storefront import CATALOG, create_app
from examples.storefront.app import CONSENT_TEXT, CONSENT_TEXT_VERSION, customer_id
from tests.conftest import unprojected

from .processes import ServiceProcess, wait_until

ADMIN_TOKEN = "back-office-token"
SHOPPER_IP = "203.0.113.7"
SHOPPER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


@pytest.fixture
def sdk(serve: ServiceProcess, store: NewStore, tmp_path: Path) -> Iterator[Client]:
    failures: list[Exception] = []
    client = Client(
        store.write_key, host=serve.url, spool_dir=tmp_path / "spool", on_error=lambda error, *_: failures.append(error)
    )
    yield client
    client.shutdown()
    assert failures == []


@pytest.fixture
def shop(sdk: Client) -> Flask:
    app = create_app(sdk, admin_token=ADMIN_TOKEN)
    app.config.update(TESTING=True)
    return app


@pytest.fixture
def browser(shop: Flask) -> FlaskClient:
    """A shopper's browser, with the address and user agent the storefront sends as evidence."""
    client = shop.test_client()
    client.environ_base.update(REMOTE_ADDR=SHOPPER_IP, HTTP_USER_AGENT=SHOPPER_AGENT)
    return client


def landed(sdk: Client, db: Database, store: NewStore) -> None:
    """Everything the SDK was given is acknowledged (stored), and projected."""
    assert sdk.flush(timeout=30)
    with db.reader() as session:
        stored = session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store.id))
    assert stored == sdk.stats().sent > 0
    wait_until(lambda: unprojected(db, store.id) == 0, timeout=30, what="the storefront's events projected")
    with db.reader() as session:
        errors = session.scalars(sa.select(Event.projection_error).where(Event.projection_error.is_not(None))).all()
    assert errors == []


def test_signup_with_the_consent_box_ticked_records_the_customer_and_the_consent(
    browser: FlaskClient, sdk: Client, db: Database, store: NewStore
) -> None:
    # Given a shopper who looked at a product before having an account
    assert browser.get("/products/tee-classic").status_code == 200
    # When they sign up and tick "email me news and offers"
    form = {"email": "Ann@Example.com", "first_name": "Ann", "email_consent": "yes"}
    response = browser.post("/signup", data=form, follow_redirects=True)
    assert response.status_code == 200
    assert b"signed in as ann@example.com" in response.data
    landed(sdk, db, store)

    # Then one contact holds both their anonymous browsing and their account
    with db.reader() as session:
        contact = session.scalars(
            sa.select(Contact).where(Contact.store_id == store.id, Contact.merged_into_id.is_(None))
        ).one()
        assert (contact.external_id, contact.email, contact.first_name) == (
            customer_id("ann@example.com"),
            "ann@example.com",
            "Ann",
        )
        # And the consent is in the ledger with the form, the text and the request as evidence
        entry = session.scalars(sa.select(ConsentLedgerEntry).where(ConsentLedgerEntry.store_id == store.id)).one()
        assert entry.contact_id == contact.id
        assert (entry.channel, entry.action, entry.status_after) == ("email", "grant", "subscribed")
        assert (entry.method, entry.form_id, entry.source) == ("form", "signup", "http://localhost/signup")
        assert entry.consent_text_hash == hashlib.sha256(CONSENT_TEXT.encode()).hexdigest()
        assert entry.consent_text_version == CONSENT_TEXT_VERSION
        evidence = session.get(ConsentEvidence, entry.id)
        assert evidence is not None and (evidence.ip, evidence.user_agent) == (SHOPPER_IP, SHOPPER_AGENT)
        state = session.get(ConsentState, (contact.id, "email"))
        assert state is not None and state.status == "subscribed"


def test_signup_with_the_box_unticked_records_no_consent(
    browser: FlaskClient, sdk: Client, db: Database, store: NewStore
) -> None:
    # When a shopper signs up without ticking the box
    response = browser.post("/signup", data={"email": "ben@example.com"}, follow_redirects=True)
    assert response.status_code == 200
    landed(sdk, db, store)

    # Then the customer exists, but no consent was recorded for them
    with db.reader() as session:
        contact = session.scalars(sa.select(Contact).where(Contact.store_id == store.id)).one()
        assert contact.email == "ben@example.com"
        ledger = sa.select(sa.func.count(ConsentLedgerEntry.id)).where(ConsentLedgerEntry.store_id == store.id)
        assert session.scalar(ledger) == 0


def test_notify_me_puts_a_guest_on_the_waitlist_of_a_sold_out_product(
    browser: FlaskClient, sdk: Client, db: Database, store: NewStore
) -> None:
    # Given a sold-out product, whose page offers "notify me" instead of "add to cart"
    page = browser.get("/products/hoodie-alpine")
    assert b"Notify me" in page.data
    assert b"Add to cart" not in page.data
    # And a product in stock, which has no waitlist to join
    assert browser.post("/products/tee-classic/notify", data={"email": "cleo@example.com"}).status_code == 409
    # When a guest asks to be notified
    response = browser.post("/products/hoodie-alpine/notify", data={"email": "cleo@example.com"}, follow_redirects=True)
    assert b"We will email cleo@example.com when Alpine Hoodie is back" in response.data
    landed(sdk, db, store)

    # Then they wait for that product, under their email address
    with db.reader() as session:
        entry = session.scalars(sa.select(WaitlistEntry).where(WaitlistEntry.store_id == store.id)).one()
        assert (entry.product_id, entry.channel, entry.status) == ("hoodie-alpine", "email", "waiting")
        contact = session.get(Contact, entry.contact_id)
        assert contact is not None and contact.email == "cleo@example.com"


def test_checkout_places_the_order_and_converts_the_cart(
    shop: Flask, browser: FlaskClient, sdk: Client, db: Database, store: NewStore
) -> None:
    # Given a shopper with two tees in the cart (a mug was added and removed again)
    for product_id in ("tee-classic", "tee-classic", "mug-ceramic"):
        assert browser.post(f"/cart/add/{product_id}").status_code == 302
    assert browser.post("/cart/remove/mug-ceramic").status_code == 302
    assert b"Total: 39.98 EUR" in browser.get("/cart").data
    # And another shopper who leaves a cart behind
    other = shop.test_client()
    assert other.post("/cart/add/tote-canvas").status_code == 302
    # When the first checks out as a guest
    assert browser.get("/checkout").status_code == 200
    response = browser.post("/checkout", data={"email": "dan@example.com"})
    assert response.status_code == 200
    match = re.search(rb"Order <strong>(ord-[0-9a-f]+)</strong>", response.data)
    assert match is not None
    landed(sdk, db, store)

    # Then the order is theirs, with its line and total
    with db.reader() as session:
        order = session.scalars(sa.select(Order).where(Order.store_id == store.id)).one()
        assert order.order_id == match[1].decode()
        assert (order.total_cents, order.revenue_cents, order.currency) == (3998, 3998, "EUR")
        lines = session.execute(sa.select(OrderItem.product_id, OrderItem.quantity, OrderItem.price_cents)).all()
        assert [tuple(line) for line in lines] == [("tee-classic", 2, 1999)]
        buyer = session.get(Contact, order.contact_id)
        assert buyer is not None and buyer.email == "dan@example.com"
        # And their cart is converted, while the other shopper's stays open
        carts = session.execute(sa.select(Cart.contact_id, Cart.status).where(Cart.store_id == store.id)).all()
        assert sorted(status for _, status in carts) == ["converted", "open"]
        assert (order.contact_id, "converted") in [tuple(cart) for cart in carts]
    # And the shopper's cart is empty again
    assert b"Your cart is empty" in browser.get("/cart").data


def test_the_back_office_publishes_and_restocks_the_catalog(
    shop: Flask, browser: FlaskClient, sdk: Client, db: Database, store: NewStore
) -> None:
    # Given the inventory routes refuse anyone without the admin token
    assert shop.test_client().post("/admin/inventory").status_code == 403
    admin = shop.test_client()
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    # When the shop publishes its catalog and restocks a sold-out product
    assert admin.post("/admin/inventory").get_json() == {"products": len(CATALOG)}
    assert admin.post("/admin/restock/hoodie-alpine", data={"quantity": "5"}).status_code == 200
    landed(sdk, db, store)

    # Then espbridge knows every product, and the hoodie's new stock
    with db.reader() as session:
        products = session.scalars(sa.select(Product.product_id).where(Product.store_id == store.id)).all()
        assert sorted(products) == sorted(item.product_id for item in CATALOG)
        stock = session.scalars(
            sa.select(Variant.inventory_quantity).where(
                Variant.store_id == store.id, Variant.product_id == "hoodie-alpine"
            )
        ).one()
        assert stock == 5
    # And shoppers can buy it again
    assert b"Add to cart" in browser.get("/products/hoodie-alpine").data
