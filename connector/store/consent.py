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
    """One consent event. Rows are never updated or deleted (store layer and database triggers).

    Rows are hash-chained per store (connector/ledger.py): ``seq`` counts from 1, ``prev_hash`` is the previous
    row's ``entry_hash``, and ``entry_hash`` covers every column but ``id``. Nothing in a row is personal data in
    clear: the contact is an id, and IP and user agent live in ``consent_evidence`` (erasable), represented here
    by ``evidence_digest``.
    """

    __tablename__ = "consent_ledger"
    __table_args__ = (
        sa.Index(None, "store_id", "contact_id", "channel"),
        sa.UniqueConstraint("store_id", "seq"),
        sa.Index(None, "store_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
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
    actor: Mapped[str | None] = mapped_column(sa.String(200))
    evidence_ref: Mapped[str | None] = mapped_column(sa.String(200))
    #: SHA-256 of the salted IP and user agent kept in ``consent_evidence``; None when there were none.
    evidence_digest: Mapped[str | None] = mapped_column(sa.String(64))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    entry_hash: Mapped[str] = mapped_column(sa.String(64))


class ConsentEvidence(StoreScoped, Base):
    """The personal part of a ledger row's evidence (IP, user agent), deleted by an erasure.

    The row's ``evidence_digest`` = SHA-256 over ``salt`` and these values: while the evidence exists it can be
    shown to be the original; once erased, the random salt is gone and the digest says nothing about the person.
    """

    __tablename__ = "consent_evidence"

    ledger_entry_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_ledger.id"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"), index=True)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(1000))
    salt: Mapped[str] = mapped_column(sa.String(32))


class LedgerHead(Base):
    """The newest row of a store's ledger. Appenders lock it (one chain, no forks); verify compares against it."""

    __tablename__ = "consent_ledger_heads"

    store_id: Mapped[int] = mapped_column(sa.ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    entry_hash: Mapped[str | None] = mapped_column(sa.String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ConsentConfirmation(StoreScoped, Base):
    """A double opt-in request: the pending grant it confirms, and the SHA-256 of the token mailed for it."""

    __tablename__ = "consent_confirmations"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(sa.String(16))
    purpose: Mapped[str | None] = mapped_column(sa.String(200))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    pending_entry_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_ledger.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    confirmed_at: Mapped[dt.datetime | None]


class ConsentState(StoreScoped, Base):
    """Current status per contact and channel: the latest ledger entry by occurred_at wins."""

    __tablename__ = "consent_state"

    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    occurred_at: Mapped[dt.datetime]
    ledger_entry_id: Mapped[int] = mapped_column(sa.ForeignKey("consent_ledger.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
