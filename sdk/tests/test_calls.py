"""What each call puts on the wire: Segment's message shapes, our ids and timestamps, the typed helpers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from conftest import Sink
from espbridge import Client, InvalidMessage


def test_core_calls_send_segment_shaped_messages(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    when = dt.datetime(2026, 11, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    client.identify("u1", {"email": "a@example.com"}, context={"ip": "10.0.0.1"})
    client.track("u1", "Product Viewed", {"product_id": "p1"}, timestamp=when, message_id="m-1")
    client.page(anonymous_id="anon-1", category="Docs", name="Home", properties={"path": "/"})
    client.screen(42, name="Cart")
    client.group("u1", "acme", {"plan": "pro"})
    client.alias("anon-1", "u1")
    assert client.flush(5)

    identify, track, page, screen, group, alias = sink.messages
    assert identify["type"] == "identify" and identify["traits"] == {"email": "a@example.com"}
    assert identify["context"]["ip"] == "10.0.0.1"
    assert identify["context"]["library"]["name"] == "espbridge-python"
    assert track["event"] == "Product Viewed" and track["messageId"] == "m-1"
    assert track["timestamp"] == "2026-11-01T10:30:00.000+00:00"  # converted to UTC
    assert page == {**page, "type": "page", "anonymousId": "anon-1", "category": "Docs", "name": "Home"}
    assert "userId" not in page
    assert screen["userId"] == "42"  # integer ids are sent as strings
    assert group["groupId"] == "acme" and group["traits"] == {"plan": "pro"}
    assert alias["previousId"] == "anon-1" and alias["userId"] == "u1"
    for message in sink.messages:
        dt.datetime.fromisoformat(message["timestamp"])


def test_message_ids_are_unique_and_returned(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    returned = [client.track("u1", "Tick", {"n": n}) for n in range(2_000)]
    assert client.flush(5)
    assert sink.message_ids() == returned
    assert len(set(returned)) == 2_000


def test_values_json_cannot_carry_are_converted_exactly(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    client.track(
        "u1",
        "Typed",
        {"price": Decimal("19.99"), "day": dt.date(2026, 1, 2), "tags": {"a"}, "at": dt.datetime(2026, 1, 2, 3, 4)},
    )
    assert client.flush(5)
    assert sink.messages[0]["properties"] == {
        "price": "19.99",  # a string: the service reads amounts through Decimal, so nothing is rounded
        "day": "2026-01-02",
        "tags": ["a"],
        "at": "2026-01-02T03:04:00",
    }


def test_the_caller_changing_its_dict_later_changes_nothing_sent(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    properties = {"step": 1}
    client.track("u1", "Checkout Step Viewed", properties)
    properties["step"] = 2
    assert client.flush(5)
    assert sink.messages[0]["properties"] == {"step": 1}


def test_ecommerce_helpers_follow_segments_spec(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    product = {"product_id": "sku-1", "name": "Mug", "price": Decimal("12.50"), "quantity": 2}
    client.product_viewed("u1", product={"product_id": "sku-1"})
    client.product_added("u1", product=product, cart_id="c1")  # type: ignore[arg-type]
    client.product_removed("u1", product={"product_id": "sku-1"}, cart_id="c1")
    client.cart_viewed("u1", products=[product], cart_id="c1", currency="eur")  # type: ignore[list-item]
    client.checkout_started("u1", products=[product], order_id="o1", value=25)  # type: ignore[list-item]
    client.order_completed(
        "u1",
        order_id="o1",
        products=[product],
        total="25.00",
        currency="EUR",
        coupon="WELCOME",  # type: ignore[list-item]
    )
    client.order_refunded("u1", order_id="o1", total=25)
    client.order_cancelled("u1", order_id="o2")
    assert client.flush(5)
    events = {message["event"]: message["properties"] for message in sink.messages}
    assert list(events) == [
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Cart Viewed",
        "Checkout Started",
        "Order Completed",
        "Order Refunded",
        "Order Cancelled",
    ]
    added = {"product_id": "sku-1", "name": "Mug", "price": "12.50", "quantity": 2, "cart_id": "c1"}
    assert events["Product Added"] == added
    assert events["Cart Viewed"]["currency"] == "EUR"
    assert events["Order Completed"] == {
        "order_id": "o1",
        "total": "25.00",
        "coupon": "WELCOME",
        "currency": "EUR",
        "products": [{"product_id": "sku-1", "name": "Mug", "price": "12.50", "quantity": 2}],
    }
    assert events["Order Refunded"] == {"order_id": "o1", "total": 25}


def test_reserved_event_helpers(make_client: Any, sink: Sink) -> None:
    client: Client = make_client()
    evidence = {"ip": "203.0.113.9", "userAgent": "Firefox"}
    client.consent(
        "u1",
        channel="email",
        status="subscribed",
        method="form",
        form_id="signup",
        consent_text_version="v3",
        context=evidence,
    )
    client.join_waitlist(anonymous_id="a1", product_id="p9", variant_id="p9-L")
    client.leave_waitlist("u1", product_id="p9", channel="sms")
    client.inventory_updated(product_id="p9", quantity=5, price=9.5, title="Scarf")
    assert client.flush(5)
    consent, joined, left, inventory = sink.messages
    assert consent["event"] == "Consent Updated" and consent["context"]["ip"] == "203.0.113.9"
    assert consent["properties"] == {
        "channel": "email",
        "status": "subscribed",
        "method": "form",
        "form_id": "signup",
        "consent_text_version": "v3",
    }
    assert joined["event"] == "Waitlist Joined"
    assert joined["properties"] == {"product_id": "p9", "variant_id": "p9-L", "channel": "email"}
    assert left["event"] == "Waitlist Left" and left["properties"]["channel"] == "sms"
    assert inventory["event"] == "Inventory Updated" and "userId" not in inventory and "anonymousId" not in inventory
    assert inventory["properties"] == {"product_id": "p9", "quantity": 5, "price": 9.5, "title": "Scarf"}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.track("u1", None), "event"),
        (lambda c: c.track("u1", "E", ["not", "a", "dict"]), "properties"),
        (lambda c: c.track(None, "E"), "user_id"),
        (lambda c: c.track(True, "E"), "user_id"),
        (lambda c: c.track("u1", "E", timestamp="yesterday"), "timestamp"),
        (lambda c: c.identify("x" * 201), "user_id"),
        (lambda c: c.group("u1", None), "group_id"),
        (lambda c: c.consent("u1", channel="fax", status="subscribed"), "channel"),
        (lambda c: c.consent("u1", channel="email", status="yes"), "status"),
        (lambda c: c.order_completed("u1", order_id="o1", products=[], total="a lot"), "total"),
        (lambda c: c.order_completed("u1", order_id="", products=[], total=1), "order_id"),
        (lambda c: c.order_completed("u1", order_id="o1", products={"product_id": "p"}, total=1), "products"),
        (lambda c: c.product_added("u1", product={"name": "no id"}), "product.product_id"),
        (lambda c: c.cart_viewed("u1", products=[{"product_id": "p", "quantity": 1.5}]), "products[0].quantity"),
        (lambda c: c.cart_viewed("u1", products=[], currency="euro"), "currency"),
        (lambda c: c.inventory_updated(product_id="p", quantity=-1), "quantity"),
        (lambda c: c.join_waitlist("u1", product_id=None), "product_id"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(make_client: Any, sink: Sink, call: Any, field: str) -> None:
    client: Client = make_client()
    with pytest.raises(InvalidMessage) as raised:
        call(client)
    assert raised.value.field == field
    assert client.flush(1)
    assert sink.messages == []
