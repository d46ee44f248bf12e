"""Migrations run on both backends, match the models exactly, and keep the consent ledger append-only."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from connector import audit, ledger, migrate
from connector.errors import AppendOnlyViolation
from connector.store import Base, ConsentLedgerEntry, Contact, Database
from connector.tenancy import NewStore


def test_schema_is_at_head_and_upgrade_is_idempotent(db: Database) -> None:
    assert migrate.current_revision(db) == migrate.head_revision(db)
    migrate.upgrade(db)  # a second run changes nothing and does not fail
    assert migrate.current_revision(db) == migrate.head_revision(db)


def test_migrations_match_the_models(db: Database) -> None:
    # An autogenerate diff against the migrated database is empty: no model change without a migration.
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_the_issue_6_and_7_migrations_go_down_and_up_again_with_data(db: Database, store: NewStore) -> None:
    entry_id = _ledger_row(db, store)
    migrate.downgrade(db, "0004")  # below the chained ledger (0005), RFM and segments (0006-0008)
    assert migrate.current_revision(db) == "0004"
    migrate.upgrade(db)
    assert migrate.current_revision(db) == migrate.head_revision(db)
    test_migrations_match_the_models(db)
    with db.reader() as session:
        row = session.get(ConsentLedgerEntry, entry_id)
        assert row is not None and row.seq == 1  # chained again by 0005
    assert audit.verify(db, store.id).ok


def _ledger_row(db: Database, store: NewStore) -> int:
    with db.writer() as session:
        contact = Contact(store_id=store.id, properties={})
        session.add(contact)
        session.flush()
        entry = ConsentLedgerEntry(
            store_id=store.id,
            contact_id=contact.id,
            channel="email",
            action="grant",
            status_after="subscribed",
            occurred_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )
        ledger.append(session, entry)
        return entry.id


def test_ledger_rows_cannot_be_changed_through_the_orm(db: Database, store: NewStore) -> None:
    entry_id = _ledger_row(db, store)
    with pytest.raises(AppendOnlyViolation), db.writer() as session:
        entry = session.get(ConsentLedgerEntry, entry_id)
        assert entry is not None
        entry.status_after = "unsubscribed"
        session.flush()
    with pytest.raises(AppendOnlyViolation), db.writer() as session:
        session.delete(session.get(ConsentLedgerEntry, entry_id))
        session.flush()


@pytest.mark.parametrize("statement", ["UPDATE consent_ledger SET status_after = 'x'", "DELETE FROM consent_ledger"])
def test_ledger_rows_cannot_be_changed_in_sql(db: Database, store: NewStore, statement: str) -> None:
    _ledger_row(db, store)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), db.engine.begin() as connection:
        connection.execute(sa.text(statement))
    with db.reader() as session:
        assert session.scalar(sa.select(ConsentLedgerEntry.status_after)) == "subscribed"
