"""Run every benchmark and check that each wrote a well-formed result.

    python -m benchmarks [--quick] [--out DIR] [--only speed,stream]

``make bench`` runs the full suite into ``benchmarks/results/``; ``make bench-quick`` (CI) runs
the quick modes into a scratch folder. Numbers are printed, never asserted: what fails the run
is a benchmark that crashes or a result file that is missing or malformed (see ``suite.py``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.suite import RESULTS, SUITE, check_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the quick modes (CI, < 10 min), into *_quick.* files"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: benchmarks/results)"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated, from: {', '.join(b.name for b in SUITE)}"
    )
    args = parser.parse_args(argv)
    out = args.out or RESULTS
    wanted = [name for name in args.only.split(",") if name]
    unknown = sorted(set(wanted) - {b.name for b in SUITE})
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {[b.name for b in SUITE]}")
    chosen = [b for b in SUITE if not wanted or b.name in wanted]
    failed: list[str] = []
    for bench in chosen:
        command = [sys.executable, "-m", f"benchmarks.{bench.module}", "--out", str(out)]
        command += bench.quick_args if args.quick else bench.full_args
        print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command)
        print(f"== {bench.name}: exit {code} in {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(f"{bench.name} exited with {code}")
    problems = check_folder(out, chosen, quick=args.quick)
    for line in failed + problems:
        print(f"FAILED: {line}", file=sys.stderr)
    if failed or problems:
        return 1
    print(f"all {len(chosen)} benchmark results in {out} are well formed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
