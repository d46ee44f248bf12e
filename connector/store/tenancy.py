"""Stores (tenants), their write keys and their admin users."""

from __future__ import annotations

import datetime as dt
import enum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, StoreScoped, utcnow


class Role(enum.StrEnum):
    ADMIN = "admin"
    MARKETER = "marketer"
    COMPLIANCE = "compliance"
    VIEWER = "viewer"


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    timezone: Mapped[str] = mapped_column(sa.String(64), default="UTC")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Touched by the projector as its per-store lock (see connector.ingest.projection).
    projected_at: Mapped[dt.datetime | None]
    #: Channels whose grants need a confirmed double opt-in before anyone is subscribed at an ESP.
    double_opt_in: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    #: The store's HMAC key (suppression digests, preference links), encrypted with ESPBRIDGE_CREDENTIALS_KEY;
    #: made on first use (connector/store_keys.py).
    hmac_key: Mapped[str | None] = mapped_column(sa.Text)


class WriteKey(StoreScoped, Base):
    """A storefront's ingestion credential. Only its SHA-256 is stored; keys are random, so no slow hash."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]


class AdminUser(StoreScoped, Base):
    """A person using the admin API; the bearer token is shown once and stored as its SHA-256."""

    __tablename__ = "admin_users"
    __table_args__ = (sa.UniqueConstraint("store_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    role: Mapped[str] = mapped_column(sa.String(16))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
