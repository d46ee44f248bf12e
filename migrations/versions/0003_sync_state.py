"""Sync state per ESP: sync items (the per-ESP delivery queue), contact links, full-sync runs, engagement.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 22:40:44.581751
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("esp", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=200), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_sync_items_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_items")),
    )
    with op.batch_alter_table("sync_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_items_status_available_at"), ["status", "available_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_items_store_id"), ["store_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sync_items_store_id_esp_kind_subject_id_status"),
            ["store_id", "esp", "kind", "subject_id", "status"],
            unique=False,
        )

    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("esp", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("contact_cursor", sa.Integer(), nullable=False),
        sa.Column("event_cursor", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("events_from", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("events_through", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("events_sent", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("rejections", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_sync_runs_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
    )
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_runs_store_id"), ["store_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sync_runs_store_id_esp_status"), ["store_id", "esp", "status"], unique=False
        )

    op.create_table(
        "engagement",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("esp", sa.String(length=32), nullable=False),
        sa.Column("esp_event_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_engagement_contact_id_contacts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_engagement_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engagement")),
        sa.UniqueConstraint("store_id", "esp", "esp_event_id", name=op.f("uq_engagement_store_id_esp_esp_event_id")),
    )
    with op.batch_alter_table("engagement", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_engagement_store_id"), ["store_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_engagement_store_id_contact_id_kind"), ["store_id", "contact_id", "kind"], unique=False
        )

    op.create_table(
        "esp_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("esp", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("remote_id", sa.String(length=64), nullable=True),
        sa.Column("synced_hash", sa.String(length=64), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("store_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_esp_links_contact_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_esp_links_store_id_stores"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_esp_links")),
        sa.UniqueConstraint("store_id", "esp", "contact_id", name=op.f("uq_esp_links_store_id_esp_contact_id")),
    )
    with op.batch_alter_table("esp_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_esp_links_store_id"), ["store_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("esp_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_esp_links_store_id"))

    op.drop_table("esp_links")
    with op.batch_alter_table("engagement", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_engagement_store_id_contact_id_kind"))
        batch_op.drop_index(batch_op.f("ix_engagement_store_id"))

    op.drop_table("engagement")
    with op.batch_alter_table("sync_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_runs_store_id_esp_status"))
        batch_op.drop_index(batch_op.f("ix_sync_runs_store_id"))

    op.drop_table("sync_runs")
    with op.batch_alter_table("sync_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_items_store_id_esp_kind_subject_id_status"))
        batch_op.drop_index(batch_op.f("ix_sync_items_store_id"))
        batch_op.drop_index(batch_op.f("ix_sync_items_status_available_at"))

    op.drop_table("sync_items")
