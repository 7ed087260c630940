"""scoring_runs.rows_pruned: how many of the score rows a run inserted ``db prune`` has deleted
since, so that a model's stored score rows are the sum over its runs (``models list``,
``GET /models``) instead of a count of the whole scores table on every call. Filled in for
databases pruned before this revision: each run's inserted rows less those still stored.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scoring_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rows_pruned", sa.BigInteger(), nullable=False, server_default="0")
        )
    # One pass over scores (grouped by run), not a count per run: scores has no run_id index.
    op.execute("UPDATE scoring_runs SET rows_pruned = rows_inserted")
    op.execute(
        "UPDATE scoring_runs SET rows_pruned = scoring_runs.rows_pruned - stored.n "
        "FROM (SELECT run_id, count(*) AS n FROM scores GROUP BY run_id) AS stored "
        "WHERE stored.run_id = scoring_runs.id"
    )


def downgrade() -> None:
    with op.batch_alter_table("scoring_runs", schema=None) as batch_op:
        batch_op.drop_column("rows_pruned")
