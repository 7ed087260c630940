"""The HTTP API as a client sees it: a real ``anomaly-vae serve`` process (uvicorn) on a free
loopback port, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import free_port
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from tests.conftest import api_client
from tests.test_cli import run_inline

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"


class Server:
    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url
        self.process = process
        self.client = httpx.Client(base_url=url, timeout=30)

    def output(self) -> str:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=20)
        return out


def start_server(db_url: str, token: str | None) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ANOMALY_VAE_API_TOKEN"}
    if token is not None:
        env["ANOMALY_VAE_API_TOKEN"] = token
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_vae", "serve", "--port", str(port), "--db", db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.communicate()[0]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(url, process)
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not answer /health within 60 s")


def stop(server: Server) -> str:
    server.client.close()
    return server.output()


@pytest.fixture
def scored_db(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> str:
    _, model_dir = pump_model
    export = tmp_path / "export.csv"
    make_pump_data(800, anomaly_rate=0.05, seed=8).to_csv(export, index=False)
    result = run_inline(
        capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    return db_url


@pytest.fixture
def server(scored_db: str) -> Iterator[Server]:
    running = start_server(scored_db, TOKEN)
    yield running
    stop(running)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_read_set_preview_and_act_over_http(server: Server) -> None:
    api = server.client
    assert api.get("/health").json()["read_only"] is False
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/models/{name}/thresholds", "/alerts/{alert_id}/acknowledge", "/metrics"} <= set(paths)

    models = api.get("/models").json()
    assert [(m["name"], m["scores"]) for m in models] == [("pumps", 800)]
    detail = api.get("/models/pumps").json()
    assert detail["threshold"]["version"] == 1
    assert api.get("/models/nope").status_code == 404
    first = api.get("/models/pumps/threshold").json()
    assert first["policy"] == "quantile"
    assert first["alert_rule"] == {"k": 1, "n": 1, "cooldown_s": 0.0, "resolve_after": 1}

    # Preview (read-only, no token needed).
    lower = api.post(
        "/models/pumps/thresholds/preview",
        json={"warning": {"policy": "quantile", "quantile": 0.9}},
    )
    assert lower.status_code == 200, lower.text
    body = lower.json()
    assert body["records"] == 800
    assert body["flagged"] > body["at_the_time"]["flagged"] > 0
    assert body["proposed"]["warning"] < first["warning"]

    # Writes without the token, or with a wrong one, are refused and change nothing.
    change = {"warning": {"policy": "evt", "risk": 1e-4}, "reason": "after incident 42"}
    assert api.post("/models/pumps/thresholds", json=change).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    refused = api.post("/models/pumps/thresholds", json=change, headers=wrong)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert len(api.get("/models/pumps/thresholds").json()) == 1

    # Malformed bodies: 422 with a message, never a 500.
    for bad in (
        {"reason": "no policy"},
        {"warning": {"policy": "median", "value": 3}, "reason": "r"},
        {"warning": {"policy": "quantile", "quantile": 1.5}, "reason": "r"},
        {"warning": {"policy": "value", "value": 3}, "reason": ""},
        {"warning": {"policy": "value", "value": 3}, "reason": "r", "color": "red"},
        {"warning": {"policy": "value", "value": 3}, "reason": "r", "alert_rule": {"k": 3, "n": 2}},
    ):
        response = api.post("/models/pumps/thresholds", json=bad, headers=AUTH)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"]
    not_json = api.post(
        "/models/pumps/thresholds",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    # Well-formed but impossible: 400 with the reason.
    too_risky = api.post(
        "/models/pumps/thresholds",
        json={"warning": {"policy": "evt", "risk": 0.5}, "reason": "r"},
        headers=AUTH,
    )
    assert too_risky.status_code == 400
    assert "risk 0.5 is not in the tail" in too_risky.json()["detail"]
    # The critical level in force (none yet here, so one is set first) above a new warning:
    # the message says how to drop it in the API, not only with the CLI's flags.
    above = api.post(
        "/models/pumps/thresholds/preview",
        json={
            "warning": {"policy": "value", "value": 1e9},
            "critical": {"policy": "value", "value": 1},
        },
    )
    assert above.status_code == 400
    assert '"critical": null in the API' in above.json()["detail"]
    assert api.post("/models/nope/thresholds", json=change, headers=AUTH).status_code == 404
    assert len(api.get("/models/pumps/thresholds").json()) == 1

    # A new version, then only the alert rule, then no critical level.
    created = api.post(
        "/models/pumps/thresholds",
        json={**change, "critical": {"policy": "evt", "risk": 1e-5}, "created_by": "alice"},
        headers=AUTH,
    )
    assert created.status_code == 201, created.text
    v2 = created.json()
    assert (v2["version"], v2["policy"], v2["created_by"]) == (2, "evt", "alice")
    assert v2["critical"] > v2["warning"]
    rule = {"k": 2, "n": 3, "cooldown_s": 30, "resolve_after": 5}
    patched = api.patch(
        "/models/pumps/thresholds", json={"alert_rule": rule, "reason": "debounce"}, headers=AUTH
    )
    assert patched.status_code == 201, patched.text
    v3 = patched.json()
    assert (v3["version"], v3["warning"], v3["critical"]) == (3, v2["warning"], v2["critical"])
    assert v3["alert_rule"] == {**rule, "cooldown_s": 30.0}
    # A warning above the critical level carried over: the way out is named for the API (it
    # said "give a higher --critical, or --no-critical", flags an HTTP client does not have).
    too_high = {"warning": {"policy": "value", "value": v2["critical"] + 1}, "reason": "r"}
    refused = api.post("/models/pumps/thresholds", json=too_high, headers=AUTH)
    assert refused.status_code == 400
    assert '"critical": null in the API' in refused.json()["detail"]
    cleared = api.patch(
        "/models/pumps/thresholds", json={"critical": None, "reason": "r"}, headers=AUTH
    ).json()
    assert (cleared["version"], cleared["critical"], cleared["alert_rule"]["k"]) == (4, None, 2)
    nothing = api.patch("/models/pumps/thresholds", json={"reason": "r"}, headers=AUTH)
    assert nothing.status_code == 400
    history = api.get("/models/pumps/thresholds").json()
    assert [h["version"] for h in history] == [4, 3, 2, 1]

    # Anomalies and alerts.
    anomalies = api.get("/anomalies", params={"model": "pumps", "limit": 5}).json()
    assert len(anomalies) == 5
    times = [a["time"] for a in anomalies]
    assert times == sorted(times, reverse=True)
    later = api.get("/anomalies", params={"since": times[2]}).json()
    assert all(a["time"] >= times[2] for a in later)
    assert api.get("/anomalies", params={"since": "yesterday-ish"}).status_code == 422
    assert api.get("/anomalies", params={"limit": 0}).status_code == 422
    alerts = api.get("/alerts", params={"model": "pumps", "limit": 500}).json()
    assert alerts
    # The rule resolves every alert after one normal record: all are resolved here (acting on
    # an open one: test_an_open_alert_is_acknowledged_then_resolved_over_http).
    assert {a["state"] for a in alerts} == {"resolved"}
    alert_id = alerts[0]["id"]
    assert api.post(f"/alerts/{alert_id}/acknowledge").status_code == 401
    assert api.post(f"/alerts/{alert_id}/acknowledge", headers=AUTH).status_code == 400
    again = api.post(f"/alerts/{alert_id}/resolve", headers=AUTH)
    assert again.status_code == 400
    assert "already resolved" in again.json()["detail"]
    assert api.get("/alerts/999999").status_code == 404
    assert api.post("/alerts/999999/resolve", headers=AUTH).status_code == 404
    assert api.get("/alerts", params={"state": "gone"}).status_code == 422
    # 'until' bounds when they opened, as for /anomalies (there was no way to page back).
    assert api.get("/alerts", params={"until": "2000-01-01"}).json() == []
    everything = api.get("/alerts", params={"until": "2100-01-01", "limit": 500}).json()
    assert [a["id"] for a in everything] == [a["id"] for a in alerts]
    opened = alerts[-1]["opened_at"]
    # An empty period is a mistake, said as for previews (it answered [], "no alerts").
    assert api.get("/alerts", params={"since": opened, "until": opened}).status_code == 400

    # Metrics in the Prometheus text format.
    metrics = api.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    scored = {s.labels["kind"]: s.value for s in families["anomaly_vae_records_scored"].samples}
    assert scored == {"batch": 800.0}
    thresholds = {s.labels["severity"]: s.value for s in families["anomaly_vae_threshold"].samples}
    assert thresholds == {"warning": v2["warning"]}
    assert sum(s.value for s in families["anomaly_vae_alerts"].samples) == len(alerts)
    # Every state is a series, 0 where no alert is in it (none is open or acknowledged
    # here), rather than a series that vanishes.
    by_state = {s.labels["state"]: s.value for s in families["anomaly_vae_alerts"].samples}
    assert set(by_state) == {"open", "acknowledged", "resolved"}
    assert by_state["acknowledged"] == 0

    assert TOKEN not in stop(server)


def test_an_open_alert_is_acknowledged_then_resolved_over_http(
    scored_db: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The test above only ever met resolved alerts (it acted in a branch of the newest one's
    # state): an acknowledge endpoint that resolved the alert instead passed every test.
    _, model_dir = pump_model
    db = ("--db", scored_db)
    rule = ("thresholds", "set", "pumps", "--resolve-after", "1000000", "--reason", "r", *db)
    assert run_inline(capsys, *rule).returncode == 0
    export = tmp_path / "more.csv"
    make_pump_data(300, anomaly_rate=0.1, seed=9).to_csv(export, index=False)
    score = ("score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    assert run_inline(capsys, *score).returncode == 0
    server = start_server(scored_db, TOKEN)
    try:
        api = server.client
        alerts = api.get("/alerts", params={"model": "pumps", "state": "open"}).json()
        assert alerts
        alert_id = alerts[0]["id"]
        acked = api.post(f"/alerts/{alert_id}/acknowledge", json={"by": "bob"}, headers=AUTH)
        assert acked.status_code == 200, acked.text
        assert (acked.json()["state"], acked.json()["acknowledged_by"]) == ("acknowledged", "bob")
        assert acked.json()["resolved_at"] is None
        assert (acked.json()["changed"], acked.json()["message"]) == (
            True,
            f"alert {alert_id} is now acknowledged",
        )
        assert api.get(f"/alerts/{alert_id}").json()["state"] == "acknowledged"
        # Another operator (here the default "api"): refused, as before.
        twice = api.post(f"/alerts/{alert_id}/acknowledge", headers=AUTH)
        assert twice.status_code == 400, twice.text
        assert "already acknowledged (by bob at" in twice.json()["detail"]
        # The same operator again (a retried request): a success that changes nothing (it
        # was a 400, and a client retrying after a timeout could not tell it had worked).
        retried = api.post(f"/alerts/{alert_id}/acknowledge", json={"by": "bob"}, headers=AUTH)
        assert retried.status_code == 200, retried.text
        assert retried.json()["changed"] is False
        when = acked.json()["acknowledged_at"][:16].replace("T", " ")
        assert retried.json()["message"] == (
            f"alert {alert_id} is already acknowledged by bob at {when}Z: nothing changed"
        )
        assert retried.json()["acknowledged_at"] == acked.json()["acknowledged_at"]
        resolved = api.post(
            f"/alerts/{alert_id}/resolve", json={"by": "carol", "note": "fixed"}, headers=AUTH
        )
        assert resolved.status_code == 200, resolved.text
        body = resolved.json()
        assert (body["state"], body["resolved_by"], body["note"]) == ("resolved", "carol", "fixed")
        assert body["acknowledged_by"] == "bob"
        again = api.post(
            f"/alerts/{alert_id}/resolve", json={"by": "carol", "note": "fixed"}, headers=AUTH
        )
        assert again.status_code == 200, again.text
        assert (again.json()["changed"], again.json()["note"]) == (False, "fixed")
        # The same operator with another note: refused, the note not added (as before).
        other_note = api.post(
            f"/alerts/{alert_id}/resolve", json={"by": "carol", "note": "more"}, headers=AUTH
        )
        assert other_note.status_code == 400, other_note.text
        assert "the note given was not added" in other_note.json()["detail"]
        states = {a["id"]: a["state"] for a in api.get("/alerts", params={"limit": 500}).json()}
        assert states[alert_id] == "resolved"
        assert sum(s == "open" for s in states.values()) == len(alerts) - 1
    finally:
        stop(server)


def test_without_a_token_the_api_is_read_only(scored_db: str) -> None:
    server = start_server(scored_db, None)
    try:
        api = server.client
        assert api.get("/health").json()["read_only"] is True
        change = {"warning": {"policy": "value", "value": 1.0}, "reason": "r"}
        refused = api.post("/models/pumps/thresholds", json=change, headers=AUTH)
        assert refused.status_code == 403
        assert "ANOMALY_VAE_API_TOKEN" in refused.json()["detail"]
        assert api.post("/alerts/1/resolve", headers=AUTH).status_code == 403
        assert len(api.get("/models/pumps/thresholds").json()) == 1
        assert api.get("/alerts").status_code == 200
    finally:
        stop(server)


def test_a_port_in_use_is_one_line_at_start(scored_db: str) -> None:
    # uvicorn's own "ERROR: [Errno 98] ... address already in use" and exit status 3 came after
    # the start-up lines; now one line naming the address and what to do, exit 2.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "anomaly_vae", "serve", "--port", str(port), "--db", scored_db],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "choose another --port" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_weak_token_is_refused_at_start(
    scored_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "ANOMALY_VAE_API_TOKEN": "changeme"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly_vae",
            "serve",
            "--port",
            str(free_port()),
            "--db",
            scored_db,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ANOMALY_VAE_API_TOKEN is too short or a placeholder" in result.stderr
    assert "changeme" not in result.stderr


def test_times_without_a_time_zone_are_utc(server: Server) -> None:
    # As on the command line (--since 2026-11-01): a date, or a time without a zone, is UTC,
    # not a database error (503).
    api = server.client
    plain = api.get("/anomalies", params={"since": "2000-01-01", "limit": 5})
    assert plain.status_code == 200, plain.text
    zoned = api.get("/anomalies", params={"since": "2000-01-01T00:00:00Z", "limit": 5})
    assert plain.json()
    assert plain.json() == zoned.json()
    assert api.get("/anomalies", params={"until": "2000-01-01T00:00"}).json() == []
    assert api.get("/alerts", params={"since": "2000-01-01T00:00:00"}).status_code == 200
    body = {
        "warning": {"policy": "contamination", "contamination": 0.05, "since": "2000-01-01"},
        "since": "2000-01-01",
        "until": "2100-01-01T00:00:00",
    }
    preview = api.post("/models/pumps/thresholds/preview", json=body)
    assert preview.status_code == 200, preview.text
    assert preview.json()["records"] == 800
    assert preview.json()["since"].startswith("2000-01-01T00:00:00")


def test_a_nan_or_infinity_in_a_body_is_a_422(server: Server) -> None:
    # Python's json reads NaN and 1e999 (as nan and inf); the error must still be a 422 with
    # a message, not a 500 from echoing the value back.
    for number in ("NaN", "1e999", "-Infinity"):
        body = '{"warning": {"policy": "value", "value": ' + number + '}, "reason": "r"}'
        response = server.client.post(
            "/models/pumps/thresholds",
            content=body,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "warning", "value", "value"]
        assert "finite" in error["msg"]
    assert len(server.client.get("/models/pumps/thresholds").json()) == 1


def test_a_boolean_where_a_number_belongs_is_a_422(server: Server) -> None:
    # pydantic reads true as 1: a fixed threshold of 'true' became 1.0 and k 'true' became 1.
    for body in (
        {"warning": {"policy": "value", "value": True}, "reason": "r"},
        {"warning": {"policy": "quantile", "quantile": False}, "reason": "r"},
        {"alert_rule": {"k": True}, "reason": "r"},
    ):
        method = server.client.post if "warning" in body else server.client.patch
        response = method("/models/pumps/thresholds", json=body, headers=AUTH)
        assert response.status_code == 422, response.text
        assert "boolean" in response.text
    assert len(server.client.get("/models/pumps/thresholds").json()) == 1


def test_scoring_records_now_under_the_threshold_in_force(
    server: Server,
    pump_model: tuple[AnomalyVAE, Path],
    scored_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    model, _ = pump_model
    frame = make_pump_data(60, anomaly_rate=0.1, seed=12)
    records = json.loads(frame.to_json(orient="records"))
    records[3].pop("rpm")  # a feature field missing
    records[7]["flow"] = "fast"  # not a number
    records[9]["vibration"] = None  # a missing value, scored as one
    api = server.client
    in_force = api.get("/models/pumps/threshold").json()
    response = api.post("/models/pumps/score", json={"records": records})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["threshold"] == in_force["warning"]
    assert body["threshold_version"] == in_force["version"]
    assert body["model_version"] == api.get("/models/pumps").json()["versions"][0]["version"]
    rejects = {r["index"]: r["reason"] for r in body["rejects"]}
    assert set(rejects) == {3, 7}
    assert "'rpm'" in rejects[3]
    assert "flow" in rejects[7]
    scored = body["scores"]
    assert sorted([s["index"] for s in scored] + list(rejects)) == list(range(60))
    # The same scores as the model gives in Python, flagged at the threshold in force.
    kept = [r for i, r in enumerate(records) if i not in (3, 7)]
    same = pd.DataFrame.from_records(kept, index=[i for i in range(60) if i not in (3, 7)])
    expected = model.score_batch(same, threshold=in_force["warning"])
    got = {s["index"]: s for s in scored}
    for index, row in expected.scores.iterrows():
        assert got[index]["score"] == pytest.approx(float(row["score"]), rel=1e-5)
        assert got[index]["is_anomaly"] == bool(row["is_anomaly"])
    assert got[9]["score"] > 0
    flagged = [s for s in scored if s["is_anomaly"]]
    assert flagged
    assert all(s["severity"] == "warning" and s["top_features"] for s in flagged)
    # A new threshold applies to the next request, without a restart; with a critical level,
    # the records above it are critical (a response that ignored it passed every test).
    lowest = min(s["score"] for s in scored)
    middle = float(np.median([s["score"] for s in scored]))
    change = api.post(
        "/models/pumps/thresholds",
        json={
            "warning": {"policy": "value", "value": lowest - 1},
            "critical": {"policy": "value", "value": middle},
            "reason": "test",
        },
        headers=AUTH,
    )
    assert change.status_code == 201, change.text
    again = api.post("/models/pumps/score", json={"records": records}).json()
    assert again["threshold_version"] == in_force["version"] + 1
    assert again["critical"] == middle
    assert all(s["is_anomaly"] for s in again["scores"])
    levels = [(s["severity"], s["score"] > middle) for s in again["scores"]]
    assert {level for level, _ in levels} == {"warning", "critical"}
    assert all((level == "critical") == above for level, above in levels)
    # Unknown names and versions are 404; an empty or oversized body 422.
    assert api.post("/models/nope/score", json={"records": records}).status_code == 404
    unknown = api.post("/models/pumps/score", json={"records": records, "version": "abc"})
    assert unknown.status_code == 404
    assert "registered:" in unknown.json()["detail"]
    assert api.post("/models/pumps/score", json={"records": []}).status_code == 422
    none_whole = api.post("/models/pumps/score", json={"records": [{"rpm": 1.0}] * 3})
    assert none_whole.status_code == 200, none_whole.text
    assert [r["index"] for r in none_whole.json()["rejects"]] == [0, 1, 2]
    assert none_whole.json()["scores"] == []
    too_many = {"records": [records[0]] * 10_001}
    assert api.post("/models/pumps/score", json=too_many).status_code == 422
    # A registered model whose directory is gone from this server: 409, saying so.
    from anomaly_vae.config import PipelineConfig

    small = AnomalyVAE(config=PipelineConfig(name="gone"), epochs=1)
    small.fit(frame.drop(columns=["ts", "label"]).iloc[:50])
    small.save(tmp_path / "gone")
    export = tmp_path / "gone.csv"
    frame.to_csv(export, index=False)
    result = run_inline(
        capsys, "score", str(export), "--model-dir", str(tmp_path / "gone"), "--db", scored_db
    )
    assert result.returncode == 0, result.stderr
    import shutil

    shutil.rmtree(tmp_path / "gone")
    gone = api.post("/models/gone/score", json={"records": records[:2]})
    assert gone.status_code == 409
    assert "cannot be loaded" in gone.json()["detail"]


def test_a_nan_in_a_record_to_score_is_rejected_as_the_stream_rejects_it(
    server: Server, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    # Python's JSON reader takes NaN, and the text "NaN" read as a number is one too: both were
    # scored as a missing value, where the stream scorer dead-letters the same message (null
    # is the missing value).
    from anomaly_vae.sources.kafka import Message, decode_messages

    record = json.loads(make_pump_data(1, seed=3).to_json(orient="records"))[0]
    texts = [
        json.dumps({**record, "flow": float("nan")}),
        json.dumps({**record, "flow": "NaN"}),
        json.dumps({**record, "flow": " -Infinity"}),
        json.dumps({**record, "flow": None}),
    ]
    body = '{"records": [' + ", ".join(texts) + "]}"
    response = server.client.post(
        "/models/pumps/score", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    rejects = {r["index"]: r["reason"] for r in response.json()["rejects"]}
    assert set(rejects) == {0, 1, 2}
    assert all("'flow'" in reason for reason in rejects.values())
    assert [s["index"] for s in response.json()["scores"]] == [3]  # null: a missing value
    # The stream scorer's decoder on the same texts (bar the NaN number, which is not JSON).
    features = pump_model[0].schema_.names
    messages = [Message("t", 0, i, None, text.encode(), 0) for i, text in enumerate(texts)]
    decoded = decode_messages(messages[1:], features=features)
    assert len(decoded.rejects) == 2
    assert len(decoded.frame) == 1


def test_a_rejected_input_is_not_echoed_whole(server: Server, scored_db: str) -> None:
    # A 422 echoed its whole input: 10,001 records, or a reason of megabytes, came back in
    # the response; a version of megabytes came back in a 404's message.
    api = server.client
    record = json.loads(make_pump_data(1, seed=3).to_json(orient="records"))[0]
    too_many = api.post("/models/pumps/score", json={"records": [record] * 10_001})
    assert too_many.status_code == 422
    assert len(too_many.content) < 2_000
    assert "10,001" in too_many.text or "10001" in too_many.text
    long_reason = api.post(
        "/models/pumps/thresholds",
        json={"warning": {"policy": "value", "value": 40.0}, "reason": "r" * 1_000_000},
        headers=AUTH,
    )
    assert long_reason.status_code == 422
    assert len(long_reason.content) < 2_000
    assert "not all shown" in long_reason.text
    for version in ("v" * 1_000_000, ""):
        bad = api.post("/models/pumps/score", json={"records": [record], "version": version})
        assert bad.status_code == 422
        assert len(bad.content) < 2_000
    # A prefix of a content hash names one version; one that begins two is refused.
    newest = api.get("/models/pumps").json()["versions"][0]["version"]
    engine = create_database_engine(parse_database_url(scored_db))
    with engine.begin() as connection:  # a second version whose hash begins the same
        connection.exec_driver_sql(
            "INSERT INTO models (name, version, content_hash, path, score_kind, feature_schema, "
            "training_summary, calibration, package_version, created_at, registered_at) "
            f"SELECT name, '{newest[:4]}ffffffff', '{newest[:4]}{'f' * 60}', path, score_kind, "
            "feature_schema, training_summary, calibration, package_version, created_at, "
            "registered_at FROM models"
        )
    engine.dispose()
    by_prefix = api.post("/models/pumps/score", json={"records": [record], "version": newest[:6]})
    assert by_prefix.status_code == 200, by_prefix.text
    assert by_prefix.json()["model_version"] == newest
    both = api.post("/models/pumps/score", json={"records": [record], "version": newest[:4]})
    assert both.status_code == 400, both.text
    assert "ambiguous" in both.json()["detail"]


@pytest.mark.parametrize("denial", ["privilege", "read-only"])
def test_a_database_that_refuses_writes_says_why_not_unavailable(
    denial: str,
    postgres_databases: Callable[[], str],
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An API served with a least-privilege user (or on a standby) answered every change with
    # "the results database is unavailable", as if it were down, while reads worked.
    from sqlalchemy.engine import make_url

    from anomaly_vae.storage.migrate import upgrade
    from tests.conftest import fresh_name

    url = postgres_databases()
    engine = create_database_engine(parse_database_url(url))
    upgrade(engine)
    export = tmp_path / "export.csv"
    make_pump_data(200, anomaly_rate=0.05, seed=8).to_csv(export, index=False)
    _, model_dir = pump_model
    scored = run_inline(
        capsys, "score", str(export), "--model-dir", str(model_dir), "--db", url, "--quiet"
    )
    assert scored.returncode == 0, scored.stderr
    role = fresh_name("api_ro").replace("-", "_")
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        connection.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        if denial == "read-only":
            connection.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
            connection.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
            connection.exec_driver_sql(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    role_url = make_url(url).set(username=role).render_as_string(False)
    server = start_server(role_url, TOKEN)
    try:
        # /health says so (it said read_only false: a token is set), as does the start-up log.
        health = server.client.get("/health").json()
        assert server.client.get("/models/pumps/thresholds").status_code == 200
        change = server.client.post(
            "/models/pumps/thresholds",
            json={"warning": {"policy": "value", "value": 40.0}, "reason": "x"},
            headers=AUTH,
        )
        cli = run_inline(
            capsys, "thresholds", "set", "pumps", "--value", "40", "--reason", "x", "--db", role_url
        )
    finally:
        log = stop(server)
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
        engine.dispose()
    assert change.status_code == 503, change.text
    assert health["read_only"] is True, health
    expected = "may not change thresholds" if denial == "privilege" else "read-only transactions"
    assert expected in health["read_only_reason"], health
    assert f"takes no changes: the database user '{role}'" in log, log
    detail = change.json()["detail"]
    if denial == "privilege":
        assert "permission denied for table thresholds" in detail
        assert f"refused user '{role}'" in detail
        assert "grant it the privileges" in detail
    else:
        assert "takes no changes (a read-only transaction" in detail
        assert "point the URL at the primary" in detail
    assert "\n" not in detail
    # The command line says the same, in one line.
    assert cli.returncode == 2
    assert detail.removeprefix("the results database refused this: ") in cli.stderr


def openapi_schema(tmp_path: Path) -> dict[str, Any]:
    """The API's OpenAPI schema, from an app on a scratch SQLite database."""
    from anomaly_vae.api import ApiSettings, create_app
    from anomaly_vae.storage.engine import DatabaseTarget

    target = DatabaseTarget(parse_database_url(f"sqlite:///{tmp_path / 'r.db'}"), "--db")
    engine = create_database_engine(target.url)
    try:
        return create_app(ApiSettings(database=target, token=None), engine).openapi()
    finally:
        engine.dispose()


def test_the_docs_pages_load_nothing_from_another_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /docs and /redoc loaded Swagger UI and ReDoc from a CDN: on a machine without internet
    # access (where such a service often runs) both pages stayed blank.
    import re

    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert run_inline(capsys, "db", "upgrade", "--db", url).returncode == 0
    with api_client(url) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200, page
            # No URL with a host of its own (comments aside): every asset is this server's.
            links = re.findall(r"(?:src|href)=[\"']?([^\"' >]+)", html.text)
            assert "//" not in re.sub(r"<!--.*?-->", "", html.text, flags=re.S), (page, links)
            assets = re.findall(r"(?:src|href)=[\"'](/[^\"']+)", html.text) + re.findall(
                r"url: '(/[^']+)'", html.text
            )
            assert any(a.endswith(".js") for a in assets), (page, assets)
            for asset in assets:
                served = client.get(asset)
                assert served.status_code == 200, (page, asset)
                assert served.content, (page, asset)
        assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text
        # Not part of the API: the schema lists no asset path.
        assert not [p for p in client.get("/openapi.json").json()["paths"] if "assets" in p]


def test_the_openapi_schema_documents_the_error_responses(tmp_path: Path) -> None:
    # Only 200 and 422 were documented: a client generated from /openapi.json knew nothing of
    # the 401 / 403 / 404 / 409 / 503 the README lists, nor of their {"detail": ...} body.
    schema = openapi_schema(tmp_path)
    paths = schema["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"401", "403", "400", "404", "503"} <= codes("/models/{name}/thresholds", "post")
    assert {"401", "403", "400", "404"} <= codes("/models/{name}/thresholds", "patch")
    assert {"401", "403", "400", "404"} <= codes("/alerts/{alert_id}/acknowledge", "post")
    assert {"404", "409", "503"} <= codes("/models/{name}/score", "post")
    assert {"404", "503"} <= codes("/anomalies", "get")
    assert "503" in codes("/health", "get")
    body = paths["/models/{name}"]["get"]["responses"]["404"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/ErrorDetail")


def test_an_alert_id_beyond_64_bits_is_a_404(server: Server) -> None:
    # The SQLite driver raised OverflowError on such an id: a 500 from the API (and a traceback
    # from 'alerts ack'), where any other unknown alert is a 404.
    huge = str(2**64)
    for method, path in (
        ("GET", f"/alerts/{huge}"),
        ("POST", f"/alerts/{huge}/acknowledge"),
        ("POST", f"/alerts/-{huge}/resolve"),
    ):
        response = server.client.request(method, path, headers=AUTH)
        assert response.status_code == 404, response.text
        assert response.json()["detail"].startswith("no alert ")


def test_a_nul_character_in_a_request_is_the_clients_error_not_an_outage(
    server: Server, scored_db: str
) -> None:
    # PostgreSQL text cannot hold NUL: the driver refuses the value, and the API answered
    # 503 "the results database is unavailable" (an outage, to a monitor) for the client's
    # own bad input. SQLite stores it.
    api = server.client
    change = {"warning": {"policy": "value", "value": 40.0}, "reason": "x"}
    alert_id = api.get("/alerts", params={"limit": 1}).json()[0]["id"]
    engine = create_database_engine(parse_database_url(scored_db))
    with engine.begin() as connection:  # open again, to be acted on
        connection.exec_driver_sql(
            f"UPDATE alerts SET state = 'open', resolved_at = NULL, resolved_by = NULL "
            f"WHERE id = {alert_id}"
        )
    engine.dispose()
    responses = [
        api.post("/models/pumps/thresholds", json={**change, "reason": "a\x00b"}, headers=AUTH),
        api.post("/models/pumps/thresholds", json={**change, "created_by": "a\x00"}, headers=AUTH),
        api.post(f"/alerts/{alert_id}/resolve", json={"note": "\x00"}, headers=AUTH),
        api.get("/anomalies", params={"entity": "P\x001"}),
        api.get("/alerts", params={"entity": "P\x001"}),
        api.get("/anomalies", params={"model": "pu\x00mps"}),
        api.get("/models/pu%00mps/thresholds"),
    ]
    for response in responses:
        assert response.status_code < 500, response.text
        if scored_db.startswith("postgresql"):
            assert response.status_code == 422, response.text
            # A 422 in the shape the schema documents for every 422 (HTTPValidationError).
            (error,) = response.json()["detail"]
            assert set(error) == {"type", "loc", "msg"}
            detail = error["msg"]
            assert "cannot go to the results database" in detail
            assert "NUL" in detail
    assert api.get("/health").status_code == 200


# The registered name closest to a misspelt one is named (letter case first).
PUMSP_NOT_REGISTERED = "no model named 'pumsp' is registered (did you mean 'pumps'?)"


def test_listing_by_an_unregistered_model_name_is_a_404(server: Server) -> None:
    # An empty list for a misspelt name read as "no anomalies, no alerts": a clean bill.
    for path in ("/anomalies", "/alerts"):
        response = server.client.get(path, params={"model": "pumsp"})
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == PUMSP_NOT_REGISTERED
        assert server.client.get(path, params={"model": "pumps"}).status_code == 200
    # The thresholds of a name nobody registered: an empty history read as "never set", and
    # the threshold in force as "model 'pumsp' has no threshold".
    for path in ("/models/{}/thresholds", "/models/{}/threshold"):
        response = server.client.get(path.format("pumsp"))
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == PUMSP_NOT_REGISTERED
        assert server.client.get(path.format("pumps")).status_code == 200


def test_a_patch_changes_only_the_alert_rule_settings_it_names(server: Server) -> None:
    # PATCH {"alert_rule": {"cooldown_s": 600}} put k, n and resolve_after back to their
    # defaults (1, 1, 1), where 'thresholds set --cooldown 600' keeps them: a partial rule in a
    # PATCH (or a preview) changes the settings it names, the others stay as in force.
    api = server.client

    def patch(rule: dict[str, Any]) -> httpx.Response:
        return api.patch(
            "/models/pumps/thresholds", json={"alert_rule": rule, "reason": "r"}, headers=AUTH
        )

    full = {"k": 2, "n": 3, "cooldown_s": 30.0, "resolve_after": 5}
    assert patch(full).json()["alert_rule"] == full
    cooled = patch({"cooldown_s": 600})
    assert cooled.status_code == 201, cooled.text
    assert cooled.json()["alert_rule"] == {**full, "cooldown_s": 600.0}
    # k alone against the n in force (not against a default n of 1).
    raised = patch({"k": 3})
    assert raised.status_code == 201, raised.text
    assert raised.json()["alert_rule"] == {**full, "k": 3, "cooldown_s": 600.0}
    too_many = patch({"k": 4})
    assert too_many.status_code == 400
    assert "k (4) must not exceed n (3)" in too_many.json()["detail"]
    assert patch({}).status_code == 400  # nothing to change
    assert len(api.get("/models/pumps/thresholds").json()) == 4

    preview = api.post(
        "/models/pumps/thresholds/preview", json={"alert_rule": {"resolve_after": 9}}
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["proposed"]["alert_rule"] == {
        "k": 3,
        "n": 3,
        "cooldown_s": 600.0,
        "resolve_after": 9,
    }


def test_a_preview_over_the_replay_limit_is_a_400_that_says_how_to_narrow(
    scored_db: str,
) -> None:
    # A preview needs no token, and it read every stored score of its period into the
    # server's memory, however many: one request over a year of a busy stream took the server.
    quantile = {"warning": {"policy": "quantile", "quantile": 0.9}}
    contamination = {"warning": {"policy": "contamination", "contamination": 0.05}}
    with api_client(scored_db, max_replay_scores=799) as client:
        for body in (quantile, contamination):  # the replay, and a threshold from the scores
            refused = client.post("/models/pumps/thresholds/preview", json=body)
            assert refused.status_code == 400, refused.text
            detail = refused.json()["detail"]
            assert "model pumps version " in detail
            assert "has more than 799 stored scores in all" in detail
            assert "since / until" in detail
            assert "--max-replay-scores" in detail
        since = client.post(
            "/models/pumps/thresholds/preview", json={**quantile, "since": "2000-01-01"}
        )
        assert "more than 799 stored scores since 2000-01-01T00:00:00" in since.json()["detail"]
    with api_client(scored_db, max_replay_scores=800) as client:  # exactly the limit: served
        for body in (quantile, contamination):
            served = client.post("/models/pumps/thresholds/preview", json=body)
            assert served.status_code == 200, served.text
            assert served.json()["records"] == 800


def test_serve_refuses_a_replay_limit_under_one(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_inline(capsys, "serve", "--max-replay-scores", "0")
    assert result.returncode == 2
    assert "--max-replay-scores must be >= 1, got 0" in result.stderr


def test_a_preview_until_at_or_before_since_is_a_400(server: Server) -> None:
    body = {"since": "2026-11-13", "until": "2026-11-13"}
    response = server.client.post("/models/pumps/thresholds/preview", json=body)
    assert response.status_code == 400, response.text
    assert "is not after since" in response.json()["detail"]


@pytest.mark.parametrize(
    "path", ["/anomalies", "/alerts", "/dead-letters", "/dead-letters/summary"]
)
def test_a_listing_until_at_or_before_since_is_a_400_as_for_a_preview(
    server: Server, path: str
) -> None:
    # The listings answered [] for a period that holds nothing (until before since, the two
    # swapped), which read as "no anomalies"; the preview endpoint said it was a mistake.
    response = server.client.get(path, params={"since": "2026-11-14", "until": "2026-11-13"})
    assert response.status_code == 400, response.text
    assert "is not after since" in response.json()["detail"]
    ok = server.client.get(path, params={"since": "2026-11-13", "until": "2026-11-14"})
    assert ok.status_code == 200, ok.text


def test_a_request_body_over_the_limit_is_a_413_whole_or_in_chunks(server: Server) -> None:
    # No limit: a 50 MB string was taken in and parsed, whatever its use.
    from anomaly_vae.api import MAX_BODY_BYTES

    big = b'{"records": [' + b" " * MAX_BODY_BYTES + b"]}"
    headers = {**AUTH, "Content-Type": "application/json"}
    whole = server.client.post("/models/pumps/score", content=big, headers=headers)
    assert whole.status_code == 413, whole.text
    assert "over 32 MiB" in whole.json()["detail"]

    def pieces() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    chunked = server.client.post("/models/pumps/score", content=pieces(), headers=headers)
    assert chunked.status_code == 413, chunked.text
    assert "over 32 MiB" in chunked.json()["detail"]
    small = server.client.post("/models/pumps/score", json={"records": []}, headers=AUTH)
    assert small.status_code != 413


def test_the_openapi_schema_documents_the_413_where_a_request_has_a_body(tmp_path: Path) -> None:
    # The body limit's 413 had a description (from MAX_BODY_BYTES) that no operation used: a
    # client generated from /openapi.json knew nothing of it, though the README lists it.
    from anomaly_vae.api import MAX_BODY_BYTES

    schema = openapi_schema(tmp_path)
    with_body = [
        (path, method, operation["responses"])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    # thresholds POST / PATCH / preview / rollback, score, acknowledge, resolve
    assert len(with_body) == 7
    for path, method, responses in with_body:
        assert "413" in responses, (method, path)
        assert "415" in responses, (method, path)
        assert f"{MAX_BODY_BYTES // 2**20} MiB" in responses["413"]["description"]


def test_a_retried_threshold_change_adds_no_version(scored_db: str) -> None:
    # A client that sent its PATCH (or POST) again, after a timeout say, added a second
    # version identical to the first: the history filled with copies of one change.
    with api_client(scored_db, token=TOKEN) as api:
        change = {"alert_rule": {"cooldown_s": 600}, "reason": "quieter", "created_by": "ops"}
        first = api.patch("/models/pumps/thresholds", json=change, headers=AUTH)
        assert first.status_code == 201, first.text
        assert (first.json()["version"], first.json()["created"]) == (2, True)
        again = api.patch("/models/pumps/thresholds", json=change, headers=AUTH)
        assert again.status_code == 200, again.text
        assert again.json() == first.json() | {"created": False}
        body = {"warning": {"policy": "value", "value": 40.0}, "reason": "r"}
        assert api.post("/models/pumps/thresholds", json=body, headers=AUTH).status_code == 201
        retried = api.post("/models/pumps/thresholds", json=body, headers=AUTH)
        assert retried.status_code == 200, retried.text
        assert (retried.json()["version"], retried.json()["created"]) == (3, False)
        assert [t["version"] for t in api.get("/models/pumps/thresholds").json()] == [3, 2, 1]
        responses = api.get("/openapi.json").json()["paths"]["/models/{name}/thresholds"]
        assert {"200", "201"} <= set(responses["patch"]["responses"])
        assert {"200", "201"} <= set(responses["post"]["responses"])


def test_a_rollback_over_http_puts_an_earlier_version_back_in_force(server: Server) -> None:
    # The CLI's 'thresholds rollback' has its API twin: POST .../thresholds/rollback.
    api = server.client
    first = api.get("/models/pumps/threshold").json()
    changed = api.post(
        "/models/pumps/thresholds",
        json={
            "warning": {"policy": "value", "value": 1.0},
            "alert_rule": {"k": 2, "n": 4},
            "reason": "too low",
        },
        headers=AUTH,
    )
    assert changed.status_code == 201, changed.text
    back = api.post(
        "/models/pumps/thresholds/rollback",
        json={"version": first["version"], "reason": "undo", "created_by": "ops"},
        headers=AUTH,
    )
    assert back.status_code == 201, back.text
    body = back.json()
    assert body["version"] == first["version"] + 2
    assert (body["warning"], body["critical"], body["alert_rule"]) == (
        first["warning"],
        first["critical"],
        first["alert_rule"],
    )
    assert body["parameters"]["rolled_back_to"] == first["version"]
    assert body["created_by"] == "ops"
    assert api.get("/models/pumps/threshold").json()["version"] == body["version"]
    rollback = "/models/pumps/thresholds/rollback"
    missing = api.post(rollback, json={"version": 99, "reason": "r"}, headers=AUTH)
    assert missing.status_code == 404
    assert "no threshold v99" in missing.json()["detail"]
    assert body["created"] is True
    # The version in force, or a retry of the rollback: nothing to add, a 200 saying so.
    for version in (body["version"], first["version"]):
        same = api.post(rollback, json={"version": version, "reason": "r"}, headers=AUTH)
        assert same.status_code == 200, same.text
        assert (same.json()["version"], same.json()["created"]) == (body["version"], False)
    assert api.get("/models/pumps/threshold").json()["version"] == body["version"]
    unknown = api.post(
        "/models/nope/thresholds/rollback", json={"version": 1, "reason": "r"}, headers=AUTH
    )
    assert unknown.status_code == 404
    assert api.post(rollback, json={"version": 1, "reason": "r"}).status_code == 401
    assert api.post(rollback, json={"version": 0, "reason": "r"}, headers=AUTH).status_code == 422


# ================================================ scoring over FastAPI's TestClient (SQLite)
@pytest.fixture(scope="module")
def windowed_pumps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small windowed model (pipelines/pumps_windows.yaml), saved."""
    from anomaly_vae.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(
        Path(__file__).resolve().parents[1] / "pipelines" / "pumps_windows.yaml"
    )
    cfg.training.epochs = 3
    cfg.training.progress = False
    model = AnomalyVAE(config=cfg).fit(make_pump_data(800, n_pumps=4, seed=1))
    path = tmp_path_factory.mktemp("models") / "pumps-windows"
    model.save(path)
    return path


@pytest.fixture
def score_client(
    pump_model: tuple[AnomalyVAE, Path],
    windowed_pumps: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Any]:
    """FastAPI's TestClient on a SQLite database where 'pumps' and 'pumps-windows' are
    registered (each scored an export)."""

    url = f"sqlite:///{tmp_path / 'results.db'}"
    export = tmp_path / "export.csv"
    make_pump_data(40, n_pumps=4, seed=8).to_csv(export, index=False)
    for model_dir in (pump_model[1], windowed_pumps):
        result = run_inline(
            capsys, "score", str(export), "--model-dir", str(model_dir), "--db", url, "--quiet"
        )
        assert result.returncode == 0, result.stderr
    with api_client(url) as client:
        yield client


def pump_records(n: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(
        make_pump_data(n, n_pumps=4, seed=12).to_json(orient="records")
    )
    return records


def test_an_integer_too_large_for_a_number_is_a_reject_not_a_500(score_client: Any) -> None:
    # {"rpm": 1000...0} (400 digits) is valid JSON; pandas raised OverflowError reading it:
    # a 500 with no body a client could read, and the other records unscored.
    huge = "1" + "0" * 400
    for model, field in (("pumps", "rpm"), ("pumps", "flow"), ("pumps-windows", "ts")):
        records = pump_records(6)
        records[2][field] = "HUGE"
        records[4][field] = "HUGE"
        body = json.dumps({"records": records}).replace('"HUGE"', huge, 1)
        body = body.replace('"HUGE"', "-" + huge, 1)
        response = score_client.post(
            f"/models/{model}/score", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
        rejects = {r["index"]: r["reason"] for r in response.json()["rejects"]}
        assert set(rejects) == {2, 4}, rejects
        assert f"field '{field}': an integer of 401 digits is not a finite number" == rejects[2]
        assert sorted(s["index"] for s in response.json()["scores"]) == [0, 1, 3, 5]


def test_an_entity_that_is_an_array_or_object_is_rejected_as_the_stream_rejects_it(
    score_client: Any,
) -> None:
    # {"pump_id": ["P1"]} was windowed as the entity "['P1']" (and {"k": 1} as "{'k': 1}"),
    # where the stream scorer dead-letters the same message.
    from anomaly_vae.sources.kafka import Message, decode_messages

    for model in ("pumps-windows", "pumps"):
        records = pump_records(4)
        records[1]["pump_id"] = ["P1"]
        records[2]["pump_id"] = {"k": 1}
        response = score_client.post(f"/models/{model}/score", json={"records": records})
        assert response.status_code == 200, response.text
        assert response.json()["rejects"] == [
            {
                "index": 1,
                "reason": "entity field 'pump_id' is a JSON array: expected text or a number",
            },
            {
                "index": 2,
                "reason": "entity field 'pump_id' is a JSON object: expected text or a number",
            },
        ]
        assert [s["index"] for s in response.json()["scores"]] == [0, 3]
    messages = [Message("t", 0, i, None, json.dumps(r).encode(), 0) for i, r in enumerate(records)]
    decoded = decode_messages(messages, features=["flow"], entity_field="pump_id")
    assert sorted(decoded.rejects["reason"]) == [r["reason"] for r in response.json()["rejects"]]


def test_a_window_field_no_record_has_rejects_each_record(score_client: Any) -> None:
    # A record without 'ts' among others was rejected ("window time column 'ts': missing"),
    # but the same record alone, or every record without it, was a 422 for the request; and
    # records that all lacked a feature got a 422 naming the entity field, not the feature.
    for field, reason in (
        ("ts", "window time column 'ts': missing"),
        ("pump_id", "window entity column 'pump_id': missing"),
    ):
        for n in (1, 3):
            records = pump_records(n)
            for record in records:
                del record[field]
            response = score_client.post("/models/pumps-windows/score", json={"records": records})
            assert response.status_code == 200, response.text
            assert response.json()["scores"] == []
            assert response.json()["rejects"] == [{"index": i, "reason": reason} for i in range(n)]
    records = pump_records(3)
    for record in records:
        del record["flow"]
    response = score_client.post("/models/pumps-windows/score", json={"records": records})
    assert response.status_code == 200, response.text
    assert [r["reason"] for r in response.json()["rejects"]] == ["feature field 'flow' missing"] * 3
    # A field named in another letter case is named beside the reason, as the stream does.
    records = pump_records(1)
    records[0]["Flow"] = records[0].pop("flow")
    response = score_client.post("/models/pumps-windows/score", json={"records": records})
    assert response.json()["rejects"][0]["reason"] == (
        "feature field 'flow' missing (the record has 'Flow': field names must match exactly, "
        "letter case too)"
    )
    # And one nested in an object, which is not read there, as the stream says.
    records = pump_records(1)
    records[0]["readings"] = {"flow": records[0].pop("flow")}
    response = score_client.post("/models/pumps-windows/score", json={"records": records})
    assert response.json()["rejects"][0]["reason"] == (
        "feature field 'flow' missing (the record's object 'readings' holds them: fields are "
        "read at the top level of the record, not inside an object; send them there)"
    )


def test_a_time_out_of_range_in_utc_is_a_422_not_an_outage(score_client: Any) -> None:
    # 0001-01-01T00:00:00+01:00 is a valid datetime, but not in UTC: the driver raised
    # OverflowError and the API answered 503 "the results database ... is unavailable".
    for path, params in (
        ("/anomalies", {"since": "0001-01-01T00:00:00+01:00"}),
        ("/alerts", {"since": "9999-12-31T23:59:59-05:00"}),
        ("/anomalies", {"since": "2026-01-01", "until": "9999-12-31T23:00:00-05:00"}),
    ):
        response = score_client.get(path, params=params)
        assert response.status_code == 422, response.text
        assert "out of range once converted to UTC" in json.dumps(response.json())
    in_range = score_client.get("/anomalies", params={"since": "0001-01-01T00:00:00Z"})
    assert in_range.status_code == 200, in_range.text


def test_every_error_body_has_the_shape_the_schema_documents(score_client: Any) -> None:
    # Every 422 is documented as HTTPValidationError ({"detail": [{loc, msg, type}, ...]}) and
    # every other error as ErrorDetail ({"detail": "..."}); a body that is not UTF-8 or is
    # nested too deep was an undocumented 400 "There was an error parsing the body", and the
    # database's refusals (PostgreSQL: a NUL in text) 422s with a string in "detail".
    schema = score_client.get("/openapi.json").json()
    score = "/models/pumps/score"
    json_type = {"content-type": "application/json"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("post", score, {"content": b'{"records": [{"rpm": "\xff"}]}'}),
        ("post", score, {"content": b'{"records": [{"rpm": 1}]}'[:-1]}),
        ("post", score, {"content": b"[" * 100_000 + b"]" * 100_000}),
        ("post", score, {"content": b'{"records": [{"rpm": ' + b"9" * 5000 + b"}]}"}),
        ("post", score, {"json": {"records": []}}),
        ("post", "/models/nope/score", {"json": {"records": [{}]}}),
        ("get", "/models/nope", {}),
        ("get", "/anomalies", {"params": {"limit": 0}}),
        ("get", "/alerts/12345", {}),
        ("post", "/alerts/12345/resolve", {"json": {}}),
    ]
    for method, path, kwargs in requests:
        headers = json_type if "content" in kwargs else {}
        response = score_client.request(method, path, headers=headers, **kwargs)
        template = "/alerts/{alert_id}" if path.startswith("/alerts/") else path
        template = template + "/resolve" if path.endswith("/resolve") else template
        template = "/models/{name}/score" if path.endswith("/score") else template
        template = "/models/{name}" if path == "/models/nope" else template
        documented = schema["paths"][template][method]["responses"]
        status = str(response.status_code)
        assert status in documented, (path, status, response.text)
        ref = documented[status]["content"]["application/json"]["schema"]["$ref"]
        detail = response.json()["detail"]
        if ref.endswith("/HTTPValidationError"):
            assert isinstance(detail, list), response.text
            assert detail, response.text
            assert all({"type", "loc", "msg"} <= set(error) for error in detail)
        else:
            assert ref.endswith("/ErrorDetail")
            assert isinstance(detail, str), response.text
    bad = score_client.post(score, content=b'{"records": [{"a": "\xff"}]}', headers=json_type)
    assert bad.json()["detail"][0]["msg"] == "the body cannot be read as JSON: it is not UTF-8"


def test_the_schema_says_what_since_compares_with(score_client: Any) -> None:
    # /alerts?since= filters on opened_at (when the scorer opened the alert), /anomalies?since=
    # on the record's event time: nothing in /docs said which, and the alerts' "time" field
    # is the event time, so a client filtering alerts of a replayed day got every one.
    schema = score_client.get("/openapi.json").json()["paths"]

    def described(path: str, name: str) -> str:
        (param,) = [p for p in schema[path]["get"]["parameters"] if p["name"] == name]
        return str(param.get("description", ""))

    assert "opened_at" in described("/alerts", "since")
    assert "event time" in described("/anomalies", "since")
    assert "UTC" in described("/anomalies", "until")
    naive = score_client.get("/anomalies", params={"since": "2000-01-01T00:00:00", "limit": 1})
    assert naive.status_code == 200, naive.text


def test_a_time_typed_into_a_url_with_its_offset_keeps_the_plus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # curl "...?since=2026-11-28T08:00:00+02:00": a query string decodes '+' as a space, and
    # the list endpoints answered 422 quoting "2026-11-28T08:00:00 02:00", an input the user
    # never typed. The offset after a space is read as the '+' it was.
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert run_inline(capsys, "db", "upgrade", "--db", url).returncode == 0
    with api_client(url) as client:
        for path in ("/alerts", "/anomalies", "/dead-letters", "/dead-letters/summary"):
            same = client.get(f"{path}?since=2026-11-28T08:00:00+02:00&until=2026-11-28T06:00Z")
            assert same.status_code == 400, (path, same.text)
            assert same.json()["detail"].startswith(
                "until (2026-11-28T06:00:00+00:00) is not after since (2026-11-28T08:00:00+02:00)"
            )
            later = client.get(f"{path}?since=2026-11-28 08:00:00.5+0530")
            assert later.status_code == 200, (path, later.text)
        # A space that is no offset's stays an error.
        bad = client.get("/alerts?since=2026-11-28T08:00:00 abc")
        assert bad.status_code == 422


def test_the_schema_declares_the_token_so_docs_can_send_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The token was a header parameter named Authorization, which OpenAPI tells tools to
    # ignore: /docs had no field and no Authorize button for it (every change tried there
    # was a 401), and a client generated from the schema never sent it.
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert run_inline(capsys, "db", "upgrade", "--db", url).returncode == 0
    with api_client(url, token=TOKEN) as client:
        schema = client.get("/openapi.json").json()
        change = {"alert_rule": {"cooldown_s": 60}, "reason": "r"}
        without = client.patch("/models/pumps/thresholds", json=change)
        given = client.patch("/models/pumps/thresholds", json=change, headers=AUTH)
    (scheme,) = schema["components"]["securitySchemes"].values()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    (name,) = schema["components"]["securitySchemes"]
    writes = schema["paths"]["/models/{name}/thresholds"]["patch"]
    assert writes["security"] == [{name: []}]
    assert all(p["name"].lower() != "authorization" for p in writes.get("parameters", []))
    assert "security" not in schema["paths"]["/alerts"]["get"]
    assert schema["paths"]["/alerts/{alert_id}/acknowledge"]["post"]["security"] == [{name: []}]
    assert without.status_code == 401
    assert given.status_code == 404  # past the token: no model of that name


def test_a_fault_in_the_server_is_a_json_500_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unexpected exception came back as the plain text "Internal Server Error": the one
    # error without the documented {"detail": ...} body (a client parsing JSON failed on it).
    from fastapi.testclient import TestClient

    from anomaly_vae.api import ApiSettings, create_app
    from anomaly_vae.storage.engine import DatabaseTarget

    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert run_inline(capsys, "db", "upgrade", "--db", url).returncode == 0
    target = DatabaseTarget(parse_database_url(url), "--db")
    engine = create_database_engine(target.url)
    app = create_app(ApiSettings(database=target, token=None), engine)

    def fault() -> None:  # a route with a bug, on the real app
        raise ZeroDivisionError("secret internals")

    app.add_api_route("/fault", fault)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.get("/fault")
            schema = client.get("/openapi.json").json()
    finally:
        engine.dispose()
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail == "internal error (ZeroDivisionError) answering GET /fault: see the server's log"
    assert "500" in schema["paths"]["/health"]["get"]["responses"]


def test_a_field_named_as_a_scorer_column_is_ignored_like_any_other(score_client: Any) -> None:
    # A record's '_entity' field (the name of the column the stream scorer fills from the
    # message key) took the place of the windowed model's entity field: every pump in one
    # window, and other scores than the same records without that field get.
    records = pump_records(80)
    plain = score_client.post("/models/pumps-windows/score", json={"records": records})
    extra = [
        {**r, "_entity": "one", "_event_time": 5, "_source_key": "x", "note": "é"} for r in records
    ]
    mixed = score_client.post("/models/pumps-windows/score", json={"records": extra})
    assert plain.status_code == mixed.status_code == 200, mixed.text
    assert mixed.json()["scores"] == plain.json()["scores"]
    assert mixed.json()["rejects"] == plain.json()["rejects"] == []


def test_scoring_holds_no_database_connection_while_the_model_scores(
    score_client: Any, tmp_path: Path
) -> None:
    # The score endpoint held its pooled connection to the end of the request: with the pool
    # taken by requests scoring, /health and the listings waited for one, then answered 503
    # "the results database is unavailable". A pool of one connection shows it.
    import threading

    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine, event

    from anomaly_vae.api import ApiSettings, create_app
    from anomaly_vae.storage.engine import DatabaseTarget, _sqlite_pragmas

    url = f"sqlite:///{tmp_path / 'results.db'}"  # what score_client registered the models in
    target = DatabaseTarget(parse_database_url(url), "--db")
    engine = create_engine(target.url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    event.listen(engine, "connect", _sqlite_pragmas)
    app = create_app(ApiSettings(database=target, token=None), engine)
    records = pump_records(10_000)
    scored: list[int] = []
    health: list[int] = []
    try:
        with TestClient(app) as scorer, TestClient(app) as monitor:
            assert scorer.post("/models/pumps-windows/score", json={"records": records[:5]})
            thread = threading.Thread(
                target=lambda: scored.append(
                    scorer.post(
                        "/models/pumps-windows/score", json={"records": records}
                    ).status_code
                )
            )
            thread.start()
            while thread.is_alive():
                health.append(monitor.get("/health").status_code)
            thread.join()
    finally:
        engine.dispose()
    assert scored == [200]
    assert health, "the scoring request ended before /health was asked"
    assert set(health) == {200}, health


def test_an_unknown_alert_is_the_same_404_to_read_or_act_on(tmp_path: Path) -> None:
    # GET /alerts/7 said "no alert 7"; acknowledging or resolving it pointed an API client to
    # a command line ("no alert 7: see 'anomaly-vae alerts list'").
    from fastapi.testclient import TestClient

    from anomaly_vae.api import ApiSettings, create_app
    from anomaly_vae.storage.engine import DatabaseTarget
    from anomaly_vae.storage.migrate import upgrade

    target = DatabaseTarget(parse_database_url(f"sqlite:///{tmp_path / 'r.db'}"), "--db")
    engine = create_database_engine(target.url)
    upgrade(engine)
    try:
        app = create_app(ApiSettings(database=target, token=TOKEN), engine)
        with TestClient(app) as client:
            answers = [
                client.get("/alerts/7"),
                client.post("/alerts/7/acknowledge", headers=AUTH),
                client.post("/alerts/7/resolve", json={"by": "me"}, headers=AUTH),
            ]
    finally:
        engine.dispose()
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert {a.json()["detail"] for a in answers} == {"no alert 7"}


def test_a_version_pinned_is_not_scored_under_another_versions_calibration(
    score_client: Any,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Scoring a second version of 'pumps' puts its calibrated threshold in force; a request
    # pinned to the first version was flagged at the second's threshold (another model's
    # score scale), not its own.
    from anomaly_vae.config import PipelineConfig

    first, _ = pump_model
    cfg = PipelineConfig.from_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "pumps.yaml")
    cfg.training.epochs = 2
    cfg.training.progress = False
    second = AnomalyVAE(config=cfg).fit(make_pump_data(800, seed=3))
    second.save(tmp_path / "second")
    export = tmp_path / "second.csv"
    make_pump_data(40, seed=9).to_csv(export, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    result = run_inline(
        capsys, "score", str(export), "--model-dir", str(tmp_path / "second"), "--db", url, "-q"
    )
    assert result.returncode == 0, result.stderr
    assert second.threshold_ != first.threshold_
    first_version, second_version = str(first.model_hash_)[:12], str(second.model_hash_)[:12]
    records = pump_records(20)
    newest = score_client.post("/models/pumps/score", json={"records": records}).json()
    assert newest["model_version"] == second_version
    assert newest["threshold"] == pytest.approx(second.threshold_)
    pinned = score_client.post(
        "/models/pumps/score", json={"records": records, "version": first_version}
    ).json()
    assert pinned["model_version"] == first_version
    assert pinned["threshold"] == pytest.approx(first.threshold_)
    assert pinned["threshold_version"] is None
    expected = first.score_batch(pd.DataFrame.from_records(records), threshold=first.threshold_)
    assert [s["is_anomaly"] for s in pinned["scores"]] == expected.scores["is_anomaly"].tolist()


def test_the_server_log_has_one_line_format(tmp_path: Path) -> None:
    """Every line the server logs (uvicorn's start-up, request and shutdown lines too) is
    'LEVEL logger: message', as the other commands log: uvicorn's own format ("INFO:     ...")
    was mixed in."""
    import re

    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgraded = subprocess.run(
        [sys.executable, "-m", "anomaly_vae", "db", "upgrade", "--db", url],
        capture_output=True,
        text=True,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    server = start_server(url, None)
    try:
        assert server.client.get("/health").status_code == 200
    finally:
        out = stop(server)
    lines = [line for line in out.splitlines() if line.strip()]
    assert any("uvicorn.access" in line and "GET /health" in line for line in lines), out
    layout = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
    odd = [line for line in lines if not layout.match(line)]
    assert not odd, out


def test_many_fields_the_model_does_not_read_cost_no_memory(score_client: Any) -> None:
    # Every field of every record became a column of one DataFrame before the unread ones
    # were dropped: 300 records of 100 fields each, all names different, made a frame of
    # 300 x 30,000 cells (a body of 10,000 such records, within the 32 MiB limit, one of
    # billions: one unauthenticated request took all the server's memory).
    import tracemalloc

    records = pump_records(300)
    extra = [{**r, **{f"x{i}_{j}": 0 for j in range(100)}} for i, r in enumerate(records)]
    plain = score_client.post("/models/pumps/score", json={"records": records})
    tracemalloc.start()
    try:
        mixed = score_client.post("/models/pumps/score", json={"records": extra})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plain.status_code == mixed.status_code == 200, mixed.text
    assert mixed.json()["scores"] == plain.json()["scores"]
    # The body itself (about 3 MB of JSON, parsed) is most of what remains.
    assert peak < 60 * 2**20, f"{peak / 2**20:.0f} MiB traced while scoring"


def test_an_id_beyond_64_bits_in_a_query_is_an_answer_not_a_500(score_client: Any) -> None:
    # before_id, run and /runs/{id} went to the driver as they came: SQLite's raised
    # OverflowError for a number beyond 64 bits, a 500 on every listing for anyone to cause
    # (as /alerts/{id} was before it). No row has such an id: what is below it is every row.
    big = "9" * 30
    everything = {path: score_client.get(path).json() for path in ("/runs", "/dead-letters")}
    assert everything["/runs"]
    for path in ("/runs", "/dead-letters"):
        assert score_client.get(f"{path}?before_id={big}").json() == everything[path]
        assert score_client.get(f"{path}?before_id=-{big}").json() == []
    for path in ("/anomalies", "/alerts"):  # the id of no row: a 400 saying so (test_paging)
        response = score_client.get(f"{path}?before_id={big}")
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith(f"before_id {big}: no ")
    assert score_client.get(f"/dead-letters?run={big}").json() == []
    assert score_client.get(f"/dead-letters/summary?run=-{big}").json() == []
    unknown = score_client.get(f"/runs/{big}")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": f"no scoring run {big}"}


def test_a_name_sent_in_a_request_cannot_forge_a_server_log_line(server: Server) -> None:
    # 'created_by' went into the server's log line as it came: with a line break in it, a
    # client wrote a line of its own making ("WARNING anomaly_vae.api: ...") into the log.
    forged = "alice\nWARNING anomaly_vae.api: forged line"
    for path, body in (
        ("/models/pumps/thresholds", {"warning": {"policy": "quantile", "quantile": 0.99}}),
        ("/models/pumps/thresholds/rollback", {"version": 1}),
    ):
        sent = {**body, "reason": "r", "created_by": forged}
        response = server.client.post(path, json=sent, headers=AUTH)
        assert response.status_code == 201, response.text
        assert response.json()["created_by"] == forged  # stored as sent
    out = stop(server)
    assert "set by 'alice\\nWARNING anomaly_vae.api: forged line'" in out, out
    assert not [line for line in out.splitlines() if line.startswith("WARNING anomaly_vae.api")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_with_exit_status_0(tmp_path: Path, signum: int) -> None:
    """SIGTERM (a service manager) or Ctrl-C: uvicorn shuts down in order, and the process
    exits 0, as 'stream' does after the same orderly stop. It raised the signal again once
    stopped: exit status 143 for SIGTERM (killed by it), 130 for Ctrl-C."""
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgraded = subprocess.run(
        [sys.executable, "-m", "anomaly_vae", "db", "upgrade", "--db", url],
        capture_output=True,
        text=True,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    server = start_server(url, None)
    server.client.close()
    server.process.send_signal(signum)
    out, _ = server.process.communicate(timeout=30)
    assert server.process.returncode == 0, out
    assert f"stopped on signal {int(signum)}" in out
    assert "Traceback" not in out


def test_metrics_say_the_database_is_down_rather_than_fail_the_scrape(
    postgres_databases: Callable[[], str],
) -> None:
    """The database gone while the API serves: /metrics answers 200 with
    anomaly_vae_database_up 0 (it answered 503, so the scrape failed and a monitor saw the
    API down, not its database); /health still answers 503."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from anomaly_vae.storage.migrate import upgrade
    from tests.conftest import POSTGRES_ADMIN_URL

    url = postgres_databases()
    engine = create_database_engine(parse_database_url(url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    server = start_server(url, None)
    try:
        up = {f.name: f for f in text_string_to_metric_families(server.client.get("/metrics").text)}
        assert up["anomaly_vae_database_up"].samples[0].value == 1
        admin = create_engine(make_url(POSTGRES_ADMIN_URL), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                name = parse_database_url(url).database
                connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            admin.dispose()
        down = server.client.get("/metrics")
        health = server.client.get("/health")
    finally:
        stop(server)
    assert down.status_code == 200, down.text
    families = {f.name: f for f in text_string_to_metric_families(down.text)}
    assert families["anomaly_vae_database_up"].samples[0].value == 0
    assert health.status_code == 503
    assert "unavailable" in health.json()["detail"]


def test_metrics_show_the_alert_outbox_backlog_per_model(db_url: str) -> None:
    """Alert events waiting in alert_outbox (a scorer that cannot publish to its alerts
    topic) are a gauge per model, 0 for a registered model with none waiting, with the age of
    the oldest: a backlog that does not drain was invisible."""
    from datetime import timedelta

    from anomaly_vae.storage import outbox
    from anomaly_vae.storage import repository as repo
    from tests.test_storage import model_version

    now = repo.utc_now()
    engine = create_database_engine(parse_database_url(db_url))
    try:
        with engine.begin() as connection:
            repo.register_model(connection, model=model_version("fans", "b" * 64))
            for age_s in (600, 5):
                outbox.add_events(
                    connection,
                    model_name="pumps",
                    run_id=1,
                    events=[{"event": "opened", "alert_id": 1, "entity_key": "P1"}] * 2,
                    now=now - timedelta(seconds=age_s),
                )
    finally:
        engine.dispose()
    with api_client(db_url) as client:
        text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    waiting = {
        s.labels["model"]: s.value for s in families["anomaly_vae_alert_outbox_events"].samples
    }
    assert waiting == {"fans": 0, "pumps": 4}
    ages = {
        s.labels["model"]: s.value
        for s in families["anomaly_vae_alert_outbox_oldest_age_seconds"].samples
    }
    assert set(ages) == {"pumps"}
    assert 600 <= ages["pumps"] < 700


def test_a_threshold_set_for_another_model_version_is_a_warning_in_the_answers(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'score --db' warns when the threshold in force was computed for (or set by hand while)
    another model version was in use; POST /models/{name}/score scored under it, and GET
    /models/{name} showed it, without a sign."""
    from sqlalchemy import select

    from anomaly_vae.storage import repository as repo
    from anomaly_vae.storage.tables import Model

    _, model_dir = pump_model
    url = f"sqlite:///{tmp_path / 'results.db'}"
    export = tmp_path / "export.csv"
    make_pump_data(40, seed=8).to_csv(export, index=False)
    result = run_inline(
        capsys, "score", str(export), "--model-dir", str(model_dir), "--db", url, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    records = pump_records(4)
    with api_client(url) as client:
        # The calibrated threshold of the version scored: nothing to say.
        assert client.get("/models/pumps").json()["warnings"] == []
        assert (
            client.post("/models/pumps/score", json={"records": records}).json()["warnings"] == []
        )
        engine = create_database_engine(parse_database_url(url))
        try:
            with engine.begin() as connection:
                version = connection.execute(select(Model.version)).scalar_one()
                repo.add_threshold(
                    connection,
                    model_name="pumps",
                    policy="false_alarm_rate",
                    warning=1e9,
                    parameters={"model_version": "0123456789ab", "rate": 0.001},
                    created_by="ops",
                    reason="before the retraining",
                )
        finally:
            engine.dispose()
        said = (
            "threshold v2 of 'pumps' (false_alarm_rate, set by ops) was computed from the "
            "scores of model version 0123456789ab, and {} version "
            f"{version}, whose scores have a scale of their own: 0 % of its held-out normal "
            "records cross it; set one for this version (POST /models/pumps/thresholds, or "
            "'anomaly-vae thresholds set pumps ... --reason ...'; preview it first)"
        )
        detail = client.get("/models/pumps").json()
        assert detail["warnings"] == [said.format("scoring uses")]
        scored = client.post("/models/pumps/score", json={"records": records}).json()
        assert scored["threshold_version"] == 2
        assert scored["warnings"] == [said.format("this request scores")]


def test_a_query_parameter_the_endpoint_does_not_read_is_a_422(score_client: Any) -> None:
    # Unknown query parameters were ignored: /runs has no since, /anomalies no state, the
    # summary no limit, and /models/{name}/score takes its version in the body, so each of
    # these answered 200 as if the filter (or the version) applied.
    cases = {
        "/runs?since=2026-01-01": ("since", "before_id, kind, limit, model, status"),
        "/anomalies?state=open": ("state", "before_id, entity, limit, model, since, until"),
        "/dead-letters/summary?limit=5": ("limit", "model, reason, run, since, until"),
        "/alerts?befor_id=3": (
            "befor_id",
            "before_id, entity, limit, model, since, state, until",
        ),
        "/models?verbose=1": ("verbose", "no query parameters"),
    }
    for url, (name, reads) in cases.items():
        response = score_client.get(url)
        assert response.status_code == 422, (url, response.text)
        path = url.split("?")[0]
        assert response.json()["detail"] == [
            {
                "type": "extra_forbidden",
                "loc": ["query", name],
                "msg": f"unknown query parameter {name!r}: {path} reads {reads}",
                "input": url.split("=")[1],
            }
        ]
    pinned = score_client.post(
        "/models/pumps/score?version=0000", json={"records": pump_records(1)}
    )
    assert pinned.status_code == 422, pinned.text
    assert pinned.json()["detail"][0]["loc"] == ["query", "version"]
    # Parameters the endpoint reads, its dependencies' included, still work; so do the docs.
    assert score_client.get("/dead-letters/summary?reason=x&run=1").status_code == 200
    assert score_client.get("/alerts?state=active&limit=2").status_code == 200
    assert score_client.get("/docs?x=1").status_code == 200
    # A probe's or a scraper's own parameters do not make the service look down.
    assert score_client.get("/health?_=1732800000").status_code == 200
    assert score_client.get("/metrics?name[]=up").status_code == 200


def test_head_is_answered_as_get_without_a_body(score_client: Any) -> None:
    # HEAD /health (curl -I, an uptime check, a load balancer's probe) was a 405 Method Not
    # Allowed, read as the service being down: every GET path answers HEAD.
    for path in ("/health", "/metrics", "/models", "/alerts?limit=1", "/no-such-path"):
        get = score_client.get(path)
        head = score_client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if path != "/metrics":  # its ages may change between the two
            assert head.headers["content-length"] == get.headers["content-length"], path
    # A path that serves no GET still says which methods it takes.
    score_post = score_client.head("/models/pumps/score")
    assert score_post.status_code == 405
    assert score_post.headers["allow"] == "POST"


def test_a_body_of_the_wrong_kind_says_what_to_send(score_client: Any) -> None:
    # JSON sent as text/plain, as a form (curl -d) or with no Content-Type, and a JSON array
    # where an object belongs, were all "Input should be a valid dictionary or object to
    # extract fields from", which says nothing of the header or the shape to send.
    body = json.dumps({"records": pump_records(1)})
    for content_type, sent in (
        ("text/plain", "as 'text/plain'"),
        ("application/x-www-form-urlencoded", "as 'application/x-www-form-urlencoded'"),
        ("", "with no Content-Type"),
    ):
        response = score_client.post(
            "/models/pumps/score", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body"]
        assert error["msg"].startswith(f"the body came {sent}, which is not read as JSON: ")
        assert "'Content-Type: application/json'" in error["msg"]
    for value, kind in (([{"a": 1}], "an array"), ("x", "a string"), (5, "a number")):
        response = score_client.post("/models/pumps/score", json=value)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["msg"] == (
            f"the body is {kind}: send a JSON object ({{...}}) with the fields this request "
            "takes (see /docs)"
        )
    # JSON under a +json media type, or with a charset, is read as JSON.
    for content_type in ("application/json; charset=utf-8", "application/ld+json"):
        response = score_client.post(
            "/models/pumps/score", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text


def test_a_path_or_method_nothing_serves_says_which(score_client: Any) -> None:
    # They were the bare words "Not Found" / "Method Not Allowed".
    missing = score_client.post("/alerts//acknowledge", json={})
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "no endpoint POST /alerts//acknowledge: the endpoints are listed at /docs"
    }
    wrong = score_client.get("/models/pumps/score")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json() == {"detail": "GET /models/pumps/score: that path takes POST"}
    # A GET path takes HEAD too, and its Allow header says so.
    options = score_client.options("/health")
    assert options.status_code == 405
    assert options.headers["allow"] == "GET, HEAD"
    assert options.json() == {"detail": "OPTIONS /health: that path takes GET, HEAD"}
    # An unknown model or alert keeps its own message.
    assert score_client.get("/models/nope").json()["detail"].startswith("no model named 'nope'")


def test_a_number_where_a_time_belongs_is_not_read_as_unix_seconds(score_client: Any) -> None:
    # since=20261128 (ISO 8601's basic form of 2026-11-28, which --since reads so) was Unix
    # seconds to pydantic, 1970-08-23: every stored row, a 200 that looked filtered; -1 was
    # 1969, 99999999999999 milliseconds in the year 5138. The same in a preview's body.
    basic = score_client.post("/models/pumps/thresholds/preview", json={"since": "20261128"})
    assert basic.status_code == 200, basic.text
    assert basic.json()["since"] == "2026-11-28T00:00:00Z"
    assert score_client.get("/alerts", params={"since": "20261128"}).status_code == 200
    for path, value in (
        ("/anomalies", "1700000000"),
        ("/alerts", "-1"),
        ("/dead-letters", "99999999999999"),
        ("/dead-letters/summary", "1e10"),
    ):
        response = score_client.get(path, params={"until": value})
        assert response.status_code == 422, (path, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", "until"]
        assert error["msg"] == (
            f"Value error, {value!r} is a number, not a time: give an ISO 8601 date or time "
            "(2026-11-28, 2026-11-28T08:00:00+02:00)"
        )
    preview = score_client.post("/models/pumps/thresholds/preview", json={"since": 1700000000})
    assert preview.status_code == 422, preview.text
    assert preview.json()["detail"][0]["loc"] == ["body", "since"]


def test_a_version_of_one_to_three_digits_names_none(score_client: Any) -> None:
    # "version": "1" (a version number, a threshold version) matched whichever content hash
    # began with that digit and scored that model version, a 200 for a version never named.
    newest = score_client.get("/models/pumps").json()["versions"][0]["version"]
    record = pump_records(1)
    for short in (newest[:1], newest[:3]):
        response = score_client.post(
            "/models/pumps/score", json={"records": record, "version": short}
        )
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == (
            f"model 'pumps' has no version {short!r} (registered: {newest}); a prefix of its "
            "content hash needs at least 4 digits"
        )
    pinned = score_client.post(
        "/models/pumps/score", json={"records": record, "version": newest[:4]}
    )
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["model_version"] == newest


def test_a_category_never_seen_in_training_is_named_in_the_warnings(score_client: Any) -> None:
    # 'North' for 'north' scored as the unknown category (a novelty) and the response's
    # warnings were empty: only the server's log named it, once per process.
    records = pump_records(3)
    known = records[0]["station"]
    records[0]["station"] = known.upper()
    records[2]["station"] = "nowhere"
    for _ in range(2):  # every request, not only the first the process sees
        response = score_client.post("/models/pumps/score", json={"records": records})
        assert response.status_code == 200, response.text
        (note,) = response.json()["warnings"]
        assert note.startswith(
            f"field 'station': {known.upper()!r}, 'nowhere' not among the values learned in "
            "training, scored as the unknown category (a novelty, usually flagged); known "
            "values: "
        )
        assert repr(known) in note
    clean = score_client.post("/models/pumps/score", json={"records": pump_records(3)})
    assert clean.json()["warnings"] == []


def test_the_unseen_value_warning_is_the_scorers_with_rarer_values_and_misread_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The API built its own copy of the scorer's warning, without its clauses: a value that
    # may be one of the rarer training values past columns.max_categories was called a
    # novelty, and 'ZÃ¼rich' (UTF-8 read as cp1252) was not named as 'Zürich'.
    from anomaly_vae.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "pumps.yaml")
    cfg.name = "cities"
    cfg.training.epochs = 1
    cfg.training.progress = False
    cfg.columns.max_categories = 4
    data = make_pump_data(400, n_pumps=4, seed=1)
    data["station"] = data["station"].replace({"north": "Zürich"})
    data.loc[data.index[:3], "station"] = ["r1", "r2", "r3"]
    model = AnomalyVAE(config=cfg).fit(data)
    assert model.preprocessor_.other_values == {"station": 3}
    model.save(tmp_path / "cities")
    export = tmp_path / "export.csv"
    make_pump_data(20, n_pumps=4, seed=8).to_csv(export, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    result = run_inline(
        capsys, "score", str(export), "--model-dir", str(tmp_path / "cities"), "--db", url, "-q"
    )
    assert result.returncode == 0, result.stderr
    records = pump_records(2)
    misread = "Zürich".encode().decode("cp1252")
    records[0]["station"] = misread
    records[1]["station"] = "r2"
    with api_client(url) as client:
        response = client.post("/models/cities/score", json={"records": records})
    assert response.status_code == 200, response.text
    known = ", ".join(repr(c) for c in model.preprocessor_.categories["station"])
    assert response.json()["warnings"] == [
        f"field 'station': {misread!r}, 'r2' not among the values learned in training, scored "
        f"as the unknown category (a novelty, usually flagged); known values: {known}. If it "
        "is a known value spelled differently, fix the input or retrain with it (or it is one "
        "of the 3 rarer training values past columns.max_categories, which share the unknown "
        f"category); {misread!r} is 'Zürich', UTF-8 text decoded in another encoding before "
        "it was sent: send the text as its source wrote it"
    ]
    assert "'Zürich'" in known


def test_a_compressed_body_is_a_415_that_says_to_send_it_uncompressed(score_client: Any) -> None:
    # A gzip body (Content-Encoding: gzip) was read as the JSON text itself: a 422 "it is not
    # UTF-8"; one labelled br but sent plain was read as if the header were not there.
    import gzip

    body = json.dumps({"records": pump_records(1)}).encode()
    for coding, content in (("gzip", gzip.compress(body)), ("br", body)):
        response = score_client.post(
            "/models/pumps/score",
            content=content,
            headers={"content-type": "application/json", "content-encoding": coding},
        )
        assert response.status_code == 415, response.text
        assert response.json() == {
            "detail": f"the body is sent with Content-Encoding {coding!r}, which this API does "
            "not decode: send it uncompressed, without that header"
        }
    plain = score_client.post(
        "/models/pumps/score",
        content=body,
        headers={"content-type": "application/json", "content-encoding": "identity"},
    )
    assert plain.status_code == 200, plain.text
