"""Exactly once under repeated SIGKILLs: the stream scorer as users run it.

    python -m benchmarks.chaos [--messages 60000] [--kills 6] [--database sqlite|postgresql]

Produces ``--messages`` pump records (one in 997 replaced by broken JSON, a poison message) to
an 8-partition topic on the dev broker, then runs ``anomaly-vae stream --processes 2`` and
SIGKILLs its whole process group at random times (8 to 20 s after each start: the group join
takes several seconds), ``--kills`` times, before
a last run that reads the topic to its end. Every message must then be in the database exactly
once: a score row, or a dead letter for the poison, never both, never twice. Prints the counts
and exits 1 on any difference. Not part of ``make bench`` (it takes minutes, and what it proves
is correctness, which the tests check with one kill; this is many).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from anomaly_vae import AnomalyVAE
from anomaly_vae.config import PipelineConfig
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import DevBroker
from benchmarks.stream import (
    create_topic,
    migrated,
    payloads,
    postgres_scratch,
    produce,
    stream_command,
)

POISON_EVERY = 997
PARTITIONS = 8


def counts(url: str) -> dict[str, int]:
    from sqlalchemy import text

    from anomaly_vae.storage.engine import create_database_engine, parse_database_url

    engine = create_database_engine(parse_database_url(url))
    try:
        with engine.connect() as connection:
            scores, distinct_scores = connection.execute(
                text("SELECT count(*), count(DISTINCT source_key) FROM scores")
            ).one()
            dead, distinct_dead = connection.execute(
                text("SELECT count(*), count(DISTINCT source_key) FROM dead_letters")
            ).one()
            both = connection.execute(
                text(
                    "SELECT count(*) FROM scores s JOIN dead_letters d "
                    "ON s.source_key = d.source_key"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return {
        "scores": int(scores),
        "distinct_scores": int(distinct_scores),
        "dead_letters": int(dead),
        "distinct_dead_letters": int(distinct_dead),
        "in_both": int(both),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=60_000, help="messages produced (default 60,000)"
    )
    parser.add_argument(
        "--kills", type=int, default=6, help="SIGKILLs of the scorer processes (default 6)"
    )
    parser.add_argument(
        "--database", choices=("sqlite", "postgresql"), default="sqlite", help="results database"
    )
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin URL where a scratch database is created (--database postgresql)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the times between kills")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.kills < 0:
        parser.error("--messages must be >= 1 and --kills >= 0")
    rng = random.Random(args.seed)
    cfg = PipelineConfig(name="chaos-pumps")
    cfg.columns.id = ["event_id"]
    cfg.columns.ignore = ["label", "anomaly_kind"]
    cfg.columns.entity = "pump_id"
    cfg.columns.categorical = ["station"]
    cfg.training.epochs = 2
    train = make_pump_data(5_000, seed=1).drop(columns=["ts"])
    model = AnomalyVAE(config=cfg, verbose=False).fit(train)
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-chaos-") as tmp, DevBroker() as broker:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        topic = create_topic(broker.bootstrap, partitions=PARTITIONS, prefix="chaos")
        values = payloads(args.messages, seed=3)
        poison = range(0, args.messages, POISON_EVERY)
        for i in poison:
            values[i] = b"{broken json"
        produce(broker.bootstrap, topic, values)
        drop = None
        if args.database == "postgresql":
            url, drop = postgres_scratch(args.postgres)
            migrated(url)
        else:
            url = migrated(f"sqlite:///{Path(tmp) / 'results.db'}")
        group = f"chaos-{uuid.uuid4().hex[:8]}"
        command = stream_command(
            model_dir,
            url,
            broker.bootstrap,
            topic,
            group,
            "--processes",
            "2",
            "--batch-size",
            "2000",
        )
        try:
            for kill in range(args.kills):
                process = subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                time.sleep(rng.uniform(8.0, 20.0))
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                stored = counts(url)
                print(
                    f"SIGKILL {kill + 1}/{args.kills}: {stored['scores']:,} score rows, "
                    f"{stored['dead_letters']:,} dead letters so far",
                    flush=True,
                )
            last = subprocess.run(
                [*command, "--idle-timeout", "8"], capture_output=True, text=True, timeout=1800
            )
            if last.returncode != 0:
                print(f"the last run failed: {last.stderr[-2000:]}", file=sys.stderr)
                return 1
            stored = counts(url)
        finally:
            if drop is not None:
                drop()
    want_dead = len(poison)
    want_scores = args.messages - want_dead
    print(
        f"{args.database}: {stored['scores']:,} score rows ({stored['distinct_scores']:,} "
        f"distinct), {stored['dead_letters']:,} dead letters ({stored['distinct_dead_letters']:,} "
        f"distinct), {stored['in_both']} in both; expected {want_scores:,} and {want_dead:,}"
    )
    exact = (
        stored["scores"] == stored["distinct_scores"] == want_scores
        and stored["dead_letters"] == stored["distinct_dead_letters"] == want_dead
        and stored["in_both"] == 0
    )
    print("every message stored exactly once" if exact else "NOT exactly once")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
