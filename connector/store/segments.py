"""Segments (DESIGN.md section 9): criteria, materialised members, entered/exited changes, daily counts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, Derived, StoreScoped, utcnow


class Segment(StoreScoped, Base):
    __tablename__ = "segments"
    __table_args__ = (sa.UniqueConstraint("store_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str | None] = mapped_column(sa.Text)
    criteria: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: A marketing audience leaves out contacts unsubscribed on email unless its criteria ask for consent.
    marketing: Mapped[bool] = mapped_column(default=True)
    prebuilt: Mapped[bool] = mapped_column(default=False)
    #: Where the members are mirrored: {"klaviyo": {"list_id": …}, "activecampaign": {"tag": …}}.
    mirror: Mapped[dict[str, Any]] = mapped_column(default=dict)
    member_count: Mapped[int] = mapped_column(default=0)
    evaluated_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SegmentMember(Derived, Base):
    """A contact in a segment (read by segment: the primary key is the only index)."""

    __tablename__ = "segment_members"

    segment_id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(primary_key=True)
    entered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SegmentChange(StoreScoped, Base):
    """A contact entering or leaving a segment (what flows and the ESP mirror consume)."""

    __tablename__ = "segment_changes"
    __table_args__ = (sa.Index(None, "store_id", "segment_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    segment_id: Mapped[int] = mapped_column(sa.ForeignKey("segments.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    change: Mapped[str] = mapped_column(sa.String(8))  # entered | exited
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SegmentCount(StoreScoped, Base):
    """Members per segment per day (the last evaluation of the day wins): growth trends."""

    __tablename__ = "segment_counts"

    segment_id: Mapped[int] = mapped_column(sa.ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(primary_key=True)
    members: Mapped[int]
