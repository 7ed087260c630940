"""The database from the command line, as a user runs it, on SQLite and PostgreSQL: upgrade,
score twice, crash part way and score again, list what was stored."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.storage import migrate
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from anomaly_vae.storage.tables import Score, ScoringRun
from tests.conftest import query
from tests.test_cli import assert_user_error, run_inline

pytestmark = pytest.mark.integration


def count(url: str, table: str) -> int:
    engine = create_database_engine(parse_database_url(url))
    try:
        with engine.connect() as connection:
            return repo.count_rows(connection, table=table)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = make_pump_data(1500, anomaly_rate=0.03, seed=2).astype({"flow": object})
    frame.loc[3, "flow"] = "oops"
    path = tmp_path_factory.mktemp("export") / "export.csv"
    frame.to_csv(path, index=False)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_inline(capsys, *args)


def test_score_twice_keeps_one_row_per_record(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, model_dir = pump_model
    monkeypatch.chdir(tmp_path)  # no CSV may appear here: --db without --out: database only
    first = cli(capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url)
    assert first.returncode == 0, first.stderr
    assert "1499 score rows added" in first.stdout
    assert "1 rejected rows added to dead_letters, " in first.stdout
    assert not [p for p in tmp_path.iterdir() if ".csv" in p.name]
    second = cli(capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url)
    assert second.returncode == 0, second.stderr
    assert "0 score rows added (1499 already there, kept as first scored)" in second.stdout
    # The reject was counted as written again ("1 rejected rows in dead_letters").
    assert "0 rejected rows added to dead_letters (1 already there)" in second.stdout
    assert count(db_url, "scores") == 1499
    assert count(db_url, "dead_letters") == 1
    # The dead letter names its row, why it was refused, and holds the row as it came (no
    # test read the stored raw text: a sink that stored none passed).
    [(key, reason, raw)] = query(db_url, "SELECT source_key, reason, raw FROM dead_letters")
    assert str(key).endswith(":3")  # the 4th data row (0-based 3)
    assert "flow" in str(reason)
    assert "oops" in str(reason)
    header, row = (line.split(",") for line in export.read_text().splitlines()[0:5:4])
    stored = json.loads(str(raw))
    assert stored["flow"] == "oops"
    given = {c: v for c, v in zip(header, row, strict=True) if v != ""}
    assert {c: str(v) for c, v in stored.items() if v is not None} == given
    assert count(db_url, "models") == 1
    flagged = int(first.stdout.split(" scored, ")[1].split(" flagged")[0])
    # The alert rule (one alert per run of crossings of a pump) opened some; the second
    # scoring of the same file opened none.
    alerts = count(db_url, "alerts")
    assert 0 < alerts <= flagged
    # With --out the CSV files are written too, and still nothing is duplicated.
    out = tmp_path / "scores.csv"
    third = cli(
        capsys,
        "score",
        str(export),
        "--model-dir",
        str(model_dir),
        "--db",
        db_url,
        "--out",
        str(out),
    )
    assert third.returncode == 0, third.stderr
    assert len(pd.read_csv(out)) == 1499
    assert count(db_url, "scores") == 1499
    assert count(db_url, "alerts") == alerts

    runs = cli(capsys, "runs", "list", "--db", db_url, "--format", "json")
    listed = json.loads(runs.stdout)
    assert [r["status"] for r in listed] == ["succeeded"] * 3
    assert [r["rows_inserted"] for r in listed] == [0, 0, 1499]
    assert listed[0]["rows_read"] == 1500

    models = cli(capsys, "models", "list", "--db", db_url)
    assert models.returncode == 0, models.stderr
    assert models.stdout.splitlines()[0].split()[:4] == ["name", "version", "score_kind", "scores"]
    assert "pumps" in models.stdout
    assert "1499" in models.stdout
    shown = cli(capsys, "models", "show", "pumps", "--db", db_url)
    assert "v1 quantile: warning" in shown.stdout
    assert "features: station (categorical)" in shown.stdout
    # The rows held out are said beside those trained on, as 'info' says them: "trained on
    # 2400 rows" alone read as rows of the training file lost.
    assert re.search(r"trained .+ on \d+ rows \(\+\d+ held out\)", shown.stdout), shown.stdout
    missing = cli(capsys, "models", "show", "nope", "--db", db_url)
    assert_user_error(missing, "no model named 'nope'")

    table = cli(capsys, "anomalies", "list", "--db", db_url, "--limit", "5")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "time", "model", "model_version"]
    assert len(lines) == 7  # the header, 5 rows, and how to get the next page
    assert lines[-1].startswith("(more may follow: --before-id ")
    as_json = json.loads(
        cli(
            capsys, "anomalies", "list", "--db", db_url, "--format", "json", "--limit", "500"
        ).stdout
    )
    assert len(as_json) == flagged
    states = [a["alert_state"] for a in as_json]  # on the records that opened an alert
    assert sum(state is not None for state in states) == alerts
    assert set(states) <= {"open", "resolved", None}
    assert all(isinstance(a["top_features"], list) for a in as_json)
    times = [a["time"] for a in as_json]
    assert times == sorted(times, reverse=True)
    as_csv = pd.read_csv(
        io.StringIO(
            cli(
                capsys, "anomalies", "list", "--db", db_url, "--format", "csv", "--limit", "500"
            ).stdout
        )
    )
    assert len(as_csv) == flagged
    assert as_csv["source_key"].str.match(r"file-sha256:[0-9a-f]{64}:\d+$").all()
    since = sorted(times)[len(times) // 2]
    later = json.loads(
        cli(
            capsys, "anomalies", "list", "--db", db_url, "--format", "json", "--since", since
        ).stdout
    )
    assert 0 < len(later) < flagged
    assert all(a["time"] >= since for a in later)
    other = cli(capsys, "anomalies", "list", "--db", db_url, "--model", "other")
    assert_user_error(other, "no model named 'other' is registered")  # not "none found"
    bad_since = cli(capsys, "anomalies", "list", "--db", db_url, "--since", "yesterday")
    assert_user_error(bad_since, "--since 'yesterday'")
    # Swapped --since and --until hold nothing: said, not listed as "no anomalies found".
    for command in (("anomalies", "list"), ("alerts", "list"), ("dead-letters", "list")):
        swapped = cli(
            capsys, *command, "--db", db_url, "--since", "2026-11-14", "--until", "2026-11-13"
        )
        assert_user_error(swapped, "is not after since")
    # --until and --entity, as GET /anomalies has them (and 'alerts list' has --entity).
    earlier = json.loads(
        cli(
            capsys,
            "anomalies",
            "list",
            "--db",
            db_url,
            "--format",
            "json",
            "--until",
            since,
            "--limit",
            "500",
        ).stdout
    )
    assert len(earlier) + len(later) == flagged
    assert all(a["time"] < since for a in earlier)
    entity = as_json[0]["entity_key"]
    assert entity
    one = json.loads(
        cli(
            capsys,
            "anomalies",
            "list",
            "--db",
            db_url,
            "--format",
            "json",
            "--entity",
            entity,
            "--limit",
            "500",
        ).stdout
    )
    assert one
    assert {a["entity_key"] for a in one} == {entity}
    assert len(one) == sum(a["entity_key"] == entity for a in as_json)
    # An entity typed in another case ('p1' for 'P1') listed nothing, without a word.
    typed = entity.swapcase()
    for listed_kind, kind in (("anomalies", "flagged records"), ("alerts", "alerts")):
        cased = cli(capsys, listed_kind, "list", "--db", db_url, "--entity", typed)
        assert cased.returncode == 0, cased.stderr
        assert cased.stdout.strip() == (
            f"no {listed_kind} found for entity {typed!r}; the {kind} hold {entity!r} (--entity "
            "matches exactly, case included)"
        )
        unknown = cli(capsys, listed_kind, "list", "--db", db_url, "--entity", "no-such-pump")
        assert unknown.stdout.strip() == f"no {listed_kind} found"
    bad_until = cli(capsys, "anomalies", "list", "--db", db_url, "--until", "tomorrow")
    assert_user_error(bad_until, "--until 'tomorrow'")


@pytest.mark.parametrize("suffix", [".gz", ".zip"])
def test_an_export_and_its_compressed_copy_are_the_same_records(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
) -> None:
    """Keys hash the data, not the container: the same rows scored again from a gzip or zip
    copy (renamed, too) are the records already stored, not a second set of them."""
    import gzip
    import zipfile

    _, model_dir = pump_model
    packed = tmp_path / f"renamed.csv{suffix}"
    if suffix == ".gz":
        packed.write_bytes(gzip.compress(export.read_bytes()))
    else:
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(export, "inside.csv")
    out = ["--model-dir", str(model_dir), "--db", db_url, "--out", str(tmp_path / "s.csv")]
    first = cli(capsys, "score", str(export), *out)
    assert first.returncode == 0, first.stderr
    again = cli(capsys, "score", str(packed), *out)
    assert again.returncode == 0, again.stderr
    assert "0 score rows added (1499 already there, kept as first scored)" in again.stdout
    assert count(db_url, "scores") == 1499
    assert count(db_url, "dead_letters") == 1
    digests = {row[0] for row in query(db_url, "SELECT source_sha256 FROM scoring_runs")}
    assert digests == {hashlib.sha256(export.read_bytes()).hexdigest()}


def test_killed_run_then_rerun_stores_every_row_exactly_once(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, model_dir = pump_model
    big = tmp_path / "big.csv"
    frame = make_pump_data(12_000, anomaly_rate=0.01, seed=7).astype({"rpm": object})
    frame.loc[[5, 10_000], "rpm"] = "broken"
    frame.to_csv(big, index=False)
    args = [str(big), "--model-dir", str(model_dir), "--db", db_url, "--chunk-size", "100", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_vae", "score", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while count(db_url, "scores") == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the scorer wrote nothing in 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    after_kill = count(db_url, "scores")
    assert 0 < after_kill < 11_998, "killed too late to test anything: make the file bigger"

    result = cli(capsys, "score", *args)
    assert result.returncode == 0, result.stderr
    engine = create_database_engine(parse_database_url(db_url))
    try:
        with engine.connect() as connection:
            total, distinct = connection.execute(
                select(func.count(), func.count(func.distinct(Score.source_key)))
            ).one()
            runs = connection.execute(select(ScoringRun).order_by(ScoringRun.id)).all()
    finally:
        engine.dispose()
    assert total == distinct == 11_998
    assert count(db_url, "dead_letters") == 2
    assert [r.status for r in runs] == ["running", "succeeded"]  # the killed run says so
    assert runs[0].rows_inserted == after_kill  # counts committed with the rows
    assert runs[1].rows_inserted == 11_998 - after_kill


def test_commands_refuse_a_database_behind_the_migrations(
    empty_db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, model_dir = pump_model
    commands: list[tuple[str, ...]] = [("runs", "list"), ("anomalies", "list"), ("models", "list")]
    if not empty_db_url.startswith("sqlite:///"):  # a missing SQLite file is created instead
        commands.append(("score", str(export), "--model-dir", str(model_dir)))
    for args in commands:
        result = cli(capsys, *args, "--db", empty_db_url)
        assert_user_error(result, "run 'anomaly-vae db upgrade --db")
    if empty_db_url.startswith("sqlite:///"):  # refused without leaving an empty file behind
        assert not Path(empty_db_url.removeprefix("sqlite:///")).exists()
    if empty_db_url.startswith("sqlite:///"):  # no file: said so, and none left behind
        current = cli(capsys, "db", "current", "--db", empty_db_url)
        assert_user_error(current, "there is no database file", "db upgrade --db")
        assert not Path(empty_db_url.removeprefix("sqlite:///")).exists()
    else:
        assert "revision none" in cli(capsys, "db", "current", "--db", empty_db_url).stdout
    upgraded = cli(capsys, "db", "upgrade", "--db", empty_db_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "migrated from empty to 0009" in upgraded.stdout
    assert "already at revision 0009" in cli(capsys, "db", "upgrade", "--db", empty_db_url).stdout
    assert "up to date" in cli(capsys, "db", "current", "--db", empty_db_url).stdout
    assert cli(capsys, "runs", "list", "--db", empty_db_url).stdout.strip() == "no scoring runs yet"
    down = cli(capsys, "db", "downgrade", "base", "--db", empty_db_url)
    assert "down from 0009 to base" in down.stdout


def test_a_sqlite_url_without_a_file_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # 'db upgrade --db sqlite:///' said "schema migrated from empty to 0008" (in memory), then
    # 'score --db sqlite:///' said to run 'db upgrade --db sqlite:///': a loop.
    for args in (("db", "upgrade"), ("runs", "list")):
        assert_user_error(
            cli(capsys, *args, "--db", "sqlite:///"), "names no SQLite file", "sqlite:///results.db"
        )


def test_an_unknown_revision_is_one_line(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (("downgrade", "bogus"), ("downgrade", "+1"), ("upgrade", "--revision", "0010")):
        result = cli(capsys, "db", *args, "--db", db_url)
        assert_user_error(result, "cannot migrate", "revisions: base, 0001,", "0009, head")
    assert "revision 0009" in cli(capsys, "db", "current", "--db", db_url).stdout


def test_a_database_a_newer_version_migrated_is_not_called_behind(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'db current' said "behind: run 'anomaly-vae db upgrade'", and 'db upgrade' then failed
    # with Alembic's "Can't locate revision identified by 'ffff9999'": the way out is a newer
    # anomaly-vae, as every other command says.
    engine = create_database_engine(parse_database_url(db_url))
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff9999'")
    finally:
        engine.dispose()
    current = cli(capsys, "db", "current", "--db", db_url)
    assert current.returncode == 0, current.stderr
    assert "revision ffff9999 (latest 0009): newer than this anomaly-vae knows" in current.stdout
    assert "behind" not in current.stdout
    # Both ways out: a newer anomaly-vae, or (one who went back to this version) the newer
    # one's 'db downgrade' to this version's head; "upgrade anomaly-vae" alone named no way back.
    assert "'anomaly-vae db downgrade 0009'" in current.stdout
    for args in (("upgrade",), ("downgrade", "-1")):
        assert_user_error(
            cli(capsys, "db", *args, "--db", db_url),
            "at schema revision ffff9999, newer than this anomaly-vae knows (head 0009)",
            "upgrade anomaly-vae, or, to keep this version, migrate the database back with the "
            "newer one: 'anomaly-vae db downgrade 0009'",
        )
    listed = cli(capsys, "models", "list", "--db", db_url)
    assert_user_error(listed, "newer than this anomaly-vae knows", "db downgrade 0009")
    assert "revision ffff9999" in cli(capsys, "db", "current", "--db", db_url).stdout


def test_db_current_names_the_database_to_upgrade(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "db", "current", "--db", db_url, "--check").returncode == 0
    assert cli(capsys, "db", "downgrade", "-1", "--db", db_url).returncode == 0
    behind = cli(capsys, "db", "current", "--db", db_url).stdout
    assert "behind: run 'anomaly-vae db upgrade --db " in behind
    # --check: a deploy step can gate on it (without, 'db current' reports and exits 0).
    assert cli(capsys, "db", "current", "--db", db_url).returncode == 0
    gated = cli(capsys, "db", "current", "--db", db_url, "--check")
    assert gated.returncode == 1
    assert "behind: run" in gated.stdout


def test_downgrade_minus_one_is_one_step_down(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # As its help says ('an id, -1, or base'): not "No such option: -1".
    down = cli(capsys, "db", "downgrade", "-1", "--db", db_url)
    assert down.returncode == 0, down.stderr
    assert "down from 0009 to 0008" in down.stdout
    assert "from 0008 to 0009" in cli(capsys, "db", "upgrade", "--db", db_url).stdout


def test_score_creates_a_missing_sqlite_database(
    tmp_path: Path,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SQLite needs no set-up: a job that writes results creates the file at the latest schema
    (the list commands still refuse a missing file: they would only read an empty one)."""
    _, model_dir = pump_model
    url = f"sqlite:///{tmp_path / 'new' / 'results.db'}"
    (tmp_path / "new").mkdir()
    scored = cli(capsys, "score", str(export), "--model-dir", str(model_dir), "--db", url)
    assert scored.returncode == 0, scored.stderr
    assert "score rows added" in scored.stdout
    assert "up to date" in cli(capsys, "db", "current", "--db", url).stdout
    assert count(url, "scores") > 0
    missing = f"sqlite:///{tmp_path / 'other.db'}"
    assert_user_error(cli(capsys, "runs", "list", "--db", missing), "db upgrade --db")
    assert not (tmp_path / "other.db").exists()


def test_the_upgrade_command_said_for_a_pipelines_database_names_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database named by a pipeline file's database.url: the command said was 'anomaly-vae
    db upgrade', which, run as said, created the default anomaly_vae.db and left the pipeline's
    database missing (or behind) as before."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANOMALY_VAE_DATABASE_URL", raising=False)
    pipeline = tmp_path / "results.yaml"
    pipeline.write_text("database:\n  url: sqlite:///piped.db\n")
    hint = f"run 'anomaly-vae db upgrade --pipeline {pipeline}' to create it"
    assert_user_error(cli(capsys, "runs", "list", "--pipeline", str(pipeline)), hint)
    assert_user_error(cli(capsys, "db", "current", "--pipeline", str(pipeline)), hint)
    assert cli(capsys, "db", "upgrade", "--pipeline", str(pipeline)).returncode == 0
    assert cli(capsys, "db", "downgrade", "0007", "--pipeline", str(pipeline)).returncode == 0
    behind = cli(capsys, "runs", "list", "--pipeline", str(pipeline))
    assert_user_error(behind, f"run 'anomaly-vae db upgrade --pipeline {pipeline}' to migrate it")
    assert not (tmp_path / "anomaly_vae.db").exists()


def test_the_upgrade_command_said_for_a_path_with_spaces_runs_as_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --db URL whose path holds spaces: the command said was 'db upgrade --db
    sqlite:///.../my results/r.db' unquoted, which pasted into a shell gave three arguments."""
    import shlex

    (tmp_path / "my results").mkdir()
    url = f"sqlite:///{tmp_path / 'my results' / 'r.db'}"
    result = cli(capsys, "runs", "list", "--db", url)
    said = re.search(r"run '(anomaly-vae db upgrade .*)' to create it", result.stderr)
    assert said is not None, result.stderr
    command = shlex.split(said.group(1))
    assert command[-2:] == ["--db", url]
    assert cli(capsys, *command[1:]).returncode == 0
    assert (tmp_path / "my results" / "r.db").exists()


def test_upgrade_from_another_directory_uses_the_env_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migrations are found from any working directory; the URL comes from the
    environment, and the default is a file in the working directory."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("ANOMALY_VAE_DATABASE_URL", url)
    from_env = cli(capsys, "db", "upgrade")
    assert from_env.returncode == 0, from_env.stderr
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("ANOMALY_VAE_DATABASE_URL")
    default = cli(capsys, "db", "upgrade")
    assert default.returncode == 0, default.stderr
    assert "sqlite:///anomaly_vae.db" in default.stdout
    assert (tmp_path / "anomaly_vae.db").exists()


def test_pipeline_database_url_is_used_and_never_saved_with_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "p.yaml"
    url = f"sqlite:///{tmp_path / 'from-pipeline.db'}"
    pipeline.write_text(f"name: p\ndatabase:\n  url: {url}\n")
    result = cli(capsys, "db", "upgrade", "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-pipeline.db").exists()
    from anomaly_vae.config import PipelineConfig
    from tests.conftest import correlated_normal

    cfg = PipelineConfig.from_yaml(pipeline)
    cfg.database.url = "postgresql://bob:s3cret@db.example/anomalies"  # type: ignore[union-attr]
    model = AnomalyVAE(config=cfg, epochs=2).fit(correlated_normal(200, seed=0))
    model.save(tmp_path / "model")
    saved = (tmp_path / "model" / "model.json").read_text()
    assert "s3cret" not in saved
    assert "db.example" not in saved


def test_kafka_client_secrets_are_never_saved_with_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The stream scorer reads kafka.client from the model directory: a SASL password written
    # in the pipeline file went into model.json, in clear, wherever the directory was copied.
    from anomaly_vae.config import PipelineConfig
    from tests.conftest import correlated_normal

    cfg = PipelineConfig.model_validate(
        {
            "name": "p",
            "kafka": {
                "topic": "t",
                "client": {
                    "security_protocol": "SASL_SSL",
                    "sasl_mechanism": "PLAIN",
                    "sasl_plain_username": "scorer",
                    "sasl_plain_password": "kafka-s3cret",
                    "ssl_password": "key-s3cret",
                    "ssl_cafile": "/etc/ca.pem",
                },
            },
        }
    )
    model = AnomalyVAE(config=cfg, epochs=2).fit(correlated_normal(200, seed=0))
    model.save(tmp_path / "model")
    assert "s3cret" not in (tmp_path / "model" / "model.json").read_text()
    assert "sasl_plain_password, ssl_password not written" in caplog.text
    client = AnomalyVAE.load(tmp_path / "model").config_.kafka.client
    assert client == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "scorer",
        "ssl_cafile": "/etc/ca.pem",
    }
    assert model.config_.kafka.client["sasl_plain_password"] == "kafka-s3cret"  # untouched


def test_connection_errors_are_one_line_with_the_password_masked(
    capsys: pytest.CaptureFixture[str], postgres_databases: object
) -> None:
    refused = cli(capsys, "runs", "list", "--db", "postgresql://bob:s3cret@127.0.0.1:1/x")
    assert_user_error(refused, "127.0.0.1:1", "connection refused", "bob:***@")
    malformed = cli(capsys, "db", "upgrade", "--db", "postgresql://bob:s3cret@host:port/x")
    assert_user_error(malformed, "malformed database URL", "bob:***@")
    for result in (refused, malformed):
        assert "s3cret" not in result.stdout + result.stderr
    # Verbose logging names the database without its password (trust auth ignores it).
    url = "postgresql://postgres:s3cret@127.0.0.1:5432/postgres"
    logged = cli(capsys, "db", "current", "--db", url)
    assert logged.returncode == 0, logged.stderr
    verbose = cli(
        capsys, "db", "upgrade", "-v", "--db", url.replace("/postgres", "/nonexistent_db")
    )
    assert_user_error(verbose, "does not exist")
    assert "s3cret" not in logged.stdout + logged.stderr + verbose.stdout + verbose.stderr
    assert "postgres:***@" in logged.stdout


def test_epoch_second_timestamps_are_stored_as_the_times_they_are(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The timestamp column of an export in epoch seconds (as a Kafka message may carry it, and
    # as a window reads it) was stored as nanoseconds: every event_time 1970-01-01 00:00:01.
    _, model_dir = pump_model
    frame = make_pump_data(12, seed=3)
    iso = pd.to_datetime(frame["ts"], utc=True)
    frame["ts"] = (iso - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    path = tmp_path / "epoch.csv"
    frame.to_csv(path, index=False)
    url = f"sqlite:///{tmp_path / 'epoch.db'}"
    result = cli(capsys, "score", str(path), "--model-dir", str(model_dir), "--db", url)
    assert result.returncode == 0, result.stderr
    engine = create_database_engine(parse_database_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Score.source_key, Score.event_time)).all()
    finally:
        engine.dispose()
    stored = {int(key.rsplit(":", 1)[1]): when for key, when in rows}
    assert [stored[i] for i in range(12)] == iso.dt.to_pydatetime().tolist()


def test_timestamps_that_are_not_times_are_counted_and_named_not_dropped_silently(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A time zone name pandas cannot read ("CET") or a stray word: the score was stored with
    # no event time (alert cool-downs and time queries skip it) and nothing said so.
    _, model_dir = pump_model
    frame = make_pump_data(30, seed=3)
    frame.loc[[4, 21], "ts"] = ["2026-11-20 09:00:10 CET", "not recorded"]
    frame.loc[7, "ts"] = None  # an empty cell is no time, not an unreadable one
    path = tmp_path / "times.csv"
    frame.to_csv(path, index=False)
    url = f"sqlite:///{tmp_path / 'times.db'}"
    result = cli(
        capsys,
        "score",
        str(path),
        "--model-dir",
        str(model_dir),
        "--db",
        url,
        "--chunk-size",
        "8",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "'ts' holds values that are not times (first: '2026-11-20 09:00:10 CET' at data row 4)"
        in result.stderr
    )
    assert "2 scores without an event time" in result.stdout
    assert query(url, "SELECT count(*) FROM scores WHERE event_time IS NULL") == [(3,)]


def test_event_times_past_the_years_a_time_holds_are_named_so(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # '9999-12-31T23:59:59' is ISO 8601, past 2262: the warning called it "not a time" and
    # said to write ISO 8601.
    _, model_dir = pump_model
    frame = make_pump_data(10, seed=3)
    frame.loc[6, "ts"] = "9999-12-31T23:59:59"
    path = tmp_path / "far.csv"
    frame.to_csv(path, index=False)
    url = f"sqlite:///{tmp_path / 'far.db'}"
    result = cli(capsys, "score", str(path), "--model-dir", str(model_dir), "--db", url)
    assert result.returncode == 0, result.stderr
    assert (
        "'ts' holds dates outside the years 1677 to 2262 that a time can be read in (first: "
        "'9999-12-31T23:59:59' at data row 6); such scores are stored without an event time"
    ) in result.stderr
    assert "Write ISO 8601" not in result.stderr


def test_numeric_dates_of_a_model_without_windows_are_read_in_one_order_for_the_whole_run(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model without a window has no order of numeric dates: each chunk decided its own, so
    # after a chunk of 20/11/2026 (day first), the next chunk's 05/11/2026 (no number above 12)
    # was stored as 11 May: the stored event times depended on --chunk-size. The order the
    # first chunk holding numeric dates decides is kept for the run, as for windowed models.
    _, model_dir = pump_model
    frame = make_pump_data(20, seed=3)
    frame["ts"] = [f"20/11/2026 10:{i:02d}:00" for i in range(10)] + [
        f"05/11/2026 10:{i:02d}:00" for i in range(10)
    ]
    path = tmp_path / "dates.csv"
    frame.to_csv(path, index=False)
    stored: dict[str, dict[int, str]] = {}
    for chunk in ("10", "50000"):
        url = f"sqlite:///{tmp_path / f'dates{chunk}.db'}"
        args = ["score", str(path), "--model-dir", str(model_dir), "--db", url, "-q"]
        result = cli(capsys, *args, "--chunk-size", chunk)
        assert result.returncode == 0, result.stderr
        rows = query(url, "SELECT source_key, event_time FROM scores")
        stored[chunk] = {int(k.rsplit(":", 1)[1]): str(t)[:10] for k, t in rows}
    assert stored["10"] == stored["50000"]
    assert stored["10"][0] == "2026-11-20"
    assert stored["10"][19] == "2026-11-05"


def test_the_ambiguous_dates_warning_does_not_send_a_model_without_a_window_to_window_settings(
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "set window.day_first: true in the pipeline the model is trained with": for a model
    # without a window that is no way out ('window: {day_first: true}' is refused, window.size
    # required, and a window with a size is another model). Writing ISO 8601 is.
    from anomaly_vae import windows

    monkeypatch.setattr(windows, "_warned_ambiguous_dates", False)
    _, model_dir = pump_model
    frame = make_pump_data(10, seed=3)
    frame["ts"] = [f"05/11/2026 10:{i:02d}:00" for i in range(10)]
    path = tmp_path / "ambiguous.csv"
    frame.to_csv(path, index=False)
    url = f"sqlite:///{tmp_path / 'ambiguous.db'}"
    result = cli(capsys, "score", str(path), "--model-dir", str(model_dir), "--db", url, "-q")
    assert result.returncode == 0, result.stderr
    assert "could put the day or the month first" in result.stderr
    assert "write times as ISO 8601" in result.stderr
    assert "set window.day_first: true in the pipeline the model is trained with" not in (
        result.stderr
    )
    assert "a model with a window" in result.stderr


def test_a_row_whose_entity_is_too_long_to_store_is_rejected_not_a_traceback(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A pump id of 300 characters made PostgreSQL refuse the chunk's COPY (varchar(200)): a
    # traceback, and no row of the file stored. Now that row is rejected with the reason.
    _, model_dir = pump_model
    frame = make_pump_data(30, seed=4).astype({"pump_id": object})
    frame.loc[7, "pump_id"] = "P" * 300
    path = tmp_path / "long_entity.csv"
    frame.to_csv(path, index=False)
    result = cli(capsys, "score", str(path), "--model-dir", str(model_dir), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert "29 score rows added" in result.stdout
    assert count(db_url, "scores") == 29
    rows = query(db_url, "SELECT source_key, reason FROM dead_letters")
    assert len(rows) == 1
    assert rows[0][0].endswith(":7")
    assert "300 characters long" in rows[0][1]


def test_a_job_that_fails_part_way_records_its_rows_and_why(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A byte that is not UTF-8 deep in the file: the run was marked failed with 0 rows read
    # beside thousands stored, and an error that did not say what stopped it.
    _, model_dir = pump_model
    path = tmp_path / "late-bad-byte.csv"
    make_pump_data(3000, seed=4).to_csv(path, index=False)
    data = path.read_bytes()
    cut = data.index(b"\n", len(data) - 2000) + 1
    path.write_bytes(data[:cut] + b"\xff" + data[cut:])
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    args = ["score", str(path), "--model-dir", str(model_dir), "--db", url]
    result = cli(capsys, *args, "--chunk-size", "500")
    assert result.returncode != 0
    ((status, rows_read, error),) = query(url, "SELECT status, rows_read, error FROM scoring_runs")
    stored = query(url, "SELECT count(*) FROM scores")[0][0]
    stored += query(url, "SELECT count(*) FROM dead_letters")[0][0]
    assert status == "failed"
    assert 0 < stored < 3000
    assert rows_read == stored
    assert error.startswith("the job stopped before the end of the file: ")
    assert "utf-8" in error.lower()
    # 'runs list' says why, too: the error was only in the table (psql).
    (listed,) = json.loads(cli(capsys, "runs", "list", "--db", url, "--format", "json").stdout)
    assert listed["status"] == "failed"
    assert listed["error"] == error
    assert error in cli(capsys, "runs", "list", "--db", url).stdout


def test_prune_deletes_old_rows_but_those_alerts_point_to_and_flagged_ones(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from anomaly_vae.storage.tables import DeadLetter

    _, model_dir = pump_model
    scored = cli(capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url)
    assert scored.returncode == 0, scored.stderr
    ids = sorted(r[0] for r in query(db_url, "SELECT id FROM scores"))
    middle = ids[len(ids) // 2]
    # The first half of the rows (and the dead letter) written 40 days ago.
    old = datetime.now(timezone.utc) - timedelta(days=40)
    engine = create_database_engine(parse_database_url(db_url))
    try:
        with engine.begin() as connection:
            connection.execute(update(Score).where(Score.id < middle).values(scored_at=old))
            connection.execute(update(DeadLetter).values(rejected_at=old))
    finally:
        engine.dispose()
    pointed = {
        v
        for row in query(
            db_url, "SELECT score_id, escalated_score_id, resolved_score_id FROM alerts"
        )
        for v in row
        if v is not None
    }
    flagged = {r[0] for r in query(db_url, "SELECT id FROM scores WHERE is_anomaly")}
    old_ids = {i for i in ids if i < middle}
    assert old_ids & pointed  # the test means something: old rows that alerts point to
    assert (old_ids & flagged) - pointed  # and old flagged rows no alert points to
    alerts = count(db_url, "alerts")

    dry = cli(capsys, "db", "prune", "--older-than", "30d", "--dry-run", "--db", db_url)
    assert dry.returncode == 0, dry.stderr
    expected = len(old_ids - pointed - flagged)
    assert f"would delete {expected:,} score rows and 1 dead letters" in dry.stdout
    assert count(db_url, "scores") == len(ids)

    pruned = cli(capsys, "db", "prune", "--older-than", "30d", "--batch", "97", "--db", db_url)
    assert pruned.returncode == 0, pruned.stderr
    assert f"deleted {expected:,} score rows and 1 dead letters" in pruned.stdout
    assert f"kept {len(old_ids & (pointed | flagged)):,} older score rows" in pruned.stdout
    left = {r[0] for r in query(db_url, "SELECT id FROM scores")}
    assert left == (set(ids) - old_ids) | (old_ids & (pointed | flagged))
    assert count(db_url, "dead_letters") == 0
    assert count(db_url, "alerts") == alerts
    # The run says how many of its rows are gone ('runs show' said 'rows_inserted' alone).
    (run_id,) = query(db_url, "SELECT id FROM scoring_runs")[0]
    shown = cli(capsys, "runs", "show", str(run_id), "--format", "json", "--db", db_url)
    assert json.loads(shown.stdout)["rows_pruned"] == expected
    assert json.loads(shown.stdout)["rows_inserted"] == len(ids)
    again = cli(capsys, "db", "prune", "--older-than", "30d", "--db", db_url)
    assert "deleted 0 score rows and 0 dead letters" in again.stdout
    assert stored_per_models_list(capsys, db_url) == len(left)  # the dry run counted nothing

    # --include-flagged: old flagged rows go too, unless an alert points to them.
    cli(capsys, "db", "prune", "--older-than", "30d", "--include-flagged", "--db", db_url)
    left = {r[0] for r in query(db_url, "SELECT id FROM scores")}
    assert left == (set(ids) - old_ids) | (old_ids & pointed)
    assert stored_per_models_list(capsys, db_url) == len(left)
    assert count(db_url, "alerts") == alerts
    assert {
        r[0]
        for r in query(db_url, "SELECT count(*) FROM alerts a JOIN scores s ON s.id = a.score_id")
    } == {alerts}

    # A misspelt model name or a bad age is one line, and deletes nothing.
    args = ["db", "prune", "--older-than", "30d", "--db", db_url]
    assert_user_error(cli(capsys, *args, "--model", "pumsp"), "pumsp")
    assert_user_error(
        cli(capsys, "db", "prune", "--older-than", "30 days", "--db", db_url), "not a duration"
    )


def test_prune_with_an_age_beyond_the_calendar_is_one_line(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --older-than 999999999d (and 100000000000d) was a traceback: OverflowError: date value
    # out of range (or timedelta's "days=...; must have magnitude <= 999999999").
    for age in ("999999999d", "100000000000d"):
        result = cli(capsys, "db", "prune", "--older-than", age, "--dry-run", "--db", db_url)
        assert_user_error(result, f"--older-than {age!r} reaches back before the year 1")


def test_prune_deletes_alert_events_left_unpublished_in_the_outbox(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A scorer with --alerts-topic killed before it published, and no scorer of that model
    # with the topic since: its events wait in the outbox for good unless pruned.
    from datetime import datetime, timedelta, timezone

    from anomaly_vae.storage import outbox

    now = datetime.now(timezone.utc)
    engine = create_database_engine(parse_database_url(db_url))
    try:
        with engine.begin() as connection:
            for name, age in (("pumps", 40), ("fans", 31), ("pumps", 1)):
                outbox.add_events(
                    connection,
                    model_name=name,
                    run_id=1,
                    events=[{"event": "opened", "alert_id": 1, "entity_key": "P1"}],
                    now=now - timedelta(days=age),
                )
    finally:
        engine.dispose()
    dry = cli(capsys, "db", "prune", "--older-than", "30d", "--dry-run", "--db", db_url)
    assert dry.returncode == 0, dry.stderr
    assert (
        "would delete 0 score rows, 0 dead letters and 2 alert events never published "
        "(alert outbox) written before"
    ) in dry.stdout
    assert count(db_url, "alert_outbox") == 3
    done = cli(capsys, "db", "prune", "--older-than", "30d", "--db", db_url)
    assert "deleted 0 score rows, 0 dead letters and 2 alert events never" in done.stdout
    assert query(db_url, "SELECT model_name FROM alert_outbox") == [("pumps",)]
    again = cli(capsys, "db", "prune", "--older-than", "30d", "--db", db_url)
    assert "deleted 0 score rows and 0 dead letters written before" in again.stdout


def stored_per_models_list(capsys: pytest.CaptureFixture[str], db_url: str) -> int:
    """The score rows ``models list`` says are stored, summed over the model versions."""
    listed = cli(capsys, "models", "list", "--db", db_url, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return sum(int(row["scores"]) for row in json.loads(listed.stdout))


def test_models_list_counts_stored_rows_of_a_database_pruned_before_the_counter(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """models list sums the runs' counters instead of counting the scores table; a database
    that lost rows before scoring_runs.rows_pruned existed (an older prune, a delete by hand)
    gets the counter filled in by the migration, so the sum is still what is stored."""
    from anomaly_vae.storage.migrate import downgrade, upgrade

    _, model_dir = pump_model
    for chunk in ("400", "700"):  # two runs; the second stores nothing new
        scored = cli(capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url,
                     "--chunk-size", chunk)  # fmt: skip
        assert scored.returncode == 0, scored.stderr
    assert stored_per_models_list(capsys, db_url) == count(db_url, "scores") == 1499
    engine = create_database_engine(parse_database_url(db_url))
    try:
        downgrade(engine, "0005")
        with engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM scores WHERE (id / 3) * 3 = id")
        upgrade(engine)
    finally:
        engine.dispose()
    left = count(db_url, "scores")
    assert 900 < left < 1499
    assert stored_per_models_list(capsys, db_url) == left


def test_two_upgrades_at_once_take_turns(empty_db_url: str) -> None:
    """Two 'db upgrade' at once (two deploy jobs) on a fresh database: the second waits for
    the first and finds the schema at head. It read "no schema" while the first had not
    committed, then failed with PostgreSQL's "Key (typname, typnamespace)=(alembic_version,
    2200) already exists" (shown as "cannot connect to PostgreSQL") or SQLite's "database is
    locked"."""
    import threading

    from alembic import command
    from sqlalchemy import event

    url = parse_database_url(empty_db_url)
    first, second = create_database_engine(url), create_database_engine(url)
    sqlite = url.get_backend_name() == "sqlite"
    started = threading.Event()  # SQLite: the second migration has begun its transaction

    if sqlite:

        def trace(dbapi_connection: object, _record: object) -> None:
            def seen(statement: str) -> None:
                if "alembic_version" in statement or statement.startswith("BEGIN IMMEDIATE"):
                    started.set()

            dbapi_connection.set_trace_callback(seen)  # type: ignore[attr-defined]

        event.listen(second, "connect", trace)

    def second_is_waiting() -> bool:
        if sqlite:
            return started.is_set()
        waiting = query(
            empty_db_url,
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database()",
        )
        return waiting[0][0] > 0

    outcome: list[object] = []

    def upgrade_second() -> None:
        try:
            outcome.append(migrate.upgrade(second))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=upgrade_second)
    try:
        with migrate.migrating(first) as connection:
            command.upgrade(migrate.alembic_config(connection), "head")
            thread.start()
            deadline = time.monotonic() + 60
            while not second_is_waiting():  # it blocks until this transaction ends
                assert thread.is_alive(), f"the second upgrade did not wait: {outcome}"
                assert time.monotonic() < deadline, "the second upgrade never started"
                time.sleep(0.05)
        thread.join(90)
    finally:
        first.dispose()
        second.dispose()
    head = migrate.head_revision()
    assert outcome == [(head, head)], outcome


def test_a_statement_the_server_refuses_is_not_called_a_connection_failure(
    postgres_databases: object, export: Path, pump_model: tuple[AnomalyVAE, Path]
) -> None:
    """Connected, and PostgreSQL answered a statement with an error: a lock_timeout (or a
    statement_timeout) was "cannot connect ...: no answer within 10 s: check the host, port and
    firewall", a constraint an administrator added "cannot connect ...: DETAIL: Failing row
    contains (...)". (Commands in processes of their own, as an operator runs them.)"""
    from anomaly_vae.storage.migrate import upgrade

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "anomaly_vae", *args], capture_output=True, text=True
        )

    url = str(postgres_databases())  # type: ignore[operator]
    engine = create_database_engine(parse_database_url(url))
    try:
        upgrade(engine)
        name = parse_database_url(url).database
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET lock_timeout = '200ms'")
        with engine.connect() as holder, holder.begin():
            holder.exec_driver_sql("LOCK TABLE scoring_runs IN ACCESS EXCLUSIVE MODE")
            locked = command("runs", "list", "--db", url)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "ALTER TABLE scoring_runs ADD CONSTRAINT no_exports "
                "CHECK (strpos(source, 'export') = 0) NOT VALID"
            )
        _, model_dir = pump_model
        refused = command("score", str(export), "--model-dir", str(model_dir), "--db", url)
    finally:
        engine.dispose()
    assert_user_error(
        locked, "refused a statement: canceling statement due to lock timeout", "holds a lock"
    )
    assert_user_error(refused, "refused a statement", 'violates check constraint "no_exports"')
    for result in (locked, refused):
        assert "cannot connect" not in result.stderr
        assert "firewall" not in result.stderr


def test_migrations_that_do_nothing_say_so(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """'db downgrade base' on an empty database said "schema migrated down from None to base";
    'db upgrade --revision 0001' on a database at 0002 said "schema already at revision 0002"."""
    if empty_db_url.startswith("sqlite:///"):  # a file with no schema in it
        sqlite3.connect(empty_db_url.removeprefix("sqlite:///")).close()
    nothing = cli(capsys, "db", "downgrade", "base", "--db", empty_db_url)
    assert nothing.returncode == 0, nothing.stderr
    assert "no anomaly-vae schema there: nothing to migrate down" in nothing.stdout
    assert "None" not in nothing.stdout
    up = cli(capsys, "db", "upgrade", "--revision", "0002", "--db", empty_db_url)
    assert "from empty to 0002" in up.stdout
    below = cli(capsys, "db", "upgrade", "--revision", "0001", "--db", empty_db_url)
    assert below.returncode == 0, below.stderr
    assert "schema at revision 0002, not below 0001: nothing done" in below.stdout
    assert "anomaly-vae db downgrade 0001" in below.stdout
    again = cli(capsys, "db", "upgrade", "--revision", "0002", "--db", empty_db_url)
    assert "schema already at revision 0002" in again.stdout


def test_current_and_downgrade_leave_no_empty_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'db current' or 'db downgrade' on a SQLite path with no file (a typo) created an empty
    file there and said "revision none ... behind" or "nothing to migrate down"; now they
    say there is no such file, as the list commands do."""
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    for args in (("current",), ("downgrade", "base")):
        result = cli(capsys, "db", *args, "--db", url)
        assert_user_error(result, "there is no database file", "typo.db", "db upgrade --db")
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_database_url_variable_is_refused_not_replaced_by_the_default(
    value: str,
    tmp_path: Path,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ANOMALY_VAE_DATABASE_URL set to nothing (a secret not injected): the commands took the
    default SQLite file in the working directory in its place, without a word; a scorer wrote
    its results there (and a stream committed its offsets)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANOMALY_VAE_DATABASE_URL", value)
    _, model_dir = pump_model
    for args in (
        ("db", "upgrade"),
        ("runs", "list"),
        ("score", str(export), "--model-dir", str(model_dir), "--out", "s.csv"),
    ):
        assert_user_error(
            cli(capsys, *args), "ANOMALY_VAE_DATABASE_URL is set but empty", "or unset it"
        )
    assert not (tmp_path / "anomaly_vae.db").exists()
    assert not (tmp_path / "s.csv").exists()
    # --db still wins over the (empty) variable.
    url = f"sqlite:///{tmp_path / 'given.db'}"
    assert cli(capsys, "db", "upgrade", "--db", url).returncode == 0


def test_a_relative_sqlite_url_says_which_file_it_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """'database: {url: sqlite:///scores.db}' in pipelines/ops.yaml opens scores.db in the
    working directory, not beside the pipeline file; run from another directory (a cron job),
    a command opened (or created) another file without a word. It now says which file, as a
    warning when the URL came from a pipeline file or the environment; the file is the same."""
    import logging

    from anomaly_vae.storage.engine import DatabaseTarget, open_database

    work = tmp_path / "work"
    (tmp_path / "pipelines").mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("ANOMALY_VAE_DATABASE_URL", raising=False)
    pipeline = tmp_path / "pipelines" / "ops.yaml"
    pipeline.write_text("database:\n  url: sqlite:///scores.db\n")
    said = (
        "WARNING anomaly_vae.storage.engine: SQLite database sqlite:///scores.db (from "
        f"pipeline file {pipeline}) is a relative path: opening {work / 'scores.db'}, relative "
        f"to the working directory {work}, not to the pipeline file's folder; write an "
        f"absolute path (sqlite:///{work / 'scores.db'}) to open the same file from any "
        "directory\n"
    )
    for args in (("db", "upgrade"), ("runs", "list")):
        result = cli(capsys, *args, "--pipeline", str(pipeline))
        assert result.returncode == 0, result.stderr
        assert result.stderr.count(said) == 1, result.stderr  # one line, at the start
    assert (work / "scores.db").exists()
    assert not (tmp_path / "pipelines" / "scores.db").exists()
    # From the environment: a warning too.
    monkeypatch.setenv("ANOMALY_VAE_DATABASE_URL", "sqlite:///scores.db")
    from_env = cli(capsys, "runs", "list")
    assert "(from ANOMALY_VAE_DATABASE_URL) is a relative path" in from_env.stderr
    monkeypatch.delenv("ANOMALY_VAE_DATABASE_URL")
    # Typed as --db where it runs: an info line, shown with -v; an absolute path: nothing.
    typed = cli(capsys, "runs", "list", "--db", "sqlite:///scores.db")
    assert typed.returncode == 0, typed.stderr
    # No warning; an info line only (which an earlier in-process -v in this worker may leave
    # shown: the level is checked on the logger below).
    lines = [line for line in typed.stderr.splitlines() if "relative path" in line]
    assert all(line.startswith("INFO ") for line in lines), typed.stderr
    for url, expected_line in (
        ("sqlite:///scores.db", True),
        (f"sqlite:///{work / 'scores.db'}", False),
    ):
        target = DatabaseTarget(parse_database_url(url), "--db")
        logger = logging.getLogger("anomaly_vae.storage.engine")
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = records.append  # type: ignore[method-assign, assignment]
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
        try:
            open_database(target).dispose()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
        relative = [
            (r.levelno, r.getMessage()) for r in records if "is a relative path" in r.getMessage()
        ]
        expected = (
            f"SQLite database {url} (from --db) is a relative path: opening "
            f"{work / 'scores.db'}, relative to the working directory {work}; write an absolute "
            f"path (sqlite:///{work / 'scores.db'}) to open the same file from any directory"
        )
        assert relative == ([(logging.INFO, expected)] if expected_line else [])
