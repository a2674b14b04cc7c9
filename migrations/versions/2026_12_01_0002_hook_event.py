"""Create the hook outbox: one row per event and receiver, written with the state change it reports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_event",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("sink", sa.String(32), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("upload_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_event")),
    )
    op.create_index(op.f("ix_hook_event_upload_id"), "hook_event", ["upload_id"])
    op.create_index("ix_hook_event_state_due_at", "hook_event", ["state", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_hook_event_state_due_at", table_name="hook_event")
    op.drop_index(op.f("ix_hook_event_upload_id"), table_name="hook_event")
    op.drop_table("hook_event")
