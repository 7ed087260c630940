"""The results database on real SQLite files and a real PostgreSQL: migrations against the
ORM metadata, idempotent bulk writes, thresholds, URL precedence and one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from anomaly_vae import AnomalyVAE
from anomaly_vae.errors import (
    ConfigError,
    DatabaseConnectionError,
    DatabaseURLError,
    SchemaVersionError,
)
from anomaly_vae.scoring import top_features_json, top_features_list
from anomaly_vae.storage import outbox
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.engine import (
    DEFAULT_URL,
    ENV_VAR,
    DatabaseTarget,
    create_database_engine,
    masked,
    open_database,
    parse_database_url,
    resolve_database_url,
)
from anomaly_vae.storage.migrate import downgrade, head_revision, upgrade
from anomaly_vae.storage.tables import Alert, Base, DeadLetter, Score, ScoringRun
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def engine_for(url: str) -> Engine:
    return create_database_engine(parse_database_url(url))


def target_for(url: str) -> DatabaseTarget:
    return DatabaseTarget(parse_database_url(url), "--db")


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def model_version(name: str = "pumps", content_hash: str = "a" * 64) -> repo.ModelVersion:
    return repo.ModelVersion(
        name=name,
        content_hash=content_hash,
        path="/models/pumps",
        score_kind="neg_elbo",
        threshold=10.0,
        threshold_quantile=0.995,
        feature_schema={"columns": [{"name": "flow", "kind": "numeric"}]},
        training_summary={"rows_train": 100},
        calibration={"threshold": 10.0},
        package_version="0.1.0",
        created_at=datetime(2026, 11, 1, tzinfo=timezone.utc),
    )


def records(keys: list[str], scores: list[float]) -> pd.DataFrame:
    n = len(keys)
    flagged = np.asarray(scores) > 10.0
    return pd.DataFrame(
        {
            "source_key": keys,
            "entity_key": [f"P{i % 2}" for i in range(n)],
            "event_time": pd.date_range(
                "2026-11-20 01:00", periods=n, freq="min", tz="Europe/Berlin"
            ),
            "score": scores,
            "recon_error": np.linspace(0, 1, n),
            "percentile": np.linspace(50, 100, n),
            "is_anomaly": flagged,
            "top_features": top_features_json(
                np.eye(n, 3, dtype=np.float32), ["flow", "rpm", "temp"], 2
            ),
        }
    )


# ================================================================== migrations
def test_migrated_schema_equals_the_orm_metadata(db_url: str) -> None:
    engine = engine_for(db_url)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back_up(db_url: str) -> None:
    engine = engine_for(db_url)
    try:
        assert downgrade(engine, "base") == ("0009", None)
        assert set(inspect(engine).get_table_names()) == set()  # alembic_version too
        assert upgrade(engine) == (None, "0009")
        assert schema_differences(engine) == []
        assert {
            "models",
            "scores",
            "alerts",
            "dead_letters",
            "thresholds",
            "scoring_runs",
            "alert_outbox",
        } <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_keep_the_data_of_a_used_database(db_url: str) -> None:
    # On SQLite, batch mode copies a table and drops the old one: with foreign keys on, the
    # drop failed on a table that rows of another table refer to ('FOREIGN KEY constraint
    # failed'), after the steps before it had been committed (half migrated, and stuck).
    engine = engine_for(db_url)
    keys = [f"topic:0:{i}" for i in range(6)]
    try:
        with engine.connect() as connection:
            model_id, run_id, _ = start(connection, model_version())
            written = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=records(keys, [1.0, 12.0, 3.0, 25.0, 2.0, 11.0]),
                rejects=None,
            )
        assert written.alerts_opened >= 1
        assert downgrade(engine, "0001") == ("0009", "0001")
        assert upgrade(engine) == ("0001", "0009")
        assert schema_differences(engine) == []
        with engine.connect() as connection:
            stored = connection.execute(select(Score.source_key).order_by(Score.id)).scalars()
            assert list(stored) == keys
            assert connection.execute(select(func.count()).select_from(Alert)).scalar_one() >= 1
            if engine.dialect.name == "sqlite":
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
                assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    finally:
        engine.dispose()


def test_the_alembic_command_migrates_a_used_sqlite_database_too(tmp_path: Path) -> None:
    # From a clone, `alembic -x db=URL downgrade 0001` ran without the foreign-key handling of
    # `anomaly-vae db` and failed half-way on a database with alerts.
    url = f"sqlite:///{tmp_path / 'used.db'}"
    engine = engine_for(url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            model_id, run_id, _ = start(connection, model_version())
            keys = [f"topic:0:{i}" for i in range(4)]
            repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=records(keys, [1.0, 12.0, 3.0, 25.0]),
                rejects=None,
            )
    finally:
        engine.dispose()
    for step in ("downgrade", "upgrade"):
        revision = "0001" if step == "downgrade" else "head"
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"db={url}", step, revision],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    engine = engine_for(url)
    try:
        assert schema_differences(engine) == []
        with engine.connect() as connection:
            stored = connection.execute(select(Score.source_key).order_by(Score.id)).scalars()
            assert list(stored) == keys
    finally:
        engine.dispose()


def test_a_database_behind_the_migrations_is_refused(empty_db_url: str) -> None:
    with pytest.raises(SchemaVersionError, match=r"run 'anomaly-vae db upgrade --db "):
        open_database(target_for(empty_db_url))
    engine = engine_for(empty_db_url)
    try:
        upgrade(engine)
        open_database(target_for(empty_db_url)).dispose()  # current: accepted
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff9999'")
        with pytest.raises(SchemaVersionError, match="newer than this anomaly-vae knows"):
            open_database(target_for(empty_db_url))
        with engine.begin() as connection:
            connection.exec_driver_sql(
                f"UPDATE alembic_version SET version_num = '{head_revision()}'"
            )
        downgrade(engine, "base")
        with pytest.raises(SchemaVersionError, match="no anomaly-vae schema yet"):
            open_database(target_for(empty_db_url))
    finally:
        engine.dispose()


# ================================================================ write path
def start(connection: Connection, version: repo.ModelVersion) -> tuple[int, int, int]:
    with connection.begin():
        model_id = repo.register_model(connection, model=version)
        threshold = repo.ensure_calibrated_threshold(connection, model=version, created_by="test")
        run_id = repo.start_run(
            connection,
            kind="batch",
            source="export.csv",
            model_id=model_id,
            threshold_value=threshold.warning,
            threshold_id=threshold.id,
        )
    return model_id, run_id, int(threshold.id)


def test_written_values_come_back_exactly(db_url: str) -> None:
    """Text with separators, quotes, new lines and non-ASCII, an empty entity next to a
    missing one, floats that need 17 digits, JSON with quotes: stored as given."""
    engine = engine_for(db_url)
    awkward = ['pump "7", east', "line\nbreak", "", None, "Zürich ✓"]
    keys = [f"topic:0:{i}" for i in range(5)]
    scores = [0.1 + 0.2, 1 / 3, 1e-300, 12.5, -0.0]
    batch = records(keys, scores)
    batch["entity_key"] = pd.Series(awkward, dtype=object)
    batch.loc[3, "event_time"] = pd.NaT
    batch.loc[0, "event_time"] = pd.Timestamp("1969-07-20T20:17:40.123456Z")  # before 1970
    batch.loc[1, "event_time"] = pd.Timestamp("2026-11-20T10:11:12.000001+05:30")
    batch["top_features"] = [None, '[["a,\\"b\\"",0.5]]', None, '[["é",1.0]]', None]
    written_at = datetime(2026, 11, 27, 21, 30, 5, 987654, tzinfo=timezone.utc)
    rejects = pd.DataFrame(
        {
            "source_key": ["topic:0:9", "topic:0:10"],
            "reason": ["column \"flow\": 'x,y' is not a number", "bad JSON"],
            "raw": ['{"flow": "x,y"}\n', None],
        }
    )
    try:
        with engine.connect() as connection:
            model_id, run_id, _ = start(connection, model_version())
            repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=batch,
                rejects=rejects,
                scored_at=written_at,
            )
            rows = connection.execute(select(Score).order_by(Score.id)).all()
            dead = connection.execute(select(DeadLetter).order_by(DeadLetter.id)).all()
            connection.rollback()
        assert [r.source_key for r in rows] == keys
        assert [r.entity_key for r in rows] == awkward
        assert [r.score for r in rows] == scores
        assert rows[3].event_time is None
        # To the microsecond, in UTC, whatever the offset given.
        assert rows[0].event_time == datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=timezone.utc)
        assert rows[1].event_time == datetime(2026, 11, 20, 4, 41, 12, 1, tzinfo=timezone.utc)
        assert {r.scored_at for r in rows} == {written_at}
        assert {d.rejected_at for d in dead} == {written_at}
        assert [r.is_anomaly for r in rows] == [False, False, False, True, False]
        assert rows[1].top_features == [['a,"b"', 0.5]]
        assert rows[0].top_features is None
        assert [(d.reason, d.raw) for d in dead] == [
            ("column \"flow\": 'x,y' is not a number", '{"flow": "x,y"}\n'),
            ("bad JSON", None),
        ]
    finally:
        engine.dispose()


def staging_table_exists(connection: Connection) -> bool | None:
    """Whether this PostgreSQL session made the replay path's staging table (None: SQLite)."""
    if connection.dialect.name != "postgresql":
        return None
    query = text("SELECT to_regclass('pg_temp.anomaly_vae_incoming_scores') IS NOT NULL")
    exists = bool(connection.execute(query).scalar())
    connection.rollback()  # the next write needs its own transaction
    return exists


def test_write_results_is_idempotent_and_atomic(db_url: str) -> None:
    engine = engine_for(db_url)
    prefix = repo.csv_source_key_prefix("f" * 64)
    keys = [f"{prefix}{row}" for row in range(6)]
    batch = records(keys, [1.0, 12.0, 3.0, 25.0, 2.0, 11.0])
    batch.loc[5, "severity"] = "critical"
    rejects = pd.DataFrame(
        {"source_key": [f"{prefix}6"], "reason": ["'x' is not a number"], "raw": ['{"flow": "x"}']}
    )
    try:
        with engine.connect() as connection:
            model_id, run_id, threshold_id = start(connection, model_version())
            first = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=batch,
                rejects=rejects,
                threshold_id=threshold_id,
            )
            # P1 crosses three times in a row: one alert (the default rule), escalated to
            # critical by its third record; P0 never crosses.
            assert first.alerts_opened == 1
            # The alerts topic's entries: the opening, then the escalation, of P1's alert.
            assert [(a["event"], a["entity_key"]) for a in first.alerts] == [
                ("opened", "P1"),
                ("escalated", "P1"),
            ]
            assert first.alerts[1]["severity"] == "critical"
            assert dataclasses.replace(first, alerts=()) == repo.WriteCounts(
                6, 6, 3, 1, 1, 1, alerts_escalated=1
            )
            # PostgreSQL: a fresh batch is copied straight into the table, no staging table.
            assert staging_table_exists(connection) in (False, None)
            # The same batch again, and an overlapping one: nothing twice.
            again = repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=batch, rejects=rejects
            )
            assert again == repo.WriteCounts(6, 0, 3, 1, 0, 0)  # nothing opens twice
            assert staging_table_exists(connection) in (True, None)  # the replay's way in
            more = records([*keys[4:], f"{prefix}7"], [2.0, 11.0, 30.0])
            third = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=more,
                threshold_id=threshold_id,
            )
            assert (third.scores_inserted, third.alerts_opened) == (1, 1)  # P0 crosses
            assert repo.count_rows(connection, table="scores") == 7
            assert repo.count_rows(connection, table="alerts") == 2
            assert repo.count_rows(connection, table="dead_letters") == 1
            run = connection.execute(select(ScoringRun).where(ScoringRun.id == run_id)).one()
            assert (run.rows_scored, run.rows_inserted, run.rows_rejected) == (15, 7, 2)
            # Rows read grow batch by batch too (they stayed 0 until the run was finished: a
            # stream scorer killed part way said 0 read beside thousands scored).
            assert run.rows_read == 17
            stored = connection.execute(select(Score).where(Score.source_key == keys[1])).one()
            assert stored.top_features == [["rpm", 1.0]]
            # 01:01 in Berlin (UTC+1) is 00:01 UTC; both dialects give it back aware, in UTC.
            assert stored.event_time == datetime(2026, 11, 20, 0, 1, tzinfo=timezone.utc)
            assert stored.event_time.utcoffset().total_seconds() == 0
            assert stored.is_anomaly is True
            assert stored.severity == "warning"
            alerts = connection.execute(select(Alert).order_by(Alert.id)).all()
            assert [a.state for a in alerts] == ["open"] * 2
            assert [(a.entity_key, a.severity) for a in alerts] == [
                ("P1", "critical"),
                ("P0", "warning"),
            ]
            assert alerts[0].threshold_id == threshold_id
            assert alerts[0].rule == {"k": 1, "n": 1, "cooldown_s": 0.0, "resolve_after": 1}
            # A write needs its own transaction (the reads above began one) ...
            with pytest.raises(RuntimeError, match="no transaction in progress"):
                repo.write_results(connection, run_id=run_id, model_id=model_id, records=batch)
            connection.rollback()
            # ... and a failing write leaves nothing behind.
            broken = records([f"{prefix}8", f"{prefix}9"], [50.0, 1.0])
            broken["entity_key"] = "P7"  # opens an alert, on a threshold that does not exist
            with pytest.raises(IntegrityError):
                repo.write_results(
                    connection,
                    run_id=run_id,
                    model_id=model_id,
                    records=broken,
                    threshold_id=threshold_id + 1000,
                )
            assert repo.count_rows(connection, table="scores") == 7
            assert repo.count_rows(connection, table="alerts") == 2
    finally:
        engine.dispose()


def test_alert_events_wait_in_the_outbox_only_when_asked(db_url: str) -> None:
    # The alerts topic is at least once: a batch's alert events are written to the outbox in
    # its transaction (the scorer deletes them once the broker has them), each with an
    # event_id a consumer can drop a second copy by. Without outbox_model (no alerts topic),
    # nothing is written there: the table does not grow.
    engine = engine_for(db_url)
    keys = [f"topic:0:{i}" for i in range(6)]
    try:
        with engine.connect() as connection:
            model_id, run_id, threshold_id = start(connection, model_version())
            quiet = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=records(keys[:2], [1.0, 12.0]),  # P1 crosses: an alert opens
                threshold_id=threshold_id,
            )
            assert quiet.alerts_opened == 1
            assert quiet.outbox == ()
            assert repo.count_rows(connection, table="alert_outbox") == 0
            connection.rollback()
            told = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                # P0 crosses (its alert opens), P1 is normal (its alert resolves), P0 again
                records=records(keys[2:5], [11.0, 2.0, 13.0]),
                threshold_id=threshold_id,
                outbox_model="pumps",
            )
            events = [json.loads(e.value) for e in told.outbox]
            assert [(e["event"], e["entity_key"]) for e in events] == [
                (a["event"], a["entity_key"]) for a in told.alerts
            ]
            assert [(e["event"], e["entity_key"]) for e in events] == [
                ("resolved", "P1"),
                ("opened", "P0"),
            ]
            assert [e.key for e in told.outbox] == [e["entity_key"] for e in events]
            ids = [e["event_id"] for e in events]
            assert len(set(ids)) == 2
            assert all(len(i) == 36 for i in ids)
            assert [e.event_id for e in told.outbox] == ids
            assert [e.id for e in told.outbox] == sorted(e.id for e in told.outbox)
            assert events[0]["opened_at"].endswith("+00:00")  # JSON text, times in ISO 8601
            assert outbox.pending(connection, model_name="pumps") == list(told.outbox)
            assert outbox.pending(connection, model_name="fans") == []
            after_first = outbox.pending(connection, model_name="pumps", after_id=told.outbox[0].id)
            assert after_first == list(told.outbox[1:])
            n, oldest = outbox.count(connection, model_name="pumps")
            assert n == 2
            assert oldest is not None
            assert oldest.tzinfo is not None
            connection.rollback()
            with connection.begin():
                assert outbox.remove(connection, [told.outbox[0].id, told.outbox[0].id]) == 1
            assert outbox.pending(connection, model_name="pumps") == list(told.outbox[1:])
            assert outbox.count(connection)[0] == 1
            connection.rollback()
    finally:
        engine.dispose()


def test_scorers_of_a_model_take_turns_at_publishing_the_outbox(db_url: str) -> None:
    # Scorers started together (--processes N) each published every leftover event at start:
    # on PostgreSQL they now take turns, the next finding the rows the first deleted.
    engine = engine_for(db_url)
    try:
        with outbox.publishing_turn(engine, model_name="pumps") as first:
            if engine.dialect.name != "postgresql":
                assert first is False  # SQLite: no lock (one writer at a time anyway)
                return
            assert first is True
            started = time.monotonic()
            with outbox.publishing_turn(engine, model_name="pumps", wait_s=0.5) as second:
                assert second is False  # waited, then goes on without it
            assert time.monotonic() - started >= 0.5
            with outbox.publishing_turn(engine, model_name="fans", wait_s=0) as other:
                assert other is True  # another model's turn is its own
        with outbox.publishing_turn(engine, model_name="pumps", wait_s=0) as after:
            assert after is True
    finally:
        engine.dispose()


def test_write_results_names_missing_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = engine_for(url)
    upgrade(engine)
    with engine.connect() as connection, pytest.raises(ConfigError, match="'is_anomaly'"):
        repo.write_results(
            connection,
            run_id=1,
            model_id=1,
            records=pd.DataFrame(
                {"source_key": ["a"], "score": [1.0], "recon_error": [0.1], "percentile": [50.0]}
            ),
        )
    engine.dispose()


def test_a_model_directory_moved_and_scored_again_is_registered_at_its_new_path(
    db_url: str,
) -> None:
    # The row kept the first directory a version was scored from: after 'mv models/pumps
    # models/pumps-v3' and scoring from there, 'models list' showed the old path and the API's
    # POST /models/{name}/score answered 409 (the directory is not there) for the version
    # just scored.
    from anomaly_vae.storage.tables import Model

    engine = engine_for(db_url)
    try:
        with engine.begin() as connection:
            first = repo.register_model(connection, model=model_version())
            moved = dataclasses.replace(model_version(), path="/models/pumps-v3")
            assert repo.register_model(connection, model=moved) == first
            path = connection.execute(select(Model.path).where(Model.id == first)).scalar_one()
            assert path == "/models/pumps-v3"
            # A registration without a directory (nothing to load) leaves the known one.
            repo.register_model(connection, model=dataclasses.replace(moved, path=None))
            path = connection.execute(select(Model.path).where(Model.id == first)).scalar_one()
            assert path == "/models/pumps-v3"
    finally:
        engine.dispose()


def test_a_model_name_longer_than_the_database_holds_is_refused_in_one_line(
    db_url: str, tmp_path: Path
) -> None:
    # 'name:' of 250 characters trained, scored to CSV and into SQLite (which stores any
    # length), and PostgreSQL refused the first 'score --db' with "value too long for type
    # character varying(200)", naming neither the name nor what to do.
    from pydantic import ValidationError

    from anomaly_vae.cli.core import load_pipeline
    from anomaly_vae.config import MODEL_NAME_MAX_CHARS, PipelineConfig

    long_name = "n" * (MODEL_NAME_MAX_CHARS + 50)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"name: {long_name}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="name is 250 characters long: at most 200"):
        PipelineConfig.from_yaml(pipeline)
    with pytest.raises(ValidationError):
        PipelineConfig(name=long_name)
    # A model directory saved before the check still loads; a directory's long name is cut.
    assert PipelineConfig.model_validate({"name": long_name}, context={"stored": True})
    assert load_pipeline(None, default_name=long_name).name == "n" * MODEL_NAME_MAX_CHARS
    engine = engine_for(db_url)
    try:
        with engine.begin() as connection:
            with pytest.raises(ConfigError, match="is 250 characters long: the database holds"):
                repo.register_model(connection, model=model_version(name=long_name))
            exact = model_version(name="n" * MODEL_NAME_MAX_CHARS)
            assert repo.register_model(connection, model=exact)
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_a_model_name_of_only_dots_is_refused_as_the_api_cannot_serve_it(
    db_url: str, tmp_path: Path, name: str
) -> None:
    # 'name: ..' trained, saved, scored and was registered by 'score --db', but GET
    # /models/.. is sent as GET / by HTTP clients (dot segments resolved): never served.
    from pydantic import ValidationError

    from anomaly_vae.cli.core import load_pipeline
    from anomaly_vae.config import PipelineConfig

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"name: '{name}'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        PipelineConfig.from_yaml(pipeline)
    assert str(raised.value) == (
        f"pipeline file {pipeline}: name: name must be letters, digits, '-', '_' or '.', and "
        f"not only dots: the HTTP API cannot reach /models/{name} (got {name!r})"
    )
    assert "\n" not in str(raised.value)
    with pytest.raises(ValidationError):
        PipelineConfig(name=name)
    assert PipelineConfig(name=f"pumps{name}v2").name == f"pumps{name}v2"
    # A model directory saved before the check still loads (and scores to CSV); registering
    # it is refused; a directory so named gives no such name.
    assert PipelineConfig.model_validate({"name": name}, context={"stored": True})
    assert load_pipeline(None, default_name=name).name == "default"
    engine = engine_for(db_url)
    try:
        with engine.begin() as connection, pytest.raises(ConfigError) as refused:
            repo.register_model(connection, model=model_version(name=name))
    finally:
        engine.dispose()
    assert str(refused.value) == (
        f"model name {name!r} cannot be served by the HTTP API (/models/{name}): a model name "
        "must be letters, digits, '-', '_' or '.', and not only dots; retrain it with another "
        "'name:' in its pipeline file"
    )


def test_a_run_under_a_threshold_computed_for_another_model_version_is_warned_about(
    db_url: str, tmp_path: Path, trained_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator set '--false-alarm-rate 0.5' on one version; a retrained version (its scores
    # on a scale of their own) was then scored under that level without a word: 62 % of an
    # export flagged, 468 alerts opened, and the summary blamed the export ("unlike the
    # training data").
    from anomaly_vae.storage.sink import model_version_of, start_batch_run

    model = copy.deepcopy(trained_model)
    model.save(tmp_path / "model")
    version = model_version_of(model, path=tmp_path / "model")
    warning = float(np.quantile(version.calibration["scores"], 0.5))
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:

            def start(threshold: float | None = None) -> None:
                start_batch_run(
                    connection,
                    model=model,
                    model_dir=tmp_path / "model",
                    source="export.csv",
                    source_sha256="0" * 64,
                    threshold=threshold,
                )

            start()
            with connection.begin():
                repo.add_threshold(
                    connection,
                    model_name=model.name,
                    policy="false_alarm_rate",
                    warning=warning,
                    parameters={"model_version": "0123456789ab", "rate": 0.001},
                    created_by="ops",
                    reason="before the retraining",
                )
            with caplog.at_level(logging.WARNING):
                start()
            assert (
                f"threshold v2 of {model.name!r} (false_alarm_rate, set by ops) was computed "
                f"from the scores of model version 0123456789ab, and this run scores version "
                f"{version.version}, whose scores have a scale of their own: 50 % of its "
                f"held-out normal records cross it; set one for this version ('anomaly-vae "
                f"thresholds set {model.name} ... --reason ...', or 'thresholds preview' it "
                "first), or give --threshold"
            ) in caplog.text
            caplog.clear()
            # Computed for this version, or a level given for the run: nothing to say.
            with connection.begin():
                repo.add_threshold(
                    connection,
                    model_name=model.name,
                    policy="false_alarm_rate",
                    warning=warning,
                    parameters={"model_version": version.version, "rate": 0.5},
                    created_by="ops",
                    reason="again",
                )
            with caplog.at_level(logging.WARNING):
                start()
                start(threshold=1.0)
            assert "was computed from the scores" not in caplog.text
    finally:
        engine.dispose()


def test_a_value_set_for_another_model_version_is_warned_about_as_a_computed_one(
    db_url: str,
    tmp_path: Path,
    trained_model: AnomalyVAE,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'thresholds set --value 41.7', chosen by looking at one version's scores, stayed in
    # force after a retraining (as it should: scoring never replaces an operator's version)
    # without the warning a quantile set for the old version gets: a fixed value names no
    # model version, so nothing said that the new version's scores have a scale of their own.
    from anomaly_vae.storage.sink import model_version_of, start_batch_run
    from anomaly_vae.storage.tuning import ThresholdChange, ValuePolicy, set_threshold
    from tests.test_cli import run_inline

    model = copy.deepcopy(trained_model)
    model.save(tmp_path / "model")
    version = model_version_of(model, path=tmp_path / "model")
    old = model_version(name=model.name, content_hash="b" * 64)
    warning = float(np.quantile(version.calibration["scores"], 0.5))
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:

            def set_value() -> None:
                with connection.begin():
                    set_threshold(
                        connection,
                        model_name=model.name,
                        change=ThresholdChange(warning=ValuePolicy(value=warning)),
                        created_by="ops",
                        reason="by eye",
                    )

            def start() -> None:
                start_batch_run(
                    connection,
                    model=model,
                    model_dir=tmp_path / "model",
                    source="export.csv",
                    source_sha256="0" * 64,
                )

            with connection.begin():
                repo.register_model(connection, model=old)  # the version in use
            set_value()
            with caplog.at_level(logging.WARNING):
                start()  # the retrained version
            assert (
                f"threshold v1 of {model.name!r} (value, set by ops) was set by hand while "
                f"model version {old.version} was in use, and this run scores version "
                f"{version.version}, whose scores have a scale of their own: 50 % of its "
                "held-out normal records cross it; set one for this version"
            ) in caplog.text
            shown = run_inline(capsys, "thresholds", "show", model.name, "--db", db_url)
            assert shown.returncode == 0, shown.stderr
            assert (
                f"note: set for model version {old.version}; the version in use is "
                f"{version.version}"
            ) in shown.stdout
            caplog.clear()
            set_value()  # the same value, now set for the version in use: a new version
            with caplog.at_level(logging.WARNING):
                start()
            assert "was set by hand" not in caplog.text
            history = repo.list_thresholds(connection, model_name=model.name)
            assert [t.parameters["model_version"] for t in history] == [
                version.version,
                old.version,
            ]
    finally:
        engine.dispose()


def test_an_unregistered_model_name_is_answered_with_the_closest_registered_one(
    db_url: str,
) -> None:
    # 'models show Pumps' said only "no model named 'Pumps' is registered", with 'pumps'
    # registered: letter case, or a typo, left the user to compare names by eye.
    from anomaly_vae.errors import NotFoundError

    engine = engine_for(db_url)
    try:
        with engine.begin() as connection:
            repo.register_model(connection, model=model_version(name="pumps"))
            repo.register_model(connection, model=model_version("Pumps-B", "b" * 64))
            for asked, meant in (("PUMPS", "pumps"), ("pumsp", "pumps"), ("pumps-b", "Pumps-B")):
                with pytest.raises(NotFoundError) as caught:
                    repo.registered_versions(connection, name=asked)
                assert str(caught.value) == (
                    f"no model named {asked!r} is registered (did you mean {meant!r}?)"
                )
            with pytest.raises(NotFoundError) as caught:
                repo.registered_versions(connection, name="fans")
            assert str(caught.value) == "no model named 'fans' is registered"
    finally:
        engine.dispose()


def test_thresholds_are_versioned_and_the_newest_is_in_force(db_url: str) -> None:
    engine = engine_for(db_url)
    try:
        with engine.begin() as connection:
            v1 = model_version()
            repo.register_model(connection, model=v1)
            first = repo.ensure_calibrated_threshold(connection, model=v1, created_by="test")
            assert (first.version, first.policy, first.warning) == (1, "quantile", 10.0)
            assert first.parameters["from"] == "model calibration"
            same = repo.ensure_calibrated_threshold(connection, model=v1, created_by="test")
            assert same.id == first.id
            # A retrained model version brings its own calibrated threshold ...
            v2 = model_version(content_hash="b" * 64)
            second = repo.ensure_calibrated_threshold(connection, model=v2, created_by="test")
            assert second.version == 2
            assert second.parameters["model_version"] == "b" * 12
            # ... but never replaces one an operator set.
            manual = repo.add_threshold(
                connection,
                model_name="pumps",
                policy="fixed",
                warning=14.0,
                critical=20.0,
                created_by="alice",
                reason="too many alerts on P3",
            )
            assert manual.version == 3
            v3 = model_version(content_hash="c" * 64)
            kept = repo.ensure_calibrated_threshold(connection, model=v3, created_by="test")
            assert kept.id == manual.id
            history = repo.list_thresholds(connection, model_name="pumps")
            assert [t.version for t in history] == [3, 2, 1]
            assert repo.list_thresholds(connection, model_name="other") == []
    finally:
        engine.dispose()


def test_two_writers_of_a_threshold_version_take_turns(db_url: str) -> None:
    """A second change made while a first one is uncommitted (two API processes, a CLI and
    an API) waits for it and becomes the next version, not a unique-key failure (which the
    API answered as 'database unavailable', 503)."""
    import threading

    from anomaly_vae.storage.tuning import ThresholdChange, ValuePolicy, set_threshold

    engine = engine_for(db_url)
    other = engine_for(db_url)
    try:
        with engine.begin() as connection:
            repo.register_model(connection, model=model_version())
            repo.ensure_calibrated_threshold(connection, model=model_version(), created_by="t")

        def change(connection: Connection, value: float) -> None:
            set_threshold(
                connection,
                model_name="pumps",
                change=ThresholdChange(warning=ValuePolicy(value=value)),
                created_by="ops",
                reason=f"to {value}",
            )

        errors: list[BaseException] = []

        def second() -> None:
            try:
                with other.begin() as connection:
                    change(connection, 12.0)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        with engine.begin() as connection:
            change(connection, 11.0)
            racer = threading.Thread(target=second)
            racer.start()
            racer.join(timeout=1.0)  # it waits for this transaction
        racer.join(timeout=60)
        assert errors == []
        with engine.connect() as connection:
            history = repo.list_thresholds(connection, model_name="pumps")
        assert [(t.version, t.warning) for t in history] == [(3, 12.0), (2, 11.0), (1, 10.0)]
    finally:
        engine.dispose()
        other.dispose()


def test_a_threshold_change_that_changes_nothing_adds_no_version(db_url: str) -> None:
    """A change retried (a PATCH resent by a client, a script run twice) added a version
    each time, identical to the one in force: the history filled with copies, and live
    scorers were told of a change that was none."""
    from anomaly_vae.storage.tuning import (
        ThresholdChange,
        ValuePolicy,
        rollback_threshold,
        set_threshold,
    )

    engine = engine_for(db_url)
    try:
        with engine.begin() as connection:
            repo.register_model(connection, model=model_version())
            repo.ensure_calibrated_threshold(connection, model=model_version(), created_by="t")

        def change(**given: Any) -> Any:
            with engine.begin() as connection:
                return set_threshold(
                    connection,
                    model_name="pumps",
                    change=ThresholdChange(**given),
                    created_by="ops",
                    reason="r",
                )

        def rollback(to: int) -> Any:
            with engine.begin() as connection:
                return rollback_threshold(
                    connection, model_name="pumps", to_version=to, created_by="ops", reason="r"
                )

        # The rule in force restated on the calibrated threshold: it stays the calibrated one.
        restated = change(alert_rule_changes={"k": 1})
        assert (restated.created, restated.row.version) == (False, 1)
        assert restated.row.parameters["from"] == repo.FROM_CALIBRATION
        first = change(warning=ValuePolicy(value=12.0), alert_rule_changes={"cooldown_s": 60})
        again = change(warning=ValuePolicy(value=12.0), alert_rule_changes={"cooldown_s": 60})
        assert (first.created, first.row.version) == (True, 2)
        assert (again.created, again.row.version) == (False, 2)
        assert again.row.reason == "r"
        assert change(alert_rule_changes={"cooldown_s": 60.0}).created is False
        assert change(clear_critical=True).created is False  # there is none
        assert change(alert_rule_changes={"cooldown_s": 120}).row.version == 3
        back = rollback(2)
        assert (back.created, back.row.version) == (True, 4)
        retried = rollback(2)  # v4 is v2's settings already
        assert (retried.created, retried.row.version) == (False, 4)
        in_force = rollback(4)  # the version in force itself: nothing to do, not an error
        assert (in_force.created, in_force.row.version) == (False, 4)
        with engine.connect() as connection:
            history = repo.list_thresholds(connection, model_name="pumps")
        assert [t.version for t in history] == [4, 3, 2, 1]
    finally:
        engine.dispose()


def test_top_features_json_matches_the_lists() -> None:
    rng = np.random.default_rng(0)
    shares = rng.random((50, 5)).astype(np.float32)
    shares[3] = 0
    shares /= np.maximum(shares.sum(axis=1, keepdims=True), 1e-9)
    names = ["flow", 'odd "name"', "rpm", "temp", "vibration"]
    texts = top_features_json(shares, names, 3)
    lists = top_features_list(shares, names, 3)
    assert [json.loads(t) for t in texts] == [[[c, s] for c, s in row] for row in lists]
    assert json.loads(texts[3]) == []


# ===================================================================== URLs
def test_url_precedence() -> None:
    env = {ENV_VAR: "postgresql://env@db.example/anomalies"}
    chosen = resolve_database_url("sqlite:///cli.db", environ=env, pipeline_url="sqlite:///p.db")
    assert (chosen.origin, chosen.url.database) == ("--db", "cli.db")
    chosen = resolve_database_url(None, environ=env, pipeline_url="sqlite:///p.db")
    assert chosen.origin == ENV_VAR
    assert chosen.url.drivername == "postgresql+psycopg"  # plain postgresql:// takes psycopg 3
    chosen = resolve_database_url(
        None, environ={}, pipeline_url="sqlite:///p.db", pipeline_path="pipe.yaml"
    )
    assert (chosen.origin, chosen.url.database) == ("pipeline file pipe.yaml", "p.db")
    chosen = resolve_database_url(None, environ={})
    assert (chosen.origin, chosen.display) == ("default", DEFAULT_URL)
    # Set but empty (a secret not injected) is refused, not replaced by the default.
    with pytest.raises(DatabaseURLError, match="is set but empty"):
        resolve_database_url(None, environ={ENV_VAR: ""})


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "malformed database URL"),
        ("postgresql://bob:s3cret@db.example:port/anomalies", "a port must be a number"),
        ("mysql://bob:s3cret@db.example/anomalies", "unsupported database 'mysql'"),
        ("postgresql://bob:s3cret@db.example:5432", "names no database"),
        ("bob:s3cret@db.example/anomalies", "malformed database URL"),
        ("postgresql://bob:s3cret@s3cret2@db.example/anomalies", "must be written %40"),
        ("postgres://bob:s3cret@s3cret2@db.example:x/anomalies", "a port must be a number"),
        # No file: an in-memory database, "migrated" by 'db upgrade' and gone when it ended.
        ("sqlite://", "names no SQLite file"),
        ("sqlite:///", "names no SQLite file"),
        ("sqlite:///:memory:", "names no SQLite file"),
    ],
)
def test_bad_urls_give_one_masked_line(url: str, needle: str) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        parse_database_url(url)
    message = str(caught.value)
    assert needle in message
    assert "s3cret" not in message
    assert "\n" not in message


def test_masked_hides_the_password() -> None:
    assert masked(parse_database_url("postgresql://bob:s3cret@h/db")) == (
        "postgresql+psycopg://bob:***@h/db"
    )
    assert masked("postgresql://bob:s3cret@h:x/db") == "postgresql://bob:***@h:x/db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bob@h/db?password=s3cret",
        "postgresql://bob@h/db?sslmode=require&PASSWORD=s3cret&application_name=x",
        "postgresql://bob@h/db?sslpassword=s3cret",
    ],
)
def test_masked_hides_a_password_given_as_a_query_parameter(url: str) -> None:
    # libpq takes ?password=...: the URL connects, and its display must not show it.
    target = target_for(url)
    assert "s3cret" not in target.display
    assert "=***" in target.display
    assert "s3cret" not in masked(url)
    assert "s3cret" not in masked(url.replace("/db?", ":x/db?"))  # unparsable: still masked


def test_a_query_parameter_password_is_masked_in_connection_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    target = target_for("postgresql://bob@127.0.0.1:1/anomalies?password=s3cret")
    with pytest.raises(DatabaseConnectionError) as caught:
        open_database(target)
    assert "connection refused" in str(caught.value)
    assert "s3cret" not in str(caught.value) + caplog.text
    with pytest.raises(DatabaseURLError) as bad:
        parse_database_url("postgresql://bob@h:port/db?password=s3cret")
    assert "s3cret" not in str(bad.value)


def test_unreachable_server_is_one_line_naming_the_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    target = target_for("postgresql://bob:s3cret@127.0.0.1:1/anomalies")
    with pytest.raises(DatabaseConnectionError) as caught:
        open_database(target)
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "connection refused" in message
    assert "bob:***@" in message
    assert "s3cret" not in message + caplog.text
    assert "\n" not in message


def test_missing_sqlite_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatabaseConnectionError, match="does not exist"):
        open_database(target_for(f"sqlite:///{tmp_path / 'nowhere' / 'r.db'}"))


_CREATE_SCRIPT = """
import sys, time
from anomaly_vae.storage.engine import DatabaseTarget, open_database, parse_database_url
target = DatabaseTarget(parse_database_url(sys.argv[1]), "--db")
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
open_database(target, create_missing=True).dispose()
"""


def test_processes_creating_one_sqlite_file_at_once_all_use_it(tmp_path: Path) -> None:
    """``stream --processes N`` on a SQLite file that does not exist yet: N processes create it
    at the same moment. Each must end up using one database at the latest schema (a process
    failing 'database is locked', or reading a half-migrated file, stopped a scorer)."""
    path = tmp_path / "shared.db"
    url = f"sqlite:///{path}"
    start_at = time.time() + 3.0
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE_SCRIPT, url, str(start_at)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err for _, err in outcomes]
    with engine_for(url).connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
    assert sorted(p.name for p in tmp_path.iterdir() if "creating" in p.name) == []


def test_a_created_sqlite_file_appears_only_once_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema is built under another name: while it is migrated, the database's own name
    holds nothing another process could open half-built."""
    import anomaly_vae.storage.migrate as migrate

    path = tmp_path / "results.db"
    seen: list[bool] = []
    real_upgrade = migrate.upgrade

    def watching(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
        out = real_upgrade(engine, revision)
        seen.append(path.exists())
        return out

    monkeypatch.setattr(migrate, "upgrade", watching)
    open_database(target_for(f"sqlite:///{path}"), create_missing=True).dispose()
    assert seen == [False]
    assert [p.name for p in tmp_path.iterdir()] == ["results.db"]  # nothing left beside it
    with engine_for(f"sqlite:///{path}").connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()


def test_a_connection_cut_part_way_is_one_line_saying_to_run_again(
    postgres_databases: Callable[[], str],
) -> None:
    # pg_terminate_backend (an administrator, a failover) under a running command: "cannot
    # connect ...: the connection is lost" said nothing of what to do.
    from sqlalchemy.exc import DBAPIError

    from anomaly_vae.storage.engine import connection_error

    target = target_for(postgres_databases())
    engine = create_database_engine(target.url)
    admin = create_database_engine(target.url)
    try:
        with engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
            with pytest.raises(DBAPIError) as caught:
                connection.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
        admin.dispose()
    message = str(connection_error(caught.value, target))
    assert message.startswith(f"lost the connection to PostgreSQL at {target.where} (")
    assert "run the command again" in message
    assert "\n" not in message


def test_missing_postgres_database_is_one_line(postgres_databases: object) -> None:
    target = target_for("postgresql://postgres@127.0.0.1:5432/anomaly_vae_no_such_db")
    with pytest.raises(DatabaseConnectionError, match="'anomaly_vae_no_such_db' does not exist"):
        open_database(target)


def test_wrong_password_is_one_masked_line(password_postgres: tuple[str, int]) -> None:
    host, port = password_postgres
    target = target_for(f"postgresql://alice:wrong-s3cret@{host}:{port}/postgres")
    with pytest.raises(DatabaseConnectionError) as caught:
        open_database(target)
    message = str(caught.value)
    assert f"{host}:{port}" in message
    assert "password authentication failed for user 'alice'" in message
    assert "wrong-s3cret" not in message
    assert "\n" not in message
    # The right password gets in (the server really checks it).
    good = target_for(f"postgresql://alice:right-pw@{host}:{port}/postgres")
    with pytest.raises(SchemaVersionError):
        open_database(good)


def test_timestamp_texts_match_numpy_over_the_whole_range() -> None:
    rng = np.random.default_rng(0)
    micros = rng.integers(-62_135_596_800_000_000, 253_402_300_799_999_999, 50_000)
    micros[:4] = [0, -1, 951_782_400_000_000, 253_402_300_799_999_999]  # 2000-02-29, 9999
    expected = np.char.replace(
        np.datetime_as_string(micros.astype("datetime64[us]"), unit="us"), "T", " "
    )
    assert (repo.utc_timestamp_texts(micros) == expected).all()
    with pytest.raises(ValueError, match="years 1 to 9999"):
        repo.utc_timestamp_texts(np.array([253_402_300_800_000_000]))


def test_upgrade_from_0001_keeps_the_thresholds(db_url: str) -> None:
    engine = engine_for(db_url)
    try:
        downgrade(engine, "base")
        upgrade(engine, "0001")
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO thresholds (model_name, version, policy, warning, critical, "
                "parameters, created_by, reason, created_at) VALUES ('pumps', 1, 'value', 9.5, "
                "NULL, '{}', 'ops', 'before 0002', '2026-11-01 00:00:00+00:00')"
            )
        assert upgrade(engine) == ("0001", "0009")
        assert schema_differences(engine) == []
        with engine.connect() as connection:
            row = repo.threshold_in_force(connection, model_name="pumps")
        assert row is not None
        assert (row.warning, row.reason, row.alert_rule) == (9.5, "before 0002", None)
    finally:
        engine.dispose()


def test_a_new_version_reading_other_features_under_the_same_name_is_warned(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Two unrelated models trained into directories of the same name (runs/a/model and
    # runs/b/model: both named 'model') registered as two versions of one model without a
    # word, sharing the threshold an operator set for the first and its alerts.
    def schema(*names: str) -> dict[str, object]:
        return {"columns": [{"name": n, "kind": "numeric"} for n in names]}

    first = dataclasses.replace(
        model_version("model", "a" * 64), path="/runs/a/model", feature_schema=schema("flow")
    )
    retrained = dataclasses.replace(first, content_hash="b" * 64)  # same features
    other = dataclasses.replace(
        model_version("model", "c" * 64),
        path="/runs/b/model",
        feature_schema=schema("c0", "c1", "c2", "c3", "c4", "c5"),
    )
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection, caplog.at_level(logging.WARNING):
            for version in (first, retrained, first):
                with connection.begin():
                    repo.register_model(connection, model=version)
            assert "reads other features" not in caplog.text
            with connection.begin():
                repo.register_model(connection, model=other)
            warned = [r.getMessage() for r in caplog.records if "other features" in r.message]
            assert len(warned) == 1
            assert warned[0].startswith(
                "model 'model' version cccccccccccc (/runs/b/model) reads other features than "
                "version bbbbbbbbbbbb (/runs/a/model), the newest of that name (new 'c0', 'c1', "
                "'c2', 'c3', 'c4', ...; no longer 'flow'): they share one threshold"
            )
            assert "'name:' in the pipeline file" in warned[0]
            with connection.begin():  # registered once: scoring with it again says nothing
                repo.register_model(connection, model=other)
            assert sum("other features" in r.getMessage() for r in caplog.records) == 1
    finally:
        engine.dispose()


def assert_probes_unique_index(connection: Connection, model_id: int, keys: list[str]) -> None:
    from anomaly_vae.storage.alerting import _score_ids, _score_ids_statement

    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + _score_ids_statement(), {"model_id": model_id, "keys": keys}, prepare=False
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    # A probe of the unique index per key (an index scan or a one-key bitmap), never a scan
    # of the table or of the model's rows through the entity index.
    assert "Index Cond: ((source_key)::text = (k.key)::text)" in plan, plan
    assert "uq_scores_source_key_model_id" in plan, plan
    assert "Seq Scan on scores" not in plan, plan
    assert "ix_scores_model_id_entity_key" not in plan, plan
    ids = _score_ids(connection, model_id, keys)
    assert sorted(ids) == sorted(keys)
    connection.rollback()


def test_score_id_lookups_probe_the_unique_index_whatever_the_statistics(
    postgres_databases: Callable[[], str],
) -> None:
    """The alert rule looks up the ids of the rows that opened or resolved alerts: one probe
    of the unique index per key, also when the table's statistics are older than its rows (a
    table filled since its last analysis; a new model's id, which the statistics have never
    seen). Planned from such statistics, a lookup by ``model_id`` read every row of the
    model, a cost that grew with the table."""
    from anomaly_vae.storage.alerting import _score_ids

    url = postgres_databases()
    engine = engine_for(url)
    try:
        upgrade(engine)
        n = 20_000
        with engine.connect() as connection:
            connection.exec_driver_sql("ALTER TABLE scores SET (autovacuum_enabled = false)")
            connection.commit()
            first, run_id, _ = start(connection, model_version())
            second, other_run, _ = start(connection, model_version("valves", "b" * 64))
            wanted = [f"sensors:0:{i}" for i in range(0, n, n // 200)]
            # Never analysed; then statistics that know the first model's rows only.
            for model_id, run, checked in ((first, run_id, [first]), (second, other_run, [])):
                keys = [f"sensors:0:{i}" for i in range(n)]
                batch = records(keys, [1.0] * n)
                batch["event_time"] = pd.Timestamp("2026-11-20", tz="UTC")
                repo.write_results(connection, run_id=run, model_id=model_id, records=batch)
                for model in checked or [first, second]:
                    assert_probes_unique_index(connection, model, wanted)
                connection.exec_driver_sql("ANALYZE scores")
                connection.commit()
            connection.rollback()
            both = (
                _score_ids(connection, first, wanted[:3]),
                _score_ids(connection, second, wanted[:3]),
            )
            assert set(both[0].values()).isdisjoint(both[1].values())  # each model's own rows
            connection.rollback()
    finally:
        engine.dispose()


def test_stored_flags_of_a_file_scored_again_are_read_by_probes_of_the_unique_index(
    postgres_databases: Callable[[], str],
) -> None:
    """A file scored again ('score --db' after an interrupted run, or twice) counts the rows
    already stored whose flags differ from this run's. That lookup by ``model_id`` and a list
    of keys, planned from statistics older than the rows (a table filled since its last
    analysis), read every row of the model for each 500 keys: re-scoring 300,000 stored rows
    took over a minute against 4 s for the first run, and grew with the table. One probe of
    the unique index per key, whatever the statistics say."""
    from anomaly_vae.storage.repository import _kept_flags_statement

    url = postgres_databases()
    engine = engine_for(url)
    try:
        upgrade(engine)
        n = 20_000
        with engine.connect() as connection:
            connection.exec_driver_sql("ALTER TABLE scores SET (autovacuum_enabled = false)")
            connection.commit()
            model_id, run_id, _ = start(connection, model_version())
            keys = [f"export:{i}" for i in range(n)]
            repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=records(keys, [1.0] * n)
            )
            _, again, _ = start(connection, model_version())
            asked = [*keys[::100], "export:not-stored"]
            raw = connection.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor:
                cursor.execute(
                    "EXPLAIN " + _kept_flags_statement(),
                    {"model_id": model_id, "run_id": again, "keys": asked},
                    prepare=False,
                )
                plan = "\n".join(row[0] for row in cursor.fetchall())
            connection.rollback()
            assert "Index Cond: ((source_key)::text = (k.key)::text)" in plan, plan
            assert "uq_scores_source_key_model_id" in plan, plan
            assert "Seq Scan on scores" not in plan, plan
            assert "ix_scores_model_id_entity_key" not in plan, plan
            # Stored unflagged; now 5 of them flagged, one with a severity: 5 differ.
            now = records(asked, [1.0] * len(asked))
            now["severity"] = None
            now.loc[:4, "is_anomaly"] = True
            now.loc[0, "severity"] = "critical"
            kept = repo.kept_with_other_flags(
                connection, model_id=model_id, run_id=again, records=now
            )
            assert kept == 5
            # The run's own rows are not counted as stored before it.
            assert (
                repo.kept_with_other_flags(
                    connection, model_id=model_id, run_id=run_id, records=now
                )
                == 0
            )
    finally:
        engine.dispose()


def test_without_pgpq_postgresql_gets_the_same_rows_through_csv(
    postgres_databases: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgpq has no wheel for every platform (none for Linux on ARM): without it, the same
    rows go to PostgreSQL as CSV, fresh batches and replays alike, and come back the same."""
    assert repo._copy_format.__wrapped__() == "binary"  # not cached: what this machine has
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "pgpq", None)  # import pgpq raises ImportError
        assert repo._copy_format.__wrapped__() == "csv"
    formats: list[str] = []
    payload = repo._copy_payload

    def spy(table_name: str, columns: repo.Columns, copy_format: str) -> bytes:
        formats.append(copy_format)
        return payload(table_name, columns, copy_format)

    monkeypatch.setattr(repo, "_copy_format", lambda: "csv")
    monkeypatch.setattr(repo, "_copy_payload", spy)
    for check in (
        test_written_values_come_back_exactly,
        test_write_results_is_idempotent_and_atomic,
    ):
        url = postgres_databases()
        engine = engine_for(url)
        upgrade(engine)
        engine.dispose()
        check(url)
    assert formats
    assert set(formats) == {"csv"}
