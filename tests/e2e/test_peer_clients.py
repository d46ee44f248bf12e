"""Independent Segment-protocol clients talk to a real ``espbridge serve`` by changing only the host.

Segment's analytics-python (plain JSON) and RudderStack's rudder-sdk-python (gzip, traits of identify in
``context.traits``) each send identify, track, page, group and alias. Every message must be stored with its
content, projected into the contact it is about, and a resend of a messageId must change nothing.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from connector.store import Database, Event
from connector.tenancy import NewStore

from .processes import ServiceProcess, wait_until

pytestmark = pytest.mark.slow

PROJECTION_TIMEOUT = 30.0

PRODUCT = {
    "product_id": "sku-42",
    "name": "Linen shirt",
    "price": 19.99,
    "currency": "EUR",
    "quantity": 1,
    "variant": {"size": "M", "colour": {"name": "sea blue", "hex": "#1b6ca8"}},
    "tags": ["summer", "linen"],
}
PAGE = {"url": "https://shop.example/p/sku-42", "title": "Linen shirt", "referrer": "https://search.example/"}
GROUP_TRAITS = {"name": "Acme GmbH", "employees": 42, "address": {"city": "Berlin"}}


def _segment(write_key: str, host: str, on_error: Callable[..., None]) -> Any:
    return SegmentClient(write_key, host=host, on_error=on_error, max_retries=1, timeout=10, upload_interval=0.1)


def _rudderstack(write_key: str, host: str, on_error: Callable[..., None]) -> Any:
    # rudder-sdk-python 2.1.9: the data plane URL is the ``host`` argument; it gzips by default.
    return RudderClient(write_key, host=host, on_error=on_error, max_retries=1, timeout=10, upload_interval=0.1)


CLIENTS = {"segment": _segment, "rudderstack": _rudderstack}


@pytest.mark.parametrize("library", sorted(CLIENTS))
def test_peer_client_messages_are_stored_projected_and_deduplicated(
    library: str,
    serve: ServiceProcess,
    store: NewStore,
    db: Database,
    admin_token: Callable[..., str],
) -> None:
    errors: list[tuple[Exception, list[dict[str, Any]]]] = []
    client = CLIENTS[library](store.write_key, serve.url, lambda exc, batch: errors.append((exc, batch)))
    run = uuid.uuid4().hex[:8]
    user_id, anonymous_id = f"{library}-user-{run}", f"{library}-anon-{run}"
    ids = {kind: f"{library}-{kind}-{run}" for kind in ("identify", "track", "page", "group", "alias")}
    email = f"Ann.{library}@Example.COM"
    try:
        # Given a storefront instrumented with the peer library, pointed at espbridge
        # When it sends one message of each kind
        client.identify(
            user_id=user_id,
            traits={"email": email, "first_name": "Ann", "loyalty": {"tier": "gold", "points": 120.5}},
            message_id=ids["identify"],
        )
        client.track(user_id=user_id, event="Product Viewed", properties=PRODUCT, message_id=ids["track"])
        client.page(user_id=user_id, category="Shop", name="Product", properties=PAGE, message_id=ids["page"])
        client.group(user_id=user_id, group_id="acme", traits=GROUP_TRAITS, message_id=ids["group"])
        client.alias(previous_id=anonymous_id, user_id=user_id, message_id=ids["alias"])
        client.flush()
        # Then the library saw every batch accepted
        assert errors == []

        # And every message is stored with its content
        events = _events(db, store.id)
        assert set(events) == set(ids.values())
        assert {events[m].type for m in ids.values()} == {"identify", "track", "page", "group", "alias"}
        assert all(event.user_id == user_id for event in events.values())
        track = events[ids["track"]]
        assert (track.name, track.payload["event"], track.payload["properties"]) == (
            "Product Viewed",
            "Product Viewed",
            PRODUCT,
        )
        assert isinstance(track.payload["properties"]["price"], float)
        page = events[ids["page"]]
        assert (page.name, page.payload["category"], page.payload["properties"]) == ("Product", "Shop", PAGE)
        group = events[ids["group"]]
        assert (group.payload["groupId"], group.payload["traits"]) == ("acme", GROUP_TRAITS)
        assert events[ids["alias"]].payload["previousId"] == anonymous_id
        assert events[ids["identify"]].payload["context"]["library"]["name"] == "analytics-python"

        # And projection turns them into one contact holding the identify traits and the aliased id
        wait_until(
            lambda: _all_projected(db, store.id, len(ids)), timeout=PROJECTION_TIMEOUT, what="projection of events"
        )
        assert all(event.projection_error is None for event in _events(db, store.id).values())
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {admin_token()}"}) as admin:
            contact = _contact(admin, user_id)
            assert (contact["email"], contact["first_name"], contact["user_id"]) == (email.lower(), "Ann", user_id)
            assert contact["properties"]["loyalty"] == {"tier": "gold", "points": 120.5}
            assert {"kind": "anonymous_id", "value": anonymous_id} in contact["identities"]
            assert contact["events"]["count"] == len(ids)

            # When the storefront sends messageIds again (a retry), even with other content
            before = _events(db, store.id)
            client.track(
                user_id=user_id,
                event="Product Viewed",
                properties={**PRODUCT, "price": 1.5, "variant": {"size": "XL"}},
                message_id=ids["track"],
            )
            client.identify(
                user_id=user_id, traits={"email": email, "first_name": "Changed"}, message_id=ids["identify"]
            )
            client.flush()
            # Then they are acknowledged and nothing changes: no new event, no payload rewritten, no re-projection
            assert errors == []
            after = _events(db, store.id)
            assert set(after) == set(before)
            assert {m: (e.id, e.payload, e.projected_at) for m, e in after.items()} == {
                m: (e.id, e.payload, e.projected_at) for m, e in before.items()
            }
            assert after[ids["track"]].payload["properties"] == PRODUCT
            assert _duplicate_counts(db, store.id) == {}
            assert _contact(admin, user_id)["first_name"] == "Ann"
    finally:
        client.shutdown()


def _events(db: Database, store_id: int) -> dict[str, Event]:
    with db.reader() as session:
        rows = session.scalars(sa.select(Event).where(Event.store_id == store_id)).all()
    events = {row.message_id: row for row in rows}
    assert len(events) == len(rows)
    return {message_id: copy.copy(event) for message_id, event in events.items()}


def _all_projected(db: Database, store_id: int, expected: int) -> bool:
    with db.reader() as session:
        projected = session.scalar(
            sa.select(sa.func.count(Event.id)).where(Event.store_id == store_id, Event.projected_at.is_not(None))
        )
    return projected == expected


def _duplicate_counts(db: Database, store_id: int) -> dict[str, int]:
    with db.reader() as session:
        rows = session.execute(
            sa.select(Event.message_id, sa.func.count(Event.id))
            .where(Event.store_id == store_id)
            .group_by(Event.message_id)
            .having(sa.func.count(Event.id) > 1)
        ).all()
    return {message_id: count for message_id, count in rows}


def _contact(admin: httpx.Client, user_id: str) -> dict[str, Any]:
    found = admin.get("/admin/api/contacts", params={"user_id": user_id})
    assert found.status_code == 200, found.text
    contacts = found.json()["contacts"]
    assert len(contacts) == 1, contacts
    detail = admin.get(f"/admin/api/contacts/{contacts[0]['id']}")
    assert detail.status_code == 200, detail.text
    result: dict[str, Any] = detail.json()
    return result
