"""Consent set by a person at the store (admin API, ``espbridge consent set``): a ledger row like any other.

A withdrawal recorded here goes out like every other consent change (outbox, then one consent item per
connected ESP, which the relay claims ahead of any other sync work).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from .consent import ConsentProperties, record
from .errors import InvalidInput, NotFound
from .identity import survivor
from .store import Channel, ConsentStatus, Contact, utcnow

#: What a person may set by hand: pending belongs to double opt-in, never to an admin.
SETTABLE = (ConsentStatus.SUBSCRIBED, ConsentStatus.UNSUBSCRIBED)


def set_consent(
    session: Session, store_id: int, contact_id: int, channel: object, status: object, *, actor: str
) -> dict[str, Any]:
    """Record ``status`` for the contact's ``channel`` (method ``admin``, ``actor`` the person who set it)."""
    if channel not in {c.value for c in Channel}:
        raise InvalidInput("channel", f"must be one of {', '.join(c.value for c in Channel)}")
    if status not in {s.value for s in SETTABLE}:
        raise InvalidInput("status", "must be subscribed or unsubscribed")
    contact = session.get(Contact, contact_id)
    if contact is None or contact.store_id != store_id:
        raise NotFound(f"contact {contact_id} does not exist")
    contact = survivor(session, contact)  # a merged id speaks for the contact it was merged into
    now = utcnow()
    props = ConsentProperties(channel=Channel(channel), status=ConsentStatus(status), method="admin", source="admin")
    entry = record(
        session,
        store_id,
        contact,
        props,
        occurred_at=now,
        context={},
        evidence_ref=f"admin:{now.isoformat()}",
        actor=actor,
    )
    return {
        "contact_id": contact.id,
        "channel": str(channel),
        "status": str(status),
        "action": entry.action,
        "ledger_entry_id": entry.id,
    }
