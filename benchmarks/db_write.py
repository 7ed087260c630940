"""Bulk write speed of the results database against a bare ``executemany``, in one run.

For each database (a SQLite file in WAL mode; PostgreSQL when reachable) on ONE connection:

- ``bare executemany``: the driver's ``cursor.executemany`` of ready-made tuples (timestamps and
  JSON already text) with the same ``INSERT ... ON CONFLICT DO NOTHING`` into the same
  ``scores`` table, then commit: the floor the database itself sets.
- ``write_results``: the repository's write path from a DataFrame as the batch sink hands it
  over, everything included: turning columns into rows, scores, the alert rule (about 1 % of
  the rows cross, scattered over 50 entities: with the default rule nearly every crossing opens
  an alert and the next record resolves it, some 1,000 of each per batch, a pessimistic case),
  the run's counters, commit.
- ``write_results, replay``: the same batch again (every row already there: a crash re-run).
- ``Core executemany (dicts)``: ``connection.execute(insert(Score), list_of_dicts)``, for
  reference (type processing per value in Python).

Repetitions alternate between the methods, fresh keys each time; medians are reported.

    python -m benchmarks.db_write [--rows 100000] [--repeat 3] [--postgres URL]

Prints a Markdown table and writes benchmarks/results/db_write.json (db_write_quick.json with
--quick).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import Connection, make_url

from anomaly_vae.scoring import top_features_json
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.engine import create_database_engine, parse_database_url
from anomaly_vae.storage.migrate import upgrade
from anomaly_vae.storage.tables import Score

RESULTS = Path(__file__).resolve().parent / "results"
FEATURES = ["station", "rpm", "flow", "pressure_in", "pressure_out", "current", "temperature"]


def make_records(n: int, *, tag: str, seed: int) -> pd.DataFrame:
    """A batch as the database sink builds it from a scored chunk."""
    rng = np.random.default_rng(seed)
    prefix = repo.csv_source_key_prefix(secrets.token_hex(32))
    scores = rng.gamma(4.0, 2.0, n)
    flagged = scores > np.quantile(scores, 0.99)
    shares = rng.dirichlet(np.ones(len(FEATURES)), n).astype(np.float32)
    severity = np.full(n, None, dtype=object)
    severity[flagged] = "warning"
    return pd.DataFrame(
        {
            "source_key": prefix + np.arange(n).astype(str).astype(object) + tag,
            "entity_key": "P" + (np.arange(n) % 50).astype(str).astype(object),
            "event_time": pd.date_range("2026-11-01", periods=n, freq="s", tz="UTC"),
            "score": scores,
            "recon_error": rng.random(n),
            "percentile": rng.random(n) * 100,
            "is_anomaly": flagged,
            "severity": severity,
            "top_features": top_features_json(shares, FEATURES, 3),
        }
    )


def bare_rows(
    frame: pd.DataFrame, connection: Connection, run_id: int, model_id: int
) -> list[tuple[Any, ...]]:
    """Tuples exactly as the driver takes them, built before the clock starts."""
    sqlite = connection.dialect.name == "sqlite"
    fmt = "%Y-%m-%d %H:%M:%S.%f" + ("" if sqlite else "+00:00")
    now = datetime.now(timezone.utc).strftime(fmt)
    flags = frame["is_anomaly"].to_numpy()
    n = len(frame)
    return list(
        zip(
            frame["source_key"].tolist(),
            [model_id] * n,
            [run_id] * n,
            frame["entity_key"].tolist(),
            frame["event_time"].dt.strftime(fmt).tolist(),
            [now] * n,
            frame["score"].tolist(),
            frame["recon_error"].tolist(),
            frame["percentile"].tolist(),
            flags.astype(int).tolist() if sqlite else flags.tolist(),
            frame["severity"].tolist(),
            frame["top_features"].tolist(),
            [None] * n,  # window_status: a row-wise model's
            strict=True,
        )
    )


def core_dicts(frame: pd.DataFrame, run_id: int, model_id: int) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    out = frame.assign(
        model_id=model_id,
        run_id=run_id,
        scored_at=now,
        top_features=[json.loads(t) for t in frame["top_features"]],
    )
    out["event_time"] = list(frame["event_time"].dt.to_pydatetime())
    return out.to_dict("records")


def measure(url: str, rows: int, repeat: int) -> dict[str, Any]:
    engine = create_database_engine(parse_database_url(url))
    upgrade(engine)
    timings: dict[str, list[float]] = {
        "bare executemany": [],
        "write_results": [],
        "write_results, replay": [],
        "Core executemany (dicts)": [],
    }
    with engine.connect() as connection:
        with connection.begin():
            model_id = repo.register_model(connection, model=_model())
            run_id = repo.start_run(
                connection, kind="batch", source="bench", model_id=model_id, threshold_value=1.0
            )
        sql = repo.insert_statement(connection.dialect.name, "scores")
        for i in range(repeat):
            # bare
            tuples = bare_rows(make_records(rows, tag="b", seed=i), connection, run_id, model_id)
            connection.rollback()
            raw = connection.connection.driver_connection
            assert raw is not None
            gc.collect()  # each method starts from the same heap: nothing of the last one's
            started = time.perf_counter()
            cursor = raw.cursor()
            cursor.executemany(sql, tuples)
            raw.commit()
            timings["bare executemany"].append(time.perf_counter() - started)
            cursor.close()
            del tuples
            # ours
            frame = make_records(rows, tag="w", seed=i)
            gc.collect()
            started = time.perf_counter()
            counts = repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=frame, alert_details=False
            )
            timings["write_results"].append(time.perf_counter() - started)
            assert counts.scores_inserted == rows, counts
            started = time.perf_counter()
            again = repo.write_results(
                connection, run_id=run_id, model_id=model_id, records=frame, alert_details=False
            )
            timings["write_results, replay"].append(time.perf_counter() - started)
            assert again.scores_inserted == 0, again
            # Core, for reference
            dicts = core_dicts(make_records(rows, tag="c", seed=i), run_id, model_id)
            gc.collect()
            started = time.perf_counter()
            with connection.begin():
                connection.execute(insert(Score), dicts)
            timings["Core executemany (dicts)"].append(time.perf_counter() - started)
            del dicts, frame
    engine.dispose()
    medians = {k: statistics.median(v) for k, v in timings.items()}
    bare = medians["bare executemany"]
    return {
        "rows": rows,
        "repeat": repeat,
        "methods": {
            k: {
                "median_s": round(v, 4),
                "rows_per_s": round(rows / v),
                "vs_bare": round(bare / v, 3),
                "all_s": [round(t, 4) for t in timings[k]],
            }
            for k, v in medians.items()
        },
    }


def _model() -> repo.ModelVersion:
    return repo.ModelVersion(
        name="bench",
        content_hash=secrets.token_hex(32),
        path=None,
        score_kind="neg_elbo",
        threshold=1.0,
        threshold_quantile=0.995,
        feature_schema={},
        training_summary={},
        calibration={},
        package_version=None,
        created_at=None,
    )


def postgres_database(admin: str) -> tuple[str, Any] | None:
    url = make_url(admin)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"anomaly_vae_bench_{secrets.token_hex(4)}"
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as exc:
        print(f"PostgreSQL not measured: {str(exc.orig).splitlines()[0]}", file=sys.stderr)
        engine.dispose()
        return None

    def drop() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows per batch (100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats, the median kept (3)")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "ANOMALY_VAE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="an admin URL: a scratch database is created there and dropped after",
    )
    args = parser.parse_args(argv)
    args.rows = args.rows or (20_000 if args.quick else 100_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    results: dict[str, Any] = {
        "benchmark": "db_write",
        "quick": args.quick,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "databases": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        results["databases"]["SQLite (WAL, synchronous=NORMAL)"] = measure(
            f"sqlite:///{folder}/bench.db", args.rows, args.repeat
        )
    created = postgres_database(args.postgres) if args.postgres else None  # "" skips it
    if created is not None:
        url, drop = created
        try:
            with create_engine(url).connect() as connection:
                version = connection.exec_driver_sql("SHOW server_version").scalar()
            results["databases"][f"PostgreSQL {version}"] = measure(url, args.rows, args.repeat)
        finally:
            drop()
    print(f"\n{args.rows:,} score rows per batch, median of {args.repeat}, one connection\n")
    print("| database | method | rows/s | vs bare executemany |")
    print("| --- | --- | ---: | ---: |")
    for db, result in results["databases"].items():
        for method, m in result["methods"].items():
            print(f"| {db} | {method} | {m['rows_per_s']:,} | {100 * m['vs_bare']:.0f} % |")
    args.out.mkdir(parents=True, exist_ok=True)
    # A quick run never replaces the committed full-size result (it wrote db_write.json too).
    path = args.out / ("db_write_quick.json" if args.quick else "db_write.json")
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
