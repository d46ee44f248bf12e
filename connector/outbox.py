"""Writing outbox rows. Callers pass the session of the change, so row and change commit together."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .store import OutboxRow, OutboxStatus


class Topic:
    """What an ESP must learn of. Adapters (ESP issues) decide what each topic means for their API."""

    CONTACT_UPSERT = "contact.upsert"
    CONTACT_MERGED = "contact.merged"
    CONSENT_CHANGED = "consent.changed"
    EVENT_TRACKED = "event.tracked"
    ORDER_CHANGED = "order.changed"
    CART_CHANGED = "cart.changed"
    CART_ABANDONED = "cart.abandoned"
    WAITLIST_CHANGED = "waitlist.changed"
    CATALOG_RESTOCKED = "catalog.restocked"
    # Subject: a contact id. Local only: the ESPs reported the engagement, so it is never sent back to them (no
    # sync kind in connector.sync.queue.TOPIC_KINDS); it exists so segments filtering on engagement move at once.
    ENGAGEMENT_RECORDED = "engagement.recorded"


#: Topics whose pending rows coalesce: the job sends the subject's current state, so one pending row is enough.
COALESCING_TOPICS = frozenset(
    {
        Topic.CONTACT_UPSERT,
        Topic.CART_CHANGED,
        Topic.CART_ABANDONED,
        Topic.ORDER_CHANGED,
        Topic.ENGAGEMENT_RECORDED,  # a campaign's opens and clicks: one pending row per contact re-evaluates them all
    }
)


def add(
    session: Session, store_id: int, topic: str, subject_id: int | str, payload: dict[str, Any] | None = None
) -> None:
    """Record that ``topic`` happened to ``subject_id`` in ``store_id``, in the caller's transaction."""
    subject = str(subject_id)
    if topic in COALESCING_TOPICS:
        session.flush()  # rows added earlier in this transaction must be visible to the check below
        # Locked until this transaction commits (PostgreSQL; SQLite writers never interleave): the relay claims with
        # SKIP LOCKED, so it cannot deliver the row before this change is visible, which would send or evaluate
        # the old state and leave nothing pending for the new one. A row locked by someone else (a relay
        # claiming it) is skipped here too, and this change gets a row of its own; neither side ever waits.
        pending = session.scalar(
            sa.select(OutboxRow.id)
            .where(
                OutboxRow.store_id == store_id,
                OutboxRow.topic == topic,
                OutboxRow.subject_id == subject,
                OutboxRow.status == OutboxStatus.PENDING,
            )
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if pending is not None:
            return
    session.add(OutboxRow(store_id=store_id, topic=topic, subject_id=subject, payload=payload or {}))
