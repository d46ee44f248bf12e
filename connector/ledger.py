"""The consent ledger's hash chain: appending rows, and the canonical form every row's hash covers.

Each store has one chain. A row's ``entry_hash`` is SHA-256 over a canonical serialisation of all its columns
but ``id`` (``seq`` and ``prev_hash`` included), so editing a byte, deleting, inserting or reordering rows breaks
the chain at the first row concerned (connector/audit.py finds it). Nothing hashed is personal data in clear:
the contact is an id, and IP and user agent enter only as ``evidence_digest`` (a salted SHA-256 whose salt and
values sit in ``consent_evidence``, deleted by an erasure), so erasing a person never breaks the chain.

Appenders lock the store's ``consent_ledger_heads`` row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite writers
take turns anyway), so two transactions can never both extend the same head.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .store import ConsentEvidence, ConsentLedgerEntry, LedgerHead, utcnow

#: The hash of "no previous row": the first row of every chain points at it.
GENESIS = "0" * 64
#: Bumped if the canonical form ever changes; part of every hashed row.
HASH_VERSION = "v1"

#: ``json.dumps`` with these options, without its per-call set-up (it runs once per row verified).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

#: Columns in the order they are hashed. Changing this list is a new HASH_VERSION.
HASHED_COLUMNS: Sequence[str] = (
    "store_id",
    "seq",
    "contact_id",
    "channel",
    "purpose",
    "action",
    "status_after",
    "occurred_at",
    "recorded_at",
    "method",
    "source",
    "form_id",
    "form_version",
    "consent_text_hash",
    "consent_text_version",
    "actor",
    "evidence_ref",
    "evidence_digest",
    "prev_hash",
)


def canonical(values: Sequence[Any]) -> bytes:
    """The bytes hashed for one row: ``HASH_VERSION`` then ``values`` (in HASHED_COLUMNS order) as a JSON array.

    Datetimes are UTC with microseconds, so the text is the same whichever database returned them.
    """
    parts = [HASH_VERSION, *(_timestamp(v) if isinstance(v, dt.datetime) else v for v in values)]
    return _encode(parts).encode()


def row_hash(values: Sequence[Any]) -> str:
    return hashlib.sha256(canonical(values)).hexdigest()


def entry_hash(entry: ConsentLedgerEntry) -> str:
    return row_hash([getattr(entry, column) for column in HASHED_COLUMNS])


def _timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("ledger timestamps are UTC-aware")
    value = value.astimezone(dt.UTC)
    if value.year < 1000:  # isoformat pads the year to 4 digits, strftime("%Y") does not: keep strftime's text
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") at a third of the cost (audit.verify runs it per row)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def evidence_digest(salt: str, ip: str | None, user_agent: str | None) -> str:
    return hashlib.sha256(json.dumps([salt, ip, user_agent], separators=(",", ":")).encode()).hexdigest()


def without_query(source: str | None) -> str | None:
    """A source URL without its query string and fragment, which may carry personal data (``?email=…``).

    The ledger row cannot be changed later, so what could identify a person must not enter it. Anything that is
    not an http(s) URL (a system name such as ``klaviyo``) is kept as it is.
    """
    if not source:
        return source
    parts = urlsplit(source)
    if parts.scheme.lower() not in ("http", "https"):
        return source
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def append(
    session: Session, entry: ConsentLedgerEntry, *, ip: str | None = None, user_agent: str | None = None
) -> ConsentLedgerEntry:
    """Chain ``entry`` onto its store's ledger and add it (with its erasable evidence) to ``session``.

    Sets ``seq``, ``recorded_at`` (now, unless given), ``evidence_digest``, ``prev_hash`` and ``entry_hash``;
    the store's head row stays locked until the transaction ends.
    """
    head = _locked_head(session, entry.store_id)
    entry.seq = head.seq + 1
    entry.prev_hash = head.entry_hash or GENESIS
    entry.recorded_at = entry.recorded_at or utcnow()
    entry.source = without_query(entry.source)
    salt = None
    if ip or user_agent:
        salt = secrets.token_hex(16)
        entry.evidence_digest = evidence_digest(salt, ip, user_agent)
    entry.entry_hash = entry_hash(entry)
    session.add(entry)
    session.flush()
    if salt is not None:
        session.add(
            ConsentEvidence(
                store_id=entry.store_id,
                ledger_entry_id=entry.id,
                contact_id=entry.contact_id,
                ip=ip,
                user_agent=user_agent,
                salt=salt,
            )
        )
    head.seq, head.entry_hash, head.updated_at = entry.seq, entry.entry_hash, entry.recorded_at
    return entry


def _locked_head(session: Session, store_id: int) -> LedgerHead:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(LedgerHead)
        .values(store_id=store_id, seq=0, entry_hash=None, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["store_id"])
    )
    head = session.scalar(
        sa.select(LedgerHead)
        .where(LedgerHead.store_id == store_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert head is not None  # inserted above if it was missing
    return head
