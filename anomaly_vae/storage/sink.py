"""The database sink of batch scoring: each chunk's scores, rejects and alerts in one
transaction, through :func:`anomaly_vae.storage.repository.write_results`.

A run is registered first (:func:`start_batch_run`: the model version, the threshold in force,
a ``scoring_runs`` row), then :class:`DatabaseSink` writes chunk by chunk. Killed part way, a
run leaves whole chunks behind and its status ``running``; scoring the file again fills in what
is missing and duplicates nothing, because every row's key is the file's content hash and its
row number.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from anomaly_vae._version import __version__
from anomaly_vae.storage import repository as repo
from anomaly_vae.thresholds import SEVERITY_NAMES, AlertRule, Thresholds
from anomaly_vae.windows import TIME_YEARS, entity_text, event_times_in_order, out_of_range_time

if TYPE_CHECKING:
    from anomaly_vae.estimator import AnomalyVAE
    from anomaly_vae.jobs.batch import BatchSummary, ScoredChunk

logger = logging.getLogger(__name__)

CALIBRATION_SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)
# Severity levels as stored: None (normal), 'warning', 'critical'.
SEVERITY_LABELS = np.asarray(
    [None if level == 0 else SEVERITY_NAMES[level] for level in sorted(SEVERITY_NAMES)],
    dtype=object,
)


def only_full_windows(scores: pd.DataFrame, levels: np.ndarray) -> np.ndarray:
    """A windowed model flags only records with a full window: the others (``warming_up``,
    ``late``, ``replayed``) get no severity, as they get ``is_anomaly`` 0."""
    if "window_status" not in scores.columns:
        return levels
    return np.where(scores["window_status"].to_numpy() == "ok", levels, 0)


def severity_labels(scores: pd.DataFrame, warning: float, critical: float | None) -> np.ndarray:
    """Each scored record's severity as stored (None, 'warning', 'critical') under these
    levels; only records with a full window get one (``only_full_windows``)."""
    levels = Thresholds(warning=warning, critical=critical).severity(scores["score"].to_numpy())
    return SEVERITY_LABELS[only_full_windows(scores, levels)]


def model_version_of(model: AnomalyVAE, *, path: Path | str | None) -> repo.ModelVersion:
    """What the ``models`` table records about a saved or loaded model."""
    if model.model_hash_ is None:
        raise ValueError("the model has no content hash: save() or load() it first")
    summary = dict(model.training_summary_)
    calib = model.calibration_
    trained_at = summary.get("trained_at")
    return repo.ModelVersion(
        name=model.name,
        content_hash=str(model.model_hash_),
        path=str(Path(path).resolve()) if path is not None else None,
        score_kind=model.score_kind_,
        threshold=float(model.threshold_),
        threshold_quantile=float(model.threshold_quantile_),
        feature_schema=model.schema_.to_dict(),
        training_summary=summary,
        calibration={
            "threshold": float(model.threshold_),
            "threshold_quantile": float(model.threshold_quantile_),
            "points": len(calib),
            "quantiles": {
                f"{q:g}": float(np.quantile(calib, q)) for q in CALIBRATION_SUMMARY_QUANTILES
            },
            # The held-out normal scores themselves (sorted; at most CALIBRATION_POINTS, evenly
            # spaced quantiles when there were more): the quantile, false-alarm-rate and EVT
            # policies compute from them, so the database needs no access to the model files.
            "scores": [float(v) for v in calib],
        },
        package_version=__version__,
        created_at=datetime.fromisoformat(trained_at) if trained_at else None,
    )


@dataclass(frozen=True)
class BatchRun:
    """A started run: the ids its rows refer to and the threshold it flags with."""

    run_id: int
    model_id: int
    model_version: str
    threshold_id: int | None
    threshold: float
    critical: float | None
    alert_rule: AlertRule


def start_batch_run(
    connection: Connection,
    *,
    model: AnomalyVAE,
    model_dir: Path | str | None,
    source: str,
    source_sha256: str,
    threshold: float | None = None,
    alert_rule: dict[str, Any] | None = None,
) -> BatchRun:
    """Register the model version, find the threshold in force (``threshold`` overrides it
    for this run only) and record a ``running`` scoring run, in one transaction.
    ``alert_rule``: the pipeline's ``alerts`` section (see ``ensure_calibrated_threshold``)."""
    version = model_version_of(model, path=model_dir)
    with connection.begin():
        model_id = repo.register_model(connection, model=version)
        in_force = repo.ensure_calibrated_threshold(
            connection, model=version, created_by="anomaly-vae score", alert_rule=alert_rule
        )
        if threshold is None:
            value, critical, threshold_id = (
                float(in_force.warning),
                in_force.critical,
                int(in_force.id),
            )
            note_other_version(in_force, version, override=", or give --threshold")
        else:
            value, critical, threshold_id = float(threshold), None, None
        run_id = repo.start_run(
            connection,
            kind="batch",
            source=source,
            source_sha256=source_sha256,
            model_id=model_id,
            threshold_value=value,
            threshold_id=threshold_id,
        )
    logger.info(
        "run %d: model %s version %s, threshold %.4g", run_id, version.name, version.version, value
    )
    return BatchRun(
        run_id=run_id,
        model_id=model_id,
        model_version=version.version,
        threshold_id=threshold_id,
        threshold=value,
        critical=None if critical is None else float(critical),
        alert_rule=AlertRule.from_dict(in_force.alert_rule),
    )


def other_version_note(
    in_force: Any,
    version: Any,
    *,
    scoring: str = "this run scores",
    how_to_set: str = "",
    override: str = "",
) -> str | None:
    """What to say when the threshold in force was set for another model version than
    ``version`` (a ``repo.ModelVersion`` or a ``models`` row): computed from its scores (an
    operator's quantile, false-alarm rate, EVT, contamination or tuned level), or a fixed
    value set while it was in use; scoring never replaces either. A retrained model's scores
    have a scale of their own, and a run flagged by the old level without a word, its "most
    rows crossed the threshold" line blaming the export. None when there is nothing to say
    (a value set before values recorded their model version names none). ``scoring``: who
    scores version N ("this run scores", "this request scores"); ``how_to_set``: the way to
    set one (default: the CLI's)."""
    computed_for = (in_force.parameters or {}).get("model_version")
    if not computed_for or computed_for == version.version:
        return None
    scores = np.asarray((version.calibration or {}).get("scores") or [], dtype=np.float64)
    crossing = (
        f": {100 * float(np.mean(scores > float(in_force.warning))):.3g} % of its held-out "
        "normal records cross it"
        if len(scores)
        else ""
    )
    how = (
        f"was set by hand while model version {computed_for} was in use"
        if in_force.policy == "value"
        else f"was computed from the scores of model version {computed_for}"
    )
    setting = how_to_set or (
        f"'anomaly-vae thresholds set {version.name} ... --reason ...', or "
        "'thresholds preview' it first"
    )
    return (
        f"threshold v{in_force.version} of {version.name!r} ({in_force.policy}, set by "
        f"{in_force.created_by}) {how}, and {scoring} version {version.version}, whose scores "
        f"have a scale of their own{crossing}; set one for this version ({setting}){override}"
    )


def note_other_version(in_force: Any, version: repo.ModelVersion, *, override: str = "") -> None:
    """Warn (a log line) when the threshold in force was set for another model version (see
    ``other_version_note``)."""
    note = other_version_note(in_force, version, override=override)
    if note is not None:
        logger.warning("%s", note)


class DatabaseSink:
    """A batch-scoring ``Sink``: one transaction per chunk. Call :meth:`finish` when the job
    has succeeded; :meth:`close` without it records the run as failed."""

    def __init__(
        self,
        connection: Connection,
        *,
        run: BatchRun,
        key_prefix: str,
        top_features: int,
        entity_column: str | None = None,
        timestamp_column: str | None = None,
        day_first: bool | None = None,
        source: str = "input",
    ) -> None:
        self.connection = connection
        self.source = source
        self.run = run
        self.key_prefix = key_prefix
        self.top_features = top_features
        self.entity_column = entity_column
        self.timestamp_column = timestamp_column
        self.day_first = day_first  # a windowed model's order of numeric dates
        self._run_day_first: bool | None = None  # else this run's, once a chunk decided it
        self.inserted = 0
        self.written = 0
        self.alerts_opened = 0
        self.dead_letters = 0
        self.dead_letters_inserted = 0  # of them, not already stored (a file scored again)
        self.unread_times = 0  # scores stored without an event time: their time not readable
        # Rows already stored (a file scored before) whose stored is_anomaly / severity differ
        # from what this run's threshold gives: they are kept as first scored, never rewritten.
        self.kept_with_other_flags = 0
        self._finished = False

    def write(self, chunk: ScoredChunk) -> None:
        records = self.records(chunk)
        counts = repo.write_results(
            self.connection,
            run_id=self.run.run_id,
            model_id=self.run.model_id,
            records=records,
            rejects=self.rejects(chunk),
            threshold_id=self.run.threshold_id,
            alert_rule=self.run.alert_rule,
            alert_details=False,  # a batch job publishes no alerts
        )
        self.written += counts.scores_given
        self.inserted += counts.scores_inserted
        self.alerts_opened += counts.alerts_opened
        self.dead_letters += counts.dead_letters_given
        self.dead_letters_inserted += counts.dead_letters_inserted
        if counts.scores_inserted < counts.scores_given:  # a file scored before: rows kept
            self.kept_with_other_flags += repo.kept_with_other_flags(
                self.connection, model_id=self.run.model_id, run_id=self.run.run_id, records=records
            )

    def records(self, chunk: ScoredChunk) -> pd.DataFrame:
        """The chunk's scored rows as ``write_results`` takes them."""
        scores = chunk.batch.scores
        rows = scores.index
        data: dict[str, Any] = {
            "source_key": self._keys(rows),
            "score": scores["score"].to_numpy(),
            "recon_error": scores["recon_error"].to_numpy(),
            "percentile": scores["percentile"].to_numpy(),
            "is_anomaly": scores["is_anomaly"].to_numpy(dtype=bool),
            "severity": self._severity(scores),
            "top_features": chunk.batch.top_features_json(self.top_features),
        }
        if "window_status" in scores:
            data["window_status"] = scores["window_status"].to_numpy(dtype=object)
        frame = chunk.frame
        if self.entity_column and self.entity_column in frame:
            entities = frame.loc[rows, self.entity_column].tolist()
            data["entity_key"] = np.asarray([entity_text(v) for v in entities], dtype=object)
        if self.timestamp_column and self.timestamp_column in frame:
            # Epoch numbers are seconds (or ms), as for a Kafka message; .array: no boxing.
            given = frame.loc[rows, self.timestamp_column]
            # A model with no order of its own reads them in the one its windows took; one
            # without windows in the order the first chunk holding numeric dates decides, kept
            # for the whole run (decided chunk by chunk, 05/11/2026 was 11 May in one chunk
            # and 20/11/2026 20 November in the next: the stored times hung on --chunk-size).
            order = self.day_first if self.day_first is not None else chunk.batch.day_first
            if order is None:
                order = self._run_day_first
            times, used = event_times_in_order(given, day_first=order)
            if order is None:
                self._run_day_first = used  # None until a chunk holds numeric dates
            self._note_unread_times(given, times)
            data["event_time"] = times.array
        return pd.DataFrame(data)

    def _note_unread_times(self, given: pd.Series, times: pd.Series) -> None:
        """Count the records whose time cell holds something that is not a time (stored
        without an event time); the first is named once, with its row."""
        text = given.astype("string").str.strip()
        unread = (given.notna() & text.fillna("").ne("") & times.isna()).to_numpy(dtype=bool)
        if not unread.any():
            return
        if not self.unread_times:
            row = given.index[unread][0]
            cells = given[unread]
            far = cells.index[cells.map(out_of_range_time).to_numpy(dtype=bool)]
            if len(far):
                logger.warning(
                    "%s: the timestamp column %r holds dates outside %s (first: %r at data "
                    "row %s); such scores are stored without an event time",
                    self.source,
                    self.timestamp_column,
                    TIME_YEARS,
                    given[far[0]],
                    far[0],
                )
            else:
                logger.warning(
                    "%s: the timestamp column %r holds values that are not times (first: %r at "
                    "data row %s); such scores are stored without an event time. Write ISO "
                    "8601 (2026-11-20T09:00:00+01:00) or epoch seconds",
                    self.source,
                    self.timestamp_column,
                    given[row],
                    row,
                )
        self.unread_times += int(unread.sum())

    def rejects(self, chunk: ScoredChunk) -> pd.DataFrame:
        rejects = chunk.rejects
        return pd.DataFrame(
            {
                "source_key": self._keys(rejects.index),
                "reason": rejects["reason"].astype(str).to_numpy(),
                "raw": rejects["raw"].to_numpy() if "raw" in rejects else None,
            }
        )

    def _keys(self, rows: pd.Index) -> np.ndarray:
        return self.key_prefix + rows.to_numpy().astype(str).astype(object)

    def _severity(self, scores: pd.DataFrame) -> np.ndarray:
        return severity_labels(scores, self.run.threshold, self.run.critical)

    def finish(self, summary: BatchSummary) -> None:
        """Record the run as succeeded with the rows read."""
        with self.connection.begin():
            repo.finish_run(
                self.connection,
                run_id=self.run.run_id,
                status="succeeded",
                rows_read=summary.rows_read,
            )
        self._finished = True

    def close(self) -> None:
        """Without :meth:`finish`: the run failed. Its rows read are those of the chunks
        stored (scored or rejected), and its error says what stopped the job when this is
        called while an exception ends it (``score_csv``'s ``finally``)."""
        if self._finished:
            return
        stopped = sys.exc_info()[1]
        error = "the job stopped before the end of the file"
        if isinstance(stopped, KeyboardInterrupt):
            error += ": interrupted"
        elif stopped is not None:
            lines = str(stopped).strip().splitlines()
            error += f": {lines[0][:500] if lines else type(stopped).__name__}"
        if self.connection.in_transaction():
            self.connection.rollback()
        with self.connection.begin():
            repo.finish_run(
                self.connection,
                run_id=self.run.run_id,
                status="failed",
                error=error,
                rows_read=self.written + self.dead_letters,
            )
        self._finished = True
