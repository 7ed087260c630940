"""scores: no foreign keys on model_id and run_id (PostgreSQL checked each with a query per
inserted row, 40 % of the server's time per score row); the index of flagged records by
model and time is partial (WHERE is_anomaly) instead of covering every record; no index on
run_id (no query reads scores by run)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_scores_model_id_models"), type_="foreignkey")
        batch_op.drop_constraint(op.f("fk_scores_run_id_scoring_runs"), type_="foreignkey")
        batch_op.drop_index(op.f("ix_scores_model_id_is_anomaly_scored_at"))
        batch_op.drop_index(op.f("ix_scores_run_id"))
        batch_op.create_index(
            "ix_scores_flagged",
            ["model_id", "scored_at"],
            postgresql_where=sa.text("is_anomaly"),
            sqlite_where=sa.text("is_anomaly"),
        )


def downgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index("ix_scores_flagged")
        batch_op.create_index(op.f("ix_scores_run_id"), ["run_id"])
        batch_op.create_index(
            op.f("ix_scores_model_id_is_anomaly_scored_at"),
            ["model_id", "is_anomaly", "scored_at"],
        )
        batch_op.create_foreign_key(
            op.f("fk_scores_model_id_models"), "models", ["model_id"], ["id"]
        )
        batch_op.create_foreign_key(
            op.f("fk_scores_run_id_scoring_runs"), "scoring_runs", ["run_id"], ["id"]
        )
