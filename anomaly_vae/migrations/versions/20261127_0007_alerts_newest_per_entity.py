"""alerts (model_id, entity_key, id): an entity's newest alert in one index probe. The alert
rule reads it on every write; it was the largest id among all of the entity's alerts, read
through the entity_key index, a cost that grew with the alerts an entity ever had.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_alerts_model_id_entity_key_id", "alerts", ["model_id", "entity_key", "id"])


def downgrade() -> None:
    op.drop_index("ix_alerts_model_id_entity_key_id", table_name="alerts")
