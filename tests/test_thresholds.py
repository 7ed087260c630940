"""Threshold policies on known distributions, and alert rules on hand-made sequences."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.errors import ConfigError
from anomaly_vae.thresholds import (
    AlertRule,
    AlertTracker,
    Thresholds,
    confusion_at,
    contamination_threshold,
    evt_threshold,
    false_alarm_threshold,
    preview,
    quantile_threshold,
    tune_from_labels,
)


def test_quantile_and_false_alarm_rate_agree_on_a_uniform_sample() -> None:
    scores = np.linspace(0, 100, 100_001)
    assert quantile_threshold(scores, 0.99) == pytest.approx(99.0)
    assert false_alarm_threshold(scores, 0.01) == pytest.approx(99.0)
    assert np.mean(scores > false_alarm_threshold(scores, 0.05)) == pytest.approx(0.05, abs=1e-4)


def test_contamination_flags_that_share_of_the_data() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20_000)
    t = contamination_threshold(scores, 0.02)
    assert np.mean(scores > t) == pytest.approx(0.02, abs=1e-3)


def test_evt_threshold_on_exponential_scores_lands_near_the_analytic_quantile() -> None:
    rng = np.random.default_rng(1)
    scores = rng.exponential(1.0, 200_000)
    risk = 1e-5  # beyond what the empirical quantile of 200k points can resolve well
    fit = evt_threshold(scores, risk)
    analytic = -math.log(risk)  # P(X > z) = exp(-z) for Exp(1)
    assert fit.threshold == pytest.approx(analytic, rel=0.05)
    assert abs(fit.shape) < 0.05  # the exponential tail has shape 0
    assert fit.scale == pytest.approx(1.0, rel=0.1)


def test_evt_on_a_heavy_tail_estimates_a_positive_shape() -> None:
    rng = np.random.default_rng(2)
    scores = rng.pareto(3.0, 200_000)  # Lomax: GPD tail with shape 1/3
    fit = evt_threshold(scores, 1e-4)
    assert fit.shape == pytest.approx(1 / 3, abs=0.08)
    analytic = (1e-4) ** (-1 / 3.0) - 1.0  # P(X > z) = (1 + z) ** -3
    assert fit.threshold == pytest.approx(analytic, rel=0.1)


def test_policy_inputs_are_checked() -> None:
    with pytest.raises(ConfigError, match="quantile"):
        quantile_threshold([1.0, 2.0], 1.5)
    with pytest.raises(ConfigError, match="no finite scores"):
        quantile_threshold([float("nan")], 0.5)
    with pytest.raises(ConfigError, match="only 0 scores above"):
        evt_threshold(np.ones(100), 1e-4)


def _brute_force_best_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.r_[np.unique(scores), -np.inf]:
        best = max(best, confusion_at(scores, labels, t)["f1"])
    return best


def test_tuned_f1_threshold_is_the_best_one() -> None:
    rng = np.random.default_rng(3)
    labels = (rng.random(2000) < 0.1).astype(int)
    scores = rng.normal(size=2000) + 1.5 * labels
    scores = np.round(scores, 1)  # ties on purpose
    result = tune_from_labels(scores, labels, objective="f1")
    assert result.f1 == pytest.approx(_brute_force_best_f1(scores, labels))
    assert confusion_at(scores, labels, result.threshold)["f1"] == pytest.approx(result.f1)


def test_tuned_recall_under_false_alarm_cap() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(5000) < 0.05).astype(int)
    scores = rng.normal(size=5000) + 2.0 * labels
    result = tune_from_labels(
        scores, labels, objective="max_false_alarm_rate", max_false_alarm_rate=0.01
    )
    check = confusion_at(scores, labels, result.threshold)
    assert check["false_alarm_rate"] <= 0.01
    # Any lower threshold (one more record flagged) breaks the cap or gains no recall.
    lower = np.max(scores[scores <= result.threshold]) - 1e-9
    worse = confusion_at(scores, labels, lower)
    assert worse["false_alarm_rate"] > 0.01 or worse["recall"] <= check["recall"]


def test_tuned_alert_budget_per_day() -> None:
    times = pd.date_range("2026-11-01", periods=10 * 24, freq="h", tz="UTC")  # 10 days
    scores = np.arange(len(times), dtype=float)
    result = tune_from_labels(
        scores,
        np.zeros(len(times), dtype=int),
        objective="alerts_per_day",
        alerts_per_day=2,
        timestamps=times,
    )
    assert np.sum(scores > result.threshold) <= 2 * (len(times) - 1) / 24
    assert np.sum(scores > result.threshold) >= 19


def test_tuning_reads_labels_as_the_rest_of_the_package_does() -> None:
    # scikit-learn's -1 / 1 labels were read as "1 = anomaly": every normal record became the
    # anomaly to find and the result claimed a perfect F1 at a threshold below every score; a
    # NaN label (no label) became a huge negative integer, counted as a normal record.
    scores = np.r_[np.linspace(0.0, 1.0, 90), np.linspace(2.0, 3.0, 10)]
    labels = np.r_[np.zeros(90), np.ones(10)]
    best = tune_from_labels(scores, labels)
    assert 1.0 < best.threshold < 2.0
    with pytest.raises(ConfigError, match=r"negative value -1 .*scikit-learn"):
        tune_from_labels(scores, np.where(labels == 1, -1, 1))
    words = tune_from_labels(scores, np.where(labels == 1, "anomaly", "normal"))
    assert words.threshold == best.threshold
    unlabelled = labels.copy()
    unlabelled[::7] = np.nan  # left out, not taken for normal records
    partly = tune_from_labels(scores, unlabelled)
    assert partly.f1 == 1.0
    assert 1.0 < partly.threshold < 2.0


def test_preview_and_confusion_refuse_minus_one_labels() -> None:
    # -1 (scikit-learn's outlier) counted as a normal record and 1 (its inlier) as the anomaly:
    # precision and recall of the opposite question, without a word.
    scores = np.r_[np.zeros(8), np.full(2, 5.0)]
    labels = np.r_[np.zeros(8), np.ones(2)]
    assert confusion_at(scores, labels, 1.0)["f1"] == 1.0
    with pytest.raises(ConfigError, match=r"negative value -1"):
        confusion_at(scores, np.where(labels == 1, -1, 1), 1.0)
    with pytest.raises(ConfigError, match=r"negative value -1"):
        preview(pd.DataFrame({"score": scores}), Thresholds(1.0), labels=labels * 2 - 1)


def test_severity_levels() -> None:
    t = Thresholds(warning=1.0, critical=5.0)
    assert t.severity(np.array([0.5, 1.0, 1.5, 5.0, 9.0])).tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(ConfigError, match="critical"):
        Thresholds(warning=2.0, critical=1.0)


def test_alert_rule_debounce_cooldown_and_resolve() -> None:
    rule = AlertRule(k=2, n=3, cooldown_s=60, resolve_after=2)
    tracker = AlertTracker(rule)
    t0 = pd.Timestamp("2026-11-01T00:00:00Z")
    seq = [1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    times = [t0 + pd.Timedelta(seconds=10 * i) for i in range(len(seq))]
    events = tracker.update(["p1"] * len(seq), np.array(seq), times)
    kinds = [(e.kind, e.index) for e in events]
    # one crossing alone does not open (k=2 of n=3); two of the last three do, at index 4;
    # two normal records resolve it at index 7; the crossings at 9-10 fall in the cool-down
    # (60 s after the alert opened at 40 s ends at 100 s: index 10 is at 100 s, not before)
    assert kinds == [("open", 4), ("resolve", 7), ("open", 10)]


def test_a_backfill_older_than_the_last_alert_is_not_in_its_cool_down() -> None:
    # Records older than the entity's last alert (a backfill of last week's export after
    # today's stream) got a negative time since that alert, always "less than cooldown_s":
    # with any cool-down the whole backfill opened no alert at all.
    rule = AlertRule(k=1, n=1, cooldown_s=60, resolve_after=1)
    tracker = AlertTracker(rule)
    t0 = pd.Timestamp("2026-11-20T00:00:00Z")
    tracker.seed("p1", last_opened=t0.timestamp())
    day_before = [t0 - pd.Timedelta(days=1) + pd.Timedelta(seconds=10 * i) for i in range(3)]
    events = tracker.update(["p1"] * 3, np.array([1, 0, 0]), day_before)
    assert [(e.kind, e.index) for e in events] == [("open", 0), ("resolve", 1)]
    # ... while a late record within the cool-down of an alert, on either side, opens none.
    tracker.seed("p2", last_opened=t0.timestamp())
    late = [t0 - pd.Timedelta(seconds=30), t0 + pd.Timedelta(seconds=30)]
    assert tracker.update(["p2", "p2"], np.array([1, 1]), late) == []


def test_alerts_are_per_entity_and_escalate() -> None:
    tracker = AlertTracker(AlertRule())
    events = tracker.update(["a", "b", "a", "b"], np.array([1, 0, 2, 0]))
    assert [(e.kind, e.entity, e.severity) for e in events] == [
        ("open", "a", 1),
        ("escalate", "a", 2),
    ]
    assert tracker.is_open("a")
    assert not tracker.is_open("b")


def test_preview_counts_alerts_per_day_and_entity_and_scores_labels() -> None:
    frame = pd.DataFrame(
        {
            "score": [0.1, 5.0, 0.2, 6.0, 0.1, 7.0],
            "entity": ["a", "a", "a", "b", "b", "a"],
            "time": pd.to_datetime(
                [
                    "2026-11-01T01:00Z",
                    "2026-11-01T02:00Z",
                    "2026-11-01T03:00Z",
                    "2026-11-02T01:00Z",
                    "2026-11-02T02:00Z",
                    "2026-11-02T03:00Z",
                ]
            ),
        }
    )
    labels = np.array([0, 1, 0, 1, 0, 0])
    result = preview(frame, Thresholds(warning=1.0), AlertRule(), labels=labels)
    assert result.flagged == 3
    assert result.alerts == 3
    assert result.alerts_per_day.to_dict() == {"2026-11-01": 1, "2026-11-02": 2}
    assert result.alerts_per_entity.to_dict() == {"a": 2, "b": 1}
    assert result.metrics is not None
    assert result.metrics["precision"] == pytest.approx(2 / 3)
    assert result.metrics["recall"] == pytest.approx(1.0)


def test_skipping_quiet_records_changes_no_decision() -> None:
    """The tracker skips normal records far from any crossing: same events, same states."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        rule = AlertRule(
            k=int(rng.integers(1, 4)),
            n=4,
            cooldown_s=float(rng.choice([0, 30])),
            resolve_after=int(rng.integers(1, 6)),
        )
        n = int(rng.integers(50, 400))
        entities = [None if e == "-" else e for e in rng.choice(["a", "b", "c", "-"], size=n)]
        crossing = rng.random(n) < rng.choice([0.01, 0.05, 0.3])
        levels = crossing.astype(int) * rng.choice([1, 2], size=n)
        times = list(pd.date_range("2026-11-01", periods=n, freq="s", tz="UTC"))
        fast, slow = AlertTracker(rule), AlertTracker(rule)
        slow._worth_visiting = lambda entities, levels: list(range(len(levels)))  # type: ignore[method-assign]
        got = [
            (e.kind, e.entity, e.index, e.severity) for e in fast.update(entities, levels, times)
        ]
        want = [
            (e.kind, e.entity, e.index, e.severity) for e in slow.update(entities, levels, times)
        ]
        assert got == want
        for key, state in slow.states.items():
            other = fast.states[key]
            assert list(other.recent) == list(state.recent)
            assert other.open_severity == state.open_severity
            assert other.normal_streak == state.normal_streak
            assert other.last_opened == state.last_opened


def test_label_times_are_read_as_stored_event_times_are(tmp_path: Path) -> None:
    # An export with epoch-second timestamps is stored with those event times, but labels
    # written the same way were refused ("time '1797724800' is not a date or time"): label
    # times are read by the one reading of a time that CSV jobs and Kafka share.
    from anomaly_vae.errors import InputFileError
    from anomaly_vae.storage.tuning import read_labels
    from anomaly_vae.windows import event_timestamps

    when = pd.Timestamp("2026-12-20T08:00:00Z")
    seconds = int(when.timestamp())
    per_record = tmp_path / "per_record.csv"
    per_record.write_text(
        f"entity,time,label\nP1,{seconds},1\nP2,{seconds * 1000},0\nP3,2026-12-20T08:00:00Z,1\n"
    )
    labels = read_labels(per_record)
    assert labels.kind == "entity_time"
    assert list(labels.frame["time"]) == [when] * 3
    stored = pd.DataFrame(
        {
            "source_key": ["a", "b", "c", "d"],
            "entity": ["P1", "P2", "P3", "P1"],
            "time": event_timestamps(pd.Series([str(seconds)] * 3 + [str(seconds + 10)])),
        }
    )
    assert np.array_equal(labels.for_scores(stored), [1.0, 0.0, 1.0, np.nan], equal_nan=True)

    windows = tmp_path / "windows.csv"
    windows.write_text(f"entity,start,end\nP1,{seconds},{seconds + 5}\n")
    assert list(labels_of(read_labels(windows).for_scores(stored))) == [1.0, 0.0, 0.0, 0.0]
    empty = tmp_path / "empty_start.csv"
    empty.write_text(f"entity,start,end\nP1,,{seconds}\n")
    with pytest.raises(InputFileError, match="line 2: start '' is not a date or time"):
        read_labels(empty)


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_a_labels_file_with_a_byte_order_mark_is_read_whatever_the_encoding_given(
    tmp_path: Path, encoding: str
) -> None:
    # Excel's "CSV UTF-8" starts with the byte order mark: with --encoding cp1252 (as the
    # export was scored with) the header was read without it and the rows with it as
    # 'ï»¿entity', and 'thresholds tune' ended in a KeyError traceback.
    from anomaly_vae.storage.tuning import read_labels

    path = tmp_path / "incidents.csv"
    path.write_bytes(b"\xef\xbb\xbfentity,start,end\nP\xc3\xbc1,1700000000,1700000060\n")
    labels = read_labels(path, encoding=encoding)
    assert labels.kind == "windows"
    assert list(labels.frame["entity"]) == ["Pü1"]


def test_a_labels_file_with_spaces_after_its_separators_is_read(tmp_path: Path) -> None:
    # "entity, start, end", as some tools write it: the header was read without the spaces
    # and the rows with them (' start'), and 'thresholds tune' ended in a KeyError traceback.
    from anomaly_vae.storage.tuning import read_labels

    path = tmp_path / "incidents.csv"
    path.write_text("entity, start, end\nP1, 1700000000, 1700000060\n")
    labels = read_labels(path)
    assert labels.kind == "windows"
    assert list(labels.frame["entity"]) == ["P1"]
    assert len(labels.frame["start"].dropna()) == 1


def test_a_cooldown_is_given_in_seconds_or_with_a_unit() -> None:
    # 'thresholds set --cooldown 1h' was "Invalid value for '--cooldown': Input should be a
    # valid number", where 'db prune --older-than' takes 30d and 12h.
    from anomaly_vae.cli.thresholds import _rule

    for given, seconds in (("300", 300.0), ("0.5", 0.5), ("5m", 300.0), ("1h", 3600.0)):
        assert _rule(None, None, given, None).cooldown_s == seconds
    assert _rule({"k": 2, "n": 3}, None, "2d", None).k == 2  # the rest of the rule kept
    with pytest.raises(ConfigError, match=r"--cooldown '1x' is not a duration: give seconds"):
        _rule(None, None, "1x", None)
    with pytest.raises(ConfigError, match="cooldown_s: Input should be greater than or equal"):
        _rule(None, None, "-5", None)


def labels_of(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def test_an_opening_names_the_first_crossing_among_the_records_that_opened_it() -> None:
    from anomaly_vae.thresholds import AlertRule, AlertTracker

    rule = AlertRule(k=3, n=5, resolve_after=2)
    tracker = AlertTracker(rule)
    # Crossings at 1, 3 and 4 (the 3rd of the last 5 at 4): the anomaly began at 1.
    events = tracker.update(["a"] * 6, np.array([0, 1, 0, 1, 1, 1]))
    assert [(e.kind, e.index, e.onset_index, e.onset_ref) for e in events] == [("open", 4, 1, None)]
    # The onset in records seeded from storage: named by the reference they were seeded with.
    seeded = AlertTracker(rule)
    seeded.seed("a", recent=[False, True, False, True], refs=[10, 11, 12, 13])
    events = seeded.update(["a", "a"], np.array([1, 1]))
    assert [(e.kind, e.index, e.onset_index, e.onset_ref) for e in events] == [
        ("open", 0, None, 11)
    ]
    # k = 1: the opening record is its own onset.
    single = AlertTracker(AlertRule())
    assert [(e.index, e.onset_index) for e in single.update(["a", "b"], np.array([0, 2]))] == [
        (1, 1)
    ]
