"""The demo storefront day: deterministic, valid Segment messages whose commerce numbers add up."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import pytest

from connector.ingest.messages import MAX_MESSAGE_BYTES, validate_messages
from connector.sample_data import DEFAULT_DAY, STORE_URL, batches, catalog, storefront_day

Message = dict[str, Any]

DOCUMENTATION_NETWORKS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


@pytest.fixture(scope="module")
def day() -> list[Message]:
    return storefront_day()


def cents(value: Any) -> int:
    """Exact cents of a 2-decimal JSON number; fails on anything finer than a cent."""
    amount = Decimal(str(value)) * 100
    assert amount == amount.to_integral_value(), value
    return int(amount)


def person(message: Message) -> str:
    # Anonymous visitors keep their anonymousId after identify; returning customers only have a userId.
    key = message.get("anonymousId") or message.get("userId")
    assert isinstance(key, str)
    return key


def events(messages: list[Message], name: str) -> list[Message]:
    return [m for m in messages if m.get("event") == name]


def people_with(messages: list[Message], name: str) -> set[str]:
    return {person(m) for m in events(messages, name)}


def test_same_seed_same_day_and_other_seeds_differ(day: list[Message]) -> None:
    assert storefront_day() == day
    assert json.dumps(storefront_day(customers=20, seed=3)) == json.dumps(storefront_day(customers=20, seed=3))
    other = storefront_day(seed=8)
    assert other != day
    assert {m["messageId"] for m in other}.isdisjoint(m["messageId"] for m in day)
    assert catalog(7) == catalog()
    assert catalog(8) != catalog(7)


def test_message_ids_are_unique(day: list[Message]) -> None:
    ids = [m["messageId"] for m in day]
    assert len(ids) == len(set(ids))


def test_timestamps_are_sorted_and_inside_the_day(day: list[Message]) -> None:
    stamps = [dt.datetime.fromisoformat(m["timestamp"]) for m in day]
    assert stamps == sorted(stamps)
    start = dt.datetime.combine(DEFAULT_DAY, dt.time(), tzinfo=dt.UTC)
    assert all(start <= s < start + dt.timedelta(days=1) for s in stamps)
    assert all(s.utcoffset() == dt.timedelta(0) for s in stamps)


def test_other_day_and_currency() -> None:
    messages = storefront_day(customers=30, day=dt.date(2027, 1, 2), currency="USD")
    assert all(m["timestamp"].startswith("2027-01-02T") for m in messages)
    currencies = {m["properties"]["currency"] for m in messages if "currency" in m.get("properties", {})}
    assert currencies == {"USD"}
    assert {m["context"]["locale"] for m in messages if "context" in m} <= {"en-US", "es-US"}


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="currency"):
        storefront_day(currency="GBP")
    with pytest.raises(ValueError, match="customers"):
        storefront_day(customers=-1)
    with pytest.raises(ValueError, match="size"):
        batches([], size=0)


def test_no_customers_is_just_the_catalog() -> None:
    messages = storefront_day(customers=0)
    assert {m["event"] for m in messages} == {"Inventory Updated"}
    assert len(messages) > len(catalog())  # the load plus restocks


def test_every_message_has_a_person_except_inventory(day: list[Message]) -> None:
    for message in day:
        assert message["type"] in {"identify", "track", "page", "alias"}
        if message.get("event") == "Inventory Updated":
            assert set(message) == {"type", "messageId", "timestamp", "event", "properties"}
        else:
            assert message.get("userId") or message.get("anonymousId"), message
            assert {"ip", "userAgent", "locale"} <= set(message["context"])


def test_every_message_is_accepted_by_ingestion(day: list[Message]) -> None:
    received_at = dt.datetime.combine(DEFAULT_DAY, dt.time(23, 59), tzinfo=dt.UTC)
    accepted, errors = validate_messages(list(day), received_at=received_at)
    assert errors == []
    assert len(accepted) == len(day)


def test_messages_are_json_and_small(day: list[Message]) -> None:
    for message in day:
        encoded = json.dumps(message, allow_nan=False)
        assert len(encoded.encode()) < MAX_MESSAGE_BYTES
        assert json.loads(encoded) == message


def test_only_reserved_addresses_and_hosts(day: list[Message]) -> None:
    for message in day:
        context = message.get("context")
        if context is None:
            continue
        ip = ipaddress.ip_address(context["ip"])
        assert any(ip in network for network in DOCUMENTATION_NETWORKS), ip
        if "page" in context:
            assert context["page"]["url"].startswith(STORE_URL + "/")
    identifies = [m for m in day if m["type"] == "identify"]
    assert identifies
    for message in identifies:
        traits = message["traits"]
        assert traits["email"].endswith("@example.com")
        assert traits["email"].startswith(f"{traits['first_name']}.{traits['last_name']}+".lower())
        if "phone" in traits:
            assert traits["phone"].startswith("+1555")
            assert traits["phone"][1:].isdigit()
            assert len(traits["phone"]) <= 16  # E.164: at most 15 digits
        assert message["userId"].startswith("cus_")
    for product in catalog():
        assert product.url.startswith(STORE_URL + "/")
        assert product.image_url.startswith(STORE_URL + "/")


def test_catalog_shape() -> None:
    variants = catalog()
    products: dict[str, list[Any]] = defaultdict(list)
    for variant in variants:
        products[variant.product_id].append(variant)
    assert 35 <= len(products) <= 45
    assert all(1 <= len(rows) <= 3 for rows in products.values())
    assert {v.category for v in variants} == {"Apparel", "Shoes", "Accessories", "Home", "Beauty"}
    assert len({v.variant_id for v in variants}) == len({v.sku for v in variants}) == len(variants)
    assert all(v.price_cents > 0 for v in variants)
    sold_out = [v for v in variants if v.quantity == 0]
    assert 1 <= len(sold_out) <= 12
    assert any(all(v.quantity == 0 for v in rows) for rows in products.values())


def test_catalog_is_loaded_first(day: list[Message]) -> None:
    variants = catalog()
    load = day[: len(variants)]
    assert [m.get("event") for m in load] == ["Inventory Updated"] * len(variants)
    assert [(m["properties"]["variant_id"], m["properties"]["quantity"]) for m in load] == [
        (v.variant_id, v.quantity) for v in variants
    ]
    assert all(cents(m["properties"]["price"]) == v.price_cents for m, v in zip(load, variants, strict=True))


def test_order_totals_add_up_exactly(day: list[Message]) -> None:
    orders = events(day, "Order Completed")
    assert orders
    for order in orders:
        p = order["properties"]
        lines = sum(cents(line["price"]) * line["quantity"] for line in p["products"])
        assert cents(p["revenue"]) == lines
        assert cents(p["subtotal"]) == lines
        assert cents(p["total"]) == lines - cents(p["discount"]) + cents(p["shipping"]) + cents(p["tax"])
        assert cents(p["discount"]) >= 0
        assert (cents(p["discount"]) > 0) == ("coupon" in p)
        assert p["currency"] == "EUR"
    for checkout in events(day, "Checkout Started"):
        p = checkout["properties"]
        lines = sum(cents(line["price"]) * line["quantity"] for line in p["products"])
        assert cents(p["revenue"]) == cents(p["value"]) == lines


def test_usd_orders_add_sales_tax() -> None:
    orders = events(storefront_day(customers=100, currency="USD"), "Order Completed")
    assert orders
    for order in orders:
        p = order["properties"]
        base = cents(p["subtotal"]) - cents(p["discount"])
        assert cents(p["tax"]) == (base * 8 + 50) // 100
        assert cents(p["total"]) == base + cents(p["shipping"]) + cents(p["tax"])


def test_ordered_products_come_from_the_catalog_and_the_cart(day: list[Message]) -> None:
    by_sku = {v.sku: v for v in catalog()}
    added: dict[str, set[str]] = defaultdict(set)
    for message in events(day, "Product Added"):
        added[message["properties"]["cart_id"]].add(message["properties"]["sku"])
    order_ids = []
    for order in events(day, "Order Completed"):
        p = order["properties"]
        order_ids.append(p["order_id"])
        for line in p["products"]:
            variant = by_sku[line["sku"]]
            assert (line["product_id"], line["variant_id"], line["variant"]) == (
                variant.product_id,
                variant.variant_id,
                variant.variant,
            )
            assert cents(line["price"]) == variant.price_cents
            assert line["quantity"] >= 1
            assert line["sku"] in added[p["cart_id"]]
    assert len(order_ids) == len(set(order_ids))
    completed = set(order_ids)
    for name in ("Order Refunded", "Order Cancelled"):
        assert {m["properties"]["order_id"] for m in events(day, name)} <= completed


def test_waitlists_are_for_sold_out_variants_and_some_get_restocked(day: list[Message]) -> None:
    quantity = {v.variant_id: v.quantity for v in catalog()}
    restocked_after_waitlist = 0
    waiting: set[str] = set()
    for message in day[len(quantity) :]:
        event = message.get("event")
        if event == "Inventory Updated":
            variant_id = message["properties"]["variant_id"]
            restocked_after_waitlist += quantity[variant_id] == 0 and variant_id in waiting
            quantity[variant_id] = message["properties"]["quantity"]
        elif event == "Waitlist Joined":
            assert message["properties"]["channel"] == "email"
            assert quantity[message["properties"]["variant_id"]] == 0
            assert message.get("userId")  # the "notify me" form identifies the visitor
            waiting.add(message["properties"]["variant_id"])
        elif event in ("Product Added", "Order Completed"):
            lines = message["properties"].get("products", [message["properties"]])
            assert all(quantity[line["variant_id"]] > 0 for line in lines)
    assert restocked_after_waitlist >= 1


def test_consent_events(day: list[Message]) -> None:
    identified: set[str] = set()
    status: dict[tuple[str, str], str] = {}
    for message in day:
        if message["type"] == "identify":
            identified.add(person(message))
        if message.get("event") != "Consent Updated":
            continue
        p = message["properties"]
        assert person(message) in identified  # consent is recorded against a known email or phone
        assert p["channel"] in {"email", "sms"}
        assert p["status"] in {"subscribed", "unsubscribed", "pending"}
        assert p["method"] in {"form", "checkout", "preference_center"}
        assert p["consent_text_version"] == "v3"
        assert p["form_id"]
        assert p["source"] == "checkout" or p["source"].startswith(STORE_URL + "/")
        if p["status"] == "unsubscribed":
            assert status.get((person(message), p["channel"])) == "subscribed"
        status[(person(message), p["channel"])] = p["status"]


def test_behaviour_mix_for_300_customers(day: list[Message]) -> None:
    visitors = {person(m) for m in day if m.get("event") != "Inventory Updated"}
    assert len(visitors) == 300
    returning = {m["userId"] for m in day if "userId" in m and "anonymousId" not in m}
    assert 3 <= len(returning) <= 40

    viewers = people_with(day, "Product Viewed")
    carters = people_with(day, "Product Added")
    checkouts = people_with(day, "Checkout Started")
    buyers = people_with(day, "Order Completed")
    assert len(viewers) >= 0.9 * len(visitors)
    assert 0.28 <= len(carters) / len(visitors) <= 0.52
    assert 0.35 <= len(checkouts) / len(carters) <= 0.65
    assert 0.65 <= len(buyers) / len(checkouts) <= 0.97
    assert len(carters - checkouts) > 0.3 * len(carters)  # abandoned carts

    newly_identified = {person(m) for m in day if m["type"] == "identify"} - returning
    consents = [m for m in events(day, "Consent Updated")]
    email_granted = {
        person(m)
        for m in consents
        if m["properties"]["channel"] == "email" and m["properties"]["status"] != "unsubscribed"
    }
    assert 0.45 <= len(email_granted) / len(newly_identified) <= 0.75
    statuses = Counter((m["properties"]["channel"], m["properties"]["status"]) for m in consents)
    assert statuses["sms", "subscribed"] >= 3
    assert 1 <= statuses["email", "unsubscribed"] <= 0.2 * len(email_granted)
    assert statuses["email", "pending"] >= 1

    waitlisters = people_with(day, "Waitlist Joined")
    assert 1 <= len(waitlisters) <= 0.1 * len(visitors)
    orders = len(events(day, "Order Completed"))
    assert 0 < len(events(day, "Order Refunded")) + len(events(day, "Order Cancelled")) <= 0.2 * orders


def test_batches() -> None:
    messages = storefront_day(customers=10)
    chunks = list(batches(messages, size=7))
    assert all(1 <= len(chunk) <= 7 for chunk in chunks)
    assert [m for chunk in chunks for m in chunk] == messages
    assert len(list(batches(messages))) == -(-len(messages) // 100)
    assert list(batches([])) == []
