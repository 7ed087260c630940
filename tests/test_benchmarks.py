"""The benchmark suite's result check: it accepts the committed results and names what is wrong
with a malformed one (CI relies on it to fail a benchmark run that wrote nonsense)."""

from __future__ import annotations

import json
from pathlib import Path

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
