"""Double opt-in: a grant on a channel the store protects waits, as "pending", for the person to confirm.

The pending grant makes a ``ConsentConfirmation`` and a tracked event "Consent Confirmation Requested"; the
normal sync sends that event to every connected ESP, where a flow mails it. The link's token is an HMAC of the
pending ledger row's id with the store's key (connector/store_keys.py, encrypted with the credentials key): the
database keeps only the token's SHA-256 and the event's stored payload has no link, which ``with_link`` adds at
send time. So a copy of the database alone cannot confirm anybody's grant. Nothing is subscribed at an ESP until
the confirmation is recorded (connector/confirmations.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from . import outbox, preferences, store_keys
from .credentials import CredentialCipher
from .settings import Settings
from .store import ConsentConfirmation, ConsentLedgerEntry, Contact, Event, utcnow
from .tenancy import digest

EVENT_NAME = "Consent Confirmation Requested"


@dataclasses.dataclass(frozen=True)
class DoubleOptIn:
    """What a pending grant needs to make its link: where the service is reached, how long a link lives."""

    public_url: str
    ttl: dt.timedelta
    cipher: CredentialCipher

    @classmethod
    def from_settings(cls, settings: Settings) -> DoubleOptIn:
        return cls(
            settings.public_url.rstrip("/"),
            dt.timedelta(seconds=settings.double_opt_in_ttl),
            CredentialCipher(settings.credentials_key),
        )


def request(
    session: Session, config: DoubleOptIn, store_id: int, contact: Contact, pending: ConsentLedgerEntry
) -> ConsentConfirmation:
    """Make the confirmation for the ``pending`` ledger row and the event that carries its link outward."""
    key = store_keys.hmac_key(session, store_id, config.cipher)
    token = confirmation_token(key, pending.id)
    now = utcnow()
    confirmation = ConsentConfirmation(
        store_id=store_id,
        contact_id=contact.id,
        channel=pending.channel,
        purpose=pending.purpose,
        token_hash=digest(token),
        pending_entry_id=pending.id,
        created_at=now,
        expires_at=now + config.ttl,
    )
    session.add(confirmation)
    session.flush()
    properties = {
        "channel": pending.channel,
        "expires_at": confirmation.expires_at.isoformat(),
        "unsubscribe_url": preferences.unsubscribe_url(config.public_url, key, store_id, contact.id, pending.channel),
    }
    if pending.purpose:
        properties["list_id"] = pending.purpose
    message_id = f"espbridge-doi-{confirmation.id}"
    event = Event(
        store_id=store_id,
        message_id=message_id,
        type="track",
        name=EVENT_NAME,
        contact_id=contact.id,
        timestamp=now,
        received_at=now,
        # Made here, not ingested: already projected, so the projector never sees it.
        payload={
            "type": "track",
            "event": EVENT_NAME,
            "messageId": message_id,
            "properties": properties,
            "confirmation": {"pending_entry_id": pending.id},
        },
        projected_at=now,
    )
    session.add(event)
    session.flush()
    outbox.add(session, store_id, outbox.Topic.EVENT_TRACKED, event.id, {"name": EVENT_NAME})
    return confirmation


def confirmation_token(key: bytes, pending_entry_id: int) -> str:
    return store_keys.digest(key, f"confirm:{pending_entry_id}")


def with_link(session: Session, config: DoubleOptIn, event: Event) -> Event:
    """``event`` as it is sent: a confirmation request gets its ``confirm_url`` (a transient copy; the stored row
    keeps no link). Any other event is returned as it is."""
    pending = (event.payload or {}).get("confirmation", {}).get("pending_entry_id")
    if event.name != EVENT_NAME or not isinstance(pending, int):
        return event
    token = confirmation_token(store_keys.hmac_key(session, event.store_id, config.cipher), pending)
    payload: dict[str, Any] = {key: value for key, value in event.payload.items() if key != "confirmation"}
    payload["properties"] = {**payload["properties"], "confirm_url": f"{config.public_url}/consent/confirm/{token}"}
    columns = {column.key: getattr(event, column.key) for column in Event.__table__.columns}
    return Event(**{**columns, "payload": payload})
