"""Segment CRUD shared by the admin API and the CLI (store-scoped; validation names the field path)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from connector.errors import InvalidInput, NotFound
from connector.store import Database
from connector.store.contacts import Contact
from connector.store.segments import Segment, SegmentCount, SegmentMember
from connector.sync.queue import queue_segment_members

from .criteria import parse
from .membership import evaluate
from .mirror import checked_esp, checked_mirror

EDITABLE = ("name", "description", "criteria", "marketing")
#: Members per round trip of the CSV export (a server-side-friendly keyset page, never the whole set in memory).
EXPORT_PAGE = 5000


def to_dict(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "name": segment.name,
        "description": segment.description,
        "criteria": segment.criteria,
        "marketing": segment.marketing,
        "prebuilt": segment.prebuilt,
        "mirror": segment.mirror,
        "member_count": segment.member_count,
        "evaluated_at": segment.evaluated_at.isoformat() if segment.evaluated_at else None,
        "created_at": segment.created_at.isoformat(),
        "updated_at": segment.updated_at.isoformat(),
    }


def _checked(body: Any, *, partial: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("body", "expected a JSON object")
    unknown = sorted(set(body) - set(EDITABLE))
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field (editable: {', '.join(EDITABLE)})")
    if not partial:
        for required in ("name", "criteria"):
            if required not in body:
                raise InvalidInput(required, "is required")
    if "name" in body and (not isinstance(body["name"], str) or not 1 <= len(body["name"].strip()) <= 200):
        raise InvalidInput("name", "expected a string of 1 to 200 characters")
    if "description" in body and body["description"] is not None and not isinstance(body["description"], str):
        raise InvalidInput("description", "expected a string or null")
    if "marketing" in body and not isinstance(body["marketing"], bool):
        raise InvalidInput("marketing", "expected true or false")
    if "criteria" in body:
        try:
            parse(body["criteria"])
        except InvalidInput as exc:
            # The path inside the body: criteria.all[0].orders.count.gte
            field = "criteria" if exc.field == "criteria" else f"criteria.{exc.field}"
            raise InvalidInput(field, exc.reason) from None
    return {key: (value.strip() if key == "name" else value) for key, value in body.items()}


def _get(session: Session, store_id: int, segment_id: int, *, lock: bool = False) -> Segment:
    query = sa.select(Segment).where(Segment.store_id == store_id, Segment.id == segment_id)
    segment = session.scalar(query.with_for_update() if lock else query)
    if segment is None:
        raise NotFound(f"segment {segment_id} does not exist in this store")
    return segment


def _name_free(session: Session, store_id: int, name: str, but: int | None = None) -> None:
    query = sa.select(Segment.id).where(Segment.store_id == store_id, Segment.name == name)
    if but is not None:
        query = query.where(Segment.id != but)
    if session.scalar(query) is not None:
        raise InvalidInput("name", f"a segment named {name!r} already exists in this store")


def list_segments(db: Database, store_id: int) -> list[dict[str, Any]]:
    with db.reader() as session:
        rows = session.scalars(sa.select(Segment).where(Segment.store_id == store_id).order_by(Segment.id))
        return [to_dict(s) for s in rows]


def get_segment(db: Database, store_id: int, segment_id: int) -> dict[str, Any]:
    with db.reader() as session:
        return to_dict(_get(session, store_id, segment_id))


def create_segment(db: Database, store_id: int, body: Any) -> dict[str, Any]:
    """Create a segment and evaluate it in full: its baseline (members, no entered changes), after which every
    change is recorded (the incremental path leaves segments without one alone; see ``membership``)."""
    fields = _checked(body, partial=False)
    with db.writer() as session:
        _name_free(session, store_id, fields["name"])
        segment = Segment(store_id=store_id, **fields)
        session.add(segment)
        session.flush()
        segment_id = segment.id
    evaluate(db, store_id, segment_id)
    return get_segment(db, store_id, segment_id)


def update_segment(db: Database, store_id: int, segment_id: int, body: Any) -> dict[str, Any]:
    """Change a segment; new criteria or a new ``marketing`` flag are evaluated at once (the members who leave or
    join under the new definition are recorded as exited and entered)."""
    fields = _checked(body, partial=True)
    with db.writer() as session:
        segment = _get(session, store_id, segment_id)
        if "name" in fields:
            _name_free(session, store_id, fields["name"], but=segment_id)
        redefined = any(key in fields and fields[key] != getattr(segment, key) for key in ("criteria", "marketing"))
        for key, value in fields.items():
            setattr(segment, key, value)
    if redefined:
        evaluate(db, store_id, segment_id)
    return get_segment(db, store_id, segment_id)


def delete_segment(db: Database, store_id: int, segment_id: int) -> None:
    with db.writer() as session:
        segment = _get(session, store_id, segment_id)
        # Children first: SQLite enforces no ON DELETE CASCADE unless foreign keys are switched on.
        for child in ("segment_members", "segment_changes", "segment_counts"):
            table = Segment.metadata.tables[child]
            session.execute(table.delete().where(table.c.segment_id == segment_id, table.c.store_id == store_id))
        session.delete(segment)


def set_mirror(db: Database, store_id: int, segment_id: int, esp: str, options: Any) -> dict[str, Any]:
    """Mirror the segment to ``esp`` with ``options`` (see ``mirror.checked_mirror``); returns the segment and how
    many members were queued. In the same transaction, every current member is queued for that ESP alone when the
    mirror is new or its target (list or tag) changed: the other ESPs already have them, and the old target keeps
    its members (delete it at the ESP if unwanted). ``{}`` on a mirror already on changes nothing (it keeps the
    list the adapter created rather than making another)."""
    with db.writer() as session:
        segment = _get(session, store_id, segment_id, lock=True)  # against the engine storing a created list
        entry = checked_mirror(session, segment, esp, options)
        mirror = dict(segment.mirror or {})
        queued = 0
        if mirror.get(esp) != entry:
            segment.mirror = {**mirror, esp: entry}
            session.flush()
            queued = queue_segment_members(session, store_id, segment_id, esps=[esp])
        return {"segment": to_dict(segment), "queued": queued}


def remove_mirror(db: Database, store_id: int, segment_id: int, esp: str) -> dict[str, Any]:
    """Stop mirroring the segment to ``esp`` (a no-op when it was not). Pending items of it are skipped by the
    sync engine, which reads the mirror when it sends; what the ESP already has stays there."""
    with db.writer() as session:
        segment = _get(session, store_id, segment_id, lock=True)
        checked_esp(esp)  # known, connected or not: a disconnected ESP's mirror may still be turned off
        if esp in (segment.mirror or {}):
            segment.mirror = {key: value for key, value in segment.mirror.items() if key != esp}
            session.flush()
        return to_dict(segment)


def daily_counts(db: Database, store_id: int, segment_id: int) -> list[dict[str, Any]]:
    with db.reader() as session:
        _get(session, store_id, segment_id)
        rows = session.execute(
            sa.select(SegmentCount.day, SegmentCount.members)
            .where(SegmentCount.store_id == store_id, SegmentCount.segment_id == segment_id)
            .order_by(SegmentCount.day)
        )
        return [{"day": day.isoformat(), "members": members} for day, members in rows]


CSV_COLUMNS = ("contact_id", "external_id", "email", "phone", "first_name", "last_name", "entered_at")


def member_rows(db: Database, store_id: int, segment_id: int) -> Iterator[tuple[Any, ...]]:
    """The members, page by page in contact id order (keyset pagination: constant memory at any size)."""
    with db.reader() as session:
        _get(session, store_id, segment_id)
    after = 0
    while True:
        with db.reader() as session:
            page = session.execute(
                sa.select(
                    Contact.id,
                    Contact.external_id,
                    Contact.email,
                    Contact.phone,
                    Contact.first_name,
                    Contact.last_name,
                    SegmentMember.entered_at,
                )
                .join(Contact, Contact.id == SegmentMember.contact_id)
                .where(
                    SegmentMember.store_id == store_id,
                    SegmentMember.segment_id == segment_id,
                    SegmentMember.contact_id > after,
                )
                .order_by(SegmentMember.contact_id)
                .limit(EXPORT_PAGE)
            ).all()
        if not page:
            return
        for row in page:
            entered: dt.datetime = row[-1]
            yield (*row[:-1], entered.isoformat())
        after = page[-1][0]
