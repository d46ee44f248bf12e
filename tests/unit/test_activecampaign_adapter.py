"""The ActiveCampaign client and adapter against the in-process AC sandbox (httpx's WSGI transport; no mocks of AC).

Every request body the adapter sends in these tests, as the sandbox logged it, is checked against AC's request
schemas (tests/contract/activecampaign.py) when the test ends.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.errors import InvalidInput
from connector.esp.activecampaign import (
    MAX_IMPORT_BYTES,
    AcContact,
    ActiveCampaignClient,
    map_error,
)
from connector.esp.activecampaign_adapter import ActiveCampaignAdapter, event_data, event_name
from connector.esp.base import AbandonedCart, ConsentChange, TrackedEvent
from connector.esp.errors import AuthFailed, RateLimited, Rejected, Transient
from connector.sandbox.activecampaign import (
    DEFAULT_ACTID,
    DEFAULT_API_TOKEN,
    DEFAULT_EVENT_KEY,
    AcFaults,
    AcReject,
    ActiveCampaignSandbox,
)
from connector.store import Cart, CartItem, Contact, Event
from connector.sync.adapters import ACTIVECAMPAIGN_WINDOWS, check_settings
from connector.sync.ratelimit import SharedRateLimiter
from tests.contract.activecampaign import validate_request

URL = "http://ac.sandbox"
SCALE = 100.0  # the sandbox's windows and ours, divided alike
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def sandbox() -> Iterator[ActiveCampaignSandbox]:
    app = ActiveCampaignSandbox(time_scale=SCALE)
    yield app
    # the contract: every body sent, as the sandbox received it
    broken = [
        (e["operation"], validate_request(e["operation"], e["body"]))
        for e in app.requests
        if e["body"] is not None and e["method"] in ("POST", "PUT")
    ]
    assert [b for b in broken if b[1]] == []


class Pauses:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, operation: str, seconds: float) -> None:
        self.calls.append((operation, seconds))


def client_for(
    sandbox: ActiveCampaignSandbox, *, token: str = DEFAULT_API_TOKEN, **kwargs: Any
) -> ActiveCampaignClient:
    limiter = SharedRateLimiter(f"activecampaign:test-{id(sandbox)}", ACTIVECAMPAIGN_WINDOWS, time_scale=SCALE)
    return ActiveCampaignClient(
        token,
        base_url=URL,
        track_url=f"{URL}/event",
        actid=DEFAULT_ACTID,
        event_key=DEFAULT_EVENT_KEY,
        timeout=5.0,
        transport=kwargs.pop("transport", None) or httpx.WSGITransport(app=sandbox),
        limiter=kwargs.pop("limiter", limiter.acquire),
        **kwargs,
    )


def adapter_for(sandbox: ActiveCampaignSandbox, **kwargs: Any) -> ActiveCampaignAdapter:
    client = kwargs.pop("client", None) or client_for(sandbox)
    kwargs.setdefault("list_id", make_list(sandbox))
    return ActiveCampaignAdapter(client, poll_interval=0.0, sleep=lambda s: None, **kwargs)


def make_list(sandbox: ActiveCampaignSandbox, name: str = "Newsletter") -> str:
    for row in sandbox.lists.values():
        if row["name"] == name:
            return str(row["id"])
    return client_for(sandbox).create_list(name, stringid=name.lower(), sender_url=URL, sender_reminder="signed up")


def contact(i: int, **kwargs: Any) -> Contact:
    kwargs.setdefault("email", f"p{i}@example.com")
    kwargs.setdefault("properties", {})
    return Contact(id=i, store_id=1, **kwargs)


def requests(sandbox: ActiveCampaignSandbox, operation: str) -> list[dict[str, Any]]:
    return [e for e in sandbox.requests if e["operation"] == operation]


def membership(sandbox: ActiveCampaignSandbox, email: str, list_id: str) -> dict[str, Any] | None:
    found = sandbox.contact_by_email(email)
    return None if found is None else sandbox.memberships.get((found["id"], list_id))


def faults(sandbox: ActiveCampaignSandbox, **kwargs: Any) -> None:
    sandbox.faults = AcFaults(**kwargs)


def track(name: str, message_id: str, at: dt.datetime = NOW, **properties: Any) -> Event:
    return Event(message_id=message_id, type="track", name=name, timestamp=at, payload={"properties": properties})


# --- profiles ------------------------------------------------------------------------------------------------------


def test_contact_sync_with_custom_fields_created_once(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox, field_map={"plan": "Plan", "external_id": "Customer id"})
    people = [contact(1, first_name="Ada", properties={"plan": "gold"}, external_id="c-1"), contact(2, email=None)]
    outcome = adapter.upsert_profiles(people, bulk=False)
    ada = sandbox.contact_by_email("p1@example.com")
    assert ada is not None and ada["firstName"] == "Ada"
    assert outcome.remote_ids == {0: ada["id"]} and outcome.skipped.keys() == {1}
    titles = {f["title"]: f["id"] for f in sandbox.fields.values()}
    assert set(titles) == {"Plan", "Customer id"}
    values = {fv["field"]: fv["value"] for fv in sandbox.field_values.values() if fv["contact"] == ada["id"]}
    assert values == {titles["Plan"]: "gold", titles["Customer id"]: "c-1"}
    assert {r["relid"] for r in sandbox.field_rels.values()} == {"0"} and len(sandbox.field_rels) == 2
    # a second call: the field ids are cached, no /fields request at all
    before = len(requests(sandbox, "list_fields")) + len(requests(sandbox, "create_field"))
    adapter.upsert_profiles([contact(3, properties={"plan": "silver"})], bulk=False)
    assert len(requests(sandbox, "list_fields")) + len(requests(sandbox, "create_field")) == before
    assert outcome.requests == len(sandbox.requests) - 1 - 1  # minus make_list and the second call's sync


def test_fingerprint_needs_an_email_and_follows_mapped_values_and_consent(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox, field_map={"plan": "Plan"})
    assert adapter.fingerprint(contact(1, email=None), {}) is None
    base = adapter.fingerprint(contact(1, properties={"plan": "gold"}), {})
    assert base == adapter.fingerprint(contact(1, properties={"plan": "gold", "unmapped": 1}), {})
    assert base != adapter.fingerprint(contact(1, properties={"plan": "silver"}), {})
    assert base != adapter.fingerprint(contact(1, properties={"plan": "gold"}), {"email": "subscribed"})


def test_a_rejected_contact_is_rejected_and_the_rest_stored(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    faults(sandbox, reject=AcReject(emails=["p2@example.com"]), operations=["sync_contact", "bulk_import"])
    outcome = adapter.upsert_profiles([contact(1), contact(2), contact(3)], bulk=False)
    assert list(outcome.rejected) == [1] and "rejected" in outcome.rejected[1]
    assert set(outcome.remote_ids) == {0, 2}
    # the bulk importer: a 400 naming contact 1 of the request; the rest is imported
    outcome = adapter.upsert_profiles([contact(4), contact(2), contact(5)], bulk=True)
    assert list(outcome.rejected) == [1] and not outcome.failed
    assert {c["email"] for c in sandbox.contacts.values()} == {f"p{i}@example.com" for i in (1, 3, 4, 5)}
    assert [r["status"] for r in requests(sandbox, "bulk_import")] == [400, 200]


def test_bulk_import_chunks_by_250_contacts_and_by_bytes(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    outcome = adapter.upsert_profiles([contact(i) for i in range(260)], bulk=True)
    assert not outcome.failed and not outcome.rejected and len(outcome.remote_ids) == 260
    assert [len(r["body"]["contacts"]) for r in requests(sandbox, "bulk_import")] == [250, 10]
    big = adapter_for(sandbox, field_map={"bio": "Bio"})
    text = "x" * 4000
    outcome = big.upsert_profiles([contact(1000 + i, properties={"bio": text}) for i in range(200)], bulk=True)
    assert not outcome.failed and not outcome.rejected
    sizes = [len(json.dumps(r["body"]).encode()) for r in requests(sandbox, "bulk_import")[2:]]
    assert len(sizes) >= 2 and max(sizes) <= MAX_IMPORT_BYTES
    assert sum(len(r["body"]["contacts"]) for r in requests(sandbox, "bulk_import")[2:]) == 200


def test_full_sync_consents_travel_inside_the_import_and_never_resubscribe(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    list_id = adapter.list_id
    assert list_id is not None
    gone = contact(3)
    adapter.upsert_profiles([gone], bulk=False)
    adapter.set_consent([ConsentChange(gone, "email", "unsubscribed", NOW)])
    people = [contact(1), contact(2), gone]
    consents = [
        ConsentChange(people[0], "email", "subscribed", NOW, imported=True),
        ConsentChange(people[1], "email", "unsubscribed", NOW, imported=True),
        ConsentChange(gone, "email", "subscribed", NOW - dt.timedelta(days=1), imported=True),
    ]
    before = len(sandbox.requests)
    outcome = adapter.upsert_profiles(people, bulk=True, consents=consents)
    assert not outcome.failed and not outcome.rejected
    ops = [e["operation"] for e in list(sandbox.requests)[before:]]
    assert ops == ["bulk_import", "bulk_import_info"]  # one request for the contacts and their consent
    [item1, item2, _gone] = requests(sandbox, "bulk_import")[-1]["body"]["contacts"]
    assert item1["subscribe"] == [{"listid": list_id}] and item2["unsubscribe"] == [{"listid": list_id}]
    assert [(membership(sandbox, c.email or "", list_id) or {}).get("status") for c in people] == ["1", "2", "2"]


def test_contact_sync_method_for_full_syncs(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox, full_sync_method="contact_sync")
    people = [contact(i) for i in range(3)]
    consents = [ConsentChange(p, "email", "subscribed", NOW, imported=True) for p in people]
    outcome = adapter.upsert_profiles(people, bulk=True, consents=consents)
    assert len(outcome.remote_ids) == 3 and not requests(sandbox, "bulk_import")
    assert len(requests(sandbox, "sync_contact")) == 3 and len(requests(sandbox, "update_list_status")) == 3


# --- errors and rate limits -----------------------------------------------------------------------------------------


def test_a_429_is_rate_limited_and_pauses_the_whole_account(sandbox: ActiveCampaignSandbox) -> None:
    limiter = SharedRateLimiter("activecampaign:pause-test", ACTIVECAMPAIGN_WINDOWS, shared_pause=True)
    pauses = Pauses()

    def pause(operation: str, seconds: float) -> None:
        pauses(operation, seconds)
        limiter.pause(operation, seconds)

    adapter = adapter_for(sandbox, client=client_for(sandbox, limiter=limiter.acquire), pause=pause)
    faults(sandbox, storm_429=1, storm_retry_after=7)
    outcome = adapter.upsert_profiles([contact(1), contact(2)], bulk=False)
    assert isinstance(outcome.error, RateLimited) and outcome.error.retry_after == 7
    assert outcome.error.operation == "sync_contact" and outcome.failed == {0, 1}
    assert pauses.calls == [("sync_contact", 7.0)]
    # every operation of the account waits, not only contact/sync (one budget, shared_pause)
    assert limiter.try_acquire("create_ecom_order") > 6 and limiter.try_acquire("bulk_import_multi") > 6


def test_503_is_transient_and_a_bad_token_is_auth_failed(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    faults(sandbox, error_rate=1.0, error_status=503)
    outcome = adapter.upsert_profiles([contact(1)], bulk=False)
    assert isinstance(outcome.error, Transient) and outcome.error.status == 503 and outcome.failed == {0}
    faults(sandbox)
    bad = adapter_for(sandbox, client=client_for(sandbox, token="wrong"))
    outcome = bad.set_consent([ConsentChange(contact(1), "email", "subscribed", NOW)])
    assert isinstance(outcome.error, AuthFailed) and outcome.failed == {0}
    assert "wrong" not in str(outcome.error)


def test_timeouts_and_network_errors_are_transient() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = ActiveCampaignClient("tok", base_url=URL, transport=httpx.MockTransport(boom))
    with pytest.raises(Transient):
        client.find_contact("a@b.c")


def test_error_mapping() -> None:
    request = httpx.Request("POST", f"{URL}/api/3/contact/sync")
    date = "Sun, 22 Nov 2026 10:00:30 GMT"
    now = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
    limited = map_error(httpx.Response(429, headers={"Retry-After": date}, request=request), operation="x", now=now)
    assert isinstance(limited, RateLimited) and limited.retry_after == 30 and limited.operation == "x"
    invalid = {
        "errors": [
            {
                "title": "Invalid",
                "detail": "Email invalid",
                "code": "email_invalid",
                "source": {"pointer": "/contact/email"},
            }
        ]
    }
    rejected = map_error(httpx.Response(422, json=invalid, request=request), records=1)
    assert isinstance(rejected, Rejected) and rejected.records[0].pointer == "/contact/email"
    bulk = {"success": 0, "message": "bad", "failureReasons": [{"contact": 3, "failureReason": "Invalid email"}]}
    rejected = map_error(httpx.Response(400, json=bulk, request=request), bulk=True)
    assert isinstance(rejected, Rejected) and [(r.index, r.detail) for r in rejected.records] == [(3, "Invalid email")]
    assert type(map_error(httpx.Response(400, json={}, request=request))).__name__ == "Permanent"
    assert isinstance(map_error(httpx.Response(408, request=request)), Transient)
    assert isinstance(map_error(httpx.Response(401, request=request)), AuthFailed)


def test_secrets_never_show(sandbox: ActiveCampaignSandbox) -> None:
    sandbox.api_tokens = frozenset({DEFAULT_API_TOKEN, "tok-secret-123"})
    client = client_for(sandbox, token="tok-secret-123")
    assert "tok-secret-123" not in repr(client) and DEFAULT_EVENT_KEY not in repr(client)
    adapter = adapter_for(sandbox, client=client)
    adapter.send_events([TrackedEvent(track("Viewed", "m1"), contact(1))])
    [event] = requests(sandbox, "track_event")
    assert "Api-Token" not in event["headers"] and "api-token" not in {k.lower() for k in event["headers"]}


# --- consent --------------------------------------------------------------------------------------------------------


def test_consent_sets_list_status_and_unsubscribes_go_first(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox, sms_list_id=None)
    list_id = adapter.list_id or ""
    changes = [
        ConsentChange(contact(1), "email", "subscribed", NOW),
        ConsentChange(contact(2), "email", "unsubscribed", NOW),
        ConsentChange(contact(3), "email", "unsubscribed", NOW, action="bounce"),
        ConsentChange(contact(4), "sms", "subscribed", NOW),
        ConsentChange(contact(5, email=None), "email", "subscribed", NOW),
        ConsentChange(contact(6), "email", "pending", NOW),
    ]
    outcome = adapter.set_consent(changes)
    assert set(outcome.skipped) == {3, 4, 5} and not outcome.failed and not outcome.rejected
    statuses = [r["body"]["contactList"]["status"] for r in requests(sandbox, "update_list_status")]
    assert statuses == ["2", "2", "1"]
    assert [(membership(sandbox, f"p{i}@example.com", list_id) or {}).get("status") for i in (1, 2, 3)] == [
        "1",
        "2",
        "2",
    ]


def test_no_resubscribe_after_a_newer_unsubscribe_at_activecampaign(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    list_id = adapter.list_id or ""
    ada = contact(1)
    adapter.set_consent([ConsentChange(ada, "email", "subscribed", NOW - dt.timedelta(days=2))])
    # the person unsubscribes at ActiveCampaign (a link in a campaign) now
    cid = sandbox.contact_by_email("p1@example.com")["id"]  # type: ignore[index]
    sandbox.set_list_status(cid, list_id, 2)
    outcome = adapter.set_consent([ConsentChange(ada, "email", "subscribed", NOW - dt.timedelta(hours=1))])
    assert outcome.skipped == {0: "unsubscribed at ActiveCampaign after our grant"}
    assert (membership(sandbox, "p1@example.com", list_id) or {})["status"] == "2"
    # a grant newer than that unsubscribe re-subscribes, flagged with sourceid 4
    outcome = adapter.set_consent([ConsentChange(ada, "email", "subscribed", NOW + dt.timedelta(hours=1))])
    assert not outcome.skipped and not outcome.failed
    row = membership(sandbox, "p1@example.com", list_id) or {}
    assert (row["status"], row["sourceid"]) == ("1", "4")
    assert requests(sandbox, "update_list_status")[-1]["body"]["contactList"]["sourceid"] == 4


# --- events, orders and carts ---------------------------------------------------------------------------------------


def test_events_through_trackcmp_with_names_registered_once(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    long_name = "Product Added To A Very Long Wishlist Name"
    events = [
        TrackedEvent(track("Product Viewed", "m1", product_id="p1", price=12.5, tags=["x"]), contact(1)),
        TrackedEvent(track(long_name, "m2"), contact(1)),
        TrackedEvent(track("Product Viewed", "m3"), contact(2, email=None)),
        TrackedEvent(track("Product Viewed", "m1"), contact(1)),  # the same event twice in one call: sent once
    ]
    outcome = adapter.send_events(events)
    assert outcome.skipped.keys() == {2} and not outcome.failed and not outcome.rejected
    assert sandbox.event_tracking is True
    names = [e["event"] for e in sandbox.tracked_events]
    assert names == ["Product Viewed", event_name(long_name)] and len(event_name(long_name)) == 32
    assert event_name(long_name) == event_name(long_name) != event_name(long_name + "!")
    assert json.loads(sandbox.tracked_events[0]["eventdata"]) == {"messageId": "m1", "price": 12.5, "product_id": "p1"}
    adapter.send_events([TrackedEvent(track("Product Viewed", "m4"), contact(1))])
    assert len(requests(sandbox, "create_event_name")) == 2 and len(requests(sandbox, "list_event_names")) == 1
    assert len(requests(sandbox, "get_event_tracking")) == 1


def test_eventdata_is_bounded() -> None:
    data = event_data({f"k{i:03}": "v" * 300 for i in range(50)}, "m1")
    assert data is not None and len(data) <= 1000 and json.loads(data)["messageId"] == "m1"


def test_a_refused_event_is_rejected_and_the_rest_sent(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    faults(sandbox, reject=AcReject(emails=["p2@example.com"]), operations=["track_event"])
    events = [TrackedEvent(track("Viewed", f"m{i}"), contact(i)) for i in (1, 2, 3)]
    outcome = adapter.send_events(events)
    assert list(outcome.rejected) == [1] and not outcome.failed
    assert [e["email"] for e in sandbox.tracked_events] == ["p1@example.com", "p3@example.com"]


def order_event(message_id: str, **extra: Any) -> Event:
    return track(
        "Order Completed",
        message_id,
        order_id="o-1",
        total=47.5,
        currency="eur",
        products=[
            {"product_id": "sku-1", "name": "Shirt", "price": 21.25, "quantity": 2},
            {"product_id": "sku-2", "price": 5},
        ],
        **extra,
    )


def test_an_order_is_deep_data_in_cents_and_a_backfill_is_historical(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    outcome = adapter.send_events([TrackedEvent(order_event("m1"), contact(1))], backfill=True)
    assert not outcome.failed and not outcome.rejected
    [order] = sandbox.ecom_orders.values()
    assert order["source"] == "0" and order["totalPrice"] == 4750 and order["currency"] == "EUR"
    assert order["orderProducts"] == [
        {"externalid": "sku-1", "name": "Shirt", "price": 2125, "quantity": 2},
        {"externalid": "sku-2", "name": "sku-2", "price": 500, "quantity": 1},
    ]
    [connection] = sandbox.connections.values()
    assert connection["name"] == "espbridge" and connection["externalid"] == "store-1"
    # a retry of the same order is done (AC's 422 duplicate), and the connection and customer are cached
    outcome = adapter.send_events([TrackedEvent(order_event("m1"), contact(1))])
    assert not outcome.failed and not outcome.rejected and len(sandbox.ecom_orders) == 1
    assert len(requests(sandbox, "list_connections")) == 1 and len(requests(sandbox, "list_ecom_customers")) == 1
    assert not sandbox.tracked_events  # orders are not trackcmp events


def abandoned(cart_id: str | None = "c-9", quantity: int = 2) -> AbandonedCart:
    cart = Cart(
        id=9,
        store_id=1,
        cart_id=cart_id,
        currency="USD",
        status="abandoned",
        created_at=NOW - dt.timedelta(hours=3),
        last_activity_at=NOW - dt.timedelta(hours=2),
    )
    items = (CartItem(product_id="sku-1", name="Shirt", sku="S-1", price_cents=2000, quantity=quantity),)
    return AbandonedCart(cart, items, contact(1))


def test_an_abandoned_cart_is_an_ecom_order_updated_on_resend_and_converted_by_the_order(
    sandbox: ActiveCampaignSandbox,
) -> None:
    adapter = adapter_for(sandbox)
    outcome = adapter.send_carts([abandoned()])
    assert not outcome.failed and not outcome.rejected
    [cart] = sandbox.ecom_orders.values()
    assert cart["externalcheckoutid"] == "c-9" and cart["externalid"] is None
    assert cart["abandonedDate"] == (NOW - dt.timedelta(hours=2)).isoformat() and cart["totalPrice"] == 4000
    assert cart["source"] == "1"
    # sent again (a fresh adapter: no cache) → the same cart updated
    adapter2 = adapter_for(sandbox)
    assert not adapter2.send_carts([abandoned(quantity=3)]).rejected
    [cart] = sandbox.ecom_orders.values()
    assert cart["totalPrice"] == 6000 and requests(sandbox, "update_ecom_order")
    # the order naming the checkout converts it
    adapter.send_events([TrackedEvent(order_event("m1", cart_id="c-9"), contact(1))])
    [order] = sandbox.ecom_orders.values()
    assert order["externalid"] == "o-1" and order["abandonedDate"] is None and order["abandoned_cart_converted"]
    # no cart id at the store: cart-<our id>
    adapter.send_carts([abandoned(cart_id=None)])
    assert {o["externalcheckoutid"] for o in sandbox.ecom_orders.values()} == {"c-9", "cart-9"}


# --- erasure and segments -------------------------------------------------------------------------------------------


def test_erase_deletes_and_a_missing_contact_is_done(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    adapter.upsert_profiles([contact(1), contact(2)], bulk=False)
    outcome = adapter.erase([contact(1), contact(3), contact(4, email=None)])
    assert not outcome.failed and not outcome.rejected and outcome.skipped.keys() == {2}
    assert {c["email"] for c in sandbox.contacts.values()} == {"p2@example.com"}
    assert len(requests(sandbox, "delete_contact")) == 1


def test_mirror_segment_as_tags(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox)
    adapter.upsert_profiles([contact(1), contact(2)], bulk=False)
    outcome = adapter.mirror_segment("VIP", [contact(1), contact(2), contact(3)], [])
    assert outcome.skipped == {2: "not in ActiveCampaign yet"} and not outcome.failed
    [tag] = sandbox.tags.values()
    assert tag["tag"] == "espbridge: VIP" and len(sandbox.contact_tags) == 2
    outcome = adapter.mirror_segment("VIP", [], [contact(1)])
    assert not outcome.failed and not outcome.rejected
    ada = sandbox.contact_by_email("p1@example.com")["id"]  # type: ignore[index]
    assert [ct["contact"] for ct in sandbox.contact_tags.values()] != [] and all(
        ct["contact"] != ada for ct in sandbox.contact_tags.values()
    )
    assert len(requests(sandbox, "create_tag")) == 1 and len(requests(sandbox, "list_tags")) == 1


def test_mirror_segment_as_lists_adds_only_subscribed(sandbox: ActiveCampaignSandbox) -> None:
    adapter = adapter_for(sandbox, segment_mirror="lists")
    adapter.upsert_profiles([contact(1), contact(2)], bulk=False)
    outcome = adapter.mirror_segment("Big spenders", [contact(1), contact(2)], [], subscribed={1})
    assert set(outcome.skipped) == {1}
    [segment_list] = [row for row in sandbox.lists.values() if row["name"] == "espbridge: Big spenders"]
    assert (membership(sandbox, "p1@example.com", segment_list["id"]) or {})["status"] == "1"
    assert membership(sandbox, "p2@example.com", segment_list["id"]) is None


# --- the client and settings ----------------------------------------------------------------------------------------


def test_client_tags_fields_and_import_status(sandbox: ActiveCampaignSandbox) -> None:
    client = client_for(sandbox)
    cid = client.sync_contact(AcContact(email="a@example.com"))
    tag = client.create_tag("t1")
    assert client.find_tag("T1") == tag and client.find_tag("nope") is None
    ct = client.add_contact_tag(cid, tag)
    assert client.contact_tags(cid) == [(ct, tag)]
    assert client.remove_contact_tag(ct) and not client.remove_contact_tag(ct)
    field = client.create_field("Color")
    client.set_field_value(cid, field, "blue")
    assert client.fields() == {"Color": field}
    assert "recentlyCompleted" in client.bulk_import_status()
    assert client.delete_contact(cid) and not client.delete_contact(cid)
    assert client.find_contact("a@example.com") is None


def test_settings_are_checked() -> None:
    check_settings(
        "activecampaign",
        {"list_id": 3, "sms_list_id": "4", "actid": 1000000, "track_url": "https://trackcmp.net/event",
         "field_map": {"plan": "Plan"}, "segment_mirror": "lists", "full_sync_method": "contact_sync",
         "ecom_connection": "Shop", "timeout": 5},
    )  # fmt: skip
    for key, value in [
        ("list_id", "abc"),
        ("list_id", True),
        ("actid", -1),
        ("track_url", "trackcmp.net"),
        ("field_map", ["Plan"]),
        ("field_map", {"plan": ""}),
        ("segment_mirror", "segments"),
        ("full_sync_method", "fast"),
        ("ecom_connection", ""),
        ("unknown", 1),
    ]:
        with pytest.raises(InvalidInput) as caught:
            check_settings("activecampaign", {key: value})
        assert key in caught.value.field or caught.value.field == "setting"


class CreatedMeanwhile(httpx.BaseTransport):
    """The sandbox, where another worker's create lands just after our first look (the race of two first orders):
    the first list of connections and of customers is answered empty."""

    def __init__(self, sandbox: ActiveCampaignSandbox) -> None:
        self.inner = httpx.WSGITransport(app=sandbox)
        self.hidden = {"/api/3/connections": True, "/api/3/ecomCustomers": True}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and self.hidden.get(request.url.path):
            self.hidden[request.url.path] = False
            key = "connections" if request.url.path.endswith("connections") else "ecomCustomers"
            return httpx.Response(200, json={key: [], "meta": {"total": "0"}}, request=request)
        return self.inner.handle_request(request)


def test_a_connection_and_customer_created_meanwhile_by_another_worker_are_used_not_refused(
    sandbox: ActiveCampaignSandbox,
) -> None:
    # Another worker already made the Deep Data connection and customer; our first look misses them
    adapter_for(sandbox).send_events([TrackedEvent(order_event("m0"), contact(1))])
    racing = client_for(sandbox, transport=CreatedMeanwhile(sandbox))
    second = track("Order Completed", "m1", order_id="o-2", total=5, products=[{"product_id": "sku-2", "price": 5}])
    outcome = adapter_for(sandbox, client=racing).send_events([TrackedEvent(second, contact(1))])
    # Then the duplicate answer to our create means "look again": the order goes, nothing is rejected
    assert not outcome.rejected and not outcome.failed
    assert len(sandbox.connections) == 1 and len(sandbox.ecom_customers) == 1 and len(sandbox.ecom_orders) == 2
