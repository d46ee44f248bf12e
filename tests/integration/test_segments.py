"""Segment criteria, compiler and membership on SQLite and PostgreSQL (DESIGN.md section 9)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from connector.errors import InvalidInput
from connector.segments import compile_criteria, evaluate, evaluate_all, install_prebuilt, parse
from connector.store.commerce import Cart, Order, OrderItem, WaitlistEntry
from connector.store.consent import ConsentLedgerEntry, ConsentState
from connector.store.contacts import Contact
from connector.store.db import Database
from connector.store.events import Event
from connector.store.rfm import ContactLifecycle, RfmRun, RfmScore
from connector.store.segments import Segment, SegmentChange, SegmentCount, SegmentMember
from connector.store.sync import Engagement
from connector.tenancy import NewStore, create_store

NOW = dt.datetime(2026, 6, 30, 12, tzinfo=dt.UTC)


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


class World:
    """A small store: named contacts with orders, events, consent, RFM and lifecycle rows."""

    def __init__(self, db: Database, store_id: int) -> None:
        self.db, self.store_id = db, store_id
        self.ids: dict[str, int] = {}
        self._n = 0

    def contact(self, name: str, **fields: Any) -> int:
        with self.db.writer() as s:
            c = Contact(store_id=self.store_id, email=f"{name}@example.com", first_name=name, **fields)
            s.add(c)
            s.flush()
            self.ids[name] = c.id
            return c.id

    def order(
        self,
        name: str,
        days_ago: float,
        cents: int,
        *items: tuple[str, str],
        coupon: str | None = None,
        status: str = "completed",
    ) -> None:
        with self.db.writer() as s:
            self._n += 1
            o = Order(
                store_id=self.store_id,
                order_id=f"o{self._n}",
                contact_id=self.ids[name],
                status=status,
                revenue_cents=cents,
                total_cents=cents,
                refunded_cents=0,
                coupon=coupon,
                placed_at=ago(days_ago),
            )
            s.add(o)
            s.flush()
            for product, category in items:
                s.add(OrderItem(store_id=self.store_id, order_ref=o.id, product_id=product, category=category))

    def event(self, name: str, event: str, days_ago: float, times: int = 1) -> None:
        with self.db.writer() as s:
            for _ in range(times):
                self._n += 1
                s.add(
                    Event(
                        store_id=self.store_id,
                        message_id=f"m{self._n}",
                        type="track",
                        name=event,
                        contact_id=self.ids[name],
                        timestamp=ago(days_ago),
                        received_at=ago(days_ago),
                        payload={},
                    )
                )

    def consent(self, name: str, channel: str, status: str) -> None:
        with self.db.writer() as s:
            self._n += 1
            entry = ConsentLedgerEntry(
                store_id=self.store_id,
                seq=self._n,
                contact_id=self.ids[name],
                channel=channel,
                action=status,
                status_after=status,
                occurred_at=NOW,
                prev_hash="0" * 64,
                entry_hash=f"{self._n:064d}",
            )
            s.add(entry)
            s.flush()
            state = s.get(ConsentState, (self.ids[name], channel))
            if state is None:
                s.add(
                    ConsentState(
                        store_id=self.store_id,
                        contact_id=self.ids[name],
                        channel=channel,
                        status=status,
                        occurred_at=NOW,
                        ledger_entry_id=entry.id,
                    )
                )
            else:
                state.status, state.ledger_entry_id = status, entry.id

    def rfm(self, scores: dict[str, tuple[int, int, int, str]]) -> None:
        with self.db.writer() as s:
            run = RfmRun(store_id=self.store_id, as_of=NOW.date(), window_days=365, method="fixed")
            s.add(run)
            s.flush()
            for name, (r, f, m, group) in scores.items():
                s.add(
                    RfmScore(
                        store_id=self.store_id,
                        run_id=run.id,
                        contact_id=self.ids[name],
                        recency_days=r * 10,
                        frequency=f,
                        monetary_cents=m * 1000,
                        r=r,
                        f=f,
                        m=m,
                        composite=4 * r + 3 * f + 3 * m,
                        group=group,
                    )
                )

    def lifecycle(self, name: str, stage: str, risk: str) -> None:
        with self.db.writer() as s:
            s.add(
                ContactLifecycle(
                    store_id=self.store_id, contact_id=self.ids[name], stage=stage, churn_risk=Decimal(risk)
                )
            )

    def match(self, criteria: dict[str, Any], *, marketing: bool = True) -> set[str]:
        query = compile_criteria(self.store_id, parse(criteria), marketing=marketing, now=NOW)
        with self.db.reader() as s:
            found = set(s.scalars(query))
        return {name for name, cid in self.ids.items() if cid in found}


@pytest.fixture
def world(db: Database, store: NewStore) -> World:
    w = World(db, store.id)
    w.contact("ann", properties={"city": "Paris", "vip": True, "age": 34}, locale="fr-FR")
    w.contact("bob", properties={"city": "Berlin", "age": 51}, created_at=ago(400))
    w.contact("cy", properties={}, last_seen_at=ago(2))
    w.contact("dee")
    w.order("ann", 3, 5000, ("p1", "Shoes"), ("p2", "Accessories"), coupon="SPRING")
    w.order("ann", 50, 3000, ("p3", "Shoes"))
    w.order("bob", 60, 10000, ("p1", "Shoes"))
    w.order("bob", 100, 2000, ("p4", "Accessories"), coupon="X")
    w.order("bob", 200, 999, ("p5", "Books"), status="cancelled")
    w.order("cy", 10, 1500, ("p5", "Books"))
    w.event("dee", "Product Viewed", 1, times=20)
    w.event("cy", "Product Viewed", 2, times=5)
    w.event("cy", "Product Viewed", 30, times=30)
    w.consent("ann", "email", "subscribed")
    w.consent("cy", "sms", "subscribed")
    w.rfm({"ann": (5, 4, 5, "VIP"), "bob": (3, 3, 4, "Loyal"), "cy": (2, 1, 1, "Hibernating")})
    w.lifecycle("ann", "active", "0.100")
    w.lifecycle("bob", "active", "0.800")
    w.lifecycle("cy", "new", "0.300")
    return w


CASES: list[tuple[dict[str, Any], set[str]]] = [
    # contact fields and properties; every operator
    ({"first_name": "ann"}, {"ann"}),
    ({"first_name": {"ne": "ann"}}, {"bob", "cy", "dee"}),
    ({"locale": {"exists": True}}, {"ann"}),
    ({"locale": {"exists": False}}, {"bob", "cy", "dee"}),
    ({"email": {"contains": "@example"}}, {"ann", "bob", "cy", "dee"}),
    ({"email": {"contains": "b"}}, {"bob"}),
    ({"email": {"contains": "B"}}, {"bob"}),  # case-insensitive on both databases
    ({"email": {"contains": "_"}}, set()),  # a wildcard in LIKE: matches itself here
    ({"first_name": {"in": ["ann", "cy"]}}, {"ann", "cy"}),
    ({"first_name": {"nin": ["ann", "cy"]}}, {"bob", "dee"}),
    ({"created_at": {"lt": "2026-01-01"}}, {"bob"}),
    ({"last_seen_at": {"within_last_days": 7}}, {"cy"}),
    ({"properties.city": "Paris"}, {"ann"}),
    ({"properties.city": {"in": ["Paris", "Berlin"]}}, {"ann", "bob"}),
    ({"properties.age": {"gt": 40}}, {"bob"}),
    ({"properties.age": {"between": [30, 40]}}, {"ann"}),
    ({"properties.age": {"lte": 34}}, {"ann"}),
    ({"properties.age": {"gte": 34, "lt": 51}}, {"ann"}),
    ({"properties.vip": True}, {"ann"}),
    ({"properties.city": {"exists": False}}, {"cy", "dee"}),
    # consent
    ({"consent.email": "subscribed"}, {"ann"}),
    ({"consent.sms": {"ne": "subscribed"}}, {"ann", "bob", "dee"}),
    ({"consent.email": "none"}, {"bob", "cy", "dee"}),
    # rfm (latest run) and lifecycle
    ({"rfm.composite": {"gte": 38}}, {"ann"}),
    ({"rfm.group": "Loyal"}, {"bob"}),
    ({"rfm.r": {"lte": 3}}, {"bob", "cy"}),
    ({"rfm.f": 1}, {"cy"}),
    ({"rfm.m": {"gte": 4}}, {"ann", "bob"}),
    ({"rfm.recency": {"lt": 30}}, {"cy"}),
    ({"rfm.frequency": {"gte": 3}}, {"ann", "bob"}),
    ({"rfm.monetary": {"gte": 40}}, {"ann", "bob"}),
    ({"lifecycle.stage": "active"}, {"ann", "bob"}),
    ({"lifecycle.churn_risk": {"gte": 0.5}}, {"bob"}),
    # order aggregates (the cancelled order does not count)
    ({"orders.count": 2}, {"ann", "bob"}),
    ({"orders.count": 0}, {"dee"}),
    ({"orders.revenue": {"gt": 100}}, {"bob"}),
    ({"orders.aov": {"between": [40, 60]}}, {"ann", "bob"}),
    ({"days_since_last_order": {"gte": 45}}, {"bob"}),
    ({"days_since_last_order": {"lt": 10}}, {"ann"}),
    ({"days_since_last_order": 10}, {"cy"}),
    ({"days_since_first_order": {"lte": 14}}, {"cy"}),
    ({"days_since_first_order": {"exists": False}}, {"dee"}),
    # events
    ({"events": {"name": "Product Viewed", "within_days": 7, "count": {"gte": 20}}}, {"dee"}),
    ({"events": {"name": "Product Viewed", "count": {"gte": 20}}}, {"dee", "cy"}),
    ({"events": {"name": "Product Viewed"}}, {"dee", "cy"}),
    ({"events": {"name": "Product Viewed", "within_days": 7, "count": 0}}, {"ann", "bob"}),
    # products, categories, promotions
    ({"products.purchased": "p1"}, {"ann", "bob"}),
    ({"products.purchased": ["p3", "p5"]}, {"ann", "cy"}),
    ({"products.not_purchased": ["p1"]}, {"cy", "dee"}),
    ({"categories.purchased": {"in": ["Books"]}}, {"cy"}),
    ({"categories.last_order_missing": ["Accessories"]}, {"bob", "cy"}),
    ({"promotions.redeemed_ratio": {"gte": 0.5}}, {"ann", "bob"}),
    # boolean structure
    ({"any": [{"first_name": "ann"}, {"first_name": "bob"}]}, {"ann", "bob"}),
    ({"all": [{"orders.count": {"gte": 1}}, {"not": {"rfm.group": "VIP"}}]}, {"bob", "cy"}),
    ({"not": {"rfm.group": "VIP"}}, {"bob", "cy", "dee"}),
]


@pytest.mark.parametrize(("criteria", "expected"), CASES, ids=[str(c) for c, _ in CASES])
def test_operator_and_field_families(world: World, criteria: dict[str, Any], expected: set[str]) -> None:
    assert world.match(criteria) == expected


def test_engagement_waitlists_and_carts(world: World) -> None:
    with world.db.writer() as s:
        sid = world.store_id
        s.add(
            Engagement(
                store_id=sid,
                esp="klaviyo",
                esp_event_id="e1",
                kind="opened",
                contact_id=world.ids["ann"],
                occurred_at=ago(3),
            )
        )
        s.add(
            Engagement(
                store_id=sid,
                esp="klaviyo",
                esp_event_id="e2",
                kind="clicked",
                contact_id=world.ids["bob"],
                occurred_at=ago(40),
            )
        )
        s.add(WaitlistEntry(store_id=sid, contact_id=world.ids["cy"], product_id="p9", joined_at=ago(1)))
        s.add(Cart(store_id=sid, contact_id=world.ids["dee"], status="abandoned", last_activity_at=ago(2)))
    assert world.match({"engagement.opened_within_days": 7}) == {"ann"}
    assert world.match({"engagement.clicked_within_days": 30}) == set()
    assert world.match({"engagement.clicked_within_days": 60}) == {"bob"}
    assert world.match({"waitlists.active": True}) == {"cy"}
    assert world.match({"waitlists.active": False}) == {"ann", "bob", "dee"}
    assert world.match({"carts.abandoned_within_days": 7}) == {"dee"}


def test_seed_examples_as_written(world: World) -> None:
    assert world.match({"rfm.composite": {"gte": 38}}) == {"ann"}
    assert world.match({"lifecycle.stage": "active", "days_since_last_order": {"gte": 45}}) == {"bob"}
    assert world.match({"orders.count": {"lte": 1}, "days_since_first_order": {"lte": 14}}) == {"cy"}
    assert world.match({"promotions.redeemed_ratio": {"gte": 0.5}}) == {"ann", "bob"}
    assert world.match({"categories.last_order_missing": ["Accessories"]}) == {"bob", "cy"}


def test_unsubscribed_excluded_unless_criteria_ask_for_consent(world: World) -> None:
    world.consent("bob", "email", "unsubscribed")
    assert world.match({"orders.count": {"gte": 1}}) == {"ann", "cy"}
    assert world.match({"orders.count": {"gte": 1}}, marketing=False) == {"ann", "bob", "cy"}
    assert world.match({"consent.email": "unsubscribed"}) == {"bob"}


def test_dead_contacts_and_other_stores_are_never_members(world: World, db: Database, other_store: NewStore) -> None:
    with db.writer() as s:
        s.get_one(Contact, world.ids["ann"]).suppressed_at = NOW
        s.get_one(Contact, world.ids["bob"]).erased_at = NOW
        s.add(Contact(store_id=other_store.id, email="x@example.com", first_name="cy"))
    assert world.match({"orders.count": {"gte": 0}}) == {"cy", "dee"}
    with db.reader() as s:
        assert len(list(s.scalars(compile_criteria(world.store_id, parse({"first_name": "cy"}), now=NOW)))) == 1


INVALID: list[tuple[Any, str]] = [
    ([], "criteria: expected an object, got list"),
    ({}, "criteria: expected at least one condition"),
    ({"colour": "red"}, "colour: unknown field 'colour'"),
    ({"all": [{"orders.count": {"gte": "x"}}]}, "all[0].orders.count.gte: expected a number, got str"),
    ({"any": []}, "any: expected a non-empty list of conditions"),
    (
        {"orders.count": {"like": 3}},
        "orders.count.like: unknown operator 'like' (one of eq, ne, gt, gte, lt, lte, in, "
        "nin, contains, exists, between, within_last_days)",
    ),
    (
        {"orders.count": {"contains": "3"}},
        "orders.count.contains: operator 'contains' does not apply to a number field",
    ),
    ({"orders.count": {"between": [5, 1]}}, "orders.count.between: the low bound is greater than the high bound"),
    ({"orders.count": {"between": [1]}}, "orders.count.between: expected a list of two bounds [low, high]"),
    ({"orders.count": {"in": []}}, "orders.count.in: expected a non-empty list"),
    ({"first_name": {"in": ["a", 1]}}, "first_name.in[1]: expected a string, got int"),
    ({"orders.count": {"exists": "yes"}}, "orders.count.exists: expected true or false"),
    ({"orders.count": {}}, "orders.count: expected at least one operator"),
    ({"consent.fax": "subscribed"}, "consent.fax: unknown consent channel 'fax' (one of email, sms, push, whatsapp)"),
    ({"properties.": 1}, "properties.: a property name is needed after 'properties.'"),
    ({"properties.x": {"eq": [1]}}, "properties.x.eq: expected a string, number or boolean"),
    ({"created_at": {"gt": "yesterday"}}, "created_at.gt: not an ISO 8601 date or datetime: 'yesterday'"),
    ({"not": {"events": {"within_days": 7}}}, "not.events.name: expected a non-empty event name"),
    ({"events": {"name": "X", "within_days": 0}}, "events.within_days: expected a whole number of days > 0"),
    ({"events": {"name": "X", "when": 1}}, "events.when: unknown key (expected name, within_days, count)"),
    ({"events": {"name": "X", "count": {"gte": True}}}, "events.count.gte: expected a number, got bool"),
    (
        {"categories.last_order_missing": []},
        "categories.last_order_missing: expected a non-empty string or a non-empty list of non-empty strings",
    ),
    ({"waitlists.active": "yes"}, "waitlists.active: expected true or false"),
    ({"engagement.opened_within_days": -1}, "engagement.opened_within_days: expected a number of days ≥ 0"),
    ({"last_seen_at": {"within_last_days": "7"}}, "last_seen_at.within_last_days: expected a number of days ≥ 0"),
]


@pytest.mark.parametrize(("criteria", "message"), INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_invalid_criteria_name_the_path_and_why(criteria: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse(criteria)
    assert str(caught.value) == message


def _segment(db: Database, store_id: int, name: str, criteria: dict[str, Any]) -> int:
    with db.writer() as s:
        seg = Segment(store_id=store_id, name=name, criteria=criteria)
        s.add(seg)
        s.flush()
        return seg.id


def _members(db: Database, segment_id: int) -> set[int]:
    with db.reader() as s:
        return set(s.scalars(sa.select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment_id)))


def _changes(db: Database, segment_id: int) -> list[tuple[int, str]]:
    with db.reader() as s:
        rows = s.execute(
            sa.select(SegmentChange.contact_id, SegmentChange.change)
            .where(SegmentChange.segment_id == segment_id)
            .order_by(SegmentChange.id)
        )
        return [(cid, change) for cid, change in rows]


def test_membership_diff_changes_and_daily_counts(world: World, db: Database) -> None:
    seg = _segment(db, world.store_id, "Buyers", {"orders.count": {"gte": 1}})
    first = evaluate(db, world.store_id, seg, now=NOW)
    ids = world.ids
    # The first evaluation is the segment's baseline: members, but no entered changes (nobody entered anything).
    assert (first.members, first.entered, first.exited) == (3, 0, 0)
    assert _members(db, seg) == {ids["ann"], ids["bob"], ids["cy"]}
    again = evaluate(db, world.store_id, seg, now=NOW)
    assert (again.entered, again.exited) == (0, 0)  # re-evaluating unchanged data records nothing
    world.order("dee", 0, 100)
    world.consent("bob", "email", "unsubscribed")
    # Restricted to one contact: only that contact moves, even though bob changed too.
    only_dee = evaluate(db, world.store_id, seg, contact_ids=[ids["dee"]], now=NOW)
    assert (only_dee.members, only_dee.entered, only_dee.exited) == (4, 1, 0)
    full = evaluate(db, world.store_id, seg, now=NOW + dt.timedelta(days=1))
    assert (full.members, full.entered, full.exited) == (3, 0, 1)
    assert sorted(_changes(db, seg)) == sorted(
        [
            (ids["dee"], "entered"),
            (ids["bob"], "exited"),
        ]
    )
    with db.reader() as s:
        rows = s.execute(sa.select(SegmentCount.day, SegmentCount.members).where(SegmentCount.segment_id == seg))
        counts = {day: members for day, members in rows}
        assert counts == {NOW.date(): 4, NOW.date() + dt.timedelta(days=1): 3}
        assert s.get_one(Segment, seg).member_count == 3


def test_the_incremental_path_waits_for_a_segments_baseline(world: World, db: Database) -> None:
    seg = _segment(db, world.store_id, "Buyers", {"orders.count": {"gte": 1}})
    ids = world.ids
    # Never evaluated in full: a change to one contact records nothing (it would be an "entered" that the baseline
    # then leaves everyone else without).
    early = evaluate(db, world.store_id, seg, contact_ids=[ids["ann"]], now=NOW)
    assert (early.members, early.entered, early.exited) == (0, 0, 0)
    assert _members(db, seg) == set() and _changes(db, seg) == []
    baseline = evaluate(db, world.store_id, seg, now=NOW)
    assert (baseline.members, baseline.entered) == (3, 0)
    world.order("dee", 0, 100)
    later = evaluate(db, world.store_id, seg, contact_ids=[ids["dee"]], now=NOW)
    assert (later.members, later.entered) == (4, 1)
    assert _changes(db, seg) == [(ids["dee"], "entered")]


@pytest.mark.parametrize(
    ("timezone", "at", "local_day"),
    [
        # 11:00 UTC on 30 June is 01:00 on 1 July at UTC+14.
        ("Pacific/Kiritimati", dt.datetime(2026, 6, 30, 11, tzinfo=dt.UTC), dt.date(2026, 7, 1)),
        # 05:00 UTC on 1 July is 19:00 on 30 June at UTC-10.
        ("Pacific/Honolulu", dt.datetime(2026, 7, 1, 5, tzinfo=dt.UTC), dt.date(2026, 6, 30)),
    ],
)
def test_daily_counts_are_kept_per_local_day_of_the_store(
    db: Database, timezone: str, at: dt.datetime, local_day: dt.date
) -> None:
    with db.writer() as s:
        store_id = create_store(s, "Far away", timezone).id
    world = World(db, store_id)
    world.contact("ann")
    seg = _segment(db, store_id, "Never ordered", {"orders.count": 0})
    evaluate(db, store_id, seg, now=at)  # in full (the baseline), then for one contact: both count on the local day
    evaluate(db, store_id, seg, contact_ids=[world.ids["ann"]], now=at + dt.timedelta(minutes=1))
    with db.reader() as s:
        rows = s.execute(sa.select(SegmentCount.day, SegmentCount.members).where(SegmentCount.segment_id == seg))
        assert {day: members for day, members in rows} == {local_day: 1}


def test_prebuilt_segments(world: World, db: Database) -> None:
    results = evaluate_all(db, world.store_id, now=NOW)
    with db.reader() as s:
        segs = {seg.name: seg for seg in s.scalars(sa.select(Segment).where(Segment.store_id == world.store_id))}
    assert set(segs) == {
        "VIP",
        "Loyal",
        "At Risk",
        "Hibernating",
        "New Customers",
        "Churn Risk",
        "Window Shoppers",
        "Cart Abandoners",
    }
    assert len(results) == 8
    ids = {v: k for k, v in world.ids.items()}

    def names(seg: str) -> set[str]:
        return {ids[c] for c in _members(db, segs[seg].id)}

    assert names("VIP") == {"ann"}
    assert names("Loyal") == {"bob"}
    assert names("Hibernating") == {"cy"}
    assert names("At Risk") == set()
    assert names("New Customers") == {"cy"}
    assert names("Churn Risk") == {"bob"}
    assert names("Window Shoppers") == {"dee"}
    with db.writer() as s:
        assert install_prebuilt(s, world.store_id) == []  # idempotent
