"""Sync state per ESP: the delivery queue, the contact ↔ ESP profile links, full-sync runs, engagement.

The outbox (store/outbox.py) records *that* something changed, once per store; a sync item records that one ESP
still has to learn of it. Every connected ESP gets its own items, so one ESP's outage never delays another.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, StoreScoped, utcnow


class SyncKind(enum.StrEnum):
    PROFILE = "profile"  # subject: contact id; coalesces (the current state is sent)
    CONSENT = "consent"  # subject: "<contact id>:<channel>"; coalesces
    EVENT = "event"  # subject: event id; never coalesces (each event is sent once, unique_id = messageId)
    CART = "cart"  # subject: cart row id, when the cart is abandoned; coalesces
    ERASE = "erase"  # subject: "<erasure id>:<contact id>"; payload: the identifiers the ESP deletes by
    SEGMENT = "segment"  # subject: "<segment id>:<contact id>"; coalesces (the current membership is mirrored)


class SyncItemStatus(enum.StrEnum):
    PENDING = "pending"  # due at available_at
    ENQUEUED = "enqueued"  # handed to the broker; the sweeper re-sends it if it stalls
    DONE = "done"
    SKIPPED = "skipped"  # nothing to send (no identifier the ESP accepts, unchanged profile); last_error says why
    DEAD = "dead"  # a dead letter: rejected, a permanent failure, or retries exhausted; last_error has the ESP's text


class SyncItem(StoreScoped, Base):
    __tablename__ = "sync_items"
    __table_args__ = (
        sa.Index(None, "status", "available_at"),
        sa.Index(None, "store_id", "esp", "kind", "subject_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    esp: Mapped[str] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(16))
    subject_id: Mapped[str] = mapped_column(sa.String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(sa.String(16), default=SyncItemStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    available_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[dt.datetime | None]
    done_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)


class EspLink(StoreScoped, Base):
    """A contact as one ESP knows it: its id there and the hash of what we last sent (unchanged = no request)."""

    __tablename__ = "esp_links"
    __table_args__ = (sa.UniqueConstraint("store_id", "esp", "contact_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    esp: Mapped[str] = mapped_column(sa.String(32))
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    remote_id: Mapped[str | None] = mapped_column(sa.String(64))
    synced_hash: Mapped[str | None] = mapped_column(sa.String(64))
    synced_at: Mapped[dt.datetime | None]


class SyncRunStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class SyncRun(StoreScoped, Base):
    """One full sync: progress, counts and the cursor it resumes from after a crash."""

    __tablename__ = "sync_runs"
    __table_args__ = (sa.Index(None, "store_id", "esp", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    esp: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16), default=SyncRunStatus.RUNNING)
    dry_run: Mapped[bool] = mapped_column(default=False)
    force: Mapped[bool] = mapped_column(default=False)
    requested_by: Mapped[str | None] = mapped_column(sa.String(200))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    #: Contacts with an id at or below this are done (keyset cursor); events in (events_from, events_through].
    contact_cursor: Mapped[int] = mapped_column(default=0)
    event_cursor: Mapped[int] = mapped_column(BigId, default=0)
    events_from: Mapped[int] = mapped_column(BigId, default=0)
    events_through: Mapped[int] = mapped_column(BigId, default=0)
    total: Mapped[int] = mapped_column(default=0)
    processed: Mapped[int] = mapped_column(default=0)
    created: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)
    unchanged: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    #: Contacts the ESP cannot take (no identifier it accepts: anonymous visitors); no request is made for them.
    skipped: Mapped[int] = mapped_column(default=0)
    events_sent: Mapped[int] = mapped_column(default=0)
    requests: Mapped[int] = mapped_column(default=0)
    #: The first rejected records (contact id, reason), capped; the counts above are complete.
    rejections: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON, default=list)
    error: Mapped[str | None] = mapped_column(sa.Text)

    @property
    def duration(self) -> float:
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()


class EngagementKind(enum.StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    BOUNCED = "bounced"
    MARKED_SPAM = "marked_spam"
    UNSUBSCRIBED = "unsubscribed"


class Engagement(StoreScoped, Base):
    """What a person did with a message an ESP sent, reported by its webhooks or polled from its API."""

    __tablename__ = "engagement"
    __table_args__ = (
        sa.UniqueConstraint("store_id", "esp", "esp_event_id"),
        sa.Index(None, "store_id", "contact_id", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    esp: Mapped[str] = mapped_column(sa.String(32))
    #: The ESP's id of the event: deliveries are at least once, this makes recording them idempotent.
    esp_event_id: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(32))
    contact_id: Mapped[int | None] = mapped_column(sa.ForeignKey("contacts.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(sa.String(16), default="email")
    occurred_at: Mapped[dt.datetime]
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Bounce type, campaign/flow and message ids, the clicked URL: what the ESP sent, minus personal data.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
