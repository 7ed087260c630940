"""Choose the SKAB decision rule on normal data only: the anomaly-free run, never the test labels.

The leaderboard protocol trains on each file's first 400 rows and decides on the rest. The
threshold a model calibrates on its held-out training windows is too low for the rest of a run
(the bench drifts within minutes), so the rule needs a margin. This script picks the margin where
no label can leak: ``anomaly-free/anomaly-free.csv`` (9,405 normal rows) is cut into pieces as
long as a test file (1,150 rows); each piece is treated as a file (first 400 rows train, the
rest "test", all normal), and the false-alarm rate of each candidate rule is pooled over them.

Rule: ``threshold = q + margin * (q - median)`` of the held-out normal scores (``q`` their 0.99
quantile): scale-free, so the same margin reads for every file. The chosen margin is the
smallest one whose pooled false-alarm rate on the anomaly-free pieces is at most
``TARGET_FAR`` (5 %, fixed before looking at any test file), for each detector.

    python -m benchmarks.skab_calibrate [--detector vae-window60] [--out benchmarks/results]

Writes skab_calibration.json (the FAR of every candidate; the chosen margin per detector).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.skab import DATA, DETECTORS, RESULTS, TRAIN_ROWS

PIECE_ROWS = 1150
MARGINS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
QUANTILE = 0.99
TARGET_FAR = 0.05


def margin_threshold(normal: np.ndarray, margin: float) -> float:
    q = float(np.quantile(normal, QUANTILE))
    return q + margin * (q - float(np.median(normal)))


def false_alarms(detector: str, data: Path, seed: int) -> dict[str, Any]:
    frame = pd.read_csv(data / "anomaly-free" / "anomaly-free.csv", sep=";", index_col="datetime")
    build = DETECTORS[detector]
    counts = dict.fromkeys(MARGINS, 0)
    total = 0
    for start in range(0, len(frame) - PIECE_ROWS + 1, PIECE_ROWS):
        piece = frame.iloc[start : start + PIECE_ROWS]
        fitted = build(piece.iloc[:TRAIN_ROWS], seed, False)
        scores = fitted.score(piece.iloc[TRAIN_ROWS:])
        total += len(scores)
        for m in MARGINS:
            counts[m] += int(np.sum(scores > margin_threshold(fitted.normal_scores, m)))
        print(f"  {detector} piece at row {start}", file=sys.stderr)
    far = {str(m): counts[m] / total for m in MARGINS}
    chosen = next((m for m in MARGINS if counts[m] / total <= TARGET_FAR), MARGINS[-1])
    return {"rows": total, "far_by_margin": far, "chosen_margin": chosen}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--detector", action="append", choices=sorted(DETECTORS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = args.out / "skab_calibration.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("detectors", {})
    result.update(
        quantile=QUANTILE, target_far=TARGET_FAR, piece_rows=PIECE_ROWS, train_rows=TRAIN_ROWS
    )
    for detector in args.detector or ["vae-window60"]:
        result["detectors"][detector] = false_alarms(detector, args.data, args.seed)
        print(detector, json.dumps(result["detectors"][detector]))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
