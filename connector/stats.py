"""Counts of what a store holds: the demo's summary and the admin API's overview."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .store import (
    Cart,
    ConsentLedgerEntry,
    ConsentState,
    Contact,
    Event,
    Order,
    OutboxRow,
    Product,
    SyncItem,
    WaitlistEntry,
)


def store_stats(session: Session, store_id: int) -> dict[str, Any]:
    def count(model: Any, *where: Any) -> int:
        return (
            session.scalar(sa.select(sa.func.count()).select_from(model).where(model.store_id == store_id, *where)) or 0
        )

    outbox = dict(
        session.execute(
            sa.select(OutboxRow.status, sa.func.count())
            .where(OutboxRow.store_id == store_id)
            .group_by(OutboxRow.status)
        ).all()
    )
    consent = dict(
        session.execute(
            sa.select(ConsentState.channel + ":" + ConsentState.status, sa.func.count())
            .where(ConsentState.store_id == store_id)
            .group_by(ConsentState.channel, ConsentState.status)
        ).all()
    )
    sync: dict[str, dict[str, int]] = {}
    for esp, status, n in session.execute(
        sa.select(SyncItem.esp, SyncItem.status, sa.func.count())
        .where(SyncItem.store_id == store_id)
        .group_by(SyncItem.esp, SyncItem.status)
    ):
        sync.setdefault(esp, dict.fromkeys(("pending", "enqueued", "done", "skipped", "dead"), 0))[status] = n
    return {
        "events": count(Event),
        "events_unprojected": count(Event, Event.projected_at.is_(None)),
        "events_not_applied": count(Event, Event.projection_error.is_not(None)),
        "contacts": count(Contact, Contact.merged_into_id.is_(None)),
        "contacts_merged": count(Contact, Contact.merged_into_id.is_not(None)),
        "orders": count(Order),
        "carts_open": count(Cart, Cart.status.in_(["open", "checkout"])),
        "consent_ledger_entries": count(ConsentLedgerEntry),
        "consent_state": consent,
        "waitlist_entries": count(WaitlistEntry),
        "products": count(Product),
        "outbox": {status: outbox.get(status, 0) for status in ("pending", "enqueued", "done", "dead")},
        #: Per connected ESP: its sync items by status (dead = dead letters).
        "sync": sync,
    }
