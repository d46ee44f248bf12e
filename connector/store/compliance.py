"""Compliance: suppressions (people kept out of every ESP) and erasures (the right to be forgotten)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, StoreScoped, utcnow


class Suppression(StoreScoped, Base):
    """An HMAC of a normalised email or E.164 phone (the store's secret key): recognisable, not readable."""

    __tablename__ = "suppressions"
    __table_args__ = (sa.UniqueConstraint("store_id", "digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # email | phone
    digest: Mapped[str] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.String(32))  # erased | admin
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Erasure(StoreScoped, Base):
    """One erasure request and its report: what was erased locally, and each ESP's outcome."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(primary_key=True)
    requested_by: Mapped[str] = mapped_column(sa.String(320))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: How the person was named (email, phone, contact): never the value itself.
    identifier_kind: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), default="running")  # running | done | failed
    finished_at: Mapped[dt.datetime | None]
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
