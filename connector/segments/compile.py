"""Criteria → ONE SQL select of contact ids (correlated EXISTS / aggregate subqueries, no per-contact Python).

Every subquery is correlated on ``contacts.id`` and filtered on the store, so the planner can use the
(store_id, contact_id) indexes; the outer query keeps live contacts only. ``now`` is an argument so a test (and
an evaluation) sees one consistent instant.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from connector.store.commerce import Cart, Order, OrderItem, WaitlistEntry
from connector.store.consent import ConsentState
from connector.store.contacts import Contact
from connector.store.events import Event
from connector.store.rfm import ContactLifecycle, RfmRun, RfmScore
from connector.store.sync import Engagement

from .criteria import All, Any_, Cond, EventsCond, Kind, Node, Not, mentions_consent

#: Orders that count as purchases: cancelled and fully refunded ones do not.
COUNTED_ORDER_STATUSES = ("completed", "partially_refunded")
DAY = dt.timedelta(days=1)
#: The column (or expression) each ``rfm.*`` and ``lifecycle.*`` field reads; money in currency units.
RFM_COLUMNS: dict[str, Any] = {
    "rfm.recency": RfmScore.recency_days,
    "rfm.frequency": RfmScore.frequency,
    "rfm.monetary": RfmScore.monetary_cents / 100.0,
    "rfm.r": RfmScore.r,
    "rfm.f": RfmScore.f,
    "rfm.m": RfmScore.m,
    "rfm.composite": RfmScore.composite,
    "rfm.group": RfmScore.group,
}
LIFECYCLE_COLUMNS: dict[str, Any] = {
    "lifecycle.stage": ContactLifecycle.stage,
    "lifecycle.churn_risk": ContactLifecycle.churn_risk,
}
#: The per-contact order aggregates, and the value of those that a contact without counted orders still has.
ORDER_AGGREGATES = ("orders.count", "orders.revenue", "orders.aov", "promotions.redeemed_ratio")
NO_ORDERS_VALUE = {"orders.count": 0, "orders.revenue": 0}


class _Compiler:
    def __init__(self, store_id: int, now: dt.datetime) -> None:
        self.store_id = store_id
        self.now = now

    # -- subqueries ------------------------------------------------------------------------------------------
    def _orders(self, *columns: Any) -> sa.Select[Any]:
        return sa.select(*columns).where(
            Order.store_id == self.store_id,
            Order.contact_id == Contact.id,
            Order.status.in_(COUNTED_ORDER_STATUSES),
        )

    def _net_cents(self) -> ColumnElement[Any]:
        return sa.func.coalesce(Order.revenue_cents, Order.total_cents, 0) - sa.func.coalesce(Order.refunded_cents, 0)

    def _order_aggregate(self, field: str) -> ColumnElement[Any]:
        """One of ORDER_AGGREGATES over a contact's counted orders (a select's column, grouped or correlated)."""
        if field == "orders.count":
            return sa.func.count()
        if field == "orders.revenue":
            return sa.func.sum(self._net_cents()) / 100.0
        if field == "orders.aov":
            return sa.func.avg(self._net_cents()) / 100.0
        redeemed = sa.func.sum(sa.case((sa.func.coalesce(Order.coupon, "") != "", 1), else_=0))
        return redeemed * 1.0 / sa.func.nullif(sa.func.count(), 0)  # promotions.redeemed_ratio

    def _latest_run(self) -> sa.ScalarSelect[Any]:
        # The latest run per store is the one to read (older runs are history).
        return sa.select(sa.func.max(RfmRun.id)).where(RfmRun.store_id == self.store_id).scalar_subquery()

    def _rfm(self, column: Any) -> ColumnElement[Any]:
        return (
            sa.select(column)
            .where(
                RfmScore.store_id == self.store_id,
                RfmScore.run_id == self._latest_run(),
                RfmScore.contact_id == Contact.id,
            )
            .scalar_subquery()
        )

    def _lifecycle(self, column: Any) -> ColumnElement[Any]:
        return (
            sa.select(column)
            .where(ContactLifecycle.store_id == self.store_id, ContactLifecycle.contact_id == Contact.id)
            .scalar_subquery()
        )

    def _value(self, field: str, sample: Any) -> ColumnElement[Any]:
        """The SQL expression of a scalar field (NULL when the contact has no value)."""
        if field.startswith("properties."):
            item = Contact.properties[field[len("properties.") :]]
            if isinstance(sample, bool):
                return _any(item.as_boolean())
            return _any(item.as_float() if isinstance(sample, int | float) else item.as_string())
        if field.startswith("consent."):
            status = (
                sa.select(ConsentState.status)
                .where(
                    ConsentState.store_id == self.store_id,
                    ConsentState.contact_id == Contact.id,
                    ConsentState.channel == field[len("consent.") :],
                )
                .scalar_subquery()
            )
            # No state row means the contact never said anything on that channel.
            return sa.func.coalesce(status, "none")
        if field in RFM_COLUMNS:
            return self._rfm(RFM_COLUMNS[field])
        if field in LIFECYCLE_COLUMNS:
            return self._lifecycle(LIFECYCLE_COLUMNS[field])
        if field in ORDER_AGGREGATES:
            value = self._orders(self._order_aggregate(field)).scalar_subquery()
            return sa.func.coalesce(value, NO_ORDERS_VALUE[field]) if field in NO_ORDERS_VALUE else value
        return getattr(Contact, field)  # type: ignore[no-any-return]

    # -- conditions ------------------------------------------------------------------------------------------
    def _compare(self, column: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
        if op == "eq":
            return _bool(column == value)
        if op == "ne":
            # ne keeps contacts with no value: "not from Paris" includes those without a city.
            return sa.or_(column != value, column.is_(None))
        if op == "gt":
            return _bool(column > value)
        if op == "gte":
            return _bool(column >= value)
        if op == "lt":
            return _bool(column < value)
        if op == "lte":
            return _bool(column <= value)
        if op == "in":
            return column.in_(value)
        if op == "nin":
            return sa.or_(column.not_in(value), column.is_(None))
        if op == "exists":
            return column.is_not(None) if value else column.is_(None)
        if op == "between":
            return column.between(value[0], value[1])
        if op == "contains":
            # Case-insensitive on both databases (ILIKE on PostgreSQL, lower() LIKE lower() on SQLite, whose LIKE
            # alone ignores ASCII case while PostgreSQL's does not); % and _ in the value match themselves.
            return _bool(column.icontains(value, autoescape=True))
        if op == "within_last_days":
            return _bool(column >= self.now - value * DAY)
        raise AssertionError(op)  # pragma: no cover

    def _days_since(self, column: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
        """days_since(t) op N, as a comparison of t with instants (index-friendly, identical on both backends).

        days_since = whole days elapsed, so days ≥ N ⇔ t ≤ now - N days and days ≤ N ⇔ t > now - (N+1) days.
        """

        def at_least(n: float) -> ColumnElement[bool]:
            return column <= self.now - math.ceil(n) * DAY

        def at_most(n: float) -> ColumnElement[bool]:
            return column > self.now - (math.floor(n) + 1) * DAY

        def equal(n: float) -> ColumnElement[bool]:
            return sa.and_(at_least(n), at_most(n)) if n == int(n) else sa.false()

        if op == "gte":
            return at_least(value)
        if op == "gt":
            return at_least(math.floor(value) + 1)
        if op == "lte":
            return at_most(value)
        if op == "lt":
            return at_most(math.ceil(value) - 1)
        if op == "eq":
            return equal(value)
        if op == "ne":
            return sa.or_(column.is_(None), sa.not_(equal(value)))
        if op == "in":
            return sa.or_(*(equal(n) for n in value))
        if op == "nin":
            return sa.or_(column.is_(None), sa.not_(sa.or_(*(equal(n) for n in value))))
        if op == "between":
            return sa.and_(at_least(value[0]), at_most(value[1]))
        if op == "exists":
            return column.is_not(None) if value else column.is_(None)
        raise AssertionError(op)  # pragma: no cover

    def _items_exist(self, column: Any, names: tuple[str, ...]) -> ColumnElement[bool]:
        return sa.exists(
            sa.select(1)
            .select_from(OrderItem)
            .join(Order, Order.id == OrderItem.order_ref)
            .where(
                Order.store_id == self.store_id,
                Order.contact_id == Contact.id,
                Order.status.in_(COUNTED_ORDER_STATUSES),
                column.in_(names),
            )
        )

    def _set(self, cond: Cond) -> ColumnElement[bool]:
        names: tuple[str, ...] = cond.value
        if cond.field == "products.purchased":
            return self._items_exist(OrderItem.product_id, names)
        if cond.field == "products.not_purchased":
            return sa.not_(self._items_exist(OrderItem.product_id, names))
        if cond.field == "categories.purchased":
            return self._items_exist(OrderItem.category, names)
        if cond.field == "categories.not_purchased":
            return sa.not_(self._items_exist(OrderItem.category, names))
        # categories.last_order_missing: a customer whose most recent order had nothing from these categories
        # (the cross-sell audience); contacts without orders are not in it.
        # correlate(Contact): nested inside the EXISTS below it must still be the outer contact, not a cross join.
        last_order = (
            self._orders(Order.id)
            .order_by(Order.placed_at.desc(), Order.id.desc())
            .limit(1)
            .correlate(Contact)
            .scalar_subquery()
        )
        return sa.and_(
            last_order.is_not(None),
            sa.not_(
                sa.exists(
                    sa.select(1).where(
                        OrderItem.store_id == self.store_id,
                        OrderItem.order_ref == last_order,
                        OrderItem.category.in_(names),
                    )
                )
            ),
        )

    def _cond(self, cond: Cond) -> ColumnElement[bool]:
        if cond.kind is Kind.SET:
            return self._set(cond)
        if cond.field == "carts.abandoned_within_days":
            # A cart counts as abandoned while it stays abandoned (a later order turns it "converted").
            return sa.exists(
                sa.select(1).where(
                    Cart.store_id == self.store_id,
                    Cart.contact_id == Contact.id,
                    Cart.status == "abandoned",
                    Cart.last_activity_at >= self.now - cond.value * DAY,
                )
            )
        if cond.kind is Kind.DAYS:
            kind = "opened" if cond.field == "engagement.opened_within_days" else "clicked"
            return sa.exists(
                sa.select(1).where(
                    Engagement.store_id == self.store_id,
                    Engagement.contact_id == Contact.id,
                    Engagement.kind == kind,
                    Engagement.occurred_at >= self.now - cond.value * DAY,
                )
            )
        if cond.kind is Kind.BOOL:  # waitlists.active
            waiting = sa.exists(
                sa.select(1).where(
                    WaitlistEntry.store_id == self.store_id,
                    WaitlistEntry.contact_id == Contact.id,
                    WaitlistEntry.status == "waiting",
                )
            )
            return waiting if cond.value else sa.not_(waiting)
        semi_days = self._semi_join(cond)
        if semi_days is not None:
            return semi_days
        if cond.field in ("days_since_first_order", "days_since_last_order"):
            agg = sa.func.min if cond.field == "days_since_first_order" else sa.func.max
            return self._days_since(self._orders(agg(Order.placed_at)).scalar_subquery(), cond.op, cond.value)
        sample = cond.value[0] if isinstance(cond.value, tuple) and cond.value else cond.value
        if cond.op == "exists":
            sample = ""  # presence is type-blind: read the value as text

        return self._compare(self._value(cond.field, sample), cond.op, cond.value)

    def _events(self, cond: EventsCond) -> ColumnElement[bool]:
        query = sa.select(sa.func.count()).where(
            Event.store_id == self.store_id, Event.contact_id == Contact.id, Event.name == cond.name
        )
        if cond.within_days is not None:
            query = query.where(Event.timestamp >= self.now - cond.within_days * DAY)
        if not _holds(cond.count, 0):
            # Only contacts with such events can match: one grouped scan instead of a count per contact.
            grouped = (
                sa.select(Event.contact_id)
                .where(Event.store_id == self.store_id, Event.contact_id.is_not(None), Event.name == cond.name)
                .group_by(Event.contact_id)
                .having(self._count_test(sa.func.count(), cond.count))
            )
            if cond.within_days is not None:
                grouped = grouped.where(Event.timestamp >= self.now - cond.within_days * DAY)
            return Contact.id.in_(grouped)
        return self._count_test(query.scalar_subquery(), cond.count)

    def _count_test(self, count: ColumnElement[Any], node: Node) -> ColumnElement[bool]:
        if isinstance(node, Cond):
            return self._compare(count, node.op, node.value)
        if isinstance(node, All):
            return sa.and_(*(self._count_test(count, child) for child in node.children))
        raise AssertionError(node)  # pragma: no cover - the parser only builds Cond/All for a count

    def _semi_join(self, cond: Cond) -> ColumnElement[bool] | None:
        """``contacts.id IN (one set-based select)`` when a contact without rows cannot match.

        A correlated scalar subquery costs one probe per contact of the store (a million at 1M contacts); the
        semi-join is one scan of the matching rows (a hash join). It is only equivalent when the "no rows" value
        (NULL, or 0 for counts and revenue) fails the test, which is decided here in Python; otherwise the
        correlated form keeps the contacts without rows.
        """
        field, grouped = cond.field, False
        base: sa.Select[Any]
        expr: Any
        empty: Any = None
        if field in RFM_COLUMNS:
            base = sa.select(RfmScore.contact_id).where(
                RfmScore.store_id == self.store_id, RfmScore.run_id == self._latest_run()
            )
            expr = RFM_COLUMNS[field]
        elif field in LIFECYCLE_COLUMNS:
            base = sa.select(ContactLifecycle.contact_id).where(ContactLifecycle.store_id == self.store_id)
            expr = LIFECYCLE_COLUMNS[field]
        elif field.startswith("consent."):
            base = sa.select(ConsentState.contact_id).where(
                ConsentState.store_id == self.store_id, ConsentState.channel == field[len("consent.") :]
            )
            expr, empty = ConsentState.status, "none"
        elif field.startswith(("orders.", "promotions.", "days_since_")):
            grouped = True
            base = (
                sa.select(Order.contact_id)
                .where(
                    Order.store_id == self.store_id,
                    Order.contact_id.is_not(None),
                    Order.status.in_(COUNTED_ORDER_STATUSES),
                )
                .group_by(Order.contact_id)
            )
            if field in ORDER_AGGREGATES:
                expr, empty = self._order_aggregate(field), NO_ORDERS_VALUE.get(field)
            else:
                agg = sa.func.min if field == "days_since_first_order" else sa.func.max
                if _holds(cond, None):
                    return None
                return Contact.id.in_(base.having(self._days_since(agg(Order.placed_at), cond.op, cond.value)))
        else:
            return None
        if _holds(cond, empty):
            return None
        test = self._compare(expr, cond.op, cond.value)
        return Contact.id.in_(base.having(test) if grouped else base.where(test))

    def node(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, All):
            return sa.and_(*(self.node(child) for child in node.children))
        if isinstance(node, Any_):
            return sa.or_(*(self.node(child) for child in node.children))
        if isinstance(node, Not):
            # NOT over a NULL comparison is NULL, which would drop the contact from both a set and its
            # complement; coalescing to false keeps "not X" the exact complement of X.
            return sa.not_(sa.func.coalesce(sa.case((self.node(node.child), True), else_=False), False))
        if isinstance(node, EventsCond):
            return self._events(node)
        return self._cond(node)


def _holds(node: Node, empty: Any) -> bool:
    """Whether a contact with no rows (whose value is ``empty``: None or 0) passes the test."""
    if isinstance(node, All):
        return all(_holds(child, empty) for child in node.children)
    if not isinstance(node, Cond):  # pragma: no cover - only Cond/All reach here
        return True
    op, value = node.op, node.value
    if empty is None:
        return op in ("ne", "nin") or (op == "exists" and not value)
    if op == "exists":
        return bool(value)
    if isinstance(empty, str) != isinstance(value[0] if isinstance(value, tuple) else value, str):
        return op in ("ne", "nin")
    checks: dict[str, Any] = {
        "eq": lambda: empty == value,
        "ne": lambda: empty != value,
        "gt": lambda: empty > value,
        "gte": lambda: empty >= value,
        "lt": lambda: empty < value,
        "lte": lambda: empty <= value,
        "in": lambda: empty in value,
        "nin": lambda: empty not in value,
        "between": lambda: value[0] <= empty <= value[1],
    }
    check = checks.get(op)
    return True if check is None else bool(check())


def _bool(expr: Any) -> ColumnElement[bool]:
    return cast(ColumnElement[bool], expr)


def _any(expr: Any) -> ColumnElement[Any]:
    return cast(ColumnElement[Any], expr)


def live_contacts(store_id: int) -> list[ColumnElement[bool]]:
    """Merged, erased and suppressed contacts are in no segment."""
    return [
        Contact.store_id == store_id,
        Contact.merged_into_id.is_(None),
        Contact.erased_at.is_(None),
        Contact.suppressed_at.is_(None),
    ]


def compile_criteria(
    store_id: int, tree: Node, *, marketing: bool = True, now: dt.datetime | None = None
) -> sa.Select[Any]:
    """The select of the store's contact ids matching ``tree``."""
    compiler = _Compiler(store_id, now or dt.datetime.now(dt.UTC))
    query = sa.select(Contact.id).where(*live_contacts(store_id), compiler.node(tree))
    if marketing and not mentions_consent(tree):
        unsubscribed = sa.exists(
            sa.select(1).where(
                ConsentState.store_id == store_id,
                ConsentState.contact_id == Contact.id,
                ConsentState.channel == "email",
                ConsentState.status == "unsubscribed",
            )
        )
        query = query.where(sa.not_(unsubscribed))
    return query
