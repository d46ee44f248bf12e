"""ESP connections: the engagement polling cursor (where the next ``espbridge esp poll`` starts).

A column of its own, not a key in ``settings``: the sync engine accepts only the adapter settings it knows there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 23:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("esp_connections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("engagement_cursor", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("esp_connections", schema=None) as batch_op:
        batch_op.drop_column("engagement_cursor")
