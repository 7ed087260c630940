"""A realistic multi-sensor stream with labelled injected anomalies, produced to Kafka.

Messages are JSON objects of the pump data in ``datasets.make_pump_data`` (event time = now),
keyed by pump id, with ``label`` and ``anomaly_kind`` fields so results can be checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd

from anomaly_vae.datasets import make_pump_data

logger = logging.getLogger(__name__)

BLOCK = 2000


@dataclass
class SimulationResult:
    sent: int
    anomalies: int
    seconds: float


def pump_messages(
    *,
    rate: float,
    anomaly_rate: float,
    n_pumps: int,
    seed: int,
    start: pd.Timestamp | None = None,
) -> Iterator[tuple[bytes, bytes, int]]:
    """Endless (key, value, label) triples; event times advance as if produced at ``rate``/s."""
    start = start if start is not None else pd.Timestamp.now(tz="UTC")
    interval = n_pumps / rate  # each pump reports every n_pumps / rate seconds
    block_index = 0
    while True:
        block_start = start + pd.Timedelta(seconds=block_index * BLOCK / rate)
        frame = make_pump_data(
            BLOCK,
            n_pumps=n_pumps,
            anomaly_rate=anomaly_rate,
            seed=seed + block_index,
            start=block_start.isoformat(),
            interval_s=interval,
            first_event_id=block_index * BLOCK,
            first_row=block_index * BLOCK,
        )
        for record in frame.to_dict(orient="records"):
            clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}
            yield str(clean["pump_id"]).encode(), orjson.dumps(clean), int(record["label"])
        block_index += 1


def simulate(
    producer: Any,
    topic: str,
    *,
    rate: float,
    anomaly_rate: float = 0.01,
    count: int | None = None,
    duration: float | None = None,
    n_pumps: int = 4,
    seed: int = 0,
    stop: Any = None,
) -> SimulationResult:
    """Send messages at about ``rate`` per second until ``count`` or ``duration`` is reached."""
    started = time.monotonic()
    sent = anomalies = 0
    for key, value, label in pump_messages(
        rate=rate, anomaly_rate=anomaly_rate, n_pumps=n_pumps, seed=seed
    ):
        if count is not None and sent >= count:
            break
        elapsed = time.monotonic() - started
        if duration is not None and elapsed >= duration:
            break
        if stop is not None and stop.is_set():
            break
        ahead = sent / rate - elapsed
        if ahead > 0.005:
            time.sleep(ahead)
        producer.send(topic, value=value, key=key)
        sent += 1
        anomalies += label
        if sent % 10_000 == 0:
            logger.info("sent %d messages (%d anomalous)", sent, anomalies)
    producer.flush(timeout=60)
    return SimulationResult(sent=sent, anomalies=anomalies, seconds=time.monotonic() - started)


def ensure_topic(admin: Any, topic: str, partitions: int) -> bool:
    """Create ``topic`` if it does not exist; True if created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    if topic in set(admin.list_topics()):
        return False
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        return False
    return True


def topic_partitions(admin: Any, topic: str) -> int | None:
    """How many partitions ``topic`` has, or None when the broker does not say."""
    try:
        described = admin.describe_topics([topic])
    except Exception:  # a broker without DescribeTopics: the count is only worth a note
        return None
    if not described or described[0].get("error_code"):
        return None
    return len(described[0].get("partitions") or []) or None
