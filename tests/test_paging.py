"""Paging through anomalies and alerts that share a time: a batch export's records of one
moment share an event time, and the alerts one write opens share ``opened_at``. Paging with
``until`` = the last time seen skipped the rest of that time; ``before_id`` = the last id seen
gives every row once. The threshold history pages the same way. CLI and API, on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from tests.conftest import api_client
from tests.test_cli import run_inline

pytestmark = pytest.mark.integration


@pytest.fixture
def one_moment(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """One export, every record at the same time, about a tenth anomalous over 12 pumps:
    many flagged records of one time, many alerts opened by one write."""
    frame = make_pump_data(400, n_pumps=12, anomaly_rate=0.1, seed=6)
    frame["ts"] = "2026-11-01T00:00:00Z"
    export = tmp_path / "same_time.csv"
    frame.to_csv(export, index=False)
    scored = run_inline(
        capsys, "score", str(export), "--model-dir", str(pump_model[1]), "--db", db_url, "-q"
    )
    assert scored.returncode == 0, scored.stderr
    return db_url


def walk(get: Callable[[dict[str, Any]], list[dict[str, Any]]], size: int) -> list[Any]:
    """Every row, page by page, each page after the last id of the one before."""
    seen: list[Any] = []
    params: dict[str, Any] = {}
    while True:
        rows = get({"limit": size, **params})
        seen += [row["id"] for row in rows]
        if len(rows) < size:
            return seen
        params = {"before_id": rows[-1]["id"]}


def test_cli_pages_anomalies_and_alerts_by_id(
    one_moment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli_get(*command: str) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
        def get(params: dict[str, Any]) -> list[dict[str, Any]]:
            args = [*command, "--db", one_moment, "--format", "json"]
            for name, value in params.items():
                args += ["--" + name.replace("_", "-"), str(value)]
            result = run_inline(capsys, *args)
            assert result.returncode == 0, result.stderr
            rows: list[dict[str, Any]] = json.loads(result.stdout)
            return rows

        return get

    for command in (("anomalies", "list"), ("alerts", "list")):
        get = cli_get(*command)
        everything = get({"limit": 1000})
        assert len(everything) > 10, command
        assert walk(get, 4) == [row["id"] for row in everything], command
    alerts = cli_get("alerts", "list")({"limit": 1000})
    assert len({row["opened_at"] for row in alerts}) == 1  # one write opened them all
    table = run_inline(capsys, "anomalies", "list", "--db", one_moment, "--limit", "3")
    assert "--before-id" in table.stdout


@pytest.fixture
def api(one_moment: str) -> Iterator[Any]:
    with api_client(one_moment) as client:
        yield client


def test_api_pages_anomalies_and_alerts_by_id(api: Any) -> None:
    for path in ("/anomalies", "/alerts"):

        def get(params: dict[str, Any], path: str = path) -> list[dict[str, Any]]:
            response = api.get(path, params=params)
            assert response.status_code == 200, response.text
            rows: list[dict[str, Any]] = response.json()
            return rows

        everything = get({"limit": 1000})
        assert len(everything) > 10, path
        assert walk(get, 4) == [row["id"] for row in everything], path


def add_threshold_versions(db_url: str, count: int) -> None:
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url
    from anomaly_vae.storage.tuning import ThresholdChange, ValuePolicy, set_threshold

    engine = create_database_engine(parse_database_url(db_url))
    try:
        for i in range(count):
            with engine.begin() as connection:
                set_threshold(
                    connection,
                    model_name="pumps",
                    change=ThresholdChange(warning=ValuePolicy(value=20.0 + i)),
                    created_by="ops",
                    reason=f"step {i}",
                )
    finally:
        engine.dispose()


def test_the_threshold_history_pages_as_the_other_listings_do(
    one_moment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GET /models/{name}/thresholds answered every version at once and ignored ?limit=, and
    # 'thresholds history' had neither --limit nor --before-id: a name whose threshold a
    # tuning job sets every hour has thousands of versions.
    add_threshold_versions(one_moment, 10)  # v2 to v11, after the calibrated v1

    def cli_get(params: dict[str, Any]) -> list[dict[str, Any]]:
        args = ["thresholds", "history", "pumps", "--db", one_moment, "--format", "json"]
        for name, value in params.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        result = run_inline(capsys, *args)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    everything = cli_get({"limit": 1000})
    assert [row["version"] for row in everything] == list(range(11, 0, -1))
    assert walk(cli_get, 4) == [row["id"] for row in everything]
    assert len(cli_get({"limit": 3})) == 3
    table = run_inline(capsys, "thresholds", "history", "pumps", "--db", one_moment, "--limit", "3")
    assert f"--before-id {everything[2]['id']} shows the next page" in table.stdout
    refused = run_inline(
        capsys, "thresholds", "history", "pumps", "--db", one_moment, "--limit", "0"
    )
    assert refused.returncode == 2
    assert "--limit must be >= 1" in refused.stderr

    # 'models show' lists the newest ten and says how to see the rest.
    shown = run_inline(capsys, "models", "show", "pumps", "--db", one_moment)
    assert shown.returncode == 0, shown.stderr
    words = [line.split()[0] for line in shown.stdout.splitlines() if line.startswith("  v")]
    listed = [w for w in words if w[1:].isdigit()]  # not the model versions' lines
    assert listed == [f"v{v}" for v in range(11, 1, -1)]
    assert f"'anomaly-vae thresholds history pumps --before-id {everything[9]['id']}'" in (
        shown.stdout
    )

    with api_client(one_moment) as api:

        def get(params: dict[str, Any]) -> list[dict[str, Any]]:
            response = api.get("/models/pumps/thresholds", params=params)
            assert response.status_code == 200, response.text
            rows: list[dict[str, Any]] = response.json()
            return rows

        api_all = get({"limit": 1000})
        assert [row["id"] for row in api_all] == [row["id"] for row in everything]
        assert walk(get, 4) == [row["id"] for row in api_all]
        assert len(get({"limit": 3})) == 3
        assert len(get({})) == 11  # the default page (50) holds them all
        assert api.get("/models/pumps/thresholds", params={"limit": 0}).status_code == 422
        # The id links a version to the alerts and runs that name it (threshold_id).
        runs = api.get("/runs").json()
        assert runs[0]["threshold_id"] == api_all[-1]["id"]  # scored under the calibrated v1
        # Threshold and run ids are PostgreSQL int4s: an id past that range (which no row
        # has) was a 422 'integer out of range ... send it without that value' there.
        past = 3_000_000_000
        assert get({"before_id": past, "limit": 100}) == api_all
        assert [run["id"] for run in api.get("/runs", params={"before_id": past}).json()] == [
            run["id"] for run in runs
        ]
        assert api.get(f"/runs/{past}").status_code == 404
        assert api.get("/dead-letters", params={"run": past}).json() == []
    unknown = run_inline(capsys, "runs", "show", str(past), "--db", one_moment)
    assert unknown.returncode == 2
    assert f"no scoring run {past}" in unknown.stderr


def test_a_before_id_that_names_no_row_is_refused_not_an_empty_page(
    one_moment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Anomalies and alerts page by (time, id) from the row before_id names: an id that names
    # none (mistyped, an alert id given to /anomalies, a pruned row) gave an empty page, a 200
    # that a client paging through took for the end of the list.
    with api_client(one_moment) as api:
        for path, what in (("/anomalies", "flagged record"), ("/alerts", "alert")):
            rows = api.get(path, params={"limit": 1000}).json()
            missing = max(row["id"] for row in rows) + 1000
            response = api.get(path, params={"before_id": missing})
            assert response.status_code == 400, response.text
            assert response.json()["detail"] == (
                f"before_id {missing}: no {what} has that id; give the id of the last {what} "
                "of the page before (or leave before_id out for the newest)"
            )
            # An id that names a row still pages after it.
            assert api.get(path, params={"before_id": rows[0]["id"]}).json()[0] == rows[1]
    for command in ("anomalies", "alerts"):
        result = run_inline(capsys, command, "list", "--db", one_moment, "--before-id", "99999999")
        assert result.returncode == 2, result.stdout
        assert "before_id 99999999: no " in result.stderr
        assert "Traceback" not in result.stderr
