"""Consent: an append-only ledger of consent events and the current state derived from it."""

from __future__ import annotations

import datetime as dt
import enum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, StoreScoped, utcnow


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    WHATSAPP = "whatsapp"


class ConsentStatus(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    PENDING = "pending"


class ConsentLedgerEntry(StoreScoped, Base):
    """One consent event. Rows are never updated or deleted (store layer and database triggers)."""

    __tablename__ = "consent_ledger"
    __table_args__ = (sa.Index(None, "store_id", "contact_id", "channel"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"))
    channel: Mapped[str] = mapped_column(sa.String(16))
    purpose: Mapped[str | None] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(32))
    status_after: Mapped[str] = mapped_column(sa.String(16))
    occurred_at: Mapped[dt.datetime]
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    method: Mapped[str | None] = mapped_column(sa.String(32))
    source: Mapped[str | None] = mapped_column(sa.String(2000))
    form_id: Mapped[str | None] = mapped_column(sa.String(200))
    form_version: Mapped[str | None] = mapped_column(sa.String(64))
    consent_text_hash: Mapped[str | None] = mapped_column(sa.String(64))
    consent_text_version: Mapped[str | None] = mapped_column(sa.String(64))
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(1000))
    actor: Mapped[str | None] = mapped_column(sa.String(200))
    evidence_ref: Mapped[str | None] = mapped_column(sa.String(200))
    #: Hash chain columns; filled in by the consent issue's ledger writer.
    prev_hash: Mapped[str | None] = mapped_column(sa.String(64))
    entry_hash: Mapped[str | None] = mapped_column(sa.String(64))


class ConsentState(StoreScoped, Base):
    """Current status per contact and channel: the latest ledger entry by occurred_at wins."""

    __tablename__ = "consent_state"

    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    occurred_at: Mapped[dt.datetime]
    ledger_entry_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_ledger.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
