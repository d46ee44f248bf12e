"""Proving the consent ledger: chain verification, anchors kept outside the database, and exports.

``verify`` streams a store's ledger in id order (the order rows were written) and recomputes each row's hash
(connector/ledger.py). A healthy chain has, row after row, ``seq`` 1, 2, 3 …, each ``prev_hash`` equal to the
previous ``entry_hash``, each ``entry_hash`` equal to the recomputed one, and its last row equal to the store's
head row. The stream itself does no queries; only once something is wrong do a few targeted ones say what.

An ``Anchor`` (seq + hash + time, printed by ``espbridge audit anchor``) is kept elsewhere; verifying against it
proves that the rows up to it are still there and unchanged, which the head row alone cannot (whoever can delete
the last rows can also rewind the head).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import ledger
from .errors import InvalidInput, NotFound
from .identity import find_person, normalise_email
from .phones import e164
from .store import Channel, ConsentEvidence, ConsentLedgerEntry, LedgerHead, utcnow
from .store.db import Database

_LEDGER = ConsentLedgerEntry.__table__
#: Rows fetched per round trip while streaming (server-side cursor on PostgreSQL).
_BATCH = 10_000
#: Missing seqs listed in a "deleted" problem at most.
_LIST_MISSING = 20


@dataclass(frozen=True)
class Anchor:
    """A store's ledger head at a moment: ``seq`` rows, the last one hashing to ``hash`` (None when empty)."""

    store_id: int
    seq: int
    hash: str | None
    at: dt.datetime

    def text(self) -> str:
        return json.dumps(
            {"store_id": self.store_id, "seq": self.seq, "hash": self.hash, "at": ledger._timestamp(self.at)},
            separators=(",", ":"),
        )

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.text())  # type: ignore[no-any-return]

    @classmethod
    def parse(cls, text: str) -> Anchor:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInput("anchor", f"is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidInput("anchor", "must be a JSON object with store_id, seq, hash and at")
        missing = [key for key in ("store_id", "seq", "hash", "at") if key not in data]
        if missing:
            raise InvalidInput("anchor", f"is missing {', '.join(missing)}")
        store_id, seq, digest, at = data["store_id"], data["seq"], data["hash"], data["at"]
        if not isinstance(store_id, int) or isinstance(store_id, bool) or store_id < 1:
            raise InvalidInput("anchor.store_id", "must be a positive integer")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InvalidInput("anchor.seq", "must be an integer >= 0")
        if seq == 0 and digest is not None:
            raise InvalidInput("anchor.hash", "must be null for an empty ledger (seq 0)")
        if seq > 0 and not _is_sha256(digest):
            raise InvalidInput("anchor.hash", "must be 64 lowercase hex characters")
        try:
            when = dt.datetime.fromisoformat(at) if isinstance(at, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise InvalidInput("anchor.at", "must be an ISO 8601 UTC timestamp")
        return cls(store_id=store_id, seq=seq, hash=digest, at=when.astimezone(dt.UTC))


@dataclass(frozen=True)
class Problem:
    """The first bad row. ``kind``: edited, deleted, inserted, reordered, truncated or anchor."""

    id: int | None
    seq: int | None
    kind: str
    detail: str


@dataclass(frozen=True)
class Verification:
    store_id: int
    ok: bool
    rows: int
    head_seq: int
    head_hash: str | None
    problem: Problem | None
    anchor_checked: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        if self.problem is None:
            anchored = " and matches the anchor" if self.anchor_checked else ""
            return f"store {self.store_id}: ledger intact{anchored}: {self.rows} rows, head seq {self.head_seq}"
        p = self.problem
        where = f"row id {p.id} seq {p.seq}" if p.id is not None else f"seq {p.seq}"
        return f"store {self.store_id}: ledger BROKEN at {where}: {p.kind}: {p.detail}"


def anchor(db: Database, store_id: int) -> Anchor:
    """The store's current head (from the head row appenders maintain)."""
    with db.reader() as session:
        head = session.execute(
            sa.select(LedgerHead.seq, LedgerHead.entry_hash).where(LedgerHead.store_id == store_id)
        ).first()
    seq, digest = (head[0], head[1]) if head is not None else (0, None)
    return Anchor(store_id=store_id, seq=seq, hash=digest if seq else None, at=utcnow())


def verify(db: Database, store_id: int, *, anchor: Anchor | None = None) -> Verification:
    """Walk the store's whole chain; report the first bad row, if any (see the module docstring)."""
    if anchor is not None and anchor.store_id != store_id:
        raise InvalidInput("anchor", f"is for store {anchor.store_id}, not store {store_id}")
    with db.reader() as session:
        return _Walk(session, store_id, anchor).run()


class _Walk:
    def __init__(self, session: Session, store_id: int, anchor: Anchor | None) -> None:
        self.session, self.store_id, self.anchor = session, store_id, anchor
        self.rows = 0
        self.last_id: int | None = None
        self.last_seq = 0
        self.last_hash = ledger.GENESIS

    def run(self) -> Verification:
        problem = self._stream() or self._check_end()
        return Verification(
            store_id=self.store_id,
            ok=problem is None,
            rows=self.rows,
            head_seq=self.last_seq,
            head_hash=self.last_hash if self.last_seq else None,
            problem=problem,
            anchor_checked=self.anchor is not None,
        )

    def _stream(self) -> Problem | None:
        with contextlib.closing(self._rows()) as rows:  # an early return closes the cursor before the session
            return self._check(rows)

    def _check(self, rows: Iterator[Sequence[Any]]) -> Problem | None:
        seq_at, prev_at = 1 + ledger.HASHED_COLUMNS.index("seq"), 1 + ledger.HASHED_COLUMNS.index("prev_hash")
        anchor_seq = self.anchor.seq if self.anchor is not None else -1
        row_hash = ledger.row_hash
        for row in rows:
            seq, stored = row[seq_at], row[-1]
            if row_hash(row[1:-1]) != stored:
                return Problem(row[0], seq, "edited", "content does not match its entry_hash")
            if seq != self.last_seq + 1 or row[prev_at] != self.last_hash:
                return self._classify(row[0], seq, row[prev_at])
            if seq == anchor_seq and stored != self.anchor.hash:  # type: ignore[union-attr]
                return Problem(row[0], seq, "anchor", "entry_hash differs from the anchor's hash")
            self.rows += 1
            self.last_id, self.last_seq, self.last_hash = row[0], seq, stored
        return None

    def _rows(self) -> Generator[Sequence[Any], None, None]:
        """(id, *HASHED_COLUMNS, entry_hash) of each of the store's rows, in id order, a batch at a time."""
        names = ("id", *ledger.HASHED_COLUMNS, "entry_hash")
        connection = self.session.connection()
        if connection.dialect.name == "postgresql":
            # psycopg's own server-side cursor: SQLAlchemy's per-row result processing would cost a third of
            # the run on a large ledger, and psycopg already returns aware datetimes.
            sql = f"SELECT {', '.join(names)} FROM consent_ledger WHERE store_id = %s ORDER BY id"
            with connection.connection.driver_connection.cursor(name="audit_verify", binary=True) as cursor:  # type: ignore[union-attr]
                cursor.itersize = _BATCH
                cursor.execute(sql, (self.store_id,))
                yield from cursor
            return
        query = sa.select(*(_LEDGER.c[name] for name in names))
        result = connection.execute(
            query.where(_LEDGER.c.store_id == self.store_id).order_by(_LEDGER.c.id),
            execution_options={"yield_per": _BATCH},
        )
        with result:
            yield from result

    def _classify(self, row_id: int, seq: int, prev_hash: str) -> Problem:
        """Name what went wrong where the chain broke, with a few targeted queries."""
        expected = self.last_seq + 1
        if seq > expected:
            if self._ids_of_seq(expected):
                return Problem(row_id, seq, "reordered", f"seq {seq} comes before seq {expected}")
            present = set(
                self.session.scalars(
                    sa.select(_LEDGER.c.seq).where(
                        _LEDGER.c.store_id == self.store_id, _LEDGER.c.seq.between(expected, seq - 1)
                    )
                )
            )
            missing = [s for s in range(expected, seq) if s not in present]
            shown = ", ".join(map(str, missing[:_LIST_MISSING])) + (" …" if len(missing) > _LIST_MISSING else "")
            return Problem(row_id, expected, "deleted", f"missing seq {shown} (before row id {row_id})")
        if seq < expected:
            if len(self._ids_of_seq(seq)) > 1:
                return Problem(row_id, seq, "inserted", f"seq {seq} appears more than once")
            return Problem(row_id, seq, "reordered", f"seq {seq} comes after seq {self.last_seq}")
        # Right seq, self-consistent row, but it links to another hash: the row before it was rewritten whole
        # (entry_hash recomputed), or this one was forged onto the chain.
        if self.last_id is None:
            return Problem(row_id, seq, "inserted", "first row does not start from the genesis hash")
        return Problem(
            self.last_id,
            self.last_seq,
            "edited",
            f"its entry_hash is not the one the next row (id {row_id}) links to ({prev_hash[:12]}…)",
        )

    def _ids_of_seq(self, seq: int) -> list[int]:
        query = sa.select(_LEDGER.c.id).where(_LEDGER.c.store_id == self.store_id, _LEDGER.c.seq == seq)
        return list(self.session.scalars(query))

    def _check_end(self) -> Problem | None:
        """After the last row: nothing may be missing against the anchor or the head row."""
        if self.anchor is not None and self.last_seq < self.anchor.seq:
            return Problem(
                None,
                self.last_seq + 1,
                "truncated",
                f"ledger ends at seq {self.last_seq}, anchor has {self.anchor.seq}",
            )
        # Read after the stream: the head only grows, so it can be ahead (an append since) but never behind.
        head = self.session.execute(
            sa.select(LedgerHead.seq, LedgerHead.entry_hash).where(LedgerHead.store_id == self.store_id)
        ).first()
        head_seq, head_hash = (head[0], head[1]) if head is not None else (0, None)
        if head_seq < self.last_seq:
            extra = self._ids_of_seq(head_seq + 1)
            return Problem(
                extra[0] if extra else None,
                head_seq + 1,
                "inserted",
                f"rows beyond the head row (head seq {head_seq}, ledger ends at seq {self.last_seq})",
            )
        if head_seq > self.last_seq and not self._ids_of_seq(self.last_seq + 1):
            return Problem(
                None, self.last_seq + 1, "truncated", f"ledger ends at seq {self.last_seq}, head row has {head_seq}"
            )
        if head_seq == self.last_seq and self.last_seq and head_hash != self.last_hash:
            return Problem(self.last_id, self.last_seq, "edited", "entry_hash differs from the head row's")
        return None


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


# ---------------------------------------------------------------------------------------------------- exports

#: Columns of an export, in order: the ledger row, then its erasable evidence.
EXPORT_COLUMNS: tuple[str, ...] = (
    "id",
    *ledger.HASHED_COLUMNS,
    "entry_hash",
    "ip",
    "user_agent",
    "evidence",
)


@dataclass(frozen=True)
class ExportFilter:
    """Which consent events to export. At most one of email, phone, contact_id; ``since`` inclusive, ``until``
    exclusive (both on occurred_at)."""

    email: str | None = None
    phone: str | None = None
    contact_id: int | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    channel: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: ledger._timestamp(v) if isinstance(v, dt.datetime) else v for k, v in asdict(self).items()}


def export(db: Database, store_id: int, wanted: ExportFilter) -> Iterator[dict[str, Any]]:
    """One dict per consent event (EXPORT_COLUMNS), in ledger order, streamed from one read transaction.

    ``evidence`` says what became of the IP and user agent: ``none`` (there were none), ``matches`` (present and
    equal to what the row's digest covers), ``mismatch`` (present but altered) or ``erased``.
    """
    _check_filter(wanted)
    with db.reader() as session:
        contacts = _contacts(session, store_id, wanted)
        evidence = ConsentEvidence.__table__.c
        columns = [_LEDGER.c[name] for name in EXPORT_COLUMNS[:-3]]
        query = (
            sa.select(*columns, evidence.ip, evidence.user_agent, evidence.salt)
            .outerjoin(ConsentEvidence, ConsentEvidence.ledger_entry_id == _LEDGER.c.id)
            .where(_LEDGER.c.store_id == store_id)
            .order_by(_LEDGER.c.id)
        )
        if contacts is not None:
            query = query.where(_LEDGER.c.contact_id.in_(contacts))
        if wanted.channel:
            query = query.where(_LEDGER.c.channel == wanted.channel)
        if wanted.since:
            query = query.where(_LEDGER.c.occurred_at >= wanted.since)
        if wanted.until:
            query = query.where(_LEDGER.c.occurred_at < wanted.until)
        with session.execute(query, execution_options={"yield_per": _BATCH}) as result:
            for row in result:
                values = row._asdict()
                salt = values.pop("salt")
                values["evidence"] = _evidence(values, salt)
                yield values


def _check_filter(wanted: ExportFilter) -> None:
    given = [name for name in ("email", "phone", "contact_id") if getattr(wanted, name) is not None]
    if len(given) > 1:
        raise InvalidInput(given[1], f"give one of email, phone or contact, not {' and '.join(given)}")
    if wanted.channel is not None and wanted.channel not in {c.value for c in Channel}:
        raise InvalidInput("channel", f"must be one of {', '.join(c.value for c in Channel)}")
    for name in ("since", "until"):
        value = getattr(wanted, name)
        if value is not None and value.tzinfo is None:
            raise InvalidInput(name, "must be timezone-aware")
    if wanted.since and wanted.until and wanted.until <= wanted.since:
        raise InvalidInput("until", "must be after since")


def _contacts(session: Session, store_id: int, wanted: ExportFilter) -> list[int] | None:
    """The contact ids whose events are the person's: the one found, and every contact merged into it (their
    ledger rows keep the id they were written with). None = no person filter."""
    if wanted.contact_id is not None:
        field, found = "contact", find_person(session, store_id, "contact", wanted.contact_id)
    elif wanted.email is not None:
        email = normalise_email(wanted.email)
        if email is None:
            raise InvalidInput("email", "is not an email address")
        field, found = "email", find_person(session, store_id, "email", email)
    elif wanted.phone is not None:
        phone = wanted.phone.strip()
        if not phone:
            raise InvalidInput("phone", "is empty")
        field, found = "phone", find_person(session, store_id, "phone", e164(phone), as_typed=phone)
    else:
        return None
    if not found:
        raise NotFound(f"{field}: no contact in store {store_id} matches")
    return [contact.id for contact in found]


def _evidence(values: dict[str, Any], salt: str | None) -> str:
    if values["evidence_digest"] is None:
        return "none"
    if salt is None:
        return "erased"
    digest = ledger.evidence_digest(salt, values["ip"], values["user_agent"])
    return "matches" if digest == values["evidence_digest"] else "mismatch"


def _text(value: Any) -> Any:
    return ledger._timestamp(value) if isinstance(value, dt.datetime) else value


def _header(verification: Verification, anchor: Anchor, wanted: ExportFilter) -> dict[str, Any]:
    return {"verification": verification.as_dict(), "anchor": anchor.as_dict(), "filter": wanted.as_dict()}


def head_anchor(verification: Verification) -> Anchor:
    """The anchor of the head a verification walked to (what an export's rows are proven against)."""
    return Anchor(verification.store_id, verification.head_seq, verification.head_hash, utcnow())


def csv_chunks(verification: Verification, wanted: ExportFilter, rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV text a line at a time: ``# `` comment lines (verification, anchor, filter), the header, the rows."""
    header = _header(verification, head_anchor(verification), wanted)
    for key, value in header.items():
        yield f"# {key}: {json.dumps(value, separators=(',', ':'))}\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        writer.writerow([_text(row[name]) for name in EXPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def json_chunks(verification: Verification, wanted: ExportFilter, rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """A JSON object a row at a time: ``verification``, ``anchor`` and ``filter`` first, then ``entries``."""
    header = _header(verification, head_anchor(verification), wanted)
    yield json.dumps(header, separators=(",", ":"))[:-1] + ',"entries":['
    separator = "\n"
    for row in rows:
        yield separator + json.dumps({name: _text(row[name]) for name in EXPORT_COLUMNS}, separators=(",", ":"))
        separator = ",\n"
    yield "\n]}\n"


def export_document(
    db: Database,
    store_id: int,
    wanted: ExportFilter,
    fmt: str,
    *,
    watch: Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]] | None = None,
) -> tuple[Verification, Iterator[str]]:
    """The export as text chunks (``fmt`` "csv" or "json") and the verification its header carries. The filter is
    checked and the person found before this returns (InvalidInput, NotFound), so a caller can still answer an
    error before streaming; ``watch`` sees the rows on their way (progress)."""
    rows = export(db, store_id, wanted)
    first = next(rows, None)
    verification = verify(db, store_id)
    chained = itertools.chain([] if first is None else [first], rows)
    watched = watch(chained) if watch is not None else chained
    return verification, (csv_chunks if fmt == "csv" else json_chunks)(verification, wanted, watched)


def parse_when(field: str, text: str, *, until: bool = False) -> dt.datetime:
    """``YYYY-MM-DD`` (UTC; as ``until``, the whole day is included) or an ISO 8601 timestamp with an offset."""
    try:
        if len(text) == 10:
            day = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
            return day + dt.timedelta(days=1) if until else day
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, "must be a date (YYYY-MM-DD) or an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        raise InvalidInput(field, "a timestamp needs a UTC offset (e.g. Z or +02:00)")
    return when.astimezone(dt.UTC)
