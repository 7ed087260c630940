"""Alert rules in the write path: which newly stored records open, escalate or resolve alerts.

The decision is ``thresholds.AlertTracker`` (the same code that ``preview`` replays), started
for each entity from what the database holds, inside the transaction that stores the records:

* the entity's last ``max(n, resolve_after)`` stored records (by event time, then id; records
  without an event time by id): their crossings fill the k-of-n window, and the normal records
  after its open alert's last crossing count towards resolving it;
* the entity's newest alert: open or acknowledged means an alert is in progress (a crossing
  joins it, a critical one escalates it); its opening record's time starts the cool-down.

Only records this call actually inserted are judged, so a replayed batch (its rows already
stored) opens nothing twice, and a batch cut differently on replay judges only the new rows.
Because the state lives in the database, batch jobs, stream sessions and several scorer
processes sharing a topic all take the same decisions. Several processes writing the same
entities at once are serialised: SQLite allows one writer at a time, and on PostgreSQL each
transaction takes transaction-level advisory locks on the entities' buckets (sorted, so two
writers never wait on each other in a cycle) before it reads their state.

Records are judged in event-time order within a batch and after those already stored: a record
that arrives after later records of its entity is judged after them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    func,
    insert,
    literal,
    not_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from anomaly_vae.storage.tables import Alert, Model, Score
from anomaly_vae.thresholds import (
    SEVERITY_CRITICAL,
    SEVERITY_NAMES,
    SEVERITY_NORMAL,
    SEVERITY_WARNING,
    AlertRule,
    AlertTracker,
)

RULE_RESOLVER = "alert-rule"  # alerts.resolved_by when the rule resolved an alert
# Between the notes of one alert (an operator's when acknowledging, then the resolver's): a
# note is added to, never replaced.
NOTE_SEPARATOR = "; "
ACTIVE_STATES = ("open", "acknowledged")
LOCK_BUCKETS = 256  # advisory locks per model on PostgreSQL: bounded, whatever the entities
_KEYS_PER_QUERY = 500
_ENTITIES_PER_QUERY = 100
_SEVERITY_LEVELS = {"warning": SEVERITY_WARNING, "critical": SEVERITY_CRITICAL}


@dataclass
class AlertChanges:
    """What the rule did in one write: alerts opened (ids), escalated and resolved."""

    opened: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)


# ================================================================ the write path
def apply_alert_rule(
    connection: Connection,
    *,
    model_id: int,
    records: pd.DataFrame,
    new: np.ndarray,
    rule: AlertRule,
    threshold_id: int | None,
    now: datetime,
    history_filter: ColumnElement[bool],
) -> AlertChanges:
    """Judge the newly stored ``records[new]`` under ``rule``; write what it decides.

    ``records`` is the batch as given to ``write_results`` (``source_key``, ``is_anomaly``,
    optional ``severity``, ``entity_key``, ``event_time``); ``new`` marks the rows this
    transaction inserted; ``history_filter`` selects the stored rows that are not among them.
    """
    changes = AlertChanges()
    if not new.any():
        return changes
    batch = _batch_frame(records, new, now)
    active = _entities_with_active_alerts(connection, model_id)
    # Hash-based uniques on the arrays: iterating a 100k-row Series into a set is slow.
    entity_values = batch["entity"].to_numpy(dtype=object)
    flagged = set(pd.unique(entity_values[batch["level"].to_numpy() > 0]).tolist())
    present = set(pd.unique(entity_values).tolist())
    candidates = sorted(flagged | (present & active), key=_entity_sort_key)
    if not candidates:
        return changes
    if connection.dialect.name == "postgresql":
        _lock_entities(connection, model_id, candidates)
    timed = batch.groupby("entity", sort=False, dropna=False)["timed"].all().to_dict()
    tracker = AlertTracker(rule)
    alert_of: dict[str, int] = {}
    states = seed_states(
        connection,
        model_id=model_id,
        entities={e: bool(timed.get(e, True)) for e in candidates},
        rule=rule,
        history_filter=history_filter,
        alerts_filtered=False,
    )
    seed_tracker(tracker, states)
    for entity, state in states.items():
        if state.alert_id is not None and state.open_severity:
            alert_of[_tracker_key(entity)] = state.alert_id
    todo = batch[batch["entity"].isin(candidates)]
    events = tracker.update(
        todo["entity"].where(todo["entity"].notna(), "").tolist(),
        todo["level"].to_numpy(),
        todo["time"],
    )
    if not events:
        return changes
    # Each event's record, by its position in ``records``: only these keys are read; and
    # each opening's onset record when it is in this batch (else its stored id, seeded).
    where = todo["position"].to_numpy()[[e.index for e in events]]
    event_keys = _as_text(records["source_key"].iloc[where]).tolist()
    onsets = [e for e in events if e.kind == "open" and e.onset_index is not None]
    onset_at = todo["position"].to_numpy()[[int(e.onset_index or 0) for e in onsets]]
    onset_keys = _as_text(records["source_key"].iloc[onset_at]).tolist() if onsets else []
    score_ids = _score_ids(connection, model_id, sorted(set(event_keys) | set(onset_keys)))
    score_of = {id(e): score_ids[key] for e, key in zip(events, event_keys, strict=True)}
    onset_of: dict[int, int | None] = {
        id(e): score_ids[key] for e, key in zip(onsets, onset_keys, strict=True)
    }
    entities = {_tracker_key(e): e for e in candidates}
    # Few statements, whatever the events: every opening in one insert (ids back, in order),
    # then every escalation and every resolution in one executemany each.
    openings = [e for e in events if e.kind == "open"]
    opened_ids = _open_all(
        connection,
        [
            {
                "score_id": score_of[id(e)],
                "model_id": model_id,
                "threshold_id": threshold_id,
                "entity_key": entities[e.entity],
                "state": "open",
                "severity": SEVERITY_NAMES[e.severity],
                "rule": rule.to_dict(),
                "opened_at": now,
                "onset_score_id": onset_of.get(id(e), e.onset_ref),
            }
            for e in openings
        ],
    )
    opened_by = dict(zip((id(e) for e in openings), opened_ids, strict=True))
    escalations: list[dict[str, Any]] = []
    resolutions: list[dict[str, Any]] = []
    for event in events:
        score_id = score_of[id(event)]
        if event.kind == "open":
            alert_of[event.entity] = opened_by[id(event)]
            changes.opened.append(opened_by[id(event)])
        elif event.entity in alert_of:
            alert_id = alert_of[event.entity]
            if event.kind == "escalate":
                escalations.append({"alert": alert_id, "score": score_id})
                changes.escalated.append(alert_id)
            else:
                resolutions.append({"alert": alert_id, "score": score_id})
                changes.resolved.append(alert_id)
                del alert_of[event.entity]
    in_progress = and_(Alert.id == bindparam("alert"), Alert.state != "resolved")
    if escalations:  # before resolutions: an alert may escalate, then resolve, in one batch
        connection.execute(
            update(Alert)
            .where(in_progress)
            .values(
                severity=SEVERITY_NAMES[SEVERITY_CRITICAL],
                escalated_at=now,
                escalated_score_id=bindparam("score"),
            ),
            escalations,
        )
    if resolutions:
        connection.execute(
            update(Alert)
            .where(in_progress)
            .values(
                state="resolved",
                resolved_at=now,
                resolved_by=RULE_RESOLVER,
                resolved_score_id=bindparam("score"),
                # After the note an operator left (acknowledging it), not in its place.
                note=func.coalesce(Alert.note + NOTE_SEPARATOR, "")
                + f"resolved by the alert rule after {rule.resolve_after} normal "
                f"record{'s' if rule.resolve_after > 1 else ''}",
            ),
            resolutions,
        )
    return changes


def _batch_frame(records: pd.DataFrame, new: np.ndarray, now: datetime) -> pd.DataFrame:
    """The new records as the tracker takes them, in judging order: entity, level (0 normal,
    1 warning, 2 critical), time (event time, else the write time) and whether it is an
    event time."""
    n = len(records)
    flags = records["is_anomaly"].to_numpy(dtype=bool, na_value=False)
    level = flags.astype(np.int8)
    if "severity" in records and flags.any():
        flagged = np.flatnonzero(flags)
        critical = records["severity"].to_numpy(dtype=object)[flagged] == "critical"
        level[flagged[critical]] = SEVERITY_CRITICAL
    if "entity_key" in records:  # as stored: text, or None
        raw = records["entity_key"]
        values = raw.to_numpy(dtype=object)
        if not isinstance(raw.dtype, pd.StringDtype) and pd.api.types.infer_dtype(
            raw, skipna=True
        ) not in ("string", "empty"):
            values = raw.astype(str).to_numpy(dtype=object)
        values = values.copy()
        values[raw.isna().to_numpy()] = None
        entity = pd.Series(values, dtype=object)
    else:
        entity = pd.Series([None] * n, dtype=object)
    if "event_time" in records:
        event_time = pd.to_datetime(
            records["event_time"], utc=True, errors="coerce", format="mixed"
        )
    else:
        event_time = pd.Series(pd.NaT, index=records.index, dtype="datetime64[ns, UTC]")
    frame = pd.DataFrame(
        {
            # object dtype kept: pandas 3 would infer its str dtype, turning None into NaN.
            "entity": pd.Series(entity.to_numpy(dtype=object), dtype=object),
            "level": level,
            "timed": event_time.notna().to_numpy(),
            "time": event_time.dt.tz_convert(None)
            .fillna(pd.Timestamp(now).tz_convert(None))
            .to_numpy(dtype="datetime64[ns]"),  # UTC
            "position": np.arange(n),
        }
    )
    if not new.all():  # every record inserted: no key can be there twice
        frame = frame[new]
        keys = pd.Series(_as_text(records["source_key"].iloc[frame["position"].to_numpy()]))
        if not keys.is_unique:
            frame = frame[~keys.duplicated().to_numpy()]
    return frame.sort_values(["time", "position"], kind="stable").reset_index(drop=True)


def _as_text(series: pd.Series) -> np.ndarray:
    if isinstance(series.dtype, pd.StringDtype) or (
        pd.api.types.infer_dtype(series, skipna=True) == "string"
    ):
        return series.to_numpy(dtype=object)
    return series.astype(str).to_numpy(dtype=object)


def _entities_with_active_alerts(connection: Connection, model_id: int) -> set[str | None]:
    rows = connection.execute(
        select(Alert.entity_key)
        .where(Alert.state.in_(ACTIVE_STATES), Alert.model_id == model_id)
        .distinct()
    )
    return {row[0] for row in rows}


def _lock_entities(connection: Connection, model_id: int, entities: Sequence[str | None]) -> None:
    """Transaction-level advisory locks on the entities' buckets, in ascending order."""
    buckets = sorted({_bucket(entity) for entity in entities})
    connection.execute(
        text(
            "SELECT count(pg_advisory_xact_lock(:model_id, b)) "
            "FROM unnest(CAST(:buckets AS integer[])) WITH ORDINALITY AS u(b, i)"
        ),
        {"model_id": int(model_id), "buckets": buckets},
    )


def _bucket(entity: str | None) -> int:
    digest = hashlib.blake2b(("" if entity is None else entity).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % LOCK_BUCKETS


def _score_ids(connection: Connection, model_id: int, keys: list[str]) -> dict[str, int]:
    """The stored ids of these keys' score rows."""
    if not keys:
        return {}
    if connection.dialect.name == "postgresql":
        # One statement, planned for these keys each time: psycopg prepares a statement run
        # five times, and PostgreSQL's generic plan for it scans the whole table.
        raw = connection.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor:
            cursor.execute(
                _score_ids_statement(), {"model_id": model_id, "keys": keys}, prepare=False
            )
            return {str(key): int(score_id) for key, score_id in cursor.fetchall()}
    out: dict[str, int] = {}
    query = select(Score.source_key, Score.id).where(
        Score.model_id == model_id, Score.source_key.in_(bindparam("keys", expanding=True))
    )
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        for key, score_id in connection.execute(
            query, {"keys": keys[start : start + _KEYS_PER_QUERY]}
        ):
            out[str(key)] = int(score_id)
    return out


@lru_cache(maxsize=1)
def _score_ids_statement() -> str:
    """One probe of the unique index (source_key, model_id) per key, as a lateral join (its
    ``OFFSET 0`` keeps the planner from turning it into a join of two sets), the model
    checked on the row found (``model_id + 0``: a condition no index on ``model_id`` can
    serve). The planner then has one index to use, whatever the table's statistics say.
    ``source_key = ANY(keys) AND model_id = m``, planned from statistics older than the
    batch (a table filled since its last analysis; a new model's id, which they have never
    seen, so that it looks like a few rows), read every row of the model through the entity
    index instead, or the whole table: a lookup that grew with the table (7 ms at 10,000
    rows, 30 ms at 120,000, for 200 keys)."""
    return (
        "SELECT k.key, s.id FROM unnest(CAST(%(keys)s AS varchar[])) AS k(key) "
        "CROSS JOIN LATERAL (SELECT scores.id FROM scores WHERE scores.source_key = k.key "
        "AND scores.model_id + 0 = %(model_id)s OFFSET 0) AS s"
    )


def _open_all(connection: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the alerts; their ids, in the order of ``rows``."""
    if not rows:
        return []
    result = connection.execute(
        insert(Alert).returning(Alert.id, sort_by_parameter_order=True), rows
    )
    return [int(r[0]) for r in result]


# ================================================================ entity states
@dataclass(frozen=True)
class EntityState:
    """Where an entity stands for the alert rule (see ``AlertTracker.seed``)."""

    recent: tuple[bool, ...] = ()
    recent_ids: tuple[int, ...] = ()  # the score ids of the ``recent`` records
    open_severity: int = SEVERITY_NORMAL
    normal_streak: int = 0
    last_opened: float | None = None
    alert_id: int | None = None


def seed_states(
    connection: Connection,
    *,
    model_id: int,
    entities: dict[str | None, bool],
    rule: AlertRule,
    history_filter: ColumnElement[bool],
    as_of: datetime | None = None,
    alerts_filtered: bool = True,
) -> dict[str | None, EntityState]:
    """Each entity's state from the stored records that ``history_filter`` keeps (``entities``
    maps an entity to whether its records have event times) and its newest alert opened by
    one of them: in progress now or, with ``as_of``, at that time. ``alerts_filtered=False``
    takes the newest alert whatever record opened it (the write path: the records it has just
    inserted have opened no alert yet), which spares a join of every alert with its score."""
    newest = _newest_alerts(
        connection, model_id, list(entities), history_filter if alerts_filtered else None, as_of
    )
    window = max(rule.n, rule.resolve_after)
    recent = _last_records(connection, model_id, entities, window, history_filter)
    out: dict[str | None, EntityState] = {}
    for entity in entities:
        rows = recent.get(entity, [])
        rows.reverse()  # oldest first
        levels = [_level(r.is_anomaly, r.severity) for r in rows]
        alert = newest.get(entity)
        open_severity, streak, last_opened, alert_id = SEVERITY_NORMAL, 0, None, None
        if alert is not None:
            last_opened = alert["opened_time"].timestamp()
            if alert["active"]:
                alert_id = alert["id"]
                open_severity = _SEVERITY_LEVELS.get(alert["severity"], SEVERITY_WARNING)
                ids = [r.id for r in rows]
                since = ids.index(alert["score_id"]) + 1 if alert["score_id"] in ids else 0
                for level in reversed(levels[since:]):
                    if level > 0:
                        break
                    streak += 1
        out[entity] = EntityState(
            recent=tuple(level > 0 for level in levels[-rule.n :]),
            recent_ids=tuple(int(r.id) for r in rows[-rule.n :]),
            open_severity=open_severity,
            normal_streak=min(streak, rule.resolve_after),
            last_opened=last_opened,
            alert_id=alert_id,
        )
    return out


def seed_tracker(tracker: AlertTracker, states: dict[str | None, EntityState]) -> None:
    """Start ``tracker``'s entities from ``states`` (see ``seed_states``)."""
    for entity, state in states.items():
        tracker.seed(
            _tracker_key(entity),
            recent=state.recent,
            refs=state.recent_ids,
            open_severity=state.open_severity,
            normal_streak=state.normal_streak,
            last_opened=state.last_opened,
        )


def _last_records(
    connection: Connection,
    model_id: int,
    entities: dict[str | None, bool],
    limit: int,
    history_filter: ColumnElement[bool],
) -> dict[str | None, list[Any]]:
    """Each entity's last ``limit`` stored records (newest first) that ``history_filter``
    keeps: one statement for many entities (a UNION ALL of per-entity LIMIT queries, each
    reading the index (model_id, entity_key, event_time, id) backwards)."""
    parts = []
    for position, (entity, timed) in enumerate(entities.items()):
        part = select(
            literal(position).label("entity_position"),
            Score.id,
            Score.event_time,
            Score.is_anomaly,
            Score.severity,
        ).where(Score.model_id == model_id, _entity_is(Score.entity_key, entity), history_filter)
        if timed:
            part = part.where(Score.event_time.is_not(None)).order_by(
                Score.event_time.desc(), Score.id.desc()
            )
        else:
            part = part.where(Score.event_time.is_(None)).order_by(Score.id.desc())
        parts.append(select(part.limit(limit).subquery()))
    names = list(entities)
    out: dict[str | None, list[Any]] = {}
    for stmt in _unions(parts):
        for row in connection.execute(stmt):
            out.setdefault(names[row.entity_position], []).append(row)
    for rows in out.values():  # a UNION ALL promises no order: newest first again
        rows.sort(key=lambda r: (r.event_time is not None, r.event_time or 0, r.id), reverse=True)
    return out


def _unions(parts: list[Any]) -> Iterator[Any]:
    """Per-entity queries as statements of at most ``_ENTITIES_PER_QUERY`` each (a UNION ALL
    of them, or the one alone)."""
    for start in range(0, len(parts), _ENTITIES_PER_QUERY):
        chunk = parts[start : start + _ENTITIES_PER_QUERY]
        yield chunk[0] if len(chunk) == 1 else union_all(*chunk)


def _newest_alerts(
    connection: Connection,
    model_id: int,
    entities: list[str | None],
    history_filter: ColumnElement[bool] | None,
    as_of: datetime | None,
) -> dict[str | None, dict[str, Any]]:
    """Each entity's newest alert opened by a record that ``history_filter`` keeps (any
    record when None), and whether it was in progress (now, or at ``as_of`` when given: not
    yet resolved then)."""
    if not entities:
        return {}
    # Each entity's newest alert by a backward probe of the index (model_id, entity_key, id),
    # LIMIT 1: the largest id of all the entity's alerts (a GROUP BY) read every alert it ever
    # had, on every write.
    parts = []
    for entity in entities:
        part = select(Alert.id).where(
            Alert.model_id == model_id, _entity_is(Alert.entity_key, entity)
        )
        if history_filter is not None:
            part = part.join(Score, Score.id == Alert.score_id).where(history_filter)
        parts.append(select(part.order_by(Alert.id.desc()).limit(1).subquery()))
    resolving = aliased(Score)
    rows: list[Any] = []
    for newest in _unions(parts):
        rows.extend(
            connection.execute(
                select(
                    Alert.id,
                    Alert.entity_key,
                    Alert.state,
                    Alert.severity,
                    Alert.score_id,
                    func.coalesce(Score.event_time, Score.scored_at).label("opened_time"),
                    func.coalesce(resolving.event_time, Alert.resolved_at).label("resolved_time"),
                )
                .join(Score, Score.id == Alert.score_id)
                .outerjoin(resolving, resolving.id == Alert.resolved_score_id)
                .where(Alert.id.in_(newest))
            )
        )
    out: dict[str | None, dict[str, Any]] = {}
    for row in rows:
        active = row.state in ACTIVE_STATES
        if as_of is not None and not active and row.resolved_time is not None:
            active = pd.Timestamp(row.resolved_time) >= pd.Timestamp(as_of)
        out[row.entity_key] = {
            "id": int(row.id),
            "severity": row.severity,
            "score_id": int(row.score_id),
            "opened_time": pd.Timestamp(row.opened_time),
            "active": active,
        }
    return out


def _level(is_anomaly: bool, severity: str | None) -> int:
    if not is_anomaly:
        return SEVERITY_NORMAL
    return _SEVERITY_LEVELS.get(severity or "warning", SEVERITY_WARNING)


def _entity_is(column: Any, entity: str | None) -> ColumnElement[bool]:
    return column.is_(None) if entity is None else column == entity


def _tracker_key(entity: str | None) -> str:
    """The tracker's name for an entity (``None``, no entity, is the empty name)."""
    return "" if entity is None else entity


def _entity_sort_key(entity: str | None) -> tuple[int, str]:
    return (0, "") if entity is None else (1, entity)


def not_written_by(run_id: int, now: datetime) -> ColumnElement[bool]:
    """Stored rows other than those this write (run ``run_id`` at ``now``) inserted."""
    return not_(and_(Score.run_id == run_id, Score.scored_at == now))


# ==================================================================== details
def alert_details(connection: Connection, *, alert_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Alerts with the key, score and event time of the score row that opened them."""
    out: list[dict[str, Any]] = []
    onset = aliased(Score)
    query = (
        select(
            Alert.id.label("alert_id"),
            Model.name.label("model"),
            Model.version.label("model_version"),
            Alert.entity_key,
            Alert.severity,
            Alert.state,
            Alert.opened_at,
            Alert.escalated_at,
            Alert.resolved_at,
            Alert.resolved_by,
            Score.source_key,
            Score.score,
            Score.event_time,
            Score.top_features,
            func.coalesce(onset.event_time, onset.scored_at).label("onset_time"),
        )
        .join(Score, Score.id == Alert.score_id)
        .outerjoin(onset, onset.id == Alert.onset_score_id)
        .join(Model, Model.id == Alert.model_id)
        .where(Alert.id.in_(bindparam("ids", expanding=True)))
        .order_by(Alert.id)
    )
    ids = list(alert_ids)
    for start in range(0, len(ids), _KEYS_PER_QUERY):
        for row in connection.execute(query, {"ids": ids[start : start + _KEYS_PER_QUERY]}):
            out.append(dict(row._mapping))
    return out
