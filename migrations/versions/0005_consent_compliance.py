"""Consent compliance: the hash-chained ledger, erasable evidence, double opt-in, suppressions, erasures.

The ledger's IP and user agent move to ``consent_evidence`` (an erasure deletes them there; the ledger keeps a
salted digest) and existing rows are chained in id order per store. That rewrite is the one time ledger rows
change, so the append-only triggers are lifted for it and put back (SQLite's batch mode recreates the table,
which drops its triggers anyway).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 02:21:10
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from connector import ledger
from connector.store.base import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY_MESSAGE = "consent_ledger is append-only"


def upgrade() -> None:
    _drop_append_only_triggers()
    op.create_table(
        "consent_ledger_heads",
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_consent_ledger_heads_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("store_id", name=op.f("pk_consent_ledger_heads")),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identifier_kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_erasures_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
    )
    op.create_index(op.f("ix_erasures_store_id"), "erasures", ["store_id"], unique=False)
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_suppressions_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
        sa.UniqueConstraint("store_id", "digest", name=op.f("uq_suppressions_store_id_digest")),
    )
    op.create_index(op.f("ix_suppressions_store_id"), "suppressions", ["store_id"], unique=False)
    op.create_table(
        "consent_confirmations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=200), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("pending_entry_id", LEDGER_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_consent_confirmations_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pending_entry_id"],
            ["consent_ledger.id"],
            name=op.f("fk_consent_confirmations_pending_entry_id_consent_ledger"),
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_consent_confirmations_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_confirmations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_consent_confirmations_token_hash")),
    )
    op.create_index(op.f("ix_consent_confirmations_contact_id"), "consent_confirmations", ["contact_id"], unique=False)
    op.create_index(op.f("ix_consent_confirmations_store_id"), "consent_confirmations", ["store_id"], unique=False)
    op.create_table(
        "consent_evidence",
        sa.Column("ledger_entry_id", LEDGER_ID, nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=1000), nullable=True),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name=op.f("fk_consent_evidence_contact_id_contacts")),
        sa.ForeignKeyConstraint(
            ["ledger_entry_id"],
            ["consent_ledger.id"],
            name=op.f("fk_consent_evidence_ledger_entry_id_consent_ledger"),
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_consent_evidence_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("ledger_entry_id", name=op.f("pk_consent_evidence")),
    )
    op.create_index(op.f("ix_consent_evidence_contact_id"), "consent_evidence", ["contact_id"], unique=False)
    op.create_index(op.f("ix_consent_evidence_store_id"), "consent_evidence", ["store_id"], unique=False)

    with op.batch_alter_table("consent_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("evidence_digest", sa.String(length=64), nullable=True))
    _chain_existing_rows()
    with op.batch_alter_table("consent_ledger", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("entry_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(
            batch_op.f("ix_consent_ledger_store_id_occurred_at"), ["store_id", "occurred_at"], unique=False
        )
        batch_op.create_unique_constraint(batch_op.f("uq_consent_ledger_store_id_seq"), ["store_id", "seq"])
        batch_op.drop_column("user_agent")
        batch_op.drop_column("ip")

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("suppressed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("double_opt_in", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("hmac_key", sa.Text(), nullable=True))
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.alter_column("double_opt_in", existing_type=sa.JSON(), server_default=None)
    _create_append_only_triggers()


def _chain_existing_rows() -> None:
    """Give the rows written before the chain existed their seq, evidence digest and hashes (id order)."""
    bind = op.get_bind()
    timestamps = {"occurred_at", "recorded_at", "updated_at"}

    def table(name: str, *columns: str) -> sa.TableClause:
        return sa.table(name, *(sa.column(c, UTCDateTime() if c in timestamps else None) for c in columns))

    ledger_rows = table("consent_ledger", "id", "ip", "user_agent", *ledger.HASHED_COLUMNS, "entry_hash")
    evidence = table("consent_evidence", "ledger_entry_id", "store_id", "contact_id", "ip", "user_agent", "salt")
    heads = table("consent_ledger_heads", "store_id", "seq", "entry_hash", "updated_at")
    last: dict[int, tuple[int, str, Any]] = {}
    rows = bind.execute(sa.select(ledger_rows).order_by(ledger_rows.c.store_id, ledger_rows.c.id)).mappings().all()
    for row in rows:
        values = dict(row)
        seq, prev_hash, _ = last.get(row["store_id"], (0, ledger.GENESIS, None))
        values.update(seq=seq + 1, prev_hash=prev_hash, evidence_digest=None)
        if row["ip"] or row["user_agent"]:
            salt = secrets.token_hex(16)
            values["evidence_digest"] = ledger.evidence_digest(salt, row["ip"], row["user_agent"])
            bind.execute(
                evidence.insert().values(
                    ledger_entry_id=row["id"],
                    store_id=row["store_id"],
                    contact_id=row["contact_id"],
                    ip=row["ip"],
                    user_agent=row["user_agent"],
                    salt=salt,
                )
            )
        values["entry_hash"] = ledger.row_hash([values[name] for name in ledger.HASHED_COLUMNS])
        bind.execute(
            ledger_rows.update()
            .where(ledger_rows.c.id == row["id"])
            .values(
                seq=values["seq"],
                evidence_digest=values["evidence_digest"],
                prev_hash=values["prev_hash"],
                entry_hash=values["entry_hash"],
            )
        )
        last[row["store_id"]] = (values["seq"], values["entry_hash"], row["recorded_at"])
    for store_id, (seq, entry_hash, recorded_at) in last.items():
        bind.execute(heads.insert().values(store_id=store_id, seq=seq, entry_hash=entry_hash, updated_at=recorded_at))


def downgrade() -> None:
    _drop_append_only_triggers()
    with op.batch_alter_table("stores", schema=None) as batch_op:
        batch_op.drop_column("hmac_key")
        batch_op.drop_column("double_opt_in")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("suppressed_at")
        batch_op.drop_column("erased_at")
    with op.batch_alter_table("consent_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ip", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=1000), nullable=True))
    op.execute(
        "UPDATE consent_ledger SET "
        "ip = (SELECT e.ip FROM consent_evidence e WHERE e.ledger_entry_id = consent_ledger.id), "
        "user_agent = (SELECT e.user_agent FROM consent_evidence e WHERE e.ledger_entry_id = consent_ledger.id)"
    )
    with op.batch_alter_table("consent_ledger", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_consent_ledger_store_id_seq"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_consent_ledger_store_id_occurred_at"))
        batch_op.alter_column("entry_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.drop_column("evidence_digest")
        batch_op.drop_column("seq")
    op.drop_table("consent_evidence")
    op.drop_table("consent_confirmations")
    op.drop_table("suppressions")
    op.drop_table("erasures")
    op.drop_table("consent_ledger_heads")
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION consent_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$;
            CREATE TRIGGER consent_ledger_no_update BEFORE UPDATE OR DELETE ON consent_ledger
                FOR EACH ROW EXECUTE FUNCTION consent_ledger_append_only();
            CREATE TRIGGER consent_ledger_no_truncate BEFORE TRUNCATE ON consent_ledger
                FOR EACH STATEMENT EXECUTE FUNCTION consent_ledger_append_only();
            """
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER consent_ledger_no_{verb.lower()} BEFORE {verb} ON consent_ledger "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS consent_ledger_append_only() CASCADE")
    else:
        op.execute("DROP TRIGGER IF EXISTS consent_ledger_no_update")
        op.execute("DROP TRIGGER IF EXISTS consent_ledger_no_delete")
