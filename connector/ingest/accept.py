"""Durable acceptance: accepted messages become ``events`` rows, committed before the request is answered."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..store import Database, Event
from .committer import GroupCommitter
from .messages import Accepted


def store_events(
    committer: GroupCommitter, store_id: int, messages: Sequence[Accepted], received_at: dt.datetime
) -> int:
    """Insert ``messages`` for ``store_id`` and commit; returns how many were new (the rest were duplicates).

    Duplicate messageIds are ignored by the unique (store_id, message_id) constraint, which makes client retries
    idempotent; within one request the first occurrence wins. When this returns, the rows are committed, so the
    caller may acknowledge.
    """
    return committer.submit(store_id, _rows(store_id, messages, received_at))


def _rows(store_id: int, messages: Sequence[Accepted], received_at: dt.datetime) -> list[dict[str, Any]]:
    # A messageId repeated inside the request is left to the committer, which keeps the first of each
    # (store, messageId) across everything it commits together.
    return [
        {
            "store_id": store_id,
            "message_id": message.message_id,
            "type": message.type,
            "name": message.name,
            "user_id": message.user_id,
            "anonymous_id": message.anonymous_id,
            "timestamp": message.timestamp,
            "received_at": received_at,
            "payload": message.payload,
        }
        for message in messages
    ]


def pending_projection(db: Database) -> list[int]:
    """Ids of stores that have accepted events not yet projected (uses the partial index)."""
    with db.reader() as session:
        return list(session.scalars(sa.select(Event.store_id).where(Event.projected_at.is_(None)).distinct()))
