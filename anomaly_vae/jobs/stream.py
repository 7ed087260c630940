"""The stream scorer's run loop: Kafka micro-batches in, scores, alerts and rejects out.

Order of a batch, which is what makes it lose nothing and double nothing:

1. poll a micro-batch (``max_batch_records`` / ``max_batch_wait_ms``);
2. decode and validate; every message becomes either a scored record or a reject;
3. score (one function for batch and stream: ``AnomalyVAE.score_batch``);
4. the sink writes scores, alerts and rejects in one transaction, idempotently keyed by
   ``topic:partition:offset`` + model version; a failure here is retried, nothing is committed;
5. alerts and rejects are published to their topics when configured (at least once: the
   alert events were written to the outbox in the batch's transaction, and their rows are
   deleted only once the broker has them; a scorer starts by publishing what a killed one left);
6. only then are the offsets committed. A crash anywhere before replays at most this batch, and
   the idempotent keys turn the replay into no duplicate rows.

Stop conditions (``max_messages``, ``idle_timeout``, a stop event set by SIGTERM / SIGINT) make
the endless loop testable; the batch in hand is always finished and committed first.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from queue import Empty, Queue
from types import FrameType
from typing import Any, Protocol

import numpy as np
import orjson
import pandas as pd

from anomaly_vae.config import PipelineConfig
from anomaly_vae.estimator import AnomalyVAE, ScoreBatch
from anomaly_vae.features import _short
from anomaly_vae.sources.kafka import (
    ENTITY,
    EVENT_TIME,
    SOURCE_KEY,
    DecodedBatch,
    client_options,
    connect_with_retry,
    dead_letter_message,
    decode_messages,
    flatten,
    message_text,
    messages_by_key,
    new_client,
    next_offsets,
    options_for,
    quiet_slow_task_warning,
    redacted,
    secret_values,
)
from anomaly_vae.thresholds import MOST_CROSSED_MIN_RECORDS, AlertRule, most_crossed
from anomaly_vae.training import torch_threads
from anomaly_vae.windows import TIME_YEARS, WindowCounters, WindowState, out_of_range_time

logger = logging.getLogger(__name__)


@dataclass
class StreamBatch:
    """One micro-batch, scored: what a sink writes.

    ``records`` holds the valid records (fields plus ``_source_key``, ``_entity``,
    ``_event_time``), aligned row for row with ``scores.scores``; ``rejects`` is indexed by
    source key with ``reason``, ``raw``, ``topic``, ``partition``, ``offset``.
    """

    records: pd.DataFrame
    scores: ScoreBatch
    rejects: pd.DataFrame
    threshold: float
    threshold_version: int | None
    critical: float | None = None
    threshold_id: int | None = None
    alert_rule: dict[str, Any] | None = None
    # A windowed model: the serialised window state of each entity this batch changed, to be
    # made durable with its scores (see windows.py and StreamScorer._window_state).
    window_states: dict[str, bytes] | None = None


@dataclass(frozen=True)
class AlertMessage:
    """An alert event for the alerts topic: its key and JSON value (``event_id`` included).
    ``outbox_id``: the outbox row that keeps it until the broker has it, whose order it is
    published in; None from a sink without an outbox (published once, after the commit)."""

    key: bytes | None
    value: bytes
    outbox_id: int | None = None


@dataclass
class WriteResult:
    scores_written: int = 0
    rejects_written: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    # The alert events as messages, in the order they happened; when given they are what is
    # published (else ``alerts``, each keyed by its entity or model).
    messages: list[AlertMessage] = field(default_factory=list)


class StreamSink(Protocol):
    """Where scored batches go. ``write`` returns only once the batch is durable.

    A sink with an alert outbox (``storage.stream.StreamDatabaseSink`` given ``outbox=True``)
    also has ``outbox_pending(after_id, limit) -> list[AlertMessage]`` (the model's events not
    yet published, oldest first), ``outbox_published(ids)`` (delete them), ``outbox_turn()``
    (a context held while publishing what it holds at start) and ``outbox_waiting() -> int``
    (how many of the model's events wait there: the progress line says it); the scorer looks
    for them by name."""

    def write(self, batch: StreamBatch) -> WriteResult: ...

    def close(self) -> None: ...


@dataclass
class ThresholdInForce:
    """``version`` counts the model's threshold versions; ``id`` is the stored row's id;
    ``alert_rule`` is the version's ``AlertRule.to_dict()`` (None: the default rule)."""

    value: float
    version: int | None = None
    critical: float | None = None
    id: int | None = None
    alert_rule: dict[str, Any] | None = None


def _other_changes(before: ThresholdInForce, after: ThresholdInForce) -> str:
    """What a new threshold version changes beside the warning level, for the log line: a
    version changing only the alert rule or the critical level read "now 3 (was 3)"."""
    said = []
    if after.critical != before.critical:
        shown = ["none" if c is None else f"{c:.6g}" for c in (after.critical, before.critical)]
        said.append(f"critical {shown[0]} (was {shown[1]})")
    rules = [AlertRule.from_dict(r) for r in (after.alert_rule, before.alert_rule)]
    if rules[0] != rules[1]:
        said.append(f"alert rule {rules[0].describe()} (was {rules[1].describe()})")
    return "".join(f"{'; ' if i else ': '}{text}" for i, text in enumerate(said))


class ThresholdSource(Protocol):
    """Gives the threshold in force for a model; the scorer asks again every few seconds."""

    def current(self) -> ThresholdInForce: ...


@dataclass
class StreamStats:
    consumed: int = 0
    scored: int = 0
    flagged: int = 0
    rejected: int = 0
    gaps: int = 0  # scored with a missing feature value filled in
    # Scored records already stored (a replay: another group, a reset offset): kept as first
    # scored, their stored is_anomaly / severity not rewritten whatever this session flagged.
    already_stored: int = 0
    batches: int = 0
    commits_failed: int = 0
    write_retries: int = 0
    lag: int | None = None
    started: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first batch began
    last_batch_at: float | None = None  # monotonic time the last batch was durable
    latency_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms[-10_000:], dtype=float)
        return {
            "consumed": self.consumed,
            "scored": self.scored,
            "flagged": self.flagged,
            "rejected": self.rejected,
            "gaps": self.gaps,
            "batches": self.batches,
            "commits_failed": self.commits_failed,
            "write_retries": self.write_retries,
            "lag": self.lag,
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        }


class StreamScorer:
    """Consumes ``cfg.kafka.topic`` in group ``cfg.kafka.group_id`` and scores it with ``model``."""

    def __init__(
        self,
        model: AnomalyVAE,
        cfg: PipelineConfig,
        sink: StreamSink,
        *,
        thresholds: ThresholdSource | None = None,
        consumer_factory: Callable[[], Any] | None = None,
        producer_factory: Callable[[], Any] | None = None,
        on_metrics: Callable[[StreamStats, float], None] | None = None,
    ) -> None:
        if not cfg.kafka.topic:
            from anomaly_vae.errors import ConfigError

            raise ConfigError("no Kafka topic to read: set kafka.topic in the pipeline or --topic")
        cfg.kafka.check_output_topics()
        self.model = model
        self.cfg = cfg
        self.sink = sink
        self.thresholds = thresholds
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        # Called every metrics interval with the counters and the recent rate (records/s):
        # how lag and latency, which only this process knows, reach the database and the API.
        self._on_metrics = on_metrics
        # (scored, flagged) at the last progress line, and whether most records of an interval
        # crossed the threshold (said once when it starts, once when it ends).
        self._interval_base = (0, 0)
        self._mostly_flagged = False
        self.stop_event = threading.Event()
        self.stats = StreamStats()
        self._threshold = ThresholdInForce(value=model.threshold_)
        self._threshold_checked = -math.inf
        self._pending: dict[tuple[str, int], int] = {}
        # Records handed to the worker; less stats.consumed (written), those still in flight.
        self._submitted = 0
        self._consumer: Any = None
        self._producer: Any = None
        self._worker: _BatchWorker | None = None
        # The alert outbox: events may wait there (left by a scorer killed after its commit,
        # or refused by the broker) and go out, oldest first, before this scorer's next ones;
        # the newest row this scorer wrote; rows published whose delete failed (retried).
        self._outbox_behind = True
        self._outbox_newest = 0
        self._outbox_unremoved: list[int] = []
        # A windowed model's per-entity state (None for a row-wise model); forgotten when
        # partitions move, then read back from the sink for each entity as it comes.
        self._windows = model.new_window_state()
        self._windows_moved = threading.Event()
        # A model without windows: the order of numeric dates the first batch holding some
        # decided, for the rest of the run (``_date_order``).
        self._run_day_first: bool | None = None
        # Entities whose state a batch on its way to the sink holds (how many such batches):
        # never evicted from memory before that batch is written (``_window_state``).
        self._unwritten: collections.Counter[str] = collections.Counter()
        self._unwritten_lock = threading.Lock()
        self.windows_evicted = 0
        # Set from partitions revoked to partitions assigned (kafka-python's IO thread), and
        # when the last assignment came (monotonic): the idle clock starts again from there.
        self._rebalancing = threading.Event()
        self._assigned_at = -math.inf
        self._warned_split = False
        # Records whose time field held something that is not a time (a model without
        # windows stores the Kafka timestamp for them; a windowed one rejects them).
        self.unread_times = 0

    # ------------------------------------------------------------------ lifecycle
    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: finish the batch in hand, commit, close."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            logger.info("signal %d: finishing the batch in hand, then stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self) -> None:
        self.stop_event.set()

    def _connect(self, *, give_up_after_s: float | None = None) -> bool:
        """Connect (retrying while the broker is not up) and subscribe; False when stopped
        meanwhile. ``give_up_after_s``: raise ConfigError once the broker has not answered for
        that long (a session with an idle timeout must end, not wait for a broker for good)."""
        kafka = self.cfg.kafka
        options = client_options(kafka)
        logger.info("connecting to Kafka: %s", redacted(options))

        def make_consumer() -> Any:
            if self._consumer_factory is not None:
                return self._consumer_factory()
            from kafka import KafkaConsumer

            return new_client(
                KafkaConsumer,
                **options_for(options, KafkaConsumer),
                group_id=kafka.group_id,
                enable_auto_commit=False,
                auto_offset_reset=kafka.auto_offset_reset,
                session_timeout_ms=kafka.session_timeout_ms,
                # At most a third of the session timeout, as Kafka advises: a shorter
                # --session-timeout-ms alone must not make the client refuse its settings.
                heartbeat_interval_ms=min(
                    kafka.heartbeat_interval_ms, max(100, kafka.session_timeout_ms // 3)
                ),
                max_poll_interval_ms=kafka.max_poll_interval_ms,
                max_poll_records=kafka.max_batch_records,
            )

        # A client's constructor returns within its bootstrap timeout (connected or not);
        # one still waiting well after it is stuck (a TLS handshake with a plaintext listener).
        bootstrap_s = float(options.get("bootstrap_timeout_ms", 5000)) / 1000.0
        stalled_after_s = bootstrap_s + 15.0
        if give_up_after_s is not None:  # --idle-timeout: no longer than it, give or take
            stalled_after_s = min(stalled_after_s, max(give_up_after_s, bootstrap_s + 2.0))
        hidden = secret_values(options)
        protocol = str(options.get("security_protocol", "PLAINTEXT"))
        hint = (
            f"; and kafka.client's security settings (security_protocol {protocol}: "
            "kafka-python's lines above give the cause)"
            if protocol != "PLAINTEXT"
            else ""
        )
        # Both clients are connected with the same patience and the same hints.
        connect = functools.partial(
            connect_with_retry,
            bootstrap=kafka.bootstrap_servers,
            stop=self.stop_event,
            backoff_max_s=kafka.connect_backoff_max_s,
            give_up_after_s=give_up_after_s,
            stalled_after_s=stalled_after_s,
            settings_hint=hint,
            hidden=hidden,
            client_names=", ".join(map(str, kafka.client)),
        )
        consumer = connect(make_consumer, what="consumer")
        if consumer is None:
            return False
        self._consumer = consumer
        # Before subscribing: a broker that creates topics on demand creates it on subscription.
        self._say_if_topic_missing()
        consumer.subscribe([kafka.topic], listener=_rebalance_listener(self))
        if kafka.alerts_topic or kafka.dead_letter_topic:

            def make_producer() -> Any:
                if self._producer_factory is not None:
                    return self._producer_factory()
                from kafka import KafkaProducer

                return new_client(
                    KafkaProducer, **options_for(options, KafkaProducer), acks="all", linger_ms=5
                )

            self._producer = connect(make_producer, what="producer")
        return True

    def run(
        self, *, max_messages: int | None = None, idle_timeout: float | None = None
    ) -> StreamStats:
        """Run until a stop condition; return the counters.

        This thread polls Kafka and commits; a worker thread scores and writes, up to
        ``IN_FLIGHT`` batches behind, so that consuming, scoring and writing overlap. Offsets
        are committed only for batches the worker has made durable, in order.

        With ``idle_timeout``, a broker that does not answer for that long stops the session
        with a ConfigError, as a topic without messages for that long stops it.
        """
        _quiet_slow_listener_warning()  # before the first client: a join warned already
        try:
            connected = self._connect(give_up_after_s=idle_timeout)
        except BaseException as exc:
            self._close(exc)  # the session's run is finished (failed), not left 'running'
            raise
        if not connected:  # stopped (a signal) while waiting for the broker
            self._close()
            return self.stats
        try:
            self._start_outbox()
        except BaseException as exc:
            self._close(exc)
            raise
        consumer = self._consumer
        kafka = self.cfg.kafka
        worker = self._worker = _BatchWorker(self)
        started = last_record = time.monotonic()
        assigned = paused = said_where = rechecked = False
        assignment: set[Any] = set()
        polled_total = 0
        # The idle clock starts once partitions are assigned (a group join takes a while).
        # A member killed without leaving holds its partitions until its session times out.
        join_grace = 4.0 * kafka.session_timeout_ms / 1000.0
        last_log = time.monotonic()
        logged_at = (0, time.monotonic())
        failure: BaseException | None = None
        try:
            # Polling and writing need a core too; two torch threads beside them run slower.
            with torch_threads(kafka.num_threads):
                while not self.stop_event.is_set():
                    self._collect(worker)
                    if worker.error is not None:
                        break
                    remaining = None if max_messages is None else max_messages - polled_total
                    if remaining is not None and remaining <= 0:
                        break
                    limit = (
                        kafka.max_batch_records
                        if remaining is None
                        else min(remaining, kafka.max_batch_records)
                    )
                    if worker.full():
                        # Keep polling (group membership) but fetch nothing until the worker
                        # catches up, e.g. while the database is unreachable.
                        if not paused:
                            consumer.pause(*consumer.assignment())
                            paused = True
                        consumer.poll(timeout_ms=50, max_records=1)
                        worker.wait_for_room(timeout=0.2)
                        continue
                    if paused:
                        consumer.resume(*consumer.paused())
                        paused = False
                    polled = consumer.poll(timeout_ms=kafka.max_batch_wait_ms, max_records=limit)
                    records = flatten(polled)
                    now = time.monotonic()
                    current = set(consumer.assignment())
                    if current != assignment:
                        # A new assignment (a rebalance, e.g. another group member joining or
                        # leaving) restarts the idle clock: the records may not flow yet.
                        assignment = current
                        assigned = bool(current)
                        started = last_record = now
                        if current and not said_where:
                            said_where = True
                            self._say_where_reading_starts(current)
                    # A rebalance that gave back the same partitions changes no assignment.
                    last_record = max(last_record, self._assigned_at)
                    if not assigned and not rechecked and now - started >= join_grace:
                        rechecked = True  # still nothing: was the topic created meanwhile?
                        self._say_if_topic_missing()
                    if records:
                        last_record = now
                        polled_total += len(records)
                        self._submitted += len(records)
                        worker.submit(records)
                    elif worker.in_flight or self._rebalancing.is_set():
                        # Not idle while a batch is still being written, nor while the group
                        # rebalances: the poll that ran it took seconds, and a scorer stopped
                        # for 'no message' half way through it.
                        last_record = now
                    elif idle_timeout is not None and (
                        (assigned and now - last_record >= idle_timeout)
                        or (not assigned and now - started >= idle_timeout + join_grace)
                    ):
                        if assigned:
                            logger.info("no message for %.1f s: stopping", idle_timeout)
                        elif not self._say_if_topic_missing(then="stopping"):
                            logger.warning(
                                "no partition of %s was assigned to this scorer in %.1f s: "
                                "stopping (the group %r may be rebalancing, or its other "
                                "members hold every partition)",
                                kafka.topic,
                                now - started,
                                kafka.group_id,
                            )
                        break
                    if self._pending:
                        self._commit()
                    if now - last_log >= kafka.metrics_interval_s:
                        logged_at = self._log_metrics(logged_at)
                        last_log = now
                worker.finish()  # the batches in hand are scored, written and then committed
                self._collect(worker)
                if isinstance(worker.error, _StoppedError):
                    logger.warning(
                        "stopped while the database was unreachable: %d records were not committed "
                        "and will be scored again on restart",
                        worker.error.records,
                    )
                elif worker.error is not None:
                    raise worker.error
        except BaseException as exc:
            failure = exc
            raise
        finally:
            worker.abort()
            self._close(failure)
        return self.stats

    def _broker_topics(self) -> set[str] | None:
        """The broker's topic names, asked by a client of its own (no group: it joins and
        commits nothing) in a daemon thread, so that a metadata request that never finishes
        cannot hold the scorer or its consumer; None when the broker does not say within
        ``TOPIC_CHECK_TIMEOUT_S``, when the scorer is stopped (before or meanwhile), or when a
        test's stand-in consumer has no broker to ask."""
        if self._consumer_factory is not None or self.stop_event.is_set():
            return None
        from kafka import KafkaConsumer

        options = options_for(client_options(self.cfg.kafka), KafkaConsumer)
        # No group, so no auto-commit: said here, kafka-python warns "group_id is None:
        # disabling auto-commit" otherwise, at every start of a scorer given a group.
        options["enable_auto_commit"] = False
        found: list[set[str]] = []
        networks: list[Any] = []  # the check client's network: closed when it is given up on

        def ask() -> None:
            try:
                client = new_client(KafkaConsumer, networks=networks, **options)
                try:
                    found.append({str(t) for t in client.topics()})
                finally:
                    client.close()
            except Exception as exc:  # a check, never a reason to stop
                logger.debug("could not list the broker's topics: %s", first_line(exc))

        thread = threading.Thread(target=ask, name="topic-check", daemon=True)
        thread.start()
        deadline = time.monotonic() + TOPIC_CHECK_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline and not self.stop_event.is_set():
            thread.join(0.1)  # a stop (SIGTERM) meanwhile is not kept waiting
        if thread.is_alive():
            # Given up on: its client went on reconnecting to a broker that never answered, a
            # thread left behind for the life of the process. Closing its network ends the
            # wait (the thread's call raises, and the thread ends).
            for network in list(networks):
                try:
                    network.close()
                except Exception as exc:  # best effort: the check is over either way
                    logger.debug("closing the topic check's client: %s", first_line(exc))
        return found[0] if found else None

    def _say_if_topic_missing(self, *, then: str = "waiting for it") -> bool:
        """Warn when the topic is not on the broker: a name mistyped, or a topic not created
        yet, on a broker that does not create topics on demand (``auto.create.topics.enable``
        off, as most production clusters run), otherwise left the scorer waiting without a
        word. Names close to it are suggested. True when missing; False when present or
        when the broker does not say (the topic list may need rights the scorer lacks)."""
        topic = self.cfg.kafka.topic
        if topic is None:
            return False
        topics = self._broker_topics()
        if topics is None or topic in topics:
            return False
        visible = sorted(t for t in topics if not t.startswith("__"))
        close = difflib.get_close_matches(topic, visible, n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(repr(t) for t in close) + "?"
        elif visible:
            shown = ", ".join(visible[:10]) + (
                f" and {len(visible) - 10} more" if len(visible) > 10 else ""
            )
            hint = f"the broker has: {shown}"
        else:
            hint = "the broker has no topic yet"
        logger.warning(
            "topic %r does not exist on %s (%s): %s; a broker that creates topics on demand "
            "creates it on subscription, one that does not (auto.create.topics.enable=false) "
            "needs it created first; check --topic / kafka.topic",
            topic,
            self.cfg.kafka.bootstrap_servers,
            hint,
            then,
        )
        return True

    def _say_where_reading_starts(self, partitions: set[Any]) -> None:
        """Once, at the first assignment: whether the group resumes from committed offsets,
        or (a new group) starts where ``kafka.auto_offset_reset`` says: a new group on a topic
        with history scored days of it, alerts included, without a word on why."""
        kafka = self.cfg.kafka
        try:
            committed = {tp: self._consumer.committed(tp) for tp in partitions}
        except Exception as exc:  # a line for the operator is not worth stopping for
            logger.debug("could not read the committed offsets: %s", first_line(exc))
            return
        fresh = [tp for tp, offset in committed.items() if offset is None]
        if not fresh:
            logger.info(
                "group %s resumes from its committed offsets on %d partition(s)",
                kafka.group_id,
                len(partitions),
            )
            return
        where = (
            "from their earliest retained offset: the records already in them are scored, "
            "however old (kafka.auto_offset_reset: earliest; 'latest' scores only new ones)"
            if kafka.auto_offset_reset == "earliest"
            else "from their end: the records already in them are not scored "
            "(kafka.auto_offset_reset: latest)"
        )
        logger.info(
            "group %s has no committed offset on %d of the %d partition(s) assigned (%s): "
            "reading them %s",
            kafka.group_id,
            len(fresh),
            len(partitions),
            ", ".join(_names(fresh)),
            where,
        )

    def _collect(self, worker: _BatchWorker) -> None:
        for offsets in worker.completed():
            for key, offset in offsets.items():
                self._pending[key] = max(self._pending.get(key, -1), offset)

    def _close(self, failure: BaseException | None = None) -> None:
        if self._pending and self._consumer is not None:
            self._commit()
        if self._producer is not None:
            try:
                self._producer.flush(timeout=10)
                self._producer.close(timeout=5)
            except Exception as exc:  # closing must not hide the real outcome
                logger.warning("closing the producer: %s", exc)
        self._remove_published([])  # published events whose delete failed: once more
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                logger.warning("closing the consumer: %s", exc)
        record_failure = getattr(self.sink, "record_failure", None)
        if failure is not None and record_failure is not None:
            record_failure(first_line(failure))  # the session's run: failed, not succeeded
        self.sink.close()

    # ------------------------------------------------------------------ one batch
    def _score_stage(self, records: list[Any]) -> tuple[StreamBatch, float]:
        """The first half of a batch (no I/O): decode, validate and score."""
        started = time.monotonic()
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = started
        return self.score_records(records), started

    def _write_stage(
        self, records: list[Any], batch: StreamBatch, started: float
    ) -> dict[tuple[str, int], int]:
        """The second half: write and publish; return the offsets it makes committable."""
        try:
            result = self._write_with_retry(batch)
        except _StoppedError as exc:
            exc.records = len(records)
            raise
        if batch.window_states:
            with self._unwritten_lock:
                self._unwritten -= collections.Counter(batch.window_states.keys())
        self._publish(batch, result, records)
        self.stats.consumed += len(records)
        self.stats.scored += len(batch.scores.scores)
        self.stats.already_stored += max(0, len(batch.scores.scores) - result.scores_written)
        self.stats.flagged += int(batch.scores.scores["is_anomaly"].sum())
        self.stats.rejected += len(batch.rejects)
        self.stats.gaps += batch.scores.gaps
        self.stats.batches += 1
        now_ms = time.time() * 1000.0
        # About 100 records a batch are enough for the latency percentiles.
        sample = records[:: max(1, len(records) // 100)]
        # -1: the record has no timestamp (Kafka's convention), no latency to take.
        stamps = [float(t) for r in sample if (t := getattr(r, "timestamp", None)) and t > 0]
        if stamps:
            self.stats.latency_ms.extend([now_ms - s for s in stamps])
            if len(self.stats.latency_ms) > 20_000:
                del self.stats.latency_ms[:10_000]
        self.stats.last_batch_at = time.monotonic()
        logger.debug(
            "batch of %d scored and written in %.3f s",
            len(records),
            self.stats.last_batch_at - started,
        )
        return next_offsets(records)

    def score_records(self, records: list[Any]) -> StreamBatch:
        """Decode, validate and score a micro-batch (no I/O): the testable middle."""
        columns = self.cfg.columns
        kafka = self.cfg.kafka
        entity_field = kafka.entity_field or columns.entity
        decoded: DecodedBatch = decode_messages(
            records,
            features=self.model.schema_.names,
            fields=[c for c in columns.passthrough() if c],
            entity_field=entity_field,
            time_field=columns.timestamp,
            day_first=self._date_order(),
            key_is_entity=kafka.key_is_entity,
            max_bytes=kafka.max_message_bytes,
            numeric=self.model.schema_.numeric,
        )
        if self.cfg.window is None and self._run_day_first is None:
            self._run_day_first = decoded.day_first  # kept once a batch decided it
        if self.cfg.window is None and decoded.first_unread_time is not None:
            self._note_unread_times(decoded.unread_times, *decoded.first_unread_time)
        threshold = self._current_threshold()
        frame = decoded.frame
        windows = self._window_state()
        scored = self.model.score_batch(
            frame,
            threshold=threshold.value,
            source="message",
            windows=windows,
            entity_column=ENTITY,
        )
        if windows is not None and windows.split and not self._warned_split:
            self._warn_split(windows)
        valid = frame.loc[scored.scores.index]
        rejects = decoded.rejects
        if len(scored.rejects):
            bad = frame.loc[scored.rejects.index]
            # The dead letter holds the message as it came, every field and nested value kept,
            # not the decoded row (the pipeline's fields only, objects turned into text).
            originals = messages_by_key(records, bad[SOURCE_KEY])
            extra = pd.DataFrame(
                {
                    "reason": scored.rejects["reason"].to_numpy(),
                    "raw": [message_text(originals[key].value) for key in bad[SOURCE_KEY]],
                    "topic": [k.rsplit(":", 2)[0] for k in bad[SOURCE_KEY]],
                    "partition": [int(k.rsplit(":", 2)[1]) for k in bad[SOURCE_KEY]],
                    "offset": [int(k.rsplit(":", 2)[2]) for k in bad[SOURCE_KEY]],
                },
                index=pd.Index(bad[SOURCE_KEY].to_numpy(), name=SOURCE_KEY),
            )
            rejects = pd.concat([rejects, extra]) if len(rejects) else extra
        return StreamBatch(
            records=valid.reset_index(drop=True),
            scores=_reindexed(scored),
            rejects=rejects,
            threshold=threshold.value,
            threshold_version=threshold.version,
            critical=threshold.critical,
            threshold_id=threshold.id,
            alert_rule=threshold.alert_rule,
            window_states=self._take_window_states(windows),
        )

    def _note_unread_times(self, count: int, key: str, value: Any) -> None:
        """Count the records whose time field is not a time; the first is named once. They
        were stored with the Kafka timestamp as their event time without a word: a backfill's
        record then sat at 'now' among last week's, in the lists and in the alert rule's
        order."""
        if not self.unread_times and out_of_range_time(value):
            # '9999-12-31' (an export's "no end") is a time, written as asked: "not a time,
            # write ISO 8601" said the opposite of what is wrong with it, as batch jobs say.
            logger.warning(
                "the timestamp field %r holds dates outside %s (first: %s at %s); such records "
                "are stored with the Kafka message's timestamp as their event time",
                self.cfg.columns.timestamp,
                TIME_YEARS,
                _short(value, 60),
                key,
            )
        elif not self.unread_times:
            logger.warning(
                "the timestamp field %r holds values that are not times (first: %s at %s); "
                "such records are stored with the Kafka message's timestamp as their event "
                "time. Write ISO 8601 (2026-11-20T09:00:00+01:00) or epoch seconds",
                self.cfg.columns.timestamp,
                _short(value, 60),
                key,
            )
        self.unread_times += count

    def _take_window_states(self, windows: WindowState | None) -> dict[str, bytes] | None:
        """The batch's changed window states, their entities marked as not yet written."""
        if windows is None:
            return None
        states = windows.take_dirty()
        with self._unwritten_lock:
            self._unwritten.update(states.keys())
        return states

    def _warn_split(self, windows: WindowState) -> None:
        """Say once that an entity's messages come from more than one partition: each scorer
        process builds the window of what it reads, so with --processes N, or after partitions
        move, its windows (hence scores) depend on which process read what."""
        self._warned_split = True
        key = sorted(windows.split)[0]
        streams = sorted(windows.entities[key].last_seq) if key in windows.entities else []
        logger.warning(
            "entity %r arrives on %d partitions (%s)%s: a windowed model needs all of an "
            "entity's messages in one partition (scorer processes sharing the topic, or a "
            "rebalance, would each build a part of its window); produce them with the entity as "
            "the message key",
            key,
            len(streams),
            ", ".join(streams),
            "" if len(windows.split) == 1 else f", and {len(windows.split) - 1} more entities",
        )

    def _window_state(self) -> WindowState | None:
        """The window state to score the next batch with: after a rebalance, emptied, so that
        each entity's state is read back from the sink (another process may have moved it on)."""
        windows = self._windows
        if windows is None:
            return None
        if self._windows_moved.is_set():
            self._windows_moved.clear()
            windows.clear()
        windows.loader = getattr(self.sink, "load_window_states", None)
        limit = self.cfg.kafka.max_window_entities
        if len(windows.entities) > limit:
            # Down to nine tenths, not to the limit: one pass per many batches, not each.
            with self._unwritten_lock:
                unwritten = set(self._unwritten)
            evicted = windows.evict(limit * 9 // 10, keep=unwritten)
            if evicted:
                self.windows_evicted += evicted
                logger.debug("forgot the windows of %d entities fed least recently", evicted)
        return windows

    def _date_order(self) -> bool | None:
        """The order numeric dates (05/11/2026) are read in: the model's, else the one this
        scorer's windows took from the first batch holding such dates (the stored event times
        are read as the windows read them)."""
        window = self.cfg.window
        if window is None:
            # A model without windows: the order the first batch holding numeric dates
            # decided, kept for the rest of the run, as a batch job keeps its first chunk's
            # (decided batch by batch, 05/11/2026 was 11 May in one batch and 5 November in
            # the next, after a batch holding 20/11/2026).
            return self._run_day_first
        if window.day_first is not None or self._windows is None:
            return window.day_first
        return self._windows.day_first

    def window_counters(self) -> WindowCounters | None:
        """A windowed model's counts since start: warming up, late, replayed, gaps."""
        return None if self._windows is None else self._windows.counters

    def _current_threshold(self) -> ThresholdInForce:
        if self.thresholds is None:
            return self._threshold
        now = time.monotonic()
        if now - self._threshold_checked >= self.cfg.kafka.threshold_refresh_s:
            self._threshold_checked = now
            try:
                latest = self.thresholds.current()
            except Exception as exc:  # keep the last known threshold; say so
                logger.warning(
                    "could not read the threshold in force (keeping %s): %s",
                    self._threshold.value,
                    first_line(exc),
                )
            else:
                if self._threshold.version is None and latest.version is not None:
                    # The first read: the stored threshold, not a change of the model's own.
                    logger.info(
                        "threshold in force: %.6g (version %s)", latest.value, latest.version
                    )
                elif (
                    latest.version != self._threshold.version
                    or latest.value != self._threshold.value
                ):
                    logger.info(
                        "threshold in force is now %.6g (version %s, was %.6g)%s",
                        latest.value,
                        latest.version,
                        self._threshold.value,
                        _other_changes(self._threshold, latest),
                    )
                self._threshold = latest
        return self._threshold

    def _write_with_retry(self, batch: StreamBatch) -> WriteResult:
        """Write until durable: on failure keep the offsets uncommitted and retry with backoff."""
        delay = 0.5
        while True:
            try:
                return self.sink.write(batch)
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                self.stats.write_retries += 1
                logger.warning(
                    "writing a batch of %d records failed (%s); nothing committed, "
                    "retrying in %.1f s",
                    len(batch.records) + len(batch.rejects),
                    first_line(exc),
                    delay,
                )
                if self.stop_event.wait(delay):
                    raise _StoppedError from exc
                delay = min(self.cfg.kafka.connect_backoff_max_s, delay * 2)

    def _publish(self, batch: StreamBatch, result: WriteResult, records: list[Any]) -> None:
        producer = self._producer
        kafka = self.cfg.kafka
        if producer is None:
            return
        sent: list[tuple[str, Any]] = []  # (topic, future): a failed send is only known here
        alerts: list[tuple[AlertMessage, Any]] = []
        if kafka.alerts_topic:
            messages = result.messages or [_alert_message(alert) for alert in result.alerts]
            ids = [m.outbox_id for m in messages if m.outbox_id is not None]
            self._outbox_newest = max([self._outbox_newest, *ids])
            if ids and self._outbox_behind:
                # Events wait in the outbox (left by a killed scorer, or refused by the
                # broker): this batch's go out after them, oldest first, so that an entity's
                # events keep their order.
                self._publish_outbox(until=self._outbox_newest)
                messages = [m for m in messages if m.outbox_id is None]
            elif self._outbox_behind and hasattr(self.sink, "outbox_pending"):
                self._publish_outbox(until=self._outbox_newest or None)
            for message in messages:
                alerts.append((message, self._send_alert(message)))
        if kafka.dead_letter_topic and len(batch.rejects):
            originals = messages_by_key(records, batch.rejects.index)
            # What the producer may send, less room for the record's key and headers.
            limit = int(getattr(producer, "config", {}).get("max_request_size", 1_048_576))
            for reject_key, reason in batch.rejects["reason"].items():
                key = str(reject_key)
                msg_key, value, headers = dead_letter_message(
                    key, str(reason), originals.get(key), max_bytes=limit - 65_536
                )
                future = producer.send(
                    kafka.dead_letter_topic, value=value, key=msg_key, headers=headers
                )
                sent.append((kafka.dead_letter_topic, future))
        producer.flush(timeout=30)
        self._alerts_sent(alerts)
        _log_failed_sends(sent)

    def _send_alert(self, message: AlertMessage) -> Any:
        return self._producer.send(self.cfg.kafka.alerts_topic, message.value, key=message.key)

    def _alerts_sent(self, alerts: list[tuple[AlertMessage, Any]]) -> bool:
        """After the flush: delete the outbox rows of the events the broker acknowledged; an
        event it refused (or did not acknowledge in time) stays there, and the outbox is
        published again, oldest first, with the next batch. True when every one went."""
        if not alerts:
            return True
        published = [m.outbox_id for m, f in alerts if f.succeeded() and m.outbox_id is not None]
        self._remove_published(published)
        failed = [(m, f) for m, f in alerts if not f.succeeded()]
        if not failed:
            return True
        kept = [m for m, _ in failed if m.outbox_id is not None]
        if kept:
            self._outbox_behind = True
        first = failed[0][1]
        logger.error(
            "%d alert event(s) could not be published to topic %s (first: %s); %s",
            len(failed),
            self.cfg.kafka.alerts_topic,
            first_line(first.exception)
            if getattr(first, "exception", None) is not None
            else "not acknowledged in time",
            "they stay in the alert outbox and are sent again, oldest first, with the next batch"
            if len(kept) == len(failed)
            else "they are in the database (alerts)",
        )
        return False

    def _publish_outbox(self, *, until: int | None = None) -> bool:
        """Publish the events waiting in the sink's outbox for this model, oldest first (up to
        row ``until``), a page at a time, each page flushed and its rows deleted before the
        next; stop at the first page the broker does not wholly take. True when none is left."""
        pending = getattr(self.sink, "outbox_pending", None)
        if pending is None or self._producer is None or not self.cfg.kafka.alerts_topic:
            self._outbox_behind = False
            return True
        after, total = 0, 0
        while True:
            try:
                page = [
                    m
                    for m in pending(after, OUTBOX_PAGE)
                    if until is None or (m.outbox_id is not None and m.outbox_id <= until)
                ]
            except Exception as exc:  # the database: its events go out with a later batch
                logger.warning(
                    "could not read the alert outbox (%s): its events are published with a "
                    "later batch",
                    first_line(exc),
                )
                return False
            if page:
                alerts = [(m, self._send_alert(m)) for m in page]
                self._producer.flush(timeout=30)
                if not self._alerts_sent(alerts):
                    return False
                total += len(page)
            if len(page) < OUTBOX_PAGE:
                break
            after = int(page[-1].outbox_id or 0)
        self._outbox_behind = False
        if total:
            logger.info(
                "published %d alert event(s) that waited in the alert outbox (left by a "
                "scorer stopped before it published them, or refused by the broker)",
                total,
            )
        return True

    def _remove_published(self, ids: list[int]) -> None:
        """Delete the outbox rows of published events; a failed delete is tried again with
        the next batch (until then a scorer started anew sends them again, same event_id)."""
        self._outbox_unremoved.extend(ids)
        remove = getattr(self.sink, "outbox_published", None)
        if not self._outbox_unremoved or remove is None:
            return
        try:
            remove(self._outbox_unremoved)
        except Exception as exc:
            logger.warning(
                "could not delete %d published alert event(s) from the alert outbox (%s): "
                "tried again with the next batch",
                len(self._outbox_unremoved),
                first_line(exc),
            )
            return
        self._outbox_unremoved = []

    def _start_outbox(self) -> None:
        """At start, with an alerts topic: publish what the outbox holds for this model (a
        scorer killed between its commit and its publish left it). Without one the sink has
        said how many events wait there, which this scorer leaves as they are."""
        if self.cfg.kafka.alerts_topic and self._producer is not None:
            # Scorers of the model started together take turns (the sink's lock), so that each
            # sends what the one before left, not all of them everything.
            turn = getattr(self.sink, "outbox_turn", None)
            with turn() if turn is not None else contextlib.nullcontext():
                self._publish_outbox()

    def _commit(self, *, wait: bool = True) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        consumer = self._consumer
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        offsets = {
            TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for (topic, partition), offset in self._pending.items()
            if (topic, partition) in owned
        }
        if not offsets:
            self._pending.clear()
            return
        try:
            if wait:
                consumer.commit(offsets)
            else:
                consumer.commit_async(offsets, callback=self._async_commit_done)
        except KafkaError as exc:
            # The records come again (to us or to the partition's new owner) and the idempotent
            # writes absorb them: a failed commit costs time, never data.
            self.stats.commits_failed += 1
            logger.warning("offset commit failed (%s); the batch will be replayed", first_line(exc))
            return
        self._pending.clear()

    def _async_commit_done(self, offsets: Any, response: Any) -> None:
        if isinstance(response, BaseException):
            self.stats.commits_failed += 1
            logger.info(
                "offset commit before a rebalance failed (%s): the partitions' new owner "
                "replays the records after the last commit",
                first_line(response),
            )

    def _log_metrics(self, previous: tuple[int, float]) -> tuple[int, float]:
        now = time.monotonic()
        count, then = previous
        rate = (self.stats.consumed - count) / max(now - then, 1e-9)
        self.stats.lag = self._lag()
        logger.info(
            "%.0f records/s, lag %s, %d scored, %d flagged, %d rejected%s%s",
            rate,
            # Not known before partitions are assigned (a group join takes seconds), nor for
            # a partition not fetched from yet: 'lag 0' said the scorer was caught up.
            "unknown" if self.stats.lag is None else self.stats.lag,
            self.stats.scored,
            self.stats.flagged,
            self.stats.rejected,
            f", {self.stats.gaps} with a missing value filled in" if self.stats.gaps else "",
            self._outbox_backlog(),
        )
        self._say_if_mostly_flagged()
        if self._on_metrics is not None:
            try:
                self._on_metrics(self.stats, rate)
            except Exception as exc:  # reporting must never stop the scoring
                logger.warning("could not report the metrics: %s", first_line(exc))
        return self.stats.consumed, now

    def _outbox_backlog(self) -> str:
        """For the progress line, with an alerts topic: the model's alert events waiting in
        the outbox when there are any (a backlog that does not drain: the broker refuses them,
        or they wait for a scorer that can publish); GET /metrics serves the same count."""
        waiting = getattr(self.sink, "outbox_waiting", None)
        if waiting is None or not self.cfg.kafka.alerts_topic:
            return ""
        try:
            n = int(waiting())
        except Exception as exc:  # reporting must never stop the scoring
            logger.debug("could not count the alert outbox: %s", first_line(exc))
            return ""
        return f", {n} alert event(s) waiting in the alert outbox" if n else ""

    def _say_if_mostly_flagged(self) -> None:
        """A warning when more than half the records scored since the last progress line
        crossed the threshold (anomalies are rare: the stream is likely unlike the training
        data), and a line when that ends; nothing in between."""
        scored = self.stats.scored - self._interval_base[0]
        flagged = self.stats.flagged - self._interval_base[1]
        self._interval_base = (self.stats.scored, self.stats.flagged)
        if scored < MOST_CROSSED_MIN_RECORDS:
            return
        mostly = most_crossed(scored, flagged)
        if mostly and not self._mostly_flagged:
            logger.warning(
                "%.0f%% of the %d records scored since the last progress line crossed the "
                "threshold: unless most of the stream is anomalous, it is unlike the model's "
                "training data (another site, other units, a changed process); see which "
                "columns the newest anomalies name (anomaly-vae anomalies list), and retrain on "
                "normal data like it if the stream is normal",
                100.0 * flagged / scored,
                scored,
            )
        elif self._mostly_flagged and not mostly:
            logger.info(
                "%.0f%% of the records scored since the last progress line crossed the "
                "threshold: no longer most of them",
                100.0 * flagged / scored,
            )
        self._mostly_flagged = mostly

    def _lag(self) -> int | None:
        """Records not yet durable: behind the fetch position of the assigned partitions, plus
        those fetched and still being scored or written (up to IN_FLIGHT batches: 'lag 0'
        was said while a backlog of tens of thousands was still to be written)."""
        consumer = self._consumer
        total = max(0, self._submitted - self.stats.consumed)
        try:
            assignment = consumer.assignment()
            if not assignment:
                return None
            for tp in assignment:
                high = consumer.highwater(tp)
                if high is None:
                    return None
                total += max(0, int(high) - int(consumer.position(tp)))
        except Exception:
            return None
        return total


class _StoppedError(Exception):
    """Asked to stop while a batch could not be made durable: leave it uncommitted."""

    records = 0


@dataclass
class _Failed:
    exc: BaseException


TOPIC_CHECK_TIMEOUT_S = 10.0  # how long the scorer waits for the broker's list of topics
IN_FLIGHT = 3  # batches between poll and commit: one being written, one scored, one waiting
OUTBOX_PAGE = 500  # alert events published (and flushed) at a time from the outbox
_SENTINEL = object()


class _BatchWorker:
    """Scores and writes batches in order, at most ``IN_FLIGHT`` ahead of the committed offsets;
    reports each durable batch's offsets back to the polling thread.

    Two threads, so that scoring the next batch overlaps writing this one (the database server
    works while the writer waits): ``stream-scorer`` decodes, validates and scores;
    ``stream-writer`` writes, publishes and reports, in the order the batches came. After a
    failure in either, the batches behind it are dropped uncommitted (replayed on restart).
    """

    def __init__(self, scorer: StreamScorer) -> None:
        self.scorer = scorer
        self.inbox: Queue[Any] = Queue()
        self.scored: Queue[Any] = Queue()
        self.outbox: Queue[dict[tuple[str, int], int]] = Queue()
        self.error: BaseException | None = None
        self.in_flight = 0
        self._room = threading.Condition()
        self.thread = threading.Thread(target=self._score, name="stream-scorer", daemon=True)
        self.writer = threading.Thread(target=self._write, name="stream-writer", daemon=True)
        self.thread.start()
        self.writer.start()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def _score(self) -> None:
        failed = False
        while True:
            records = self.inbox.get()
            if records is _SENTINEL:
                self.scored.put(_SENTINEL)
                return
            item: Any = None  # skipped: still counted down by the writer
            if not failed and self.error is None:
                try:
                    item = (records, *self.scorer._score_stage(records))
                except BaseException as exc:
                    # Raised when the writer reaches it: the batches before it are written.
                    item, failed = _Failed(exc), True
            self.scored.put(item)

    def _write(self) -> None:
        while True:
            item = self.scored.get()
            if item is _SENTINEL:
                return
            if isinstance(item, _Failed):
                self._fail(item.exc)
            elif item is not None and self.error is None:
                try:
                    self.outbox.put(self.scorer._write_stage(*item))
                except BaseException as exc:
                    self._fail(exc)
            with self._room:
                self.in_flight -= 1
                self._room.notify_all()

    def full(self) -> bool:
        return self.in_flight >= IN_FLIGHT

    def submit(self, records: list[Any]) -> None:
        with self._room:
            self.in_flight += 1
        self.inbox.put(records)

    def wait_for_room(self, timeout: float) -> None:
        with self._room:
            if self.in_flight >= IN_FLIGHT:
                self._room.wait(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch is done (or failed); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._room:
            while self.in_flight > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._room.wait(left)
        return True

    def completed(self) -> list[dict[tuple[str, int], int]]:
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except Empty:
                return out

    def finish(self) -> None:
        self.drain()

    def abort(self) -> None:
        if self.thread.is_alive():
            self.inbox.put(_SENTINEL)
            self.thread.join(timeout=30)
        self.writer.join(timeout=30)


def _rebalance_listener(scorer: StreamScorer) -> Any:
    """Commit what is durable before partitions move to another scorer.

    The listener runs on kafka-python's IO thread, in its event loop, which also sends the
    group's heartbeats: a listener that blocks there while the batches in flight are written
    (seconds; up to 30 s with a slow database) left the member without heartbeats past its
    session timeout, and kafka-python logged to the operator that 'Sync listeners block the
    consumer event loop (including heartbeats)'. So the listener is a coroutine, and waits
    for the writer in short sleeps of that loop."""
    from kafka import AsyncConsumerRebalanceListener

    _quiet_slow_listener_warning()

    class ScorerRebalanceListener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            if revoked:
                scorer._rebalancing.set()
            worker = scorer._worker
            if worker is not None:
                began = time.monotonic()
                while worker.in_flight > 0 and time.monotonic() < began + 30.0:
                    await _event_loop_sleep(0.05)
                if time.monotonic() - began >= 1.0:
                    logger.info(
                        "waited %.1f s for the batches in flight to be written before "
                        "handing partitions over (heartbeats went on meanwhile)",
                        time.monotonic() - began,
                    )
                if worker.in_flight > 0:
                    logger.warning(
                        "batches still being written while partitions move: they will "
                        "be replayed by the new owner, and the replay adds no duplicate"
                    )
                scorer._collect(worker)
            if scorer._pending:
                # A blocking commit is refused on the IO thread: commit without waiting.
                # Should it fail, the new owner replays the records after the last commit,
                # and the idempotent writes (and a windowed model's stored sequence numbers)
                # turn the replay into no change.
                scorer._commit(wait=False)
            if revoked:  # the first join revokes nothing: no line
                logger.info("partitions revoked: %s", _names(revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            scorer._windows_moved.set()
            scorer._assigned_at = time.monotonic()
            scorer._rebalancing.clear()
            logger.info("partitions assigned: %s", _names(assigned))

    return ScorerRebalanceListener()


class _SlowListenerWarning(logging.Filter):
    """kafka-python 3 times every rebalance listener and, past 1 s, warns that 'Sync listeners
    block the consumer event loop (including heartbeats)', async ones too: false of the
    scorer's (a coroutine that sleeps on the loop), and it sent operators looking for a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Rebalance listener %s.%s for group %s took")
            and bool(record.args)
            and isinstance(record.args, tuple)
            and record.args[0] == "ScorerRebalanceListener"
        )


def _quiet_slow_listener_warning() -> None:
    coordinator = logging.getLogger("kafka.coordinator.consumer")
    if not any(isinstance(f, _SlowListenerWarning) for f in coordinator.filters):
        coordinator.addFilter(_SlowListenerWarning())
    quiet_slow_task_warning()


def _event_loop_sleep(seconds: float) -> Any:
    """What a coroutine on kafka-python's event loop awaits to sleep there, letting the loop's
    other tasks (heartbeats) run meanwhile: the loop's own sleep event (kafka-python 3)."""
    from kafka.net.selector import KernelEvent

    return KernelEvent("_sleep", seconds)


def _alert_message(alert: dict[str, Any]) -> AlertMessage:
    """An alert event of a sink without an outbox as a message, keyed as the outbox keys one
    (``storage.outbox.message_key``: the entity, else the model's name)."""
    from anomaly_vae.storage.outbox import message_key

    key = message_key(alert)
    return AlertMessage(
        key=None if key is None else key.encode("utf-8"),
        value=orjson.dumps(alert, default=str),
    )


def _log_failed_sends(sent: list[tuple[str, Any]]) -> None:
    """A record the producer gave up on (the broker refused it, or its retries ran out) is
    only known from its future: ``flush`` returns as well. Say so, per topic, rather than
    lose it without a word; the database keeps every alert and dead letter regardless."""
    failed: dict[str, list[BaseException]] = {}
    for topic, future in sent:
        if getattr(future, "failed", lambda: False)():
            failed.setdefault(topic, []).append(future.exception)
    for topic, errors in failed.items():
        logger.error(
            "%d record(s) could not be published to topic %s (first: %s); they are in the "
            "database (alerts, dead_letters)",
            len(errors),
            topic,
            first_line(errors[0]),
        )


def _names(partitions: Any) -> list[str]:
    """``topic:partition`` in partition order (as text, 12 partitions read 0, 1, 10, 11, 2...),
    a run of consecutive partitions as one range (``sensors:0-63``): a topic of 64 partitions
    made three log lines of some 700 characters at every assignment, 256 of 3,500."""
    out: list[str] = []
    run: list[Any] = []
    for tp in sorted(partitions, key=_partition_order):
        if run and (tp.topic != run[-1].topic or tp.partition != run[-1].partition + 1):
            out.append(_range_name(run))
            run = []
        run.append(tp)
    if run:
        out.append(_range_name(run))
    return out


def _range_name(run: list[Any]) -> str:
    first, last = run[0], run[-1]
    if first.partition == last.partition:
        return f"{first.topic}:{first.partition}"
    return f"{first.topic}:{first.partition}-{last.partition}"


def _partition_order(tp: Any) -> tuple[str, int]:
    return (tp.topic, tp.partition)


def _reindexed(batch: ScoreBatch) -> ScoreBatch:
    return replace(batch, scores=batch.scores.reset_index(drop=True))


def first_line(exc: BaseException) -> str:
    """The exception's message as one log line: SQLAlchemy's adds the driver's hint and
    "(Background on this error at: ...)" on lines of their own."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    """Database connection trouble is worth retrying; programming errors are not. The
    repository's inserts run on the driver's own connection (sqlite3's ``executemany``,
    psycopg's ``COPY``), so the drivers' errors count as well as SQLAlchemy's wrapping of them:
    psycopg's OperationalError (a lost connection, a server shutting down), and SQLite's file
    locked or busy past the busy timeout (another program holding its write lock)."""
    import sqlite3

    from sqlalchemy.exc import DisconnectionError, OperationalError

    if isinstance(exc, (OperationalError, DisconnectionError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError)


__all__ = [
    "ENTITY",
    "EVENT_TIME",
    "SOURCE_KEY",
    "AlertMessage",
    "StreamBatch",
    "StreamScorer",
    "StreamSink",
    "StreamStats",
    "ThresholdInForce",
    "ThresholdSource",
    "WriteResult",
]
