"""Thresholds and alerts on stored data, for the CLI and the HTTP API alike.

* policies computed from a registered model version: quantile, false-alarm rate and EVT from its
  held-out normal scores (stored with the ``models`` row), contamination from its stored scores;
* new threshold versions (who, why, when; what is not given is carried over from the version in
  force; stored scores and past alerts are never touched);
* previews: what a proposed threshold and alert rule would have done to the stored scores, from
  the state the entities were in at ``since``;
* tuning from labels (per-record labels or incident windows, see :func:`read_labels`);
* operators' alert actions: acknowledge, resolve.

Functions are keyword-only on an explicit ``Connection``; policies themselves are the pure
functions of ``anomaly_vae.thresholds``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import aliased

from anomaly_vae.config import AlertsConfig, NoBooleanNumbers, format_validation_error
from anomaly_vae.errors import ConfigError, InputFileError, NotFoundError
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.alerting import (
    ACTIVE_STATES,
    NOTE_SEPARATOR,
    seed_states,
    seed_tracker,
)
from anomaly_vae.storage.tables import Alert, Model, Score, ScoringRun
from anomaly_vae.thresholds import (
    AlertRule,
    AlertTracker,
    Preview,
    Thresholds,
    contamination_threshold,
    evt_threshold,
    false_alarm_threshold,
    preview,
    quantile_threshold,
    tune_from_labels,
)

FROM_NORMAL_SCORES = "held-out normal scores"
FROM_STORED_SCORES = "stored scores"


# ==================================================================== policy specs
def as_utc(value: datetime) -> datetime:
    """A time without a time zone is UTC (as ``--since`` on the command line). One that is
    out of range once in UTC (0001-01-01T00:00+01:00) is refused here: the database driver
    raised OverflowError, which the API answered as the database being unavailable (503)."""
    value = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    try:
        value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value


_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def time_not_number(value: object) -> object:
    """A number where a time belongs is read as ISO 8601 text, as ``--since`` reads it
    (``20261128``: the basic form of 2026-11-28), or refused. Pydantic took it as Unix
    seconds (or milliseconds), so ``since=20261128`` was 1970-08-23, every stored row, and
    ``since=-1`` 1969: a 200 that looked filtered."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return value
    text = str(value).strip()
    if not _PLAIN_NUMBER.fullmatch(text):
        return value
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is a number, not a time: give an ISO 8601 date or time "
            "(2026-11-28, 2026-11-28T08:00:00+02:00)"
        ) from None


UtcDatetime = Annotated[datetime, BeforeValidator(time_not_number), AfterValidator(as_utc)]
"""A datetime field or query parameter: a date or a time without a time zone is UTC; a
number is not a time (Unix seconds), unless it is an ISO 8601 basic date (20261128)."""


class _Spec(NoBooleanNumbers):
    model_config = ConfigDict(extra="forbid")


class ValuePolicy(_Spec):
    """A fixed threshold."""

    policy: Literal["value"] = "value"
    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class QuantilePolicy(_Spec):
    """This quantile of the model's held-out normal scores."""

    policy: Literal["quantile"] = "quantile"
    quantile: float = Field(gt=0.0, lt=1.0)


class FalseAlarmRatePolicy(_Spec):
    """Crossed by about this share of normal records (the 1 - rate quantile)."""

    policy: Literal["false_alarm_rate"] = "false_alarm_rate"
    rate: float = Field(gt=0.0, lt=1.0)


class ContaminationPolicy(_Spec):
    """Crossed by this share of the model's stored scores (since ``since``, when given)."""

    policy: Literal["contamination"] = "contamination"
    contamination: float = Field(gt=0.0, lt=0.5)
    since: UtcDatetime | None = None


class EvtPolicy(_Spec):
    """Peaks over threshold (SPOT): the score normal records exceed with probability ``risk``."""

    policy: Literal["evt"] = "evt"
    risk: float = Field(gt=0.0, lt=1.0)
    initial_quantile: float = Field(default=0.98, ge=0.5, lt=1.0)


PolicySpec = Annotated[
    ValuePolicy | QuantilePolicy | FalseAlarmRatePolicy | ContaminationPolicy | EvtPolicy,
    Field(discriminator="policy"),
]
POLICY_SPEC: TypeAdapter[PolicySpec] = TypeAdapter(PolicySpec)


def policy_spec(data: dict[str, Any]) -> PolicySpec:
    """A policy spec from plain values ({'policy': 'quantile', 'quantile': 0.999}, ...)."""
    try:
        return POLICY_SPEC.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"threshold policy: {format_validation_error(exc)}") from None


# ======================================================================= models
def model_in_use(connection: Connection, *, name: str) -> Row[Any]:
    """The version of the model ``name`` in use: the one that started the newest scoring run
    (batch job or stream session), else the newest registered. After a rollback (an older
    version scored again) it is that older version, whose calibrated threshold is in force:
    policies compute from its held-out normal scores, previews and tuning replay its scores."""
    row: Row[Any] | None = connection.execute(
        select(Model)
        .join(ScoringRun, ScoringRun.model_id == Model.id)
        .where(Model.name == name)
        .order_by(ScoringRun.started_at.desc(), ScoringRun.id.desc())
        .limit(1)
    ).first()
    if row is None:  # registered without a run (not by this package): the newest registered
        row = connection.execute(
            select(Model)
            .where(Model.name == name)
            .order_by(Model.registered_at.desc(), Model.id.desc())
            .limit(1)
        ).first()
    if row is None:
        raise NotFoundError(
            f"no model named {name!r} is registered{repo.closest_model_name(connection, name)} "
            "(a model is registered when it first scores into this database): 'anomaly-vae "
            "models list' or GET /models lists them"
        )
    return row


@dataclass(frozen=True)
class ComputedThreshold:
    value: float
    policy: str
    parameters: dict[str, Any]


def compute_threshold(
    connection: Connection, *, model_id: int, spec: PolicySpec
) -> ComputedThreshold:
    """The threshold ``spec`` gives for a registered model version."""
    model = connection.execute(select(Model.name, Model.version).where(Model.id == model_id)).one()
    base = {"model_version": model.version}
    if isinstance(spec, ValuePolicy):
        # The version in use when the value was chosen (by looking at its scores): a retrained
        # version scores on a scale of its own, and scoring under a value set for another
        # version is warned about as for a computed level (sink.note_other_version).
        return ComputedThreshold(spec.value, "value", {**base, "value": spec.value})
    if isinstance(spec, ContaminationPolicy):
        stored = stored_scores(connection, model_id=model_id, since=spec.since)
        # A windowed model's warming-up and late records are never flagged: not in the top C.
        scores = stored["score"][stored["can_flag"]]
        if len(scores) < 100:
            raise ConfigError(
                f"contamination needs stored scores of model {model.name} version "
                f"{model.version}: only {len(scores)} found"
                + (f" since {spec.since.isoformat()}" if spec.since else "")
                + "; score more data first, or use another policy"
            )
        value = contamination_threshold(scores.to_numpy(), spec.contamination)
        return ComputedThreshold(
            value,
            "contamination",
            {
                **base,
                "contamination": spec.contamination,
                "since": spec.since.isoformat() if spec.since else None,
                "scores": len(scores),
                "from": FROM_STORED_SCORES,
            },
        )
    normal = repo.calibration_scores(connection, model_id=model_id)
    params = {**base, "normal_scores": len(normal), "from": FROM_NORMAL_SCORES}
    if isinstance(spec, QuantilePolicy):
        value = quantile_threshold(normal, spec.quantile)
        return ComputedThreshold(value, "quantile", {**params, "quantile": spec.quantile})
    if isinstance(spec, FalseAlarmRatePolicy):
        value = false_alarm_threshold(normal, spec.rate)
        return ComputedThreshold(value, "false_alarm_rate", {**params, "rate": spec.rate})
    fit = evt_threshold(normal, spec.risk, initial_quantile=spec.initial_quantile)
    return ComputedThreshold(
        fit.threshold,
        "evt",
        {
            **params,
            "risk": spec.risk,
            "initial_quantile": spec.initial_quantile,
            "initial_threshold": fit.initial_threshold,
            "shape": fit.shape,
            "scale": fit.scale,
            "peaks": fit.n_peaks,
        },
    )


# ============================================================ threshold versions
@dataclass(frozen=True)
class ThresholdChange:
    """What a new version changes; None leaves that part as it is in force.

    ``alert_rule`` replaces the rule in force; ``alert_rule_changes`` changes only the settings
    it names (``k``, ``n``, ``cooldown_s``, ``resolve_after``) and keeps the others."""

    warning: PolicySpec | ComputedThreshold | None = None
    critical: PolicySpec | None = None
    clear_critical: bool = False
    alert_rule: AlertRule | None = None
    alert_rule_changes: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _Version:
    """The levels, policy, parameters and rule a change gives against the version in force."""

    policy: str
    warning: float
    critical: float | None
    parameters: dict[str, Any]
    rule: AlertRule


def _apply_change(
    connection: Connection, model: Row[Any], current: Row[Any] | None, change: ThresholdChange
) -> _Version:
    if change.warning is not None:
        warning = _computed(connection, model.id, change.warning)
        policy, value = warning.policy, warning.value
        parameters = dict(warning.parameters)
    elif current is not None:
        policy, value = current.policy, float(current.warning)
        # Carried over; no longer "from model calibration": an operator's version is never
        # replaced by a newer model version's calibration.
        parameters = {
            k: v
            for k, v in current.parameters.items()
            if k != "critical" and not (k == "from" and v == repo.FROM_CALIBRATION)
        }
    else:
        raise ConfigError(f"model {model.name!r} has no threshold yet: give a warning policy")
    critical: float | None = None
    if change.critical is not None:
        computed = compute_threshold(connection, model_id=model.id, spec=change.critical)
        critical = computed.value
        parameters["critical"] = {"policy": computed.policy, **computed.parameters}
    elif not change.clear_critical and current is not None and current.critical is not None:
        critical = float(current.critical)
        if isinstance(current.parameters.get("critical"), dict):
            parameters["critical"] = current.parameters["critical"]
    if critical is not None and critical < value:
        raise ConfigError(
            f"the critical threshold ({critical:.6g}) would be below the warning threshold "
            f"({value:.6g}): give a higher critical level, or none (--no-critical on the "
            'command line, "critical": null in the API)'
        )
    rule = change.alert_rule
    if rule is None:
        rule = AlertRule.from_dict(current.alert_rule if current is not None else None)
        if change.alert_rule_changes:
            rule = alert_rule_of({**rule.to_dict(), **change.alert_rule_changes})
    return _Version(policy, value, critical, parameters, rule)


def _check_reason_and_author(reason: str, created_by: str) -> None:
    """A threshold change needs a reason and an author, neither blank."""
    if not reason or not reason.strip():
        raise ConfigError(
            'a threshold change needs a reason (--reason, "reason" in the API): say why, for '
            "the history"
        )
    if not created_by or not created_by.strip():
        raise ConfigError(
            'a threshold change needs who made it (--by, "created_by" in the API), not a blank'
        )
    _check_name_length(created_by, '--by, "created_by" in the API')


# The longest name of who made a change or took an action (String(200) in storage.tables):
# a longer --by was stored whole by SQLite and refused by PostgreSQL as "value too long for
# type character varying(200)", naming no option.
NAME_MAX_CHARS = 200


def _check_name_length(name: str, where: str) -> None:
    if len(name) > NAME_MAX_CHARS:
        raise ConfigError(
            f"who made it ({where}) is {len(name):,} characters long: at most {NAME_MAX_CHARS}"
        )


@dataclass(frozen=True)
class ThresholdWrite:
    """What a change did: ``row`` is the version in force after it; ``created`` is False when
    the version in force already had the settings asked for (a retried request, a script run
    twice), so no version was added."""

    row: Row[Any]
    created: bool


# Parameters that say where a version came from, not what it does: a change that differs from
# the version in force only in them changes nothing (a rule restated on a calibrated threshold,
# a rollback to the levels already in force).
_PROVENANCE = ("rolled_back_to",)


def _settings(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        k: v
        for k, v in (parameters or {}).items()
        if k not in _PROVENANCE and not (k == "from" and v == repo.FROM_CALIBRATION)
    }


def _in_force_already(
    current: Row[Any] | None,
    *,
    policy: str,
    warning: float,
    critical: float | None,
    parameters: Mapping[str, Any],
    rule: AlertRule,
) -> bool:
    """The version in force has these levels, policy, parameters and alert rule."""
    if current is None:
        return False
    return (
        current.policy == policy
        and float(current.warning) == float(warning)
        and (None if current.critical is None else float(current.critical))
        == (None if critical is None else float(critical))
        and _settings(current.parameters) == _settings(parameters)
        and AlertRule.from_dict(current.alert_rule).to_dict() == rule.to_dict()
    )


def set_threshold(
    connection: Connection,
    *,
    model_name: str,
    change: ThresholdChange,
    created_by: str,
    reason: str,
) -> ThresholdWrite:
    """Append a threshold version for ``model_name`` (in force from now on; live scorers pick
    it up within ``kafka.threshold_refresh_s``), unless the version in force already has the
    settings it gives (then nothing is added: ``created`` False). Runs in the caller's
    transaction."""
    _check_reason_and_author(reason, created_by)
    model = model_in_use(connection, name=model_name)
    repo.lock_thresholds(connection, model_name=model_name)  # `current` stays the one in force
    current = repo.threshold_in_force(connection, model_name=model_name)
    version = _apply_change(connection, model, current, change)
    if current is not None and _in_force_already(
        current,
        policy=version.policy,
        warning=version.warning,
        critical=version.critical,
        parameters=version.parameters,
        rule=version.rule,
    ):
        return ThresholdWrite(current, created=False)
    row = repo.add_threshold(
        connection,
        model_name=model_name,
        policy=version.policy,
        warning=version.warning,
        critical=version.critical,
        parameters=version.parameters,
        alert_rule=version.rule.to_dict(),
        created_by=created_by.strip(),
        reason=reason.strip(),
    )
    return ThresholdWrite(row, created=True)


def rollback_threshold(
    connection: Connection,
    *,
    model_name: str,
    to_version: int,
    created_by: str,
    reason: str,
) -> ThresholdWrite:
    """Put an earlier threshold version back in force: a new version with its policy, levels
    (as they were, not recomputed), parameters and alert rule, ``rolled_back_to`` naming it.
    It is an operator's version (a newer model version's calibration does not replace it).
    When the version in force already has those settings (it is that version, or a rollback
    to it, a request retried), nothing is added (``created`` False). Runs in the caller's
    transaction."""
    _check_reason_and_author(reason, created_by)
    repo.registered_versions(connection, name=model_name, hint=": see 'anomaly-vae models list'")
    repo.lock_thresholds(connection, model_name=model_name)
    versions = {int(r.version): r for r in repo.list_thresholds(connection, model_name=model_name)}
    if to_version not in versions:
        known = f"v{min(versions)} to v{max(versions)}" if versions else "none"
        raise NotFoundError(
            f"model {model_name!r} has no threshold v{to_version} (stored: {known}): see "
            f"'anomaly-vae thresholds history {model_name}'"
        )
    old = versions[to_version]
    current = versions[max(versions)]
    parameters = {
        k: v for k, v in old.parameters.items() if not (k == "from" and v == repo.FROM_CALIBRATION)
    }
    parameters["rolled_back_to"] = to_version
    critical = None if old.critical is None else float(old.critical)
    rule = AlertRule.from_dict(old.alert_rule)
    if _in_force_already(
        current,
        policy=old.policy,
        warning=float(old.warning),
        critical=critical,
        parameters=parameters,
        rule=rule,
    ):
        return ThresholdWrite(current, created=False)
    row = repo.add_threshold(
        connection,
        model_name=model_name,
        policy=old.policy,
        warning=float(old.warning),
        critical=critical,
        parameters=parameters,
        alert_rule=rule.to_dict(),
        created_by=created_by.strip(),
        reason=reason.strip(),
    )
    return ThresholdWrite(row, created=True)


def _computed(
    connection: Connection, model_id: int, spec: PolicySpec | ComputedThreshold
) -> ComputedThreshold:
    if isinstance(spec, ComputedThreshold):
        return spec
    return compute_threshold(connection, model_id=model_id, spec=spec)


def alert_rule_of(data: dict[str, Any] | AlertsConfig | None) -> AlertRule:
    """An ``AlertRule`` from the pipeline / API form, validated."""
    if data is None:
        return AlertRule()
    if isinstance(data, AlertsConfig):
        return AlertRule(**data.model_dump())
    try:
        return AlertRule(**AlertsConfig.model_validate(data).model_dump())
    except ValidationError as exc:
        raise ConfigError(f"alert rule: {format_validation_error(exc)}") from None


# ================================================================ stored scores
# The most stored scores one call of stored_scores reads (None: no limit), set around a
# request by replay_limit: the API's previews need no token, and a period of a hundred million
# scores would otherwise be read into the server's memory whole.
_REPLAY_LIMIT: ContextVar[int | None] = ContextVar("replay_limit", default=None)


@contextmanager
def replay_limit(limit: int | None) -> Iterator[None]:
    """Within it, a preview, a tuning or a contamination threshold that would read more than
    ``limit`` stored scores is refused with a ConfigError that says so (and how to narrow)."""
    token = _REPLAY_LIMIT.set(limit)
    try:
        yield
    finally:
        _REPLAY_LIMIT.reset(token)


def stored_scores(
    connection: Connection,
    *,
    model_id: int,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """A model version's stored scores in judging order (event time, else scoring time, then
    id): id, source_key, entity, time, event_time, score, is_anomaly, severity, window_status
    and can_flag (False for a windowed model's records that no threshold flags: ``warming_up``
    or ``late``, whose window was not a full one of its entity's records)."""
    when = func.coalesce(Score.event_time, Score.scored_at)
    stmt = (
        select(
            Score.id,
            Score.source_key,
            Score.entity_key.label("entity"),
            when.label("time"),
            Score.event_time,
            Score.score,
            Score.is_anomaly,
            Score.severity,
            Score.window_status,
        )
        .where(Score.model_id == model_id)
        .order_by(when, Score.id)
    )
    if since is not None:
        stmt = stmt.where(when >= since)
    if until is not None:
        stmt = stmt.where(when < until)
    limit = _REPLAY_LIMIT.get()
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    rows = connection.execute(stmt).all()
    if limit is not None and len(rows) > limit:
        model = connection.execute(
            select(Model.name, Model.version).where(Model.id == model_id)
        ).one()
        period = "".join(
            (
                f" since {since.isoformat()}" if since is not None else "",
                f" until {until.isoformat()}" if until is not None else "",
            )
        )
        raise ConfigError(
            f"model {model.name} version {model.version} has more than {limit:,} stored scores"
            f"{period or ' in all'}, the most this server replays in one request: give a "
            "shorter period (since / until), or start the server with a higher "
            "--max-replay-scores"
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "id",
            "source_key",
            "entity",
            "time",
            "event_time",
            "score",
            "is_anomaly",
            "severity",
            "window_status",
        ],
    )
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    frame["score"] = frame["score"].astype(np.float64)
    frame["is_anomaly"] = frame["is_anomaly"].astype(bool)
    status = frame["window_status"]
    frame["can_flag"] = (status.isna() | (status == "ok")).to_numpy(dtype=bool)
    return frame


# ======================================================================= preview
@dataclass
class ThresholdPreview:
    """A proposed threshold and rule replayed on stored scores, beside what happened."""

    model_name: str
    model_version: str
    since: datetime | None
    until: datetime | None
    proposed: Thresholds
    rule: AlertRule
    current: Thresholds | None
    current_rule: AlertRule | None
    result: Preview
    scores: pd.DataFrame
    flagged_at_the_time: int
    alerts_at_the_time: int
    labelled: int = 0

    def as_dict(self) -> dict[str, Any]:
        result = self.result.as_dict()
        return {
            "model": self.model_name,
            "model_version": self.model_version,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "proposed": {
                "warning": self.proposed.warning,
                "critical": self.proposed.critical,
                "alert_rule": self.rule.to_dict(),
            },
            "current": None
            if self.current is None
            else {
                "warning": self.current.warning,
                "critical": self.current.critical,
                "alert_rule": None if self.current_rule is None else self.current_rule.to_dict(),
            },
            "records": result["records"],
            "flagged": result["flagged"],
            "alerts": result["alerts"],
            "alerts_per_day": result["alerts_per_day"],
            "alerts_per_entity": result["alerts_per_entity"],
            "escalations": sum(1 for e in self.result.events if e.kind == "escalate"),
            "resolutions": sum(1 for e in self.result.events if e.kind == "resolve"),
            "metrics": result["metrics"],
            "labelled_records": self.labelled,
            "at_the_time": {
                "flagged": self.flagged_at_the_time,
                "alerts": self.alerts_at_the_time,
            },
        }


def preview_threshold(
    connection: Connection,
    *,
    model_name: str,
    change: ThresholdChange,
    since: datetime | None = None,
    until: datetime | None = None,
    labels: LabelSet | None = None,
) -> ThresholdPreview:
    """What ``change`` (against the version in force) would have done to the stored scores of
    the model version in use (:func:`model_in_use`) in [since, until): records flagged, alerts
    opened (per day, per entity), escalations and resolutions, and precision / recall / F1
    where ``labels`` say.

    With ``since``, every entity starts from the state it was in then (its records before
    ``since`` as they were decided, and its alert in progress then), as the write path would
    have: so the preview of a threshold set at ``since`` is what then happened."""
    repo.check_period(since, until)
    model = model_in_use(connection, name=model_name)
    repo.lock_thresholds(connection, model_name=model_name)  # `current` stays the one in force
    current = repo.threshold_in_force(connection, model_name=model_name)
    version = _apply_change(connection, model, current, change)
    proposed = Thresholds(warning=version.warning, critical=version.critical)
    current_rule = AlertRule.from_dict(current.alert_rule) if current is not None else None
    rule = version.rule
    frame = stored_scores(connection, model_id=model.id, since=since, until=until)
    tracker = AlertTracker(rule)
    if since is not None and len(frame):
        none = "\x00"  # no entity
        timed = frame["event_time"].notna().groupby(frame["entity"].fillna(none)).all()
        when = func.coalesce(Score.event_time, Score.scored_at)
        states = seed_states(
            connection,
            model_id=model.id,
            entities={(None if e == none else str(e)): bool(t) for e, t in timed.items()},
            rule=rule,
            history_filter=when < since,
            as_of=since,
        )
        seed_tracker(tracker, states)
    label_values = None
    labelled = 0
    if labels is not None:
        label_values = labels.for_scores(frame)
        labelled = int(np.isfinite(label_values).sum())
        if labelled == 0:
            raise ConfigError(
                f"none of the labels in {labels.source} matches a stored score of model "
                f"{model_name} version {model.version} in that period: check the keys or times"
                f"{labels.unmatched_hint}"
            )
    replay = frame[["score", "entity", "time"]].copy()
    # As the write path decides (storage.sink.flag_levels): a windowed model's warming-up and
    # late records are normal records whatever their score.
    replay["score"] = replay["score"].where(frame["can_flag"], -np.inf)
    replay["entity"] = replay["entity"].where(replay["entity"].notna(), "")
    result = preview(
        replay,
        proposed,
        rule,
        labels=None if label_values is None else pd.Series(label_values),
        tracker=tracker,
    )
    return ThresholdPreview(
        model_name=model_name,
        model_version=str(model.version),
        since=since,
        until=until,
        proposed=proposed,
        rule=rule,
        current=None
        if current is None
        else Thresholds(
            warning=float(current.warning),
            critical=None if current.critical is None else float(current.critical),
            version=int(current.version),
        ),
        current_rule=current_rule,
        result=result,
        scores=frame,
        flagged_at_the_time=int(frame["is_anomaly"].sum()),
        alerts_at_the_time=_alerts_opened_by(
            connection, model_id=model.id, since=since, until=until
        ),
        labelled=labelled,
    )


def _alerts_opened_by(
    connection: Connection, *, model_id: int, since: datetime | None, until: datetime | None
) -> int:
    when = func.coalesce(Score.event_time, Score.scored_at)
    stmt = (
        select(func.count())
        .select_from(Alert)
        .join(Score, Score.id == Alert.score_id)
        .where(Alert.model_id == model_id)
    )
    if since is not None:
        stmt = stmt.where(when >= since)
    if until is not None:
        stmt = stmt.where(when < until)
    return int(connection.scalar(stmt) or 0)


# ======================================================================== labels
@dataclass
class LabelSet:
    """Labels for stored scores, in one of the forms :func:`read_labels` reads."""

    source: str
    kind: Literal["source_key", "entity_time", "windows"]
    frame: pd.DataFrame
    # An export read as its own labels: said when none of them matches (an edited copy of the
    # scored file, or a file of ids and labels, has other content and so other keys).
    unmatched_hint: str = ""

    def for_scores(self, scores: pd.DataFrame) -> np.ndarray:
        """1.0 / 0.0 per stored score (``stored_scores`` frame), NaN where unknown."""
        out = np.full(len(scores), np.nan)
        if self.kind == "source_key":
            mapping = dict(zip(self.frame["source_key"], self.frame["label"], strict=True))
            out[:] = scores["source_key"].map(mapping).astype(float).to_numpy()
        elif self.kind == "entity_time":
            keyed = self.frame.set_index(["entity", "time"])["label"]
            keyed = keyed[~keyed.index.duplicated(keep="last")]
            index = pd.MultiIndex.from_arrays(
                [
                    scores["entity"].astype(object).where(scores["entity"].notna(), ""),
                    scores["time"],
                ]
            )
            out[:] = keyed.reindex(index).astype(float).to_numpy()
        else:
            out[:] = 0.0
            times = scores["time"]
            for window in self.frame.itertuples(index=False):
                inside = (times >= window.start) & (times <= window.end)
                if isinstance(window.entity, str) and window.entity:
                    inside &= scores["entity"] == window.entity
                out[inside.to_numpy()] = 1.0
        return out


def read_labels(
    path: Path | str,
    *,
    label_column: str = "label",
    key_column: str = "source_key",
    sep: str = ",",
    encoding: str = "utf-8",
) -> LabelSet:
    """Labels from a CSV file (``sep``, ``encoding``), by its header:

    * ``start``, ``end`` (and optionally ``entity``): incident windows; the records of that
      entity (of every entity when empty) with event time in [start, end] are anomalous, all
      others normal;
    * ``source_key`` (or ``key_column``) and ``label``: one label per record by its key
      (``file-sha256:<hex>:<row>``, ``topic:partition:offset``);
    * ``entity``, ``time`` and ``label``: one label per record by entity and event time;
    * otherwise the scored export itself with its label column: rows keyed by the file's
      content hash and row number, as ``score --db`` stored them (the file read as ``score``
      reads it: a line with more or fewer fields than the header has no label, as it has no
      score, and the rows after it keep their numbers).

    Labels are 1 (anomalous) or 0 (normal); true/false and yes/no are read too.
    """
    from anomaly_vae.sources.csv import CsvSource

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"labels file {path} does not exist")
    source = CsvSource(
        path, sep=sep, encoding=encoding, label=f"labels file {path}", pipeline_hints=False
    )
    header = source.header()
    columns = {c.strip().lower(): c for c in header}
    export = not (
        ("start" in columns and "end" in columns)
        or (
            label_column.lower() in columns and (key_column.lower() in columns or "time" in columns)
        )
    )
    if export and label_column.lower() in columns:
        # The scored export itself: its rows numbered as 'score' numbered them.
        name = columns[label_column.lower()]
        given = [
            chunk.frame[name].fillna("")
            for chunk in source.chunks(usecols=[name], text_columns=[name])
        ]
        frame = pd.DataFrame({name: pd.concat(given) if given else pd.Series([], dtype=str)})
    else:
        try:
            # Read as the source read the header: its encoding (UTF-8 for a file with UTF-8's
            # byte order mark, whatever was given), and spaces after the separators skipped
            # when the header has them ("entity, start, end"). Otherwise the names here were
            # not the header's ('ï»¿entity', ' start'): a KeyError traceback.
            frame = pd.read_csv(
                path,
                sep=sep,
                dtype=str,
                keep_default_na=False,
                encoding=source.encoding,
                skipinitialspace=source.spaced(),
            )
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise InputFileError(f"labels file {path} is not a readable CSV: {exc}") from None
    if "start" in columns and "end" in columns:
        windows = pd.DataFrame(
            {
                "entity": frame[columns["entity"]].str.strip()
                if "entity" in columns
                else [""] * len(frame),
                "start": _times(frame[columns["start"]], path, "start"),
                "end": _times(frame[columns["end"]], path, "end"),
            }
        )
        if (windows["end"] < windows["start"]).any():
            row = int(np.flatnonzero(windows["end"] < windows["start"])[0]) + 2
            raise InputFileError(f"labels file {path} line {row}: the window ends before it starts")
        return LabelSet(str(path), "windows", windows)
    if label_column.lower() not in columns:
        raise InputFileError(
            f"labels file {path} has no {label_column!r} column and no start/end columns: "
            "give per-record labels (source_key,label or entity,time,label) or incident "
            "windows (entity,start,end); see 'anomaly-vae thresholds tune --help'"
            + _separator_hint(list(columns), sep, [label_column, key_column, "start", "end"])
        )
    labels = _binary(frame[columns[label_column.lower()]], path)
    if key_column.lower() in columns:
        keyed = pd.DataFrame({"source_key": frame[columns[key_column.lower()]], "label": labels})
        return LabelSet(str(path), "source_key", keyed)
    if "time" in columns:
        by_time = pd.DataFrame(
            {
                "entity": frame[columns["entity"]].str.strip() if "entity" in columns else "",
                "time": _times(frame[columns["time"]], path, "time"),
                "label": labels,
            }
        )
        return LabelSet(str(path), "entity_time", by_time)
    prefix = repo.csv_source_key_prefix(source.sha256())
    rows = pd.DataFrame({"source_key": [f"{prefix}{i}" for i in frame.index], "label": labels})
    hint = (
        f" ({path} has no {key_column!r} or time column, so it is read as the scored export "
        "itself, its rows keyed by its content hash: score exactly this file with --db, or "
        f"give keys ({key_column},label) or entity,time,label)"
    )
    return LabelSet(str(path), "source_key", rows, unmatched_hint=hint)


def _separator_hint(header: list[str], sep: str, expected: list[str]) -> str:
    """When the header was read as one column that another separator would split into the
    expected names (an export written with ';'), the --sep to give."""
    if len(header) != 1:
        return ""
    wanted = {e.lower() for e in expected}
    from anomaly_vae.features import SEPARATOR_CANDIDATES

    for other, shown in SEPARATOR_CANDIDATES:
        if other != sep and wanted & {n.strip() for n in header[0].split(other)}:
            return f"; the header looks '{shown}'-separated: try --sep '{shown}'"
    return ""


def _times(values: pd.Series, path: Path, name: str) -> pd.Series:
    # Read as a stored score's event time was (ISO 8601 text, or epoch seconds / ms / us / ns),
    # so that a label's time is written the way the export wrote it.
    from anomaly_vae.windows import event_timestamps

    stripped = values.str.strip()
    parsed = event_timestamps(stripped.where(stripped != ""))
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0]) + 2
        raise InputFileError(
            f"labels file {path} line {row}: {name} {values.iloc[row - 2]!r} is not a date or "
            "time (use ISO 8601, e.g. 2026-11-20T08:00:00Z, or epoch seconds)"
        )
    return parsed


# Cells read as no label, as pandas reads them in a scored export (score --label-column).
_NO_LABEL = {"", "na", "n/a", "nan", "null", "none", "<na>", "#n/a"}


def _binary(values: pd.Series, path: Path) -> np.ndarray:
    """1.0 (anomalous), 0.0 (normal) or NaN (no label: a blank cell) per row, read as
    ``score --label-column`` reads the same column (``labels.label_to_binary``), so that an
    export labels its records alike for both; any other value is refused with its line."""
    from anomaly_vae.labels import label_to_binary

    stripped = values.str.strip()
    given = stripped.where(~stripped.str.lower().isin(_NO_LABEL))
    binary = label_to_binary(given.reset_index(drop=True), name="label", strict=False)
    bad = given.notna().to_numpy() & binary.isna().to_numpy()
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        row = int(values.index[at])  # the data row (the export's, as 'score' numbers them)
        value = values.iloc[at]
        negative = pd.to_numeric(pd.Series([value]), errors="coerce").lt(0).iloc[0]
        why = (
            "a -1 / 1 label, as scikit-learn's predict gives, is ambiguous: write 1 for "
            "anomalies and 0 for normal rows"
            if negative
            else "write 1 (true, anomaly) or 0 (false, normal), or leave the cell empty for no "
            "label"
        )
        raise InputFileError(
            f"labels file {path} line {row + 2}: label {value!r} is not a label: {why}"
        )
    return binary.to_numpy(dtype="float64", na_value=np.nan)


# ========================================================================= tuning
@dataclass
class Tuned:
    value: float
    objective: str
    metrics: dict[str, Any]
    labelled: int
    model_version: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.value,
            "objective": self.objective,
            "labelled_records": self.labelled,
            "model_version": self.model_version,
            **self.metrics,
        }


def tune(
    connection: Connection,
    *,
    model_name: str,
    labels: LabelSet,
    objective: Literal["f1", "max_false_alarm_rate", "alerts_per_day"],
    max_false_alarm_rate: float | None = None,
    alerts_per_day: float | None = None,
    since: datetime | None = None,
) -> Tuned:
    """The threshold that is best for ``objective`` on the labelled stored scores."""
    model = model_in_use(connection, name=model_name)
    frame = stored_scores(connection, model_id=model.id, since=since)
    values = labels.for_scores(frame)
    known = np.isfinite(values)
    if not known.any():
        raise ConfigError(
            f"none of the labels in {labels.source} matches a stored score of model {model_name} "
            f"version {model.version}: check the keys or times{labels.unmatched_hint}"
        )
    result = tune_from_labels(
        frame["score"].to_numpy()[known],
        values[known].astype(np.int64),
        flaggable=frame["can_flag"].to_numpy()[known],
        objective=objective,
        max_false_alarm_rate=max_false_alarm_rate,
        alerts_per_day=alerts_per_day,
        timestamps=frame["time"][known].reset_index(drop=True),
    )
    metrics = {
        "precision": result.precision,
        "recall": result.recall,
        "f1": result.f1,
        "false_alarm_rate": result.false_alarm_rate,
        "alerts_per_day": result.alerts_per_day,
    }
    return Tuned(result.threshold, objective, metrics, int(known.sum()), str(model.version))


def tuned_change(tuned: Tuned, *, labels: LabelSet) -> ThresholdChange:
    """The new version ``tune --apply`` writes: policy ``labels``, with what it scored."""
    return ThresholdChange(
        warning=ComputedThreshold(
            tuned.value,
            "labels",
            {
                "model_version": tuned.model_version,
                "labels": labels.source,
                "labels_kind": labels.kind,
                **tuned.as_dict(),
            },
        )
    )


# ================================================================== alert actions
ALERT_ACTIONS = {"acknowledge": "acknowledged", "resolve": "resolved"}
# Alert ids are 64-bit integers: a number outside that range names no alert (the drivers
# raise OverflowError on it rather than finding nothing).
_ALERT_IDS = range(-(2**63), 2**63)


@dataclass(frozen=True)
class AlertActed:
    """What an alert action did: ``row`` is the alert after it; ``changed`` is False when the
    same operator had already taken that action (a command or request repeated: nothing was
    changed), which ``message`` then says ("already acknowledged by alice at ...")."""

    row: Row[Any]
    changed: bool
    message: str


def act_on_alert(
    connection: Connection,
    *,
    alert_id: int,
    action: Literal["acknowledge", "resolve"],
    by: str,
    note: str | None = None,
) -> AlertActed:
    """Acknowledge or resolve an alert (in the caller's transaction). The same action repeated
    by the operator who took it (with no note, or the note it added) changes nothing and
    succeeds, saying so: a retried request or a script run twice is no error. Acknowledging a
    resolved alert, or an action another operator (or the alert rule) already took, or one
    repeated with another note, is refused with a clear message."""
    by = by.strip()
    if not by:  # the audit trail would say nothing
        raise ConfigError(
            f'who takes the action on alert {alert_id} is blank: give a name (--by, "by" in '
            "the API)"
        )
    _check_name_length(by, '--by, "by" in the API')
    row = None
    if alert_id in _ALERT_IDS:
        row = connection.execute(select(Alert).where(Alert.id == alert_id)).first()
    if row is None:
        raise NotFoundError(f"no alert {alert_id}: see 'anomaly-vae alerts list'")
    now = repo.utc_now()
    state = ALERT_ACTIONS[action]
    took = (
        (row.acknowledged_by, row.acknowledged_at)
        if action == "acknowledge"
        else (row.resolved_by, row.resolved_at)
    )
    kept = row.note or ""
    same_note = not note or kept == note or kept.endswith(f"{NOTE_SEPARATOR}{note}")
    if row.state == state and took[0] == by and same_note:
        return AlertActed(
            row,
            changed=False,
            message=f"alert {alert_id} is already {state} {_by_when(*took)}: nothing changed",
        )
    # Said when an action is refused with a note: it is not kept anywhere.
    unsaved = "; the note given was not added" if note else ""
    if action == "acknowledge":
        if row.state == "acknowledged":
            raise ConfigError(
                f"alert {alert_id} is already acknowledged "
                f"({_by_when(row.acknowledged_by, row.acknowledged_at)}): nothing to do; "
                f"resolve it once it is dealt with{unsaved}"
            )
        if row.state != "open":
            raise ConfigError(
                f"alert {alert_id} is already resolved "
                f"({_by_when(row.resolved_by, row.resolved_at)}): only an open alert can be "
                f"acknowledged; the entity's next crossings open a new one{unsaved}"
            )
        values: dict[str, Any] = {
            "state": "acknowledged",
            "acknowledged_at": now,
            "acknowledged_by": by,
        }
    else:
        if row.state == "resolved":
            raise ConfigError(
                f"alert {alert_id} is already resolved "
                f"({_by_when(row.resolved_by, row.resolved_at)}): nothing to do{unsaved}"
            )
        values = {"state": "resolved", "resolved_at": now, "resolved_by": by}
    if note:
        # After the note of the acknowledgement, not in its place.
        values["note"] = f"{row.note}{NOTE_SEPARATOR}{note}" if row.note else note
    changed = connection.execute(
        update(Alert).where(Alert.id == alert_id, Alert.state == row.state).values(**values)
    )
    if changed.rowcount == 0:
        # Someone else (the alert rule of a running scorer, another operator) moved the alert
        # between the read and the update: nothing was changed here, so do not say it was.
        now_state = connection.execute(select(Alert.state).where(Alert.id == alert_id)).scalar()
        raise ConfigError(
            f"alert {alert_id} changed meanwhile (it was {row.state}, it is now {now_state}): "
            "look at it again ('anomaly-vae alerts list')"
        )
    acted = connection.execute(select(Alert).where(Alert.id == alert_id)).one()
    return AlertActed(acted, changed=True, message=f"alert {alert_id} is now {state}")


def _by_when(by: str | None, when: datetime | None) -> str:
    """'by alice at 2026-11-28 10:40Z': who took an alert's last action, and when."""
    at = (
        when.astimezone(timezone.utc).strftime(" at %Y-%m-%d %H:%MZ")
        if when is not None and when.tzinfo is not None
        else (when.strftime(" at %Y-%m-%d %H:%MZ") if when is not None else "")
    )
    return f"by {by or 'unknown'}{at}"


def list_alerts(
    connection: Connection,
    *,
    state: str | None = None,
    model_name: str | None = None,
    entity: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    alert_id: int | None = None,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Alerts, newest first, with their model, opening record and rule; ``since`` / ``until``
    bound when they opened (``opened_at`` in [since, until)). ``before_id`` (the last ``id``
    of a page) gives the alerts after it in this order: the next page, where ``until`` = the
    last ``opened_at`` seen would skip the rest of the alerts that one write opened."""
    repo.check_period(since, until)
    if alert_id is not None and alert_id not in _ALERT_IDS:
        return []
    when = func.coalesce(Score.event_time, Score.scored_at)
    onset = aliased(Score)
    stmt = (
        select(
            Alert.id,
            Model.name.label("model"),
            Model.version.label("model_version"),
            Alert.entity_key,
            Alert.state,
            Alert.severity,
            when.label("time"),
            Score.score,
            Score.source_key,
            Alert.opened_at,
            Alert.acknowledged_at,
            Alert.acknowledged_by,
            Alert.resolved_at,
            Alert.resolved_by,
            Alert.escalated_at,
            Alert.threshold_id,
            Alert.rule,
            Alert.note,
            func.coalesce(onset.event_time, onset.scored_at).label("onset_time"),
        )
        .join(Score, Score.id == Alert.score_id)
        .join(Model, Model.id == Alert.model_id)
        .outerjoin(onset, onset.id == Alert.onset_score_id)
        .order_by(Alert.opened_at.desc(), Alert.id.desc())
        .limit(repo.id_bound(limit))
    )
    if state is not None:
        if state == "active":
            stmt = stmt.where(Alert.state.in_(ACTIVE_STATES))
        else:
            stmt = stmt.where(Alert.state == state)
    if model_name is not None:
        stmt = stmt.where(Model.name == model_name)
    if entity is not None:
        stmt = stmt.where(Alert.entity_key == entity)
    if since is not None:
        stmt = stmt.where(Alert.opened_at >= since)
    if until is not None:
        stmt = stmt.where(Alert.opened_at < until)
    if alert_id is not None:
        stmt = stmt.where(Alert.id == alert_id)
    if before_id is not None:
        repo.require_page_cursor(connection, Alert.id, before_id, "alert")
        before_id = repo.id_bound(before_id)
        last = aliased(Alert)
        last_opened = select(last.opened_at).where(last.id == before_id).scalar_subquery()
        stmt = stmt.where(
            or_(
                Alert.opened_at < last_opened,
                and_(Alert.opened_at == last_opened, Alert.id < before_id),
            )
        )
    return [dict(row._mapping) for row in connection.execute(stmt)]
