"""initial schema: models, thresholds, scoring_runs, scores, alerts, dead_letters

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out here rather than imported, so that this revision never changes with the code.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def TIMESTAMP() -> sa.DateTime:  # noqa: N802
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("score_kind", sa.String(length=32), nullable=False),
        sa.Column("feature_schema", JSON, nullable=False),
        sa.Column("training_summary", JSON, nullable=False),
        sa.Column("calibration", JSON, nullable=False),
        sa.Column("package_version", sa.String(length=40), nullable=True),
        sa.Column("created_at", TIMESTAMP(), nullable=True),
        sa.Column("registered_at", TIMESTAMP(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_models_content_hash")),
    )
    op.create_index(op.f("ix_models_name"), "models", ["name"])

    op.create_table(
        "thresholds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=40), nullable=False),
        sa.Column("warning", sa.Float(), nullable=False),
        sa.Column("critical", sa.Float(), nullable=True),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thresholds")),
        sa.UniqueConstraint("model_name", "version", name=op.f("uq_thresholds_model_name_version")),
    )

    op.create_table(
        "scoring_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold_id", sa.Integer(), nullable=True),
        sa.Column("threshold_value", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", TIMESTAMP(), nullable=False),
        sa.Column("finished_at", TIMESTAMP(), nullable=True),
        sa.Column("rows_read", sa.BigInteger(), nullable=False),
        sa.Column("rows_scored", sa.BigInteger(), nullable=False),
        sa.Column("rows_flagged", sa.BigInteger(), nullable=False),
        sa.Column("rows_rejected", sa.BigInteger(), nullable=False),
        sa.Column("rows_inserted", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('batch', 'stream')", name=op.f("ck_scoring_runs_kind")),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_scoring_runs_status")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_scoring_runs_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["threshold_id"],
            ["thresholds.id"],
            name=op.f("fk_scoring_runs_threshold_id_thresholds"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_runs")),
    )
    op.create_index(op.f("ix_scoring_runs_model_id"), "scoring_runs", ["model_id"])
    op.create_index(op.f("ix_scoring_runs_started_at"), "scoring_runs", ["started_at"])

    op.create_table(
        "dead_letters",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("source_key", sa.String(length=300), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("rejected_at", TIMESTAMP(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_dead_letters_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["scoring_runs.id"], name=op.f("fk_dead_letters_run_id_scoring_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint(
            "source_key", "model_id", name=op.f("uq_dead_letters_source_key_model_id")
        ),
    )
    op.create_index(op.f("ix_dead_letters_run_id"), "dead_letters", ["run_id"])

    op.create_table(
        "scores",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("source_key", sa.String(length=300), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("entity_key", sa.String(length=200), nullable=True),
        sa.Column("event_time", TIMESTAMP(), nullable=True),
        sa.Column("scored_at", TIMESTAMP(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("recon_error", sa.Float(), nullable=False),
        sa.Column("percentile", sa.Float(), nullable=False),
        sa.Column("is_anomaly", sa.Boolean(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=True),
        sa.Column("top_features", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_scores_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["scoring_runs.id"], name=op.f("fk_scores_run_id_scoring_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scores")),
        sa.UniqueConstraint("source_key", "model_id", name=op.f("uq_scores_source_key_model_id")),
    )
    op.create_index(
        op.f("ix_scores_model_id_is_anomaly_scored_at"),
        "scores",
        ["model_id", "is_anomaly", "scored_at"],
    )
    op.create_index(op.f("ix_scores_run_id"), "scores", ["run_id"])

    op.create_table(
        "alerts",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("score_id", BIG_ID, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("threshold_id", sa.Integer(), nullable=True),
        sa.Column("entity_key", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("rule", JSON, nullable=True),
        sa.Column("opened_at", TIMESTAMP(), nullable=False),
        sa.Column("acknowledged_at", TIMESTAMP(), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("resolved_at", TIMESTAMP(), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint("severity IN ('warning', 'critical')", name=op.f("ck_alerts_severity")),
        sa.CheckConstraint(
            "state IN ('open', 'acknowledged', 'resolved')", name=op.f("ck_alerts_state")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_alerts_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["score_id"], ["scores.id"], name=op.f("fk_alerts_score_id_scores"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["threshold_id"], ["thresholds.id"], name=op.f("fk_alerts_threshold_id_thresholds")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("score_id", name=op.f("uq_alerts_score_id")),
    )
    op.create_index(op.f("ix_alerts_entity_key"), "alerts", ["entity_key"])
    op.create_index(op.f("ix_alerts_state_opened_at"), "alerts", ["state", "opened_at"])


def downgrade() -> None:
    for table in ("alerts", "scores", "dead_letters", "scoring_runs", "thresholds", "models"):
        op.drop_table(table)  # their indexes go with them
