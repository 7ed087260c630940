"""SKAB (Skoltech Anomaly Benchmark) outlier leaderboard: the calibrated threshold policies and
an alert rule, beside the published detectors.

Protocol (``../shared/data/README.md``, the leaderboard's own): for each of the 34 labelled
files (``valve1/``, ``valve2/``, ``other/``), the first 400 rows train and the rest test; the
detector outputs a binary label per test row; F1 = TP / (TP + (FP + FN) / 2), false-alarm rate
FAR = FP / (FP + TN) and missed-alarm rate MAR = FN / (FN + TP), pooled over the test rows of
all files.

Nothing is tuned on test labels. Per file the detector trains on the first 400 rows (half of
them held out: their scores are the "held-out normal scores" the policies calibrate on; the
labels are never read for training), then each policy gives binary decisions:

* ``quantile 0.995``: the model's default calibrated threshold (``scoring.threshold_quantile``);
* ``quantile 0.99``;
* ``EVT risk 1e-3``: peaks over threshold (SPOT) on the held-out scores (initial quantile 0.9:
  200 held-out scores leave 20 peaks);
* ``... + alert rule``: a row is anomalous while an alert is open under the rule
  (3 of the last 5 rows cross, resolved after 10 normal rows in a row), fixed beforehand.

For reference only (it reads the test labels, so it is not a leaderboard entry): ``oracle``,
each file's best-F1 threshold, i.e. what the scores could give with a perfect threshold; and
the mean per-file ROC-AUC of the scores.

* ``q0.99 + m x (q0.99 - median)``: a margin above the calibrated level, ``m`` chosen per
  detector on the anomaly-free run only (``skab_calibrate.py``, ``skab_calibration.json``).

Detectors (``DETECTORS``): ``vae-rowwise`` (``AnomalyVAE`` on one row at a time) and the
windowed VAE (``window: {size: N}``: ``vae-window60``, ``vae-window20``, ...), whose test rows are
scored after the training rows went through the same window state.

    python -m benchmarks.skab [--quick] [--detector vae-rowwise] [--data ../shared/data/skab]

Prints a Markdown table; writes benchmarks/results/skab.json and skab.md (skab_<detector>.* for
the other detectors).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anomaly_vae import AnomalyVAE
from anomaly_vae._version import __version__
from anomaly_vae.config import PipelineConfig
from anomaly_vae.thresholds import (
    AlertRule,
    AlertTracker,
    Thresholds,
    evt_threshold,
    quantile_threshold,
    tune_from_labels,
)
from benchmarks.suite import write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DATA = REPO.parent / "shared" / "data" / "skab"
PUBLISHED = REPO.parent / "shared" / "data" / "published" / "SKAB_leaderboard_outlier.csv"
TRAIN_ROWS = 400
RULE = AlertRule(k=3, n=5, cooldown_s=0.0, resolve_after=10)
LABELS = ("anomaly", "changepoint")


@dataclass
class Fitted:
    """A detector trained on one file: ``score`` (higher = more anomalous) and the scores of
    held-out normal rows that the threshold policies calibrate on."""

    score: Callable[[pd.DataFrame], np.ndarray]
    normal_scores: np.ndarray


def rowwise_vae(train: pd.DataFrame, seed: int, quick: bool) -> Fitted:
    """The current model: a VAE on single rows; half of the 400 training rows held out."""
    cfg = PipelineConfig()
    cfg.training.validation_fraction = 0.5
    cfg.training.seed = seed
    cfg.training.progress = False
    if quick:
        cfg.training.max_epochs = 60
    model = AnomalyVAE(config=cfg).fit(train)
    return Fitted(score=model.anomaly_score, normal_scores=model.calibration_)


def window_vae(
    size: int,
    *,
    hidden: list[int] | None = None,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    score_kind: str = "neg_elbo",
) -> Callable[[pd.DataFrame, int, bool], Fitted]:
    """A VAE over the last ``size`` rows (``window: {size: N}``, one series, arrival order),
    the flattened window into the MLP encoder. The latest half of the training windows is held
    out (early stopping and calibration). Test rows are scored after the training rows have gone
    through the same window state, so the first test row already has a full window."""

    def build(train: pd.DataFrame, seed: int, quick: bool) -> Fitted:
        cfg = PipelineConfig.model_validate({"window": {"size": size}})
        if hidden is not None:
            cfg.model.hidden_dims = hidden
        cfg.model.dropout = dropout
        cfg.scoring.score_kind = score_kind  # type: ignore[assignment]
        cfg.training.weight_decay = weight_decay
        cfg.training.validation_fraction = 0.5
        cfg.training.seed = seed
        cfg.training.progress = False
        if quick:
            cfg.training.max_epochs = 60
        model = AnomalyVAE(config=cfg).fit(train)

        def score(test: pd.DataFrame) -> np.ndarray:
            frame = pd.concat([train, test], ignore_index=True)
            batch = model.score_batch(frame, windows=model.new_window_state())
            return batch.scores["score"].to_numpy()[len(train) :]

        return Fitted(score=score, normal_scores=model.calibration_)

    return build


DETECTORS: dict[str, Callable[[pd.DataFrame, int, bool], Fitted]] = {
    "vae-rowwise": rowwise_vae,
    "vae-window60": window_vae(60),
    "vae-window20": window_vae(20),
    "vae-window10": window_vae(10),
    "vae-window60-recon": window_vae(60, score_kind="recon_error"),
    "vae-window60-small": window_vae(60, hidden=[64], dropout=0.1, weight_decay=1e-3),
}


def in_alert(crossed: np.ndarray, rule: AlertRule) -> np.ndarray:
    """1 on the rows during which an alert is open under ``rule`` (one entity, row order)."""
    events = AlertTracker(rule).update([""] * len(crossed), crossed.astype(np.int8))
    out = np.zeros(len(crossed), dtype=np.int64)
    opened: int | None = None
    for event in events:
        if event.kind == "open":
            opened = event.index
        elif event.kind == "resolve" and opened is not None:
            out[opened : event.index] = 1
            opened = None
    if opened is not None:
        out[opened:] = 1
    return out


def calibrated_margin(detector: str) -> float | None:
    """The margin ``skab_calibrate.py`` chose for ``detector`` on the anomaly-free run."""
    path = RESULTS / "skab_calibration.json"
    if not path.exists():
        return None
    chosen = json.loads(path.read_text()).get("detectors", {}).get(detector)
    return None if chosen is None else float(chosen["chosen_margin"])


def policies(
    fitted: Fitted, scores: np.ndarray, margin: float | None = None
) -> dict[str, np.ndarray]:
    normal = fitted.normal_scores
    levels = {
        "quantile 0.995 (default)": quantile_threshold(normal, 0.995),
        "quantile 0.99": quantile_threshold(normal, 0.99),
        "EVT risk 1e-3": evt_threshold(normal, 1e-3, initial_quantile=0.9).threshold,
    }
    if margin is not None:
        q, median = np.quantile(normal, 0.99), np.median(normal)
        levels[f"q0.99 + {margin:g} x (q0.99 - median), margin from anomaly-free"] = float(
            q + margin * (q - median)
        )
    out: dict[str, np.ndarray] = {}
    for name, level in levels.items():
        crossed = Thresholds(warning=level).severity(scores) > 0
        out[name] = crossed.astype(np.int64)
    rule = f"{RULE.k} of {RULE.n}, resolve after {RULE.resolve_after}"
    out[f"quantile 0.99 + alert rule ({rule})"] = in_alert(out["quantile 0.99"], RULE)
    out[f"EVT risk 1e-3 + alert rule ({rule})"] = in_alert(out["EVT risk 1e-3"], RULE)
    for name in list(out):
        if name.startswith("q0.99 + "):
            out[f"{name} + alert rule ({rule})"] = in_alert(out[name], RULE)
    return out


def pooled(counts: dict[str, int]) -> dict[str, float]:
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {
        "F1": tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0,
        "FAR_pct": 100.0 * fp / (fp + tn) if fp + tn else 0.0,
        "MAR_pct": 100.0 * fn / (fn + tp) if fn + tp else 0.0,
    }


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    return {
        "tp": int(np.sum((pred == 1) & (truth == 1))),
        "fp": int(np.sum((pred == 1) & (truth == 0))),
        "fn": int(np.sum((pred == 0) & (truth == 1))),
        "tn": int(np.sum((pred == 0) & (truth == 0))),
    }


def skab_files(data: Path, quick: bool) -> list[Path]:
    files = sorted(
        (p for folder in ("valve1", "valve2", "other") for p in (data / folder).glob("*.csv")),
        key=lambda p: (p.parent.name, int(p.stem)),
    )
    if not files:
        raise SystemExit(f"no SKAB files under {data}: see ../shared/data/README.md")
    return [files[0], files[17], files[20], files[30]] if quick else files


def run(data: Path, detector: str, quick: bool, seed: int) -> dict[str, Any]:
    build = DETECTORS[detector]
    margin = calibrated_margin(detector)
    totals: dict[str, dict[str, int]] = {}
    oracle = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    aucs: list[float] = []
    per_file: list[dict[str, Any]] = []
    started = time.perf_counter()
    for path in skab_files(data, quick):
        frame = pd.read_csv(path, sep=";", index_col="datetime")
        features = frame.drop(columns=list(LABELS))
        truth = frame["anomaly"].to_numpy(dtype=np.int64)[TRAIN_ROWS:]
        fitted = build(features.iloc[:TRAIN_ROWS], seed, quick)
        scores = fitted.score(features.iloc[TRAIN_ROWS:])
        decided = policies(fitted, scores, margin)
        row: dict[str, Any] = {"file": f"{path.parent.name}/{path.name}", "test_rows": len(truth)}
        for name, pred in decided.items():
            counts = confusion(pred, truth)
            total = totals.setdefault(name, {"tp": 0, "fp": 0, "fn": 0, "tn": 0})
            for key, value in counts.items():
                total[key] += value
            row[name] = pooled(counts)["F1"]
        best = tune_from_labels(scores, truth, objective="f1")
        for key, value in confusion((scores > best.threshold).astype(np.int64), truth).items():
            oracle[key] += value
        if 0 < truth.sum() < len(truth):
            from sklearn.metrics import roc_auc_score

            aucs.append(float(roc_auc_score(truth, scores)))
        per_file.append(row)
        print(f"  {row['file']}: {len(truth)} test rows", file=sys.stderr)
    positives, negatives = oracle["tp"] + oracle["fn"], oracle["fp"] + oracle["tn"]
    return {
        "policies": {name: {**pooled(c), **c} for name, c in totals.items()},
        "every_row_flagged": pooled({"tp": positives, "fp": negatives, "fn": 0, "tn": 0}),
        "anomalous_share_of_test_rows": positives / max(positives + negatives, 1),
        "oracle_best_f1_per_file": {**pooled(oracle), **oracle},
        "mean_roc_auc": float(np.mean(aucs)) if aucs else None,
        "files": len(per_file),
        "per_file": per_file,
        "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict[str, Any], published: pd.DataFrame) -> str:
    lines = [
        f"SKAB outlier leaderboard protocol, {result['files']} files, pooled over the test rows "
        f"(detector: {result['detector']}; no threshold tuned on test labels)",
        "",
        "| detector / policy | F1 | FAR % | MAR % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, m in result["policies"].items():
        lines.append(
            f"| **anomaly-vae {name}** | {m['F1']:.2f} | {m['FAR_pct']:.2f} | {m['MAR_pct']:.2f} |"
        )
    for row in published.itertuples(index=False):
        lines.append(
            f"| {row.algorithm} (published) | {row.F1:.2f} | {row.FAR_pct:.2f} | "
            f"{row.MAR_pct:.2f} |"
        )
    o = result["oracle_best_f1_per_file"]
    everything = result["every_row_flagged"]
    lines += [
        "",
        f"Mind the metric: {100 * result['anomalous_share_of_test_rows']:.0f} % of the test rows "
        f"are anomalous, so flagging every row scores F1 {everything['F1']:.2f} (FAR 100 %); "
        "compare false-alarm rates as well as F1.",
        "",
        f"Reference, not a leaderboard entry (reads the test labels): each file's best-F1 "
        f"threshold on these scores gives F1 {o['F1']:.2f} (FAR {o['FAR_pct']:.2f} %, MAR "
        f"{o['MAR_pct']:.2f} %); mean per-file ROC-AUC of the scores "
        f"{result['mean_roc_auc']:.3f}.",
        "",
        f"{result['machine']}; {result['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the SKAB folder")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="vae-rowwise")
    parser.add_argument("--quick", action="store_true", help="4 files, shorter training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    result = run(args.data, args.detector, args.quick, args.seed)
    result.update(
        benchmark="skab",
        detector=args.detector,
        quick=args.quick,
        seed=args.seed,
        alert_rule=RULE.to_dict(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"anomaly-vae {__version__}, torch {torch.__version__}",
    )
    published = pd.read_csv(PUBLISHED)
    text = markdown(result, published)
    print(text)
    stem = "skab" if args.detector == "vae-rowwise" else f"skab_{args.detector}"
    stem = f"{stem}_quick" if args.quick else stem
    write_result(args.out, stem, result, text)


if __name__ == "__main__":
    main()
