"""Verifying the consent ledger: an untouched chain verifies, and every way of tampering with the rows directly in
the database (triggers lifted, as someone with the database's keys could) is named at its first bad row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlalchemy as sa

from connector import audit, consent, ledger
from connector.errors import InvalidInput
from connector.store import ConsentLedgerEntry, ConsentState, Contact, Database, LedgerHead
from connector.tenancy import NewStore

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
LEDGER = cast(sa.Table, ConsentLedgerEntry.__table__)


def new_contact(db: Database, store_id: int, email: str = "ada@example.com", phone: str | None = None) -> int:
    with db.writer() as session:
        contact = Contact(store_id=store_id, email=email, phone=phone, properties={})
        session.add(contact)
        session.flush()
        return contact.id


def record(
    db: Database,
    store_id: int,
    contact_id: int,
    n: int,
    *,
    channel: str = "email",
    status: str = "subscribed",
    ip: str | None = None,
) -> None:
    """One consent event with every hashed column filled, so each one can be tampered with."""
    with db.writer() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        props = consent.ConsentProperties(
            channel=channel,
            status=status,
            list_id="newsletter",
            method="form",
            source="https://shop.example/signup",
            form_id="footer",
            form_version="3",
            consent_text="Send me news",
            consent_text_version="2",
        )
        context = {"ip": ip, "userAgent": "Firefox"} if ip else {}
        consent.record(
            session,
            store_id,
            contact,
            props,
            occurred_at=T0 + dt.timedelta(days=n),
            context=context,
            evidence_ref=f"m-{n}",
        )


def rows(db: Database, store_id: int) -> list[dict[str, Any]]:
    with db.reader() as session:
        query = sa.select(LEDGER).where(LEDGER.c.store_id == store_id).order_by(LEDGER.c.id)
        return [dict(row._mapping) for row in session.execute(query)]


@pytest.fixture
def five(db: Database, store: NewStore) -> list[dict[str, Any]]:
    """A store with a five-row ledger, ids in seq order."""
    contact_id = new_contact(db, store.id)
    for n in range(5):
        record(db, store.id, contact_id, n)
    return rows(db, store.id)


class Tamper:
    """Direct writes to the ledger, each committed at once, as someone holding the database's keys could do."""

    def __init__(self, db: Database) -> None:
        self.engine = db.engine

    def execute(self, statement: sa.Executable) -> Any:
        with self.engine.begin() as connection:
            result = connection.execute(statement)
            return result.scalar_one() if result.returns_rows else None

    def update(self, row_id: int, **values: Any) -> None:
        self.execute(LEDGER.update().where(LEDGER.c.id == row_id).values(**values))

    def delete(self, row_id: int) -> None:
        self.execute(sa.delete(ConsentState).where(ConsentState.ledger_entry_id == row_id))
        self.execute(LEDGER.delete().where(LEDGER.c.id == row_id))


@pytest.fixture
def tamper(db: Database) -> Iterator[Tamper]:
    """Lifts the ledger's append-only triggers (on this test's own database copy)."""
    with db.engine.begin() as connection:
        if db.dialect == "postgresql":
            connection.execute(sa.text("ALTER TABLE consent_ledger DISABLE TRIGGER USER"))
        else:
            connection.execute(sa.text("DROP TRIGGER consent_ledger_no_update"))
            connection.execute(sa.text("DROP TRIGGER consent_ledger_no_delete"))
    yield Tamper(db)
    if db.dialect == "postgresql":
        with db.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE consent_ledger ENABLE TRIGGER USER"))


def problem(db: Database, store_id: int, anchor: audit.Anchor | None = None) -> tuple[int | None, int | None, str]:
    result = audit.verify(db, store_id, anchor=anchor)
    assert not result.ok and result.problem is not None
    return result.problem.id, result.problem.seq, result.problem.kind


def flip(text: str) -> str:
    return ("b" if text[0] == "a" else "a") + text[1:]


def test_an_untouched_ledger_verifies(db: Database, store: NewStore, five: list[dict[str, Any]]) -> None:
    result = audit.verify(db, store.id)
    assert (result.ok, result.rows, result.head_seq, result.head_hash) == (True, 5, 5, five[-1]["entry_hash"])
    assert result.problem is None and not result.anchor_checked
    assert "intact" in result.message()


def test_an_empty_ledger_verifies(db: Database, store: NewStore) -> None:
    assert audit.verify(db, store.id).ok
    empty = audit.anchor(db, store.id)
    assert (empty.seq, empty.hash) == (0, None)
    assert audit.verify(db, store.id, anchor=empty).ok


def test_an_anchor_holds_while_rows_are_appended_after_it(
    db: Database, store: NewStore, five: list[dict[str, Any]]
) -> None:
    taken = audit.anchor(db, store.id)
    assert (taken.seq, taken.hash) == (5, five[-1]["entry_hash"])
    record(db, store.id, five[0]["contact_id"], 9)
    result = audit.verify(db, store.id, anchor=audit.Anchor.parse(taken.text()))
    assert (result.ok, result.rows, result.anchor_checked) == (True, 6, True)


def test_an_anchor_that_does_not_match_is_named(db: Database, store: NewStore, five: list[dict[str, Any]]) -> None:
    forged = audit.Anchor(store.id, 3, "f" * 64, T0)
    assert problem(db, store.id, forged) == (five[2]["id"], 3, "anchor")
    with pytest.raises(InvalidInput, match="anchor"):
        audit.verify(db, store.id + 1000, anchor=forged)


def edited(column: str, value: Any, other_contact: int) -> Any:
    if column in ("seq",):
        return value + 10
    if column == "contact_id":
        return other_contact
    if value is None:  # evidence_digest: this row had no IP or user agent
        return "0" * 64
    if isinstance(value, dt.datetime):
        return value + dt.timedelta(microseconds=1)
    return flip(value)


@pytest.mark.parametrize("column", [c for c in (*ledger.HASHED_COLUMNS, "entry_hash") if c != "store_id"])
def test_one_changed_byte_in_any_column_names_the_row(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper, column: str
) -> None:
    other_contact = new_contact(db, store.id, "bob@example.com")
    target = five[2]
    tamper.update(target["id"], **{column: edited(column, target[column], other_contact)})
    assert problem(db, store.id) == (target["id"], target["seq"] if column != "seq" else target["seq"] + 10, "edited")


def test_a_row_moved_to_another_store_is_missing_from_its_own(
    db: Database, store: NewStore, other_store: NewStore, five: list[dict[str, Any]], tamper: Tamper
) -> None:
    tamper.update(five[2]["id"], store_id=other_store.id)
    assert problem(db, store.id) == (five[3]["id"], 3, "deleted")
    assert problem(db, other_store.id)[2] == "edited"


def test_a_row_rewritten_with_a_recomputed_hash_is_named_by_the_next_link(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper
) -> None:
    target = dict(five[2], action="withdraw", status_after="unsubscribed")
    tamper.update(
        target["id"],
        action="withdraw",
        status_after="unsubscribed",
        entry_hash=ledger.row_hash([target[c] for c in ledger.HASHED_COLUMNS]),
    )
    assert problem(db, store.id) == (target["id"], 3, "edited")


@pytest.mark.parametrize(("index", "named", "seq"), [(0, 1, 1), (2, 3, 3)])
def test_a_deleted_row_is_named(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper, index: int, named: int, seq: int
) -> None:
    tamper.delete(five[index]["id"])
    result = audit.verify(db, store.id)
    assert result.problem is not None
    assert (result.problem.id, result.problem.seq, result.problem.kind) == (five[named]["id"], seq, "deleted")
    assert f"missing seq {seq} " in result.problem.detail


def test_a_deleted_last_row_is_caught_by_the_head_row(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper
) -> None:
    tamper.delete(five[4]["id"])
    assert problem(db, store.id) == (None, 5, "truncated")


def test_a_deleted_last_row_with_the_head_rewound_is_caught_by_the_anchor(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper
) -> None:
    taken = audit.anchor(db, store.id)
    tamper.delete(five[4]["id"])
    tamper.execute(
        sa.update(LedgerHead).where(LedgerHead.store_id == store.id).values(seq=4, entry_hash=five[3]["entry_hash"])
    )
    assert audit.verify(db, store.id).ok  # without an anchor, a consistent truncation cannot be seen
    assert problem(db, store.id, taken) == (None, 5, "truncated")


def swap(connection: Tamper, a: dict[str, Any], b: dict[str, Any]) -> None:
    """Exchange two rows' contents (seq included) while keeping their ids, as a direct UPDATE would."""
    content = [c.name for c in LEDGER.c if c.name != "id"]
    connection.update(a["id"], **{c: b[c] for c in content} | {"seq": -1})  # seq is unique per store meanwhile
    connection.update(b["id"], **{c: a[c] for c in content})
    connection.update(a["id"], seq=b["seq"])


@pytest.mark.parametrize(("first", "second"), [(1, 2), (1, 3), (0, 4)])
def test_two_swapped_rows_are_named(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper, first: int, second: int
) -> None:
    swap(tamper, five[first], five[second])
    assert problem(db, store.id) == (five[first]["id"], five[second]["seq"], "reordered")


def test_a_forged_row_beyond_the_head_is_named(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper
) -> None:
    forged = dict(five[4], seq=6, prev_hash=five[4]["entry_hash"], evidence_ref="forged")
    forged.pop("id")
    forged["entry_hash"] = ledger.row_hash([forged[c] for c in ledger.HASHED_COLUMNS])
    forged_id = tamper.execute(LEDGER.insert().values(**forged).returning(LEDGER.c.id))
    assert problem(db, store.id) == (forged_id, 6, "inserted")


def test_a_forged_row_with_a_made_up_hash_is_named(
    db: Database, store: NewStore, five: list[dict[str, Any]], tamper: Tamper
) -> None:
    forged = dict(five[4], seq=6, prev_hash=five[4]["entry_hash"], entry_hash="e" * 64)
    forged.pop("id")
    forged_id = tamper.execute(LEDGER.insert().values(**forged).returning(LEDGER.c.id))
    assert problem(db, store.id) == (forged_id, 6, "edited")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("nope", "anchor"),
        ("[]", "anchor"),
        ('{"store_id": 1, "seq": 1}', "anchor"),
        ('{"store_id": 0, "seq": 1, "hash": null, "at": "2026-01-01T00:00:00Z"}', "anchor.store_id"),
        ('{"store_id": 1, "seq": -1, "hash": null, "at": "2026-01-01T00:00:00Z"}', "anchor.seq"),
        ('{"store_id": 1, "seq": 2, "hash": "xyz", "at": "2026-01-01T00:00:00Z"}', "anchor.hash"),
        ('{"store_id": 1, "seq": 0, "hash": null, "at": "yesterday"}', "anchor.at"),
    ],
)
def test_anchor_text_is_read_back_with_precise_errors(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        audit.Anchor.parse(text)
    assert caught.value.field == field
    good = audit.Anchor(1, 2, "a" * 64, T0)
    assert audit.Anchor.parse(good.text()) == good
