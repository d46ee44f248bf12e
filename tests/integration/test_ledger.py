"""The ledger's hash chain as written: one unbroken chain per store, even under concurrent appends, and nothing
personal inside what is hashed."""

from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa

from connector import consent, ledger
from connector.store import ConsentLedgerEntry, Contact, Database, LedgerHead
from connector.tenancy import NewStore

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


def new_contact(db: Database, store_id: int) -> int:
    with db.writer() as session:
        contact = Contact(store_id=store_id, email="ada@example.com", properties={})
        session.add(contact)
        session.flush()
        return contact.id


def grant(db: Database, store_id: int, contact_id: int, n: int, *, ip: str | None = None) -> None:
    with db.writer() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        consent.record(
            session,
            store_id,
            contact,
            consent.ConsentProperties(channel="email", status="subscribed", source="https://shop.example/?email=a@b.c"),
            occurred_at=T0 + dt.timedelta(seconds=n),
            context={"ip": ip, "userAgent": "Firefox"} if ip else {},
            evidence_ref=f"m-{n}",
        )


def chain(db: Database, store_id: int) -> list[ConsentLedgerEntry]:
    with db.reader() as session:
        query = sa.select(ConsentLedgerEntry).where(ConsentLedgerEntry.store_id == store_id)
        return list(session.scalars(query.order_by(ConsentLedgerEntry.seq)))


def assert_unbroken(rows: list[ConsentLedgerEntry]) -> None:
    previous = ledger.GENESIS
    for seq, row in enumerate(rows, start=1):
        assert (row.seq, row.prev_hash) == (seq, previous)
        assert row.entry_hash == ledger.entry_hash(row)  # the hash survives the round trip through the database
        previous = row.entry_hash


def test_rows_are_chained_in_order_and_the_head_follows(db: Database, store: NewStore, other_store: NewStore) -> None:
    contact_id = new_contact(db, store.id)
    other_contact = new_contact(db, other_store.id)
    for n in range(3):
        grant(db, store.id, contact_id, n, ip="203.0.113.9")
    grant(db, other_store.id, other_contact, 0)
    rows = chain(db, store.id)
    assert_unbroken(rows)
    assert len(rows) == 3
    (other,) = chain(db, other_store.id)  # each store has its own chain, starting at 1
    assert (other.seq, other.prev_hash) == (1, ledger.GENESIS)
    with db.reader() as session:
        head = session.get(LedgerHead, store.id)
        assert head is not None and (head.seq, head.entry_hash) == (3, rows[-1].entry_hash)


def test_nothing_personal_is_hashed_in_clear(db: Database, store: NewStore) -> None:
    contact_id = new_contact(db, store.id)
    grant(db, store.id, contact_id, 0, ip="203.0.113.9")
    (row,) = chain(db, store.id)
    hashed = ledger.canonical([getattr(row, column) for column in ledger.HASHED_COLUMNS]).decode()
    for personal in ("203.0.113.9", "Firefox", "ada@example.com", "a@b.c"):
        assert personal not in hashed
    # The source URL keeps its page, not its query string (which carried an email here)
    assert row.source == "https://shop.example/"
    assert row.evidence_digest is not None


def test_concurrent_appends_never_fork_the_chain(db: Database, store: NewStore) -> None:
    contact_id = new_contact(db, store.id)
    errors: list[BaseException] = []

    def append_many(worker: int) -> None:
        try:
            for n in range(15):
                grant(db, store.id, contact_id, worker * 100 + n)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=append_many, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    rows = chain(db, store.id)
    assert len(rows) == 60
    assert_unbroken(rows)


def test_canonical_form_is_stable() -> None:
    # Pinned: a change to the canonical form would silently invalidate every stored hash (a new HASH_VERSION then)
    values = [
        1,
        1,
        7,
        "email",
        None,
        "grant",
        "subscribed",
        T0,
        T0,
        "api",
        None,
        None,
        None,
        None,
        None,
        "x",
        "m",
        None,
    ]
    values.append(ledger.GENESIS)
    assert ledger.canonical(values).startswith(
        b'["v1",1,1,7,"email",null,"grant","subscribed","2026-03-01T10:00:00.000000Z"'
    )
    assert ledger.row_hash(values) == ledger.row_hash(list(values))
    assert len(ledger.HASHED_COLUMNS) == len(values)


def test_without_query_keeps_system_names() -> None:
    assert ledger.without_query("klaviyo") == "klaviyo"
    assert ledger.without_query("https://a.example/p?email=x#f") == "https://a.example/p"
    assert ledger.without_query(None) is None
