"""A windowed model's per-entity state in the database (``window_states``).

``save_window_states`` upserts inside the caller's transaction (``write_results`` calls it in
the transaction that writes the batch's scores), so state and scores are durable together and
before the stream scorer commits the offsets; ``load_window_states`` reads the state of the
entities a scorer has not seen since it started or since its partitions last moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from anomaly_vae.storage.tables import WindowStateRow

_LOAD_CHUNK = 500


def save_window_states(
    connection: Connection, *, model_id: int, states: Mapping[str, bytes], now: datetime
) -> int:
    """Insert or replace each entity's state; returns how many were written."""
    if not states:
        return 0
    rows = [
        {"model_id": model_id, "entity_key": key, "state": blob, "updated_at": now}
        for key, blob in states.items()
    ]
    name = connection.dialect.name
    stmt: Any
    if name == "postgresql":
        pg = postgresql.insert(WindowStateRow)
        stmt = pg.on_conflict_do_update(
            index_elements=["model_id", "entity_key"],
            set_={"state": pg.excluded.state, "updated_at": pg.excluded.updated_at},
        )
    elif name == "sqlite":
        lite = sqlite.insert(WindowStateRow)
        stmt = lite.on_conflict_do_update(
            index_elements=["model_id", "entity_key"],
            set_={"state": lite.excluded.state, "updated_at": lite.excluded.updated_at},
        )
    else:  # pragma: no cover - the two supported dialects are above
        raise NotImplementedError(f"window states on {name}")
    connection.execute(stmt, rows)
    return len(rows)


def load_window_states(
    connection: Connection, *, model_id: int, entities: Sequence[str]
) -> dict[str, bytes]:
    """The stored state of each of ``entities`` that has one."""
    out: dict[str, bytes] = {}
    keys = list(entities)
    for start in range(0, len(keys), _LOAD_CHUNK):
        part = keys[start : start + _LOAD_CHUNK]
        result = connection.execute(
            select(WindowStateRow.entity_key, WindowStateRow.state).where(
                WindowStateRow.model_id == model_id, WindowStateRow.entity_key.in_(part)
            )
        )
        out.update({str(key): bytes(blob) for key, blob in result})
    return out
