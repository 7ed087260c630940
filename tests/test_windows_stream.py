"""Windows per entity end to end: a real broker (Tansu), real databases, real processes.

The same records scored from a CSV export and through Kafka give the same scores, record for
record; a scorer killed mid-stream and restarted, and two scorers sharing the partitions (a
rebalance mid-stream), give the scores of an uninterrupted run. The records are messy on
purpose: some arrive out of order within the lateness, some too late, some share a timestamp,
and one pump goes silent for longer than the gap limit.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaProducer

from anomaly_vae import AnomalyVAE
from anomaly_vae.config import PipelineConfig
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import DevBroker
from anomaly_vae.jobs.batch import CsvScoreWriter, score_csv
from anomaly_vae.sources.csv import CsvSource
from tests.conftest import REPO, create_topic, fresh_name
from tests.test_stream_db import _migrated, query, scorer_process, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def window_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[AnomalyVAE, Path]:
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 6
    cfg.training.progress = False
    model = AnomalyVAE(config=cfg).fit(make_pump_data(2000, n_pumps=4, seed=1))
    path = tmp_path_factory.mktemp("models") / "pumps-windows"
    model.save(path)
    return model, path


def messy_pumps(n: int, *, seed: int, n_pumps: int = 4) -> pd.DataFrame:
    """Pump records in arrival order: a few swapped with their pump's next record (10 s, inside
    the 30 s lateness), a few held back 20 records of their pump (200 s: too late), a few
    repeating their predecessor's timestamp, and pump 0 silent for 1000 s halfway."""
    frame = make_pump_data(n, n_pumps=n_pumps, anomaly_rate=0.03, seed=seed)
    rng = np.random.default_rng(seed)
    ts = pd.to_datetime(frame["ts"], utc=True)
    pump = np.arange(n) % n_pumps
    ts = ts + pd.to_timedelta(np.where((pump == 0) & (np.arange(n) > n // 2), 1000, 0), unit="s")
    for i in rng.choice(np.arange(n_pumps, n - n_pumps), n // 100, replace=False):
        ts.iloc[i] = ts.iloc[i - n_pumps]  # the same time as its pump's previous record
    frame["ts"] = ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    order = list(range(n))
    for i in rng.choice(np.arange(n - n_pumps), n // 40, replace=False):
        order[i], order[i + n_pumps] = order[i + n_pumps], order[i]
    for i in rng.choice(np.arange(n - 20 * n_pumps), n // 200, replace=False):
        moved = order.pop(int(i))
        order.insert(int(i) + 20 * n_pumps, moved)
    return frame.iloc[order].reset_index(drop=True)


def produce_keyed(
    bootstrap: str, topic: str, frame: pd.DataFrame, rate: float | None = None
) -> list[str]:
    """Send every row (key: the pump); return each row's ``topic:partition:offset``."""
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    futures = []
    started = time.monotonic()
    for i, record in enumerate(records):
        if rate is not None:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        futures.append(
            producer.send(
                topic, value=json.dumps(record).encode(), key=str(record["pump_id"]).encode()
            )
        )
    producer.flush()
    keys = []
    for future in futures:
        meta = future.get(timeout=30)
        keys.append(f"{topic}:{meta.partition}:{meta.offset}")
    producer.close()
    return keys


def stored_scores(url: str) -> dict[str, float]:
    return {str(k): float(v) for k, v in query(url, "SELECT source_key, score FROM scores")}


def reference_scores(model: AnomalyVAE, frame: pd.DataFrame) -> pd.DataFrame:
    """An uninterrupted run: every record through one window state, in arrival order."""
    return model.score_batch(frame, windows=model.new_window_state()).scores


def assert_same_scores(stored: dict[str, float], keys: list[str], expected: pd.DataFrame) -> None:
    """Equal record for record at the scorer's precision (float32; the CSV writes float32)."""
    assert len(stored) == len(keys)
    got = np.asarray([stored[k] for k in keys]).astype(np.float32)
    want = expected["score"].to_numpy().astype(np.float32)
    differ = np.flatnonzero(got != want)
    assert len(differ) == 0, f"{len(differ)} records differ, first at {keys[differ[0]]}"


def test_csv_export_and_kafka_give_the_same_scores_record_for_record(
    broker: DevBroker,
    tmp_path: Path,
    window_model: tuple[AnomalyVAE, Path],
) -> None:
    model, model_dir = window_model
    frame = messy_pumps(1200, seed=41)
    csv_path = tmp_path / "export.csv"
    frame.to_csv(csv_path, index=False)
    out = tmp_path / "scores.csv"
    summary = score_csv(
        model,
        CsvSource(csv_path, chunk_size=97),  # windows carried across chunks
        sinks=[CsvScoreWriter(out)],
        passthrough=["event_id", "pump_id", "ts"],
    )
    assert summary.rows_scored == len(frame)
    batch = pd.read_csv(out).sort_values("row").reset_index(drop=True)
    assert (batch["event_id"].to_numpy() == frame["event_id"].to_numpy()).all()
    statuses = set(batch["window_status"])
    assert statuses == {"ok", "warming_up", "late"}, statuses
    assert not batch.loc[batch["window_status"] != "ok", "is_anomaly"].any()

    url = f"sqlite:///{tmp_path / 'results.db'}"
    _migrated(lambda: url)
    topic = create_topic(broker.bootstrap, partitions=3)
    keys = produce_keyed(broker.bootstrap, topic, frame)
    proc = scorer_process(
        model_dir,
        url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--idle-timeout",
        "3",
        "--batch-size",
        "50",
    )
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, output
    late = int((batch["window_status"] == "late").sum())
    assert f", {late} late (scored on their own)" in output  # counted by the stream scorer too
    assert ", 1 gap, " in output  # pump 0's silence; it said "1 gaps"
    assert_same_scores(stored_scores(url), keys, batch)
    flagged = {str(k): bool(v) for k, v in query(url, "SELECT source_key, is_anomaly FROM scores")}
    assert [flagged[k] for k in keys] == batch["is_anomaly"].astype(bool).tolist()
    stored_status = dict(query(url, "SELECT source_key, window_status FROM scores"))
    assert [stored_status[k] for k in keys] == batch["window_status"].tolist()
    entities = {str(r[0]) for r in query(url, "SELECT entity_key FROM window_states")}
    assert entities == {str(p) for p in frame["pump_id"].unique()}


def test_sigkill_mid_stream_then_restart_scores_as_if_uninterrupted(
    broker: DevBroker, postgres_databases: object, window_model: tuple[AnomalyVAE, Path]
) -> None:
    url = _migrated(postgres_databases)
    model, model_dir = window_model
    frame = messy_pumps(3000, seed=42)
    topic = create_topic(broker.bootstrap, partitions=2)
    keys = produce_keyed(broker.bootstrap, topic, frame)
    group = fresh_name("g")
    proc = scorer_process(model_dir, url, broker.bootstrap, topic, group, "--batch-size", "100")
    wait_for(lambda: query(url, "SELECT count(*) FROM scores")[0][0] >= 600, 90, "first rows")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = query(url, "SELECT count(*) FROM scores")[0][0]
    assert 600 <= partial < 3000
    again = scorer_process(model_dir, url, broker.bootstrap, topic, group, "--idle-timeout", "3")
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    assert_same_scores(stored_scores(url), keys, reference_scores(model, frame))


def test_rebalance_between_two_scorers_scores_as_if_uninterrupted(
    broker: DevBroker, postgres_databases: object, window_model: tuple[AnomalyVAE, Path]
) -> None:
    url = _migrated(postgres_databases)
    model, model_dir = window_model
    frame = messy_pumps(2000, seed=43, n_pumps=12)
    topic = create_topic(broker.bootstrap, partitions=4)
    group = fresh_name("g")
    args = ("--idle-timeout", "8", "--batch-size", "100")
    first = scorer_process(model_dir, url, broker.bootstrap, topic, group, *args)
    keys = produce_keyed(broker.bootstrap, topic, frame.iloc[:1000])
    wait_for(lambda: query(url, "SELECT count(*) FROM scores")[0][0] >= 500, 90, "first rows")
    second = scorer_process(model_dir, url, broker.bootstrap, topic, group, *args)  # rebalance
    wait_for(lambda: query(url, "SELECT count(*) FROM scoring_runs")[0][0] == 2, 90, "second run")
    # The rest flows for 10 s while the second scorer joins and partitions move.
    keys += produce_keyed(broker.bootstrap, topic, frame.iloc[1000:], rate=100.0)
    out1, _ = first.communicate(timeout=180)
    out2, _ = second.communicate(timeout=180)
    assert first.returncode == 0, out1
    assert second.returncode == 0, out2
    per_run = query(url, "SELECT rows_scored FROM scoring_runs ORDER BY id")
    assert len(per_run) == 2
    assert all(int(str(n[0])) > 0 for n in per_run), (out1[-1000:], out2[-1000:])
    assert_same_scores(stored_scores(url), keys, reference_scores(model, frame))
