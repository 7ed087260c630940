"""alert_outbox: alert events written in their batch's transaction and deleted once published,
so that the alerts topic gets every event at least once (a scorer killed between its commit and
its publish leaves them for the next one).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alert_outbox",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("message_key", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_outbox")),
    )
    op.create_index(
        op.f("ix_alert_outbox_model_name_id"), "alert_outbox", ["model_name", "id"], unique=False
    )
    op.create_index(
        op.f("ix_alert_outbox_created_at"), "alert_outbox", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_outbox_created_at"), table_name="alert_outbox")
    op.drop_index(op.f("ix_alert_outbox_model_name_id"), table_name="alert_outbox")
    op.drop_table("alert_outbox")
