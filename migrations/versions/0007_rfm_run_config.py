"""RFM runs: the configuration each run used (RFM thresholds and lifecycle stages), for auditability.

Runs recorded before this revision get ``{}``: what they used is not known.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("rfm_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config", JSON, nullable=False, server_default="{}"))
    with op.batch_alter_table("rfm_runs", schema=None) as batch_op:
        batch_op.alter_column("config", existing_type=JSON, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("rfm_runs", schema=None) as batch_op:
        batch_op.drop_column("config")
