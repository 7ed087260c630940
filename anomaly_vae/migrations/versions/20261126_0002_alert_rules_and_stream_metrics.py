"""alert rules and stream metrics: thresholds.alert_rule, alert escalation and resolution,
an index for an entity's latest scores, and the stream scorer's lag / latency on scoring_runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def TIMESTAMP() -> sa.DateTime:  # noqa: N802
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("thresholds") as batch:
        batch.add_column(sa.Column("alert_rule", JSON, nullable=True))
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("escalated_at", TIMESTAMP(), nullable=True))
        batch.add_column(sa.Column("escalated_score_id", BIG_ID, nullable=True))
        batch.add_column(sa.Column("resolved_score_id", BIG_ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_alerts_escalated_score_id_scores"),
            "scores",
            ["escalated_score_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_foreign_key(
            op.f("fk_alerts_resolved_score_id_scores"),
            "scores",
            ["resolved_score_id"],
            ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("scoring_runs") as batch:
        batch.add_column(sa.Column("lag", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("latency_p50_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("latency_p99_ms", sa.Float(), nullable=True))
        batch.add_column(sa.Column("records_per_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("metrics_at", TIMESTAMP(), nullable=True))
    op.create_index(
        op.f("ix_scores_model_id_entity_key_event_time_id"),
        "scores",
        ["model_id", "entity_key", "event_time", "id"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_scores_model_id_entity_key_event_time_id"), table_name="scores")
    with op.batch_alter_table("scoring_runs") as batch:
        for name in ("metrics_at", "records_per_s", "latency_p99_ms", "latency_p50_ms", "lag"):
            batch.drop_column(name)
    with op.batch_alter_table("alerts") as batch:
        batch.drop_constraint(op.f("fk_alerts_resolved_score_id_scores"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_alerts_escalated_score_id_scores"), type_="foreignkey")
        batch.drop_column("resolved_score_id")
        batch.drop_column("escalated_score_id")
        batch.drop_column("escalated_at")
    with op.batch_alter_table("thresholds") as batch:
        batch.drop_column("alert_rule")
