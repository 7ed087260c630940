"""Threshold policies and alert rules: pure functions of score samples, no database inside.

Scores here are anomaly scores: **higher means more anomalous**, and a record crosses a
threshold when its score is strictly above it.

Policies (each returns a threshold value):

* ``value``: a fixed number;
* ``quantile`` of held-out normal scores, or equivalently ``false_alarm_rate`` (1 - quantile);
* ``contamination``: the share of the scored data expected to be anomalous;
* ``evt``: peaks over threshold, a generalised Pareto tail fitted to the normal scores above a
  high initial quantile, solved for a risk level (SPOT, Siffer et al., KDD 2017);
* ``tune_from_labels``: the best F1, the best recall under a false-alarm cap, or the lowest
  threshold that keeps alerts within a daily budget.

Alert rules turn per-record crossings into alerts per entity: open after k of the last n
records crossed (debounce), no new alert within a cool-down after the last one opened, resolve
after m consecutive normal records.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomaly_vae.errors import ConfigError
from anomaly_vae.labels import label_to_binary

PolicyKind = Literal["value", "quantile", "false_alarm_rate", "contamination", "evt", "labels"]
SEVERITY_NORMAL, SEVERITY_WARNING, SEVERITY_CRITICAL = 0, 1, 2
SEVERITY_NAMES = {0: "normal", 1: "warning", 2: "critical"}


def _finite(scores: Iterable[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if len(arr) == 0:
        raise ConfigError(f"{what}: no finite scores to compute a threshold from")
    return arr


# From this many scored records on, more than half of them over the threshold is said to be
# a sign of data unlike the training data (the summary of ``score``, the stream's progress line).
MOST_CROSSED_MIN_RECORDS = 100


def most_crossed(scored: int, flagged: int) -> bool:
    """Whether ``flagged`` of ``scored`` records is most of enough of them to say so: anomalies
    are rare, so the data as a whole is likely unlike the training data."""
    return scored >= MOST_CROSSED_MIN_RECORDS and flagged > scored / 2


def quantile_threshold(normal_scores: Iterable[float] | np.ndarray, quantile: float) -> float:
    """The ``quantile`` of held-out normal scores: ``1 - quantile`` of normal records cross."""
    if not 0.0 < quantile < 1.0:
        raise ConfigError(f"quantile must be between 0 and 1 (exclusive), got {quantile}")
    return float(np.quantile(_finite(normal_scores, "quantile"), quantile))


def false_alarm_threshold(normal_scores: Iterable[float] | np.ndarray, rate: float) -> float:
    """A threshold crossed by about ``rate`` of normal records."""
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"false-alarm rate must be between 0 and 1 (exclusive), got {rate}")
    return quantile_threshold(normal_scores, 1.0 - rate)


def contamination_threshold(scores: Iterable[float] | np.ndarray, contamination: float) -> float:
    """A threshold crossed by the top ``contamination`` share of ``scores`` (normal or not)."""
    if not 0.0 < contamination < 0.5:
        raise ConfigError(f"contamination must be between 0 and 0.5, got {contamination}")
    return float(np.quantile(_finite(scores, "contamination"), 1.0 - contamination))


@dataclass(frozen=True)
class EvtFit:
    """Peaks-over-threshold fit: ``threshold`` is the score exceeded with probability ``risk``."""

    threshold: float
    initial_threshold: float
    scale: float
    shape: float
    n: int
    n_peaks: int
    risk: float


def evt_threshold(
    normal_scores: Iterable[float] | np.ndarray,
    risk: float,
    *,
    initial_quantile: float = 0.98,
    min_peaks: int = 10,
) -> EvtFit:
    """SPOT's threshold: fit a generalised Pareto distribution to the excesses over the
    ``initial_quantile`` of the normal scores and solve for P(score > z) = ``risk``.

    z = t + (scale / shape) * ((risk * n / n_peaks) ** -shape - 1), or t - scale * log(risk * n /
    n_peaks) when the shape is 0. Useful when ``risk`` is smaller than 1 / (number of normal
    scores), where an empirical quantile cannot reach.
    """
    from scipy.stats import genpareto

    if not 0.0 < risk < 1.0:
        raise ConfigError(f"risk must be between 0 and 1 (exclusive), got {risk}")
    if not 0.5 <= initial_quantile < 1.0:
        raise ConfigError(f"initial_quantile must be in [0.5, 1), got {initial_quantile}")
    scores = _finite(normal_scores, "evt")
    n = len(scores)
    t = float(np.quantile(scores, initial_quantile))
    excesses = scores[scores > t] - t
    if len(excesses) < min_peaks:
        raise ConfigError(
            f"evt: only {len(excesses)} scores above the {initial_quantile} quantile; need at "
            f"least {min_peaks} (more held-out normal data, or a lower initial quantile)"
        )
    if risk >= len(excesses) / n:
        raise ConfigError(
            f"evt: risk {risk} is not in the tail above the {initial_quantile} quantile: use a "
            "risk below 1 - initial_quantile, or the quantile policy"
        )
    shape, _, scale = genpareto.fit(excesses, floc=0.0)
    ratio = risk * n / len(excesses)
    if abs(shape) < 1e-6:
        z = t - scale * math.log(ratio)
    else:
        z = t + (scale / shape) * (ratio ** (-shape) - 1.0)
    return EvtFit(
        threshold=float(z),
        initial_threshold=t,
        scale=float(scale),
        shape=float(shape),
        n=n,
        n_peaks=len(excesses),
        risk=risk,
    )


# ============================================================== tuned from labels
@dataclass(frozen=True)
class TuneResult:
    threshold: float
    objective: str
    precision: float
    recall: float
    f1: float
    false_alarm_rate: float
    alerts_per_day: float | None = None


def confusion_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and false-alarm rate of ``score > threshold`` against 0/1 labels
    (read as ``label_to_binary`` reads them: -1 / 1 refused, a missing label left out)."""
    given = label_to_binary(pd.Series(np.asarray(labels).ravel()), name="labels")
    if len(given) != len(scores):
        raise ConfigError(f"{len(scores)} scores but {len(given)} labels")
    known = given.notna().to_numpy()
    flagged = np.asarray(scores, dtype=np.float64)[known] > threshold
    positive = given.to_numpy()[known] == 1
    tp = int(np.sum(flagged & positive))
    fp = int(np.sum(flagged & ~positive))
    fn = int(np.sum(~flagged & positive))
    tn = int(np.sum(~flagged & ~positive))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    far = fp / (fp + tn) if fp + tn else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": far,
    }


def _candidates(scores: np.ndarray) -> np.ndarray:
    """Thresholds worth trying: just below each distinct score, and above the largest."""
    distinct = np.unique(scores)
    below = np.nextafter(distinct, -np.inf)
    return np.r_[below, distinct[-1]]


def tune_from_labels(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    objective: Literal["f1", "max_false_alarm_rate", "alerts_per_day"] = "f1",
    max_false_alarm_rate: float | None = None,
    alerts_per_day: float | None = None,
    timestamps: Sequence[Any] | pd.Series | pd.Index | None = None,
    flaggable: Sequence[bool] | np.ndarray | None = None,
) -> TuneResult:
    """The threshold that is best for ``objective`` on labelled scores.

    * ``f1``: the highest F1 (ties: the highest threshold);
    * ``max_false_alarm_rate``: the highest recall with a false-alarm rate at or under the cap
      (ties: the highest threshold);
    * ``alerts_per_day``: the lowest threshold whose flagged records per day (over the span of
      ``timestamps``) stay within the budget; labels then only score the result.

    ``flaggable`` (default: all) marks the records a threshold can flag; the others (a
    windowed model's warming-up and late records) are never flagged, whatever the threshold:
    they count as missed anomalies or true negatives, not as records to rank.
    """
    s = np.asarray(scores, dtype=np.float64)
    # Read as every label is (labels.label_to_binary): scikit-learn's -1 / 1 was taken as
    # "1 = anomaly, -1 = not", so every normal record counted as the anomaly to find (with a
    # perfect F1), and a NaN became a huge negative integer. A missing label is left out.
    given = label_to_binary(pd.Series(np.asarray(labels).ravel()), name="labels")
    if len(s) != len(given):
        raise ConfigError(f"{len(s)} scores but {len(given)} labels")
    y = given.fillna(0).to_numpy(dtype=np.int64)
    can = np.ones(len(s), dtype=bool) if flaggable is None else np.asarray(flaggable, dtype=bool)
    if len(can) != len(s):
        raise ConfigError(f"{len(s)} scores but {len(can)} flaggable marks")
    keep = np.isfinite(s) & given.notna().to_numpy()
    s, y, can = s[keep], y[keep], can[keep]
    if len(s) == 0:
        raise ConfigError("no labelled scores to tune on")
    if objective in ("f1", "max_false_alarm_rate") and (y.min() == y.max()):
        raise ConfigError("tuning needs both normal (0) and anomalous (1) labels")
    positives = max(int(np.sum(y == 1)), 1)
    negatives = max(int(np.sum(y == 0)), 1)
    if not can.any():
        raise ConfigError("no labelled score can be flagged (every one is warming up or late)")
    s, y = s[can], y[can]
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Flagging the top i records (i = 0..n): cumulative true and false positives.
    tp = np.r_[0, np.cumsum(y_sorted == 1)]
    fp = np.r_[0, np.cumsum(y_sorted == 0)]
    # Only cut between distinct scores: i must be 0, n, or where s_sorted[i-1] > s_sorted[i].
    n = len(s)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s_sorted[:-1] > s_sorted[1:]
    thresholds = np.empty(n + 1)
    thresholds[0] = s_sorted[0]  # flag nothing: threshold at the top score
    thresholds[1:] = np.nextafter(s_sorted, -np.inf)  # flag the top i: just below the i-th
    recall = tp / positives
    precision = np.divide(tp, tp + fp, out=np.zeros(n + 1), where=(tp + fp) > 0)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros(n + 1),
        where=(precision + recall) > 0,
    )
    far = fp / negatives
    per_day: float | None = None
    if objective == "f1":
        score = np.where(valid, f1, -1.0)
        best = int(np.flatnonzero(score == score.max())[0])
    elif objective == "max_false_alarm_rate":
        if max_false_alarm_rate is None or not 0.0 <= max_false_alarm_rate < 1.0:
            raise ConfigError(
                "max_false_alarm_rate (--max-false-alarm-rate) must be at least 0 and below 1, "
                f"got {max_false_alarm_rate}"
            )
        allowed = valid & (far <= max_false_alarm_rate + 1e-12)
        score = np.where(allowed, recall, -1.0)
        best = int(np.flatnonzero(score == score.max())[0])
    elif objective == "alerts_per_day":
        if alerts_per_day is None or not (0 < alerts_per_day < math.inf):
            # NaN and infinity too: they ended in a traceback from math.floor below
            raise ConfigError(
                "alerts_per_day (--alerts-per-day) must be a positive, finite number of flagged "
                f"records a day, got {alerts_per_day}"
            )
        if timestamps is None:
            raise ConfigError("alerts_per_day needs the records' timestamps")
        times = pd.to_datetime(pd.Series(timestamps), utc=True, errors="coerce")
        times = times[keep]
        span_days = (
            (times.max() - times.min()).total_seconds() / 86400.0 if times.notna().any() else 0
        )
        days = max(span_days, 1.0)
        budget = math.floor(alerts_per_day * days)
        allowed = valid & (np.arange(n + 1) <= budget)
        best = int(np.flatnonzero(allowed)[-1])
        per_day = best / days
    else:
        raise ConfigError(f"unknown objective {objective!r}")
    return TuneResult(
        threshold=float(thresholds[best]),
        objective=objective,
        precision=float(precision[best]),
        recall=float(recall[best]),
        f1=float(f1[best]),
        false_alarm_rate=float(far[best]),
        alerts_per_day=per_day,
    )


# ==================================================================== severities
@dataclass(frozen=True)
class Thresholds:
    """The thresholds in force: ``warning`` and optionally a higher ``critical``."""

    warning: float
    critical: float | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.warning):
            raise ConfigError(f"the warning threshold must be a finite number, got {self.warning}")
        if self.critical is not None and not self.critical >= self.warning:
            raise ConfigError(
                f"the critical threshold ({self.critical}) must be at or above the warning "
                f"threshold ({self.warning})"
            )

    def severity(self, scores: np.ndarray) -> np.ndarray:
        """0 normal, 1 warning, 2 critical, per score."""
        s = np.asarray(scores, dtype=np.float64)
        out = (s > self.warning).astype(np.int8)
        if self.critical is not None:
            out[s > self.critical] = SEVERITY_CRITICAL
        return out


# ==================================================================== alert rules
@dataclass(frozen=True)
class AlertRule:
    """Debounce, cool-down and auto-resolve, per entity.

    An alert opens when at least ``k`` of the entity's last ``n`` records crossed the warning
    threshold, unless the entity's previous alert opened less than ``cooldown_s`` seconds
    before (or after: a record older than it, from a backfill, within ``cooldown_s`` of it);
    while it is open, further crossings join it (its severity rises to critical if a
    record crosses the critical threshold); it resolves after ``resolve_after`` consecutive
    normal records.
    """

    k: int = 1
    n: int = 1
    cooldown_s: float = 0.0
    resolve_after: int = 1

    def __post_init__(self) -> None:
        if not (1 <= self.k <= self.n):
            raise ConfigError(f"alert rule needs 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.cooldown_s < 0 or self.resolve_after < 1:
            raise ConfigError("alert rule needs cooldown_s >= 0 and resolve_after >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AlertRule:
        if not data:
            return cls()
        unknown = set(data) - {"k", "n", "cooldown_s", "resolve_after"}
        if unknown:
            raise ConfigError(
                f"unknown alert rule settings: {sorted(unknown)}; known: k, n, cooldown_s, "
                "resolve_after"
            )
        default = cls()
        try:
            return cls(
                k=_whole(data.get("k", default.k)),
                n=_whole(data.get("n", default.n)),
                cooldown_s=float(data.get("cooldown_s", default.cooldown_s)),
                resolve_after=_whole(data.get("resolve_after", default.resolve_after)),
            )
        except (TypeError, ValueError):
            raise ConfigError(
                f"alert rule settings must be numbers (k, n, resolve_after whole), got {data}"
            ) from None

    def describe(self) -> str:
        """'2 of 3 records, cool-down 300 s, resolved after 5 normal records'."""
        cooldown = f", cool-down {self.cooldown_s:g} s" if self.cooldown_s else ""
        return (
            f"{self.k} of {self.n} record{'s' if self.n > 1 else ''}{cooldown}, resolved after "
            f"{self.resolve_after} normal record{'s' if self.resolve_after > 1 else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "n": self.n,
            "cooldown_s": self.cooldown_s,
            "resolve_after": self.resolve_after,
        }


def _whole(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(value)
    return int(float(value))


@dataclass
class AlertEvent:
    """``kind``: 'open', 'escalate' (to critical) or 'resolve'; ``index``: the record's position
    in the input that caused it.

    An opening also says where the anomaly began, its onset: the first record that crossed
    among the ``n`` that opened it (the rule only confirmed it later). ``onset_index`` is that
    record's position in this input; when it came before this input (a record the entity was
    seeded with), ``onset_index`` is None and ``onset_ref`` is the reference it was seeded
    with (``AlertTracker.seed``'s ``refs``: a stored score's id)."""

    kind: Literal["open", "escalate", "resolve"]
    entity: str
    index: int
    time: pd.Timestamp | None
    severity: int
    onset_index: int | None = None
    onset_ref: Any = None


@dataclass
class _EntityState:
    recent: deque[bool]
    open_severity: int = 0
    normal_streak: int = 0
    last_opened: float | None = None
    # Beside ``recent``: where each of those records is, (True, position in the input being
    # judged) or (False, the reference it was seeded with); read for an opening's onset.
    where: deque[tuple[bool, Any]] = field(default_factory=deque)


@dataclass
class AlertTracker:
    """Applies an ``AlertRule`` record by record, keeping a small state per entity."""

    rule: AlertRule = field(default_factory=AlertRule)
    states: dict[str, _EntityState] = field(default_factory=dict)

    def is_open(self, entity: str) -> bool:
        state = self.states.get(entity)
        return state is not None and state.open_severity > 0

    def seed(
        self,
        entity: str,
        *,
        recent: Sequence[bool] = (),
        open_severity: int = SEVERITY_NORMAL,
        normal_streak: int = 0,
        last_opened: float | None = None,
        refs: Sequence[Any] = (),
    ) -> None:
        """Start ``entity`` from a known state instead of a blank one: its last records'
        crossings (oldest first), the severity of its open alert (0: none), the normal records
        since that alert's last crossing, and when (epoch seconds) its last alert opened.
        ``refs``: what names each of the ``recent`` records (a stored score's id), given back
        as an opening's ``onset_ref`` when the anomaly began at one of them.
        This is how the write path carries the rule across batches and processes."""
        flags = [bool(c) for c in recent]
        names = list(refs) if len(refs) == len(flags) else [None] * len(flags)
        n = self.rule.n
        self.states[entity] = _EntityState(
            recent=deque(flags, maxlen=n),
            open_severity=int(open_severity),
            normal_streak=int(normal_streak) if open_severity else 0,
            last_opened=last_opened,
            where=deque(((False, ref) for ref in names), maxlen=n),
        )

    def update(
        self,
        entities: Sequence[Any],
        severities: np.ndarray,
        times: Sequence[Any] | None = None,
    ) -> list[AlertEvent]:
        """Feed records in time order; return the alert events they cause."""
        events: list[AlertEvent] = []
        rule = self.rule
        levels = np.asarray(severities, dtype=np.int64).tolist()
        visit = self._worth_visiting(entities, levels)
        # Plain numbers (epoch seconds, NaN where unknown) for the records visited: this loop
        # runs over them one by one, so nothing pandas inside it.
        seconds: dict[int, float] = dict.fromkeys(visit, math.nan)
        nanos: dict[int, int] = dict.fromkeys(visit, 0)
        if times is not None and visit:
            stamps = pd.to_datetime(pd.Series(times), utc=True, errors="coerce").iloc[visit]
            known = stamps.notna().to_numpy()
            raw = stamps.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]").view(np.int64)
            nanos = dict(zip(visit, raw.tolist(), strict=True))
            seconds = dict(zip(visit, np.where(known, raw / 1e9, np.nan).tolist(), strict=True))

        def when(i: int) -> pd.Timestamp | None:
            return None if math.isnan(seconds[i]) else pd.Timestamp(nanos[i], tz="UTC")

        for i in visit:
            entity_raw, sev, now = entities[i], levels[i], seconds[i]
            entity = "" if entity_raw is None or entity_raw != entity_raw else str(entity_raw)
            state = self.states.get(entity)
            if state is None:
                state = _EntityState(recent=deque(maxlen=rule.n), where=deque(maxlen=rule.n))
                self.states[entity] = state
            crossed = sev > 0
            state.recent.append(crossed)
            state.where.append((True, i))
            if state.open_severity > 0:
                if crossed:
                    state.normal_streak = 0
                    if sev > state.open_severity:
                        state.open_severity = sev
                        events.append(AlertEvent("escalate", entity, i, when(i), sev))
                else:
                    state.normal_streak += 1
                    if state.normal_streak >= rule.resolve_after:
                        events.append(
                            AlertEvent("resolve", entity, i, when(i), state.open_severity)
                        )
                        state.open_severity = 0
                        state.normal_streak = 0
                continue
            if not crossed or sum(state.recent) < rule.k:
                continue
            if (
                rule.cooldown_s > 0
                and state.last_opened is not None
                and not math.isnan(now)
                # Within the cool-down of the previous alert on either side: a record older
                # than it (a backfill, a late record) is not "before" it by a negative time,
                # which kept a whole backfill of older data from opening any alert.
                and abs(now - state.last_opened) < rule.cooldown_s
            ):
                continue
            state.open_severity = sev
            state.normal_streak = 0
            state.last_opened = None if math.isnan(now) else now
            # The onset: the first crossing among the records that opened it. ``where`` runs
            # beside ``recent``; records skipped as changing nothing are all-normal stretches,
            # so the crossings in ``recent`` are always the records ``where`` names.
            first = next(j for j, c in enumerate(state.recent) if c)
            here, ref = state.where[first]
            events.append(
                AlertEvent(
                    "open",
                    entity,
                    i,
                    when(i),
                    sev,
                    onset_index=ref if here else None,
                    onset_ref=None if here else ref,
                )
            )
        return events

    def _worth_visiting(self, entities: Sequence[Any], levels: list[int]) -> list[int]:
        """Indices of the records that can change an entity's state, in order.

        A normal record more than ``max(n, resolve_after)`` records after its entity's last
        crossing (and past the entity's first that many records, which may end an alert in
        progress) finds the entity with no open alert and an all-normal window: it changes
        nothing, so the loop can skip it. On long normal stretches that is most records.
        """
        n = len(levels)
        window = max(self.rule.n, self.rule.resolve_after)
        if n <= 4 * window:
            return list(range(n))
        codes = pd.factorize(pd.Series(entities, dtype=object), use_na_sentinel=False)[0]
        crossing = np.asarray(levels) > 0
        position = pd.Series(codes).groupby(codes).cumcount().to_numpy()
        last = pd.Series(np.where(crossing, position, np.nan)).groupby(codes).ffill().to_numpy()
        since = position - last  # NaN before the entity's first crossing in this batch
        keep = crossing | (position < window) | (since <= window)
        return np.flatnonzero(keep).tolist()


# ======================================================================= preview
@dataclass
class Preview:
    """What a threshold and alert rule would have done to stored scores."""

    threshold: float
    critical: float | None
    records: int
    flagged: int
    alerts: int
    alerts_per_day: pd.Series
    alerts_per_entity: pd.Series
    metrics: dict[str, float] | None
    events: list[AlertEvent]

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "critical": self.critical,
            "records": self.records,
            "flagged": self.flagged,
            "alerts": self.alerts,
            "alerts_per_day": {str(k): int(v) for k, v in self.alerts_per_day.items()},
            "alerts_per_entity": {str(k): int(v) for k, v in self.alerts_per_entity.items()},
            "metrics": self.metrics,
        }


def preview(
    scores: pd.DataFrame,
    thresholds: Thresholds,
    rule: AlertRule | None = None,
    *,
    labels: np.ndarray | pd.Series | None = None,
    tracker: AlertTracker | None = None,
) -> Preview:
    """Replay ``scores`` (columns ``score``, optional ``entity`` and ``time``) in time order
    under ``thresholds`` and ``rule``: alerts per day and per entity, and precision / recall /
    F1 of the record-level decisions when ``labels`` (0/1, aligned with ``scores``) are given.

    ``tracker`` (with ``rule``) starts the replay from known entity states (see
    ``AlertTracker.seed``) rather than blank ones."""
    frame = scores.copy()
    if "entity" not in frame:
        frame["entity"] = ""
    if "time" in frame:
        frame["time"] = pd.to_datetime(frame["time"], utc=True, errors="coerce")
        order = np.argsort(frame["time"].to_numpy(dtype="datetime64[ns]"), kind="stable")
    else:
        frame["time"] = pd.NaT
        order = np.arange(len(frame))
    if labels is not None:
        frame["label"] = np.asarray(labels)
    frame = frame.iloc[order].reset_index(drop=True)
    severity = thresholds.severity(frame["score"].to_numpy())
    if tracker is None:
        tracker = AlertTracker(rule or AlertRule())
    times = frame["time"] if frame["time"].notna().any() else None
    events = tracker.update(frame["entity"].tolist(), severity, times)
    opened = [e for e in events if e.kind == "open"]
    days = pd.Series(
        [e.time.strftime("%Y-%m-%d") if e.time is not None else "unknown" for e in opened],
        dtype=object,
    )
    per_day = days.value_counts().sort_index() if len(days) else pd.Series(dtype=int)
    per_entity = (
        pd.Series([e.entity for e in opened], dtype=object).value_counts()
        if opened
        else pd.Series(dtype=int)
    )
    metrics = None
    if labels is not None:
        y = frame["label"].to_numpy()
        known = ~pd.isna(y)
        m = confusion_at(
            frame["score"].to_numpy()[known], y[known].astype(np.int64), thresholds.warning
        )
        metrics = {key: float(value) for key, value in m.items()}
    return Preview(
        threshold=thresholds.warning,
        critical=thresholds.critical,
        records=len(frame),
        flagged=int(np.sum(severity > 0)),
        alerts=len(opened),
        alerts_per_day=per_day,
        alerts_per_entity=per_entity,
        metrics=metrics,
        events=events,
    )
