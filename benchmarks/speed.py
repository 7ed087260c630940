"""Speed against the limits of the machine, as ratios measured in one run.

1. Model scoring alone (no I/O): rows per second for the reconstruction error, the ELBO with
   K=1 (and the default K), and the importance-weighted estimate with K=16, against a plain
   forward pass (encoder + decoder at the posterior mean) of the same network.
2. Batch scoring of a CSV of N rows x 32 columns, end to end (parse, validate, score, write the
   scores file): rows per second against a bare ``pandas.read_csv`` of the same file, and the
   peak memory of the scoring process (for several file sizes in the full run).

    python -m benchmarks.speed [--quick] [--device cpu|cuda] [--rows 2000000,8000000]

Writes ``benchmarks/results/speed.json`` and ``speed.md`` (``speed_quick.*`` with ``--quick``,
``speed-cuda.*`` on a GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from anomaly_vae import AnomalyVAE, __version__
from anomaly_vae.jobs.batch import scoring_threads
from anomaly_vae.scoring import Scorer
from benchmarks.suite import write_result

RESULTS = Path(__file__).resolve().parent / "results"
N_FEATURES = 32


def synthetic(n: int, *, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(4, N_FEATURES))
    x = rng.normal(size=(n, 4)) @ mix + 0.1 * rng.normal(size=(n, N_FEATURES))
    return pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(N_FEATURES)])


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path)


def fitted_model(device: str) -> AnomalyVAE:
    """A model of the default shape for 32 numeric features; weights from a short fit."""
    return AnomalyVAE(epochs=3, device=device, seed=0).fit(synthetic(20_000, seed=1))


def _rate(fn: Any, rows: int, *, repeat: int, sync: Any) -> float:
    fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - started)
    return rows / best


def model_scoring(model: AnomalyVAE, *, rows: int, repeat: int) -> list[dict[str, Any]]:
    device = model.device_
    frame = synthetic(rows, seed=2)
    clean, _ = model.schema_.validate(frame)
    batch = model.preprocessor_.transform(clean)
    layout = model.preprocessor_.layout
    net = model.model_.to(device).eval()
    x_dev = torch.from_numpy(batch.x).to(device)
    # A GPU wants far larger batches than a CPU to be kept busy.
    bs = 65_536 if device.type == "cuda" else model.config_.scoring.batch_size
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = device.type == "cuda"

    @torch.inference_mode()
    def plain() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            for start in range(0, rows, bs):
                mu, _ = net.encode(x_dev[start : start + bs])
                net.decode(mu)

    def scorer(**kwargs: Any) -> Any:
        return Scorer(
            net, layout, seed=0, device=device, batch_size=bs, mixed_precision=amp, **kwargs
        )

    default_k = model.config_.scoring.n_samples
    cases: list[tuple[str, Any]] = [
        ("plain forward (encoder + decoder at the mean)", plain),
        (
            "reconstruction error",
            lambda: scorer(n_samples=1, mode="recon", contributions=False).score(batch),
        ),
        ("ELBO, K=1", lambda: scorer(n_samples=1, contributions=False).score(batch)),
        (
            f"ELBO, K={default_k} (the default), with attribution",
            lambda: scorer(n_samples=default_k, contributions=True).score(batch),
        ),
        (
            "ELBO, K=8, with attribution",
            lambda: scorer(n_samples=8, contributions=True).score(batch),
        ),
        (
            "importance-weighted, K=16",
            lambda: scorer(n_samples=16, importance_weighted=True, contributions=False).score(
                batch
            ),
        ),
    ]
    base = None
    out = []
    for name, fn in cases:
        rate = _rate(fn, rows, repeat=repeat, sync=sync)
        base = base or rate
        out.append({"case": name, "rows_per_s": rate, "vs_plain_forward": rate / base})
        print(f"  {name:50s} {rate:>14,.0f} rows/s  {rate / base:6.2f}x", flush=True)
    return out


def bare_read(path: Path, chunk_size: int) -> tuple[float, int]:
    started = time.perf_counter()
    n = 0
    for chunk in pd.read_csv(path, chunksize=chunk_size):
        n += len(chunk)
    return time.perf_counter() - started, n


def scoring_subprocess(
    model_dir: Path, path: Path, out: Path, chunk_size: int, device: str
) -> tuple[float, float]:
    """Score ``path`` in a fresh process; (seconds, peak RSS in MiB) of that process."""
    code = (
        "import sys, time, resource\n"
        "from anomaly_vae import load_model\n"
        "from anomaly_vae.jobs.batch import score_csv, CsvScoreWriter\n"
        "from anomaly_vae.sources.csv import CsvSource\n"
        f"m = load_model({str(model_dir)!r}, device={device!r})\n"
        "t = time.perf_counter()\n"
        f"s = score_csv(m, CsvSource({str(path)!r}, chunk_size={chunk_size}),"
        f" sinks=[CsvScoreWriter(__import__('pathlib').Path({str(out)!r}))])\n"
        "el = time.perf_counter() - t\n"
        # VmHWM, the peak of this process's own memory map: ru_maxrss would also count the
        # parent's memory at fork time (Linux keeps it across exec).
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "rss = int(hwm[0].split()[1]) / 1024 if hwm else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(el, rss, s.rows_scored)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    seconds, rss, _scored = result.stdout.split()
    return float(seconds), float(rss)


def runtime_rss_subprocess(model_dir: Path, path: Path, device: str) -> float:
    """Peak RSS (MiB) of a fresh process that loads the model and scores the first 1,000 rows
    of ``path``: the runtime's fixed cost (Python, torch, on a GPU the CUDA context and its
    libraries), to tell apart from what grows with the file."""
    code = (
        "import pandas as pd\n"
        "from anomaly_vae import load_model\n"
        f"m = load_model({str(model_dir)!r}, device={device!r})\n"
        f"m.score(pd.read_csv({str(path)!r}, nrows=1000))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
        "print(int(hwm[0].split()[1]) / 1024 if hwm else 0.0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return float(result.stdout.split()[-1])


def csv_scoring(
    model: AnomalyVAE, sizes: list[int], *, workdir: Path, device: str
) -> list[dict[str, Any]]:
    model_dir = workdir / "model"
    model.save(model_dir)
    chunk = model.config_.scoring.chunk_size
    out = []
    runtime_rss: float | None = None
    for n in sizes:
        path = workdir / f"export-{n}.csv"
        print(f"  writing {n:,} rows x {N_FEATURES} to {path} ...", flush=True)
        block = 1_000_000
        with open(path, "wb"):
            pass
        for start in range(0, n, block):
            part = synthetic(min(block, n - start), seed=10 + start // block)
            if start == 0:
                write_csv(part, path)
            else:
                with open(path, "ab") as handle:
                    handle.write(part.to_csv(index=False, header=False).encode())
        read_s, rows = bare_read(path, chunk)
        if runtime_rss is None:
            runtime_rss = runtime_rss_subprocess(model_dir, path, device)
        score_s, rss = scoring_subprocess(model_dir, path, workdir / "scores.csv", chunk, device)
        row = {
            "rows": rows,
            "file_mib": path.stat().st_size / 2**20,
            "bare_read_rows_per_s": rows / read_s,
            "score_rows_per_s": rows / score_s,
            "ratio": read_s / score_s,
            "peak_rss_mib": rss,
            "runtime_rss_mib": runtime_rss,
        }
        out.append(row)
        print(
            f"  {rows:>10,} rows: bare read_csv {row['bare_read_rows_per_s']:,.0f}/s, scoring end "
            f"to end {row['score_rows_per_s']:,.0f}/s ({row['ratio']:.0%} of bare), peak "
            f"{rss:,.0f} MiB (a process that loaded the model and scored 1,000 rows: "
            f"{runtime_rss:,.0f} MiB)",
            flush=True,
        )
        path.unlink()
    return out


def machine() -> dict[str, Any]:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pandas": pd.__version__,
        "anomaly_vae": __version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Speed ({m['date']}, {m['cpu_count']} CPUs, device {result['device']}"
        f"{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, "
        f"torch {m['torch']}, load {m['load_average'][0]:.1f})",
        "",
        "## Model scoring alone (no I/O)",
        "",
        "| case | rows/s | vs plain forward |",
        "| --- | ---: | ---: |",
    ]
    for row in result["model_scoring"]:
        lines.append(
            f"| {row['case']} | {row['rows_per_s']:,.0f} | {row['vs_plain_forward']:.2f} |"
        )
    lines += [
        "",
        "## Batch scoring of a CSV, end to end, against a bare pandas.read_csv",
        "",
        "| rows | file MiB | bare read rows/s | scoring rows/s | ratio | peak RSS MiB "
        "| runtime alone MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["csv_scoring"]:
        lines.append(
            f"| {row['rows']:,} | {row['file_mib']:,.0f} | {row['bare_read_rows_per_s']:,.0f} | "
            f"{row['score_rows_per_s']:,.0f} | {row['ratio']:.0%} | {row['peak_rss_mib']:,.0f} | "
            f"{row.get('runtime_rss_mib') or 0:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rows", default=None, help="CSV sizes, e.g. 2000000,8000000")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here")
    sizes = (
        [int(s) for s in args.rows.split(",")]
        if args.rows
        else ([200_000] if args.quick else [2_000_000, 8_000_000])
    )
    score_rows = 50_000 if args.quick else (4_000_000 if args.device == "cuda" else 200_000)
    # The threads a batch job scores with (every core but one): torch's default of all cores
    # beside other work measures the oversubscription, not the scorer.
    torch.set_num_threads(scoring_threads(None))
    print(
        f"speed benchmark on {args.device} ({'quick' if args.quick else 'full'}, "
        f"{torch.get_num_threads()} torch thread(s))",
        flush=True,
    )
    model = fitted_model(args.device)
    print("model scoring alone:", flush=True)
    scoring = model_scoring(model, rows=score_rows, repeat=2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-speed-") as tmp:
        print("CSV batch scoring:", flush=True)
        csv_rows = csv_scoring(model, sizes, workdir=Path(tmp), device=args.device)
    result = {
        "benchmark": "speed",
        "quick": args.quick,
        "device": args.device,
        "machine": machine(),
        "model_scoring": scoring,
        "csv_scoring": csv_rows,
    }
    # A quick run never replaces the committed full-size result (it wrote speed.json too).
    suffix = ("" if args.device == "cpu" else f"-{args.device}") + ("_quick" if args.quick else "")
    path = write_result(args.out, f"speed{suffix}", result, to_markdown(result))
    print(f"wrote {path} and .md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
