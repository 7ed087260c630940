"""The benchmark suite's result check: it accepts the committed results and names what is wrong
with a malformed one (CI relies on it to fail a benchmark run that wrote nonsense)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.suite import RESULTS, SUITE, check_folder


def test_committed_results_are_well_formed() -> None:
    assert check_folder(RESULTS, SUITE, quick=False) == []


def test_malformed_results_are_named(tmp_path: Path) -> None:
    for bench in SUITE:
        source = json.loads(bench.path(RESULTS, quick=False).read_text())
        bench.path(tmp_path, quick=False).write_text(json.dumps(source))
    assert check_folder(tmp_path, SUITE, quick=False) == []

    speed = json.loads((tmp_path / "speed.json").read_text())
    speed["csv_scoring"][0]["ratio"] = float("nan")
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    (tmp_path / "stream.json").write_text("{not json")
    (tmp_path / "db_write.json").unlink()
    skab = json.loads((tmp_path / "skab.json").read_text())
    skab["policies"] = {}
    (tmp_path / "skab.json").write_text(json.dumps(skab))

    problems = check_folder(tmp_path, SUITE, quick=False)
    assert any(p.startswith("speed.csv_scoring[0].ratio") for p in problems), problems
    assert any(p.startswith("stream:") and "not JSON" in p for p in problems), problems
    assert any(p.startswith("db_write: no result file") for p in problems), problems
    assert any(p.startswith("skab:") for p in problems), problems
    assert len(problems) == 4, problems


def test_skab_persistence_rules_match_their_definitions() -> None:
    """Causal: a row is flagged when the windows ending at it and at the m - 1 rows before it
    all crossed; late: when the windows ending at it and at the m - 1 rows after it all
    crossed (the published Conv-AE notebook's rule, written out as its loop)."""
    import numpy as np

    from benchmarks.skab import decision_rules

    window = 6
    m = window - 1
    rng = np.random.default_rng(3)
    crossed = (rng.random(400) < 0.8).astype(np.int64)
    crossed[100:160] = 1
    rules = decision_rules(window)
    causal = rules[f"persistence {m} (causal)"](crossed)
    late = rules[f"persistence {m}, decided {m - 1} rows late (Conv-AE's rule)"](crossed)
    n = len(crossed)
    want_causal = [int(i >= m - 1 and crossed[i - m + 1 : i + 1].all()) for i in range(n)]
    want_late = [int(i + m <= n and crossed[i : i + m].all()) for i in range(n)]
    assert causal.tolist() == want_causal
    assert late.tolist() == want_late
    assert late[100:156].all()
    assert causal[104:160].all()


def test_skab_onset_rule_flags_whole_runs_of_m_crossings() -> None:
    """The persistence alert dated to its onset: with k = n = m and resolve after 1, a row is
    flagged exactly when it lies in a run of at least m consecutive crossings."""
    import numpy as np

    from anomaly_vae.thresholds import AlertRule
    from benchmarks.skab import in_alert_from_onset

    m = 5
    rng = np.random.default_rng(4)
    crossed = (rng.random(500) < 0.7).astype(np.int64)
    crossed[200:260] = 1
    got = in_alert_from_onset(crossed, AlertRule(k=m, n=m, resolve_after=1))
    want = np.zeros_like(crossed)
    start = None
    for i, c in enumerate([*crossed.tolist(), 0]):
        if c and start is None:
            start = i
        elif not c and start is not None:
            if i - start >= m:
                want[start:i] = 1
            start = None
    assert got.tolist() == want.tolist()
    assert got[200:260].all()
    # A k-of-n rule: the alert starts at the first crossing of the n records that opened it.
    crossed = np.array([0, 0, 1, 0, 1, 1, 0, 0, 0, 0])
    got = in_alert_from_onset(crossed, AlertRule(k=3, n=4, resolve_after=2))
    assert got.tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]


def test_train_speed_like_for_like_ratio_per_row_counts_the_held_out_rows() -> None:
    from benchmarks.train_speed import markdown, ratios

    def run(seconds: float, rows_seen: int) -> dict[str, float | int]:
        return {
            "seconds": seconds,
            "roc_auc": 0.9,
            "epochs": 10,
            "batch_size": 32,
            "rows_seen": rows_seen,
        }

    runs = {
        "anomaly-vae defaults": run(4.0, 1_120_000),
        "plain PyTorch loop": run(4.0, 1_200_000),
        "anomaly-vae, PyOD's shape": run(40.0, 1_600_000),  # 80 % of the rows: 20 % held out
        "PyOD VAE defaults": run(120.0, 2_000_000),
    }
    r = ratios(runs)
    assert r["like_for_like_speedup_vs_pyod"] == 3.0
    assert r["goal_like_for_like_3x"]
    assert r["like_for_like_speedup_per_row_vs_pyod"] == 2.4
    assert not r["goal_like_for_like_3x_per_row"]
    result = {
        "rows": 200_000,
        "test_rows": 21_000,
        "runs": runs,
        "ratios": r,
        "date": "d",
        "machine": "m",
        "versions": "v",
    }
    assert "per row trained on: 2.4x" in markdown(result)


def test_skab_counts_every_row_as_the_published_notebooks_do(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Beside the protocol's test rows, every row of each file is decided by the same detector
    and rule and counted, the training rows too (SKAB's notebooks pass whole files to
    ``chp_score``): a false alarm among the training rows counts, and so do their true
    negatives."""
    import numpy as np
    import pandas as pd

    from benchmarks import skab

    rows = 600
    folder = tmp_path / "valve1"
    folder.mkdir()
    labels = np.zeros(rows, dtype=np.int64)
    labels[450:500] = 1
    for name in ("0", "1"):
        frame = pd.DataFrame(
            {
                "datetime": pd.date_range("2020-01-01", periods=rows, freq="s").astype(str),
                "a": np.arange(rows, dtype=np.float64),
                "anomaly": labels.astype(np.float64),
                "changepoint": 0.0,
            }
        )
        frame.to_csv(folder / f"{name}.csv", sep=";", index=False)

    def detector(train: pd.DataFrame, seed: int, quick: bool) -> skab.Fitted:
        def score_all(test: pd.DataFrame) -> np.ndarray:
            scores = np.zeros(len(train) + len(test))
            scores[100] = 1.0  # a false alarm among the training rows
            scores[len(train) :] = labels[len(train) :]
            return scores

        normal = np.random.default_rng(seed).uniform(0.0, 0.1, 200)
        return skab.Fitted(score_all=score_all, normal_scores=normal, train_rows=len(train))

    monkeypatch.setitem(skab.DETECTORS, "fake", detector)
    result = skab.run(tmp_path, "fake", quick=False, seed=0)
    test_only = result["policies"]["quantile 0.99"]
    every = result["every_row"]["quantile 0.99"]
    assert (test_only["tp"], test_only["fp"], test_only["fn"], test_only["tn"]) == (100, 0, 0, 300)
    assert (every["tp"], every["fp"], every["fn"], every["tn"]) == (100, 2, 0, 1098)
    assert every["FAR_pct"] == 100.0 * 2 / 1100


def test_skab_drift_margin_is_read_from_the_training_rows_alone(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The drift margin is the median over the files of how far a model fitted to a file's
    first 200 rows rises on its next 200 (largest error there over the 0.999 quantile of its
    training errors); the test rows are never scored for it, and the threshold is that margin
    times the full model's own 0.999 quantile."""
    import numpy as np
    import pandas as pd

    from benchmarks import skab

    rows = 600
    folder = tmp_path / "valve1"
    folder.mkdir()
    labels = np.zeros(rows, dtype=np.int64)
    labels[450:560] = 1
    rises = {"0": 2.0, "1": 3.0, "2": 10.0}  # the later training rows' error / the training q
    for name, rise in rises.items():
        frame = pd.DataFrame(
            {
                "datetime": pd.date_range("2020-01-01", periods=rows, freq="s").astype(str),
                "a": np.full(rows, rise),
                "anomaly": labels.astype(np.float64),
                "changepoint": 0.0,
            }
        )
        frame.to_csv(folder / f"{name}.csv", sep=";", index=False)
    seen: list[int] = []

    def detector(train: pd.DataFrame, seed: int, quick: bool) -> skab.Fitted:
        rise = float(train["a"].iloc[0])

        def score_all(test: pd.DataFrame) -> np.ndarray:
            seen.append(len(train) + len(test))
            scores = np.ones(len(train) + len(test))
            scores[len(train) :] = rise  # the rows after the training rows drift up
            scores[450:560] = 100.0  # the labelled anomaly (only in the full file's rows)
            return scores

        errors = np.ones(50)
        return skab.Fitted(
            score_all=score_all,
            normal_scores=np.random.default_rng(seed).uniform(0.5, 1.0, 200),
            window=3,
            training_errors=errors,
            train_rows=len(train),
        )

    monkeypatch.setitem(skab.DETECTORS, "fake-drift", detector)
    result = skab.run(tmp_path, "fake-drift", quick=False, seed=0)
    assert result["drift_ratios"] == [2.0, 3.0, 10.0]
    assert result["drift_margin"] == 3.0
    # The calibration models score the 400 training rows only; the full models every row.
    assert seen[:3] == [400, 400, 400]
    assert seen[3:] == [rows] * 3
    onset = next(k for k in result["every_row"] if k.startswith("drift margin (3.00)"))
    # File 2's drift (10 > 3 x 1) and the three anomalies cross; the other files' drift not.
    counts = result["every_row"][onset]
    assert counts["tp"] == 3 * 110
    assert counts["fn"] == 0
    assert counts["fp"] == rows - 400 - 110


def test_no_quick_mode_writes_over_a_full_result() -> None:
    # speed, db_write and stream --quick wrote speed.json, db_write.json and stream.json: run
    # as the READMEs show them (default --out, benchmarks/results/), the quick numbers replaced
    # the committed full-size results.
    for bench in SUITE:
        assert bench.path(RESULTS, quick=True) != bench.path(RESULTS, quick=False), bench.name


def test_speed_and_db_write_quick_runs_write_their_quick_files(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from benchmarks import db_write, speed

    row = {"case": "c", "rows_per_s": 1.0, "vs_plain_forward": 1.0}
    monkeypatch.setattr(speed, "fitted_model", lambda device: None)
    monkeypatch.setattr(speed, "model_scoring", lambda model, rows, repeat: [row])
    monkeypatch.setattr(speed, "csv_scoring", lambda model, sizes, workdir, device: [])
    speed.main(["--quick", "--out", str(tmp_path)])
    monkeypatch.setattr(db_write, "measure", lambda url, rows, repeat: {"methods": {}})
    db_write.main(["--quick", "--postgres", "", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "db_write_quick.json",
        "speed_quick.json",
        "speed_quick.md",
    ]


def test_skab_calibrate_score_terms_and_prior_mixture_name_missing_data_in_one_line(
    tmp_path: Path, capsys: Any
) -> None:
    # A clone without ../shared/data: both died with a FileNotFoundError traceback.
    import pytest

    from benchmarks import prior_mixture, score_terms, skab_calibrate

    for main, args, needle in (
        (skab_calibrate.main, ["--detector", "vae-rowwise"], "anomaly-free.csv"),
        (score_terms.main, ["--datasets", "cardio"], "no 6_cardio.npz: give --data"),
        (prior_mixture.main, ["--datasets", "cardio"], "no 6_cardio.npz: give --data"),
        # A name the suite does not know: said before any file is looked for (a KeyError).
        (score_terms.main, ["--datasets", "cardio,nope"], "unknown data set(s) ['nope']"),
        (prior_mixture.main, ["--datasets", "nope"], "unknown data set(s) ['nope']"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main([*args, "--data", str(tmp_path)])
        assert stopped.value.code == 2
        assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_stream_benchmark_counts_the_postgresql_server_only_for_postgresql() -> None:
    # A SQLite run counted every 'postgres' process on the machine (another session's work on
    # a shared server) as its database CPU: "0.3 µs in the PostgreSQL server" of a SQLite run.
    import itertools

    from benchmarks.stream import CpuClock

    ticks = itertools.count(1)

    class BusyServer(CpuClock):
        """Every process a 'postgres' one, each read later than the last: a busy server."""

        @staticmethod
        def _seconds(pid: int | str) -> tuple[str, float]:
            return "postgres", float(next(ticks))

    sqlite_run = BusyServer(None)
    sqlite_run.start()
    assert sqlite_run.stop(1_000)["database_cpu_us_per_msg"] == 0.0
    postgres_run = BusyServer(None, database=True)
    postgres_run.start()
    assert postgres_run.stop(1_000)["database_cpu_us_per_msg"] > 0.0


def test_the_stream_benchmark_takes_the_steady_rate_while_every_process_writes() -> None:
    """Two processes: the second writes its first batch 1 s after the first, and the first
    runs out of messages 1 s before the second: the steady rate counts only what both wrote
    between 1 s and 5 s; the whole-run rate counts every row after the first batch over 6 s."""
    from benchmarks.stream import multi_process_rates

    t0 = 1_795_000_000.0
    writes = [(1, t0 + s, 1000) for s in range(6)] + [(2, t0 + s, 500) for s in range(1, 7)]
    writes = [(run, pd.Timestamp(at, unit="s", tz="UTC"), rows) for run, at, rows in writes]
    rates = multi_process_rates(writes, processes=2)
    assert rates["messages"] == 9000
    assert rates["rate"] == (9000 - 1000) / 6
    # Writes inside (1 s, 5 s]: run 1 at 2, 3, 4, 5 s and run 2 at 2, 3, 4, 5 s.
    assert rates["steady_seconds"] == 4
    assert rates["steady_rate"] == (4 * 1000 + 4 * 500) / 4
    # One process of the two never wrote: no steady rate.
    assert multi_process_rates(writes[:6], processes=2)["steady_rate"] is None


def test_the_stream_benchmark_reports_the_median_of_its_rounds() -> None:
    # One N-process run compared with two 3-second bare reads swung from 75 % to 81 % between
    # runs of the same code: the rounds are repeated and the median one reported, the lower
    # middle one of an even count (never the best).
    from benchmarks.stream import _rounds_text, summarise_rounds

    rounds = [{"steady_ratio": v, "id": i} for i, v in enumerate((0.9, 0.7, 0.8))]
    assert summarise_rounds(rounds)["id"] == 2
    assert summarise_rounds(rounds[:2])["id"] == 1
    assert summarise_rounds(rounds[:1])["id"] == 0
    assert _rounds_text(rounds) == "; rounds 90%, 70%, 80%"
    assert _rounds_text(rounds[:1]) == ""
