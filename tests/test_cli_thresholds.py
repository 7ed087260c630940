"""Thresholds and alerts from the command line, on SQLite and PostgreSQL: show, set (every
policy), history, preview (with a plot), tune from labels (per record and incident windows),
and acknowledging and resolving alerts."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.thresholds import confusion_at, evt_threshold
from tests.test_cli import assert_user_error, run_inline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "export.csv"
    make_pump_data(1200, anomaly_rate=0.05, seed=3).to_csv(path, index=False)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_inline(capsys, *args)


def ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    result = cli(capsys, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    return json.loads(ok(capsys, *args, "--format", "json"))


def test_thresholds_and_alerts_from_the_command_line(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert (shown["version"], shown["policy"]) == (1, "quantile")
    assert shown["warning"] == pytest.approx(model.threshold_)
    assert shown["normal_false_alarm_rate"] == pytest.approx(0.005, abs=0.002)

    # Policies from the held-out normal scores stored with the model row.
    normal = model.calibration_
    out = ok(
        capsys,
        "thresholds",
        "set",
        "pumps",
        "--quantile",
        "0.99",
        "--critical",
        "evt=1e-4",
        "--debounce",
        "2/3",
        "--cooldown",
        "60",
        "--reason",
        "after incident 42",
        "--by",
        "alice",
        *db,
    )
    assert "threshold v2 in force (quantile)" in out
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert shown["warning"] == pytest.approx(np.quantile(normal, 0.99))
    assert shown["critical"] == pytest.approx(evt_threshold(normal, 1e-4).threshold)
    # The rule as its settings, as the HTTP API gives it (it was the description alone).
    assert shown["alert_rule"] == {"k": 2, "n": 3, "cooldown_s": 60.0, "resolve_after": 1}
    assert shown["alert_rule_text"].startswith("2 of 3 records, cool-down 60 s")
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert history[0]["alert_rule"] == shown["alert_rule"]
    ok(capsys, "thresholds", "set", "pumps", "--false-alarm-rate", "0.02", "--reason", "r", *db)
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert shown["warning"] == pytest.approx(np.quantile(normal, 0.98))
    assert shown["critical"] is not None  # carried over, as is the rule
    assert shown["alert_rule_text"].startswith("2 of 3")
    ok(
        capsys,
        "thresholds",
        "set",
        "pumps",
        "--evt",
        "--risk",
        "1e-3",
        "--no-critical",
        "--reason",
        "r",
        *db,
    )
    # The tail's start, which EVT's own error message says to lower, can be given here too
    # (only the API took it): a preview at 0.9 differs from the default 0.98's threshold.
    evt_args = ("thresholds", "preview", "pumps", "--evt", "--risk", "1e-3", *db)
    at_90 = as_json(capsys, *evt_args, "--initial-quantile", "0.9")
    assert isinstance(at_90, dict)
    assert at_90["proposed"]["warning"] == pytest.approx(
        evt_threshold(normal, 1e-3, initial_quantile=0.9).threshold
    )
    assert at_90["proposed"]["warning"] != pytest.approx(evt_threshold(normal, 1e-3).threshold)
    refused = cli(capsys, "thresholds", "preview", "pumps", "--initial-quantile", "0.9", *db)
    assert refused.returncode == 2
    assert "--initial-quantile goes with --evt" in refused.stderr
    ok(capsys, "thresholds", "set", "pumps", "--contamination", "0.05", "--reason", "r", *db)
    ok(
        capsys,
        "thresholds",
        "set",
        "pumps",
        "--value",
        "12.5",
        "--debounce",
        "1/1",
        "--reason",
        "r",
        *db,
    )
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert [h["version"] for h in history] == [6, 5, 4, 3, 2, 1]
    assert [h["policy"] for h in history] == [
        "value",
        "contamination",
        "evt",
        "false_alarm_rate",
        "quantile",
        "quantile",
    ]
    assert history[4]["created_by"] == "alice"
    assert history[4]["reason"] == "after incident 42"
    assert history[0]["warning"] == 12.5

    # Preview: a lower threshold flags more; contamination flags its share; a plot is drawn,
    # its folder created as '--out' creates one (a folder that did not exist was refused).
    plot = tmp_path / "plots" / "today" / "preview.png"
    preview = as_json(
        capsys, "thresholds", "preview", "pumps", "--quantile", "0.9", "--plot", str(plot), *db
    )
    assert isinstance(preview, dict)
    assert preview["records"] == 1200
    scores = pd.read_csv(export)  # the export's rows, to check counts against
    assert preview["flagged"] > preview["at_the_time"]["flagged"] > 0
    assert plot.stat().st_size > 20_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    share = as_json(capsys, "thresholds", "preview", "pumps", "--contamination", "0.05", *db)
    assert isinstance(share, dict)
    assert share["flagged"] == pytest.approx(0.05 * 1200, abs=2)
    labelled = as_json(capsys, "thresholds", "preview", "pumps", "--labels", str(export), *db)
    assert isinstance(labelled, dict)
    assert labelled["labelled_records"] == 1200
    assert 0 < labelled["metrics"]["recall"] <= 1

    # Tune from the scored export's own labels, then from incident windows.
    tuned = as_json(
        capsys, "thresholds", "tune", "pumps", "--labels", str(export), "--objective", "f1", *db
    )
    assert isinstance(tuned, dict)
    stored = model.score(scores.drop(columns=["label"]))["score"].to_numpy()
    best = max(
        confusion_at(stored, scores["label"].to_numpy(), t)["f1"] for t in np.r_[stored, -np.inf]
    )
    assert tuned["f1"] == pytest.approx(best)
    windows = tmp_path / "incidents.csv"
    anomalous = scores[scores["label"] == 1]
    pd.DataFrame(
        {"entity": anomalous["pump_id"], "start": anomalous["ts"], "end": anomalous["ts"]}
    ).to_csv(windows, index=False)
    applied = ok(
        capsys,
        "thresholds",
        "tune",
        "pumps",
        "--labels",
        str(windows),
        "--max-false-alarm-rate",
        "0.01",
        "--apply",
        *db,
    )
    assert "now in force as threshold v7" in applied
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert shown["policy"] == "labels"
    assert shown["parameters"]["false_alarm_rate"] <= 0.01
    assert shown["reason"] == "tuned on incidents.csv (max_false_alarm_rate)"

    # Alerts: with a rule that never resolves by itself, a second export leaves them open.
    ok(capsys, "thresholds", "set", "pumps", "--resolve-after", "100000", "--reason", "r", *db)
    second = tmp_path / "second.csv"
    later = make_pump_data(300, anomaly_rate=0.2, seed=4, start="2026-11-02T00:00:00Z")
    later.to_csv(second, index=False)
    ok(capsys, "score", str(second), "--model-dir", str(model_dir), *db, "--quiet")
    alerts = as_json(capsys, "alerts", "list", "--state", "open", *db)
    assert isinstance(alerts, list)
    assert alerts
    assert {a["source_key"].split(":")[1] for a in alerts} == {_sha256(second)}
    assert all(a["model"] == "pumps" for a in alerts)
    first = str(alerts[0]["id"])
    ack = ("alerts", "ack", first, "--by", "bob", "--note", "on it", *db)
    assert "is now acknowledged" in ok(capsys, *ack)
    # Acted on twice: who did it and when, what to do, and that the note was not kept.
    assert_user_error(
        cli(capsys, "alerts", "ack", first, "--note", "me too", *db),
        f"alert {first} is already acknowledged (by bob at 20",
        "nothing to do; resolve it once it is dealt with; the note given was not added",
    )
    # The same action by the same operator, repeated (a script run twice): a success that
    # changes nothing and says so (it was an error, exit status 2).
    assert f"alert {first} is already acknowledged by bob at 20" in ok(
        capsys, "alerts", "ack", first, "--by", "bob", *db
    )
    assert "is now resolved" in ok(capsys, "alerts", "resolve", first, "--note", "pump fixed", *db)
    repeated = ok(capsys, "alerts", "resolve", first, *db)
    assert re.search(
        rf"^alert {first} is already resolved by \S+ at 20\d\d-\d\d-\d\d \d\d:\d\dZ: "
        r"nothing changed \(",
        repeated,
    ), repeated
    assert "is already resolved by" in ok(
        capsys, "alerts", "resolve", first, "--note", "pump fixed", *db
    )
    assert_user_error(
        cli(capsys, "alerts", "resolve", first, "--by", "someone-else", *db),
        f"alert {first} is already resolved (by ",
        "nothing to do",
    )
    assert_user_error(
        cli(capsys, "alerts", "ack", first, *db),
        f"alert {first} is already resolved",
        "only an open alert can be acknowledged",
    )
    resolved = as_json(capsys, "alerts", "list", "--state", "resolved", *db)
    assert isinstance(resolved, list)
    by_hand = [a for a in resolved if a["resolved_by"] != "alert-rule"]
    assert [(a["id"], a["acknowledged_by"]) for a in by_hand] == [(int(first), "bob")]
    # The notes, when each action was taken and the threshold version: 'alerts list' showed
    # none of them (only the API did), so a note written with 'alerts ack' was seen nowhere.
    assert by_hand[0]["note"] == "on it; pump fixed"
    assert by_hand[0]["acknowledged_at"] <= by_hand[0]["resolved_at"]
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert by_hand[0]["threshold_id"] == history[0]["id"]
    assert "on it; pump fixed" in ok(capsys, "alerts", "list", "--state", "resolved", *db)
    assert len(resolved) > 1  # the first export's alerts, resolved by the rule
    assert "no alerts" in ok(capsys, "alerts", "list", "--until", "2000-01-01", *db)
    paged = as_json(capsys, "alerts", "list", "--state", "resolved", "--until", "2100-01-01", *db)
    assert paged == resolved
    assert_user_error(cli(capsys, "alerts", "resolve", "999999", *db), "no alert 999999")
    huge = str(2**64)  # beyond a 64-bit id: the driver's OverflowError was a traceback
    assert_user_error(cli(capsys, "alerts", "ack", huge, *db), f"no alert {huge}")
    assert_user_error(
        cli(capsys, "alerts", "list", "--model", "pumsp", *db), "no model named 'pumsp'"
    )

    # Mistakes are one line, naming what to do.
    assert_user_error(
        cli(
            capsys,
            "thresholds",
            "set",
            "pumps",
            "--value",
            "1",
            "--quantile",
            "0.9",
            "--reason",
            "r",
            *db,
        ),
        "give one threshold policy",
    )
    assert_user_error(
        cli(capsys, "thresholds", "set", "pumps", "--quantile", "1.5", "--reason", "r", *db),
        "quantile: Input should be less than 1",
    )
    assert_user_error(
        cli(capsys, "thresholds", "set", "pumps", "--critical", "median=3", "--reason", "r", *db),
        "--critical 'median=3'",
    )
    assert_user_error(
        cli(
            capsys,
            "thresholds",
            "set",
            "pumps",
            "--value",
            "1",
            "--critical",
            "0.5",
            "--reason",
            "r",
            *db,
        ),
        "below the warning threshold",
    )
    assert_user_error(cli(capsys, "thresholds", "show", "nope", *db), "no model named 'nope'")
    assert_user_error(
        cli(capsys, "thresholds", "tune", "pumps", "--labels", str(export), *db),
        "give one objective",
    )
    assert len(as_json(capsys, "thresholds", "history", "pumps", *db)) == 8  # type: ignore[arg-type]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tune_apply_can_drop_a_critical_level_below_the_tuned_threshold(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The critical level in force is carried over; when the tuned warning lands above it, the
    # error says "--no-critical", which 'tune' did not have: --apply could not be done at all.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    ok(
        capsys,
        "thresholds",
        "set",
        "pumps",
        "--value",
        "1",
        "--critical",
        "2",
        "--reason",
        "r",
        *db,
    )
    tune = ("thresholds", "tune", "pumps", "--labels", str(export), "--objective", "f1")
    refused = cli(capsys, *tune, "--apply", *db)
    assert_user_error(refused, "would be below the warning threshold", "--no-critical")
    applied = ok(capsys, *tune, "--apply", "--no-critical", *db)
    assert "now in force as threshold v3" in applied
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert (shown["policy"], shown["critical"]) == ("labels", None)


def test_the_history_of_an_unregistered_model_name_is_an_error(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'thresholds history pumsp' printed "no thresholds stored for model 'pumsp'" with exit
    # status 0 (and the API's GET /models/pumsp/thresholds an empty list), where 'show',
    # 'alerts list --model' and the API's other model paths say the name is not registered.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    assert_user_error(
        cli(capsys, "thresholds", "history", "pumsp", *db),
        "no model named 'pumsp' is registered",
        "models list",
    )
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert [h["version"] for h in history] == [1]


def test_preview_until_is_named_and_checked_against_since(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A bad --until was reported as "--since 'yesterday' is not a date", and an --until at or
    # before --since previewed an empty period as "would flag 0 records" (exit 0).
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    preview = ("thresholds", "preview", "pumps", "--quantile", "0.99", *db)
    assert_user_error(
        cli(capsys, *preview, "--since", "2026-11-01", "--until", "yesterday"),
        "--until 'yesterday' is not a date or time",
    )
    assert_user_error(
        cli(capsys, *preview, "--since", "2026-11-13", "--until", "2026-11-12"),
        "--until 2026-11-12 is not after --since 2026-11-13",
    )
    shown = as_json(capsys, *preview, "--since", "2000-01-01", "--until", "2100-01-01")
    assert isinstance(shown, dict)
    assert shown["records"] == 1200
    # A period with no stored score said only "would flag 0 records": not that the scores
    # lie elsewhere, nor where.
    empty = ok(capsys, *preview, "--since", "2030-01-01")
    assert "0 stored scores since 2030-01-01" in empty
    assert "none in that period: the 1,200 stored scores of model version " in empty
    assert "run from 2026-" in empty


def test_an_export_written_with_semicolons_labels_its_own_records(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'score --sep ";"' stores the file's records, but 'tune' and 'preview' read labels with
    # ',' only: the export could not label its own records ("has no 'label' column").
    _, model_dir = pump_model
    db = ("--db", db_url)
    export = tmp_path / "export_semicolons.csv"
    make_pump_data(600, anomaly_rate=0.05, seed=11).to_csv(export, index=False, sep=";")
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), "--sep", ";", *db, "-q")
    tune = ("thresholds", "tune", "pumps", "--labels", str(export), "--objective", "f1", *db)
    assert_user_error(cli(capsys, *tune), "has no 'label' column", "try --sep ';'")
    tuned = as_json(capsys, *tune, "--sep", ";")
    assert isinstance(tuned, dict)
    assert tuned["labelled_records"] == 600
    preview = as_json(
        capsys, "thresholds", "preview", "pumps", "--labels", str(export), "--sep", ";", *db
    )
    assert isinstance(preview, dict)
    assert preview["labelled_records"] == 600


def test_a_cp1252_export_with_a_malformed_line_labels_its_own_records(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An export 'score --encoding cp1252' stored could not label its own records: 'tune' and
    # 'preview' had no --encoding ("'utf-8' codec can't decode byte 0xe9"), and re-encoding the
    # file changes its content hash, its keys. A line with too many fields, which 'score'
    # rejects and goes on, made the whole labels file "not a readable CSV".
    from sklearn.metrics import precision_score, recall_score

    _, model_dir = pump_model
    db = ("--db", db_url)
    data = make_pump_data(600, anomaly_rate=0.05, seed=11)
    data["station"] = data["station"].map({"north": "Nörd"}).fillna("Süd")
    lines = data.to_csv(index=False).splitlines()
    lines.insert(8, lines[8] + ",extra")  # data row 7: a reject, the rows after it move on
    export = tmp_path / "export_cp1252.csv"
    export.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    out = tmp_path / "scores.csv"
    score = ("score", str(export), "--model-dir", str(model_dir), "--encoding", "cp1252", *db)
    assert "600 scored" in ok(capsys, *score, "--out", str(out), "-q")
    scores = pd.read_csv(out)
    assert 7 not in scores["row"].tolist()  # the malformed line's row
    tune = ("thresholds", "tune", "pumps", "--labels", str(export), "--objective", "f1", *db)
    assert_user_error(cli(capsys, *tune), "not utf-8 text", "--encoding")
    tuned = as_json(capsys, *tune, "--encoding", "cp1252")
    assert isinstance(tuned, dict)
    assert tuned["labelled_records"] == 600
    preview = ("thresholds", "preview", "pumps", "--labels", str(export), *db)
    shown = as_json(capsys, *preview, "--encoding", "cp1252")
    assert isinstance(shown, dict)
    assert shown["labelled_records"] == 600
    # Each record has its own label, those after the rejected line too: as 'score' read them.
    truth, flagged = scores["label"].to_numpy(), scores["is_anomaly"].to_numpy()
    assert shown["metrics"]["precision"] == pytest.approx(precision_score(truth, flagged))
    assert shown["metrics"]["recall"] == pytest.approx(recall_score(truth, flagged))


def test_a_labels_files_errors_name_only_the_options_that_read_it(tmp_path: Path) -> None:
    # 'thresholds tune --labels export.csv' said "give it with --encoding (...; csv.encoding in
    # a pipeline)", but a pipeline's csv section is not read for labels, and of a ';' file
    # "try --sep ';' (and --decimal ',' ...)", an option tune and preview do not have.
    from anomaly_vae.errors import InputFileError
    from anomaly_vae.storage.tuning import read_labels

    cp1252 = tmp_path / "labels_cp1252.csv"
    cp1252.write_bytes("entity,start,end,Störung\nP1,2026-11-01,2026-11-02,1\n".encode("cp1252"))
    with pytest.raises(InputFileError) as raised:
        read_labels(cp1252)
    assert "give it with --encoding" in str(raised.value)
    assert "pipeline" not in str(raised.value)
    semicolons = tmp_path / "labels_semicolons.csv"
    semicolons.write_text("entity;start;end\nP1;2026-11-01;2026-11-02\n")
    with pytest.raises(InputFileError) as raised:
        read_labels(semicolons)
    assert "try --sep ';'" in str(raised.value)
    assert "--decimal" not in str(raised.value)
    tabs = tmp_path / "labels_tabs.tsv"
    tabs.write_text("entity\tstart\tend\nP1\t2026-11-01\t2026-11-02\n")
    with pytest.raises(InputFileError) as raised:
        read_labels(tabs)
    # It said "looks '\\t'-separated: try --sep '\t'", the separator shown as a repr's repr.
    assert str(raised.value).endswith("; the header looks '\\t'-separated: try --sep '\\t'")
    hinted = tmp_path / "labels_hint.csv"
    hinted.write_text("sep=;\nentity;start;end\n")
    with pytest.raises(InputFileError) as raised:
        read_labels(hinted, sep=";")
    assert "--sep ';'" in str(raised.value)
    assert "pipeline" not in str(raised.value)


def test_a_plot_path_matplotlib_cannot_write_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # '--plot preview.txt' was a traceback (matplotlib's ValueError) after the preview was
    # computed; '--plot FOLDER' wrote FOLDER.png and said "plot: FOLDER". The database here
    # does not exist: the path is checked first.
    preview = ("thresholds", "preview", "pumps", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert_user_error(
        cli(capsys, *preview, "--plot", str(tmp_path / "preview.txt")),
        "'.txt' is not a picture format; use .png",
    )
    assert_user_error(cli(capsys, *preview, "--plot", str(tmp_path)), "is a folder")
    (tmp_path / "a-file").write_text("")
    assert_user_error(
        cli(capsys, *preview, "--plot", str(tmp_path / "a-file" / "p.png")),
        "a-file is a file, not a folder",
    )
    # A folder that does not exist is created only when the picture is written: not by a
    # preview that failed (here: no database).
    assert cli(capsys, *preview, "--plot", str(tmp_path / "nope" / "p.png")).returncode != 0
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_set_since_without_contamination_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'thresholds set M --value 5 --since 2026-11-01' ignored --since in silence (it only
    # chooses the stored scores a contamination is computed from); checked before connecting.
    db = ("--db", f"sqlite:///{tmp_path / 'none.db'}")
    set_ = ("thresholds", "set", "pumps", "--reason", "r", "--since", "2026-11-01", *db)
    for policy in (("--value", "5"), ("--quantile", "0.99", "--critical", "60")):
        assert_user_error(cli(capsys, *set_, *policy), "--since goes with --contamination")


def test_a_blank_name_on_an_alert_action_is_refused(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'alerts ack ID --by "  "' (or "by": "  " in the API) stored a blank acknowledged_by:
    # the audit trail said nothing of who acted. 'thresholds set --by "  "' is refused too.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    alerts = as_json(capsys, "alerts", "list", "--limit", "1", *db)
    assert isinstance(alerts, list)
    assert alerts
    alert_id = str(alerts[0]["id"])
    # An empty --by too: it was taken as no --by, and the OS user name recorded instead.
    for blank in ("  ", ""):
        for action in ("ack", "resolve"):
            assert_user_error(cli(capsys, "alerts", action, alert_id, "--by", blank, *db), "blank")
        after = as_json(capsys, "alerts", "list", "--limit", "1", *db)
        assert after == alerts
        set_ = ("thresholds", "set", "pumps", "--value", "9", "--reason", "r", "--by", blank)
        assert_user_error(cli(capsys, *set_, *db), "needs who made it")


def test_a_name_longer_than_the_database_keeps_is_refused(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # '--by' of 201 characters was stored whole by SQLite and refused by PostgreSQL with
    # "value too long for type character varying(200)", naming no option (the API says 422).
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    alerts = as_json(capsys, "alerts", "list", "--limit", "1", *db)
    assert isinstance(alerts, list)
    assert alerts
    long = "x" * 201
    said = "is 201 characters long: at most 200"
    set_ = ("thresholds", "set", "pumps", "--value", "9", "--reason", "r", "--by", long)
    assert_user_error(cli(capsys, *set_, *db), "--by", said)
    ack = ("alerts", "ack", str(alerts[0]["id"]), "--by", long)
    assert_user_error(cli(capsys, *ack, *db), "--by", said)
    ok(capsys, *set_[:-1], "x" * 200, *db)
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert history[0]["created_by"] == "x" * 200


def test_the_one_threshold_reports_take_table_or_json_not_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'thresholds show / preview / tune --format csv' was accepted (their help said "table or
    # json" beside a <table|csv|json> choice) and printed the table: a script asking for CSV
    # got text it could not parse. The choice is refused before any database is opened.
    db = ("--db", f"sqlite:///{tmp_path / 'none.db'}")
    labels = tmp_path / "labels.csv"
    labels.write_text("source_key,label\nk,1\n")
    for command in (
        ("show", "pumps"),
        ("preview", "pumps"),
        ("tune", "pumps", "--labels", str(labels), "--objective", "f1"),
    ):
        result = cli(capsys, "thresholds", *command, "--format", "csv", *db)
        assert result.returncode == 2, result.stderr
        assert "'csv' is not one of 'table', 'json'" in result.stderr, result.stderr
        assert not (tmp_path / "none.db").exists()


def test_show_as_json_writes_its_time_as_history_does(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'show --format json' wrote "2026-11-27 18:30:44.199675+00:00" (str of the datetime),
    # 'history --format json' and the API "2026-11-27T18:30:44.199675+00:00".
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(shown, dict)
    assert isinstance(history, list)
    assert "T" in shown["created_at"]
    assert shown["created_at"] == history[0]["created_at"]


def test_preview_reads_per_record_labels_under_another_key_column(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The labels for 'preview' and 'tune' are one format, with '--key-column NAME' for a
    # per-record file whose key column is not 'source_key' (README, "Labels"); only 'tune'
    # took the flag, and 'preview --key-column' was "No such option".
    import hashlib

    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    digest = hashlib.sha256(export.read_bytes()).hexdigest()
    truth = pd.read_csv(export)["label"]
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {"record": [f"file-sha256:{digest}:{row}" for row in truth.index], "label": truth}
    ).to_csv(labels, index=False)
    shown = as_json(
        capsys,
        "thresholds",
        "preview",
        "pumps",
        "--labels",
        str(labels),
        "--key-column",
        "record",
        *db,
    )
    assert isinstance(shown, dict)
    assert shown["labelled_records"] == shown["records"] > 0
    assert shown["metrics"]["recall"] > 0


def test_an_export_labels_its_records_for_preview_and_tune_as_score_reads_them(
    db_url: str,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'score --label-column' leaves a blank label out of its metrics and reads ok / fault, but
    # 'preview' and 'tune --labels' on the same export counted every blank as a normal record
    # (precision 0.56 against score's 0.86 on one file) and refused 'ok' as "not 0 or 1".
    from sklearn.metrics import precision_score, recall_score

    _, model_dir = pump_model
    db = ("--db", db_url)
    data = make_pump_data(800, anomaly_rate=0.08, seed=12)
    truth = data["label"].to_numpy()
    words = np.where(truth == 1, "fault", "ok").astype(object)
    unlabelled = np.flatnonzero(truth == 1)[::2]  # half the anomalies not labelled yet
    words[unlabelled] = ""
    data["label"] = words
    export = tmp_path / "export.csv"
    data.to_csv(export, index=False)
    out = tmp_path / "scores.csv"
    scored = ok(capsys, "score", str(export), "--model-dir", str(model_dir), "--out", str(out), *db)
    known = np.ones(len(truth), dtype=bool)
    known[unlabelled] = False
    flagged = pd.read_csv(out)["is_anomaly"].to_numpy()
    precision = precision_score(truth[known], flagged[known])
    recall = recall_score(truth[known], flagged[known])
    assert f"precision {precision:.3f}, recall {recall:.3f}" in scored
    shown = as_json(capsys, "thresholds", "preview", "pumps", "--labels", str(export), *db)
    assert isinstance(shown, dict)
    assert shown["labelled_records"] == int(known.sum())
    assert shown["metrics"]["precision"] == pytest.approx(precision)
    assert shown["metrics"]["recall"] == pytest.approx(recall)
    tuned = as_json(
        capsys, "thresholds", "tune", "pumps", "--labels", str(export), "--objective", "f1", *db
    )
    assert isinstance(tuned, dict)
    assert tuned["labelled_records"] == int(known.sum())
    # scikit-learn's -1 / 1 is refused with what to write; a file of ids and labels, which is
    # read as an export of its own (another content hash), says so when nothing matches.
    signs = tmp_path / "signs.csv"
    data.assign(label=np.where(truth == 1, -1, 1)).to_csv(signs, index=False)
    tune = ("thresholds", "tune", "pumps", "--objective", "f1", *db)
    assert_user_error(
        cli(capsys, *tune, "--labels", str(signs)),
        f"line {int(np.flatnonzero(truth == 1)[0]) + 2}: label '-1' is not a label",
        "scikit-learn's predict gives, is ambiguous: write 1 for anomalies and 0",
    )
    ids = tmp_path / "ids.csv"
    pd.DataFrame({"pump_row": data.index, "label": truth}).to_csv(ids, index=False)
    assert_user_error(
        cli(capsys, *tune, "--labels", str(ids)),
        "none of the labels",
        "is read as the scored export itself, its rows keyed by its content hash",
    )


def test_after_a_rollback_policies_previews_and_the_api_use_the_version_scored_last(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Version A scores, a newer version B scores, then A is rolled back to (scored again):
    # A's calibrated threshold is in force. 'set --quantile' computed from B's held-out
    # scores (the newest registered), so A flagged at a level calibrated on another network;
    # show, preview and the API's scoring spoke of B too.
    from anomaly_vae.config import PipelineConfig
    from tests.test_api import AUTH, TOKEN, start_server, stop

    model_a, dir_a = pump_model
    cfg = PipelineConfig.from_yaml(Path(__file__).parents[1] / "pipelines" / "pumps.yaml")
    cfg.training.epochs = 2
    model_b = AnomalyVAE(config=cfg, seed=5).fit(make_pump_data(1000, seed=2))
    dir_b = tmp_path / "pumps-b"
    model_b.save(dir_b)
    assert model_b.name == model_a.name == "pumps"
    assert model_a.model_hash_ is not None
    version_a = model_a.model_hash_[:12]
    db = ("--db", db_url)
    for model_dir in (dir_a, dir_b, dir_a):  # A, then B, then back to A
        ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert shown["warning"] == pytest.approx(model_a.threshold_)  # A's calibrated threshold
    assert shown["model_version"] == version_a
    assert shown["normal_false_alarm_rate"] == pytest.approx(0.005, abs=0.002)

    ok(capsys, "thresholds", "set", "pumps", "--quantile", "0.99", "--reason", "r", *db)
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert shown["warning"] == pytest.approx(np.quantile(model_a.calibration_, 0.99))
    assert shown["parameters"]["model_version"] == version_a
    preview = as_json(capsys, "thresholds", "preview", "pumps", *db)
    assert isinstance(preview, dict)
    assert preview["model_version"] == version_a
    # 'models show' and GET /models/{name} say which version that is.
    shown_models = ok(capsys, "models", "show", "pumps", *db)
    in_use = [line for line in shown_models.splitlines() if "in use (scored last)" in line]
    assert len(in_use) == 1
    assert f"version {version_a} " in in_use[0]

    server = start_server(db_url, TOKEN)
    try:
        assert server.client.get("/models/pumps").json()["in_use"] == version_a
        change = server.client.patch(
            "/models/pumps/thresholds",
            json={"warning": {"policy": "quantile", "quantile": 0.98}, "reason": "api"},
            headers=AUTH,
        )
        assert change.status_code == 201, change.text
        assert change.json()["warning"] == pytest.approx(np.quantile(model_a.calibration_, 0.98))
        records = json.loads(pd.read_csv(export).head(5).to_json(orient="records"))
        scored = server.client.post("/models/pumps/score", json={"records": records})
        assert scored.status_code == 200, scored.text
        assert scored.json()["model_version"] == version_a
    finally:
        stop(server)


def test_scoring_a_file_again_after_a_new_threshold_says_its_stored_flags_are_kept(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Rows are idempotent on their key: after 'tune --apply' (or 'set') the same file scored
    # again kept every stored is_anomaly / severity of the old threshold, while the summary
    # said "N flagged (threshold <new>)" and "0 score rows added (N already there)", nothing
    # about the stored flags disagreeing with the threshold it just named.
    model, model_dir = pump_model
    db = ("--db", db_url)
    score = ("score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    ok(capsys, *score)
    scores = model.score(pd.read_csv(export))["score"].to_numpy()
    higher = float(np.quantile(scores, 0.99))
    changed = int(((scores > model.threshold_) & (scores <= higher)).sum())
    assert changed > 0
    out = ok(capsys, "thresholds", "set", "pumps", "--value", str(higher), "--reason", "r", *db)
    assert "applies to records scored from now on" in out
    assert "stored scores keep their is_anomaly / severity" in out
    again = ok(capsys, *score)
    assert f"({len(scores)} already there, kept as first scored: {changed} of them keep " in again
    assert "thresholds preview pumps" in again
    # Scored a third time under the same threshold: nothing differs but the same rows.
    ok(capsys, "thresholds", "set", "pumps", "--value", str(model.threshold_), "--reason", "r", *db)
    third = ok(capsys, *score)
    assert f"({len(scores)} already there, kept as first scored)" in third
    # A critical level added under the same warning threshold: is_anomaly agrees with every
    # stored row, the severity of those now over the critical level does not.
    critical = float(np.quantile(scores[scores > model.threshold_], 0.5))
    escalated = int((scores > critical).sum())
    assert escalated > 0
    ok(capsys, "thresholds", "set", "pumps", "--critical", str(critical), "--reason", "r", *db)
    fourth = ok(capsys, *score)
    assert f"kept as first scored: {escalated} of them keep another is_anomaly / severity" in (
        fourth
    )


def test_a_preview_table_shows_the_proposed_and_the_current_alert_rule(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'preview --debounce 3/5' printed the proposed and current levels only: the one thing
    # the operator changed was nowhere in the table (the JSON had it).
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    out = ok(capsys, "thresholds", "preview", "pumps", "--debounce", "3/5", "--cooldown", "60", *db)
    assert "proposed: warning" in out
    assert "; alert rule 3 of 5 records, cool-down 60 s, resolved after 1 normal record" in out
    assert "; alert rule 1 of 1 record, resolved after 1 normal record\n" in out  # in force


@pytest.mark.parametrize("budget", ["nan", "inf", "-1"])
def test_an_alerts_per_day_budget_that_is_not_a_positive_number_is_one_line(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
    budget: str,
) -> None:
    # 'tune --alerts-per-day nan' ended in "ValueError: cannot convert float NaN to integer"
    # (inf in an OverflowError), a traceback instead of the error -1 got.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    tune = ("thresholds", "tune", "pumps", "--labels", str(export), "--alerts-per-day", budget)
    assert_user_error(cli(capsys, *tune, *db), "--alerts-per-day", "positive, finite")


def test_an_alert_rule_beyond_what_the_database_can_count_is_refused(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # '--debounce 1/99999999999999999999' (or '--resolve-after' as large) was put in force,
    # and every later 'score --db' with a flagged record ended in a traceback (OverflowError:
    # Python int too large to convert to SQLite INTEGER; PostgreSQL: bigint out of range): the
    # alert rule reads the entity's last max(n, resolve_after) records.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    set_ = ("thresholds", "set", "pumps", "--value", "30", "--reason", "r", *db)
    huge = "99999999999999999999"
    assert_user_error(cli(capsys, *set_, "--debounce", f"1/{huge}"), "n: Input should be less")
    assert_user_error(cli(capsys, *set_, "--resolve-after", huge), "resolve_after: Input")
    ok(capsys, *set_, "--debounce", "2/1000000", "--resolve-after", "1000000")
    export_again = export.parent / "again.csv"
    export_again.write_bytes(export.read_bytes() + b"\n")  # new keys: scored, not replayed
    ok(capsys, "score", str(export_again), "--model-dir", str(model_dir), *db, "--quiet")


def test_tune_refuses_an_empty_reason_and_apply_options_without_apply(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'tune --apply --reason ""' put the tuned threshold in force with the default reason
    # ('set --reason ""' is refused), and '--reason', '--by' or '--no-critical' without
    # --apply were ignored in silence: the operator believed something had been recorded.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    tune = ("thresholds", "tune", "pumps", "--labels", str(export), "--objective", "f1")
    assert_user_error(cli(capsys, *tune, "--apply", "--reason", "", *db), "needs a reason")
    assert_user_error(cli(capsys, *tune, "--reason", "r", *db), "--reason goes with --apply")
    assert_user_error(
        cli(capsys, *tune, "--by", "al", "--no-critical", *db), "--by and --no-critical go with"
    )
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert len(history) == 1  # nothing was applied
    applied = ok(capsys, *tune, "--apply", "--reason", "after review", "--by", "al", *db)
    assert "now in force as threshold v2" in applied


def test_rollback_puts_an_earlier_version_back_in_force_as_a_new_version(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # There was no way back after a bad 'tune --apply' but to retype every level and rule
    # setting of the version before it with 'set'.
    _, model_dir = pump_model
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    set_ = ("thresholds", "set", "pumps", "--value", "30", "--critical", "60", "--debounce", "2/3")
    ok(capsys, *set_, "--cooldown", "120", "--reason", "good one", *db)
    ok(
        capsys,
        "thresholds",
        "set",
        "pumps",
        "--value",
        "1",
        "--no-critical",
        "--reason",
        "bad",
        *db,
    )
    out = ok(capsys, "thresholds", "rollback", "pumps", "--to", "2", "--reason", "undo", *db)
    assert "threshold v4 in force, the levels of v2 (value): warning 30, critical 60" in out
    assert "2 of 3 records, cool-down 120 s" in out
    shown = as_json(capsys, "thresholds", "show", "pumps", *db)
    assert isinstance(shown, dict)
    assert (shown["version"], shown["warning"], shown["critical"]) == (4, 30.0, 60.0)
    assert shown["parameters"]["rolled_back_to"] == 2
    assert shown["reason"] == "undo"
    rollback = ("thresholds", "rollback", "pumps", "--reason", "r")
    assert_user_error(cli(capsys, *rollback, "--to", "9", *db), "no threshold v9", "v1 to v4")
    # Nothing to change, not an error (a script's retry): no version is added.
    same = ok(capsys, *rollback, "--to", "4", *db)
    assert "unchanged, no new version: threshold v4 (value): warning 30" in same
    assert "the version in force already has them: it is the one in force" in same
    retried = ok(capsys, *rollback, "--to", "2", *db)
    assert "the version in force already has the settings of v2" in retried
    assert_user_error(
        cli(capsys, "thresholds", "rollback", "pumps", "--to", "1", "--reason", " ", *db),
        "needs a reason",
    )
    assert_user_error(
        cli(capsys, "thresholds", "rollback", "pumsp", "--to", "1", "--reason", "r", *db),
        "no model named 'pumsp'",
    )
    # Back to the calibrated v1: an operator's version now, not replaced by scoring again.
    ok(capsys, *rollback, "--to", "1", *db)
    ok(capsys, "score", str(export), "--model-dir", str(model_dir), *db, "--quiet")
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert [h["version"] for h in history] == [5, 4, 3, 2, 1]


def test_setting_the_threshold_in_force_again_adds_no_version(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'thresholds set' run twice (a deploy script, a retry) added a second, identical version.
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(pump_model[1]), *db, "--quiet")
    set_ = ("thresholds", "set", "pumps", "--quantile", "0.99", "--debounce", "2/3", *db)
    first = ok(capsys, *set_, "--reason", "after incident 42")
    assert "threshold v2 in force (quantile)" in first
    again = ok(capsys, *set_, "--reason", "after incident 42")
    assert "pumps: unchanged, no new version: threshold v2 (quantile): warning" in again
    assert "the version in force already has these settings" in again
    assert "it applies to records scored from now on" not in again
    # What is given is compared with what is in force, not with the command line before.
    assert "unchanged" in ok(
        capsys, "thresholds", "set", "pumps", "--cooldown", "0", *db, "--reason", "r"
    )
    history = as_json(capsys, "thresholds", "history", "pumps", *db)
    assert isinstance(history, list)
    assert [h["version"] for h in history] == [2, 1]
    assert "threshold v3 in force" in ok(capsys, *set_, "--cooldown", "5m", "--reason", "r")


def test_threshold_history_as_csv_can_escape_formulas(
    db_url: str,
    export: Path,
    pump_model: tuple[AnomalyVAE, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A threshold's reason and author are free text from whoever sets one (over the API: any
    # holder of the token); 'thresholds history --format csv' wrote them as they came, a
    # formula to a spreadsheet, with no --escape-formulas as 'alerts list' and the other
    # listings of such text have.
    db = ("--db", db_url)
    ok(capsys, "score", str(export), "--model-dir", str(pump_model[1]), *db, "--quiet")
    reason, by = '=HYPERLINK("http://x","y")', "@SUM(A1)"
    ok(
        capsys,
        "thresholds",
        "set",
        "pumps",
        "--quantile",
        "0.99",
        "--reason",
        reason,
        "--by",
        by,
        *db,
    )
    args = ("thresholds", "history", "pumps", *db, "--format", "csv")
    plain = list(csv.DictReader(io.StringIO(ok(capsys, *args))))
    assert (plain[0]["reason"], plain[0]["created_by"]) == (reason, by)
    escaped = list(csv.DictReader(io.StringIO(ok(capsys, *args, "--escape-formulas"))))
    assert (escaped[0]["reason"], escaped[0]["created_by"]) == ("'" + reason, "'" + by)
    assert escaped[0]["warning"] == plain[0]["warning"]
