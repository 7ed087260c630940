"""End to end: lower the threshold through the HTTP API while ``anomaly-vae stream`` runs on a
real broker; the following records use it, and the API's preview of that threshold agrees with
what then happened; the scorer's lag and latency reach ``/metrics``."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from anomaly_vae import AnomalyVAE
from anomaly_vae.devbroker import DevBroker
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from anomaly_vae.storage.tables import Alert, Score, Threshold
from tests.conftest import REPO, create_topic, fresh_name
from tests.test_api import AUTH, TOKEN, start_server, stop
from tests.test_stream_db import produce, pump_messages, query, scorer_process, wait_for

pytestmark = pytest.mark.integration

LATER = "2026-11-01T06:00:00+00:00"


def test_threshold_lowered_over_http_while_streaming(
    broker: DevBroker, db_url: str, pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    _, model_dir = pump_model
    pipeline = yaml.safe_load((REPO / "pipelines" / "pumps.yaml").read_text())
    pipeline["kafka"] = {"threshold_refresh_s": 0.5, "metrics_interval_s": 0.5}
    pipeline_file = tmp_path / "pumps.yaml"
    pipeline_file.write_text(yaml.safe_dump(pipeline))
    topic = create_topic(broker.bootstrap, partitions=2)
    scorer = scorer_process(
        model_dir,
        db_url,
        broker.bootstrap,
        topic,
        fresh_name("g"),
        "--pipeline",
        str(pipeline_file),
    )
    server = None
    try:
        first, first_keys = pump_messages(300, seed=31)
        produce(broker.bootstrap, topic, first, first_keys)
        count = "SELECT count(*) FROM scores"
        wait_for(lambda: query(db_url, count)[0][0] >= 300, 90, "the first records")
        server = start_server(db_url, TOKEN)
        api = server.client
        before = api.get("/models/pumps/threshold").json()
        lowered = api.post(
            "/models/pumps/thresholds",
            json={
                "warning": {"policy": "quantile", "quantile": 0.6},
                "reason": "more sensitive while we watch pump 3",
                "created_by": "ops",
            },
            headers=AUTH,
        )
        assert lowered.status_code == 201, lowered.text
        new = lowered.json()
        assert new["warning"] < before["warning"]
        time.sleep(1.5)  # > kafka.threshold_refresh_s: the scorer has read it
        second, second_keys = pump_messages(300, seed=32, first_id=300, start=LATER)
        produce(broker.bootstrap, topic, second, second_keys)
        wait_for(lambda: query(db_url, count)[0][0] >= 600, 90, "the later records")
        time.sleep(1.0)  # a metrics interval
        metrics = api.get("/metrics").text
        preview = api.post(
            "/models/pumps/thresholds/preview", json={"since": LATER}
        ).json()  # the threshold in force, from when the later records begin
    finally:
        scorer.send_signal(signal.SIGTERM)
        out, _ = scorer.communicate(timeout=60)
        if server is not None:
            stop(server)
    assert scorer.returncode == 0, out[-3000:]
    assert "threshold in force: " in out  # the stored one, read at start
    assert out.count("threshold in force is now") == 1, out[-3000:]  # the one change

    later = datetime.fromisoformat(LATER)
    engine = create_database_engine(parse_database_url(db_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Score.score, Score.is_anomaly, Score.event_time)).all()
            opened = connection.execute(
                select(Alert.entity_key, func.count())
                .join(Score, Score.id == Alert.score_id)
                .join(Threshold, Threshold.id == Alert.threshold_id)
                .where(Score.event_time >= later, Threshold.version == new["version"])
                .group_by(Alert.entity_key)
            ).all()
    finally:
        engine.dispose()
    late = [r for r in rows if r.event_time >= later]
    early = [r for r in rows if r.event_time < later]
    assert (len(early), len(late)) == (300, 300)
    assert all(r.is_anomaly == (r.score > before["warning"]) for r in early)
    assert all(r.is_anomaly == (r.score > new["warning"]) for r in late)
    flagged_late = sum(r.is_anomaly for r in late)
    assert flagged_late > sum(r.is_anomaly for r in early)

    # The preview of the new threshold over the later records is what happened to them.
    assert preview["proposed"]["warning"] == pytest.approx(new["warning"])
    assert preview["records"] == 300
    assert preview["flagged"] == preview["at_the_time"]["flagged"] == flagged_late
    assert preview["alerts"] == preview["at_the_time"]["alerts"] == sum(int(n) for _, n in opened)
    assert preview["alerts_per_entity"] == {str(e): int(n) for e, n in opened}
    assert preview["alerts"] > 0

    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    scored = {s.labels["kind"]: s.value for s in families["anomaly_vae_records_scored"].samples}
    assert scored == {"stream": 600.0}
    lag = families["anomaly_vae_stream_lag_records"].samples
    assert [s.value for s in lag] == [0.0]
    latency = families["anomaly_vae_stream_latency_p99_seconds"].samples
    assert len(latency) == 1
    assert 0 < latency[0].value < 60
