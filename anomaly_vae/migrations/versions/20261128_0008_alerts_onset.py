"""alerts.onset_score_id: the record where an alert's anomaly began, the first of the records
that crossed the threshold among the ``n`` that opened it under a k-of-n rule (``score_id`` is
the record that completed the rule, up to ``n - 1`` records later). Alerts opened before this
revision have none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("onset_score_id", BIG_ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_alerts_onset_score_id_scores"),
            "scores",
            ["onset_score_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("fk_alerts_onset_score_id_scores"), type_="foreignkey")
        batch.drop_column("onset_score_id")
