"""The detection benchmark's footing: every method's score says "higher = more anomalous", every
method gets the same threshold rule, and the result files are well formed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import detection, train_speed

RESULTS = Path(detection.__file__).resolve().parent / "results"


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlated 6-column normal rows; anomalies break the correlation by 6 to 9 sigma."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(2, 6))

    def normal(n: int) -> np.ndarray:
        return rng.normal(size=(n, 2)) @ mix + 0.1 * rng.normal(size=(n, 6))

    x_train = normal(400)
    anomalies = normal(20)
    anomalies[:, :3] += rng.choice([-1.0, 1.0], size=(20, 3)) * rng.uniform(6, 9, size=(20, 3))
    x_test = np.concatenate([normal(200), anomalies])
    y_test = np.concatenate([np.zeros(200, dtype=np.int64), np.ones(20, dtype=np.int64)])
    return x_train, x_test, y_test


def _methods() -> list[str]:
    return [m for m in detection.DETECTORS if m != "pyod-vae" or detection.pyod_available()]


@pytest.mark.parametrize("method", _methods())
def test_every_method_scores_anomalies_higher(method: str) -> None:
    x_train, x_test, y_test = _data()
    fitted = detection.DETECTORS[method](x_train, 0)
    scores = fitted.score(x_test)
    assert scores.shape == (len(x_test),)
    assert np.all(np.isfinite(scores))
    assert np.all(np.isfinite(fitted.train_scores))
    assert len(fitted.train_scores) == len(x_train)
    # Higher = more anomalous: the obvious anomalies rank on top (a flipped sign gives ~0).
    assert roc_auc_score(y_test, scores) > 0.9
    assert np.median(scores[y_test == 1]) > np.quantile(scores[y_test == 0], 0.9)
    # The common threshold rule (a quantile of the training scores) keeps false alarms near the
    # quantile's promise and catches obvious anomalies, for every method alike (IForest's score
    # saturates far from the data, so it catches the fewest at this quantile).
    metrics = detection.evaluate(fitted, detection.Split(x_train, x_test, y_test))
    assert metrics["far"] <= 10.0
    assert metrics["recall"] >= 25.0


def test_split_follows_the_protocol() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = (rng.uniform(size=500) < 0.1).astype(np.int64)
    plain = detection.make_split(x, y, 0, "plain")
    n_normal = int((y == 0).sum())
    assert len(plain.x_train) == n_normal // 2
    assert int(plain.y_test.sum()) == int(y.sum())  # every anomaly tests
    assert np.allclose(plain.x_train.mean(axis=0), 0.0, atol=1e-9)  # scaled on the train half
    resampled = detection.make_split(x, y, 0, "resampled")
    assert len(resampled.x_train) + len(resampled.x_test) == detection.SMALL_ROWS
    again = detection.make_split(x, y, 0, "resampled")
    assert np.array_equal(again.x_test, resampled.x_test)  # same seed, same split


def _tiny_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    for name, rows in (("thyroid", 1200), ("ionosphere", 300)):
        x = rng.normal(size=(rows, 4))
        y = (rng.uniform(size=rows) < 0.1).astype(np.int64)
        x[y == 1] += 4.0
        np.savez(tmp_path / detection.DATASETS[name], X=x, y=y)
    monkeypatch.setitem(detection.DETECTORS, "anomaly-vae", detection.fit_knn)  # speed
    out = tmp_path / "out"
    detection.main(
        [
            "--datasets",
            "thyroid,ionosphere",
            "--seeds",
            "0,1",
            "--methods",
            "anomaly-vae,iforest,knn",
            "--data",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    return json.loads((out / "detection.json").read_text())


def test_detection_result_is_well_formed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _tiny_result(tmp_path, monkeypatch)
    detection.check_result(result)
    assert result["methods"] == ["anomaly-vae", "iforest", "knn"]
    # Only the small set differs between the protocols.
    assert result["protocols"]["plain"]["thyroid"] == result["protocols"]["resampled"]["thyroid"]
    assert result["protocols"]["resampled"]["ionosphere"]["rows"] == 300
    broken = json.loads(json.dumps(result))
    del broken["protocols"]["plain"]["thyroid"]["methods"]["knn"]
    with pytest.raises(ValueError, match="no results for 'knn'"):
        detection.check_result(broken)
    broken = json.loads(json.dumps(result))
    broken["protocols"]["plain"]["ionosphere"]["methods"]["iforest"]["roc_auc_mean"] = 140.0
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        detection.check_result(broken)


def test_unknown_methods_seeds_or_merge_file_stop_before_any_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # '--methods knn,bogus' fitted anomaly-vae and kNN first, then died with KeyError: 'bogus';
    # '--seeds a' and a missing '--merge' file were tracebacks too.
    fitted: list[str] = []
    monkeypatch.setitem(detection.DETECTORS, "anomaly-vae", lambda *a: fitted.append("vae"))
    base = ["--datasets", "thyroid", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    for extra, needle in (
        (["--methods", "knn,bogus"], "unknown method(s) ['bogus']: choose from anomaly-vae"),
        (["--seeds", "a"], "--seeds 'a': give whole numbers"),
        (["--merge", str(tmp_path / "old.json")], "old.json: no such file"),
    ):
        with pytest.raises(SystemExit) as stopped:
            detection.main(base + extra)
        assert stopped.value.code == 2
        assert needle in capsys.readouterr().err
    assert fitted == []


def test_missing_data_files_are_one_line_before_any_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A clone without ../shared/data died with a FileNotFoundError traceback.
    fitted: list[str] = []
    monkeypatch.setitem(detection.DETECTORS, "anomaly-vae", lambda *a: fitted.append("vae"))
    with pytest.raises(SystemExit) as stopped:
        detection.main(["--quick", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "no 38_thyroid.npz, 6_cardio.npz, 18_Ionosphere.npz: give --data" in err
    assert "Traceback" not in err
    assert fitted == []


def test_a_merge_file_that_cannot_be_merged_stops_before_any_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # '--merge detection.json --seeds 0' (or a set the file lacks) ran every fit, then stopped
    # with the mismatch: the whole run (~35 min at full size) was lost.
    fitted: list[str] = []
    monkeypatch.setitem(detection.DETECTORS, "anomaly-vae", lambda *a: fitted.append("vae"))
    old = tmp_path / "old.json"
    old.write_text((RESULTS / "detection.json").read_text())
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--merge", str(old)]
    with pytest.raises(SystemExit) as stopped:
        detection.main([*base, "--datasets", "thyroid", "--seeds", "0"])
    assert stopped.value.code == 2
    assert "has seeds [0, 1, 2, 3, 4], not [0]" in capsys.readouterr().err
    lacking = json.loads(old.read_text())
    del lacking["protocols"]["plain"]["cardio"]
    old.write_text(json.dumps(lacking))
    with pytest.raises(SystemExit) as stopped:
        detection.main([*base, "--datasets", "thyroid,cardio"])
    assert stopped.value.code == 2
    assert "old.json: the previous result lacks plain/cardio" in capsys.readouterr().err
    old.write_text("{not json")
    with pytest.raises(SystemExit) as stopped:
        detection.main([*base, "--datasets", "thyroid"])
    assert "old.json: not a result file" in capsys.readouterr().err
    assert fitted == []


@pytest.mark.parametrize(
    ("stem", "check"),
    [
        ("detection", detection.check_result),
        ("detection_quick", detection.check_result),
        ("train_speed", train_speed.check_result),
        ("train_speed_quick", train_speed.check_result),
    ],
)
def test_committed_results_are_well_formed(stem: str, check: Any) -> None:
    path = RESULTS / f"{stem}.json"
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    check(json.loads(path.read_text()))


def test_check_names_the_file_and_the_fault_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # '--check' on a missing, non-JSON or incomplete file ended in a traceback.
    missing = tmp_path / "missing.json"
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    partial = tmp_path / "partial.json"
    partial.write_text('{"date": "today"}')
    cases = (
        (missing, "cannot read it"),
        (garbled, "not a JSON result file"),
        (listed, "holds a JSON object, not a list"),
        (partial, "missing key 'machine'"),
    )
    for main in (detection.main, train_speed.main):
        for path, what in cases:
            with pytest.raises(SystemExit) as stop:
                main(["--check", str(path)])
            message = str(stop.value.code)
            assert message.startswith(f"error: {path}: "), message
            assert what in message, message
            assert "\n" not in message
    detection.main(["--check", str(Path(detection.__file__).parent / "results" / "detection.json")])
    assert "well formed" in capsys.readouterr().out


def test_markdown_goals_line_rounds_the_average_as_the_table_does() -> None:
    # The committed `plain` average is 90.551: the table said 90.6 and the goals line 90.5 (the
    # goals' average rounded to 2 decimals first, 90.55, then to 1).
    result = json.loads((RESULTS / "detection.json").read_text())
    text = detection.markdown(result, detection.published_table())
    assert "| **average** | 90.6 |" in text
    assert "Goals (`plain`): anomaly-vae average 90.6; best peer run here knn 90.2;" in text
