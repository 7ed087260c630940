"""Reading the dead-letter table: ``anomaly-vae dead-letters list / summary / export`` and
``GET /dead-letters`` (+ ``/summary``), on SQLite and PostgreSQL, over rejects that a real
scoring run wrote."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.storage.dead_letters import reason_pattern
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from tests.conftest import api_client, query
from tests.test_cli import assert_user_error, run_inline

pytestmark = pytest.mark.integration

# What the export below holds that cannot be scored, by the reason pattern it files under.
NOT_A_NUMBER = "column 'flow': … is not a number"
NOT_FINITE = "column 'vibration': … is not a finite number"
FIELDS = "line N: expected N fields, saw N"


def test_reason_pattern_masks_values_and_numbers_but_not_names() -> None:
    assert reason_pattern("column 'flow': 'oops' is not a number") == NOT_A_NUMBER
    assert reason_pattern("column 'flow': 'a b: c' is not a number") == NOT_A_NUMBER
    assert reason_pattern("field 'x_12': '3 is not' is not a finite number") == (
        "field 'x_12': … is not a finite number"
    )
    # Digits inside a quoted name stay: sensor_12 and sensor_13 are two causes.
    assert reason_pattern("missing field(s) 'sensor_12'") == "missing field(s) 'sensor_12'"
    assert reason_pattern("line 21: expected 13 fields, saw 15") == FIELDS
    assert reason_pattern("message of 20480 bytes is over max_message_bytes=10000") == (
        "message of N bytes is over max_message_bytes=N"
    )


@pytest.fixture
def rejected(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """A database where one scoring run rejected 3 non-numeric flows, 2 infinite vibrations
    and 2 lines with the wrong number of fields (7 dead letters), and a second run (another
    export) rejected 1 more non-numeric flow."""
    _, model_dir = pump_model
    frame = make_pump_data(200, seed=3).astype({"flow": object, "vibration": object})
    for row, value in ((3, "oops"), (7, "bad value"), (12, "abc")):
        frame.loc[row, "flow"] = value
    frame.loc[9, "vibration"] = "inf"
    frame.loc[15, "vibration"] = "-inf"
    first = tmp_path / "first.csv"
    frame.to_csv(first, index=False)
    lines = first.read_text().splitlines()
    lines[21] += ",extra"
    lines[31] = ",".join(lines[31].split(",")[:3])
    first.write_text("\n".join(lines) + "\n")
    second = tmp_path / "second.csv"
    other = make_pump_data(50, seed=4).astype({"flow": object})
    other.loc[5, "flow"] = "%_oops"
    other.to_csv(second, index=False)
    for export in (first, second):
        result = run_inline(
            capsys, "score", str(export), "--model-dir", str(model_dir), "--db", db_url, "-q"
        )
        assert result.returncode == 0, result.stderr
    assert len(query(db_url, "SELECT id FROM dead_letters")) == 8
    return db_url


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    result = run_inline(capsys, "dead-letters", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_list_pages_filters_and_summarises(
    rejected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    everything = cli_json(capsys, "list", "--db", rejected, "--limit", "100")
    assert len(everything) == 8
    ids = [row["id"] for row in everything]
    assert ids == sorted(ids, reverse=True)  # newest first
    # The newest is the second run's; every row names its run, model, key, reason and raw.
    assert everything[0]["run_id"] > everything[-1]["run_id"]
    assert everything[0]["model"] == "pumps"
    assert everything[0]["run_kind"] == "batch"
    assert "%_oops" in everything[0]["reason"]
    assert '"flow": "%_oops"' in everything[0]["raw"]
    assert all(row["source_key"].endswith(":5") for row in everything[:1])

    # Pages of 3, each after the last id seen: every row once, none skipped.
    seen: list[int] = []
    before: list[str] = []
    while True:
        page = cli_json(capsys, "list", "--db", rejected, "--limit", "3", *before)
        seen += [row["id"] for row in page]
        if len(page) < 3:
            break
        before = ["--before-id", str(page[-1]["id"])]
    assert seen == ids

    # The reason filter ignores case and takes % and _ as themselves.
    assert len(cli_json(capsys, "list", "--db", rejected, "--reason", "NOT A NUMBER")) == 4
    assert [r["id"] for r in cli_json(capsys, "list", "--db", rejected, "--reason", "%_o")] == [
        ids[0]
    ]
    assert cli_json(capsys, "list", "--db", rejected, "--reason", "o%s") == []
    first_run = everything[-1]["run_id"]
    assert len(cli_json(capsys, "list", "--db", rejected, "--run", str(first_run))) == 7

    summary = cli_json(capsys, "summary", "--db", rejected)
    counts = {row["reason"]: row["count"] for row in summary}
    assert counts[NOT_A_NUMBER] == 4
    assert counts[NOT_FINITE] == 2
    assert sum(n for reason, n in counts.items() if reason.startswith(FIELDS)) == 2
    assert sum(counts.values()) == 8
    assert summary[0]["reason"] == NOT_A_NUMBER  # most common first
    assert summary[0]["runs"] == f"{first_run},{first_run + 1}"
    only_first = cli_json(capsys, "summary", "--db", rejected, "--run", str(first_run))
    assert {r["reason"]: r["count"] for r in only_first}[NOT_A_NUMBER] == 3

    table = run_inline(capsys, "dead-letters", "list", "--db", rejected, "--limit", "2")
    assert table.returncode == 0, table.stderr
    assert f"--before-id {ids[1]} shows the next page" in table.stdout


def test_export_writes_every_row_whole(
    rejected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = {
        str(key): (str(reason), raw)
        for key, reason, raw in query(rejected, "SELECT source_key, reason, raw FROM dead_letters")
    }
    out = tmp_path / "dead.jsonl"
    result = run_inline(capsys, "dead-letters", "export", "--db", rejected, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote 8 dead letters" in result.stdout
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["source_key"]: (r["reason"], r["raw"]) for r in lines} == stored
    assert not list(tmp_path.glob("*.partial"))

    as_csv = run_inline(
        capsys, "dead-letters", "export", "--db", rejected, "-o", "-", "--format", "csv"
    )
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["source_key"]: (r["reason"], r["raw"]) for r in rows} == stored

    # More rows than one page: the export reads them page by page, each once.
    from anomaly_vae.storage.dead_letters import DeadLetterFilter, iter_dead_letters

    engine = create_database_engine(parse_database_url(rejected))
    try:
        with engine.connect() as connection:
            keys = [
                r["source_key"] for r in iter_dead_letters(connection, DeadLetterFilter(), page=3)
            ]
    finally:
        engine.dispose()
    assert sorted(keys) == sorted(stored)


def test_an_export_named_gz_or_zst_is_compressed_and_one_named_zip_is_refused(
    rejected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # '-o dead.jsonl.gz' wrote plain text under that name (as 'score --out' once did): zcat,
    # pandas and jq's gzip input refused it.
    import gzip

    import zstandard

    plain = tmp_path / "dead.jsonl"
    assert (
        run_inline(capsys, "dead-letters", "export", "--db", rejected, "-o", str(plain)).returncode
        == 0
    )
    for name, unpack in (
        ("dead.jsonl.gz", gzip.decompress),
        ("dead.jsonl.zst", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
    ):
        out = tmp_path / name
        result = run_inline(capsys, "dead-letters", "export", "--db", rejected, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert unpack(out.read_bytes()) == plain.read_bytes()
    refused = run_inline(
        capsys, "dead-letters", "export", "--db", rejected, "-o", str(tmp_path / "dead.zip")
    )
    assert_user_error(refused, "dead.zip", ".gz")
    assert not list(tmp_path.glob("dead.zip*"))


def test_bad_requests_are_one_line(
    rejected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_user_error(
        run_inline(capsys, "dead-letters", "list", "--db", rejected, "--model", "pumpz"),
        "pumpz",
    )
    assert_user_error(
        run_inline(capsys, "dead-letters", "list", "--db", rejected, "--since", "yesterday"),
        "--since",
    )
    assert_user_error(
        run_inline(
            capsys, "dead-letters", "export", "--db", rejected, "-o", str(tmp_path / "no" / "x")
        ),
        "does not exist",
    )


@pytest.fixture
def api(rejected: str) -> Iterator[Any]:
    with api_client(rejected) as client:
        yield client


def test_api_lists_pages_and_summarises(api: Any) -> None:
    everything = api.get("/dead-letters", params={"limit": 100}).json()
    assert len(everything) == 8
    page = api.get("/dead-letters", params={"limit": 5}).json()
    rest = api.get("/dead-letters", params={"before_id": page[-1]["id"]}).json()
    assert [r["id"] for r in page + rest] == [r["id"] for r in everything]
    assert {"reason", "raw", "source_key", "run_id", "rejected_at"} <= set(everything[0])
    assert len(api.get("/dead-letters", params={"reason": "finite"}).json()) == 2
    summary = api.get("/dead-letters/summary").json()
    assert summary[0]["reason"] == NOT_A_NUMBER
    assert summary[0]["count"] == 4
    assert len(summary[0]["runs"]) == 2
    assert api.get("/dead-letters", params={"model": "nope"}).status_code == 404
    assert api.get("/dead-letters", params={"limit": 0}).status_code == 422


def test_csv_escapes_formulas_when_asked(
    rejected: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Raw records and entities come from the data: a spreadsheet runs a cell that begins with
    = + - @ as a formula. --escape-formulas prefixes such text with ' (a number stays)."""
    engine = create_database_engine(parse_database_url(rejected))
    try:
        with engine.begin() as connection:
            ids = [r[0] for r in connection.exec_driver_sql("SELECT id FROM dead_letters")]
            for row_id, raw in zip(
                ids[:3], ['=HYPERLINK("http://x")', "-12.5", "@SUM(A1)"], strict=True
            ):
                connection.exec_driver_sql(
                    "UPDATE dead_letters SET raw = ? WHERE id = ?"
                    if rejected.startswith("sqlite")
                    else "UPDATE dead_letters SET raw = %s WHERE id = %s",
                    (raw, row_id),
                )
    finally:
        engine.dispose()

    def raws(*extra: str) -> set[str]:
        result = run_inline(
            capsys, "dead-letters", "export", "--db", rejected, "-o", "-", "--format", "csv", *extra
        )
        assert result.returncode == 0, result.stderr
        return {row["raw"] for row in csv.DictReader(io.StringIO(result.stdout))}

    assert {'=HYPERLINK("http://x")', "-12.5", "@SUM(A1)"} <= raws()
    escaped = raws("--escape-formulas")
    assert {'\'=HYPERLINK("http://x")', "-12.5", "'@SUM(A1)"} <= escaped
    listed = run_inline(
        capsys, "dead-letters", "list", "--db", rejected, "--format", "csv", "--escape-formulas"
    )
    assert "'@SUM(A1)" in listed.stdout

    # anomalies list: an entity from the data that starts a formula.
    frame = make_pump_data(300, anomaly_rate=0.2, seed=9)
    frame["pump_id"] = "=cmd|' /C calc'!A0"
    export = tmp_path / "formula.csv"
    frame.to_csv(export, index=False)
    scored = run_inline(
        capsys, "score", str(export), "--model-dir", str(pump_model[1]), "--db", rejected, "-q"
    )
    assert scored.returncode == 0, scored.stderr
    for command in (("anomalies", "list"), ("alerts", "list")):
        args = [*command, "--db", rejected, "--format", "csv", "--limit", "5"]
        plain = run_inline(capsys, *args)
        assert plain.returncode == 0, plain.stderr
        entities = {row["entity_key"] for row in csv.DictReader(io.StringIO(plain.stdout))}
        assert entities == {"=cmd|' /C calc'!A0"}, command
        safe = run_inline(capsys, *args, "--escape-formulas")
        entities = {row["entity_key"] for row in csv.DictReader(io.StringIO(safe.stdout))}
        assert entities == {"'=cmd|' /C calc'!A0"}, command


def test_export_never_writes_through_a_link_at_its_partial_name(
    rejected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The export was written to OUT.partial opened for writing as it found it: a symbolic
    # link planted there (by anyone who can write to the folder, /tmp say) had the dead
    # letters, raw text of the records included, overwrite the file it pointed to.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n", encoding="utf-8")
    out = tmp_path / "dead.jsonl"
    (tmp_path / "dead.jsonl.partial").symlink_to(victim)
    result = run_inline(capsys, "dead-letters", "export", "--db", rejected, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert victim.read_text(encoding="utf-8") == "keep me\n"
    assert not out.is_symlink()
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8
    assert not list(tmp_path.glob("*.partial"))
