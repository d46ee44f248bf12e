"""Lifecycle stages and churn risk (connector/lifecycle.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa

from connector.lifecycle import LifecycleConfig, compute, staged
from connector.rfm import run_snapshot
from connector.store.commerce import Order
from connector.store.contacts import Contact
from connector.store.db import Database
from connector.store.rfm import ContactLifecycle
from connector.store.sync import Engagement
from connector.tenancy import NewStore

AS_OF = dt.date(2026, 6, 30)

#: name -> (days ago of each completed order, expected stage, expected churn risk)
CASES: dict[str, tuple[list[int], str, str]] = {
    # One order 10 days ago: new; risk 10 / 90.
    "new": ([10], "new", "0.111"),
    # Orders every 10 days, last one 5 days ago: expected return bounded up to 45 days; 5 / 45.
    "active": ([5, 15, 25, 35, 45], "active", "0.111"),
    # A one-time buyer 60 days ago: past at_risk_days; 60 / 90.
    "at_risk": ([60], "at_risk", "0.667"),
    # 100 days since the last of two orders: churned and overdue (capped at 1).
    "churned": ([100, 150], "churned", "1.000"),
    # Back after 200 days: reactivated; gaps average 100 → expected bounded to 90; 3 / 90.
    "reactivated": ([3, 203], "reactivated", "0.033"),
    # Two orders 60 days apart, last 20 days ago, first 80 days ago: active; 2 * 60 = 120 → 90; 20 / 90.
    "steady": ([20, 80], "active", "0.222"),
    # Two orders at the same instant 3 days ago after one 200 days ago: the order before the last is 200 days old.
    "twin": ([3, 3, 203], "reactivated", "0.033"),
    # Two orders at the same instant: no order before the last, so no reactivation; 2 * 0 → 45; 10 / 45.
    "same_instant": ([10, 10], "new", "0.222"),
}


def _seed(db: Database, store_id: int) -> dict[str, int]:
    ids = {}
    with db.writer() as session:
        for name, (days, _, _) in CASES.items():
            contact = Contact(store_id=store_id, email=f"{name}@example.com")
            session.add(contact)
            session.flush()
            ids[name] = contact.id
            for k, ago in enumerate(days):
                at = dt.datetime.combine(AS_OF - dt.timedelta(days=ago), dt.time(12), dt.UTC)
                session.add(
                    Order(
                        store_id=store_id,
                        order_id=f"{name}-{k}",
                        contact_id=contact.id,
                        placed_at=at,
                        revenue_cents=1000,
                        total_cents=1000,
                        refunded_cents=0,
                    )
                )
            # Ignored: a cancelled order today and an order after as_of.
            for k, (status, at) in enumerate(
                [
                    ("cancelled", dt.datetime.combine(AS_OF, dt.time(9), dt.UTC)),
                    ("completed", dt.datetime.combine(AS_OF + dt.timedelta(days=2), dt.time(9), dt.UTC)),
                ]
            ):
                session.add(
                    Order(
                        store_id=store_id,
                        order_id=f"{name}-x{k}",
                        contact_id=contact.id,
                        placed_at=at,
                        status=status,
                        revenue_cents=1000,
                        total_cents=1000,
                        refunded_cents=0,
                    )
                )
        # A contact without orders gets no stage.
        session.add(Contact(store_id=store_id, email="prospect@example.com"))
    return ids


def _stages(db: Database, store_id: int) -> dict[int, tuple[str, Decimal]]:
    with db.reader() as session:
        rows = session.scalars(sa.select(ContactLifecycle).where(ContactLifecycle.store_id == store_id))
        return {r.contact_id: (r.stage, Decimal(r.churn_risk).quantize(Decimal("0.001"))) for r in rows}


def test_stages_and_churn_risk(db: Database, store: NewStore, other_store: NewStore) -> None:
    ids = _seed(db, store.id)
    _seed(db, other_store.id)
    assert compute(db, store.id, AS_OF) == len(CASES)
    got = _stages(db, store.id)
    assert got == {ids[name]: (stage, Decimal(risk)) for name, (_, stage, risk) in CASES.items()}
    assert _stages(db, other_store.id) == {}  # scoped by store
    # Recomputing replaces rows; thresholds are configurable.
    compute(db, store.id, AS_OF, config=LifecycleConfig(new_days=5, at_risk_days=200, churned_days=300))
    assert _stages(db, store.id)[ids["new"]][0] == "active"
    assert _stages(db, store.id)[ids["at_risk"]][0] == "active"


def test_the_rfm_snapshot_writes_the_same_stages_from_its_own_aggregate(db: Database, store: NewStore) -> None:
    ids = _seed(db, store.id)
    run_snapshot(db, store.id, AS_OF, stages=LifecycleConfig())
    assert staged(db, store.id) == len(CASES)
    assert _stages(db, store.id) == {ids[name]: (stage, Decimal(risk)) for name, (_, stage, risk) in CASES.items()}
    compute(db, store.id, AS_OF, config=LifecycleConfig(new_days=5, at_risk_days=200, churned_days=300))
    alone = _stages(db, store.id)
    run_snapshot(db, store.id, AS_OF, stages=LifecycleConfig(new_days=5, at_risk_days=200, churned_days=300))
    assert _stages(db, store.id) == alone


def _end_of_as_of() -> dt.datetime:
    return dt.datetime.combine(AS_OF + dt.timedelta(days=1), dt.time(0), dt.UTC)


#: name -> (days ago of each completed order, engagement as (kind, occurred_at), expected stage and churn risk)
ENGAGED: dict[str, tuple[list[int], list[tuple[str, dt.datetime]], str, str]] = {
    # Churned by orders, but opened an email 3 days ago: at risk (still reading), risk 1 halved.
    "reading": ([100, 150], [("opened", _end_of_as_of() - dt.timedelta(days=3))], "at_risk", "0.500"),
    # At risk by orders, clicked (and opened: still one row) on the last second of as_of: risk 60 / 90 halved.
    "clicker": (
        [60],
        [("clicked", _end_of_as_of() - dt.timedelta(seconds=1)), ("opened", _end_of_as_of() - dt.timedelta(days=1))],
        "at_risk",
        "0.333",
    ),
    # The window's first instant, 30 days before the end of as_of, counts: 10 / 90 halved.
    "edge": ([10], [("opened", _end_of_as_of() - dt.timedelta(days=30))], "new", "0.056"),
    # Not engaged: an open just before the window, one after as_of, deliveries and bounces are no engagement.
    "lapsed": (
        [100],
        [
            ("opened", _end_of_as_of() - dt.timedelta(days=30, seconds=1)),
            ("clicked", _end_of_as_of()),
            ("delivered", _end_of_as_of() - dt.timedelta(days=1)),
            ("bounced", _end_of_as_of() - dt.timedelta(days=1)),
        ],
        "churned",
        "1.000",
    ),
}


def _seed_engaged(db: Database, store_id: int, other_store_id: int) -> dict[str, int]:
    ids = {}
    with db.writer() as session:
        for name, (days, engagement, _, _) in ENGAGED.items():
            contact = Contact(store_id=store_id, email=f"{name}@example.com")
            session.add(contact)
            session.flush()
            ids[name] = contact.id
            for k, ago in enumerate(days):
                at = dt.datetime.combine(AS_OF - dt.timedelta(days=ago), dt.time(12), dt.UTC)
                session.add(
                    Order(store_id=store_id, order_id=f"{name}-{k}", contact_id=contact.id, placed_at=at, total_cents=1)
                )
            for k, (kind, at) in enumerate(engagement):
                session.add(
                    Engagement(
                        store_id=store_id,
                        esp="klaviyo",
                        esp_event_id=f"{name}-{k}",
                        kind=kind,
                        contact_id=contact.id,
                        occurred_at=at,
                    )
                )
            # Another store's engagement row never counts for this store's contact.
            session.add(
                Engagement(
                    store_id=other_store_id,
                    esp="klaviyo",
                    esp_event_id=f"{name}-other",
                    kind="opened",
                    contact_id=contact.id,
                    occurred_at=_end_of_as_of() - dt.timedelta(days=1),
                )
            )
    return ids


def test_engagement_keeps_readers_out_of_churned_and_halves_their_risk(
    db: Database, store: NewStore, other_store: NewStore
) -> None:
    ids = _seed_engaged(db, store.id, other_store.id)
    expected = {ids[name]: (stage, Decimal(risk)) for name, (_, _, stage, risk) in ENGAGED.items()}
    assert compute(db, store.id, AS_OF) == len(ENGAGED)
    assert _stages(db, store.id) == expected
    # The snapshot's path writes the same from its own aggregate.
    run_snapshot(db, store.id, AS_OF, stages=LifecycleConfig())
    assert _stages(db, store.id) == expected
    # A shorter window leaves only the clicker engaged; 0 days turns engagement off.
    compute(db, store.id, AS_OF, config=LifecycleConfig(engaged_days=2))
    assert {name: _stages(db, store.id)[cid][0] for name, cid in ids.items()} == {
        "reading": "churned",
        "clicker": "at_risk",
        "edge": "new",
        "lapsed": "churned",
    }
    assert _stages(db, store.id)[ids["edge"]][1] == Decimal("0.111")
    run_snapshot(db, store.id, AS_OF, stages=LifecycleConfig(engaged_days=0))
    assert _stages(db, store.id)[ids["clicker"]] == ("at_risk", Decimal("0.667"))
