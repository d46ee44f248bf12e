"""Back-in-stock waitlists: "Waitlist Joined" / "Waitlist Left"."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from . import outbox
from .fields import OptionalRef, Ref
from .store import Channel, Contact, WaitlistEntry


class WaitlistProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")

    product_id: Ref
    variant_id: OptionalRef = ""
    channel: Channel = Channel.EMAIL


def join(session: Session, store_id: int, contact: Contact, props: WaitlistProperties, at: dt.datetime) -> None:
    entry = _entry(session, store_id, contact, props)
    if entry is None:
        entry = WaitlistEntry(
            store_id=store_id,
            contact_id=contact.id,
            product_id=props.product_id,
            variant_id=props.variant_id,
            channel=props.channel,
            joined_at=at,
        )
        session.add(entry)
    elif entry.status != "waiting":
        entry.status, entry.joined_at, entry.left_at = "waiting", at, None
    session.flush()
    outbox.add(session, store_id, outbox.Topic.WAITLIST_CHANGED, entry.id)


def leave(session: Session, store_id: int, contact: Contact, props: WaitlistProperties, at: dt.datetime) -> None:
    entry = _entry(session, store_id, contact, props)
    if entry is not None and entry.status == "waiting":
        entry.status, entry.left_at = "left", at
        outbox.add(session, store_id, outbox.Topic.WAITLIST_CHANGED, entry.id)


def _entry(session: Session, store_id: int, contact: Contact, props: WaitlistProperties) -> WaitlistEntry | None:
    return session.scalar(
        sa.select(WaitlistEntry).where(
            WaitlistEntry.store_id == store_id,
            WaitlistEntry.contact_id == contact.id,
            WaitlistEntry.product_id == props.product_id,
            WaitlistEntry.variant_id == props.variant_id,
            WaitlistEntry.channel == props.channel,
        )
    )
