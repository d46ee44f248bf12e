"""ESP connections: a store's ESP accounts, with credentials encrypted at rest.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "esp_connections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("esp", sa.String(length=32), nullable=False),
        sa.Column("base_url", sa.String(length=500), nullable=False),
        sa.Column("credentials", sa.Text(), nullable=False),
        sa.Column("settings", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_esp_connections_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_esp_connections")),
        sa.UniqueConstraint("store_id", "esp", name=op.f("uq_esp_connections_store_id_esp")),
    )
    with op.batch_alter_table("esp_connections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_esp_connections_store_id"), ["store_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("esp_connections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_esp_connections_store_id"))
    op.drop_table("esp_connections")
