"""The database side of the stream scorer: its sink and the live threshold it reads.

``StreamDatabaseSink`` writes each micro-batch (scores, rejects, alerts) in one transaction
through ``repository.write_results``, keyed ``topic:partition:offset`` + model, so a replayed
batch adds nothing twice; with ``outbox=True`` (an alerts topic) the batch's alert events go to
``alert_outbox`` in that transaction too, until the scorer has published them
(``storage.outbox``). It takes a fresh pooled connection per batch: after a database
outage the next write simply reconnects. ``DatabaseThresholdSource`` tells the scorer the
threshold in force, which an operator may change at any time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy.engine import Engine

from anomaly_vae.jobs.stream import AlertMessage, ThresholdInForce, WriteResult, first_line
from anomaly_vae.sources.kafka import ENTITY, EVENT_TIME, SOURCE_KEY
from anomaly_vae.storage import outbox as alert_outbox
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.sink import model_version_of, note_other_version, severity_labels
from anomaly_vae.storage.window_states import load_window_states
from anomaly_vae.thresholds import AlertRule

if TYPE_CHECKING:
    from anomaly_vae.estimator import AnomalyVAE
    from anomaly_vae.jobs.stream import StreamBatch, StreamStats

logger = logging.getLogger(__name__)


class StreamDatabaseSink:
    """Registers the model and a ``stream`` scoring run, then writes batch after batch."""

    def __init__(
        self,
        engine: Engine,
        *,
        model: AnomalyVAE,
        model_dir: Path | str | None,
        source: str,
        alert_rule: dict[str, Any] | None = None,
        outbox: bool = False,
    ) -> None:
        self.engine = engine
        # With an alerts topic: the alert events go to the outbox with their batch.
        self.outbox = outbox
        self.model = model
        self.top_features = model.config_.scoring.top_features
        version = model_version_of(model, path=model_dir)
        with engine.connect() as connection, connection.begin():
            self.model_id = repo.register_model(connection, model=version)
            in_force = repo.ensure_calibrated_threshold(
                connection, model=version, created_by="anomaly-vae stream", alert_rule=alert_rule
            )
            note_other_version(in_force, version)
            self.run_id = repo.start_run(
                connection,
                kind="stream",
                source=source,
                model_id=self.model_id,
                threshold_value=float(in_force.warning),
                threshold_id=int(in_force.id),
            )
            left = None if outbox else alert_outbox.count(connection, model_name=version.name)
        self.model_version = version.version
        self.model_name = version.name
        self.stats: StreamStats | None = None
        self.error: str | None = None
        logger.info(
            "stream run %d: model %s version %s", self.run_id, version.name, version.version
        )
        if left is not None and left[0]:
            count, oldest = left
            logger.warning(
                "%d alert event(s) of model %s wait in the alert outbox, unpublished, the "
                "oldest written %s (a scorer with --alerts-topic stopped before publishing "
                "them): this scorer has no --alerts-topic and leaves them; the next one with "
                "--alerts-topic publishes them first, and 'anomaly-vae db prune' deletes them "
                "once older than its --older-than",
                count,
                version.name,
                oldest.isoformat(timespec="seconds")
                if oldest is not None
                else "at an unknown time",
            )

    def write(self, batch: StreamBatch) -> WriteResult:
        records = self.records(batch)
        rejects = self.rejects(batch)
        with self.engine.connect() as connection:
            counts = repo.write_results(
                connection,
                run_id=self.run_id,
                model_id=self.model_id,
                records=records,
                rejects=rejects,
                threshold_id=batch.threshold_id,
                alert_rule=AlertRule.from_dict(batch.alert_rule),
                window_states=batch.window_states,
                outbox_model=self.model_name if self.outbox else None,
            )
        return WriteResult(
            scores_written=counts.scores_inserted,
            rejects_written=counts.dead_letters_inserted,
            alerts=[alert_outbox.json_ready(alert) for alert in counts.alerts],
            messages=[_message(event) for event in counts.outbox],
        )

    def outbox_pending(self, after_id: int, limit: int) -> list[AlertMessage]:
        """The model name's alert events not yet published (rows after ``after_id``), oldest
        first: those a scorer killed after its commit left, and those the broker refused."""
        with self.engine.connect() as connection:
            events = alert_outbox.pending(
                connection, model_name=self.model_name, after_id=after_id, limit=limit
            )
        return [_message(event) for event in events]

    def outbox_waiting(self) -> int:
        """How many of the model name's alert events wait in the outbox, unpublished."""
        with self.engine.connect() as connection:
            return alert_outbox.count(connection, model_name=self.model_name)[0]

    def outbox_published(self, ids: list[int]) -> None:
        """Delete the outbox rows of events the broker has acknowledged."""
        with self.engine.connect() as connection, connection.begin():
            alert_outbox.remove(connection, ids)

    @contextmanager
    def outbox_turn(self) -> Iterator[None]:
        """Held while the scorer publishes what the outbox holds at its start: scorers of the
        model started together take turns (PostgreSQL), so each leftover goes once. Trouble
        taking it (the database) is no reason not to publish: copies at worst."""
        with ExitStack() as stack:
            try:
                held = stack.enter_context(
                    alert_outbox.publishing_turn(self.engine, model_name=self.model_name)
                )
            except Exception as exc:
                logger.debug("no turn at the alert outbox: %s", first_line(exc))
                held = True
            if not held and self.engine.dialect.name == "postgresql":
                logger.info(
                    "another scorer of %s has been publishing the alert outbox for a minute: "
                    "publishing it too (a consumer drops copies by event_id)",
                    self.model_name,
                )
            yield

    def records(self, batch: StreamBatch) -> pd.DataFrame:
        scores = batch.scores.scores
        frame = batch.records
        records = pd.DataFrame(
            {
                "source_key": frame[SOURCE_KEY].to_numpy(dtype=object),
                "score": scores["score"].to_numpy(),
                "recon_error": scores["recon_error"].to_numpy(),
                "percentile": scores["percentile"].to_numpy(),
                "is_anomaly": scores["is_anomaly"].to_numpy(dtype=bool),
                "severity": severity_labels(scores, batch.threshold, batch.critical),
                "top_features": batch.scores.top_features_json(self.top_features),
                "entity_key": frame[ENTITY].to_numpy(dtype=object),
                # .array keeps datetime64[ns, UTC]; .to_numpy() would box every value.
                "event_time": pd.to_datetime(frame[EVENT_TIME], utc=True).array,
            }
        )
        if "window_status" in scores:
            records["window_status"] = scores["window_status"].to_numpy(dtype=object)
        return records

    def load_window_states(self, entities: list[str]) -> dict[str, bytes]:
        """The stored window state of entities this scorer has not seen (a windowed model):
        what the batches before a restart or a rebalance left, committed with their scores."""
        with self.engine.connect() as connection:
            return load_window_states(connection, model_id=self.model_id, entities=entities)

    def rejects(self, batch: StreamBatch) -> pd.DataFrame:
        rejects = batch.rejects
        return pd.DataFrame(
            {
                "source_key": rejects.index.to_numpy(dtype=object),
                "reason": rejects["reason"].astype(str).to_numpy(),
                "raw": rejects["raw"].to_numpy(dtype=object),
            }
        )

    def report_metrics(self, stats: StreamStats, records_per_s: float) -> None:
        """Record what only this process knows (lag, latency, rate) on its run's row, for the
        API's ``/metrics``; the ``on_metrics`` hook of ``StreamScorer``."""
        figures = stats.as_dict()
        with self.engine.connect() as connection, connection.begin():
            repo.report_run_metrics(
                connection,
                run_id=self.run_id,
                lag=figures["lag"],
                latency_p50_ms=figures["latency_p50_ms"],
                latency_p99_ms=figures["latency_p99_ms"],
                records_per_s=records_per_s,
            )

    def record_failure(self, error: str) -> None:
        """The session stops on an error: :meth:`close` records the run as failed with it."""
        self.error = error

    def close(self) -> None:
        try:
            with self.engine.connect() as connection, connection.begin():
                stats = self.stats
                repo.finish_run(
                    connection,
                    run_id=self.run_id,
                    status="succeeded" if self.error is None else "failed",
                    rows_read=stats.consumed if stats is not None else None,
                    error=self.error,
                )
        except Exception as exc:  # the database may be the reason we stop
            logger.warning(
                "could not record the end of stream run %d: %s", self.run_id, first_line(exc)
            )


class DatabaseThresholdSource:
    """The newest threshold version of a model name, read on demand."""

    def __init__(self, engine: Engine, *, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name

    def current(self) -> ThresholdInForce:
        with self.engine.connect() as connection:
            row = repo.threshold_in_force(connection, model_name=self.model_name)
        if row is None:
            raise LookupError(f"no threshold stored for model {self.model_name!r}")
        return ThresholdInForce(
            value=float(row.warning),
            version=int(row.version),
            critical=None if row.critical is None else float(row.critical),
            id=int(row.id),
            alert_rule=row.alert_rule,
        )


def _message(event: alert_outbox.OutboxEvent) -> AlertMessage:
    return AlertMessage(
        key=None if event.key is None else event.key.encode("utf-8"),
        value=event.value.encode("utf-8"),
        outbox_id=event.id,
    )
