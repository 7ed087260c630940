"""Every read and write of the results database. Keyword-only functions on an explicit
``Connection``; nothing is global. All SQL goes through SQLAlchemy with bound parameters.

The hot path is :func:`write_results`: one call writes one batch of scored records, their
rejects and the alerts they open in ONE transaction, idempotently (``ON CONFLICT DO NOTHING`` on
the ``(source_key, model_id)`` keys), so a batch replayed after a crash adds only what is
missing. Batch jobs and the stream scorer both call it. Rows are built column-wise from
arrays (no ORM objects, no per-row dictionaries); SQLite takes them through the driver's
``executemany`` of the compiled ``INSERT ... ON CONFLICT DO NOTHING``, PostgreSQL as one binary
``COPY`` into the table (in a savepoint; when a key is already there, into a staging table and
one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` from it; see ``benchmarks/db_write.py``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Insert,
    Table,
    and_,
    bindparam,
    cast,
    column,
    false,
    func,
    insert,
    or_,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.orm import aliased

from anomaly_vae.config import MODEL_NAME_MAX_CHARS, MODEL_NAME_RULE, only_dots
from anomaly_vae.errors import ConfigError, NotFoundError
from anomaly_vae.storage.alerting import AlertChanges, apply_alert_rule, not_written_by
from anomaly_vae.storage.alerting import alert_details as fetch_alert_details
from anomaly_vae.storage.outbox import OutboxEvent, add_events
from anomaly_vae.storage.tables import (
    Alert,
    DeadLetter,
    Model,
    Score,
    ScoringRun,
    Threshold,
)
from anomaly_vae.storage.window_states import save_window_states
from anomaly_vae.thresholds import AlertRule

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("source_key", "score", "recon_error", "percentile", "is_anomaly")
OPTIONAL_SCORE_COLUMNS = (
    "entity_key",
    "event_time",
    "severity",
    "top_features",
    "window_status",
)
REJECT_COLUMNS = ("source_key", "reason", "raw")
# A threshold taken from a model's calibration: the quantile policy, marked in its parameters
# so that a retrained model version brings its own (an operator's thresholds are never replaced).
CALIBRATED_POLICY = "quantile"
FROM_CALIBRATION = "model calibration"


# Row ids are 64-bit integers. A number beyond that range (an API client's before_id of 30
# digits, a --limit of 25) made the drivers raise (SQLite: OverflowError, a 500 or a
# traceback): it is taken as the nearest id there can be, which no row has, so that what is
# below it is every row (and a limit as large, no limit).
ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def id_bound(value: int) -> int:
    """``value`` within the range of a row id or a row count (see ``ID_MIN``)."""
    return min(max(value, ID_MIN), ID_MAX)


# The ids of models, thresholds and scoring runs (and the columns naming them) are Integer:
# PostgreSQL's int4. A run id or a before_id past that range (3,000,000,000) made PostgreSQL
# refuse the query, 'integer out of range': a 422 telling the API client to leave the value
# out, or a refused statement on the command line, where any other unknown id finds nothing.
INT_ID_MIN, INT_ID_MAX = -(2**31), 2**31 - 1


def require_page_cursor(connection: Connection, id_column: Any, before_id: int, what: str) -> None:
    """Refuse a ``before_id`` that names no row of a listing paged by (time, id): the page
    after it starts at that row's time, and with no such row every page was empty, which a
    client read as the end of the list (a mistyped id, one of another list, a pruned row)."""
    if connection.scalar(select(id_column).where(id_column == id_bound(before_id))) is None:
        raise ConfigError(
            f"before_id {before_id}: no {what} has that id; give the id of the last {what} "
            "of the page before (or leave before_id out for the newest)"
        )


def int_id_bound(value: int) -> int:
    """``value`` within the range of an Integer id column, as a bound for ``<`` (past the
    range: every id, or none)."""
    return min(max(value, INT_ID_MIN), INT_ID_MAX)


def int_id_is(column: Any, value: int) -> Any:
    """``column == value`` for an Integer id column: false for a value no such id can have."""
    return column == value if INT_ID_MIN <= value <= INT_ID_MAX else false()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def csv_source_key_prefix(sha256_hex: str) -> str:
    """Keys of a CSV export's rows: ``file-sha256:<64 hex digits of the file>:<data row>``.

    The row is the 0-based data row number (the header is not a row), so the same file gives
    the same keys wherever it lies and whatever it is called."""
    return f"file-sha256:{sha256_hex}:"


def stream_source_key(topic: str, partition: int, offset: int) -> str:
    """Key of a Kafka record: ``topic:partition:offset``."""
    return f"{topic}:{partition}:{offset}"


# ==================================================================== models, thresholds
@dataclass(frozen=True)
class ModelVersion:
    """What registering a model version records (see ``storage.sink.model_version_of``)."""

    name: str
    content_hash: str
    path: str | None
    score_kind: str
    threshold: float
    threshold_quantile: float
    feature_schema: dict[str, Any]
    training_summary: dict[str, Any]
    calibration: dict[str, Any]
    package_version: str | None
    created_at: datetime | None

    @property
    def version(self) -> str:
        return self.content_hash[:12]


def register_model(connection: Connection, *, model: ModelVersion) -> int:
    """Record a model version (once per content hash); returns its ``models.id``."""
    if len(model.name) > MODEL_NAME_MAX_CHARS:
        # A model saved before training refused such a name: PostgreSQL would refuse it here
        # as "value too long for type character varying(200)", naming nothing.
        raise ConfigError(
            f"model name {model.name[:40]!r}... is {len(model.name)} characters long: the "
            f"database holds at most {MODEL_NAME_MAX_CHARS}; retrain it with a shorter 'name:' "
            "in its pipeline file"
        )
    if only_dots(model.name):
        # A model saved before its name was checked: registered, its scores and thresholds
        # stored, but the HTTP API's /models/{name} never reached it.
        raise ConfigError(
            f"model name {model.name!r} cannot be served by the HTTP API (/models/{model.name}): "
            f"a model name must be {MODEL_NAME_RULE}; retrain it with another 'name:' in its "
            "pipeline file"
        )
    known = connection.execute(
        select(Model.id).where(Model.content_hash == model.content_hash)
    ).first()
    if known is None:
        _warn_other_features(connection, model)
    stmt = _insert_ignore(connection.dialect, Model.__table__, ["content_hash"]).values(
        name=model.name,
        version=model.version,
        content_hash=model.content_hash,
        path=model.path,
        score_kind=model.score_kind,
        feature_schema=model.feature_schema,
        training_summary=model.training_summary,
        calibration=model.calibration,
        package_version=model.package_version,
        created_at=model.created_at,
        registered_at=utc_now(),
    )
    connection.execute(stmt)
    row = connection.execute(
        select(Model.id, Model.path, Model.calibration).where(
            Model.content_hash == model.content_hash
        )
    ).one()
    if model.path and row.path != model.path:
        # The directory was moved (or copied) and scored from there: where it is now is where
        # the API loads it from, not where it was first scored.
        connection.execute(update(Model).where(Model.id == row.id).values(path=model.path))
    if "scores" not in row.calibration and "scores" in model.calibration:
        # Registered by an older version without its calibration scores: add them (the same
        # model files, so the same scores: nothing recorded about the past changes).
        connection.execute(
            update(Model).where(Model.id == row.id).values(calibration=model.calibration)
        )
    return int(row.id)


def _feature_names(schema: Mapping[str, Any] | None) -> list[str]:
    columns = (schema or {}).get("columns") or []
    return [str(c.get("name")) for c in columns if isinstance(c, Mapping)]


def _warn_other_features(connection: Connection, model: ModelVersion) -> None:
    """A new version of a name whose newest version reads other columns is most likely another
    model that got the same name (the model directory's name, such as 'model', when the
    pipeline names none): it would share that model's thresholds, alert rule and alerts."""
    newest = connection.execute(
        select(Model.version, Model.path, Model.feature_schema)
        .where(Model.name == model.name)
        .order_by(Model.registered_at.desc(), Model.id.desc())
        .limit(1)
    ).first()
    if newest is None:
        return
    before, now = _feature_names(newest.feature_schema), _feature_names(model.feature_schema)
    if set(before) == set(now):
        return
    added = [n for n in now if n not in before]
    dropped = [n for n in before if n not in now]
    changes = "; ".join(
        f"{what} {', '.join(repr(n) for n in names[:5])}{', ...' if len(names) > 5 else ''}"
        for what, names in (("new", added), ("no longer", dropped))
        if names
    )
    logger.warning(
        "model '%s' version %s (%s) reads other features than version %s (%s), the newest of "
        "that name (%s): they share one threshold, alert rule and alerts; if it is another "
        "model, give it its own name ('name:' in the pipeline file it is trained with)",
        model.name,
        model.version,
        model.path or "no path",
        newest.version,
        newest.path or "no path",
        changes,
    )


def calibration_scores(connection: Connection, *, model_id: int) -> np.ndarray:
    """The held-out normal scores of a registered model version (sorted), which the quantile,
    false-alarm-rate and EVT policies compute from."""
    row = connection.execute(
        select(Model.name, Model.version, Model.calibration).where(Model.id == model_id)
    ).one()
    scores = row.calibration.get("scores")
    if not scores:
        raise ConfigError(
            f"model {row.name} version {row.version} was registered without its calibration "
            "scores: score anything with its model directory once (anomaly-vae score ... --db) "
            "to register them"
        )
    return np.asarray(scores, dtype=np.float64)


def threshold_in_force(connection: Connection, *, model_name: str) -> Row[Any] | None:
    """The newest threshold version of ``model_name``, or None."""
    return connection.execute(
        select(Threshold)
        .where(Threshold.model_name == model_name)
        .order_by(Threshold.version.desc())
        .limit(1)
    ).first()


def lock_thresholds(connection: Connection, *, model_name: str) -> None:
    """Take, until the end of the caller's transaction, the right to add a threshold version
    of ``model_name``: two writers (two API processes, a CLI and a scorer) would otherwise both
    read version N in force and both insert N + 1, and one fail on the unique key. Call it
    before reading the version in force that a change is based on.

    PostgreSQL: a transaction-level advisory lock on a 64-bit hash of the name (the one-key
    form, apart from the alert rule's two-key locks). SQLite: a write that takes the database's
    write lock now (waiting for another writer's commit), so what is read next is current."""
    if connection.dialect.name == "postgresql":
        digest = hashlib.sha256(f"anomaly-vae thresholds {model_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        connection.execute(
            update(Threshold).where(Threshold.id < 0).values(version=Threshold.version)
        )


def add_threshold(
    connection: Connection,
    *,
    model_name: str,
    policy: str,
    warning: float,
    critical: float | None = None,
    parameters: dict[str, Any] | None = None,
    alert_rule: dict[str, Any] | None = None,
    created_by: str,
    reason: str,
) -> Row[Any]:
    """Append a new threshold version for ``model_name``; it is in force from now on.
    ``alert_rule`` (``AlertRule.to_dict()``) goes with it; None means the default rule."""
    if critical is not None and critical < warning:
        raise ConfigError(
            f"the critical threshold ({critical:g}) must be at or above the warning threshold "
            f"({warning:g})"
        )
    lock_thresholds(connection, model_name=model_name)
    latest = connection.scalar(
        select(func.max(Threshold.version)).where(Threshold.model_name == model_name)
    )
    connection.execute(
        insert(Threshold).values(
            model_name=model_name,
            version=int(latest or 0) + 1,
            policy=policy,
            warning=float(warning),
            critical=None if critical is None else float(critical),
            parameters=parameters or {},
            alert_rule=None if alert_rule is None else AlertRule.from_dict(alert_rule).to_dict(),
            created_by=created_by,
            reason=reason,
            created_at=utc_now(),
        )
    )
    row = threshold_in_force(connection, model_name=model_name)
    assert row is not None
    return row


def ensure_calibrated_threshold(
    connection: Connection,
    *,
    model: ModelVersion,
    created_by: str,
    alert_rule: dict[str, Any] | None = None,
) -> Row[Any]:
    """The threshold in force for ``model.name``, creating one from the model's calibration
    when the name has none, or when the one in force was calibrated on another model version
    or carries another alert rule than the pipeline's ``alert_rule`` (None: the default).
    A threshold an operator set (any other policy, or any rule) stays in force."""
    lock_thresholds(connection, model_name=model.name)
    current = threshold_in_force(connection, model_name=model.name)
    rule = AlertRule.from_dict(alert_rule).to_dict()
    if current is not None and (
        current.parameters.get("from") != FROM_CALIBRATION
        or (
            current.parameters.get("model_version") == model.version
            and AlertRule.from_dict(current.alert_rule).to_dict() == rule
        )
    ):
        return current
    return add_threshold(
        connection,
        model_name=model.name,
        policy=CALIBRATED_POLICY,
        warning=model.threshold,
        parameters={
            "quantile": model.threshold_quantile,
            "model_version": model.version,
            "from": FROM_CALIBRATION,
        },
        alert_rule=rule,
        created_by=created_by,
        reason=(
            f"quantile {model.threshold_quantile:g} of held-out normal scores of model "
            f"version {model.version}"
        ),
    )


def list_thresholds(
    connection: Connection,
    *,
    model_name: str,
    limit: int | None = None,
    before_id: int | None = None,
) -> list[Row[Any]]:
    """The threshold versions of ``model_name``, newest first (every one, unless ``limit``).
    ``before_id`` (the last ``id`` of a page) gives the versions after it in this order, the
    next page: a name's versions are added one at a time under ``lock_thresholds``, so its
    ids grow with its version numbers."""
    stmt = (
        select(Threshold)
        .where(Threshold.model_name == model_name)
        .order_by(Threshold.version.desc(), Threshold.id.desc())
    )
    if before_id is not None:
        stmt = stmt.where(Threshold.id < int_id_bound(before_id))
    if limit is not None:
        stmt = stmt.limit(id_bound(limit))
    return list(connection.execute(stmt))


def list_models(connection: Connection) -> list[Row[Any]]:
    """Registered model versions, newest first, with how many score rows each has stored:
    the sum over its runs of the rows they inserted less those pruned since (kept in the
    writes' and the prune's transactions), not a count of the whole scores table."""
    counts = (
        select(
            ScoringRun.model_id,
            # PostgreSQL's sum of bigints is a numeric (a Decimal): back to an integer.
            cast(func.sum(ScoringRun.rows_inserted - ScoringRun.rows_pruned), BigInteger).label(
                "scores"
            ),
        )
        .group_by(ScoringRun.model_id)
        .subquery()
    )
    return list(
        connection.execute(
            select(
                Model.id,
                Model.name,
                Model.version,
                Model.score_kind,
                Model.path,
                Model.created_at,
                Model.registered_at,
                func.coalesce(counts.c.scores, 0).label("scores"),
            )
            .outerjoin(counts, counts.c.model_id == Model.id)
            .order_by(Model.registered_at.desc(), Model.id.desc())
        )
    )


def model_versions(connection: Connection, *, name: str) -> list[Row[Any]]:
    """Every registered version of the model ``name``, newest first."""
    return list(
        connection.execute(
            select(Model).where(Model.name == name).order_by(Model.registered_at.desc())
        )
    )


def registered_versions(connection: Connection, *, name: str, hint: str = "") -> list[Row[Any]]:
    """``model_versions``, or NotFoundError when nobody registered ``name``: a filter on a
    misspelt name must not read as an empty, clean result. ``hint`` ends the message."""
    versions = model_versions(connection, name=name)
    if not versions:
        raise NotFoundError(
            f"no model named {name!r} is registered{closest_model_name(connection, name)}{hint}"
        )
    return versions


def closest_model_name(connection: Connection, name: str) -> str:
    """'; did you mean 'pumps'?' for the registered name closest to ``name`` (letter case
    first: 'Pumps' for 'pumps'), or nothing."""
    import difflib

    names = list(connection.execute(select(Model.name).distinct()).scalars())
    same = [n for n in names if n.lower() == name.lower()]
    close = same or difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ========================================================================== runs
def start_run(
    connection: Connection,
    *,
    kind: str,
    source: str,
    model_id: int,
    threshold_value: float,
    threshold_id: int | None = None,
    source_sha256: str | None = None,
) -> int:
    """Record the start of a batch job or stream session; returns the run id."""
    result = connection.execute(
        insert(ScoringRun)
        .values(
            kind=kind,
            source=source,
            source_sha256=source_sha256,
            model_id=model_id,
            threshold_id=threshold_id,
            threshold_value=float(threshold_value),
            status="running",
            started_at=utc_now(),
            rows_read=0,
            rows_scored=0,
            rows_flagged=0,
            rows_rejected=0,
            rows_inserted=0,
        )
        .returning(ScoringRun.id)
    )
    return int(result.scalar_one())


def finish_run(
    connection: Connection,
    *,
    run_id: int,
    status: str,
    rows_read: int | None = None,
    error: str | None = None,
) -> None:
    """Mark a run ``succeeded`` or ``failed``; counts were kept up to date chunk by chunk."""
    values: dict[str, Any] = {"status": status, "finished_at": utc_now(), "error": error}
    if rows_read is not None:
        values["rows_read"] = int(rows_read)
    connection.execute(update(ScoringRun).where(ScoringRun.id == run_id).values(**values))


def report_run_metrics(
    connection: Connection,
    *,
    run_id: int,
    lag: int | None,
    latency_p50_ms: float | None,
    latency_p99_ms: float | None,
    records_per_s: float | None,
) -> None:
    """A stream run's latest lag, latency and rate (the scorer reports them periodically)."""
    connection.execute(
        update(ScoringRun)
        .where(ScoringRun.id == run_id)
        .values(
            lag=lag,
            latency_p50_ms=latency_p50_ms,
            latency_p99_ms=latency_p99_ms,
            records_per_s=records_per_s,
            metrics_at=utc_now(),
        )
    )


# A running stream session reports every kafka.metrics_interval_s (10 s by default): one that
# has not for this long has stopped without recording its end (killed, or its database was
# down when it stopped), or cannot reach the database.
SILENT_STREAM_S = 600.0


def stream_run_silence(row: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds since a ``running`` stream run last reported (or started, before its first
    report) when that is over :data:`SILENT_STREAM_S`; else None."""
    if row.get("kind") != "stream" or row.get("status") != "running":
        return None
    heard = row.get("metrics_at") or row.get("started_at")
    if heard is None:
        return None
    if heard.tzinfo is None:  # SQLite hands times back naive; they are stored in UTC
        heard = heard.replace(tzinfo=timezone.utc)
    silent = (now - heard).total_seconds()
    return silent if silent > SILENT_STREAM_S else None


def list_runs(
    connection: Connection,
    *,
    limit: int = 20,
    kind: str | None = None,
    status: str | None = None,
    model_name: str | None = None,
    run_id: int | None = None,
    before_id: int | None = None,
) -> list[Row[Any]]:
    """The latest runs, newest first (by id: the order they started in), with their model's
    name and version, counts, end, error and (a stream run's) last reported lag, latency and
    rate. ``before_id``: the runs before that one (the next page)."""
    stmt = (
        select(
            ScoringRun.id,
            ScoringRun.kind,
            ScoringRun.status,
            Model.name.label("model"),
            Model.version.label("model_version"),
            ScoringRun.source,
            ScoringRun.started_at,
            ScoringRun.finished_at,
            ScoringRun.rows_read,
            ScoringRun.rows_scored,
            ScoringRun.rows_flagged,
            ScoringRun.rows_rejected,
            ScoringRun.rows_inserted,
            ScoringRun.rows_pruned,
            ScoringRun.threshold_value,
            ScoringRun.threshold_id,
            ScoringRun.error,
            ScoringRun.lag,
            ScoringRun.latency_p50_ms,
            ScoringRun.latency_p99_ms,
            ScoringRun.records_per_s,
            ScoringRun.metrics_at,
        )
        .join(Model, Model.id == ScoringRun.model_id)
        .order_by(ScoringRun.id.desc())
        .limit(id_bound(limit))
    )
    if kind is not None:
        stmt = stmt.where(ScoringRun.kind == kind)
    if status is not None:
        stmt = stmt.where(ScoringRun.status == status)
    if model_name is not None:
        stmt = stmt.where(Model.name == model_name)
    if run_id is not None:
        stmt = stmt.where(int_id_is(ScoringRun.id, run_id))
    if before_id is not None:
        stmt = stmt.where(ScoringRun.id < int_id_bound(before_id))
    return list(connection.execute(stmt))


# ================================================================= the write path
@dataclass(frozen=True)
class WriteCounts:
    """What one ``write_results`` call did. ``*_inserted`` exclude rows already present."""

    scores_given: int
    scores_inserted: int
    flagged: int
    dead_letters_given: int
    dead_letters_inserted: int
    alerts_opened: int
    # What the alert rule did, for the alerts topic: an entry per alert opened, escalated or
    # resolved (``event``), with the alert's row as it stands after the write.
    alerts: tuple[dict[str, Any], ...] = ()
    alerts_escalated: int = 0
    alerts_resolved: int = 0
    # With ``outbox_model``: the rows the alert events were written to in ``alert_outbox``
    # (in the order they happened), which the caller publishes and then deletes.
    outbox: tuple[OutboxEvent, ...] = ()


def _alert_events(connection: Connection, changes: AlertChanges) -> list[dict[str, Any]]:
    """What the alert rule did in one write, for the alerts topic: one entry per alert opened,
    escalated or resolved (``event``), with the alert as it stands at the end of the write.

    In the order they happened to each entity: alert by alert (ids grow as alerts open, and an
    entity has one active alert at a time), each one's opened, escalated, resolved. Every
    opening first, then every resolution, told a consumer of the topic that an entity had a
    new alert open while its previous one was still open."""
    rank = {"opened": 0, "escalated": 1, "resolved": 2}
    happened = sorted(
        [
            *(("opened", i) for i in changes.opened),
            *(("escalated", i) for i in changes.escalated),
            *(("resolved", i) for i in changes.resolved),
        ],
        key=lambda event: (event[1], rank[event[0]]),
    )
    if not happened:
        return []
    details = {
        int(row["alert_id"]): row
        for row in fetch_alert_details(connection, alert_ids=sorted({i for _, i in happened}))
    }
    return [{"event": event, **details[i]} for event, i in happened if i in details]


def write_results(
    connection: Connection,
    *,
    run_id: int,
    model_id: int,
    records: pd.DataFrame,
    rejects: pd.DataFrame | None = None,
    threshold_id: int | None = None,
    alert_rule: AlertRule | None = None,
    scored_at: datetime | None = None,
    window_states: Mapping[str, bytes] | None = None,
    alert_details: bool = True,
    outbox_model: str | None = None,
) -> WriteCounts:
    """Write a batch of scored records, their rejects and the alerts they open, in ONE
    transaction; rows whose ``(source_key, model_id)`` is already stored are left as they are.

    ``alert_rule`` (default: an alert per run of crossings of an entity) judges the records
    this call inserts, from the entity's state as stored (``storage.alerting``): it opens,
    escalates and resolves alerts in the same transaction, so a replay opens nothing twice.

    ``records`` has one row per scored record with ``source_key``, ``score``,
    ``recon_error``, ``percentile``, ``is_anomaly`` and optionally ``entity_key``,
    ``event_time`` (datetimes; naive ones are taken as UTC), ``severity`` (``warning`` /
    ``critical`` / None; default ``warning`` for flagged records), ``top_features`` (JSON
    text, or lists of ``[column, share]``) and ``window_status`` (a windowed model's).
    ``rejects`` has ``source_key``, ``reason`` and
    ``raw`` (text). The run's counts grow in the same transaction. ``window_states`` (a windowed
    model's serialised state per entity after this batch) is stored in the same transaction.
    ``alert_details=False`` leaves ``WriteCounts.alerts`` empty (the alerts opened, escalated
    and resolved are still counted): a caller that publishes nothing need not read them back.
    ``outbox_model`` (a model name; with ``alert_details``): the alert events are also written to
    ``alert_outbox`` under that name, in the same transaction (``WriteCounts.outbox``), for a
    caller that publishes them at least once (``storage.outbox``); None writes none there.

    The call begins and commits its own transaction, so the rows are durable when it returns
    (a stream scorer commits its offsets after it). ``connection`` must have no transaction
    in progress: commit or roll back the caller's (a read also begins one) first.
    """
    _require_columns(records, SCORE_COLUMNS, "records")
    if rejects is not None:
        _require_columns(rejects, REJECT_COLUMNS, "rejects")
    now = scored_at or utc_now()
    with _gc_paused(), _transaction(connection):
        dialect = connection.dialect
        score_columns, flagged_keys = _score_rows(records, dialect, run_id, model_id, now)
        scores_inserted = _insert_rows(connection, "scores", score_columns, len(records))
        dead_inserted = 0
        n_rejects = 0 if rejects is None else len(rejects)
        if rejects is not None and n_rejects:
            dead_rows = _dead_letter_rows(rejects, dialect, run_id, model_id, now)
            dead_inserted = _insert_rows(connection, "dead_letters", dead_rows, n_rejects)
        changes = apply_alert_rule(
            connection,
            model_id=model_id,
            records=records,
            new=_inserted_mask(connection, records, scores_inserted, model_id, run_id, now),
            rule=alert_rule or AlertRule(),
            threshold_id=threshold_id,
            now=now,
            history_filter=not_written_by(run_id, now),
        )
        events = _alert_events(connection, changes) if alert_details else []
        outbox: list[OutboxEvent] = []
        if outbox_model is not None and events:
            outbox = add_events(
                connection, model_name=outbox_model, run_id=run_id, events=events, now=now
            )
        if window_states:
            save_window_states(connection, model_id=model_id, states=window_states, now=now)
        connection.execute(
            update(ScoringRun)
            .where(ScoringRun.id == run_id)
            .values(
                # Read grows with the rest: a stream run (or a job) killed part way said 0 rows
                # read beside thousands scored, its only end the final count written on close.
                rows_read=ScoringRun.rows_read + len(records) + n_rejects,
                rows_scored=ScoringRun.rows_scored + len(records),
                rows_flagged=ScoringRun.rows_flagged + len(flagged_keys),
                rows_rejected=ScoringRun.rows_rejected + n_rejects,
                rows_inserted=ScoringRun.rows_inserted + scores_inserted,
            )
        )
    return WriteCounts(
        scores_given=len(records),
        scores_inserted=scores_inserted,
        flagged=len(flagged_keys),
        dead_letters_given=n_rejects,
        dead_letters_inserted=dead_inserted,
        alerts_opened=len(changes.opened),
        alerts=tuple(events),
        alerts_escalated=len(changes.escalated),
        alerts_resolved=len(changes.resolved),
        outbox=tuple(outbox),
    )


def _inserted_mask(
    connection: Connection,
    records: pd.DataFrame,
    inserted: int,
    model_id: int,
    run_id: int,
    now: datetime,
) -> np.ndarray:
    """Which of ``records`` this write inserted: all or none in the usual cases (a new batch,
    a replayed one); else the keys now stored with this run and write time."""
    n = len(records)
    if inserted == 0:
        return np.zeros(n, dtype=bool)
    if inserted == n:  # a key twice in the batch is inserted once: n new rows, n unique keys
        return np.ones(n, dtype=bool)
    keys = records["source_key"].astype(str)
    mine: set[str] = set()
    query = select(Score.source_key).where(
        Score.model_id == model_id,
        Score.run_id == run_id,
        Score.scored_at == now,
        Score.source_key.in_(bindparam("keys", expanding=True)),
    )
    unique = keys.drop_duplicates().tolist()
    for start in range(0, len(unique), 500):
        mine.update(
            str(r[0]) for r in connection.execute(query, {"keys": unique[start : start + 500]})
        )
    return (keys.isin(mine) & ~keys.duplicated()).to_numpy()


def kept_with_other_flags(
    connection: Connection, *, model_id: int, run_id: int, records: pd.DataFrame
) -> int:
    """How many of ``records`` (``write_results``' frame) were already stored by an earlier run
    with another ``is_anomaly`` or severity than ``records`` give them now: stored rows are
    kept as they are (idempotent on their key), so a re-scored record keeps the flag of the
    threshold that was in force when it was first scored. Reads in its own transaction."""
    severity = records["severity"] if "severity" in records else pd.Series([None] * len(records))
    now_flags = dict(
        zip(
            records["source_key"].astype(str),
            zip(
                records["is_anomaly"].astype(bool),
                # None or NaN (a frame's missing value) for a normal record
                severity.astype(object).where(severity.notna(), None),
                strict=True,
            ),
            strict=True,
        )
    )
    keys = list(now_flags)
    differ = 0
    with connection.begin():
        for key, is_anomaly, stored_level in _stored_flags(connection, model_id, run_id, keys):
            flagged, level = now_flags[str(key)]
            if bool(is_anomaly) != flagged or (stored_level or None) != (level or None):
                differ += 1
    return differ


def _stored_flags(
    connection: Connection, model_id: int, run_id: int, keys: list[str]
) -> Iterator[tuple[str, bool, str | None]]:
    """(source key, is_anomaly, severity) of the stored rows of ``keys`` that another run
    than ``run_id`` wrote."""
    if connection.dialect.name == "postgresql":
        # One statement, planned for these keys each time (psycopg prepares a statement run
        # five times, and PostgreSQL's generic plan for it scans the model's rows).
        raw = connection.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor:
            for start in range(0, len(keys), 10_000):
                cursor.execute(
                    _kept_flags_statement(),
                    {"model_id": model_id, "run_id": run_id, "keys": keys[start : start + 10_000]},
                    prepare=False,
                )
                yield from cursor.fetchall()
        return
    query = select(Score.source_key, Score.is_anomaly, Score.severity).where(
        Score.model_id == model_id,
        Score.run_id != run_id,
        Score.source_key.in_(bindparam("keys", expanding=True)),
    )
    for start in range(0, len(keys), 500):
        for row in connection.execute(query, {"keys": keys[start : start + 500]}):
            yield str(row.source_key), bool(row.is_anomaly), row.severity


@lru_cache(maxsize=1)
def _kept_flags_statement() -> str:
    """One probe of the unique index (source_key, model_id) per key, as ``alerting``'s
    ``_score_ids_statement``: ``model_id = m AND source_key IN (...)``, planned from
    statistics older than the rows (a table filled since its last analysis, as a file scored
    again after an interrupted run finds it), read every row of the model through the entity
    index for each 500 keys: re-scoring 300,000 stored rows took over a minute, growing
    with the table."""
    return (
        "SELECT k.key, s.is_anomaly, s.severity FROM unnest(CAST(%(keys)s AS varchar[])) "
        "AS k(key) CROSS JOIN LATERAL (SELECT scores.is_anomaly, scores.severity FROM scores "
        "WHERE scores.source_key = k.key AND scores.model_id + 0 = %(model_id)s "
        "AND scores.run_id <> %(run_id)s OFFSET 0) AS s"
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A write builds a row tuple per record (100k in a batch job's chunk): each would count
    towards the cyclic garbage collector's next run, and a full collection walks every tracked
    object in the process (a long-running job's heap included) several times per chunk. Tuples
    of numbers and strings hold no cycles, so collection waits until the write returns."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    if connection.in_transaction():
        raise RuntimeError(
            "write_results needs a connection with no transaction in progress: it commits its "
            "own; commit or roll back the caller's first"
        )
    with connection.begin():
        yield


def _require_columns(frame: pd.DataFrame, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ConfigError(f"{what} lack the column(s) {missing}: expected {list(names)}")


def _insert_ignore(dialect: Dialect, table: Table | Any, keys: list[str]) -> Insert:
    if dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    if dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    raise ConfigError(f"unsupported database dialect {dialect.name!r}")


# A batch's rows as columns in ``_INSERT_COLUMNS`` order: numpy arrays or lists.
Columns = tuple["np.ndarray | list[Any]", ...]

_INSERT_COLUMNS = {
    "scores": (
        "source_key",
        "model_id",
        "run_id",
        "entity_key",
        "event_time",
        "scored_at",
        "score",
        "recon_error",
        "percentile",
        "is_anomaly",
        "severity",
        "top_features",
        "window_status",
    ),
    "dead_letters": ("source_key", "model_id", "run_id", "reason", "raw", "rejected_at"),
}


@lru_cache(maxsize=8)
def insert_statement(dialect_name: str, table_name: str) -> str:
    """``INSERT INTO scores|dead_letters (...) VALUES (...) ON CONFLICT (source_key, model_id)
    DO NOTHING`` compiled by SQLAlchemy with positional placeholders (``?`` for SQLite, ``%s``
    for psycopg), columns in ``_INSERT_COLUMNS`` order: what the SQLite path hands the
    driver's ``executemany`` (and what the benchmark's bare ``executemany`` runs)."""
    table = {"scores": Score.__table__, "dead_letters": DeadLetter.__table__}[table_name]
    columns = _INSERT_COLUMNS[table_name]
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

        compile_dialect: Dialect = psycopg_dialect(paramstyle="format")
    else:
        from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect

        compile_dialect = sqlite_dialect(paramstyle="qmark")
    stmt = _insert_ignore(compile_dialect, table, ["source_key", "model_id"])
    compiled = stmt.compile(dialect=compile_dialect, column_keys=list(columns))
    order = getattr(compiled, "positiontup", None)
    assert order is None or tuple(order) == columns, order
    return str(compiled)


def _insert_rows(connection: Connection, table_name: str, columns: Columns, n: int) -> int:
    """Insert rows given as columns (in ``_INSERT_COLUMNS`` order), skipping keys already
    stored; returns how many were new. SQLite: the driver's ``executemany`` over row tuples
    built as it takes them. PostgreSQL: the columns in PostgreSQL's binary ``COPY`` format,
    encoded from Arrow arrays by pgpq (compiled, column-wise; CSV by pyarrow where pgpq is
    not installed: ``_copy_format``), and ``COPY``-ed
    (``_copy_then_insert``; several times faster than ``executemany``, which pays a round of
    protocol messages per row; the binary format also spares the server parsing every number
    and time from text, about a quarter of its time per row against CSV)."""
    if not n:
        return 0
    if connection.dialect.name == "postgresql":
        return _copy_then_insert(connection, table_name, columns)
    raw = connection.connection.driver_connection  # sqlite3, inside this transaction
    assert raw is not None
    cursor = raw.cursor()
    lists = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns]
    try:
        # Tuples made as the driver takes them and freed once bound: a 100k-row write leaves
        # no 100k tuples for the garbage collector to walk.
        cursor.executemany(insert_statement("sqlite", table_name), zip(*lists, strict=True))
        return max(int(cursor.rowcount), 0)
    finally:
        cursor.close()


def _copy_then_insert(connection: Connection, table_name: str, columns: Columns) -> int:
    """PostgreSQL: ``COPY`` straight into the table inside a savepoint; only when a key is
    already stored (a replay after a crash or a rebalance: the unique index refuses the whole
    ``COPY``) roll back to the savepoint and go through the staging table and ``ON CONFLICT DO
    NOTHING``. A fresh batch, the usual case, so costs the server one pass over the rows
    instead of three (staging heap, read back, speculative insertion)."""
    import psycopg

    copy_format = _copy_format()
    direct_sql, create, copy_sql, insert_sql = _staging_statements(table_name, copy_format)
    payload = _copy_payload(table_name, columns, copy_format)
    raw = connection.connection.driver_connection  # psycopg, inside this transaction
    assert raw is not None
    with raw.cursor() as cursor:
        cursor.execute("SAVEPOINT anomaly_vae_copy")
        try:
            with cursor.copy(direct_sql) as copy:
                copy.write(payload)
        except psycopg.errors.UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT anomaly_vae_copy")
        else:
            cursor.execute("RELEASE SAVEPOINT anomaly_vae_copy")
            return len(columns[0])
        cursor.execute(create)
        with cursor.copy(copy_sql) as copy:
            copy.write(payload)
        cursor.execute(insert_sql)
        return max(int(cursor.rowcount), 0)


# Arrow types of the non-text columns, matching the tables' PostgreSQL types exactly (a binary
# ``COPY`` carries no type: int4 columns need 4-byte integers); the rest are text.
_ARROW_TYPES = {
    "model_id": "int32",
    "run_id": "int32",
    "score": "float64",
    "recon_error": "float64",
    "percentile": "float64",
    "is_anomaly": "bool",
}
_TIME_COLUMNS = frozenset({"event_time", "scored_at", "rejected_at"})
_JSONB_COLUMNS = frozenset({"top_features"})


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    if name in _TIME_COLUMNS:
        return pa.timestamp("us", tz="UTC")
    return pa.type_for_alias(_ARROW_TYPES.get(name, "string"))


@lru_cache(maxsize=1)
def _copy_format() -> str:
    """``binary`` where pgpq is installed (every platform it has wheels for: x86-64 Linux,
    macOS, Windows), else ``csv``: the same rows as CSV written by pyarrow, which the server
    parses (about a quarter more of its time per row)."""
    try:
        import pgpq  # noqa: F401
    except ImportError:
        return "csv"
    return "binary"


@lru_cache(maxsize=4)
def _binary_encoders(table_name: str) -> dict[str, Any]:
    """pgpq's encoder for each of a table's inserted columns: jsonb for the JSON columns
    (text that the server checks and stores as jsonb), the inferred one (int4, float8, bool,
    timestamptz, text) for the others."""
    from pgpq import ArrowToPostgresBinaryEncoder
    from pgpq.encoders import StringEncoderBuilder
    from pgpq.schema import Jsonb

    return {
        field.name: (
            StringEncoderBuilder.new_with_output(field, Jsonb())
            if field.name in _JSONB_COLUMNS
            else ArrowToPostgresBinaryEncoder.infer_encoder(field)
        )
        for field in _arrow_schema(table_name)
    }


@lru_cache(maxsize=4)
def _arrow_schema(table_name: str) -> Any:
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(name)) for name in _INSERT_COLUMNS[table_name]])


def _copy_payload(table_name: str, columns: Columns, copy_format: str) -> bytes:
    """The rows for ``COPY ... FROM STDIN``, from Arrow arrays. Times come as
    ``datetime64[us]`` arrays (UTC; NaT for none), texts as lists with None for null.
    ``binary``: PostgreSQL's binary format (header, rows, trailer), encoded by pgpq; floats
    go over as they are. ``csv``: every value quoted, nulls unquoted and empty (how
    PostgreSQL tells an empty text from a null), floats in their shortest round-trip form.
    Either way the stored values are exactly the scored ones."""
    import pyarrow as pa

    schema = _arrow_schema(table_name)
    frame = pa.Table.from_arrays(
        [
            pa.array(values, type=field.type, from_pandas=True)
            for field, values in zip(schema, columns, strict=True)
        ],
        schema=schema,
    )
    if copy_format == "csv":
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
        pacsv.write_csv(frame, sink, write_options=options)
        return sink.getvalue().to_pybytes()
    from pgpq import ArrowToPostgresBinaryEncoder

    encoder = ArrowToPostgresBinaryEncoder.new_with_encoders(schema, _binary_encoders(table_name))
    parts = [encoder.write_header()]
    parts.extend(encoder.write_batch(batch) for batch in frame.to_batches())
    parts.append(encoder.finish())
    return b"".join(parts)


@lru_cache(maxsize=8)
def _staging_statements(table_name: str, copy_format: str) -> tuple[str, str, str, str]:
    """The fixed statements of the PostgreSQL path: ``COPY`` into the table itself, and for a
    replay a per-session temporary table emptied at each commit, ``COPY`` into it, and the
    insert from it; no value is ever put in SQL text."""
    from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

    target = {"scores": Score.__table__, "dead_letters": DeadLetter.__table__}[table_name]
    columns = _INSERT_COLUMNS[table_name]
    names = ", ".join(columns)
    stage = f"anomaly_vae_incoming_{table_name}"
    create = (
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
        f"SELECT {names} FROM {table_name} WITH NO DATA"
    )
    staged = table(stage, *(column(name) for name in columns))
    dialect = psycopg_dialect()
    stmt = _insert_ignore(dialect, target, ["source_key", "model_id"]).from_select(
        list(columns), select(*staged.c)
    )
    copy = f"COPY {stage} ({names}) FROM STDIN (FORMAT {copy_format})"
    direct = f"COPY {table_name} ({names}) FROM STDIN (FORMAT {copy_format})"
    return direct, create, copy, str(stmt.compile(dialect=dialect))


def _score_rows(
    records: pd.DataFrame, dialect: Dialect, run_id: int, model_id: int, now: datetime
) -> tuple[Columns, list[str]]:
    n = len(records)
    keys = _texts(records["source_key"], "source_key")
    flags = records["is_anomaly"].to_numpy(dtype=bool, na_value=False)
    severity = (
        records["severity"].to_numpy(dtype=object, copy=True)
        if "severity" in records
        else np.full(n, None, dtype=object)
    )
    unset = pd.isna(severity)
    severity[unset] = None
    severity[unset & flags] = "warning"  # a flagged record without a severity is a warning
    columns: Columns = (
        keys,
        np.full(n, model_id, dtype=np.int64),
        np.full(n, run_id, dtype=np.int64),
        _optional_texts(records, "entity_key", n),
        _timestamps(records.get("event_time"), n, dialect),
        _now_column(now, n, dialect),
        records["score"].to_numpy(dtype=np.float64),
        records["recon_error"].to_numpy(dtype=np.float64),
        records["percentile"].to_numpy(dtype=np.float64),
        flags.astype(np.int64) if dialect.name == "sqlite" else flags,
        severity.tolist(),
        _json_texts(records.get("top_features"), n),
        _optional_texts(records, "window_status", n),
    )
    flagged = np.asarray(keys, dtype=object)[flags].tolist()
    return columns, flagged


def _dead_letter_rows(
    rejects: pd.DataFrame, dialect: Dialect, run_id: int, model_id: int, now: datetime
) -> Columns:
    n = len(rejects)
    return (
        _texts(rejects["source_key"], "source_key"),
        np.full(n, model_id, dtype=np.int64),
        np.full(n, run_id, dtype=np.int64),
        rejects["reason"].astype(str).tolist(),
        _optional_texts(rejects, "raw", n),
        _now_column(now, n, dialect),
    )


def _texts(series: pd.Series, name: str) -> list[str]:
    if pd.api.types.infer_dtype(series, skipna=False) == "string":  # the usual case, quickly
        return series.tolist()
    if series.isna().any():
        raise ConfigError(f"{name} must be set for every record ({int(series.isna().sum())} empty)")
    return series.astype(str).tolist()


def _optional_texts(frame: pd.DataFrame, name: str, n: int) -> list[Any]:
    if name not in frame:
        return [None] * n
    series = frame[name]
    # None, never NaN, for a missing value: pandas 3's where() would give NaN.
    texts = series.astype(str).to_numpy(dtype=object)
    texts[series.isna().to_numpy()] = None
    return texts.tolist()


_SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's own SQLite DATETIME format
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _timestamp_text(value: datetime) -> str:
    """One UTC time as ``_timestamps`` writes them for SQLite."""
    return value.astimezone(timezone.utc).strftime(_SQLITE_TIME_FORMAT)


def _now_column(now: datetime, n: int, dialect: Dialect) -> np.ndarray | list[Any]:
    """The write time of every row: text for SQLite, ``datetime64[us]`` for PostgreSQL."""
    if dialect.name == "sqlite":
        return [_timestamp_text(now)] * n
    micros = (now.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1)
    return np.full(n, micros, dtype=np.int64).view("datetime64[us]")


def _timestamps(series: pd.Series | None, n: int, dialect: Dialect) -> np.ndarray | list[Any]:
    """UTC timestamps as the database path takes them: for SQLite, text in SQLAlchemy's own
    SQLite format (``YYYY-MM-DD HH:MM:SS.ffffff``, so that text comparisons order them; None
    for none), formatted by numpy, not per row; for PostgreSQL, ``datetime64[us]`` (NaT for
    none) for the binary ``COPY``."""
    if series is None:
        if dialect.name == "sqlite":
            return [None] * n
        return np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        values = series
    else:  # naive datetimes are UTC; text in any ISO 8601 form; unparseable -> None
        values = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    missing = values.isna().to_numpy()
    micros = values.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").view(np.int64)
    micros = np.where(missing, 0, micros)
    _check_micros(micros)
    if dialect.name != "sqlite":
        out = micros.view("datetime64[us]")
        out[missing] = np.datetime64("NaT")
        return out
    texts: list[Any] = utc_timestamp_texts(micros).tolist()
    for index in np.flatnonzero(missing):
        texts[index] = None
    return texts


_MIN_MICROS = -62_135_596_800_000_000  # 0001-01-01
_MAX_MICROS = 253_402_300_799_999_999  # 9999-12-31 23:59:59.999999


def _check_micros(micros: np.ndarray) -> None:
    if len(micros) and (micros.min() < _MIN_MICROS or micros.max() > _MAX_MICROS):
        raise ConfigError("a timestamp is outside the years 1 to 9999")


def utc_timestamp_texts(micros: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` for int64 microseconds since 1970 (UTC), as a numpy
    string array, from byte tables gathered column-wise: several times quicker than
    ``strftime`` or ``np.datetime_as_string``, and this sits on the write path of every row."""
    micros = np.asarray(micros, dtype=np.int64)
    _check_micros(micros)
    days, rest = np.divmod(micros, 86_400_000_000)
    unique_days, which_day = np.unique(days, return_inverse=True)  # few dates per batch
    seconds, fraction = np.divmod(rest, 1_000_000)
    millis, micro = np.divmod(fraction, 1000)
    out = np.empty((len(micros), 26), dtype=np.uint8)
    out[:, 0:10] = _date_bytes(unique_days)[which_day]
    out[:, 10] = ord(" ")
    out[:, 11:19] = _time_of_day_bytes()[seconds]
    out[:, 19] = ord(".")
    out[:, 20:23] = _three_digit_bytes()[millis]
    out[:, 23:26] = _three_digit_bytes()[micro]
    return out.view("S26").ravel().astype("U26")


def _date_bytes(days: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` as (n, 10) bytes for days since 1970-01-01 (H. Hinnant's civil-from-days,
    proleptic Gregorian)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    out = np.empty((len(days), 10), dtype=np.uint8)
    for start, value, width in ((0, year, 4), (5, month, 2), (8, day, 2)):
        for k in range(width):
            out[:, start + width - 1 - k] = value // 10**k % 10 + ord("0")
    out[:, 4] = out[:, 7] = ord("-")
    return out


@lru_cache(maxsize=1)
def _time_of_day_bytes() -> np.ndarray:
    """``HH:MM:SS`` for each second of a day: an (86400, 8) byte table, built with numpy (a
    Python loop over the 86,400 seconds took 0.1 s of the first write of every scorer)."""
    seconds = np.arange(86_400)
    out = np.empty((86_400, 8), dtype=np.uint8)
    for start, value in ((0, seconds // 3600), (3, seconds // 60 % 60), (6, seconds % 60)):
        out[:, start] = value // 10 + ord("0")
        out[:, start + 1] = value % 10 + ord("0")
    out[:, 2] = out[:, 5] = ord(":")
    return out


@lru_cache(maxsize=1)
def _three_digit_bytes() -> np.ndarray:
    text = "".join(f"{i:03d}" for i in range(1000))
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).reshape(1000, 3)


def _json_texts(series: pd.Series | None, n: int) -> list[Any]:
    if series is None:
        return [None] * n
    values = series.tolist()
    kind = pd.api.types.infer_dtype(series, skipna=False)
    if kind == "string":  # JSON text already, nothing missing
        return values
    return [
        value
        if isinstance(value, str)
        else None
        if value is None or (isinstance(value, float) and value != value)  # None or NaN
        else json.dumps(value, separators=(",", ":"))
        for value in values
    ]


# ====================================================================== queries
def check_period(since: datetime | None, until: datetime | None) -> None:
    """A ConfigError (a 400 in the API, one line in the CLI) when ``until`` is not after
    ``since``: such a period holds nothing, and an empty answer read as "nothing happened"."""
    if since is None or until is None:
        return
    try:
        empty = until <= since
    except TypeError:  # one with a time zone, one without: the query decides
        return
    if empty:
        raise ConfigError(
            f"until ({until.isoformat()}) is not after since ({since.isoformat()}): the "
            "period holds nothing; give the earlier time as since"
        )


def entities_in_another_case(
    connection: Connection, entity: str, *, alerts: bool = False, limit: int = 3
) -> list[str]:
    """The entity keys of the flagged records (``alerts``: of the alerts) that are ``entity``
    but for its case or surrounding spaces ('P4' for 'p4', 'P4 ' for 'P4'): what a filter that
    matches keys exactly and found nothing says the user may have meant. Flagged records only:
    the partial index holds them, not the unflagged majority."""
    column = Alert.entity_key if alerts else Score.entity_key
    stmt = (
        select(column)
        .where(func.lower(func.trim(column)) == entity.strip().lower(), column != entity)
        .distinct()
        .order_by(column)
        .limit(limit)
    )
    if not alerts:
        stmt = stmt.where(Score.is_anomaly.is_(True))
    return [str(key) for key in connection.scalars(stmt)]


def list_anomalies(
    connection: Connection,
    *,
    model_name: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    entity: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[Row[Any]]:
    """Flagged records, newest first: when (event time, else scoring time), which model,
    entity and key, score, percentile, severity, top features and the alert's state.

    ``since`` compares with the event time where there is one, else the scoring time.
    ``before_id`` (the ``id`` of the last row of a page) gives the rows after it in this
    order: the next page. ``until`` set to the last time seen would skip the rest of the rows
    of that time, and a batch job's records without event times share one scoring time."""
    check_period(since, until)
    when = func.coalesce(Score.event_time, Score.scored_at)
    stmt = (
        select(
            Score.id,
            when.label("time"),
            Model.name.label("model"),
            Model.version.label("model_version"),
            Score.entity_key,
            Score.source_key,
            Score.score,
            Score.percentile,
            Score.severity,
            Score.top_features,
            Alert.state.label("alert_state"),
            Score.scored_at,
        )
        .join(Model, Model.id == Score.model_id)
        .outerjoin(Alert, Alert.score_id == Score.id)
        .where(Score.is_anomaly.is_(True))
        .order_by(when.desc(), Score.id.desc())
        .limit(id_bound(limit))
    )
    if model_name is not None:
        stmt = stmt.where(Model.name == model_name)
    if since is not None:
        stmt = stmt.where(when >= since)
    if until is not None:
        stmt = stmt.where(when < until)
    if entity is not None:
        stmt = stmt.where(Score.entity_key == entity)
    if before_id is not None:
        require_page_cursor(connection, Score.id, before_id, "flagged record")
        before_id = id_bound(before_id)
        last = aliased(Score)
        last_when = (
            select(func.coalesce(last.event_time, last.scored_at))
            .where(last.id == before_id)
            .scalar_subquery()
        )
        stmt = stmt.where(or_(when < last_when, and_(when == last_when, Score.id < before_id)))
    return list(connection.execute(stmt))


def count_rows(connection: Connection, *, table: str) -> int:
    """Rows in one of the tables (for summaries and tests)."""
    tables = {t.name: t for t in Model.metadata.sorted_tables}
    if table not in tables:
        raise ConfigError(f"no table {table!r}; tables: {sorted(tables)}")
    return int(connection.scalar(select(func.count()).select_from(tables[table])) or 0)
