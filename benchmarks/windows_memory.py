"""Memory of the window state with many entities: a stream of 100,000 devices.

A windowed model keeps, per entity, its last ``size - 1`` encoded records (float32), their event
times (float64) and a few scalars (``windows.WindowState``). This benchmark feeds a
``WindowState`` the way a stream scorer does (micro-batches of records from many entities) and
measures what the state holds once every entity has a full window:

1. fill: every entity sends ``size`` records (entity-major micro-batches of 5,000 records);
2. steady state: one more record per entity, in random entity order (micro-batches of 5,000
   records from as many different entities: the stream scorer's worst case for grouping).

Figures: the arrays' bytes (``WindowState.nbytes``), everything the state allocated
(``tracemalloc``: arrays plus Python objects), the process's resident memory before and
after, and the serialised size per entity (what ``window_states`` stores). No model is
involved: the state does not depend on it, only on ``size`` and the encoded width.

    python -m benchmarks.windows_memory [--quick] [--entities 100000] [--size 60] [--width 8]

Prints a Markdown table; writes benchmarks/results/windows_memory.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_vae.features import EncodedBatch
from anomaly_vae.windows import WindowSpec, WindowState, entity_to_bytes
from benchmarks.suite import write_result

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 5000
MIB = 1024.0 * 1024.0


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / MIB


def run(entities: int, size: int, width: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names = np.asarray([f"device-{i:06d}" for i in range(entities)], dtype=object)
    state = WindowState(WindowSpec(size=size, lateness_s=0.0), width=width, n_numeric=width)
    rss_before = rss_mib()
    tracemalloc.start()
    started = time.perf_counter()
    per_batch = max(1, BATCH // size)  # entities per fill batch
    for first in range(0, entities, per_batch):
        group = names[first : first + per_batch]
        keys = np.repeat(group, size)
        steps = np.tile(np.arange(size, dtype=np.float64), len(group))
        x = rng.normal(size=(len(keys), width)).astype(np.float32)
        state.assemble(EncodedBatch(x, np.ones_like(x)), keys.tolist(), steps)
    fill_s = time.perf_counter() - started
    _, fill_peak = tracemalloc.get_traced_memory()
    order = rng.permutation(entities)
    started = time.perf_counter()
    for first in range(0, entities, BATCH):
        chosen = order[first : first + BATCH]
        x = rng.normal(size=(len(chosen), width)).astype(np.float32)
        times = np.full(len(chosen), float(size))
        state.assemble(EncodedBatch(x, np.ones_like(x)), names[chosen].tolist(), times)
    steady_s = time.perf_counter() - started
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = rss_mib()
    arrays = state.nbytes()
    blob = len(entity_to_bytes(next(iter(state.entities.values()))))
    records = entities * (size + 1)
    return {
        "entities": entities,
        "window_size": size,
        "encoded_width": width,
        "records_fed": records,
        "rows_kept_per_entity": len(next(iter(state.entities.values())).times),
        "state_arrays_mib": arrays / MIB,
        "state_arrays_bytes_per_entity": arrays / entities,
        "state_traced_mib": held / MIB,
        "state_traced_bytes_per_entity": held / entities,
        "peak_traced_mib": max(peak, fill_peak) / MIB,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "rss_growth_mib": rss_after - rss_before,
        "serialised_bytes_per_entity": blob,
        "fill_records_per_s": entities * size / fill_s,
        "steady_records_per_s": entities / steady_s,
        "seconds": round(fill_s + steady_s, 1),
    }


def markdown(r: dict[str, Any]) -> str:
    rows = [
        ("entities", f"{r['entities']:,}"),
        ("window size / encoded width", f"{r['window_size']} / {r['encoded_width']}"),
        ("records kept per entity", f"{r['rows_kept_per_entity']}"),
        (
            "state arrays (rows + times)",
            f"{r['state_arrays_mib']:.1f} MiB ({r['state_arrays_bytes_per_entity']:.0f} B/entity)",
        ),
        (
            "state, all allocations (tracemalloc)",
            f"{r['state_traced_mib']:.1f} MiB ({r['state_traced_bytes_per_entity']:.0f} B/entity)",
        ),
        ("peak while feeding (tracemalloc)", f"{r['peak_traced_mib']:.1f} MiB"),
        (
            "process RSS before / after",
            f"{r['rss_before_mib']:.0f} / {r['rss_after_mib']:.0f} MiB "
            f"(+{r['rss_growth_mib']:.0f})",
        ),
        ("serialised state per entity (window_states)", f"{r['serialised_bytes_per_entity']} B"),
        (
            "fill rate (entity-major batches, under tracemalloc)",
            f"{r['fill_records_per_s']:,.0f} records/s",
        ),
        (
            "steady rate (5,000 entities per batch, under tracemalloc)",
            f"{r['steady_records_per_s']:,.0f} records/s",
        ),
    ]
    lines = ["Window state with many entities", "", "| what | value |", "| --- | ---: |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", f"{r['machine']}; {r['seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=60)
    parser.add_argument("--width", type=int, default=8, help="encoded columns per record")
    parser.add_argument("--quick", action="store_true", help="10,000 entities")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    entities = 10_000 if args.quick else args.entities
    result = run(entities, args.size, args.width, args.seed)
    result.update(
        quick=args.quick,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=f"{platform.machine()}, numpy {np.__version__}",
    )
    text = markdown(result)
    print(text)
    stem = "windows_memory_quick" if args.quick else "windows_memory"
    write_result(args.out, stem, result, text)


if __name__ == "__main__":
    main()
