"""Claiming queued rows (outbox rows, sync items) for the broker, so that several relays never send one twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TypeVarTuple

import sqlalchemy as sa

from .db import Database
from .outbox import OutboxRow
from .sync import SyncItem

Ts = TypeVarTuple("Ts")


def claim(
    db: Database, model: type[OutboxRow] | type[SyncItem], query: sa.Select[int, *Ts], now: dt.datetime
) -> Sequence[sa.Row[int, *Ts]]:
    """The rows ``query`` selects (its first column is the id), marked enqueued at ``now`` and committed.

    On PostgreSQL the rows are locked with SKIP LOCKED, so concurrent relays take disjoint sets; SQLite
    serialises writers. A crash after the commit leaves them enqueued, for the sweeper to send again.
    """
    if db.dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    with db.writer() as session:
        rows = session.execute(query).all()
        if rows:
            session.execute(
                sa.update(model)
                .where(model.id.in_([row[0] for row in rows]))
                .values(status="enqueued", enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
    return rows
