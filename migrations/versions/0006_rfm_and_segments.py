"""RFM snapshots, lifecycle stages, segments (criteria, members, changes, daily counts): new tables only.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 03:14:57.778582
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rfm_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("cutpoints", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("population", sa.Integer(), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("group_shares", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("drift_alerts", sa.JSON(), nullable=False),
        sa.Column("transitions", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_rfm_runs_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rfm_runs")),
    )
    with op.batch_alter_table("rfm_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rfm_runs_store_id"), ["store_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rfm_runs_store_id_as_of"), ["store_id", "as_of"], unique=False)

    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("criteria", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("marketing", sa.Boolean(), nullable=False),
        sa.Column("prebuilt", sa.Boolean(), nullable=False),
        sa.Column("mirror", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_segments_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("store_id", "name", name=op.f("uq_segments_store_id_name")),
    )
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_segments_store_id"), ["store_id"], unique=False)

    op.create_table(
        "contact_lifecycle",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("churn_risk", sa.Numeric(precision=4, scale=3), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_contact_lifecycle_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_contact_lifecycle_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("contact_id", name=op.f("pk_contact_lifecycle")),
    )
    with op.batch_alter_table("contact_lifecycle", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_contact_lifecycle_store_id"), ["store_id"], unique=False)

    op.create_table(
        "rfm_scores",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("recency_days", sa.Integer(), nullable=False),
        sa.Column("frequency", sa.Integer(), nullable=False),
        sa.Column("monetary_cents", sa.BigInteger(), nullable=False),
        sa.Column("r", sa.SmallInteger(), nullable=False),
        sa.Column("f", sa.SmallInteger(), nullable=False),
        sa.Column("m", sa.SmallInteger(), nullable=False),
        sa.Column("composite", sa.SmallInteger(), nullable=False),
        sa.Column("group", sa.String(length=16), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_rfm_scores_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["rfm_runs.id"], name=op.f("fk_rfm_scores_run_id_rfm_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_rfm_scores_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "contact_id", name=op.f("pk_rfm_scores")),
    )
    with op.batch_alter_table("rfm_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rfm_scores_store_id"), ["store_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rfm_scores_store_id_contact_id"), ["store_id", "contact_id"], unique=False)

    op.create_table(
        "rfm_transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("from_group", sa.String(length=16), nullable=True),
        sa.Column("to_group", sa.String(length=16), nullable=True),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_rfm_transitions_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["rfm_runs.id"], name=op.f("fk_rfm_transitions_run_id_rfm_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_rfm_transitions_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rfm_transitions")),
    )
    with op.batch_alter_table("rfm_transitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rfm_transitions_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rfm_transitions_store_id"), ["store_id"], unique=False)

    op.create_table(
        "segment_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_segment_changes_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_segment_changes_segment_id_segments"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_segment_changes_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_changes")),
    )
    with op.batch_alter_table("segment_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_segment_changes_store_id"), ["store_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_segment_changes_store_id_segment_id_id"), ["store_id", "segment_id", "id"], unique=False
        )

    op.create_table(
        "segment_counts",
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_segment_counts_segment_id_segments"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_segment_counts_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("segment_id", "day", name=op.f("pk_segment_counts")),
    )
    with op.batch_alter_table("segment_counts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_segment_counts_store_id"), ["store_id"], unique=False)

    op.create_table(
        "segment_members",
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_segment_members_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_segment_members_segment_id_segments"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_segment_members_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("segment_id", "contact_id", name=op.f("pk_segment_members")),
    )
    with op.batch_alter_table("segment_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_segment_members_store_id"), ["store_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_segment_members_store_id_contact_id"), ["store_id", "contact_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("segment_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_members_store_id_contact_id"))
        batch_op.drop_index(batch_op.f("ix_segment_members_store_id"))

    op.drop_table("segment_members")
    with op.batch_alter_table("segment_counts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_counts_store_id"))

    op.drop_table("segment_counts")
    with op.batch_alter_table("segment_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segment_changes_store_id_segment_id_id"))
        batch_op.drop_index(batch_op.f("ix_segment_changes_store_id"))

    op.drop_table("segment_changes")
    with op.batch_alter_table("rfm_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rfm_transitions_store_id"))
        batch_op.drop_index(batch_op.f("ix_rfm_transitions_run_id"))

    op.drop_table("rfm_transitions")
    with op.batch_alter_table("rfm_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rfm_scores_store_id_contact_id"))
        batch_op.drop_index(batch_op.f("ix_rfm_scores_store_id"))

    op.drop_table("rfm_scores")
    with op.batch_alter_table("contact_lifecycle", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contact_lifecycle_store_id"))

    op.drop_table("contact_lifecycle")
    with op.batch_alter_table("segments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_segments_store_id"))

    op.drop_table("segments")
    with op.batch_alter_table("rfm_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rfm_runs_store_id_as_of"))
        batch_op.drop_index(batch_op.f("ix_rfm_runs_store_id"))

    op.drop_table("rfm_runs")
