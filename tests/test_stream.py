"""The stream scorer on a real broker (Tansu), with an in-memory sink: the Kafka half."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from anomaly_vae import AnomalyVAE
from anomaly_vae.config import KafkaConfig, PipelineConfig
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import DevBroker
from anomaly_vae.jobs.stream import AlertMessage, StreamBatch, StreamScorer, WriteResult
from anomaly_vae.sources.kafka import SOURCE_KEY, Message, decode_messages, near_names
from tests.conftest import create_topic, fresh_name
from tests.test_cli import run_inline

FEATURES = ["a", "b"]


def msg(value: bytes | None, offset: int = 0, key: bytes | None = None) -> Message:
    return Message("t", 0, offset, key, value, 1_700_000_000_000)


def test_decode_sorts_poison_from_records() -> None:
    messages = [
        msg(b'{"a": 1, "b": 2, "dev": "x"}', 0, key=b"pump-7"),
        msg(b"{not json", 1),
        msg(b"[1, 2]", 2),
        msg(b'{"a": 1}', 3),
        msg(None, 4),
        msg(b'{"a": 1, "b": "' + b"x" * 200 + b'"}', 5),
        msg(b'{"a": "NaN", "b": 1}', 6),
        msg(b'{"a": null, "b": "oops"}', 7),
        msg(b"", 8),
    ]
    out = decode_messages(messages, features=FEATURES, fields=["dev"], max_bytes=100)
    assert out.frame[SOURCE_KEY].tolist() == ["t:0:0", "t:0:7"]
    assert out.frame["_entity"].tolist() == ["pump-7", None]
    reasons = out.rejects["reason"].to_dict()
    assert reasons["t:0:1"].startswith("invalid JSON")
    assert reasons["t:0:2"] == "top level is a JSON array, expected an object"
    assert reasons["t:0:3"] == "feature field 'b' missing"
    # Kafka's words: "empty message (no value)" was a tombstone, and an empty value was
    # orjson's "Input is a zero-length, empty document: line 1 column 1 (char 0)".
    assert reasons["t:0:4"] == "null value (a tombstone): no JSON object to score"
    assert reasons["t:0:8"] == "empty value (0 bytes): expected a JSON object"
    assert "over max_message_bytes=100" in reasons["t:0:5"]
    assert reasons["t:0:6"] == "field 'a': 'NaN' is not a finite number"
    assert out.rejects.loc["t:0:1", "raw"] == "{not json"
    assert set(out.rejects["offset"]) == {1, 2, 3, 4, 5, 6, 8}


def test_a_message_that_is_not_utf8_says_so_and_where() -> None:
    # orjson's reason, "str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char
    # 0)", named no byte and pointed at the start whatever the place of the bad byte: a
    # producer writing cp1252 text ('été' as 0xe9) could not tell what to fix.
    messages = [msg('{"a": 1, "b": 2, "site": "été"}'.encode("cp1252"), 0), msg(b"{\xff", 1)]
    reasons = decode_messages(messages, features=FEATURES).rejects["reason"].to_dict()
    assert reasons["t:0:0"].startswith(
        "invalid JSON: not UTF-8 text (byte 0xe9 at byte 26): JSON messages must be UTF-8"
    )
    assert reasons["t:0:1"].startswith("invalid JSON: not UTF-8 text (byte 0xff at byte 1)")


@pytest.mark.parametrize("text", ["NaN", "inf", "-Infinity"])
def test_a_non_finite_text_is_poison_when_the_batch_has_no_number_in_that_field(
    text: str,
) -> None:
    # A column of text and nulls only is pandas 3's string dtype, not object: the check was
    # skipped and the text scored as a missing value, where beside a number it was poison.
    value = f'{{"a": "{text}", "b": 1}}'.encode()
    for batch in ([msg(value, 0)], [msg(value, 0), msg(b'{"a": null, "b": 2}', 1)]):
        out = decode_messages(batch, features=FEATURES)
        assert out.rejects["reason"].to_dict() == {
            "t:0:0": f"field 'a': '{text}' is not a finite number"
        }
        assert "t:0:0" not in out.frame[SOURCE_KEY].tolist()


def test_decode_entities_from_odd_keys_and_fields() -> None:
    # Two keys that are not UTF-8 were both read as one entity ("\ufffd"), and an entity field
    # holding an array was stored as Python's text of it.
    messages = [
        msg(b'{"a": 1, "b": 2}', 0, key=b"\xff"),
        msg(b'{"a": 1, "b": 2}', 1, key=b"\xfe"),
        msg(b'{"a": 1, "b": 2, "dev": ["x"]}', 2),
        msg(b'{"a": 1, "b": 2, "dev": {"id": 1}}', 3),
        msg(b'{"a": 1, "b": 2, "dev": 7}', 4, key=b"ignored"),
    ]
    out = decode_messages(messages, features=FEATURES, fields=["dev"], entity_field="dev")
    assert out.frame["_entity"].tolist() == ["\\xff", "\\xfe", "7"]
    reasons = out.rejects["reason"].to_dict()
    assert reasons["t:0:2"] == "entity field 'dev' is a JSON array: expected text or a number"
    assert reasons["t:0:3"] == "entity field 'dev' is a JSON object: expected text or a number"


def test_decode_keeps_entities_apart_that_python_calls_equal() -> None:
    # Entity texts are worked out once per distinct value in a batch: true and 1 (equal as
    # dict keys) must still be two entities, 1 and 1.0 and "1" one, and a key one per bytes.
    values = ["true", "1", "1.0", '"1"', "true", "null", '"P2"', "2.5"]
    messages = [
        msg(b'{"a": 1, "b": 2, "dev": ' + v.encode() + b"}", i, key=b"K" if v == "null" else None)
        for i, v in enumerate(values)
    ]
    out = decode_messages(messages, features=FEATURES, fields=["dev"], entity_field="dev")
    assert out.frame["_entity"].tolist() == ["True", "1", "1", "1", "True", "K", "P2", "2.5"]


def test_decode_takes_an_empty_entity_as_none_as_a_csv_cell_is() -> None:
    # {"dev": ""} was the entity '' (stored so, where a CSV export's empty cell is no entity,
    # NULL), even beside a key, which {"dev": null} falls back to; an empty key was '' too.
    messages = [
        msg(b'{"a": 1, "b": 2, "dev": ""}', 0, key=b"P1"),
        msg(b'{"a": 1, "b": 2, "dev": ""}', 1),
        msg(b'{"a": 1, "b": 2}', 2, key=b""),
        msg(b'{"a": 1, "b": 2, "dev": null}', 3, key=b"P1"),
    ]
    out = decode_messages(messages, features=FEATURES, fields=["dev"], entity_field="dev")
    assert out.frame["_entity"].tolist() == ["P1", None, None, "P1"]
    assert out.rejects.empty


def test_a_missing_feature_field_names_the_field_the_message_has_instead() -> None:
    # A producer writing "A" or "b " had every message rejected as "feature field 'a'
    # missing", read as if the sensor had sent nothing.
    messages = [
        msg(b'{"A": 1, "b": 2}', 0),
        msg(b'{"A": 1, "b ": 2, "note": "x"}', 1),
        msg(b'{"aa": 1, "b": 2}', 2),
        msg(b'{"b": 2, "zzz": 1}', 3),
        msg(b'{"A": 3, "b": 4}', 4),
    ]
    reasons = decode_messages(messages, features=FEATURES).rejects["reason"].to_dict()
    case = "field names must match exactly, letter case too"
    assert reasons["t:0:0"] == f"feature field 'a' missing (the record has 'A': {case})"
    assert (
        reasons["t:0:1"] == f"feature fields 'a', 'b' missing (the record has 'A' and 'b ': {case})"
    )
    assert reasons["t:0:2"] == "feature field 'a' missing"  # 'aa' is another name
    assert reasons["t:0:3"] == "feature field 'a' missing"
    assert reasons["t:0:4"] == reasons["t:0:0"]
    # A close spelling is named too.
    assert near_names(["pressure_in", "rpm"], ["presure_in", "station"]) == ["presure_in"]
    # The same name with its accents in another Unicode form (NFD): "letter case too" said
    # nothing of a difference no one can see.
    nfd = decode_messages(
        [msg('{"Tempe\u0301rature": 1, "b": 2}'.encode(), 5)], features=["Température", "b"]
    )
    assert nfd.rejects["reason"].tolist() == [
        "feature field 'Température' missing (the record has 'Tempe\\u0301rature', the same "
        "name with its accents written as other Unicode code points: send field names in "
        "Unicode NFC)"
    ]


def test_a_missing_feature_field_nested_in_an_object_says_fields_are_read_at_the_top() -> None:
    # {"data": {"a": 1, "b": 2}} and {"sensor": {"temp": 1}} for a feature 'sensor.temp' (a
    # CSV flattened by pandas.json_normalize): "feature fields 'a', 'b' missing", though the
    # message held both, said nothing of why they were not read.
    messages = [
        msg(b'{"data": {"a": 1, "b": 2}, "id": 7}', 0),
        msg(b'{"b": 2, "data": {"z": 1}}', 2),
    ]
    reasons = decode_messages(messages, features=FEATURES).rejects["reason"].to_dict()
    assert reasons["t:0:0"] == (
        "feature fields 'a', 'b' missing (the record's object 'data' holds them: fields are read "
        "at the top level of the record, not inside an object; send them there)"
    )
    assert reasons["t:0:2"] == "feature field 'a' missing"
    nested = [msg(b'{"sensor": {"temp": 20.5, "flow": 1}, "b": 2}', 3)]
    out = decode_messages(nested, features=["sensor.temp", "b"])
    assert out.rejects["reason"].tolist() == [
        "feature field 'sensor.temp' missing (the record has 'sensor.temp' nested, in the object "
        "'sensor': fields are read at the top level of the record, by their whole name; send "
        '"sensor.temp": VALUE there)'
    ]


def test_a_python_dict_or_a_csv_line_sent_as_a_message_is_named_in_the_reason() -> None:
    # A Python producer sending str(record) ("{'a': 1}") or a CSV line ("19.7,1002.1") had
    # "invalid JSON: unexpected character, expected a string key: line 1 column 2", which
    # said nothing of what to send instead.
    messages = [
        msg(b"{'a': 1.5, 'b': 2}", 0),
        msg(b"19.7,1002.1,east", 1),
        msg(b'{"a": 1,}', 2),
    ]
    reasons = decode_messages(messages, features=FEATURES).rejects["reason"].to_dict()
    assert reasons["t:0:0"].endswith(
        " (names in single quotes, as Python's str() of a dict writes them: send "
        "json.dumps(record))"
    )
    assert reasons["t:0:1"] == (
        "invalid JSON: unexpected content after document: line 1 column 5 (char 4) (a CSV "
        'line? a message is one JSON object: {"temp": 19.7, "site": "north"})'
    )
    assert (
        reasons["t:0:2"] == "invalid JSON: trailing comma is not allowed: line 1 column 8 (char 7)"
    )
    # A producer batching records into one array: "expected an object" said nothing of it.
    batched = decode_messages([msg(b'[{"a": 1, "b": 2}, {"a": 3, "b": 4}]', 3)], features=FEATURES)
    assert batched.rejects["reason"].tolist() == [
        "top level is a JSON array, expected an object (an array of 2 objects: send one record "
        "per message, each its own JSON object)"
    ]


def test_decode_event_time_from_field_or_kafka() -> None:
    messages = [
        msg(b'{"a": 1, "b": 2, "ts": "2026-11-01T10:00:00Z"}', 0),
        msg(b'{"a": 1, "b": 2, "ts": null}', 1),
    ]
    out = decode_messages(messages, features=FEATURES, fields=["ts"], time_field="ts")
    times = out.frame["_event_time"].tolist()
    assert times[0] == pd.Timestamp("2026-11-01T10:00:00Z")
    assert times[1] == pd.Timestamp(1_700_000_000_000, unit="ms", tz="UTC")


def test_decode_counts_the_time_fields_that_are_not_times() -> None:
    # A null or blank time takes the Kafka timestamp quietly; so did "garbage", true or an
    # object, which the stored event time then hid (a batch job names such a value).
    messages = [
        msg(b'{"a": 1, "b": 2, "ts": "2026-11-01T10:00:00Z"}', 0),
        msg(b'{"a": 1, "b": 2, "ts": null}', 1),
        msg(b'{"a": 1, "b": 2, "ts": " "}', 2),
        msg(b'{"a": 1, "b": 2, "ts": "garbage"}', 3),
        msg(b'{"a": 1, "b": 2, "ts": true}', 4),
        msg(b'{"a": 1, "b": 2}', 5),
    ]
    out = decode_messages(messages, features=FEATURES, fields=["ts"], time_field="ts")
    assert out.unread_times == 2
    assert out.first_unread_time == ("t:0:3", "garbage")
    kafka_time = pd.Timestamp(1_700_000_000_000, unit="ms", tz="UTC")
    assert out.frame["_event_time"].tolist()[1:] == [kafka_time] * 5


def test_a_time_field_that_is_not_a_time_is_named_once_by_the_scorer(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    record = make_pump_data(1, seed=4).astype(object).to_dict(orient="records")[0]
    values = [
        json.dumps({**record, "ts": "28/13/2026 25:00"}).encode(),
        json.dumps({**record, "ts": "yesterday"}).encode(),
        json.dumps(record).encode(),
    ]
    scorer = StreamScorer(stream_model, cfg, MemorySink([]))
    caplog.set_level("WARNING", logger="anomaly_vae")
    scorer.score_records([msg(v, i) for i, v in enumerate(values)])
    scorer.score_records([msg(values[1], 3)])
    lines = [r.getMessage() for r in caplog.records if "not times" in r.getMessage()]
    assert lines == [
        "the timestamp field 'ts' holds values that are not times (first: '28/13/2026 25:00' "
        "at t:0:0); such records are stored with the Kafka message's timestamp as their event "
        "time. Write ISO 8601 (2026-11-20T09:00:00+01:00) or epoch seconds"
    ]
    assert scorer.unread_times == 3


def test_a_time_field_out_of_the_readable_years_is_not_called_not_a_time(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # '9999-12-31' (an export's "no end") is ISO 8601, as asked; the scorer said it was not a
    # time and to write ISO 8601, where a batch job names the years a time can be read in.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    record = make_pump_data(1, seed=4).astype(object).to_dict(orient="records")[0]
    value = json.dumps({**record, "ts": "9999-12-31T00:00:00Z"}).encode()
    scorer = StreamScorer(stream_model, cfg, MemorySink([]))
    caplog.set_level("WARNING", logger="anomaly_vae")
    scorer.score_records([msg(value, 0)])
    lines = [r.getMessage() for r in caplog.records if "'ts'" in r.getMessage()]
    assert lines == [
        "the timestamp field 'ts' holds dates outside the years 1677 to 2262 that a time can be "
        "read in (first: '9999-12-31T00:00:00Z' at t:0:0); such records are stored with the "
        "Kafka message's timestamp as their event time"
    ]
    assert scorer.unread_times == 1


def test_a_message_without_a_kafka_timestamp_has_no_event_time_rather_than_1969() -> None:
    # Kafka's -1 is "no timestamp" (the v0 record format, a producer that set none); read as
    # milliseconds, the record's event time was stored as 1969-12-31T23:59:59.999.
    messages = [
        Message("t", 0, 0, None, b'{"a": 1, "b": 2}', -1),
        Message("t", 0, 1, None, b'{"a": 1, "b": 2, "ts": "2026-11-01T10:00:00Z"}', -1),
        msg(b'{"a": 1, "b": 2}', 2),
    ]
    out = decode_messages(messages, features=FEATURES, fields=["ts"], time_field="ts")
    times = out.frame["_event_time"].tolist()
    assert pd.isna(times[0])
    assert times[1] == pd.Timestamp("2026-11-01T10:00:00Z")
    assert times[2] == pd.Timestamp(1_700_000_000_000, unit="ms", tz="UTC")
    bare = decode_messages(messages[:1], features=FEATURES)
    assert pd.isna(bare.frame["_event_time"].iloc[0])


def test_decode_event_time_numbers_beside_text_are_epoch_seconds() -> None:
    # One batch with an ISO time and epoch numbers: the numbers were read as nanoseconds
    # (1970-01-01 00:00:01.79...) once the column held text as well.
    messages = [
        msg(b'{"a": 1, "b": 2, "ts": "2026-11-02T00:00:00Z"}', 0),
        msg(b'{"a": 1, "b": 2, "ts": 1793577602.5}', 1),
        msg(b'{"a": 1, "b": 2, "ts": "1793577605"}', 2),
        msg(b'{"a": 1, "b": 2, "ts": 1793577606000}', 3),  # milliseconds, by its size
    ]
    out = decode_messages(messages, features=FEATURES, fields=["ts"], time_field="ts")
    assert out.frame["_event_time"].tolist() == [
        pd.Timestamp("2026-11-02T00:00:00Z"),
        pd.Timestamp("2026-11-02T00:00:02.5Z"),
        pd.Timestamp("2026-11-02T00:00:05Z"),
        pd.Timestamp("2026-11-02T00:00:06Z"),
    ]


@dataclass
class MemorySink:
    batches: list[StreamBatch]
    fail_times: int = 0
    closed: bool = False

    def write(self, batch: StreamBatch) -> WriteResult:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("database down (simulated)")
        self.batches.append(batch)
        return WriteResult(scores_written=len(batch.records), rejects_written=len(batch.rejects))

    def close(self) -> None:
        self.closed = True

    def keys(self) -> list[str]:
        out: list[str] = []
        for b in self.batches:
            out.extend(b.records[SOURCE_KEY].tolist())
            out.extend(b.rejects.index.tolist())
        return out


@pytest.fixture(scope="module")
def stream_model(pump_model: tuple[AnomalyVAE, object]) -> AnomalyVAE:
    return pump_model[0]


def stream_config(model: AnomalyVAE, bootstrap: str, topic: str, **kafka: object) -> PipelineConfig:
    cfg = model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group_id=fresh_name("g"),
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_batch_wait_ms=100,
        **kafka,  # type: ignore[arg-type]
    )
    return cfg


def produce(
    bootstrap: str, topic: str, values: list[bytes], keys: list[bytes] | None = None
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, value in enumerate(values):
        producer.send(topic, value=value, key=None if keys is None else keys[i])
    producer.flush()
    producer.close()


def pump_values(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    frame = make_pump_data(n, anomaly_rate=0.05, seed=seed)
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [json.dumps(r).encode() for r in records], [str(r["pump_id"]).encode() for r in records]


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


class _StagedScorer:
    """Stands in for StreamScorer in _BatchWorker: records what each stage saw."""

    def __init__(self, fail_scoring: int | None = None) -> None:
        self.events: list[str] = []
        self.second_scored = threading.Event()
        self.fail_scoring = fail_scoring

    def _score_stage(self, records: list[int]) -> tuple[str, float]:
        if records[0] == self.fail_scoring:
            raise ValueError("scoring failed")
        self.events.append(f"scored {records[0]}")
        if records[0] == 2:
            self.second_scored.set()
        return f"batch {records[0]}", 0.0

    def _write_stage(self, records: list[int], batch: str, started: float) -> dict:
        if records[0] == 1:
            # Batch 2 is scored while batch 1 is still being written: the stages overlap.
            assert self.second_scored.wait(10)
        self.events.append(f"wrote {records[0]}")
        return {("t", 0): records[0] + 1}


def test_batches_are_scored_while_the_previous_one_is_written() -> None:
    from anomaly_vae.jobs.stream import _BatchWorker

    scorer = _StagedScorer()
    worker = _BatchWorker(scorer)  # type: ignore[arg-type]
    try:
        for first in (1, 2, 3):
            worker.submit([first])
        assert worker.drain(timeout=20)
        assert worker.error is None
        assert worker.completed() == [{("t", 0): 2}, {("t", 0): 3}, {("t", 0): 4}]
        assert scorer.events.index("scored 2") < scorer.events.index("wrote 1")
        assert [e for e in scorer.events if e.startswith("wrote")] == [
            "wrote 1",
            "wrote 2",
            "wrote 3",
        ]
    finally:
        worker.abort()


def test_a_failed_batch_stops_the_ones_behind_it() -> None:
    from anomaly_vae.jobs.stream import _BatchWorker

    scorer = _StagedScorer(fail_scoring=2)
    scorer.second_scored.set()
    worker = _BatchWorker(scorer)  # type: ignore[arg-type]
    try:
        for first in (1, 2, 3):
            worker.submit([first])
        assert worker.drain(timeout=20)
        assert isinstance(worker.error, ValueError)
        assert worker.completed() == [{("t", 0): 2}]  # batch 3 is never made committable
        assert "wrote 3" not in scorer.events
        assert worker.in_flight == 0
    finally:
        worker.abort()


def test_every_message_comes_out_exactly_once(broker: DevBroker, stream_model: AnomalyVAE) -> None:
    topic = create_topic(broker.bootstrap, partitions=3)
    values, keys = pump_values(600, seed=11)
    poison = [b"{oops", b"42", b'{"rpm": 1}', b'{"rpm": "NaN"}']
    produce(broker.bootstrap, topic, values + poison, keys + [b"x"] * len(poison))
    cfg = stream_config(stream_model, broker.bootstrap, topic)
    sink = MemorySink([])
    stats = StreamScorer(stream_model, cfg, sink).run(idle_timeout=3.0)
    assert sink.closed
    keys_out = sink.keys()
    assert len(keys_out) == len(set(keys_out)) == 604
    assert stats.consumed == 604
    assert stats.rejected == 4
    # Records with a null feature value are scored, the value filled in, and counted.
    frame = make_pump_data(600, anomaly_rate=0.05, seed=11)
    with_gaps = int(frame[stream_model.schema_.names].isna().any(axis=1).sum())
    assert with_gaps > 0
    assert stats.gaps == with_gaps
    assert stats.scored == 600
    assert committed_total(broker.bootstrap, cfg.kafka.group_id, topic, 3) == 604
    scored = pd.concat([b.records for b in sink.batches])
    assert set(scored["_entity"]) == {"P1", "P2", "P3", "P4"}


def test_the_lag_is_unknown_until_partitions_are_assigned(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # The progress line said 'lag 0' (caught up) while the group join was still pending and
    # no partition was assigned, and scoring_runs.lag (the API's /metrics gauge) held 0; the
    # first join also logged 'partitions revoked: []'.
    topic = create_topic(broker.bootstrap)
    values, keys = pump_values(30, seed=14)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, metrics_interval_s=0.2)
    reported: list[int | None] = []
    caplog.set_level("INFO", logger="anomaly_vae")
    scorer = StreamScorer(
        stream_model, cfg, MemorySink([]), on_metrics=lambda stats, _: reported.append(stats.lag)
    )
    stats = scorer.run(idle_timeout=2.0)
    assert stats.scored == 30
    lines = [r.getMessage() for r in caplog.records if r.name == "anomaly_vae.jobs.stream"]
    assigned = next(i for i, line in enumerate(lines) if line.startswith("partitions assigned"))
    before = [line for line in lines[:assigned] if "records/s" in line]
    assert before, lines  # the join takes seconds: progress lines come before it
    assert all("lag unknown," in line for line in before)
    assert reported[0] is None
    assert "partitions revoked: []" not in lines
    assert any("records/s, lag 0, 30 scored" in line for line in lines[assigned:])


def test_a_topic_not_on_the_broker_is_named_with_the_ones_close_to_it(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # A mistyped --topic on a broker that does not create topics on demand (most production
    # clusters) left the scorer polling without a word. The check runs before the subscription,
    # so it also speaks on the test broker, which creates the topic on subscription.
    real = create_topic(broker.bootstrap)
    typo = real[:-1] + ("x" if real[-1] != "x" else "y")
    caplog.set_level("INFO", logger="anomaly_vae")
    cfg = stream_config(stream_model, broker.bootstrap, typo)
    StreamScorer(stream_model, cfg, MemorySink([])).run(idle_timeout=1.0)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "anomaly_vae.jobs.stream" and r.levelname == "WARNING"
    ]
    said = [line for line in warnings if line.startswith(f"topic {typo!r} does not exist")]
    assert said, warnings
    assert f"did you mean {real!r}" in said[0]  # the closest first
    assert "check --topic / kafka.topic" in said[0]

    caplog.clear()
    produce(broker.bootstrap, real, *pump_values(5, seed=16))
    cfg = stream_config(stream_model, broker.bootstrap, real)
    assert StreamScorer(stream_model, cfg, MemorySink([])).run(idle_timeout=2.0).scored == 5
    assert not [r for r in caplog.records if "does not exist" in r.getMessage()]


def test_the_topic_check_logs_nothing_about_a_missing_group(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # The topic check's own client has no group: kafka-python then warned "group_id is None:
    # disabling auto-commit" at every start, to a user who had given --group.
    topic = create_topic(broker.bootstrap)
    caplog.set_level("INFO")
    scorer = StreamScorer(
        stream_model, stream_config(stream_model, broker.bootstrap, topic), MemorySink([])
    )
    assert topic in (scorer._broker_topics() or set())
    assert not [r for r in caplog.records if "group_id is None" in r.getMessage()]


def test_the_topic_check_gives_up_on_a_broker_that_never_answers(
    stream_model: AnomalyVAE, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check asks the broker for its topics; a broker that takes the connection and never
    # answers must not hold the scorer (its own client, in a thread, waited on for a while).
    import socket

    from anomaly_vae.jobs import stream as stream_job

    before = {t.ident for t in threading.enumerate()}
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # connections are taken by the kernel; nothing ever answers
    try:
        monkeypatch.setattr(stream_job, "TOPIC_CHECK_TIMEOUT_S", 1.0)
        cfg = stream_config(stream_model, f"127.0.0.1:{silent.getsockname()[1]}", "t")
        scorer = StreamScorer(stream_model, cfg, MemorySink([]))
        started = time.monotonic()
        assert scorer._broker_topics() is None
        assert time.monotonic() - started < 3.0
        scorer.stop()  # a stop is not kept waiting either
        monkeypatch.setattr(stream_job, "TOPIC_CHECK_TIMEOUT_S", 60.0)
        started = time.monotonic()
        assert scorer._say_if_topic_missing() is False  # unknown: nothing said
        assert time.monotonic() - started < 3.0

        # The clients given up on are closed: no thread of theirs goes on reconnecting to
        # that broker for the rest of the process (it logged errors once the port closed).
        def left() -> list[str]:
            return [t.name for t in threading.enumerate() if t.ident not in before]

        deadline = time.monotonic() + 1.0  # on their own they went on for seconds
        while left() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left()
    finally:
        silent.close()


def test_a_new_group_says_it_reads_the_topic_from_its_earliest_offset(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # A new group on a topic with history scored all of it (kafka.auto_offset_reset:
    # earliest), alerts included, and no line said where reading started or why.
    topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_values(20, seed=15)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic)
    caplog.set_level("INFO", logger="anomaly_vae")
    assert StreamScorer(stream_model, cfg, MemorySink([])).run(idle_timeout=2.0).scored == 20
    lines = [r.getMessage() for r in caplog.records if r.name == "anomaly_vae.jobs.stream"]
    group = cfg.kafka.group_id
    assert (
        f"group {group} has no committed offset on 2 of the 2 partition(s) assigned "
        f"({topic}:0-1): reading them from their earliest retained offset" in "\n".join(lines)
    ), lines
    caplog.clear()
    produce(broker.bootstrap, topic, values[:3], keys[:3])
    assert StreamScorer(stream_model, cfg, MemorySink([])).run(idle_timeout=2.0).scored == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "anomaly_vae.jobs.stream"]
    assert f"group {group} resumes from its committed offsets on 2 partition(s)" in lines


def test_a_change_of_only_the_rule_or_critical_level_is_said_in_the_log(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # A new version changing only the alert rule (PATCH {"alert_rule": {"k": 3, "n": 3}}) or
    # the critical level was logged as "threshold in force is now 3 (version 3, was 3)": the
    # operator could not tell the scorer had taken the change.
    from anomaly_vae.jobs.stream import ThresholdInForce

    versions = iter(
        [
            ThresholdInForce(value=3.0, version=2, alert_rule={"k": 1, "n": 1}),
            ThresholdInForce(value=3.0, version=3, alert_rule={"k": 3, "n": 3}),
            ThresholdInForce(value=3.0, version=4, critical=6.0, alert_rule={"k": 3, "n": 3}),
        ]
    )

    class Source:
        def current(self) -> ThresholdInForce:
            return next(versions)

    cfg = stream_config(stream_model, "127.0.0.1:1", "t", threshold_refresh_s=1e-9)
    scorer = StreamScorer(stream_model, cfg, MemorySink([]), thresholds=Source())
    caplog.set_level("INFO", logger="anomaly_vae.jobs.stream")
    for _ in range(3):
        scorer._current_threshold()
    lines = [r.getMessage() for r in caplog.records if "threshold in force" in r.getMessage()]
    assert lines[1] == (
        "threshold in force is now 3 (version 3, was 3): alert rule 3 of 3 records, resolved "
        "after 1 normal record (was 1 of 1 record, resolved after 1 normal record)"
    )
    assert lines[2] == "threshold in force is now 3 (version 4, was 3): critical 6 (was none)"


def test_partitions_are_named_in_their_order_in_the_log() -> None:
    # 'partitions assigned' on a topic of 12 read t:0, t:1, t:10, t:11, t:2...
    from anomaly_vae.jobs.stream import _names

    # A run of partitions is one range: 64 partitions made three log lines of some 700
    # characters at each assignment (t:0, t:1, ..., t:63).
    assigned = {TopicPartition("t", p) for p in range(12)} | {TopicPartition("s", 2)}
    assert _names(assigned) == ["s:2", "t:0-11"]
    gaps = {TopicPartition("t", p) for p in (0, 1, 2, 5, 7, 8, 10)}
    assert _names(gaps) == ["t:0-2", "t:5", "t:7-8", "t:10"]
    assert _names({TopicPartition("t", p) for p in range(64)}) == ["t:0-63"]


def test_kafka_pythons_slow_task_warning_under_a_second_is_not_shown(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # kafka-python times each step of its event loop in wall time, which in a scorer includes
    # waiting for the interpreter lock held by the scoring thread: on a busy machine every
    # start on a topic of 64 partitions logged 'Task ... ran for 0.229s ... It is blocking the
    # event loop ... Other pollers will time out', no fault, nothing to do (at the group join,
    # before any rebalance listener). A stall of a second or more still shows.
    from anomaly_vae.errors import ConfigError

    selector = logging.getLogger("kafka.net.selector")
    for installed in list(selector.filters):  # as a fresh process starts
        selector.removeFilter(installed)
    template = (
        "Task <kafka.net.selector.Task object at 0x7f> ran for %s (>0.100s threshold). It is "
        "blocking the event loop -- likely a tight sync loop inside a coroutine. Other "
        "pollers will time out."
    )

    def consumer() -> object:  # the client's constructor: where the join's lines come from
        selector.warning(template % "0.316s")
        selector.warning(template % "2.500s")
        selector.warning("another warning")
        raise ValueError("no client in this test")

    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    scorer = StreamScorer(stream_model, cfg, MemorySink([]), consumer_factory=consumer)
    caplog.set_level("WARNING", logger="kafka")
    with pytest.raises(ConfigError):
        scorer.run(idle_timeout=1.0)
    # The first words: an in-process CLI test run before this one in the same process leaves
    # setup_logging's note on repeated kafka-python lines behind.
    shown = [r.getMessage()[:15] for r in caplog.records if r.name == "kafka.net.selector"]
    assert shown == ["Task <kafka.net", "another warning"]
    assert "2.500s" in caplog.records[0].getMessage()


def test_simulate_does_not_show_kafka_pythons_slow_task_warning_under_a_second(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # simulate's admin client and producer run the same event loop: against a broker not up
    # yet, its retry lines came with 'Task ... ran for 0.164s ... It is blocking the event
    # loop ... Other pollers will time out', which the stream scorer already kept quiet.
    from anomaly_vae.cli import main

    selector = logging.getLogger("kafka.net.selector")
    for installed in list(selector.filters):  # as a fresh process starts
        selector.removeFilter(installed)
    with pytest.raises(SystemExit):  # refused after logging is set up, before any client
        main(["simulate", "--bootstrap", "127.0.0.1:9", "--rate", "0"])
    assert "--rate must be" in capsys.readouterr().err
    task = "Task <kafka.net.selector.Task object at 0x7f> ran for %s (>0.100s threshold). It is"
    selector.warning(task % "0.164s")  # kafka-python formats the message itself
    selector.warning(task % "2.500s")
    err = capsys.readouterr().err
    assert "0.164s" not in err
    assert "2.500s" in err


def test_a_stream_mostly_over_the_threshold_is_named_unlike_the_training_data(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # A model scoring another site's stream flagged every record, and the progress line said
    # only "300 flagged": no hint that the data, not every pump, had changed.
    topic = create_topic(broker.bootstrap)
    values, keys = pump_values(300, seed=15)
    shifted = []
    for value in values:
        record = json.loads(value)
        if record["vibration"] is not None:
            record["vibration"] *= 4
        shifted.append(json.dumps(record).encode())
    produce(broker.bootstrap, topic, shifted, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, metrics_interval_s=0.2)
    caplog.set_level("INFO", logger="anomaly_vae")
    stats = StreamScorer(stream_model, cfg, MemorySink([])).run(idle_timeout=2.0)
    assert stats.scored == 300
    assert stats.flagged > 150
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and "crossed the threshold" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings  # once, not on every progress line
    assert "unless most of the stream is anomalous, it is unlike" in warnings[0]
    # A stream like the training data says nothing of the kind.
    caplog.clear()
    topic = create_topic(broker.bootstrap)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, metrics_interval_s=0.2)
    assert StreamScorer(stream_model, cfg, MemorySink([])).run(idle_timeout=2.0).scored == 300
    assert not [r for r in caplog.records if "crossed the threshold" in r.getMessage()]


def test_stop_and_resume_replays_nothing_and_loses_nothing(
    broker: DevBroker, stream_model: AnomalyVAE
) -> None:
    topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_values(500, seed=12)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, max_batch_records=64)
    first, second = MemorySink([]), MemorySink([])
    stats = StreamScorer(stream_model, cfg, first).run(max_messages=150)
    assert stats.consumed == 150
    StreamScorer(stream_model, cfg, second).run(idle_timeout=3.0)
    all_keys = first.keys() + second.keys()
    assert len(all_keys) == len(set(all_keys)) == 500


def test_database_outage_is_retried_without_commit(
    broker: DevBroker, stream_model: AnomalyVAE
) -> None:
    topic = create_topic(broker.bootstrap)
    values, keys = pump_values(50, seed=13)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic)
    sink = MemorySink([], fail_times=2)
    stats = StreamScorer(stream_model, cfg, sink).run(idle_timeout=2.0)
    assert stats.write_retries == 2
    assert len(sink.keys()) == 50


@dataclass
class RefusingSink(MemorySink):
    """Writes ``good`` batches, then refuses one with an error that is not worth retrying."""

    good: int = 2

    def write(self, batch: StreamBatch) -> WriteResult:
        if len(self.batches) >= self.good:
            raise ValueError("refused (simulated)")
        return super().write(batch)


def test_a_refused_write_commits_nothing_of_its_batch(
    broker: DevBroker, stream_model: AnomalyVAE
) -> None:
    # The batch a write failed on must stay uncommitted (scored again on restart): committing
    # its offsets once the run had failed passed every test, the records silently lost.
    topic = create_topic(broker.bootstrap)
    values, keys = pump_values(100, seed=16)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, max_batch_records=20)
    first = RefusingSink([])
    with pytest.raises(ValueError, match="refused"):
        StreamScorer(stream_model, cfg, first).run(idle_timeout=3.0)
    written = first.keys()
    assert 0 < len(written) < 100  # two batches of up to 20
    assert committed_total(broker.bootstrap, cfg.kafka.group_id, topic, 1) == len(written)
    second = MemorySink([])
    StreamScorer(stream_model, cfg, second).run(idle_timeout=3.0)
    all_keys = written + second.keys()
    assert len(all_keys) == len(set(all_keys)) == 100


def test_a_rejected_record_keeps_only_the_message_fields(stream_model: AnomalyVAE) -> None:
    # The raw JSON of a record that failed validation held the decoder's own columns
    # (_source_key, _entity, _event_time) besides the message's fields.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    record = make_pump_data(1, seed=3).astype(object).to_dict(orient="records")[0]
    record["rpm"] = "oops"
    message = msg(json.dumps(record).encode(), 0, key=b"P1")
    out = StreamScorer(stream_model, cfg, MemorySink([])).score_records([message])
    assert out.rejects.loc["t:0:0", "reason"] == "column 'rpm': 'oops' is not a number"
    raw = json.loads(str(out.rejects.loc["t:0:0", "raw"]))
    assert not [name for name in raw if name.startswith("_")]
    assert set(stream_model.schema_.names) <= set(raw) <= set(record)
    assert raw["rpm"] == "oops"
    assert raw["flow"] == record["flow"]


def test_a_rejected_record_keeps_the_message_as_it_came(stream_model: AnomalyVAE) -> None:
    # A message rejected by validation (a feature given as a JSON object) went to the dead
    # letters re-serialised from the decoded row: the object as Python text ("{'v': 6}"), and
    # every field the pipeline does not name (here "note") gone. Now the message as it came.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    record = make_pump_data(1, seed=4).astype(object).to_dict(orient="records")[0]
    record["rpm"] = {"value": 1500, "unit": "rpm"}
    record["note"] = "kept"
    value = json.dumps(record).encode()
    out = StreamScorer(stream_model, cfg, MemorySink([])).score_records([msg(value, 0)])
    assert str(out.rejects.loc["t:0:0", "reason"]).startswith("column 'rpm': {'value': 1500")
    assert out.rejects.loc["t:0:0", "raw"] == value.decode()


def test_a_category_sent_as_a_json_array_or_object_is_a_dead_letter(
    stream_model: AnomalyVAE,
) -> None:
    # A producer nesting a categorical field ({"station": {"name": "north"}}) had it scored as
    # the unknown category "{'name': 'north'}" (Python's text of the dict): flagged, explained
    # by 'station', and the warning named a value nobody sent. It is a reject, as a number
    # field holding one is.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    record = make_pump_data(1, seed=4).astype(object).to_dict(orient="records")[0]
    values = [
        json.dumps({**record, "station": {"name": record["station"]}}).encode(),
        json.dumps({**record, "station": [record["station"]]}).encode(),
        json.dumps(record).encode(),
    ]
    out = StreamScorer(stream_model, cfg, MemorySink([])).score_records(
        [msg(v, i) for i, v in enumerate(values)]
    )
    assert str(out.rejects.loc["t:0:0", "reason"]) == (
        "column 'station': {'name': 'north'} is an object, not a category (text or a number)"
    )
    assert str(out.rejects.loc["t:0:1", "reason"]).startswith(
        "column 'station': ['north'] is an array"
    )
    assert out.rejects.loc["t:0:0", "raw"] == values[0].decode()
    assert out.records["_source_key"].tolist() == ["t:0:2"]


def test_sigterm_like_stop_finishes_the_batch(broker: DevBroker, stream_model: AnomalyVAE) -> None:
    topic = create_topic(broker.bootstrap)
    cfg = stream_config(stream_model, broker.bootstrap, topic)
    sink = MemorySink([])
    scorer = StreamScorer(stream_model, cfg, sink)
    runner = threading.Thread(target=scorer.run)
    runner.start()
    time.sleep(4.0)
    values, keys = pump_values(40, seed=14)
    produce(broker.bootstrap, topic, values, keys)
    deadline = time.monotonic() + 20
    while len(sink.keys()) < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped_at = time.monotonic()
    scorer.stop()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert time.monotonic() - stopped_at < 5.0
    assert len(sink.keys()) == 40
    assert committed_total(broker.bootstrap, cfg.kafka.group_id, topic, 1) == 40


@dataclass
class SlowSink(MemorySink):
    """Says when a write begins, then takes a while to finish it."""

    started: threading.Event = field(default_factory=threading.Event)

    def write(self, batch: StreamBatch) -> WriteResult:
        self.started.set()
        time.sleep(1.0)
        return super().write(batch)


@dataclass
class GatedSink(MemorySink):
    """Holds each write until ``release`` is set."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def write(self, batch: StreamBatch) -> WriteResult:
        self.started.set()
        assert self.release.wait(60)
        return super().write(batch)


def test_the_lag_counts_the_records_fetched_but_not_yet_written(
    broker: DevBroker, stream_model: AnomalyVAE
) -> None:
    # The lag was the end of the partitions less the fetch position: 'lag 0' (and the /metrics
    # gauge at 0) while the batches in flight, up to 3 x 20,000 records, were not yet written.
    topic = create_topic(broker.bootstrap)
    values, keys = pump_values(30, seed=18)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, metrics_interval_s=0.1)
    sink = GatedSink([])
    seen_while_writing = threading.Event()
    lags: list[int | None] = []

    def report(stats: object, _rate: float) -> None:
        if sink.started.is_set() and not sink.release.is_set():
            lags.append(scorer.stats.lag)
            seen_while_writing.set()

    scorer = StreamScorer(stream_model, cfg, sink, on_metrics=report)
    runner = threading.Thread(target=scorer.run, kwargs={"idle_timeout": 2.0})
    runner.start()
    try:
        assert sink.started.wait(60)
        assert seen_while_writing.wait(30)
    finally:
        sink.release.set()
        runner.join(timeout=60)
    assert lags[0] == 30, lags
    assert scorer.stats.scored == 30
    assert scorer.stats.lag == 0


def test_a_rebalance_while_batches_are_written_leaves_the_heartbeats_running(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # The rebalance listener waited for the batches in flight on kafka-python's IO thread,
    # blocking its event loop (heartbeats included: up to 30 s, past a 10 s session timeout),
    # and kafka-python told the operator that 'Sync listeners block the consumer event loop'
    # and that a task 'is blocking the event loop'.
    topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_values(200, seed=19)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, max_batch_records=10)
    sink = SlowSink([])
    scorer = StreamScorer(stream_model, cfg, sink)
    caplog.set_level("INFO", logger="anomaly_vae")
    runner = threading.Thread(target=scorer.run)
    runner.start()
    other = None
    try:
        assert sink.started.wait(60)  # batches are being written (a second each)
        other = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=cfg.kafka.group_id,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            enable_auto_commit=False,
        )
        deadline = time.monotonic() + 60
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(timeout_ms=200)
        assert other.assignment()  # the group rebalanced: one partition each
    finally:
        if other is not None:
            other.close()
        scorer.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()
    mine = [r.getMessage() for r in caplog.records if r.name == "anomaly_vae.jobs.stream"]
    assert any(line.startswith("partitions revoked") for line in mine), mine
    blocked = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("kafka.")
        and ("blocking the event loop" in r.getMessage() or "Sync listeners" in r.getMessage())
    ]
    assert not blocked, blocked


def test_an_idle_timeout_does_not_stop_a_scorer_in_the_middle_of_a_rebalance(
    broker: DevBroker, stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # The poll that runs a rebalance takes seconds (the batches in flight written, the join):
    # the idle clock ran meanwhile, and the scorer stopped for 'no message for 1.5 s' between
    # its partitions revoked and assigned, leaving the group mid-rebalance.
    topic = create_topic(broker.bootstrap, partitions=2)
    values, keys = pump_values(200, seed=20)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, max_batch_records=10)
    sink = SlowSink([])
    scorer = StreamScorer(stream_model, cfg, sink)
    caplog.set_level("INFO", logger="anomaly_vae")
    runner = threading.Thread(target=scorer.run, kwargs={"idle_timeout": 1.5})
    runner.start()
    other = None
    try:
        assert sink.started.wait(60)
        other = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=cfg.kafka.group_id,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            enable_auto_commit=False,
        )
        deadline = time.monotonic() + 60
        while not other.assignment() and time.monotonic() < deadline and runner.is_alive():
            other.poll(timeout_ms=200)
    finally:
        if other is not None:
            other.close()
        runner.join(timeout=120)
    assert not runner.is_alive()
    lines = [r.getMessage() for r in caplog.records if r.name == "anomaly_vae.jobs.stream"]
    revoked = next(i for i, line in enumerate(lines) if line.startswith("partitions revoked"))
    after = [line.split(":")[0] for line in lines[revoked + 1 :]]
    assert "partitions assigned" in after, lines
    assert after.index("partitions assigned") < after.index("no message for 1.5 s"), lines


def test_a_stop_during_a_write_finishes_and_commits_the_batches_in_hand(
    broker: DevBroker, stream_model: AnomalyVAE
) -> None:
    # The test above stops once every record is written and committed: a stop that made the
    # batches in hand committable without writing them (records lost) passed it.
    topic = create_topic(broker.bootstrap)
    values, keys = pump_values(40, seed=17)
    produce(broker.bootstrap, topic, values, keys)
    cfg = stream_config(stream_model, broker.bootstrap, topic, max_batch_records=10)
    sink = SlowSink([])
    scorer = StreamScorer(stream_model, cfg, sink)
    runner = threading.Thread(target=scorer.run)
    runner.start()
    assert sink.started.wait(30)
    scorer.stop()  # while the first batch is being written
    runner.join(timeout=30)
    assert not runner.is_alive()
    written = sink.keys()
    assert written
    assert len(written) == len(set(written))
    assert committed_total(broker.bootstrap, cfg.kafka.group_id, topic, 1) == len(written)
    rest = MemorySink([])
    StreamScorer(stream_model, cfg, rest).run(idle_timeout=3.0)
    assert sorted(written + rest.keys()) == sorted(f"{topic}:0:{i}" for i in range(40))


@dataclass
class _Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@pytest.mark.parametrize(
    ("key", "value", "headers", "cut"),
    [
        (b"k" * 1_200_000, b"{}", [("trace", b"t-1")], "key-bytes"),
        (b"P1", b"not json", [("big", b"h" * 1_100_000), ("trace", b"t-1")], "header-bytes"),
        (b"P1", b"x", [(f"h{i}", b"v" * 9_000) for i in range(200)], "headers-dropped"),
        (b"k" * 9_000, b"v" * 980_000, [], "value-bytes"),
    ],
)
def test_a_dead_letter_fits_the_producer_whatever_the_key_and_headers_hold(
    key: bytes, value: bytes, headers: list[tuple[str, bytes]], cut: str
) -> None:
    # Only the value was cut to fit: a poison message with a 1.2 MB key or a 1.1 MB header
    # made the producer raise MessageSizeTooLargeError in the middle of the batch, so the
    # stream stopped with a traceback, and again on every restart (the batch is replayed).
    from kafka.record.default_records import DefaultRecordBatchBuilder

    from anomaly_vae.sources.kafka import dead_letter_message

    limit = 1_048_576 - 65_536  # what the scorer gives: the producer's default, less room
    original = _Consumed("t", 0, 7, key, value, headers)
    out_key, out_value, out_headers = dead_letter_message(
        "t:0:7", "some reason", original, max_bytes=limit
    )
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(out_key, out_value, out_headers)
    assert size <= limit
    named = dict(out_headers)
    assert named["anomaly-vae.error.source-key"] == b"t:0:7"
    assert f"anomaly-vae.error.{cut}" in named
    assert (out_key or b"") == key[: len(out_key or b"")]  # what is kept is the start
    assert out_value == value[: len(out_value or b"")]
    if cut == "key-bytes":
        assert int(named["anomaly-vae.error.key-bytes"]) == len(key)
        assert named["trace"] == b"t-1"  # what fitted is kept as it came
        assert out_value == value
    if cut == "header-bytes":
        assert named["anomaly-vae.error.header-bytes"] == b"big=1100000"
        assert named["trace"] == b"t-1"
        assert out_key == key
    if cut == "headers-dropped":
        assert named["anomaly-vae.error.headers-dropped"] == b"200"
        assert out_value == value


def test_a_dead_letter_that_fits_is_the_message_unchanged() -> None:
    from anomaly_vae.sources.kafka import dead_letter_message

    original = _Consumed("t", 0, 7, b"P1", b"v" * 500_000, [("trace", b"t-1")])
    out_key, out_value, out_headers = dead_letter_message(
        "t:0:7", "r", original, max_bytes=1_000_000
    )
    assert (out_key, out_value) == (b"P1", original.value)
    assert out_headers[0] == ("trace", b"t-1")
    assert not [k for k, _ in out_headers if k.endswith(("-bytes", "-dropped"))]


class _RefusingProducer:
    """A producer whose records the broker refuses: send() succeeds, the future fails."""

    def __init__(self) -> None:
        self.config = {"max_request_size": 1_048_576}
        self.flushed = 0

    def send(self, topic: str, value: bytes | None = None, **_: object) -> object:
        from kafka.errors import TopicAuthorizationFailedError
        from kafka.future import Future

        return Future().failure(TopicAuthorizationFailedError(topic))

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1


def test_a_dead_letter_the_broker_refuses_is_logged_not_lost_without_a_word(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # flush() returns once every record is done, refused ones included: a dead-letter topic
    # the scorer may not write to lost every letter with nothing in the log.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t", dead_letter_topic="t.dlq")
    scorer = StreamScorer(stream_model, cfg, MemorySink([]))
    producer = _RefusingProducer()
    scorer._producer = producer
    records = [msg(b"{not json", 0), msg(b"[1]", 1)]
    batch = scorer.score_records(records)
    with caplog.at_level("ERROR", logger="anomaly_vae.jobs.stream"):
        scorer._publish(batch, WriteResult(), records)
    assert producer.flushed == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].startswith("2 record(s) could not be published to topic t.dlq")
    assert "TopicAuthorizationFailedError" in errors[0]


@dataclass
class _OutboxSink(MemorySink):
    """A sink with an alert outbox in memory (``StreamDatabaseSink(outbox=True)``'s methods)."""

    rows: dict[int, AlertMessage] = field(default_factory=dict)
    reads: int = 0

    def outbox_pending(self, after_id: int, limit: int) -> list[AlertMessage]:
        self.reads += 1
        return [self.rows[i] for i in sorted(self.rows) if i > after_id][:limit]

    def outbox_published(self, ids: list[int]) -> None:
        for i in ids:
            self.rows.pop(i, None)

    def outbox_waiting(self) -> int:
        return len(self.rows)


class _FlakyProducer:
    """The broker refuses the first ``refuse`` records, then takes every one (in order)."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.taken: list[bytes] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, **_: object) -> object:
        from kafka.errors import NotLeaderForPartitionError
        from kafka.future import Future

        if self.refuse > 0:
            self.refuse -= 1
            return Future().failure(NotLeaderForPartitionError(topic))
        self.taken.append(value)
        return Future().success(None)

    def flush(self, timeout: float | None = None) -> None:
        pass


def test_an_alert_event_the_broker_refuses_is_sent_again_before_the_entitys_next(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # The alerts topic is at least once: an event the broker refuses (its retries ran out)
    # stays in the outbox and goes out, oldest first, with the next batch, before that batch's
    # own; it was logged and lost before.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t", alerts_topic="alerts")
    sink = _OutboxSink([])
    scorer = StreamScorer(stream_model, cfg, sink)
    producer = _FlakyProducer(refuse=1)
    scorer._producer = producer
    scorer._start_outbox()  # nothing left from before
    records = [msg(b"[1]", 0)]
    batch = scorer.score_records(records)
    events = {
        i: AlertMessage(key=b"P1" if i != 2 else b"P2", value=f"event {i}".encode(), outbox_id=i)
        for i in range(1, 5)
    }

    def publish(*ids: int) -> None:
        sink.rows.update({i: events[i] for i in ids})  # written with the batch
        scorer._publish(batch, WriteResult(messages=[events[i] for i in ids]), records)

    with caplog.at_level("ERROR", logger="anomaly_vae.jobs.stream"):
        publish(1, 2)
    assert producer.taken == [b"event 2"]
    assert list(sink.rows) == [1]  # refused: kept
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "1 alert event(s) could not be published to topic alerts (first: "
        "[Error 6] NotLeaderForPartitionError: alerts); they stay in the alert outbox and are "
        "sent again, oldest first, with the next batch"
    ]
    reads = sink.reads
    publish(3)
    assert producer.taken == [b"event 2", b"event 1", b"event 3"]  # P1's in order
    assert sink.rows == {}
    assert sink.reads > reads
    reads = sink.reads
    publish(4)  # caught up: the batch's own, without reading the outbox
    assert producer.taken[-1] == b"event 4"
    assert sink.reads == reads
    assert sink.rows == {}


def test_the_progress_line_says_how_many_alert_events_wait_in_the_outbox(
    stream_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker refusing the alerts topic left events piling up in the outbox, and the
    # scorer's progress line (its metrics, every kafka.metrics_interval_s) said nothing.
    def progress(sink: _OutboxSink, **kafka: object) -> str:
        cfg = stream_config(stream_model, "127.0.0.1:9", "t", **kafka)
        scorer = StreamScorer(stream_model, cfg, sink)
        caplog.clear()
        with caplog.at_level("INFO", logger="anomaly_vae.jobs.stream"):
            scorer._log_metrics((0, time.monotonic() - 1))
        return next(r.getMessage() for r in caplog.records if "records/s" in r.getMessage())

    waiting = _OutboxSink([])
    waiting.rows = {i: AlertMessage(key=b"P1", value=b"e", outbox_id=i) for i in (1, 2)}
    line = progress(waiting, alerts_topic="alerts")
    assert line.endswith(", 0 rejected, 2 alert event(s) waiting in the alert outbox"), line
    assert progress(_OutboxSink([]), alerts_topic="alerts").endswith(", 0 rejected")
    assert progress(waiting).endswith(", 0 rejected")  # no alerts topic: not its outbox


class _RecordingSink(MemorySink):
    failure: str | None = None

    def record_failure(self, error: str) -> None:
        self.failure = error


def _unreachable() -> object:
    from kafka.errors import KafkaTimeoutError

    raise KafkaTimeoutError("Unable to bootstrap")


def test_an_idle_timeout_also_ends_the_wait_for_a_broker_that_never_answers(
    stream_model: AnomalyVAE,
) -> None:
    # With a wrong --bootstrap, 'stream --idle-timeout 3' retried for good (only a signal
    # ended it), and its run stayed 'running' in the database: the idle clock did not run
    # before the first connection. Now the session gives up after the idle timeout, with a
    # line naming the address, and its run is finished as failed.
    from anomaly_vae.errors import ConfigError

    cfg = stream_config(stream_model, "127.0.0.1:1", "t", connect_backoff_max_s=0.2)
    sink = _RecordingSink([])
    scorer = StreamScorer(stream_model, cfg, sink, consumer_factory=_unreachable)
    started = time.monotonic()
    safety = threading.Timer(15.0, scorer.stop)  # a scorer that waits for good fails, not hangs
    safety.start()
    try:
        with pytest.raises(ConfigError, match=r"broker at 127\.0\.0\.1:1 not reachable after"):
            scorer.run(idle_timeout=1.0)
    finally:
        safety.cancel()
    assert time.monotonic() - started < 10
    assert sink.closed
    assert sink.failure is not None
    assert "not reachable" in sink.failure


def test_a_stop_while_waiting_for_the_broker_closes_the_session(stream_model: AnomalyVAE) -> None:
    # SIGTERM while the broker was down returned without closing the sink: the session's run
    # stayed 'running' for good.
    cfg = stream_config(stream_model, "127.0.0.1:1", "t", connect_backoff_max_s=0.2)
    sink = _RecordingSink([])
    scorer = StreamScorer(stream_model, cfg, sink, consumer_factory=_unreachable)
    threading.Timer(0.5, scorer.stop).start()
    stats = scorer.run()
    assert stats.consumed == 0
    assert sink.closed
    assert sink.failure is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size 0: Input should be greater than or equal to 1"),
        (["--threads", "0"], "--threads 0: Input should be greater than or equal to 1"),
        (["--session-timeout-ms", "5"], "--session-timeout-ms 5: Input should be greater"),
        (["--idle-timeout", "0"], "--idle-timeout must be a number of seconds > 0"),
    ],
)
def test_stream_options_out_of_range_are_one_line_naming_the_flag(
    pump_model: tuple[AnomalyVAE, object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    # --batch-size 0 was a pydantic report over four lines naming '--max-batch-records', a
    # flag that does not exist; --idle-timeout 0 stopped at once, having read nothing.
    model_dir = str(pump_model[1])
    where = ["--bootstrap", "127.0.0.1:1", "--db", f"sqlite:///{tmp_path / 'r.db'}"]
    done = run_inline(capsys, "stream", "--model-dir", model_dir, "--topic", "t", *where, *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "validation error" not in done.stderr


@pytest.mark.parametrize("flag", ["--dead-letter-topic", "--alerts-topic"])
def test_an_output_topic_that_is_the_scored_topic_is_refused_before_anything_starts(
    pump_model: tuple[AnomalyVAE, object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
) -> None:
    # '--dead-letter-topic sensors' on topic sensors ran without end: each rejected message
    # went back into the topic, was consumed, rejected and published again (254 rejects of 2
    # messages in 40 s, headers piling up).
    db = tmp_path / "r.db"
    where = ["--bootstrap", "127.0.0.1:1", "--db", f"sqlite:///{db}", "--topic", "sensors"]
    model_dir = str(pump_model[1])
    args = ["--model-dir", model_dir, *where, "--idle-timeout", "1", flag, "sensors"]
    done = run_inline(capsys, "stream", *args)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {flag} sensors (kafka.")
    assert "is the topic being scored" in last
    assert not db.exists()  # refused before a run was registered
    fine = stream_config(pump_model[0], "127.0.0.1:1", "sensors", dead_letter_topic="sensors.dlq")
    StreamScorer(pump_model[0], fine, MemorySink([]))
    looped = stream_config(pump_model[0], "127.0.0.1:1", "sensors", alerts_topic="sensors")
    from anomaly_vae.errors import ConfigError

    with pytest.raises(ConfigError, match="is the topic being scored"):
        StreamScorer(pump_model[0], looped, MemorySink([]))


def test_one_topic_for_alerts_and_dead_letters_is_refused(
    pump_model: tuple[AnomalyVAE, object],
) -> None:
    # The dead letters are the rejected messages as they came: an alerts consumer reading
    # the same topic got sensor records among its alert events.
    from anomaly_vae.errors import ConfigError

    shared = stream_config(
        pump_model[0], "127.0.0.1:1", "sensors", alerts_topic="events", dead_letter_topic="events"
    )
    with pytest.raises(ConfigError, match="are both events: the alerts' consumers would"):
        StreamScorer(pump_model[0], shared, MemorySink([]))
    apart = stream_config(
        pump_model[0], "127.0.0.1:1", "sensors", alerts_topic="alerts", dead_letter_topic="dlq"
    )
    StreamScorer(pump_model[0], apart, MemorySink([]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pumps", "0"], "--pumps must be >= 1, got 0"),
        (["--partitions", "0"], "--partitions must be >= 1, got 0"),
        (["--count", "-1"], "--count must be >= 1, got -1"),
        (["--duration", "-1"], "--duration must be a number of seconds > 0"),
        # NaN was a ValueError traceback from pandas; inf gave every record one event time.
        (["--rate", "nan"], "--rate must be a number of messages per second > 0, got nan"),
        (["--rate", "inf"], "--rate must be a number of messages per second > 0, got inf"),
        # The dev broker created these; the scorer then refused to read them.
        (["--topic", "pumps,fans"], "--topic pumps,fans: 'pumps,fans' is not one Kafka topic"),
        (["--topic", "bad/name"], "--topic bad/name: 'bad/name' is not a Kafka topic name"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),  # was numpy's ValueError traceback
        # kafka-python's IndexError traceback (no address) or ValueError (a port not a number).
        (["--bootstrap", ""], "--bootstrap : no broker address: give host:port"),
        (["--bootstrap", "h:x"], "--bootstrap h:x: 'h:x' is not a broker address: its port 'x'"),
    ],
)
def test_simulate_options_out_of_range_are_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    # --pumps 0 was a ValueError traceback; --count -1 or --duration -1 sent nothing, exit 0.
    done = run_inline(capsys, "simulate", "--bootstrap", "127.0.0.1:1", *args)
    assert done.returncode == 2
    assert f"error: {message}" in done.stderr


def test_simulate_says_when_an_existing_topic_keeps_its_own_partitions(
    broker: DevBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    # --partitions 2 on a topic of 4 partitions was ignored without a word.
    topic = create_topic(broker.bootstrap, partitions=4)
    args = ["simulate", "--bootstrap", broker.bootstrap, "--topic", topic, "--count", "1"]
    done = run_inline(capsys, *args, "--partitions", "2")
    assert done.returncode == 0, done.stderr
    assert f"topic {topic} exists with 4 partitions: --partitions 2 applies only" in done.stdout
    done = run_inline(capsys, *args, "--partitions", "4")  # as asked: nothing to say
    assert done.returncode == 0, done.stderr
    assert "exists" not in done.stdout


def test_the_simulated_stream_has_the_pumps_the_demo_trains_on(stream_model: AnomalyVAE) -> None:
    # The simulator drew each pump's size and phase from the seed of each block of 2,000
    # messages (and ran 8 pumps where the demo trains on 4): a model trained on the demo's
    # rows flagged a quarter of a normal simulated stream, and a pump's readings jumped at
    # every block. Pumps are now fixed by their number, their cycles go on across blocks.
    import itertools

    from anomaly_vae.simulate import BLOCK, pump_messages

    triples = list(
        itertools.islice(
            pump_messages(rate=2000.0, anomaly_rate=0.01, n_pumps=4, seed=0), 3 * BLOCK
        )
    )
    frame = pd.DataFrame([json.loads(value) for _, value, _ in triples])
    assert sorted(frame["pump_id"].unique()) == ["P1", "P2", "P3", "P4"]
    scored = stream_model.score(frame)
    normal = frame["label"].to_numpy() == 0
    false_alarms = float(scored["is_anomaly"].to_numpy()[normal].mean())
    assert false_alarms < 0.01, false_alarms  # the threshold is the 99.5th percentile
    # A pump's speed moves smoothly across a block boundary, as within a block.
    rpm = frame.loc[frame["pump_id"] == "P1", "rpm"].to_numpy()
    steps = abs(rpm[1:] - rpm[:-1])
    boundary = BLOCK // 4 - 1  # P1's last reading of the first block, then its first of the next
    assert steps[boundary] < 5 * float(pd.Series(steps).median()) + 40


@pytest.mark.parametrize("field", ["rpm", "station", "event_id"])
def test_a_value_nested_deep_is_a_dead_letter_not_a_crash(
    stream_model: AnomalyVAE, field: str
) -> None:
    # A field of a message holding arrays 1,000 deep (orjson reads up to 1,024) raised
    # RecursionError where its text was taken (pandas' astype, repr for the reason): the
    # scorer stopped on one hostile message, and on restart read it again.
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    record = make_pump_data(2, seed=5).astype(object).to_dict(orient="records")
    deep = json.dumps({**record[0], field: "X"}).replace('"X"', "[" * 1000 + "]" * 1000)
    messages = [msg(deep.encode(), 0, key=b"P1"), msg(json.dumps(record[1]).encode(), 1)]
    out = StreamScorer(stream_model, cfg, MemorySink([])).score_records(messages)
    assert out.records[SOURCE_KEY].tolist() == ["t:0:1"]
    assert out.rejects.loc["t:0:0", "reason"] == (
        f"field {field!r}: a JSON array nested over 32 deep: expected a number or text"
    )
    assert out.rejects.loc["t:0:0", "raw"] == deep


def test_a_model_without_windows_reads_numeric_dates_in_one_order_for_the_run(
    stream_model: AnomalyVAE,
) -> None:
    # Decided batch by batch, a batch holding 20/11/2026 was read day first and the next one,
    # holding only 05/11/2026, month first: its record stored on 11 May. Now the first batch
    # holding numeric dates decides for the rest of the run, as a batch job's first chunk does.
    assert stream_model.config_.window is None
    cfg = stream_config(stream_model, "127.0.0.1:9", "t")
    scorer = StreamScorer(stream_model, cfg, MemorySink([]))
    record = make_pump_data(1, seed=5).astype(object).to_dict(orient="records")[0]
    times = []
    for offset, ts in enumerate(["2026-11-19T10:00:00Z", "20/11/2026 10:00", "05/11/2026 10:00"]):
        record["ts"] = ts
        batch = scorer.score_records([msg(json.dumps(record).encode(), offset, key=b"P1")])
        times.append(pd.Timestamp(batch.records["_event_time"].iloc[0]))
    assert times == [
        pd.Timestamp("2026-11-19T10:00Z"),
        pd.Timestamp("2026-11-20T10:00Z"),
        pd.Timestamp("2026-11-05T10:00Z"),
    ]
