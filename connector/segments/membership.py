"""Materialised membership: evaluate a segment set-based in SQL, diff old vs new, record entered/exited.

One evaluation = one transaction: the compiled select lands in a per-connection temporary table, then four
set statements (entered changes, exited changes, delete exits, insert entries) diff it against the stored
members. Restricted to ``contact_ids`` it is the incremental path (a contact's order or consent change).

The first full evaluation of a segment is its baseline: members are written, no entered changes are recorded
(flows triggered by entering a segment fire for people who enter after it exists, not for everyone already in
it), and a mirrored segment queues one sync item per member so the ESP list still gets them (``_first_fill``).
Until then the incremental path leaves the segment alone: entered changes recorded for the few contacts that
happened to change before the baseline would make the baseline's "nobody entered" untrue for them, and a later
full evaluation of a segment whose first evaluations were incremental would record everyone else as entered.
Creating a segment (``service.create_segment``) evaluates it at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from connector.errors import NotFound
from connector.outbox import Topic
from connector.store import Database, utcnow
from connector.store.commerce import Cart, Order, WaitlistEntry
from connector.store.contacts import Contact
from connector.store.db import bulk_work_mem
from connector.store.events import Event
from connector.store.segments import Segment, SegmentChange, SegmentCount, SegmentMember
from connector.store.tenancy import Store
from connector.sync.queue import queue_segment_changes, queue_segment_members

from .compile import compile_criteria
from .criteria import parse
from .prebuilt import install_prebuilt

log = logging.getLogger(__name__)

#: Contact ids per statement in the incremental path (well under SQLite's bound-parameter limit).
CHUNK = 500

_scratch = sa.Table(
    "segment_eval_new", sa.MetaData(), sa.Column("contact_id", sa.BigInteger, primary_key=True), prefixes=["TEMPORARY"]
)


@dataclass(frozen=True)
class Evaluation:
    segment_id: int
    members: int
    entered: int
    exited: int


def _restrict(column: Any, contact_ids: Sequence[int] | None) -> list[Any]:
    return [] if contact_ids is None else [column.in_(contact_ids)]


def _evaluate_in(session: Session, segment: Segment, contact_ids: Sequence[int] | None, now: dt.datetime) -> Evaluation:
    store_id, segment_id = segment.store_id, segment.id
    if contact_ids is None and segment.member_count == 0 and _is_empty(session, segment_id):
        return _first_fill(session, segment, now)
    bind = session.connection()
    # A temporary table lives per connection: concurrent evaluations never see each other's rows.
    _scratch.create(bind, checkfirst=True)
    session.execute(_scratch.delete())
    query = compile_criteria(store_id, parse(segment.criteria), marketing=segment.marketing, now=now)
    query = query.where(*_restrict(Contact.id, contact_ids))
    session.execute(_scratch.insert().from_select(["contact_id"], query))

    member = cast(sa.Table, SegmentMember.__table__)
    is_member = sa.exists().where(member.c.segment_id == segment_id, member.c.contact_id == _scratch.c.contact_id)
    still_in = sa.exists().where(_scratch.c.contact_id == member.c.contact_id)
    leaving = [member.c.segment_id == segment_id, *_restrict(member.c.contact_id, contact_ids), sa.not_(still_in)]
    change = cast(sa.Table, SegmentChange.__table__)
    cols = ["store_id", "segment_id", "contact_id", "change", "at"]
    # Counted before the diff is applied (drivers disagree on INSERT … SELECT row counts).
    entered = _count(session, sa.select(sa.func.count()).select_from(_scratch).where(sa.not_(is_member)))
    exited = _count(session, sa.select(sa.func.count()).select_from(member).where(*leaving))
    last_change = _last_change_id(session, store_id)
    session.execute(
        change.insert().from_select(
            cols,
            sa.select(
                sa.literal(store_id),
                sa.literal(segment_id),
                _scratch.c.contact_id,
                sa.literal("entered"),
                sa.literal(now, change.c.at.type),
            ).where(sa.not_(is_member)),
        ),
    )
    session.execute(
        change.insert().from_select(
            cols,
            sa.select(
                sa.literal(store_id),
                sa.literal(segment_id),
                member.c.contact_id,
                sa.literal("exited"),
                sa.literal(now, change.c.at.type),
            ).where(*leaving),
        ),
    )
    session.execute(member.delete().where(*leaving))
    session.execute(
        member.insert().from_select(
            ["store_id", "segment_id", "contact_id", "entered_at"],
            sa.select(
                sa.literal(store_id),
                sa.literal(segment_id),
                _scratch.c.contact_id,
                sa.literal(now, member.c.entered_at.type),
            )
            .where(sa.not_(is_member))
            .order_by(_scratch.c.contact_id),
        )
    )
    session.execute(_scratch.delete())
    if (entered or exited) and segment.mirror:
        queue_segment_changes(session, store_id, segment_id, after_change_id=last_change)
    # Incremental: the count follows from the diff (the segment row is locked), instead of counting every member
    # of the segment on each change; a full evaluation recounts.
    count = segment.member_count + entered - exited if contact_ids is not None else _member_count(session, segment_id)
    _record_count(session, segment, count, now)
    return Evaluation(segment_id, count, entered, exited)


def _is_empty(session: Session, segment_id: int) -> bool:
    member = cast(sa.Table, SegmentMember.__table__)
    return session.scalar(sa.select(sa.exists().where(member.c.segment_id == segment_id))) is False


def _first_fill(session: Session, segment: Segment, now: dt.datetime) -> Evaluation:
    """A segment without members: everyone matching enters, so there is nothing to diff; the members are written
    with one INSERT … SELECT (no scratch table, no anti-joins).

    The first evaluation of a segment (never evaluated before) is its baseline: its members are written, but no
    entered changes. Nobody entered anything: the segment just started to exist, so a flow triggered by entering
    it must not fire for everyone already in it (Klaviyo's segment-triggered flows behave the same way, and the
    RFM snapshot's first run records no group transitions either). A mirrored segment still sends its baseline:
    one sync item per member (the mirror job sends current membership). Later evaluations of an empty segment
    (it had members once, or was evaluated empty) record every member as entered, as any diff would."""
    store_id, segment_id = segment.store_id, segment.id
    baseline = segment.evaluated_at is None
    member = cast(sa.Table, SegmentMember.__table__)
    change = cast(sa.Table, SegmentChange.__table__)
    last_change = _last_change_id(session, store_id)
    matching = compile_criteria(store_id, parse(segment.criteria), marketing=segment.marketing, now=now).subquery()
    session.execute(
        member.insert().from_select(
            ["store_id", "segment_id", "contact_id", "entered_at"],
            sa.select(
                sa.literal(store_id), sa.literal(segment_id), matching.c.id, sa.literal(now, member.c.entered_at.type)
            ).order_by(matching.c.id),  # in key order, as the RFM scores (connector.rfm)
        )
    )
    if not baseline:
        session.execute(
            change.insert().from_select(
                ["store_id", "segment_id", "contact_id", "change", "at"],
                sa.select(
                    sa.literal(store_id),
                    sa.literal(segment_id),
                    member.c.contact_id,
                    sa.literal("entered"),
                    sa.literal(now, change.c.at.type),
                ).where(member.c.segment_id == segment_id),
            )
        )
    count = _member_count(session, segment_id)
    if count and segment.mirror:
        if baseline:
            queue_segment_members(session, store_id, segment_id)
        else:
            queue_segment_changes(session, store_id, segment_id, after_change_id=last_change)
    _record_count(session, segment, count, now)
    return Evaluation(segment_id, count, 0 if baseline else count, 0)


def _record_count(session: Session, segment: Segment, count: int, now: dt.datetime) -> None:
    segment.member_count = count
    segment.evaluated_at = now
    # The last evaluation of the store's local day wins. The store row is loaded once per session (identity map),
    # so the chunks of one evaluation share the lookup.
    day = now.astimezone(ZoneInfo(session.get_one(Store, segment.store_id).timezone)).date()
    daily = session.get(SegmentCount, (segment.id, day))
    if daily is None:
        session.add(SegmentCount(store_id=segment.store_id, segment_id=segment.id, day=day, members=count))
    else:
        daily.members = count


def _count(session: Session, query: sa.Select[Any]) -> int:
    return int(session.scalar(query) or 0)


def _member_count(session: Session, segment_id: int) -> int:
    return _count(session, sa.select(sa.func.count()).where(SegmentMember.segment_id == segment_id))


def _last_change_id(session: Session, store_id: int) -> int:
    """The store's newest change id: the changes an evaluation writes next get higher ones, so the ESP mirror
    queues exactly those, in the same transaction."""
    return _count(
        session, sa.select(sa.func.coalesce(sa.func.max(SegmentChange.id), 0)).where(SegmentChange.store_id == store_id)
    )


def _locked_segment(session: Session, store_id: int, segment_id: int) -> Segment:
    # FOR UPDATE serialises evaluations of one segment on PostgreSQL (SQLite writers are serial already).
    segment = session.scalar(
        sa.select(Segment).where(Segment.store_id == store_id, Segment.id == segment_id).with_for_update()
    )
    if segment is None:
        raise NotFound(f"segment {segment_id} does not exist in this store")
    return segment


def evaluate(
    db: Database,
    store_id: int,
    segment_id: int,
    *,
    contact_ids: Sequence[int] | None = None,
    now: dt.datetime | None = None,
) -> Evaluation:
    """Recompute one segment (in full, or only for ``contact_ids``) and record who entered and exited."""
    now = now or utcnow()
    with db.writer() as session:
        segment = _locked_segment(session, store_id, segment_id)
        if contact_ids is None:
            bulk_work_mem(session)  # a whole-store select: group-bys over every order, without spilling to disk
            return _evaluate_in(session, segment, None, now)
        totals = Evaluation(segment_id, segment.member_count, 0, 0)
        if segment.evaluated_at is None:
            return totals  # no baseline yet: its first full evaluation records who is in (see the module's doc)
        ids = sorted(set(contact_ids))
        for start in range(0, len(ids), CHUNK):
            part = _evaluate_in(session, segment, ids[start : start + CHUNK], now)
            totals = Evaluation(segment_id, part.members, totals.entered + part.entered, totals.exited + part.exited)
        return totals


def ensure_prebuilt(db: Database, store_id: int) -> None:
    """The first evaluation of a store installs its pre-built segments."""
    with db.reader() as session:
        has = session.scalar(sa.select(sa.exists().where(Segment.store_id == store_id, Segment.prebuilt.is_(True))))
    if not has:
        with db.writer() as session:
            install_prebuilt(session, store_id)


def segment_ids(db: Database, store_id: int) -> list[int]:
    with db.reader() as session:
        return list(session.scalars(sa.select(Segment.id).where(Segment.store_id == store_id).order_by(Segment.id)))


def evaluate_all(
    db: Database, store_id: int, *, contact_ids: Sequence[int] | None = None, now: dt.datetime | None = None
) -> list[Evaluation]:
    """Every segment of the store, each in its own transaction (one slow segment holds no other back)."""
    ensure_prebuilt(db, store_id)
    now = now or utcnow()
    return [evaluate(db, store_id, sid, contact_ids=contact_ids, now=now) for sid in segment_ids(db, store_id)]


#: Outbox topics whose change can move a contact in or out of a segment.
SEGMENT_TOPICS = frozenset(
    {
        Topic.CONTACT_UPSERT,
        Topic.CONTACT_MERGED,
        Topic.CONSENT_CHANGED,
        Topic.EVENT_TRACKED,
        Topic.ORDER_CHANGED,
        Topic.CART_CHANGED,
        Topic.CART_ABANDONED,
        Topic.WAITLIST_CHANGED,
        Topic.ENGAGEMENT_RECORDED,
    }
)


def contacts_of(session: Session, store_id: int, topic: str, subject_id: str, payload: dict[str, Any]) -> set[int]:
    """The contacts an outbox row is about (its subject is a contact, order, event, cart or waitlist entry)."""
    if topic not in SEGMENT_TOPICS or not subject_id.isdigit():
        return set()
    subject = int(subject_id)
    if topic in (Topic.CONTACT_UPSERT, Topic.CONSENT_CHANGED, Topic.ENGAGEMENT_RECORDED):
        return {subject}
    if topic == Topic.CONTACT_MERGED:
        into = payload.get("into")
        return {subject, *([int(into)] if isinstance(into, int) else [])}
    table: Any = {
        Topic.EVENT_TRACKED: Event,
        Topic.ORDER_CHANGED: Order,
        Topic.CART_CHANGED: Cart,
        Topic.CART_ABANDONED: Cart,
        Topic.WAITLIST_CHANGED: WaitlistEntry,
    }[topic]
    found = session.scalar(sa.select(table.contact_id).where(table.store_id == store_id, table.id == subject))
    return {found} if found is not None else set()


def refresh_contacts(db: Database, store_id: int, contact_ids: Iterable[int]) -> list[Evaluation]:
    """The incremental path: re-evaluate every segment of the store for these contacts only."""
    ids = sorted(set(contact_ids))
    if not ids:
        return []
    # Only the store's existing segments: a change never installs the pre-built ones (evaluation does).
    now = utcnow()
    results = [evaluate(db, store_id, sid, contact_ids=ids, now=now) for sid in segment_ids(db, store_id)]
    return [e for e in results if e.entered or e.exited]
