"""Incremental membership end to end: an order or consent change ingested through the API reaches the store's
segments (members + entered/exited changes) through the runtime's own projection, relay and outbox jobs."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.runtime import Runtime
from connector.segments import evaluate
from connector.store.contacts import Contact
from connector.store.db import Database
from connector.store.segments import Segment, SegmentChange, SegmentMember
from connector.tenancy import NewStore
from tests.conftest import post_messages, track

#: The must-hold: a single contact's order reaches its segments' membership in under 10 s.
LATENCY_BUDGET = 10.0


def _segment(db: Database, store_id: int, name: str, criteria: dict[str, Any]) -> int:
    """A segment with its baseline, as ``service.create_segment`` makes it: the incremental path skips any other."""
    with db.writer() as s:
        seg = Segment(store_id=store_id, name=name, criteria=criteria)
        s.add(seg)
        s.flush()
        segment_id = seg.id
    evaluate(db, store_id, segment_id)
    return segment_id


def _changes(db: Database, store_id: int) -> list[tuple[str, str, str | None]]:
    with db.reader() as s:
        rows = s.execute(
            sa.select(Segment.name, SegmentChange.change, Contact.external_id)
            .join(Segment, Segment.id == SegmentChange.segment_id)
            .join(Contact, Contact.id == SegmentChange.contact_id)
            .where(SegmentChange.store_id == store_id)
            .order_by(SegmentChange.id)
        )
        return [(name, change, ext) for name, change, ext in rows]


def _member(db: Database, segment_id: int, external_id: str) -> bool:
    with db.reader() as s:
        found = s.scalar(
            sa.select(sa.func.count())
            .select_from(SegmentMember)
            .join(Contact, Contact.id == SegmentMember.contact_id)
            .where(SegmentMember.segment_id == segment_id, Contact.external_id == external_id)
        )
        return bool(found)


def _wait(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_an_order_then_an_unsubscribe_move_the_contact_through_the_right_segments(
    runtime: Runtime, client: FlaskClient, db: Database, store: NewStore
) -> None:
    buyers = _segment(db, store.id, "Buyers", {"orders.count": {"gte": 1}})
    big = _segment(db, store.id, "Big spenders", {"orders.revenue": {"gte": 100}})
    browsers = _segment(db, store.id, "Never ordered", {"orders.count": 0})
    _segment(db, store.id, "Subscribed", {"consent.email": "subscribed"})
    runtime.start_background()

    identify = {"type": "identify", "messageId": "i1", "userId": "cus_1", "traits": {"email": "ann@example.com"}}
    consent = track("Consent Updated", "c1", "cus_1", channel="email", status="subscribed", method="form")
    assert post_messages(client, store.write_key, [identify, consent]).status_code == 200
    _wait(lambda: _member(db, browsers, "cus_1"), LATENCY_BUDGET)

    start = time.monotonic()
    order = track("Order Completed", "o1", "cus_1", order_id="A-1", total=59.97, products=[{"product_id": "p1"}])
    assert post_messages(client, store.write_key, [order]).status_code == 200
    _wait(lambda: _member(db, buyers, "cus_1") and not _member(db, browsers, "cus_1"), LATENCY_BUDGET)
    latency = time.monotonic() - start
    print(f"order → segment membership: {latency * 1000:.0f} ms")
    assert latency < LATENCY_BUDGET
    assert not _member(db, big, "cus_1")

    unsubscribe = track("Consent Updated", "c2", "cus_1", channel="email", status="unsubscribed", method="link")
    assert post_messages(client, store.write_key, [unsubscribe]).status_code == 200
    _wait(lambda: not _member(db, buyers, "cus_1"), LATENCY_BUDGET)
    time.sleep(0.3)  # any stray re-evaluation would record more changes than the ones below

    # This test's segments (the relay's nightly job may evaluate them in full meanwhile: a diff against the same
    # members, so each change is still recorded once, by whichever path sees it first);
    # per segment, in order (worker threads evaluate different outbox rows concurrently, so segments interleave).
    per_segment: dict[str, list[str]] = {}
    for name, change, external_id in _changes(db, store.id):
        assert external_id == "cus_1"
        per_segment.setdefault(name, []).append(change)
    assert {k: v for k, v in per_segment.items() if k in {"Buyers", "Big spenders", "Never ordered", "Subscribed"}} == {
        "Never ordered": ["entered", "exited"],
        "Subscribed": ["entered", "exited"],  # by its own criteria
        "Buyers": ["entered", "exited"],  # unsubscribed on email: out of the marketing audiences
    }
