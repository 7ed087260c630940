"""Retention: delete old score rows and dead letters (``anomaly-vae db prune``), and alert
events left unpublished in the outbox.

A stream scorer writes one ``scores`` row per record, forever; this bounds the table. Rows are
deleted in ranges of ids, one transaction per range, so that a prune of a large table never
holds a long lock and a running scorer goes on writing meanwhile (it writes new, higher ids).
The ids of both tables grow with the time a row was written, so the walk starts at the oldest
id and stops at the first range whose next row was written at or after the cut-off; every
delete also tests the row's own time, so nothing newer than the cut-off is ever deleted.

Kept, whatever their age:

* the score rows that alerts point to (the record that opened, escalated or resolved one): an
  alert's history stays whole, and deleting its opening row would delete the alert;
* flagged score rows, unless ``keep_flagged=False`` (they are few, and what ``anomalies list``
  and the API show);
* the models, thresholds, alerts, scoring runs and windowed models' state.

The alert outbox holds only events not yet published (a scorer deletes each row once the
broker has it): those older than the cut-off were left by a scorer that stopped before
publishing them, and no scorer of their model with an alerts topic has run since (one that
does publishes them first). They are deleted with the rest; the alerts table keeps the alerts.

A record replayed after its row was pruned (a consumer group reset to old offsets, a CSV
scored again) is stored again: the idempotent source key only dedupes rows still there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    and_,
    delete,
    func,
    not_,
    select,
    true,
    union,
    update,
)
from sqlalchemy.engine import Connection

from anomaly_vae.storage.tables import (
    Alert,
    AlertOutboxRow,
    DeadLetter,
    Model,
    Score,
    ScoringRun,
)

DEFAULT_BATCH = 50_000


@dataclass
class PruneResult:
    """What a prune deleted (or, with ``dry_run``, would delete) and what it kept."""

    before: datetime
    scores_deleted: int = 0
    scores_kept: int = 0  # older than the cut-off, kept: flagged, or pointed to by an alert
    dead_letters_deleted: int = 0
    # Alert events left unpublished in the outbox (no scorer with the alerts topic since).
    outbox_deleted: int = 0
    dry_run: bool = False


def prune(
    connection: Connection,
    *,
    before: datetime,
    model_name: str | None = None,
    keep_flagged: bool = True,
    dead_letters: bool = True,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
) -> PruneResult:
    """Delete the score rows written before ``before`` (and the dead letters rejected before
    it), of every model or of the versions of ``model_name``; commits after each range of
    ``batch`` ids. ``dry_run``: count, delete nothing."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    result = PruneResult(before=before, dry_run=dry_run)
    model_ids: list[int] | None = None
    if model_name is not None:
        model_ids = list(connection.scalars(select(Model.id).where(Model.name == model_name)))

    def of_model(column: SQLColumnExpression[int]) -> ColumnElement[bool]:
        return column.in_(model_ids) if model_ids is not None else true()

    # Scores.
    for lo, hi in _ranges(connection, Score.id, Score.scored_at, before, batch):
        in_range = and_(Score.id >= lo, Score.id < hi, Score.scored_at < before)
        old = and_(in_range, of_model(Score.model_id))
        referenced = union(
            *(
                select(column).where(column >= lo, column < hi)
                for column in (
                    Alert.score_id,
                    Alert.escalated_score_id,
                    Alert.resolved_score_id,
                    Alert.onset_score_id,
                )
            )
        )
        condition = and_(old, not_(Score.id.in_(referenced)))
        if keep_flagged:
            condition = and_(condition, not_(Score.is_anomaly))
        if not dry_run:
            _count_pruned_by_run(connection, condition)
        deleted = _delete_or_count(connection, Score, condition, dry_run=dry_run)
        result.scores_deleted += deleted
        left = connection.scalar(select(func.count()).select_from(Score).where(old)) or 0
        result.scores_kept += left - (deleted if dry_run else 0)
        connection.commit()

    # Dead letters.
    if dead_letters:
        for lo, hi in _ranges(connection, DeadLetter.id, DeadLetter.rejected_at, before, batch):
            condition = and_(
                DeadLetter.id >= lo,
                DeadLetter.id < hi,
                DeadLetter.rejected_at < before,
                of_model(DeadLetter.model_id),
            )
            result.dead_letters_deleted += _delete_or_count(
                connection, DeadLetter, condition, dry_run=dry_run
            )
            connection.commit()

    # Alert events never published (few: published ones are deleted at once).
    unpublished = AlertOutboxRow.created_at < before
    if model_name is not None:
        unpublished = and_(unpublished, AlertOutboxRow.model_name == model_name)
    result.outbox_deleted = _delete_or_count(
        connection, AlertOutboxRow, unpublished, dry_run=dry_run
    )
    connection.commit()
    return result


def _count_pruned_by_run(connection: Connection, condition: ColumnElement[bool]) -> None:
    """Add the score rows about to be deleted to their runs' ``rows_pruned``, in the delete's
    transaction: a model's stored rows stay the sum over its runs (``list_models``)."""
    per_run = connection.execute(
        select(Score.run_id, func.count()).where(condition).group_by(Score.run_id)
    ).all()
    for run_id, n in per_run:
        connection.execute(
            update(ScoringRun)
            .where(ScoringRun.id == run_id)
            .values(rows_pruned=ScoringRun.rows_pruned + n)
        )


def _delete_or_count(
    connection: Connection,
    table: type[Score] | type[DeadLetter] | type[AlertOutboxRow],
    condition: ColumnElement[bool],
    *,
    dry_run: bool,
) -> int:
    """Delete the rows of ``table`` that meet ``condition``, or with ``dry_run`` count them;
    how many."""
    if dry_run:
        return connection.scalar(select(func.count()).select_from(table).where(condition)) or 0
    return connection.execute(delete(table).where(condition)).rowcount


def _ranges(
    connection: Connection,
    id_column: SQLColumnExpression[int],
    time_column: SQLColumnExpression[datetime],
    before: datetime,
    batch: int,
) -> Iterator[tuple[int, int]]:
    """Ranges ``[lo, lo + batch)`` of ids from the oldest, each starting at an existing row,
    until the next row was written at or after ``before``. Each range is looked up when the
    caller has dealt with (and committed) the previous one."""
    start: int | None = None
    while True:
        query = select(id_column, time_column).order_by(id_column).limit(1)
        if start is not None:
            query = query.where(id_column >= start)
        row = connection.execute(query).first()
        connection.commit()  # no transaction left open between ranges
        if row is None or row[1] >= before:
            return
        lo = int(row[0])
        yield lo, lo + batch
        start = lo + batch
