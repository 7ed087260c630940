"""The stream scorer end to end: a real broker (Tansu), real databases, real processes.

N messages in, N rows out (scores + dead letters), exactly; SIGKILL and restart; two scorer
processes in one group; the broker stopped and started again; a threshold changed while running;
a message from another Kafka client.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer

from anomaly_vae import AnomalyVAE
from anomaly_vae.config import KafkaConfig
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import DevBroker, free_port, port_open
from anomaly_vae.jobs.stream import StreamScorer
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from anomaly_vae.storage.stream import DatabaseThresholdSource, StreamDatabaseSink
from tests.conftest import create_topic, fresh_name, query, service_unavailable

pytestmark = pytest.mark.integration


def pump_messages(
    n: int, *, seed: int, first_id: int = 0, start: str = "2026-11-01T00:00:00Z"
) -> tuple[list[bytes], list[bytes]]:
    frame = make_pump_data(n, anomaly_rate=0.03, seed=seed, first_event_id=first_id, start=start)
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [json.dumps(r).encode() for r in records], [str(r["pump_id"]).encode() for r in records]


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    keys: list[bytes] | None = None,
    *,
    rate: float | None = None,
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4_000_000)
    started = time.monotonic()
    for i, value in enumerate(values):
        if rate is not None:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        producer.send(topic, value=value, key=None if keys is None else keys[i])
    producer.flush()
    producer.close()


def stored_keys(url: str) -> tuple[list[str], list[str]]:
    scores = [str(r[0]) for r in query(url, "SELECT source_key FROM scores")]
    dead = [str(r[0]) for r in query(url, "SELECT source_key FROM dead_letters")]
    return scores, dead


def scorer_process(
    model_dir: Path, url: str, bootstrap: str, topic: str, group: str, *extra: str
) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anomaly_vae",
            "stream",
            "--model-dir",
            str(model_dir),
            "--db",
            url,
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--group",
            group,
            "--session-timeout-ms",
            "6000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def expected_keys(topic: str, counts: dict[int, int]) -> set[str]:
    return {f"{topic}:{p}:{o}" for p, n in counts.items() for o in range(n)}


def partition_counts(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        from kafka.structs import TopicPartition

        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        counts = dict.fromkeys(parts, 0)
        idle = 0
        while idle < 3:
            polled = consumer.poll(timeout_ms=500)
            if not polled:
                idle += 1
            for tp, recs in polled.items():
                counts[tp.partition] = max(counts[tp.partition], recs[-1].offset + 1)
        return counts
    finally:
        consumer.close()


# ============================================================================== tests
def test_n_messages_in_n_rows_out_with_poison(
    broker: DevBroker, db_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap, partitions=3)
    values, keys = pump_messages(800, seed=21)
    poison = [
        b"{not json",
        b"[1,2,3]",
        b'{"rpm": 1500}',
        b'{"rpm": "NaN", "flow": 1}',
        json.dumps({**json.loads(values[0]), "flow": "broken"}).encode(),
        b'{"rpm": "' + b"x" * 1_200_000 + b'"}',
        b'\xff\xfe{"rpm": 1}',  # not UTF-8
    ]
    produce(broker.bootstrap, topic, values, keys)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4_000_000)
    for value in poison:
        producer.send(topic, value=value, key=b"odd", headers=[("trace-id", b"t-1")])
    producer.flush()
    producer.close()
    alerts_topic = fresh_name("alerts")
    dlq_topic = fresh_name("dlq")
    proc = scorer_process(
        model_dir,
        db_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--idle-timeout",
        "3",
        "--alerts-topic",
        alerts_topic,
        "--dead-letter-topic",
        dlq_topic,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    scores, dead = stored_keys(db_url)
    assert len(scores) == 800
    assert len(dead) == len(poison)
    assert set(scores) | set(dead) == expected_keys(
        topic, partition_counts(broker.bootstrap, topic)
    )
    reasons = {str(r[0]) for r in query(db_url, "SELECT reason FROM dead_letters")}
    assert any("invalid JSON" in r for r in reasons)
    assert any("'broken' is not a number" in r for r in reasons)
    assert any("max_message_bytes" in r for r in reasons)
    n_alerts = query(db_url, "SELECT count(*) FROM alerts")[0][0]
    assert n_alerts > 0
    published = consume_all_records(broker.bootstrap, alerts_topic)
    events = [json.loads(m.value) for m in published]
    # One message per alert opened, and one per alert the rule resolved or escalated (they
    # were not published: a consumer mirroring the alerts never saw one end).
    assert sorted(e["alert_id"] for e in events if e["event"] == "opened") == sorted(
        r[0] for r in query(db_url, "SELECT id FROM alerts")
    )
    resolved = query(db_url, "SELECT id FROM alerts WHERE resolved_by = 'alert-rule'")
    assert resolved  # the rule resolves after one normal record: the test means something
    assert sorted(e["alert_id"] for e in events if e["event"] == "resolved") == sorted(
        r[0] for r in resolved
    )
    escalated = query(db_url, "SELECT id FROM alerts WHERE escalated_at IS NOT NULL")
    assert sorted(e["alert_id"] for e in events if e["event"] == "escalated") == sorted(
        r[0] for r in escalated
    )
    assert len(published) == n_alerts + len(resolved) + len(escalated)
    # Each with an event_id of its own (a consumer drops a copy sent twice by it); the outbox
    # rows they waited in are deleted once the broker had them.
    assert len({e["event_id"] for e in events}) == len(events)
    assert query(db_url, "SELECT count(*) FROM alert_outbox") == [(0,)]
    assert {"alert_id", "entity_key", "score", "source_key", "state", "resolved_at"} <= set(
        events[0]
    )
    for alert_id in {e["alert_id"] for e in events}:
        kinds = [e["event"] for e in events if e["alert_id"] == alert_id]
        assert kinds[0] == "opened"  # in order, in the entity's partition
    # Keyed by entity, so that one entity's alerts stay in order in one partition.
    assert all(m.key == json.loads(m.value)["entity_key"].encode() for m in published)
    # The dead-letter topic gets each message as it came (key, bytes, own headers), with the
    # reason and the source in headers; an oversized value is cut, with its length in a header.
    letters = consume_all_records(broker.bootstrap, dlq_topic)
    assert len(letters) == len(poison)
    stored_reasons = dict(query(db_url, "SELECT source_key, reason FROM dead_letters"))
    oversized = max(poison, key=len)
    seen_values = []
    for letter in letters:
        headers = dict(letter.headers)
        assert letter.key == b"odd"
        assert headers["trace-id"] == b"t-1"
        key = headers["anomaly-vae.error.source-key"].decode()
        assert headers["anomaly-vae.error.reason"].decode() == stored_reasons[key]
        assert key.startswith(f"{topic}:{headers['anomaly-vae.error.partition'].decode()}:")
        if "anomaly-vae.error.value-bytes" in headers:
            assert int(headers["anomaly-vae.error.value-bytes"]) == len(oversized)
            assert letter.value == oversized[:10_000]
        else:
            seen_values.append(letter.value)
    assert sorted(seen_values) == sorted(v for v in poison if v is not oversized)
    runs = query(db_url, "SELECT kind, status, rows_scored, rows_rejected FROM scoring_runs")
    assert runs == [("stream", "succeeded", 800, len(poison))]


def consume_all_records(bootstrap: str, topic: str) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def test_sigkill_mid_stream_then_restart_scores_every_record_once(
    broker: DevBroker, postgres_databases: object, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    url = _migrated(postgres_databases)
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_messages(4000, seed=22)
    produce(broker.bootstrap, topic, values, keys)
    group = fresh_name("g")
    proc = scorer_process(model_dir, url, broker.bootstrap, topic, group, "--batch-size", "100")
    wait_for(lambda: query(url, "SELECT count(*) FROM scores")[0][0] >= 600, 60, "first rows")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = query(url, "SELECT count(*) FROM scores")[0][0]
    assert 600 <= partial < 4000
    again = scorer_process(model_dir, url, broker.bootstrap, topic, group, "--idle-timeout", "3")
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    scores, dead = stored_keys(url)
    assert len(scores) == len(set(scores)) == 4000, out[-3000:]
    assert not dead
    assert set(scores) == expected_keys(topic, partition_counts(broker.bootstrap, topic))


class _KilledError(Exception):
    pass


class _KilledAfterTheCommit(StreamScorer):
    """Dies as a SIGKILL between a batch's commit and its publish would, at the first batch
    with alert events: the batch is written (its events in the outbox with it), nothing of it
    is sent and its offsets are not committed."""

    def _publish(self, batch: Any, result: Any, records: list[Any]) -> None:
        if result.alerts:
            raise _KilledError("killed after the commit (simulated)")
        super()._publish(batch, result, records)


def outbox_rows(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT id, event_id, message_key, payload FROM alert_outbox ORDER BY id")


def test_alert_events_of_a_scorer_killed_after_its_commit_are_published_by_the_next(
    broker: DevBroker,
    postgres_databases: object,
    pump_model: tuple[AnomalyVAE, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The alerts topic was at most once: a scorer killed between the batch's commit and the
    # producer's flush never published that batch's events, and the next one did not either
    # (the records are stored: nothing is decided again). Now the events wait in the outbox,
    # written in the batch's transaction, and the next scorer with the topic sends them first.
    url = _migrated(postgres_databases)
    model, model_dir = pump_model
    topic = create_topic(broker.bootstrap, partitions=1)
    alerts_topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_messages(600, seed=41)
    produce(broker.bootstrap, topic, values, keys)
    group = fresh_name("g")

    def config(alerts: str | None) -> Any:
        cfg = model.config_.model_copy(deep=True)
        cfg.kafka = KafkaConfig(
            bootstrap_servers=broker.bootstrap,
            topic=topic,
            group_id=group,
            alerts_topic=alerts,
            max_batch_records=100,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        return cfg

    def sink(engine: Any, outbox: bool) -> StreamDatabaseSink:
        return StreamDatabaseSink(
            engine, model=model, model_dir=model_dir, source=f"kafka:{topic}", outbox=outbox
        )

    engine = create_database_engine(parse_database_url(url))
    try:
        with pytest.raises(_KilledError):
            _KilledAfterTheCommit(model, config(alerts_topic), sink(engine, True)).run(
                idle_timeout=3.0
            )
        left = outbox_rows(url)
        assert left  # the killed batch's events, written with it
        sent_before = consume_all_records(broker.bootstrap, alerts_topic)
        assert not {json.loads(m.value)["event_id"] for m in sent_before} & {r[1] for r in left}
        # A scorer without the topic leaves them, says so, and writes none of its own there.
        alerts_before = query(url, "SELECT count(*) FROM alerts")[0][0]
        quiet = sink(engine, False)
        with caplog.at_level(logging.WARNING, logger="anomaly_vae.storage.stream"):
            StreamScorer(model, config(None), quiet).run(idle_timeout=3.0)
        assert quiet.outbox_waiting() == len(left)  # the progress line's count
        assert query(url, "SELECT count(*) FROM alerts")[0][0] > alerts_before
        warned = [r.getMessage() for r in caplog.records if "alert outbox" in r.getMessage()]
        assert len(warned) == 1
        assert warned[0].startswith(f"{len(left)} alert event(s) of model {model.name} wait")
        assert outbox_rows(url) == left
        assert query(url, "SELECT count(*) FROM scores")[0][0] == 600
        # The next scorer with the topic publishes them before anything else.
        StreamScorer(model, config(alerts_topic), sink(engine, True)).run(idle_timeout=3.0)
    finally:
        engine.dispose()
    assert outbox_rows(url) == []
    published = consume_all_records(broker.bootstrap, alerts_topic)
    late = [m for m in published if json.loads(m.value)["event_id"] in {r[1] for r in left}]
    # As they were written, key and JSON; an entity's in the order they happened (one
    # partition per entity; the consumer reads partitions in no set order among themselves).
    assert sorted((m.key.decode(), m.value.decode()) for m in late) == sorted(
        (r[2], r[3]) for r in left
    )
    for key in {r[2] for r in left}:
        assert [m.value.decode() for m in late if m.key.decode() == key] == [
            r[3] for r in left if r[2] == key
        ]
    # Each sent once here (a consumer drops a second copy by its event_id).
    ids = [json.loads(m.value)["event_id"] for m in published]
    assert len(ids) == len(set(ids)) == len(sent_before) + len(left)


def test_two_scorer_processes_in_one_group_score_every_record_once(
    broker: DevBroker, postgres_databases: object, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    url = _migrated(postgres_databases)
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap, partitions=4)
    group = fresh_name("g")
    first = scorer_process(
        model_dir, url, broker.bootstrap, topic, group, "--idle-timeout", "8", "--batch-size", "200"
    )
    values, keys = pump_messages(3000, seed=23)
    producer = threading.Thread(
        target=produce, args=(broker.bootstrap, topic, values, keys), kwargs={"rate": 200.0}
    )
    producer.start()
    time.sleep(2.0)
    second = scorer_process(
        model_dir, url, broker.bootstrap, topic, group, "--idle-timeout", "8", "--batch-size", "200"
    )  # joins mid-stream: a rebalance
    producer.join()
    out1, _ = first.communicate(timeout=180)
    out2, _ = second.communicate(timeout=180)
    assert first.returncode == 0, out1
    assert second.returncode == 0, out2
    scores, _ = stored_keys(url)
    assert len(scores) == len(set(scores)) == 3000
    per_run = query(url, "SELECT rows_scored FROM scoring_runs ORDER BY id")
    assert len(per_run) == 2
    assert all(int(str(n[0])) > 0 for n in per_run)  # both processes took part


def test_processes_option_runs_a_group_of_scorers_and_stops_them_together(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    """``--processes 2``: two children in one group share the partitions; SIGTERM to the
    command stops both cleanly; a second run finishes the topic, every record once."""
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap, partitions=4)
    values, keys = pump_messages(6000, seed=24)
    producer = threading.Thread(
        target=produce, args=(broker.bootstrap, topic, values, keys), kwargs={"rate": 600.0}
    )
    producer.start()
    extra = ("--batch-size", "200", "--processes", "2")
    proc = scorer_process(model_dir, sqlite_url, broker.bootstrap, topic, fresh_name("g"), *extra)
    wait_for(
        lambda: len(query(sqlite_url, "SELECT DISTINCT run_id FROM scores")) == 2,
        90,
        "both processes writing",
    )
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "[1/2]" in out, out[-2000:]
    assert "[2/2]" in out, out[-2000:]
    assert "2 scorer processes stopped" in out
    assert "[1/2] stream stopped:" in out, out[-2000:]
    assert "[2/2] stream stopped:" in out, out[-2000:]
    runs = query(sqlite_url, "SELECT status FROM scoring_runs")
    assert len(runs) == 2
    assert {str(r[0]) for r in runs} != {"running"}, runs
    producer.join()
    # A fresh group: Tansu can wedge a group for good when a member closes during a rejoin
    # (../shared/KAFKA.md, trap 3), which SIGTERM mid-rebalance may do. From the earliest
    # offsets again, the stored records are skipped and the rest written once.
    again = scorer_process(
        model_dir,
        sqlite_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--idle-timeout",
        "6",
        *extra,
    )
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    scores, _ = stored_keys(sqlite_url)
    assert len(scores) == len(set(scores)) == 6000, out[-4000:]
    assert set(scores) == expected_keys(topic, partition_counts(broker.bootstrap, topic))


def test_a_signal_while_the_scorer_processes_start_stops_them_cleanly(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    """SIGTERM just after ``--processes 2`` started its children, while they load: they were
    killed by the signal's default action part way (the command exited 143, a run registered
    by then stayed 'running'), and a child started after the signal was never told to stop, so
    the command ran on for good."""
    import re

    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap, partitions=2)
    proc = scorer_process(
        model_dir, sqlite_url, broker.bootstrap, topic, fresh_name("g"), "--processes", "2"
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "started 2 scorer processes" in line or not line:
            break
    pids = [int(p) for p in re.findall(r"\d+", seen[-1].split("pids", 1)[-1])]
    assert len(pids) == 2, seen
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 0, out
    assert "2 scorer processes stopped" in out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    runs = query(sqlite_url, "SELECT status FROM scoring_runs")
    assert all(str(r[0]) != "running" for r in runs), runs


def test_processes_option_warns_of_a_pipeline_file_once(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    """The supervisor names what a --pipeline file cannot change; its children did it again,
    one warning line per process. What it can change (top_features) is taken, as by 'score':
    the stream used to ignore it."""
    _, model_dir = pump_model
    pipeline = tmp_path / "scoring.yaml"
    pipeline.write_text("scoring:\n  top_features: 1\n  threshold_quantile: 0.5\n")
    topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_messages(300, seed=31)
    produce(broker.bootstrap, topic, values, keys)
    proc = scorer_process(
        model_dir,
        sqlite_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--pipeline",
        str(pipeline),
        "--processes",
        "2",
        "--idle-timeout",
        "3",
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.count("scoring.threshold_quantile 0.5 (the model's: 0.995)") == 1, out
    assert "top_features" not in out  # taken, as 'score' takes it: it changes only the output
    tops = query(sqlite_url, "SELECT top_features FROM scores WHERE is_anomaly = 1")
    assert tops, out
    assert all(len(json.loads(t) if isinstance(t, str) else t) == 1 for (t,) in tops), tops


def test_processes_option_refuses_max_messages(
    sqlite_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    _, model_dir = pump_model
    proc = scorer_process(
        model_dir, sqlite_url, "127.0.0.1:1", "t", "g", "--processes", "2", "--max-messages", "5"
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "--max-messages counts one process's messages" in out


def _migrated(factory: object) -> str:
    from anomaly_vae.storage.migrate import upgrade

    url = str(factory())  # type: ignore[operator]
    engine = create_database_engine(parse_database_url(url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def scorer_thread(
    model: AnomalyVAE, model_dir: Path, url: str, bootstrap: str, topic: str, **kafka: Any
) -> tuple[StreamScorer, threading.Thread, Any]:
    engine = create_database_engine(parse_database_url(url))
    cfg = model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=fresh_name("g"),
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_batch_wait_ms=100,
        **kafka,
    )
    sink = StreamDatabaseSink(engine, model=model, model_dir=model_dir, source=f"kafka:{topic}")
    scorer = StreamScorer(
        model, cfg, sink, thresholds=DatabaseThresholdSource(engine, model_name=model.name)
    )
    sink.stats = scorer.stats
    thread = threading.Thread(target=scorer.run, kwargs={"idle_timeout": 60.0})
    thread.start()
    return scorer, thread, engine


def test_threshold_changed_while_running_applies_to_later_records(
    broker: DevBroker, db_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    model, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    scorer, thread, engine = scorer_thread(
        model, model_dir, db_url, broker.bootstrap, topic, threshold_refresh_s=0.5
    )
    try:
        first, first_keys = pump_messages(300, seed=24)
        produce(broker.bootstrap, topic, first, first_keys)
        wait_for(lambda: len(stored_keys(db_url)[0]) >= 300, 60, "the first records")
        # A critical level too: the stream's severities must follow it (a sink that left it
        # out, every flagged record 'warning', passed every test).
        critical = float(np.median([r[0] for r in query(db_url, "SELECT score FROM scores")]))
        with engine.connect() as connection, connection.begin():
            repo.add_threshold(
                connection,
                model_name=model.name,
                policy="value",
                warning=-1e9,
                critical=critical,
                parameters={},
                created_by="test",
                reason="lower it while running",
            )
        time.sleep(1.5)
        second, second_keys = pump_messages(300, seed=25, first_id=300)
        produce(broker.bootstrap, topic, second, second_keys)
        wait_for(lambda: len(stored_keys(db_url)[0]) >= 600, 60, "the later records")
    finally:
        scorer.stop()
        thread.join(timeout=20)
        engine.dispose()
    rows = query(db_url, "SELECT source_key, is_anomaly, score, severity FROM scores")
    flags = {str(k): bool(v) for k, v, _, _ in rows}
    offsets = {k: int(k.rsplit(":", 1)[1]) for k in flags}
    early = [flags[k] for k in flags if offsets[k] < 300]
    late = [flags[k] for k in flags if offsets[k] >= 300]
    assert sum(early) < 0.2 * len(early)  # the calibrated threshold
    assert all(late)  # everything crosses the lowered threshold
    levels = [(sev, score > critical) for k, _, score, sev in rows if offsets[str(k)] >= 300]
    assert {sev for sev, _ in levels} == {"warning", "critical"}
    assert all((sev == "critical") == above for sev, above in levels)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from anomaly_vae.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = create_database_engine(parse_database_url(url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def test_message_from_another_client_scores_the_same_whatever_its_compression(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    """librdkafka (confluent-kafka, kcat) with each codec a producer may set: kafka-python
    decodes snappy, lz4 and zstd only with their libraries installed (dependencies)."""
    db_url = sqlite_url
    import confluent_kafka as confluent  # a dev dependency: missing, the test must fail

    _model, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    payload = pump_messages(1, seed=26)[0][0]
    produce(broker.bootstrap, topic, [payload], [b"P1"])
    for codec in CODECS:
        other = confluent.Producer(
            {"bootstrap.servers": broker.bootstrap, "compression.type": codec}
        )
        other.produce(topic, value=payload, key=b"P1")
        assert other.flush(10) == 0
    proc = scorer_process(
        model_dir, db_url, broker.bootstrap, topic, fresh_name("g"), "--idle-timeout", "3"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    rows = query(
        db_url, "SELECT source_key, score, recon_error, entity_key FROM scores ORDER BY source_key"
    )
    assert len(rows) == 1 + len(CODECS)
    assert all(row[1:] == rows[0][1:] for row in rows)


def test_alerts_without_an_entity_keep_their_order_in_one_partition(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    # Records with neither the entity field nor a message key: their alerts were published
    # with a null key, so one alert's 'opened' and 'resolved' went to different partitions
    # of the alerts topic and a consumer could read them in either order.
    model, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    alerts_topic = create_topic(broker.bootstrap, partitions=4)
    frame = make_pump_data(300, anomaly_rate=0.2, seed=3).drop(columns="pump_id")
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    produce(broker.bootstrap, topic, [json.dumps(r).encode() for r in records])
    proc = scorer_process(
        model_dir,
        sqlite_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--idle-timeout",
        "3",
        "--alerts-topic",
        alerts_topic,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    consumer = KafkaConsumer(
        alerts_topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        published = [(m.partition, m.key, json.loads(m.value)) for m in consumer]
    finally:
        consumer.close()
    assert any(alert["event"] == "resolved" for _, _, alert in published), out
    assert {alert["entity_key"] for _, _, alert in published} == {None}
    assert {key for _, key, _ in published} == {model.name.encode()}
    assert len({partition for partition, _, _ in published}) == 1


# ------------------------------------------------------------------- broker restart
@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[tuple[DevBroker, dict[str, str]]]:
    """Tansu on S3 storage (a local moto server), so data survives a broker restart."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        service_unavailable("moto_server (S3 emulator)", "install moto[server]")
    port = free_port()
    server = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 20, "the S3 emulator")
        import boto3

        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
            "AWS_ALLOW_HTTP": "true",
        }
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket="tansu")
        dev = DevBroker(storage="s3://tansu/", env=env, log_path=tmp_path / "tansu.log").start()
        yield dev, env
        dev.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_broker_restart_mid_stream_loses_nothing(
    durable_broker: tuple[DevBroker, dict[str, str]],
    sqlite_url: str,
    pump_model: tuple[AnomalyVAE, Path],
) -> None:
    db_url = sqlite_url
    dev, _env = durable_broker
    model, model_dir = pump_model
    topic = create_topic(dev.bootstrap, partitions=2)
    first, first_keys = pump_messages(400, seed=27)
    produce(dev.bootstrap, topic, first, first_keys)
    scorer, thread, engine = scorer_thread(model, model_dir, db_url, dev.bootstrap, topic)
    try:
        wait_for(lambda: len(stored_keys(db_url)[0]) >= 400, 90, "records before the restart")
        dev.stop()  # SIGTERM: the broker goes away mid-stream
        time.sleep(2.0)
        dev.start()
        second, second_keys = pump_messages(400, seed=28, first_id=400)
        produce(dev.bootstrap, topic, second, second_keys)
        wait_for(lambda: len(stored_keys(db_url)[0]) >= 800, 120, "records after the restart")
    finally:
        scorer.stop()
        thread.join(timeout=30)
        engine.dispose()
    scores, dead = stored_keys(db_url)
    assert len(scores) == len(set(scores)) == 800
    assert not dead
    frame = pd.Series(scores).str.rsplit(":", n=1).str[1].astype(int)
    assert frame.max() < 800


def test_a_message_whose_entity_or_raw_text_the_database_cannot_hold_is_a_dead_letter(
    broker: DevBroker, db_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    # A message whose entity is 300 characters long, or one keyed by an entity with a NUL
    # character, and a non-JSON message holding a NUL byte stopped the PostgreSQL scorer with
    # a traceback (varchar(200) / "invalid byte sequence ... 0x00"), and again at every
    # restart: the poison message was replayed forever. They are rejected like other poison.
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(52, seed=26)
    long_entity = {**json.loads(values[50]), "pump_id": "p" * 300}
    keyed_only = {**json.loads(values[51]), "pump_id": None}  # the entity is the message key
    poison_values = [json.dumps(long_entity).encode(), json.dumps(keyed_only).encode()]
    poison_values.append(b"not json \x00 at \xff all")
    values, keys = values[:50], keys[:50]
    poison_keys = [b"pump-7", b"pump\x00-7", b"pump-7"]
    produce(broker.bootstrap, topic, values + poison_values, keys + poison_keys)
    proc = scorer_process(
        model_dir, db_url, broker.bootstrap, topic, fresh_name("g"), "--idle-timeout", "3"
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "53 messages, 50 scored" in out
    dead = dict(query(db_url, "SELECT source_key, reason FROM dead_letters"))
    assert "300 characters long, over the 200" in str(dead[f"{topic}:0:50"])
    assert "NUL character" in str(dead[f"{topic}:0:51"])
    assert "invalid JSON" in str(dead[f"{topic}:0:52"])
    raw = query(db_url, f"SELECT raw FROM dead_letters WHERE source_key = '{topic}:0:52'")
    assert raw == [("not json \\x00 at \\xff all",)]  # the bytes named, not U+FFFD


def test_a_short_session_timeout_alone_is_enough(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    # --session-timeout-ms 2000 (allowed: at least 1000) stopped the scorer with "Kafka client
    # settings are invalid: Heartbeat interval must be lower than the session timeout (3000 v
    # 2000)", a setting the command line does not offer; 6000 logged kafka-python's warning
    # that the heartbeat was high. The heartbeat now follows the session timeout.
    model, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(20, seed=27)
    gapped = json.loads(values[3])
    gapped["vibration"] = None  # a sensor that did not report: scored, and counted
    values[3] = json.dumps(gapped).encode()
    with_gaps = sum(
        any(json.loads(v).get(name) is None for name in model.schema_.names) for v in values
    )
    produce(broker.bootstrap, topic, values, keys)
    group = fresh_name("g")
    proc = scorer_process(
        model_dir, sqlite_url, broker.bootstrap, topic, group, "--session-timeout-ms", "2000"
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or len(stored_keys(sqlite_url)[0]) == 20,
            60,
            "the records",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stream stopped: 20 messages, 20 scored" in out
    assert f"rejected, {with_gaps} with a missing value filled in (" in out
    assert "heartbeat" not in out.lower()


@pytest.fixture
def user_who_may_not_insert_scores(postgres_databases: object) -> Iterator[str]:
    """A migrated PostgreSQL database and the URL of a user with every privilege on it but
    INSERT on ``scores`` (a role with a random name, dropped at the end)."""
    from sqlalchemy.engine import make_url

    url = _migrated(postgres_databases)
    role = fresh_name("no_insert").replace("-", "_")
    engine = create_database_engine(parse_database_url(url))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
            connection.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
            connection.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
            connection.exec_driver_sql(f"REVOKE INSERT ON scores FROM {role}")
        yield make_url(url).set(username=role).render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        engine.dispose()


def test_a_write_the_database_refuses_is_one_line_and_a_failed_run(
    broker: DevBroker,
    user_who_may_not_insert_scores: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
) -> None:
    # A user who may not insert into scores: the stream scorer (and score --db) died with a
    # psycopg traceback ("permission denied for table scores"), and the stream session's run
    # was recorded as succeeded. Now: one line naming the user and the table, exit status 2,
    # and the run failed with the reason.
    url = user_who_may_not_insert_scores
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(20, seed=28)
    produce(broker.bootstrap, topic, values, keys)
    proc = scorer_process(model_dir, url, broker.bootstrap, topic, fresh_name("g"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert "refused user" in out
    assert "permission denied for table scores" in out
    runs = query(url, "SELECT kind, status, error FROM scoring_runs")
    assert runs == [("stream", "failed", "permission denied for table scores")]
    export = tmp_path / "export.csv"
    make_pump_data(30, seed=5).to_csv(export, index=False)
    command = ["score", str(export), "--model-dir", str(model_dir), "--db", url]
    batch = subprocess.run(
        [sys.executable, "-m", "anomaly_vae", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert batch.returncode == 2, batch.stderr
    assert "Traceback" not in batch.stderr
    assert "permission denied for table scores" in batch.stderr


def test_a_connection_lost_in_the_middle_of_a_write_is_retried(
    broker: DevBroker, postgres_databases: object, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    # The server ends the connection after the pool's ping and before the batch's COPY (a
    # restart, an administrator, a failover): the batch is retried on a new connection.
    from sqlalchemy import event, text

    url = _migrated(postgres_databases)
    model, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(200, seed=29)
    produce(broker.bootstrap, topic, values, keys)
    engine = create_database_engine(parse_database_url(url))
    admin = create_database_engine(parse_database_url(url))
    sink = StreamDatabaseSink(engine, model=model, model_dir=model_dir, source=f"kafka:{topic}")
    ended: list[int] = []

    def end_the_first_writes_connection(dbapi_connection: Any, *_: Any) -> None:
        if not ended:
            ended.append(dbapi_connection.info.backend_pid)
            with admin.connect() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": ended[0]})

    event.listen(engine, "checkout", end_the_first_writes_connection)
    cfg = model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(
        bootstrap_servers=broker.bootstrap, topic=topic, group_id=fresh_name("g")
    )
    try:
        stats = StreamScorer(model, cfg, sink).run(idle_timeout=3.0)
    finally:
        engine.dispose()
        admin.dispose()
    assert ended
    assert stats.write_retries >= 1
    scores, dead = stored_keys(url)
    assert len(scores) == len(set(scores)) == 200
    assert not dead


def test_a_sqlite_file_locked_past_the_busy_timeout_is_retried(
    broker: DevBroker,
    sqlite_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another program held the SQLite file's write lock longer than the busy timeout (a
    # long maintenance job, a sqlite3 shell left in a transaction): the driver's "database is
    # locked", raised outside SQLAlchemy on the insert path, stopped the scorer.
    import sqlite3

    from anomaly_vae.storage import engine as engine_module

    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    model, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(100, seed=30)
    produce(broker.bootstrap, topic, values, keys)
    engine = create_database_engine(parse_database_url(sqlite_url))
    sink = StreamDatabaseSink(engine, model=model, model_dir=model_dir, source=f"kafka:{topic}")
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the scorer has retried
    cfg = model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(
        bootstrap_servers=broker.bootstrap, topic=topic, group_id=fresh_name("g")
    )
    scorer = StreamScorer(model, cfg, sink)
    runner = threading.Thread(target=scorer.run, kwargs={"idle_timeout": 3.0})
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while scorer.stats.write_retries < 1 and runner.is_alive():
            assert time.monotonic() < deadline, "the scorer never retried"
            time.sleep(0.05)
        holder.execute("COMMIT")
        runner.join(timeout=60)
    finally:
        scorer.stop()
        runner.join(timeout=10)
        engine.dispose()
        holder.close()
    stats = scorer.stats
    assert stats.write_retries >= 1
    scores, dead = stored_keys(sqlite_url)
    assert len(scores) == len(set(scores)) == 100
    assert not dead


def test_a_replayed_topic_says_its_records_keep_their_stored_flags(
    broker: DevBroker,
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A topic read again (another group, a reset offset) after a new threshold: the session
    # said "300 scored, 300 flagged" while none of its rows was stored (keyed by offset) and
    # the stored flags stayed those of the first reading, without a word.
    from tests.test_cli import run_inline

    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(300, seed=31)
    produce(broker.bootstrap, topic, values, keys)
    args = ["stream", "--model-dir", str(model_dir), "--bootstrap", broker.bootstrap]
    args += [
        "--topic",
        topic,
        "--db",
        db_url,
        "--idle-timeout",
        "3",
        "--session-timeout-ms",
        "6000",
    ]
    first = run_inline(capsys, *args, "--group", fresh_name("first"))
    assert first.returncode == 0, first.stderr
    assert "300 scored" in first.stdout
    assert "already stored" not in first.stdout
    change = ("thresholds", "set", "pumps", "--value", "-1000", "--reason", "r", "--db", db_url)
    assert run_inline(capsys, *change).returncode == 0
    again = run_inline(capsys, *args, "--group", fresh_name("again"))
    assert again.returncode == 0, again.stderr
    assert "300 scored, 300 flagged" in again.stdout
    assert "300 of the records scored were already stored (a replay): kept as first" in again.stdout
    flagged = query(db_url, "SELECT COUNT(*) FROM scores WHERE is_anomaly")[0][0]
    assert flagged < 100  # as first scored


def test_consumer_and_producer_options_in_kafka_client_go_to_their_own_client(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    # kafka.client is one mapping for both clients: a consumer's fetch_max_bytes stopped the
    # scorer with a traceback as soon as --dead-letter-topic made it start a producer
    # (kafka-python's "ValueError: Unrecognized configs"), and a producer's compression_type
    # stopped the consumer.
    _, model_dir = pump_model
    topic = create_topic(broker.bootstrap)
    values, keys = pump_messages(5, seed=28)
    produce(broker.bootstrap, topic, [*values, b"{not json"], [*keys, b"odd"])
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "kafka:\n  client:\n    fetch_max_bytes: 1048576\n    compression_type: gzip\n"
    )
    dlq_topic = fresh_name("dlq")
    proc = scorer_process(
        model_dir,
        sqlite_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--pipeline",
        str(pipeline),
        "--dead-letter-topic",
        dlq_topic,
        "--idle-timeout",
        "3",
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stream stopped: 6 messages, 5 scored, " in out
    assert ", 1 rejected" in out
    assert [r.value for r in consume_all_records(broker.bootstrap, dlq_topic)] == [b"{not json"]


def _tls_pipeline(tmp_path: Path) -> Path:
    pipeline = tmp_path / "tls.yaml"
    pipeline.write_text("kafka:\n  client:\n    security_protocol: SSL\n")
    return pipeline


def test_a_tls_client_against_a_plaintext_broker_is_one_line_not_a_hang(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    # security_protocol SSL against a plaintext listener: kafka-python's bootstrap waited for
    # the TLS handshake's answer for good, past --idle-timeout (and SIGTERM, below).
    _, model_dir = pump_model
    topic = fresh_name("t")
    proc = scorer_process(
        model_dir,
        sqlite_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--pipeline",
        str(_tls_pipeline(tmp_path)),
        "--idle-timeout",
        "2",
    )
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert f"Kafka broker at {broker.bootstrap} connected but gave no answer" in errors[0]
    assert "kafka.client.security_protocol" in errors[0]
    assert "Traceback" not in out
    assert query(sqlite_url, "SELECT status FROM scoring_runs") == [("failed",)]


def test_sigterm_stops_a_scorer_whose_tls_handshake_never_ends(
    broker: DevBroker, sqlite_url: str, pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    _, model_dir = pump_model
    proc = scorer_process(
        model_dir,
        sqlite_url,
        broker.bootstrap,
        fresh_name("t"),
        fresh_name("g"),
        "--pipeline",
        str(_tls_pipeline(tmp_path)),
    )
    try:
        wait_for(
            lambda: (
                Path(sqlite_url.removeprefix("sqlite:///")).exists()
                and query(sqlite_url, "SELECT count(*) FROM scoring_runs") == [(1,)]
            ),
            90,
            "the stream run",
        )
        time.sleep(2)  # into the handshake
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "stream stopped: 0 messages" in out


def test_database_trouble_is_logged_on_one_line(
    tmp_path: Path, pump_model: tuple[AnomalyVAE, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A database outage while streaming: the warnings for the threshold refresh and for the
    run's end are one line each. They showed SQLAlchemy's whole message, its driver hint and
    "(Background on this error at: https://sqlalche.me/...)" on lines of their own, which a
    log shipper reads as separate events."""
    import logging

    from anomaly_vae.storage.migrate import upgrade

    model, model_dir = pump_model
    path = tmp_path / "results.db"
    engine = create_database_engine(parse_database_url(f"sqlite:///{path}"))
    upgrade(engine)
    cfg = model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1", topic="t", group_id="g")
    sink = StreamDatabaseSink(engine, model=model, model_dir=model_dir, source="kafka:t")
    scorer = StreamScorer(
        model, cfg, sink, thresholds=DatabaseThresholdSource(engine, model_name=model.name)
    )
    engine.dispose()
    path.unlink()
    path.mkdir()  # the database is gone: every connection fails
    with caplog.at_level(logging.WARNING):
        scorer._current_threshold()
        sink.close()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("could not read the threshold in force" in m for m in messages), messages
    assert any("could not record the end of stream run" in m for m in messages), messages
    assert all("\n" not in m for m in messages), messages
    engine.dispose()
