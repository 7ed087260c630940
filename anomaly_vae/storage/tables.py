"""The results database: SQLAlchemy 2.0 typed tables.

Readable by people with plain ``psql`` or ``sqlite3``: full column names, timestamps with time
zone (stored in UTC; SQLite keeps them as ``YYYY-MM-DD HH:MM:SS.ffffff`` text in UTC), JSON where
the value is JSON (``jsonb`` on PostgreSQL). Constraint names follow ``NAMING_CONVENTION`` so that
migrations can name what they change on every dialect.

Tables:

- ``models``: registered model versions (one row per content hash).
- ``thresholds``: versioned per model name; the newest version is the one in force.
- ``scoring_runs``: one per batch job or stream session, with its counts and status.
- ``scores``: one row per scored record, unique on (source_key, model_id).
- ``alerts``: opened by the alert rule in force (k of the last n records of an entity crossed the
  threshold, outside the cool-down); linked to the score row that opened it.
- ``dead_letters``: every rejected record with its raw content and reason, unique on
  (source_key, model_id).
- ``window_states``: a windowed model's recent records per entity (the stream scorer's state).
- ``alert_outbox``: alert events written with their batch, waiting to be published to the alerts
  topic (deleted once the broker has them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON on SQLite (text), jsonb on PostgreSQL (indexable, compact).
JsonType = JSON().with_variant(JSONB(), "postgresql")
# 64-bit keys on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit (and the rowid).
BigIdType = BigInteger().with_variant(Integer(), "sqlite")

ALERT_STATES = ("open", "acknowledged", "resolved")
RUN_STATUSES = ("running", "succeeded", "failed")
RUN_KINDS = ("batch", "stream")
SEVERITIES = ("warning", "critical")


class UtcDateTime(TypeDecorator[datetime]):
    """``timestamp with time zone``, always UTC. SQLite has no time zones: values are stored as
    UTC text and come back as aware UTC datetimes, as they do from PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a time zone (UTC)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JsonType,
    }


class Model(Base):
    """A registered model version. ``version`` is the first 12 hex digits of ``content_hash``
    (what ``anomaly-vae info`` shows); scoring with a model directory registers it."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str | None] = mapped_column(Text)
    score_kind: Mapped[str] = mapped_column(String(32))
    feature_schema: Mapped[dict[str, Any]] = mapped_column(JsonType)
    training_summary: Mapped[dict[str, Any]] = mapped_column(JsonType)
    calibration: Mapped[dict[str, Any]] = mapped_column(JsonType)
    package_version: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime | None]
    registered_at: Mapped[datetime]


class Threshold(Base):
    """One version of a model name's alert threshold (``thresholds.Thresholds``). The newest
    version is in force; older versions stay as history. A score above ``warning`` flags the
    record (severity ``warning``); above ``critical``, when set, its severity is ``critical``.
    ``policy`` is one of ``thresholds.PolicyKind`` (value, quantile, false_alarm_rate,
    contamination, evt, labels) with its settings in ``parameters``."""

    __tablename__ = "thresholds"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(40))
    warning: Mapped[float] = mapped_column(Float)
    critical: Mapped[float | None] = mapped_column(Float)
    parameters: Mapped[dict[str, Any]] = mapped_column(JsonType)
    # The alert rule of this version (``thresholds.AlertRule.to_dict()``); null: the default.
    alert_rule: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class ScoringRun(Base):
    """One batch job or stream session: what was scored, with which model, and how it ended.
    Counts grow chunk by chunk in the same transactions as the rows, so a run killed part way
    still says what it wrote (its status stays ``running``)."""

    __tablename__ = "scoring_runs"
    __table_args__ = (
        CheckConstraint(_in("kind", RUN_KINDS), name="kind"),
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(Text)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    threshold_id: Mapped[int | None] = mapped_column(ForeignKey("thresholds.id"))
    threshold_value: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_scored: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_flagged: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    rows_inserted: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of the score rows this run inserted, how many ``db prune`` deleted since: a model's
    # stored rows are the sum of rows_inserted - rows_pruned over its runs (no count of scores).
    rows_pruned: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    # What only the scorer process knows, reported every metrics interval by a stream run (so
    # that the API process can serve it): consumer lag, produce-to-row latency, rate.
    lag: Mapped[int | None] = mapped_column(BigInteger)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    records_per_s: Mapped[float | None] = mapped_column(Float)
    metrics_at: Mapped[datetime | None]


class Score(Base):
    """One scored record. ``source_key`` is stable across re-runs (``file-sha256:<hex>:<row>``
    for CSV exports, ``topic:partition:offset`` for Kafka), so writes are idempotent.
    ``score``: higher means more anomalous. ``top_features``: a JSON list of
    ``[column, share]`` pairs, the columns that lift the score above its usual level."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("source_key", "model_id"),
        # Flagged records by model and time: a partial index, which the unflagged majority of
        # the records does not cost.
        Index(
            "ix_scores_flagged",
            "model_id",
            "scored_at",
            postgresql_where=text("is_anomaly"),
            sqlite_where=text("is_anomaly"),
        ),
        # An entity's latest records, which the alert rule reads on every write.
        Index(None, "model_id", "entity_key", "event_time", "id"),
    )

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    source_key: Mapped[str] = mapped_column(String(300))
    # models.id and scoring_runs.id, deliberately not foreign keys: PostgreSQL checks a foreign
    # key with one query per inserted row, which was 40 % of the server's time per score row.
    # The repository, the only writer, takes both ids from rows it has just written.
    model_id: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(Integer)  # no index: nothing reads scores by run
    entity_key: Mapped[str | None] = mapped_column(String(200))
    event_time: Mapped[datetime | None]
    scored_at: Mapped[datetime]
    score: Mapped[float] = mapped_column(Float)
    recon_error: Mapped[float] = mapped_column(Float)
    percentile: Mapped[float] = mapped_column(Float)
    is_anomaly: Mapped[bool]
    severity: Mapped[str | None] = mapped_column(String(16))
    top_features: Mapped[list[Any] | None] = mapped_column(JsonType)
    # A windowed model's record: ok, warming_up (not yet a full window), late, replayed.
    window_status: Mapped[str | None] = mapped_column(String(16))


class Alert(Base):
    """An alert on an entity, opened by the score row that completed the alert rule (``rule``:
    k of the entity's last n records crossed the threshold in force, outside the cool-down).
    State moves open -> acknowledged -> resolved (by a person, or by the rule after enough
    normal records: ``resolved_by`` is then ``alert-rule`` and ``resolved_score_id`` the record);
    a critical record escalates an open warning (``escalated_at``, ``escalated_score_id``);
    ``onset_score_id`` is the record where the anomaly began (the rule's first crossing)."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(_in("state", ALERT_STATES), name="state"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        Index(None, "state", "opened_at"),
        # An entity's newest alert, which the alert rule reads on every write.
        Index(None, "model_id", "entity_key", "id"),
    )

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id", ondelete="CASCADE"), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    threshold_id: Mapped[int | None] = mapped_column(ForeignKey("thresholds.id"))
    entity_key: Mapped[str | None] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    rule: Mapped[dict[str, Any] | None] = mapped_column(JsonType)  # the AlertRule, when one
    opened_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    escalated_at: Mapped[datetime | None]
    escalated_score_id: Mapped[int | None] = mapped_column(
        ForeignKey("scores.id", ondelete="SET NULL")
    )
    resolved_score_id: Mapped[int | None] = mapped_column(
        ForeignKey("scores.id", ondelete="SET NULL")
    )
    # Where the anomaly began: the first record that crossed among the n that opened the
    # alert (the rule confirmed it at ``score_id``); the same record when k = 1.
    onset_score_id: Mapped[int | None] = mapped_column(ForeignKey("scores.id", ondelete="SET NULL"))


class DeadLetter(Base):
    """A record that could not be scored: its raw content (JSON text of the values, or the
    message as received), why, and the same kind of ``source_key`` as a score."""

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("source_key", "model_id"),)

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    source_key: Mapped[str] = mapped_column(String(300))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("scoring_runs.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    rejected_at: Mapped[datetime]


class WindowStateRow(Base):
    """A windowed model's state for one entity (``windows.entity_to_bytes``): its recent encoded
    records, newest event time and last applied offsets. The stream scorer writes it in the
    transaction that writes the scores of the records that changed it, before committing their
    offsets, and reads it back for an entity it has not seen (after a restart or a rebalance)."""

    __tablename__ = "window_states"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    entity_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]


class AlertOutboxRow(Base):
    """An alert event (opened, escalated, resolved) of a stream scorer with an alerts topic,
    written in the transaction that changed the alert and deleted once the broker has
    acknowledged its message: what makes the topic at least once. ``payload`` is the message's
    JSON text as published, ``event_id`` (a UUID, also in the payload) included, so that a
    consumer can drop a message sent twice; ``message_key`` the Kafka key (the entity, else
    the model's name). Rows are published oldest first (by ``id``) per model name, so a new
    version of a model publishes what a killed scorer of the previous one left."""

    __tablename__ = "alert_outbox"
    __table_args__ = (Index(None, "model_name", "id"),)

    id: Mapped[int] = mapped_column(BigIdType, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36))
    model_name: Mapped[str] = mapped_column(String(200))
    # scoring_runs.id of the scorer that wrote it (plain id, as scores.run_id: diagnosis only).
    run_id: Mapped[int] = mapped_column(Integer)
    message_key: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(index=True)
