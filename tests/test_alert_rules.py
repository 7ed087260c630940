"""Alert rules in the write path, on real SQLite files and a real PostgreSQL: the decisions do
not depend on how records are cut into batches, agree with ``thresholds.preview``, survive
replays without doubling, respect what operators did, and hold with concurrent writers."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from anomaly_vae.config import AlertsConfig
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from anomaly_vae.storage.tables import Alert
from anomaly_vae.thresholds import SEVERITY_NAMES, AlertRule, Thresholds, preview

pytestmark = pytest.mark.integration

THRESHOLDS = Thresholds(warning=10.0, critical=20.0)
RULE = AlertRule(k=2, n=3, cooldown_s=60.0, resolve_after=2)


def engine_for(url: str) -> Engine:
    return create_database_engine(parse_database_url(url))


def stream_of_records(n: int, *, seed: int, entities: int = 3) -> pd.DataFrame:
    """Interleaved entities, 10 s apart, with bursts of crossings (some critical)."""
    rng = np.random.default_rng(seed)
    score = rng.normal(5.0, 2.0, n)
    bursts = rng.random(n) < 0.12
    score[bursts] = rng.uniform(11.0, 26.0, int(bursts.sum()))
    flags = THRESHOLDS.severity(score)
    return pd.DataFrame(
        {
            "source_key": [f"t:0:{i}" for i in range(n)],
            "entity_key": [f"P{i % entities}" for i in range(n)],
            "event_time": pd.Timestamp("2026-11-20T00:00Z")
            + pd.to_timedelta(10 * np.arange(n), "s"),
            "score": score,
            "recon_error": np.zeros(n),
            "percentile": np.zeros(n),
            "is_anomaly": flags > 0,
            "severity": np.asarray([None, "warning", "critical"], dtype=object)[flags],
        }
    )


def start(connection: Connection, rule: AlertRule = RULE, name: str = "pumps") -> tuple[int, int]:
    version = repo.ModelVersion(
        name=name,
        content_hash=name[0] * 64,
        path=None,
        score_kind="neg_elbo",
        threshold=THRESHOLDS.warning,
        threshold_quantile=0.995,
        feature_schema={},
        training_summary={},
        calibration={"threshold": THRESHOLDS.warning},
        package_version=None,
        created_at=None,
    )
    with connection.begin():
        model_id = repo.register_model(connection, model=version)
        threshold = repo.ensure_calibrated_threshold(
            connection, model=version, created_by="test", alert_rule=rule.to_dict()
        )
        run_id = repo.start_run(
            connection,
            kind="stream",
            source="test",
            model_id=model_id,
            threshold_value=threshold.warning,
            threshold_id=threshold.id,
        )
    return model_id, run_id


def write_in_batches(
    connection: Connection,
    frame: pd.DataFrame,
    size: int,
    rule: AlertRule = RULE,
    name: str = "pumps",
) -> tuple[int, int]:
    model_id, run_id = start(connection, rule, name)
    for begin in range(0, len(frame), size):
        repo.write_results(
            connection,
            run_id=run_id,
            model_id=model_id,
            records=frame.iloc[begin : begin + size],
            alert_rule=rule,
        )
    return model_id, run_id


def decisions(connection: Connection) -> list[tuple[str, str | None, str, str]]:
    """(opening key, resolving key, severity, state) of every alert, oldest first."""
    rows = connection.exec_driver_sql(
        "SELECT o.source_key, r.source_key, a.severity, a.state FROM alerts a "
        "JOIN scores o ON o.id = a.score_id LEFT JOIN scores r ON r.id = a.resolved_score_id "
        "ORDER BY a.id"
    )
    out = [(str(o), None if r is None else str(r), str(sev), str(st)) for o, r, sev, st in rows]
    connection.rollback()  # end the read's transaction: writes begin their own
    return out


def expected(frame: pd.DataFrame, rule: AlertRule = RULE) -> list[tuple[object, ...]]:
    """(opening key, resolving key, severity) of the alerts the pure preview decides."""
    replay = preview(
        frame.rename(columns={"entity_key": "entity", "event_time": "time"}), THRESHOLDS, rule
    )
    keys = frame.sort_values("event_time", kind="stable")["source_key"].tolist()
    alerts: list[list[object]] = []
    current: dict[str, list[object]] = {}
    for event in replay.events:
        if event.kind == "open":
            current[event.entity] = [keys[event.index], None, SEVERITY_NAMES[event.severity]]
            alerts.append(current[event.entity])
        elif event.kind == "escalate":
            current[event.entity][2] = "critical"
        else:
            current[event.entity][1] = keys[event.index]
    return [tuple(a) for a in alerts]


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_decisions_do_not_depend_on_batches_and_agree_with_preview(db_url: str, size: int) -> None:
    frame = stream_of_records(300, seed=5)
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            write_in_batches(connection, frame, size)
            got = decisions(connection)
    finally:
        engine.dispose()
    want = expected(frame)
    assert len(want) >= 5  # the rule opened, escalated and resolved something
    assert any(w[1] for w in want)
    assert any(w[2] == "critical" for w in want)
    assert [g[:3] for g in got] == want
    assert {g[3] for g in got} <= {"open", "resolved"}
    assert all((g[3] == "resolved") == (g[1] is not None) for g in got)


def test_replayed_and_overlapping_batches_open_nothing_twice(db_url: str) -> None:
    frame = stream_of_records(200, seed=6)
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = write_in_batches(connection, frame.iloc[:120], 40)
            before = decisions(connection)
            again = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=frame.iloc[40:80],
                alert_rule=RULE,
            )
            assert (again.scores_inserted, again.alerts_opened) == (0, 0)
            assert (again.alerts_escalated, again.alerts_resolved) == (0, 0)
            assert decisions(connection) == before
            # A replay cut differently: half stored already, half new (a new run, as after a
            # restart); then the rest. Same decisions as writing it all once.
            _, second_run = start(connection)
            for begin in (100, 150):
                repo.write_results(
                    connection,
                    run_id=second_run,
                    model_id=model_id,
                    records=frame.iloc[begin : begin + 50],
                    alert_rule=RULE,
                )
            got = decisions(connection)
    finally:
        engine.dispose()
    assert [g[:3] for g in got] == expected(frame)


def test_a_replay_cut_differently_judges_only_its_new_rows(db_url: str) -> None:
    # Half of a replayed batch already stored: only the other half may move the rule. Judging
    # the stored crossing again (as if every row were new) opened a second alert for it.
    rule = AlertRule(k=1, n=1, cooldown_s=0.0, resolve_after=1)
    t0 = pd.Timestamp("2026-11-20T00:00Z")
    scores = np.asarray([12.0, 1.0, 1.0, 1.0])
    frame = pd.DataFrame(
        {
            "source_key": [f"k{i}" for i in range(4)],
            "entity_key": ["P1"] * 4,
            "event_time": [t0 + pd.Timedelta(seconds=i) for i in range(4)],
            "score": scores,
            "recon_error": np.zeros(4),
            "percentile": np.zeros(4),
            "is_anomaly": scores > 10,
        }
    )
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection, rule)
            first = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=frame.iloc[:2],
                alert_rule=rule,
            )
            assert (first.alerts_opened, first.alerts_resolved) == (1, 1)
            before = decisions(connection)
            _, second_run = start(connection, rule)
            again = repo.write_results(
                connection, run_id=second_run, model_id=model_id, records=frame, alert_rule=rule
            )
            assert again.scores_inserted == 2
            assert (again.alerts_opened, again.alerts_resolved) == (0, 0)
            assert decisions(connection) == before
    finally:
        engine.dispose()
    assert before == [("k0", "k1", "warning", "resolved")]


def test_operators_acknowledge_and_resolve(db_url: str) -> None:
    rule = AlertRule(k=1, n=1, cooldown_s=0.0, resolve_after=3)
    t0 = pd.Timestamp("2026-11-20T00:00Z")

    def batch(first: int, scores: list[float]) -> pd.DataFrame:
        n = len(scores)
        s = np.asarray(scores)
        return pd.DataFrame(
            {
                "source_key": [f"k{first + i}" for i in range(n)],
                "entity_key": ["P1"] * n,
                "event_time": [t0 + pd.Timedelta(seconds=first + i) for i in range(n)],
                "score": s,
                "recon_error": np.zeros(n),
                "percentile": np.zeros(n),
                "is_anomaly": s > 10,
            }
        )

    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection, rule)

            def write(frame: pd.DataFrame) -> repo.WriteCounts:
                return repo.write_results(
                    connection, run_id=run_id, model_id=model_id, records=frame, alert_rule=rule
                )

            assert write(batch(0, [12.0, 1.0])).alerts_opened == 1
            with connection.begin():
                connection.execute(update(Alert).values(state="acknowledged"))
            # Acknowledged is still in progress: a crossing joins it, and the normal streak
            # restarts; three normal records in a row resolve it.
            counts = write(batch(2, [15.0, 1.0, 1.0]))
            assert (counts.alerts_opened, counts.alerts_resolved) == (0, 0)
            assert write(batch(5, [1.0])).alerts_resolved == 1
            assert write(batch(6, [14.0])).alerts_opened == 1
            # Resolved by a person: the next crossing opens a new alert.
            with connection.begin():
                connection.execute(
                    update(Alert)
                    .where(Alert.state == "open")
                    .values(
                        state="resolved", resolved_by="ops", resolved_at=datetime.now(timezone.utc)
                    )
                )
            assert write(batch(7, [13.0])).alerts_opened == 1
            states = connection.execute(
                select(Alert.state, Alert.resolved_by).order_by(Alert.id)
            ).all()
    finally:
        engine.dispose()
    assert [tuple(s) for s in states] == [
        ("resolved", "alert-rule"),
        ("resolved", "ops"),
        ("open", None),
    ]


def test_concurrent_writers_never_open_two_alerts_for_one_entity(
    postgres_databases: object,
) -> None:
    """Two scorer processes whose partitions share entities: in each round both write a
    crossing record of the same new entity at the same moment; one alert each, never two."""
    from anomaly_vae.storage.migrate import upgrade

    url = str(postgres_databases())  # type: ignore[operator]
    engine = engine_for(url)
    upgrade(engine)
    rule = AlertRule(k=1, n=1, resolve_after=1_000_000)  # opens once, never resolves
    rounds = 25
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    try:
        with engine.connect() as connection:
            model_id, _ = start(connection, rule)

        def writer(who: int) -> None:
            try:
                with engine.connect() as connection:
                    _, run_id = start(connection, rule)
                    for r in range(rounds):
                        frame = stream_of_records(4, seed=r, entities=1)
                        frame["source_key"] = [f"w{who}:{r}:{i}" for i in range(4)]
                        frame["entity_key"] = f"E{r}"
                        frame["is_anomaly"] = True
                        frame["severity"] = "warning"
                        barrier.wait(timeout=30)
                        repo.write_results(
                            connection,
                            run_id=run_id,
                            model_id=model_id,
                            records=frame,
                            alert_rule=rule,
                        )
            except BaseException as exc:  # reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        with engine.connect() as connection:
            per_entity = connection.exec_driver_sql(
                "SELECT entity_key, count(*) FROM alerts GROUP BY entity_key"
            ).all()
    finally:
        engine.dispose()
    assert len(per_entity) == rounds
    assert {int(n) for _, n in per_entity} == {1}


def test_the_pipeline_rule_goes_with_calibrated_thresholds_until_an_operator_sets_one(
    db_url: str,
) -> None:
    engine = engine_for(db_url)
    other = AlertRule(k=3, n=5, cooldown_s=600.0, resolve_after=10)
    try:
        with engine.connect() as connection:
            start(connection, RULE)
            start(connection, RULE)  # the same rule: no new version
            start(connection, other)  # the pipeline's rule changed: a new calibrated version
            with connection.begin():
                repo.add_threshold(
                    connection,
                    model_name="pumps",
                    policy="value",
                    warning=12.0,
                    alert_rule=RULE.to_dict(),
                    created_by="ops",
                    reason="by hand",
                )
            start(connection, other)  # an operator's version stays in force
            history = repo.list_thresholds(connection, model_name="pumps")
    finally:
        engine.dispose()
    assert [(t.version, t.policy, AlertRule.from_dict(t.alert_rule)) for t in history] == [
        (3, "value", RULE),
        (2, "quantile", other),
        (1, "quantile", RULE),
    ]


def test_the_pipeline_alerts_section_is_checked(tmp_path: Path) -> None:
    from anomaly_vae.config import PipelineConfig
    from anomaly_vae.errors import ConfigError

    path = tmp_path / "p.yaml"
    path.write_text("alerts:\n  k: 3\n  n: 2\n")
    with pytest.raises(ConfigError, match=r"alerts: k \(3\) must not exceed n \(2\)"):
        PipelineConfig.from_yaml(path)
    path.write_text("alerts:\n  k: 1\n  window: 2\n")
    with pytest.raises(ConfigError, match=r"alerts\.window: Extra inputs are not permitted"):
        PipelineConfig.from_yaml(path)
    path.write_text("alerts:\n  k: 2\n  n: 3\n  cooldown_s: 30\n")
    assert PipelineConfig.from_yaml(path).alerts == AlertsConfig(k=2, n=3, cooldown_s=30.0)


def test_alert_details_are_read_back_only_when_wanted(db_url: str) -> None:
    frame = stream_of_records(120, seed=8)
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection)
            quiet = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=frame.iloc[:60],
                alert_rule=RULE,
                alert_details=False,
            )
            told = repo.write_results(
                connection,
                run_id=run_id,
                model_id=model_id,
                records=frame.iloc[60:],
                alert_rule=RULE,
            )
            stored = decisions(connection)
    finally:
        engine.dispose()
    assert quiet.alerts_opened > 0
    assert quiet.alerts == ()
    # One entry per event: each alert opened, escalated or resolved in the write.
    events = [alert["event"] for alert in told.alerts]
    assert events.count("opened") == told.alerts_opened > 0
    assert events.count("resolved") == told.alerts_resolved
    assert events.count("escalated") == told.alerts_escalated
    opened_keys = {str(alert["source_key"]) for alert in told.alerts}
    assert opened_keys <= set(frame["source_key"].iloc[60:])
    assert len(stored) == quiet.alerts_opened + told.alerts_opened
    assert [g[:3] for g in stored] == expected(frame)


def test_alert_events_of_one_write_come_in_the_order_they_happened(db_url: str) -> None:
    # Every 'opened' came before every 'resolved': a consumer of the alerts topic saw P0's
    # second alert open while its first was still open.
    rule = AlertRule(k=2, n=3, cooldown_s=0.0, resolve_after=2)
    scores = [12.0, 12.0, 1.0, 1.0, 1.0, 12.0, 12.0]
    frame = pd.DataFrame(
        {
            "source_key": [f"t:0:{i}" for i in range(len(scores))],
            "entity_key": "P0",
            "event_time": pd.Timestamp("2026-11-20T00:00Z")
            + pd.to_timedelta(10 * np.arange(len(scores)), "s"),
            "score": scores,
            "recon_error": 0.0,
            "percentile": 0.0,
            "is_anomaly": [s > 10 for s in scores],
            "severity": ["warning" if s > 10 else None for s in scores],
        }
    )
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection, rule)
            counts = repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=frame, alert_rule=rule
            )
    finally:
        engine.dispose()
    events = [(alert["event"], alert["source_key"]) for alert in counts.alerts]
    assert events == [("opened", "t:0:1"), ("resolved", "t:0:1"), ("opened", "t:0:6")]


def test_a_key_twice_in_one_batch_is_stored_and_judged_once(db_url: str) -> None:
    frame = stream_of_records(90, seed=9)
    doubled = pd.concat([frame.iloc[:45], frame.iloc[40:45], frame.iloc[45:]], ignore_index=True)
    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection)
            counts = repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=doubled, alert_rule=RULE
            )
            got = decisions(connection)
    finally:
        engine.dispose()
    assert (counts.scores_given, counts.scores_inserted) == (95, 90)
    assert [g[:3] for g in got] == expected(frame)


def test_an_alert_changed_between_the_read_and_the_update_is_said_not_claimed(
    db_url: str,
) -> None:
    # The alert rule of a running scorer (or another operator) resolved the alert after
    # act_on_alert read it and before its update: the update changed nothing, yet the CLI
    # said "is now acknowledged" and the API answered 200.
    from sqlalchemy import Update, event

    from anomaly_vae.errors import ConfigError
    from anomaly_vae.storage.tuning import act_on_alert

    t0 = pd.Timestamp("2026-11-20T00:00Z")
    records = pd.DataFrame(
        {
            "source_key": ["k0", "k1"],
            "entity_key": ["P1", "P1"],
            "event_time": [t0, t0 + pd.Timedelta(seconds=1)],
            "score": [12.0, 1.0],
            "recon_error": [0.0, 0.0],
            "percentile": [0.0, 0.0],
            "is_anomaly": [True, False],
        }
    )
    rule = AlertRule(k=1, n=1, cooldown_s=0.0, resolve_after=3)
    engine, other = engine_for(db_url), engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection, rule)
            repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=records, alert_rule=rule
            )
            alert_id = connection.execute(select(Alert.id)).scalar_one()
            connection.commit()

            done: list[bool] = []

            def resolve_first(conn: Connection, clause: object, *_: object) -> None:
                if isinstance(clause, Update) and not done:
                    done.append(True)
                    with other.connect() as elsewhere, elsewhere.begin():
                        elsewhere.execute(
                            update(Alert)
                            .where(Alert.id == alert_id)
                            .values(state="resolved", resolved_by="alert-rule")
                        )

            event.listen(engine, "before_execute", resolve_first)
            with (
                pytest.raises(ConfigError, match=r"changed meanwhile .*it is now resolved"),
                connection.begin(),
            ):
                act_on_alert(connection, alert_id=alert_id, action="acknowledge", by="ops")
            state = connection.execute(select(Alert.state)).scalar_one()
            assert state == "resolved"
    finally:
        engine.dispose()
        other.dispose()


def test_an_acknowledgement_note_stays_when_the_alert_is_resolved(db_url: str) -> None:
    """An operator acknowledges an alert with a note ('ticket 123: bearing'); the rule resolving
    it, or a person resolving it with a note of their own, replaced that note: the alerts of a
    database upgraded with acknowledged alerts in it lost their notes at the first normal
    records. The resolver's note now follows it."""
    from anomaly_vae.storage.tuning import act_on_alert

    rule = AlertRule(k=1, n=1, cooldown_s=0.0, resolve_after=1)
    t0 = pd.Timestamp("2026-11-20T00:00Z")

    def batch(first: int, entity: str, scores: list[float]) -> pd.DataFrame:
        n = len(scores)
        s = np.asarray(scores)
        return pd.DataFrame(
            {
                "source_key": [f"{entity}-{first + i}" for i in range(n)],
                "entity_key": [entity] * n,
                "event_time": [t0 + pd.Timedelta(seconds=first + i) for i in range(n)],
                "score": s,
                "recon_error": np.zeros(n),
                "percentile": np.zeros(n),
                "is_anomaly": s > 10,
            }
        )

    engine = engine_for(db_url)
    try:
        with engine.connect() as connection:
            model_id, run_id = start(connection, rule)

            def write(frame: pd.DataFrame) -> repo.WriteCounts:
                return repo.write_results(
                    connection, run_id=run_id, model_id=model_id, records=frame, alert_rule=rule
                )

            assert write(batch(0, "P1", [12.0])).alerts_opened == 1
            assert write(batch(0, "P2", [12.0])).alerts_opened == 1
            ids = dict(connection.execute(select(Alert.entity_key, Alert.id)).all())
            connection.rollback()  # end the read's transaction
            with connection.begin():
                for entity in ("P1", "P2"):
                    act_on_alert(
                        connection,
                        alert_id=ids[entity],
                        action="acknowledge",
                        by="carol",
                        note=f"ticket {entity}: bearing",
                    )
            assert write(batch(1, "P1", [1.0])).alerts_resolved == 1  # by the rule
            with connection.begin():
                act_on_alert(
                    connection, alert_id=ids["P2"], action="resolve", by="dave", note="replaced"
                )
            notes = dict(connection.execute(select(Alert.entity_key, Alert.note)).all())
            connection.rollback()
    finally:
        engine.dispose()
    assert notes == {
        "P1": "ticket P1: bearing; resolved by the alert rule after 1 normal record",
        "P2": "ticket P2: bearing; replaced",
    }


def test_the_newest_alert_of_an_entity_is_one_index_probe(db_url: str) -> None:
    """The alert rule reads each entity's newest alert on every write: a backward probe of
    (model_id, entity_key, id) per entity, LIMIT 1, never a read of all the alerts an entity
    ever had (the largest id by GROUP BY did that, a cost that grew with its history)."""
    from sqlalchemy import event

    from anomaly_vae.storage.alerting import _newest_alerts, not_written_by

    engine = engine_for(db_url)
    rule = AlertRule(k=1, n=1, cooldown_s=0.0, resolve_after=1)
    try:
        with engine.connect() as connection:
            frame = stream_of_records(600, seed=4)
            model_id, run_id = write_in_batches(connection, frame, 200, rule)
            many = connection.execute(select(Alert.entity_key)).scalars().all()
            connection.rollback()
            assert len(many) > 30  # each entity has a history of alerts
            seen: list[str] = []

            def keep(conn: object, cursor: object, statement: str, *args: object) -> None:
                if "FROM alerts" in statement:
                    seen.append(statement)

            event.listen(engine, "before_cursor_execute", keep)
            newest = _newest_alerts(
                connection,
                model_id,
                ["P0", "P1", None],
                not_written_by(run_id, datetime.now(timezone.utc)),
                None,
            )
            event.remove(engine, "before_cursor_execute", keep)
            connection.rollback()
            ids = connection.execute(select(Alert.id, Alert.entity_key)).all()
            connection.rollback()
            for entity in ("P0", "P1"):
                assert newest[entity]["id"] == max(i for i, e in ids if e == entity)
            assert None not in newest  # no alert without an entity
            (statement,) = seen
            # One LIMIT 1 per entity, newest id first, and no GROUP BY over their alerts.
            assert statement.count("LIMIT") == 3
            assert statement.count("ORDER BY alerts.id DESC") == 3
            assert "GROUP BY" not in statement
    finally:
        engine.dispose()


def test_an_alert_records_where_its_anomaly_began_whatever_the_batches(db_url: str) -> None:
    """Under k of n, the record that opens an alert confirms an anomaly that began up to n - 1
    records earlier: the alert stores that onset (the first crossing among the n), the same
    whether the records came in one write or one by one (the onset then lies in an earlier
    write, read back from the stored records), and it is read back as ``onset_time``."""
    from anomaly_vae.storage.tuning import list_alerts
    from anomaly_vae.thresholds import AlertTracker

    rule = AlertRule(k=2, n=4, cooldown_s=0.0, resolve_after=2)
    frame = stream_of_records(600, seed=21)
    events = AlertTracker(rule).update(
        frame["entity_key"].tolist(), THRESHOLDS.severity(frame["score"].to_numpy())
    )
    want = [
        (frame["source_key"].iloc[e.index], frame["source_key"].iloc[e.onset_index])
        for e in events
        if e.kind == "open" and e.onset_index is not None
    ]
    assert len(want) == sum(e.kind == "open" for e in events) > 5
    assert any(opened != onset for opened, onset in want)  # the rule does confirm later
    for size in (len(frame), 7, 1):
        engine = engine_for(db_url)
        try:
            with engine.connect() as connection:
                name = f"pumps{size}"
                model_id, _ = write_in_batches(connection, frame, size, rule, name)
                got = connection.exec_driver_sql(
                    "SELECT o.source_key, s.source_key FROM alerts a JOIN scores o ON "
                    "o.id = a.score_id LEFT JOIN scores s ON s.id = a.onset_score_id "
                    f"WHERE a.model_id = {model_id} ORDER BY a.id"
                ).all()
                connection.rollback()
                listed = list_alerts(connection, model_name=name, limit=1000)
        finally:
            engine.dispose()
        assert [(str(a), str(b)) for a, b in got] == want, size
        times = dict(zip(frame["source_key"], frame["event_time"], strict=True))
        onset_of = dict(want)
        for alert in listed:
            onset_time = pd.Timestamp(alert["onset_time"])
            onset_time = onset_time.tz_localize("UTC") if onset_time.tzinfo is None else onset_time
            assert onset_time == times[onset_of[alert["source_key"]]]
