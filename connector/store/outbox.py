"""The outbox: every effect an ESP must learn of, written in the same transaction as the change."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, StoreScoped, utcnow


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"  # due at available_at
    ENQUEUED = "enqueued"  # handed to the broker at enqueued_at; the sweeper re-sends it if it stalls
    DONE = "done"
    DEAD = "dead"  # retries exhausted or a permanent failure; last_error says why


class OutboxRow(StoreScoped, Base):
    __tablename__ = "outbox"
    __table_args__ = (
        sa.Index(None, "status", "available_at"),
        sa.Index(None, "store_id", "topic", "subject_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    topic: Mapped[str] = mapped_column(sa.String(64))
    subject_id: Mapped[str] = mapped_column(sa.String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(sa.String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    available_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[dt.datetime | None]
    done_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
