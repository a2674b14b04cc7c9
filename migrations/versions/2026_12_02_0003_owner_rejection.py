"""An upload's owner (set by the pre-create hook) and a pre-finish hook's rejection.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upload") as table:
        table.add_column(sa.Column("owner", sa.String(255), nullable=True))
        table.add_column(sa.Column("rejected_status", sa.Integer, nullable=True))
        table.add_column(sa.Column("rejected_reason", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upload") as table:
        table.drop_column("rejected_reason")
        table.drop_column("rejected_status")
        table.drop_column("owner")
