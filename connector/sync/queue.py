"""Sync items: the outbox fanned out to every ESP a store is connected to, then claimed in batches.

An outbox row says what changed in a store; ``fan_out`` turns it, in the same transaction that marks the row
done, into one sync item per connected ESP. Items of the same subject coalesce while pending (the job sends
the current state), except events, which are each sent once. ``claim_due`` hands due items to the broker
grouped by store, ESP and kind, in batches of the size the ESP's entry in ``adapters.ESPS`` gives.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from ..outbox import Topic
from ..store import (
    Database,
    EspConnection,
    OutboxRow,
    Segment,
    SegmentChange,
    SegmentMember,
    SyncItem,
    SyncItemStatus,
    SyncKind,
    utcnow,
)
from ..store.claims import claim
from .adapters import batch_size, largest_batch

TOPIC_KINDS = {
    Topic.CONTACT_UPSERT: SyncKind.PROFILE,
    Topic.CONSENT_CHANGED: SyncKind.CONSENT,
    Topic.EVENT_TRACKED: SyncKind.EVENT,
    Topic.CART_ABANDONED: SyncKind.CART,
}
COALESCING_KINDS = frozenset({SyncKind.PROFILE, SyncKind.CONSENT, SyncKind.CART, SyncKind.SEGMENT})
CLAIM_LIMIT = 5000
#: Jobs' worth of items one store and ESP may have enqueued at once (see ``claim_due``).
MAX_JOBS_IN_FLIGHT = 8

SendBatch = Callable[[int, str, list[int]], object]


def fan_out(session: Session, row: OutboxRow) -> int:
    """Queue ``row``'s change for every ESP the store is connected to; returns how many items were added."""
    kind = TOPIC_KINDS.get(row.topic)
    if kind is None:
        return 0
    subject = row.subject_id
    if kind == SyncKind.CONSENT:
        subject = f"{row.subject_id}:{row.payload.get('channel')}"
    esps = session.scalars(sa.select(EspConnection.esp).where(EspConnection.store_id == row.store_id)).all()
    return sum(add(session, row.store_id, esp, kind, subject) for esp in esps)


def queue_mirror_changes(session: Session, store_id: int, changes: Sequence[SegmentChange]) -> int:
    """Queue entered/exited changes for every connected ESP their segment is mirrored to (``Segment.mirror`` has
    an entry for it); returns how many items were added. Call it in the transaction that records the changes.

    Items coalesce per segment and contact: the job mirrors the membership as it is when it runs, so entering
    and leaving again before it runs sends the net state (a remove of someone who never was there is harmless).
    """
    if not changes:
        return 0
    segment_ids = {change.segment_id for change in changes}
    mirrors: dict[int, dict[str, Any]] = {
        segment_id: mirror
        for segment_id, mirror in session.execute(
            sa.select(Segment.id, Segment.mirror).where(Segment.store_id == store_id, Segment.id.in_(segment_ids))
        )
    }
    connected = set(session.scalars(sa.select(EspConnection.esp).where(EspConnection.store_id == store_id)))
    added = 0
    seen: set[tuple[str, str]] = set()
    for change in changes:
        subject = f"{change.segment_id}:{change.contact_id}"
        for esp in sorted(set(mirrors.get(change.segment_id) or {}) & connected):
            if (esp, subject) not in seen:
                seen.add((esp, subject))
                added += add(session, store_id, esp, SyncKind.SEGMENT, subject)
    return added


def queue_segment_changes(session: Session, store_id: int, segment_id: int, *, after_change_id: int = 0) -> int:
    """Set-based ``queue_mirror_changes`` for an evaluation's INSERT … SELECT of changes: every change of
    ``segment_id`` with an id above ``after_change_id`` (read before the evaluation) is queued, in one statement
    per ESP, for each connected ESP the segment mirrors to, unless an item of that contact is already pending."""
    change = cast(sa.Table, SegmentChange.__table__)
    return _queue_segment_contacts(
        session,
        store_id,
        segment_id,
        sa.select(change.c.contact_id).where(
            change.c.store_id == store_id, change.c.segment_id == segment_id, change.c.id > after_change_id
        ),
    )


def queue_segment_members(
    session: Session, store_id: int, segment_id: int, *, esps: Collection[str] | None = None
) -> int:
    """Queue every current member of ``segment_id`` for each connected ESP the segment mirrors to (set-based, one
    statement per ESP), unless an item of that contact is already pending: a segment's baseline evaluation records
    no entered changes, yet its members must reach the mirror. The job sends the membership as it is when it runs,
    so a subject per member is all it needs. ``esps`` restricts it to those ESPs (a mirror just turned on: the
    backfill of that ESP only; the others already have the members)."""
    member = cast(sa.Table, SegmentMember.__table__)
    return _queue_segment_contacts(
        session,
        store_id,
        segment_id,
        sa.select(member.c.contact_id).where(member.c.store_id == store_id, member.c.segment_id == segment_id),
        esps=esps,
    )


def _queue_segment_contacts(
    session: Session, store_id: int, segment_id: int, source: sa.Select[Any], *, esps: Collection[str] | None = None
) -> int:
    mirror = session.scalar(sa.select(Segment.mirror).where(Segment.store_id == store_id, Segment.id == segment_id))
    connected = set(session.scalars(sa.select(EspConnection.esp).where(EspConnection.store_id == store_id)))
    item = cast(sa.Table, SyncItem.__table__)
    found = source.subquery("found")
    subject = sa.literal(f"{segment_id}:") + sa.cast(found.c.contact_id, sa.String)
    added = 0
    now = utcnow()
    targets = set(mirror or {}) & connected
    if esps is not None:
        targets &= set(esps)
    for esp in sorted(targets):
        pending = sa.exists().where(
            item.c.store_id == store_id,
            item.c.esp == esp,
            item.c.kind == SyncKind.SEGMENT.value,
            item.c.subject_id == subject,
            item.c.status == SyncItemStatus.PENDING.value,
        )
        contacts = sa.select(found.c.contact_id).where(sa.not_(pending)).distinct().subquery()
        rows = sa.select(
            sa.literal(store_id),
            sa.literal(esp),
            sa.literal(SyncKind.SEGMENT.value),
            sa.literal(f"{segment_id}:") + sa.cast(contacts.c.contact_id, sa.String),
            sa.literal({}, item.c.payload.type),
            sa.literal(SyncItemStatus.PENDING.value),
            sa.literal(0),
            sa.literal(now, item.c.created_at.type),
            sa.literal(now, item.c.available_at.type),
        )
        cols = ["store_id", "esp", "kind", "subject_id", "payload", "status", "attempts", "created_at", "available_at"]
        added += int(session.scalar(sa.select(sa.func.count()).select_from(contacts)) or 0)  # before: not pending
        session.execute(item.insert().from_select(cols, rows))
    return added


def add(
    session: Session, store_id: int, esp: str, kind: str, subject: str, payload: dict[str, Any] | None = None
) -> int:
    """Add one item unless an equal one is already pending (coalescing kinds); returns 1 if added."""
    if kind in COALESCING_KINDS:
        session.flush()
        pending = session.scalar(
            sa.select(SyncItem.id).where(
                SyncItem.store_id == store_id,
                SyncItem.esp == esp,
                SyncItem.kind == kind,
                SyncItem.subject_id == subject,
                SyncItem.status == SyncItemStatus.PENDING,
            )
        )
        if pending is not None:
            return 0
    session.add(SyncItem(store_id=store_id, esp=esp, kind=kind, subject_id=subject, payload=payload or {}))
    return 1


def claim_due(db: Database, send: SendBatch, *, send_consent: SendBatch | None = None, limit: int = CLAIM_LIMIT) -> int:
    """Mark due pending items enqueued and send them as batches; returns the number of items sent.

    Consent items go first, outside the in-flight cap, through ``send_consent`` (the consent queue, which the
    workers take before any other): a withdrawal must reach every ESP ahead of a backlog of marketing syncs
    for the same contact, and it is one small call per contact, so it never floods an ESP.

    A coalescing item waits while an earlier item of the same subject is enqueued: that job loaded the older
    state and may still be sending it, so sending the newer state beside it could let the older one reach the
    ESP last (a stale profile, a withdrawn subscription restored). It goes once the earlier one is settled.

    Each store and ESP has at most ``MAX_JOBS_IN_FLIGHT`` jobs' worth of items enqueued. The worker threads and
    the broker's queue are shared by every ESP: without this, a backlog for a slow account (ActiveCampaign's
    5 requests/s after an outage) would fill the queue, and another ESP's changes would wait behind all of it.
    """
    now = utcnow()
    consent = claim(db, SyncItem, _due_query(now).where(SyncItem.kind == SyncKind.CONSENT).limit(limit), now)
    _send(consent, send, send_consent)
    claimed = len(consent)
    with db.reader() as session:
        due = session.execute(
            sa.select(SyncItem.store_id, SyncItem.esp)
            .where(
                SyncItem.status == SyncItemStatus.PENDING,
                SyncItem.available_at <= now,
                SyncItem.kind != SyncKind.CONSENT,
            )
            .distinct()
        ).all()
        if not due:
            return claimed
        in_flight = {
            (store_id, esp): count
            for store_id, esp, count in session.execute(
                sa.select(SyncItem.store_id, SyncItem.esp, sa.func.count(SyncItem.id))
                .where(SyncItem.status == SyncItemStatus.ENQUEUED, SyncItem.kind != SyncKind.CONSENT)
                .group_by(SyncItem.store_id, SyncItem.esp)
            )
        }
    batches: list[list[tuple[int, str, list[int]]]] = []
    for store_id, esp in sorted(due):
        room = min(limit - claimed, MAX_JOBS_IN_FLIGHT * largest_batch(esp) - in_flight.get((store_id, esp), 0))
        if room > 0:
            query = (
                _due_query(now)
                .where(SyncItem.store_id == store_id, SyncItem.esp == esp, SyncItem.kind != SyncKind.CONSENT)
                .limit(room)
            )
            rows = claim(db, SyncItem, query, now)
            claimed += len(rows)
            batches.append(_batches(rows))
    # Taken in turns, one job per store and ESP: the broker's queue is first come, first served, and one ESP's
    # jobs all sent first would make another's wait behind them.
    for turn in itertools.zip_longest(*batches):
        for batch in turn:
            if batch is not None:
                send(*batch)
    return claimed


def _due_query(now: dt.datetime) -> sa.Select[int, int, str, str]:
    in_flight = aliased(SyncItem)
    return (
        sa.select(SyncItem.id, SyncItem.store_id, SyncItem.esp, SyncItem.kind)
        .where(SyncItem.status == SyncItemStatus.PENDING, SyncItem.available_at <= now)
        .where(
            ~sa.exists().where(
                SyncItem.kind.in_(COALESCING_KINDS),
                in_flight.store_id == SyncItem.store_id,
                in_flight.esp == SyncItem.esp,
                in_flight.kind == SyncItem.kind,
                in_flight.subject_id == SyncItem.subject_id,
                in_flight.status == SyncItemStatus.ENQUEUED,
            )
        )
        .order_by(SyncItem.id)
    )


def sweep_stalled(
    db: Database, send: SendBatch, *, visibility_timeout: float, send_consent: SendBatch | None = None
) -> int:
    """Send again items enqueued longer than ``visibility_timeout`` ago (a lost message, a killed worker)."""
    now = utcnow()
    query = (
        sa.select(SyncItem.id, SyncItem.store_id, SyncItem.esp, SyncItem.kind)
        .where(
            SyncItem.status == SyncItemStatus.ENQUEUED,
            SyncItem.enqueued_at < now - dt.timedelta(seconds=visibility_timeout),
        )
        .order_by(SyncItem.id)
        .limit(CLAIM_LIMIT)
    )
    rows = claim(db, SyncItem, query, now)
    _send(rows, send, send_consent)
    return len(rows)


def _send(rows: Sequence[sa.Row[int, int, str, str]], send: SendBatch, send_consent: SendBatch | None) -> None:
    """Send claimed rows as jobs: consent batches first, through ``send_consent`` when given, then the others."""
    for batch in _batches([row for row in rows if row.kind == SyncKind.CONSENT]):
        (send_consent or send)(*batch)
    for batch in _batches([row for row in rows if row.kind != SyncKind.CONSENT]):
        send(*batch)


def _batches(rows: Sequence[sa.Row[int, int, str, str]]) -> list[tuple[int, str, list[int]]]:
    """Claimed rows as job arguments: (store, ESP, item ids), one kind per job, in the ESP's batch sizes."""
    groups: defaultdict[tuple[int, str, str], list[int]] = defaultdict(list)
    for row in rows:
        groups[(row.store_id, row.esp, row.kind)].append(row.id)
    batches = []
    for (store_id, esp, kind), ids in groups.items():
        size = batch_size(esp, kind)
        batches += [(store_id, esp, ids[start : start + size]) for start in range(0, len(ids), size)]
    return batches


def replay(
    session: Session, *, store_id: int | None = None, esp: str | None = None, ids: list[int] | None = None
) -> int:
    """Put dead items back in the queue with a fresh retry budget; returns how many."""
    query = sa.update(SyncItem).where(SyncItem.status == SyncItemStatus.DEAD)
    if store_id is not None:
        query = query.where(SyncItem.store_id == store_id)
    if esp is not None:
        query = query.where(SyncItem.esp == esp)
    if ids is not None:
        query = query.where(SyncItem.id.in_(ids))
    now = utcnow()
    result = session.execute(
        query.values(status=SyncItemStatus.PENDING, attempts=0, created_at=now, available_at=now).execution_options(
            synchronize_session=False
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def dead_letters(
    session: Session, store_id: int, *, esp: str | None = None, limit: int = 50
) -> tuple[int, list[dict[str, Any]]]:
    """How many dead letters the store has, and the newest ``limit`` of them as the CLI and admin API show them."""
    where = [SyncItem.store_id == store_id, SyncItem.status == SyncItemStatus.DEAD]
    if esp is not None:
        where.append(SyncItem.esp == esp)
    total = session.scalar(sa.select(sa.func.count(SyncItem.id)).where(*where)) or 0
    rows = session.scalars(sa.select(SyncItem).where(*where).order_by(SyncItem.id.desc()).limit(limit))
    items = [
        {
            "id": item.id,
            "esp": item.esp,
            "kind": item.kind,
            "subject": item.subject_id,
            "attempts": item.attempts,
            "created_at": item.created_at,
            "last_error": item.last_error,
        }
        for item in rows
    ]
    return total, items
