"""The alert outbox: alert events kept in the database until the alerts topic has them.

A stream scorer with an alerts topic writes the events of a batch (an alert opened, escalated,
resolved) into ``alert_outbox`` in the transaction that writes the batch (``write_results``,
``outbox_model``); once that has committed it publishes them, waits for the broker's
acknowledgement and deletes their rows. A scorer killed in between leaves the rows, and the
next scorer of the model publishes them, oldest first, before anything else: the topic gets
every event at least once. Each message carries ``event_id`` (a UUID stored with the row), the
same however often it is sent, so that a consumer can drop the copies.

Nothing here imports the scorer (nor torch): the CLI's ``db prune`` reads it too.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine

from anomaly_vae.storage.tables import AlertOutboxRow

# Ids per DELETE ... WHERE id IN (...): under SQLite's and psycopg's parameter limits.
_IDS_PER_STATEMENT = 500


@dataclass(frozen=True)
class OutboxEvent:
    """An alert event as published: the row's ``id`` (its order), the message's key and value
    (JSON text with ``event_id``)."""

    id: int
    event_id: str
    key: str | None
    value: str


def json_ready(event: dict[str, Any]) -> dict[str, Any]:
    """An alert event's values as JSON values (times as ISO 8601 text, numpy numbers as
    Python's)."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        if hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        elif isinstance(value, (np.floating, np.integer)):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def message_key(event: dict[str, Any]) -> str | None:
    """The Kafka key of an alert event: its entity, so that one entity's events land in one
    partition, in order; without an entity the model's name (the model's records are one
    series: a null key spread one alert's opened and resolved over partitions)."""
    entity = event.get("entity_key")
    key = event.get("model") if entity is None else entity
    return None if key is None else str(key)


def add_events(
    connection: Connection,
    *,
    model_name: str,
    run_id: int,
    events: Sequence[dict[str, Any]],
    now: datetime,
) -> list[OutboxEvent]:
    """Insert ``events`` (``write_results``' alert events, in the order they happened) in the
    caller's transaction; the rows, in that order."""
    if not events:
        return []
    made = []
    for event in events:
        event_id = str(uuid.uuid4())
        payload = orjson.dumps({"event_id": event_id, **json_ready(event)}, default=str).decode()
        made.append(OutboxEvent(0, event_id, message_key(event), payload))
    rows = [
        {
            "event_id": e.event_id,
            "model_name": model_name,
            "run_id": run_id,
            "message_key": e.key,
            "payload": e.value,
            "created_at": now,
        }
        for e in made
    ]
    ids = connection.execute(
        insert(AlertOutboxRow).returning(AlertOutboxRow.id, sort_by_parameter_order=True), rows
    ).scalars()
    return [replace(e, id=int(i)) for i, e in zip(ids, made, strict=True)]


def pending(
    connection: Connection, *, model_name: str, after_id: int = 0, limit: int = 500
) -> list[OutboxEvent]:
    """The model name's rows after ``after_id``, oldest first, at most ``limit``."""
    query = (
        select(
            AlertOutboxRow.id,
            AlertOutboxRow.event_id,
            AlertOutboxRow.message_key,
            AlertOutboxRow.payload,
        )
        .where(AlertOutboxRow.model_name == model_name, AlertOutboxRow.id > after_id)
        .order_by(AlertOutboxRow.id)
        .limit(limit)
    )
    return [OutboxEvent(int(r[0]), str(r[1]), r[2], str(r[3])) for r in connection.execute(query)]


def remove(connection: Connection, ids: Sequence[int]) -> int:
    """Delete the rows of events the broker has acknowledged (in the caller's transaction);
    how many were still there (another scorer may have published and deleted some)."""
    removed = 0
    unique = sorted(set(ids))
    for start in range(0, len(unique), _IDS_PER_STATEMENT):
        chunk = unique[start : start + _IDS_PER_STATEMENT]
        removed += connection.execute(
            delete(AlertOutboxRow).where(AlertOutboxRow.id.in_(chunk))
        ).rowcount
    return removed


def count(connection: Connection, *, model_name: str | None = None) -> tuple[int, datetime | None]:
    """How many events wait (of ``model_name``, else of every model), and when the oldest was
    written."""
    query = select(func.count(), func.min(AlertOutboxRow.created_at))
    if model_name is not None:
        query = query.where(AlertOutboxRow.model_name == model_name)
    n, oldest = connection.execute(query).one()
    return int(n or 0), oldest


def counts_by_model(connection: Connection) -> dict[str, tuple[int, datetime]]:
    """Per model name with events waiting: how many, and when the oldest was written."""
    query = (
        select(AlertOutboxRow.model_name, func.count(), func.min(AlertOutboxRow.created_at))
        .group_by(AlertOutboxRow.model_name)
        .order_by(AlertOutboxRow.model_name)
    )
    return {str(name): (int(n), oldest) for name, n, oldest in connection.execute(query)}


@contextmanager
def publishing_turn(engine: Engine, *, model_name: str, wait_s: float = 60.0) -> Iterator[bool]:
    """Held while a scorer publishes what the outbox holds at its start, so that the scorers
    of one model started together (``--processes N``) take turns: the next finds the rows the
    first published deleted, rather than sending each event N times. PostgreSQL: a
    session-level advisory lock on a hash of the model name, on a connection of its own,
    waited for at most ``wait_s`` (then the scorer goes on without it: copies at worst, which
    ``event_id`` tells apart). SQLite: none (yields False). Yields whether it holds the lock."""
    if engine.dialect.name != "postgresql":
        yield False
        return
    digest = hashlib.sha256(f"anomaly-vae alert outbox {model_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with engine.connect() as connection:
        deadline = time.monotonic() + wait_s
        held = False
        while True:
            held = bool(connection.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            connection.commit()
            if held or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        try:
            yield held
        finally:
            if held:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    connection.commit()
                except Exception:  # the lock ends with its session: the connection's close
                    connection.invalidate()


__all__ = [
    "OutboxEvent",
    "add_events",
    "count",
    "counts_by_model",
    "json_ready",
    "message_key",
    "pending",
    "publishing_turn",
    "remove",
]
