"""The benchmark suite: what runs, with which arguments, and what a well-formed result holds.

Each benchmark writes ``<stem>.json`` (and a Markdown table) into the results folder. The check
here is structural: required keys present, the measured figures finite numbers above zero. It
never judges the figures themselves (CI prints them; the README and closing notes discuss them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

Check = Callable[[dict[str, Any]], list[str]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    stem: str  # the JSON file, without .json, in full mode
    check: Check
    quick_args: list[str] = field(default_factory=lambda: ["--quick"])
    full_args: list[str] = field(default_factory=list)
    quick_stem: str | None = None  # when the quick mode writes another file

    def path(self, folder: Path, *, quick: bool) -> Path:
        stem = self.quick_stem if quick and self.quick_stem else self.stem
        return folder / f"{stem}.json"


def positive(value: Any, where: str) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"{where}: expected a number, got {value!r}"]
    if not math.isfinite(value) or value <= 0:
        return [f"{where}: expected a finite number above zero, got {value!r}"]
    return []


def rows_with_positive(
    data: dict[str, Any], key: str, fields: tuple[str, ...], where: str
) -> list[str]:
    """``data[key]`` is a non-empty list of objects whose ``fields`` are numbers above zero."""
    rows = data.get(key)
    if not isinstance(rows, list) or not rows:
        return [f"{where}: {key!r} must be a non-empty list"]
    problems: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"{where}.{key}[{i}]: expected an object")
            continue
        for field_name in fields:
            problems += positive(row.get(field_name), f"{where}.{key}[{i}].{field_name}")
    return problems


def check_speed(data: dict[str, Any]) -> list[str]:
    csv_fields = ("rows", "bare_read_rows_per_s", "score_rows_per_s", "ratio", "peak_rss_mib")
    return rows_with_positive(data, "model_scoring", ("rows_per_s",), "speed") + (
        rows_with_positive(data, "csv_scoring", csv_fields, "speed")
    )


def check_stream(data: dict[str, Any]) -> list[str]:
    fields = ("bare_rate", "scorer_rate", "ratio", "p50_ms", "p99_ms", "scorer_cpu_us_per_msg")
    return rows_with_positive(data, "rows", fields, "stream")


def check_db_write(data: dict[str, Any]) -> list[str]:
    databases = data.get("databases")
    if not isinstance(databases, dict) or not databases:
        return ["db_write: 'databases' must be a non-empty mapping"]
    problems: list[str] = []
    for db, result in databases.items():
        methods = result.get("methods") if isinstance(result, dict) else None
        if not isinstance(methods, dict) or "bare executemany" not in methods:
            problems.append(f"db_write[{db}]: no 'bare executemany' baseline among the methods")
            continue
        for method, m in methods.items():
            problems += positive(m.get("rows_per_s"), f"db_write[{db}][{method}].rows_per_s")
            problems += positive(m.get("vs_bare"), f"db_write[{db}][{method}].vs_bare")
    return problems


def check_skab(data: dict[str, Any]) -> list[str]:
    policies = data.get("policies")
    if not isinstance(policies, dict) or not policies:
        return ["skab: 'policies' must be a non-empty mapping"]
    problems: list[str] = []
    for name, row in policies.items():
        for key in ("F1", "FAR_pct", "MAR_pct"):
            value = row.get(key) if isinstance(row, dict) else None
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                problems.append(f"skab.policies[{name}].{key}: expected a number >= 0")
    return problems


def check_windows_memory(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for key in ("entities", "state_traced_mib", "state_traced_bytes_per_entity", "rss_after_mib"):
        problems += positive(data.get(key), f"windows_memory.{key}")
    return problems


def check_detection(data: dict[str, Any]) -> list[str]:
    from benchmarks.detection import check_result

    return _problems_of(check_result, data, "detection")


def check_train_speed(data: dict[str, Any]) -> list[str]:
    from benchmarks.train_speed import check_result

    return _problems_of(check_result, data, "train_speed")


def _problems_of(
    check: Callable[[dict[str, Any]], None], data: dict[str, Any], name: str
) -> list[str]:
    """A benchmark's own check (which raises on the first problem) as a list of problems."""
    try:
        check(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{name}: {exc}"]
    return []


SUITE: list[Benchmark] = [
    Benchmark("speed", "speed", "speed", check_speed, quick_stem="speed_quick"),
    Benchmark("db_write", "db_write", "db_write", check_db_write, quick_stem="db_write_quick"),
    Benchmark("stream", "stream", "stream", check_stream, quick_stem="stream_quick"),
    Benchmark("skab", "skab", "skab", check_skab, quick_stem="skab_quick"),
    Benchmark(
        "skab_windows",
        "skab",
        "skab_vae-window60",
        check_skab,
        quick_args=["--quick", "--detector", "vae-window60"],
        full_args=["--detector", "vae-window60"],
        quick_stem="skab_vae-window60_quick",
    ),
    Benchmark(
        "windows_memory",
        "windows_memory",
        "windows_memory",
        check_windows_memory,
        quick_stem="windows_memory_quick",
    ),
    Benchmark("detection", "detection", "detection", check_detection, quick_stem="detection_quick"),
    Benchmark(
        "train_speed",
        "train_speed",
        "train_speed",
        check_train_speed,
        quick_stem="train_speed_quick",
    ),
]


def check_file(path: Path, check: Callable[[dict[str, Any]], None]) -> None:
    """``--check PATH``: ``check`` the result file at ``path`` and say it is well formed, or exit
    with one line that names the file and what is wrong (not a traceback)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(f"error: {path}: cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {path}: not a JSON result file: {exc}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise SystemExit(f"error: {path}: a result file holds a JSON object, not a {kind}")
    try:
        check(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        what = f"missing or wrong key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise SystemExit(f"error: {path}: {what}") from None
    print(f"{path}: well formed")


def write_result(folder: Path, stem: str, result: dict[str, Any], markdown: str) -> Path:
    """``<stem>.json`` and ``<stem>.md`` in ``folder`` (created); the JSON file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    (folder / f"{stem}.md").write_text(markdown)
    return path


def check_folder(folder: Path, benchmarks: list[Benchmark], *, quick: bool) -> list[str]:
    """Problems with the result files of ``benchmarks`` in ``folder`` (empty: all well formed)."""
    problems: list[str] = []
    for bench in benchmarks:
        path = bench.path(folder, quick=quick)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            problems.append(f"{bench.name}: no result file {path}")
            continue
        except json.JSONDecodeError as exc:
            problems.append(f"{bench.name}: {path} is not JSON ({exc})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{bench.name}: {path} must hold a JSON object")
            continue
        problems += bench.check(data)
    return problems
