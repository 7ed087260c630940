"""Scoring runs as an operator reads them: ``anomaly-vae runs list / show`` and ``GET /runs``
(+ ``/runs/{id}``), on SQLite and PostgreSQL, over runs that real scoring jobs wrote (two that
succeeded, one that failed part way)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from tests.conftest import api_client
from tests.test_cli import assert_user_error, run_inline

pytestmark = pytest.mark.integration


@pytest.fixture
def runs_db(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Runs 1 and 2 scored two exports; run 3 stopped at a byte that is not UTF-8."""
    _, model_dir = pump_model
    for seed in (1, 2):
        export = tmp_path / f"export{seed}.csv"
        make_pump_data(300, seed=seed).to_csv(export, index=False)
        ok = run_inline(capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url)
        assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.csv"
    make_pump_data(1500, seed=3).to_csv(bad, index=False)
    data = bad.read_bytes()
    cut = data.index(b"\n", len(data) - 2000) + 1
    bad.write_bytes(data[:cut] + b"\xff" + data[cut:])
    failed = run_inline(
        capsys, "score", str(bad), "--model-dir", str(model_dir), "--db", db_url,
        "--chunk-size", "500",
    )  # fmt: skip
    assert failed.returncode != 0
    return db_url


def runs_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    result = run_inline(capsys, "runs", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_runs_list_filters_pages_and_show(runs_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    everything = runs_json(capsys, "list", "--db", runs_db)
    assert [r["id"] for r in everything] == [3, 2, 1]
    assert [r["status"] for r in everything] == ["failed", "succeeded", "succeeded"]
    assert everything[0]["error"].startswith("the job stopped before the end of the file")
    assert everything[1]["error"] is None
    assert everything[1]["rows_scored"] == 300
    assert [r["id"] for r in runs_json(capsys, "list", "--db", runs_db, "--status", "failed")] == [
        3
    ]
    assert runs_json(capsys, "list", "--db", runs_db, "--kind", "stream") == []
    assert len(runs_json(capsys, "list", "--db", runs_db, "--model", "pumps")) == 3
    page = runs_json(capsys, "list", "--db", runs_db, "--limit", "2")
    rest = runs_json(capsys, "list", "--db", runs_db, "--before-id", str(page[-1]["id"]))
    assert [r["id"] for r in page + rest] == [3, 2, 1]

    shown = runs_json(capsys, "show", "3", "--db", runs_db)
    assert shown["status"] == "failed"
    assert "utf-8" in shown["error"].lower()
    assert shown["threshold_id"] is not None
    table = run_inline(capsys, "runs", "show", "3", "--db", runs_db)
    assert table.returncode == 0, table.stderr
    assert "error" in table.stdout
    assert "the job stopped before the end of the file" in table.stdout

    assert_user_error(
        run_inline(capsys, "runs", "show", "99", "--db", runs_db), "no scoring run 99"
    )
    assert_user_error(
        run_inline(capsys, "runs", "list", "--db", runs_db, "--model", "pumpz"), "pumpz"
    )
    bad_status = run_inline(capsys, "runs", "list", "--db", runs_db, "--status", "done")
    assert bad_status.returncode == 2
    assert "Traceback" not in bad_status.stderr


def test_api_runs(runs_db: str) -> None:
    with api_client(runs_db) as api:
        everything = api.get("/runs").json()
        assert [r["id"] for r in everything] == [3, 2, 1]
        assert everything[0]["status"] == "failed"
        assert "utf-8" in everything[0]["error"].lower()
        assert [r["id"] for r in api.get("/runs", params={"status": "succeeded"}).json()] == [
            2,
            1,
        ]
        assert [r["id"] for r in api.get("/runs", params={"before_id": 2}).json()] == [1]
        one = api.get("/runs/2")
        assert one.status_code == 200
        assert one.json()["rows_scored"] == 300
        assert one.json()["rows_pruned"] == 0  # of rows_inserted, deleted by db prune since
        assert api.get("/runs/99").status_code == 404
        assert api.get("/runs", params={"model": "nope"}).status_code == 404
        assert api.get("/runs", params={"kind": "cron"}).status_code == 422


def test_a_running_stream_run_that_stopped_reporting_is_listed_as_silent(
    runs_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A scorer killed hard, or one whose database was down when it stopped, cannot record its
    # end: its run stayed 'running' in `runs list` for ever, like one scoring right now.
    from datetime import timedelta

    from sqlalchemy import select, update

    from anomaly_vae.storage import repository as repo
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url
    from anomaly_vae.storage.tables import Model, ScoringRun

    engine = create_database_engine(parse_database_url(runs_db))
    with engine.begin() as connection:
        model_id = connection.execute(select(Model.id)).scalars().first()
        assert model_id is not None
        ids = [
            repo.start_run(
                connection, kind="stream", source="pumps", model_id=model_id, threshold_value=5.0
            )
            for _ in range(3)
        ]
        long_ago = repo.utc_now() - timedelta(hours=5)
        # one reported 5 h ago and went quiet, one never reported since it started 5 h ago,
        # one is scoring now
        connection.execute(
            update(ScoringRun).where(ScoringRun.id == ids[0]).values(metrics_at=long_ago)
        )
        connection.execute(
            update(ScoringRun).where(ScoringRun.id == ids[1]).values(started_at=long_ago)
        )
        connection.execute(
            update(ScoringRun).where(ScoringRun.id == ids[2]).values(metrics_at=repo.utc_now())
        )
    engine.dispose()
    table = run_inline(capsys, "runs", "list", "--db", runs_db, "--kind", "stream")
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert "running (silent 5 h)" in lines[str(ids[0])]
    assert "running (silent 5 h)" in lines[str(ids[1])]
    assert "silent" not in lines[str(ids[2])]
    assert " running " in lines[str(ids[2])]
    # scripts read the status as stored, with metrics_at beside it
    listed = runs_json(capsys, "list", "--db", runs_db, "--kind", "stream")
    assert {r["status"] for r in listed} == {"running"}
