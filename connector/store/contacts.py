"""Contacts (people) and the identities that resolve to them."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, StoreScoped, utcnow


class IdentityKind(enum.StrEnum):
    USER_ID = "user_id"
    ANONYMOUS_ID = "anonymous_id"
    EMAIL = "email"


class Contact(StoreScoped, Base):
    __tablename__ = "contacts"
    __table_args__ = (sa.Index(None, "store_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str | None] = mapped_column(sa.String(320))
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    external_id: Mapped[str | None] = mapped_column(sa.String(200))
    first_name: Mapped[str | None] = mapped_column(sa.String(200))
    last_name: Mapped[str | None] = mapped_column(sa.String(200))
    properties: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    locale: Mapped[str | None] = mapped_column(sa.String(35))
    #: Set when this contact was merged into another; its identities and history moved there.
    merged_into_id: Mapped[int | None] = mapped_column(sa.ForeignKey("contacts.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_seen_at: Mapped[dt.datetime | None]
    #: Erased (right to erasure): every personal field above is cleared; the row stays for the ledger's sake.
    erased_at: Mapped[dt.datetime | None]
    #: Matches a suppression (an erased or suppressed email/phone): kept out of every ESP.
    suppressed_at: Mapped[dt.datetime | None]


class Identity(StoreScoped, Base):
    """One identifier (userId, anonymousId or email) pointing at exactly one live contact."""

    __tablename__ = "identities"
    __table_args__ = (sa.UniqueConstraint("store_id", "kind", "value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    value: Mapped[str] = mapped_column(sa.String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
