"""Raw accepted messages: the durable record behind every 200 the ingestion API gives."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, StoreScoped


class Event(StoreScoped, Base):
    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("store_id", "message_id"),
        sa.Index(None, "store_id", "contact_id", "name"),
        # The projector's work queue: small, because projected rows leave it.
        sa.Index(
            "ix_events_unprojected",
            "store_id",
            "id",
            postgresql_where=sa.text("projected_at IS NULL"),
            sqlite_where=sa.text("projected_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(200))
    type: Mapped[str] = mapped_column(sa.String(16))
    name: Mapped[str | None] = mapped_column(sa.String(200))
    user_id: Mapped[str | None] = mapped_column(sa.String(200))
    anonymous_id: Mapped[str | None] = mapped_column(sa.String(200))
    contact_id: Mapped[int | None] = mapped_column(sa.ForeignKey("contacts.id", ondelete="SET NULL"))
    timestamp: Mapped[dt.datetime]
    received_at: Mapped[dt.datetime]
    payload: Mapped[dict[str, Any]]
    projected_at: Mapped[dt.datetime | None]
    #: Why projection could not apply this event (it stays stored; nothing is retried forever).
    projection_error: Mapped[str | None] = mapped_column(sa.Text)
