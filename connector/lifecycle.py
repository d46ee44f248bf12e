"""Lifecycle stage and churn risk per contact, computed in SQL into contact_lifecycle.

Only live contacts (not merged, not erased) with at least one completed order on or before ``as_of`` get a row;
"completed" is the same as RFM's (``completed`` or ``partially_refunded``). With ``days`` = whole days since the
last completed order, the first matching rule wins:

- ``churned``: days > ``churned_days`` (default 90), unless the contact is *engaged* (below);
- ``at_risk``: days > ``at_risk_days`` (default 45), which includes an engaged contact past ``churned_days``:
  still reading the emails, so still reachable by a win-back;
- ``reactivated``: the gap between the last order and the one before it exceeded ``churned_days`` (the customer
  had churned and came back);
- ``new``: the first order is at most ``new_days`` old (default 30);
- ``active``: everyone else.

Churn risk, in 0..1, is how far the customer is into the time by which they would normally have bought again::

    expected = churned_days                                          for a one-order customer
             = clamp(2 * average gap between their orders, at_risk_days, churned_days)   otherwise
    churn_risk = min(1, days / expected) * (0.5 if engaged else 1), rounded to 3 decimals

So 0 on the day of an order, 0.5 halfway to the expected return, 1 once overdue; a customer who orders every
week reaches 1 after 45 days, a one-time buyer after 90. It can be explained with the order history's three
numbers (days, order count, average gap) and one flag: "x0.5 when opened/clicked in the last N days".

*Engaged*: the contact has an ``opened`` or ``clicked`` engagement (ESP webhooks and polls, the ``engagement``
table) with ``occurred_at`` in (``as_of`` - ``engaged_days``, ``as_of``], ``as_of`` ending with its UTC day as for
orders: the ``engaged_days`` whole UTC days up to and including ``as_of`` (default 30; 0 turns engagement off).
Engagement after ``as_of`` is ignored, so a run stays reproducible. It is read through one LEFT JOIN to the
window's engagement grouped by contact (not a probe per contact: the stage write covers every customer).

The RFM snapshot can write the stages from its own per-contact aggregate (``run_snapshot(stages=…)``, as the
nightly job and ``espbridge rfm run`` do): the orders are grouped once for both. ``compute`` groups them alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .settings import Settings
from .store.base import UTCDateTime, utcnow
from .store.commerce import Order
from .store.contacts import Contact
from .store.db import Database, bulk_work_mem
from .store.rfm import ContactLifecycle
from .store.sync import Engagement, EngagementKind

COMPLETED = ("completed", "partially_refunded")
#: The engagement that shows a contact still reads: an open or a click (a delivery or a bounce does not).
ENGAGED_KINDS = (EngagementKind.OPENED.value, EngagementKind.CLICKED.value)


@dataclasses.dataclass(frozen=True)
class LifecycleConfig:
    new_days: int = 30
    at_risk_days: int = 45
    churned_days: int = 90
    engaged_days: int = 30

    def __post_init__(self) -> None:
        # The rules rely on it: an engaged contact past churned_days must still be past at_risk_days.
        if self.churned_days <= self.at_risk_days:
            raise ValueError(f"churned_days ({self.churned_days}) must exceed at_risk_days ({self.at_risk_days})")


def config_from(settings: Settings) -> LifecycleConfig:
    """The lifecycle thresholds of ``settings`` (ESPBRIDGE_LIFECYCLE_*, validated there)."""
    return LifecycleConfig(
        new_days=settings.lifecycle_new_days,
        at_risk_days=settings.lifecycle_at_risk_days,
        churned_days=settings.lifecycle_churned_days,
        engaged_days=settings.lifecycle_engaged_days,
    )


def _day(dialect: str, ts: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A timestamp's UTC date as a day number (PostgreSQL: date; SQLite: julian day), for subtraction."""
    if dialect == "postgresql":
        return sa.cast(sa.func.timezone("UTC", ts), sa.Date)
    return sa.func.julianday(sa.func.date(ts))


def _as_of_day(dialect: str, as_of: dt.date) -> sa.ColumnElement[Any]:
    if dialect == "postgresql":
        return sa.literal(as_of, sa.Date)
    return sa.func.julianday(as_of.isoformat())


def per_contact(o: sa.FromClause) -> list[sa.ColumnElement[Any]]:
    """The aggregates a stage is computed from, over a contact's completed orders up to ``as_of``: how many, the
    first and the last order time. The RFM snapshot adds them to its own per-contact aggregate (one pass over the
    orders for both), ``compute`` groups them on its own."""
    return [
        sa.func.count().label("orders_n"),
        sa.func.min(o.c.placed_at).label("first_at"),
        sa.func.max(o.c.placed_at).label("last_at"),
    ]


def compute(db: Database, store_id: int, as_of: dt.date, *, config: LifecycleConfig | None = None) -> int:
    """Replace the store's lifecycle rows as of ``as_of``; returns how many contacts got a stage."""
    o, c = Order.__table__, Contact.__table__
    end = dt.datetime(as_of.year, as_of.month, as_of.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    per = (
        sa.select(o.c.contact_id, *per_contact(o))
        .select_from(o.join(c, c.c.id == o.c.contact_id))
        .where(
            o.c.store_id == store_id,
            c.c.store_id == store_id,
            c.c.merged_into_id.is_(None),
            c.c.erased_at.is_(None),
            o.c.status.in_(COMPLETED),
            o.c.placed_at < end,
        )
        .group_by(o.c.contact_id)
        .subquery("per")
    )
    with db.writer() as session:
        bulk_work_mem(session)
        return write_stages(session, store_id, as_of, per, config)


def write_stages(
    session: Session,
    store_id: int,
    as_of: dt.date,
    per: sa.Table | sa.Subquery,
    config: LifecycleConfig | None = None,
) -> int:
    """Replace the store's lifecycle rows from ``per`` (one row per staged contact: contact_id and the
    ``per_contact`` columns); returns how many contacts got a stage.

    The order before the last (for ``reactivated``) is looked up only where the stage depends on it: contacts with
    more than one order whose last one is at most ``at_risk_days`` old (the rules above it decide everyone else).
    It is one probe of the (store_id, contact_id, placed_at) index per such contact, inside the CASE, instead of
    a window over every order of the store."""
    cfg = config or LifecycleConfig()
    d = session.get_bind().dialect.name
    o = Order.__table__
    prev_at = (
        sa.select(sa.func.max(o.c.placed_at))
        .where(
            o.c.store_id == store_id,
            o.c.contact_id == per.c.contact_id,
            o.c.status.in_(COMPLETED),
            o.c.placed_at < per.c.last_at,
        )
        .correlate(per)
        .scalar_subquery()
    )
    engaged = _engaged(store_id, as_of, cfg.engaged_days)
    is_engaged = engaged.c.contact_id.is_not(None)
    today = _as_of_day(d, as_of)
    days = sa.cast(today - _day(d, per.c.last_at), sa.Integer)
    first_days = sa.cast(today - _day(d, per.c.first_at), sa.Integer)
    prev_gap = sa.cast(_day(d, per.c.last_at) - _day(d, prev_at), sa.Integer)
    stage = sa.case(
        (sa.and_(days > cfg.churned_days, sa.not_(is_engaged)), "churned"),  # engaged: at_risk, the next rule
        (days > cfg.at_risk_days, "at_risk"),
        # A NULL gap (every order at the same instant) is no reactivation.
        (sa.and_(per.c.orders_n > 1, prev_gap > cfg.churned_days), "reactivated"),
        (first_days <= cfg.new_days, "new"),
        else_="active",
    )
    # 2 * average gap = 2 * (last - first) / (n - 1), bounded to [at_risk_days, churned_days].
    two_gaps = 2.0 * (_day(d, per.c.last_at) - _day(d, per.c.first_at)) / sa.func.nullif(per.c.orders_n - 1, 0)
    expected = sa.case(
        (per.c.orders_n == 1, float(cfg.churned_days)),
        (two_gaps < cfg.at_risk_days, float(cfg.at_risk_days)),
        (two_gaps > cfg.churned_days, float(cfg.churned_days)),
        else_=two_gaps,
    )
    ratio = 1.0 * days / expected
    risk = sa.case((ratio > 1, 1.0), else_=ratio) * sa.case((is_engaged, 0.5), else_=1.0)
    rounded = sa.func.round(sa.cast(risk, sa.Numeric), 3) if d == "postgresql" else sa.func.round(risk, 3)
    session.execute(sa.delete(ContactLifecycle).where(ContactLifecycle.store_id == store_id))
    session.execute(
        sa.insert(ContactLifecycle).from_select(
            ["store_id", "contact_id", "stage", "churn_risk", "computed_at"],
            sa.select(sa.literal(store_id), per.c.contact_id, stage, rounded, sa.literal(utcnow(), UTCDateTime()))
            .select_from(per)
            .outerjoin(engaged, engaged.c.contact_id == per.c.contact_id)
            # In key order: the primary key's B-tree is then filled page by page (880k rows: 10 s -> 4 s).
            .order_by(per.c.contact_id),
        )
    )
    return session.execute(sa.select(sa.func.count()).where(ContactLifecycle.store_id == store_id)).scalar_one()


def _engaged(store_id: int, as_of: dt.date, days: int) -> sa.Subquery:
    """The contacts that opened or clicked in the ``days`` UTC days up to the end of ``as_of``: one row each."""
    e = Engagement.__table__
    end = dt.datetime(as_of.year, as_of.month, as_of.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    return (
        sa.select(e.c.contact_id)
        .where(
            e.c.store_id == store_id,
            e.c.kind.in_(ENGAGED_KINDS),
            e.c.occurred_at >= end - dt.timedelta(days=days),
            e.c.occurred_at < end,
            e.c.contact_id.is_not(None),
        )
        .group_by(e.c.contact_id)
        .subquery("engaged")
    )


def staged(db: Database, store_id: int) -> int:
    """How many contacts of the store have a lifecycle stage."""
    with db.reader() as session:
        return session.execute(sa.select(sa.func.count()).where(ContactLifecycle.store_id == store_id)).scalar_one()
