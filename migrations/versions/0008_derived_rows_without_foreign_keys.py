"""Derived rows (RFM scores, lifecycle stages, segment members) lose their foreign keys and spare indexes.

They are computed in bulk from the store's own contacts (connector.store.base.Derived says why every reference is
right by construction); per-row foreign-key checks and indexes nothing reads doubled the cost of writing them.
Each table keeps its primary key; contact_lifecycle keeps its store index (a snapshot replaces a store's rows).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 05:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: table -> (foreign keys as (column, referenced table), indexes dropped as column lists)
DERIVED = {
    "rfm_scores": (
        (("store_id", "stores"), ("run_id", "rfm_runs"), ("contact_id", "contacts")),
        (("store_id",), ("store_id", "contact_id")),
    ),
    "contact_lifecycle": ((("store_id", "stores"), ("contact_id", "contacts")), ()),
    "segment_members": (
        (("store_id", "stores"), ("segment_id", "segments"), ("contact_id", "contacts")),
        (("store_id",), ("store_id", "contact_id")),
    ),
}


def upgrade() -> None:
    for table, (keys, indexes) in DERIVED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, referred in keys:
                batch_op.drop_constraint(f"fk_{table}_{column}_{referred}", type_="foreignkey")
            for columns in indexes:
                batch_op.drop_index(f"ix_{table}_{'_'.join(columns)}")


def downgrade() -> None:
    for table, (keys, indexes) in DERIVED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for columns in indexes:
                batch_op.create_index(f"ix_{table}_{'_'.join(columns)}", list(columns), unique=False)
            for column, referred in keys:
                batch_op.create_foreign_key(
                    f"fk_{table}_{column}_{referred}", referred, [column], ["id"], ondelete="CASCADE"
                )
