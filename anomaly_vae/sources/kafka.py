"""Kafka in: consumer set-up with retry, and the decoding of a polled micro-batch.

A message is one JSON object whose fields are the feature columns plus the optional id, entity
and timestamp fields the pipeline names; the message key may carry the entity. Decoding turns a
micro-batch into a DataFrame of candidate records (one per message that is a JSON object with
every feature field) and rejects (everything else) with the reason, each keyed by its stable
source key ``topic:partition:offset``. Feature values are checked later, by the same
``FeatureSchema.validate`` that batch scoring uses.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from anomaly_vae.config import KafkaConfig
from anomaly_vae.errors import ConfigError
from anomaly_vae.features import name_key
from anomaly_vae.windows import entity_text, event_times_in_order

logger = logging.getLogger(__name__)

PASSWORD_ENV = "ANOMALY_VAE_KAFKA_SASL_PASSWORD"
SOURCE_KEY = "_source_key"
ENTITY = "_entity"
EVENT_TIME = "_event_time"
RAW_PREVIEW_BYTES = 10_000
_NON_FINITE_WORDS = ["nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"]


@dataclass
class Message:
    """What the decoder needs of a consumed record (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # ms since the epoch, as Kafka stamps it


def source_key(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def messages_by_key(messages: Iterable[Any], keys: Iterable[Any]) -> dict[str, Any]:
    """The consumed messages whose source keys are among ``keys`` (a batch's rejects), by key:
    what a dead letter needs of the message as it came."""
    wanted = {str(key) for key in keys}
    return {
        key: msg
        for msg in messages
        if (key := source_key(msg.topic, msg.partition, msg.offset)) in wanted
    }


@dataclass
class DecodedBatch:
    """``frame``: one row per well-formed message, with the JSON fields plus ``_source_key``,
    ``_entity`` and ``_event_time`` (UTC); ``rejects``: indexed by source key, with
    ``reason``, ``raw`` (the message text, cut at 10 kB), ``topic``, ``partition``, ``offset``."""

    frame: pd.DataFrame
    rejects: pd.DataFrame
    # The order numeric dates (05/11/2026) of the time field were read in: the one given, else
    # the one this batch's values decide (None when it holds none), for the caller to keep.
    day_first: bool | None = None
    # Messages whose time field holds something that is not a time (not a null or blank):
    # how many, and the first one's source key and value. They take the Kafka timestamp.
    unread_times: int = 0
    first_unread_time: tuple[str, Any] | None = None


def decode_messages(
    messages: Sequence[Any],
    *,
    features: Sequence[str],
    fields: Sequence[str] = (),
    entity_field: str | None = None,
    time_field: str | None = None,
    day_first: bool | None = None,
    key_is_entity: bool = True,
    max_bytes: int = 1_000_000,
    numeric: Sequence[str] | None = None,
) -> DecodedBatch:
    """Decode a micro-batch of Kafka messages (see module doc). ``numeric`` names the numeric
    features (default: all), where ``"NaN"`` or ``"inf"`` spelled as text is poison."""
    keep = list(dict.fromkeys([*features, *fields]))
    wanted = frozenset(features)
    objects: list[dict[str, Any]] = []
    keys: list[str] = []
    entities: list[str | None] = []
    stamps: list[int] = []
    reject_rows: list[tuple[str, str, str | None, str, int, int]] = []

    def reject(msg: Any, key: str, reason: str) -> None:
        raw = None if msg.value is None else message_text(msg.value)
        reject_rows.append((key, reason, raw, msg.topic, msg.partition, msg.offset))

    loads = orjson.loads
    # Entities repeat (a few machines, many records each): each distinct key or field value is
    # turned into its text once per batch, not once per message.
    key_texts: dict[bytes, str | None] = {}
    missing_reasons: dict[tuple[tuple[str, ...], frozenset[Any], frozenset[Any]], str] = {}
    field_texts: dict[Any, str | None] = {}
    for msg in messages:
        value = msg.value
        if not value:
            # Kafka's words: a null value is a tombstone (a compacted topic's delete marker);
            # an empty one was "invalid JSON: Input is a zero-length, empty document".
            reason = (
                "null value (a tombstone): no JSON object to score"
                if value is None
                else "empty value (0 bytes): expected a JSON object"
            )
            reject(msg, source_key(msg.topic, msg.partition, msg.offset), reason)
            continue
        if len(value) > max_bytes:
            reason = f"message of {len(value)} bytes is over max_message_bytes={max_bytes}"
            reject(msg, source_key(msg.topic, msg.partition, msg.offset), reason)
            continue
        try:
            obj = loads(value)
        except orjson.JSONDecodeError as exc:
            reason = _invalid_json_reason(value, exc)
            reject(msg, source_key(msg.topic, msg.partition, msg.offset), reason)
            continue
        if type(obj) is not dict:
            reason = f"top level is a JSON {_json_type(obj)}, expected an object"
            if type(obj) is list and obj and all(type(item) is dict for item in obj):
                # A producer batching records: the array is not split into records.
                reason += (
                    f" (an array of {len(obj)} objects: send one record per message, each "
                    "its own JSON object)"
                )
            reject(msg, source_key(msg.topic, msg.partition, msg.offset), reason)
            continue
        if not obj.keys() >= wanted:
            missing = sorted(wanted.difference(obj.keys()))
            # One producer's messages share their field names: one search per batch.
            nested = frozenset(k for k, v in obj.items() if type(v) is dict)
            shape = (tuple(missing), frozenset(obj.keys()), nested)
            if shape not in missing_reasons:
                missing_reasons[shape] = missing_fields_reason(
                    missing, obj.keys() - wanted, record=obj
                )
            reason = missing_reasons[shape]
            reject(msg, source_key(msg.topic, msg.partition, msg.offset), reason)
            continue
        # Only a message with that many brackets can nest so deep (counted in C: the check
        # per field cost a third of the decoding time of every message).
        if value.count(b"[") + value.count(b"{") > MAX_VALUE_DEPTH:
            deep = next((w for name in keep if (w := too_deep_reason(name, obj.get(name)))), None)
            if deep is not None:
                reject(msg, source_key(msg.topic, msg.partition, msg.offset), deep)
                continue
        text: str | None = None
        if entity_field:
            entity = obj.get(entity_field)
            if entity is not None:
                if (why := entity_type_reason(entity_field, entity)) is not None:
                    reject(msg, source_key(msg.topic, msg.partition, msg.offset), why)
                    continue
                # True and 1 are equal keys of a dict, and their texts differ.
                cached = (type(entity), entity)
                if cached in field_texts:
                    text = field_texts[cached]
                else:
                    text = field_texts[cached] = entity_text(entity)
        # An empty text is no entity, as an empty CSV cell is (and as a windowed model reads
        # it): the key is taken instead, as for a null; it was the entity ''.
        if not text and key_is_entity and (raw_key := msg.key) is not None:
            if raw_key in key_texts:
                text = key_texts[raw_key]
            else:
                # Bytes that are not UTF-8 as escapes: two different keys stay two entities.
                text = key_texts[raw_key] = entity_text(
                    raw_key.decode("utf-8", errors="backslashreplace")
                )
        objects.append(obj)
        keys.append(f"{msg.topic}:{msg.partition}:{msg.offset}")  # source_key(), inlined
        entities.append(text or None)
        stamps.append(int(msg.timestamp))
    frame = pd.DataFrame(
        {
            # Feature fields are in every object kept; the others may be absent.
            name: [obj[name] for obj in objects]
            if name in wanted
            else [obj.get(name) for obj in objects]
            for name in keep
        }
    )
    if not keep:
        frame = pd.DataFrame(index=pd.RangeIndex(len(objects)))
    # JSON has null for "no value"; a NaN or infinity spelled out as text is poison.
    bad_text = np.zeros(len(frame), dtype=bool)
    bad_reason = np.full(len(frame), "", dtype=object)
    for name in features if numeric is None else numeric:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column.dtype):
            # Only numbers (and nulls). Text is object, or pandas 3's string dtype when every
            # value of the batch is text or null: "NaN" alone in a batch was read as missing.
            continue
        lowered = column.map(lambda v: v.strip().lower() if isinstance(v, str) else "")
        hit = lowered.isin(_NON_FINITE_WORDS).to_numpy()
        for i in np.flatnonzero(hit & ~bad_text):
            bad_reason[i] = f"field {name!r}: {column.iloc[i]!r} is not a finite number"
        bad_text |= hit
    if bad_text.any():
        for i in np.flatnonzero(bad_text):
            topic, partition, offset = keys[i].rsplit(":", 2)
            reject_rows.append(
                (
                    keys[i],
                    bad_reason[i],
                    orjson.dumps(objects[i]).decode(),
                    topic,
                    int(partition),
                    int(offset),
                )
            )
        keep_rows = ~bad_text
        frame = frame.loc[keep_rows].reset_index(drop=True)
        keys = [k for k, ok in zip(keys, keep_rows, strict=True) if ok]
        entities = [e for e, ok in zip(entities, keep_rows, strict=True) if ok]
        stamps = [s for s, ok in zip(stamps, keep_rows, strict=True) if ok]
    frame[SOURCE_KEY] = keys
    frame[ENTITY] = pd.Series(entities, index=frame.index, dtype=object)
    frame[EVENT_TIME], day_first, unread = _event_times(
        frame, time_field, np.asarray(stamps, dtype=np.int64), day_first=day_first
    )
    rejects = pd.DataFrame(
        reject_rows, columns=[SOURCE_KEY, "reason", "raw", "topic", "partition", "offset"]
    ).set_index(SOURCE_KEY)
    first_unread = None
    if unread.any() and time_field is not None:
        at = int(np.flatnonzero(unread)[0])
        first_unread = (keys[at], frame[time_field].iloc[at])
    return DecodedBatch(
        frame=frame,
        rejects=rejects,
        day_first=day_first,
        unread_times=int(unread.sum()),
        first_unread_time=first_unread,
    )


def _event_times(
    frame: pd.DataFrame,
    time_field: str | None,
    stamps: np.ndarray,
    *,
    day_first: bool | None = None,
) -> tuple[pd.Series, bool | None, np.ndarray]:
    """The records' event times (the time field, else the Kafka timestamp), the order the
    field's numeric dates were read in (``event_times_in_order``), and which records' field
    held a value that is not a time (neither null nor blank text: ``"garbage"``, ``true``)."""
    # -1 is Kafka's "no timestamp" (a record of the v0 format, a producer that set none):
    # read as a time it stored the event at 1969-12-31T23:59:59.999.
    kafka_time = pd.Series(pd.to_datetime(stamps, unit="ms", utc=True), index=frame.index)
    if len(stamps) and stamps.min() < 0:
        kafka_time = kafka_time.where(stamps >= 0)
    if not time_field or time_field not in frame.columns or len(frame) == 0:
        return kafka_time, day_first, np.zeros(len(frame), bool)
    given = frame[time_field]
    parsed, order = event_times_in_order(given, day_first=day_first)
    parsed = pd.Series(parsed, index=frame.index)
    missing = parsed.isna().to_numpy()
    # Only non-null values left unread are looked at (a producer that never sends the
    # field leaves every row missing: no loop over the batch for them).
    unread = missing & given.notna().to_numpy()
    if unread.any():
        values = given.to_numpy(dtype=object)
        for i in np.flatnonzero(unread):
            unread[i] = not (isinstance(values[i], str) and not values[i].strip())
    return parsed.where(~missing, kafka_time), order, unread


def non_finite_reason(name: str, value: object) -> str | None:
    """Why a numeric feature's JSON value is poison (a NaN or infinity spelled as text; a NaN
    number, which Python's JSON reader takes though JSON has none), else None. JSON's null
    is a missing value, not poison."""
    if isinstance(value, str) and value.strip().lower() in _NON_FINITE_WORDS:
        return f"field {name!r}: {value!r} is not a finite number"
    if isinstance(value, float) and math.isnan(value):
        return f"field {name!r}: NaN is not a number (null is a missing value)"
    return None


# How deep a field's arrays and objects may nest. orjson reads 1,024 levels, and a value
# nested some 1,000 deep raised RecursionError wherever its text was taken (pandas, repr): one
# hostile message stopped the scorer. No feature or copied field is a structure.
MAX_VALUE_DEPTH = 32


def too_deep_reason(name: str, value: object) -> str | None:
    """Why a field's JSON value nests arrays or objects over ``MAX_VALUE_DEPTH`` deep, else
    None (measured without recursion)."""
    if not isinstance(value, (list, dict)):
        return None
    level: list[Any] = [value]
    for _ in range(MAX_VALUE_DEPTH):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (list, dict))
        ]
        if not level:
            return None
    return (
        f"field {name!r}: a JSON {_json_type(value)} nested over {MAX_VALUE_DEPTH} deep: "
        "expected a number or text"
    )


def _invalid_json_reason(value: bytes, exc: Exception) -> str:
    """Why a message is not JSON. For bytes that are not UTF-8, where and which (orjson says
    'str is not valid UTF-8: surrogates not allowed' at char 0, wherever the byte was: a
    producer writing Latin-1 or cp1252 text could not tell what was wrong)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        byte = value[bad.start : bad.start + 1].hex()
        return (
            f"invalid JSON: not UTF-8 text (byte 0x{byte} at byte {bad.start}): JSON messages "
            "must be UTF-8 (a producer writing Latin-1 or cp1252 text must encode it as UTF-8)"
        )
    reason = f"invalid JSON: {str(exc).splitlines()[0]}"
    text = value[:400].decode("utf-8", errors="ignore").strip()
    if text.startswith(("{'", "{ '", "[{'")) or (text.startswith("{") and "': " in text):
        # Python's str() of a dict, a producer's common slip: "unexpected character".
        return reason + (
            " (names in single quotes, as Python's str() of a dict writes them: send "
            "json.dumps(record))"
        )
    if not text.startswith(("{", "[", '"')) and ("," in text or ";" in text):
        return reason + (
            ' (a CSV line? a message is one JSON object: {"temp": 19.7, "site": "north"})'
        )
    return reason


def entity_type_reason(name: str, value: object) -> str | None:
    """Why an entity field's JSON value cannot name an entity (an array or an object: its
    text would be an entity nobody sends), else None."""
    if isinstance(value, (list, dict)):
        return f"entity field {name!r} is a JSON {_json_type(value)}: expected text or a number"
    return None


def missing_fields_reason(
    names: Sequence[str], present: Iterable[Any] = (), *, record: Mapping[Any, Any] | None = None
) -> str:
    """The reason a record without these feature fields is rejected (in the order given),
    naming the record's other fields (``present``: not the features it has) that look meant
    for them: a producer writing 'RPM' or 'rpm ' had every message rejected as "feature field
    'rpm' missing", which read as if the value were absent. ``record``: the record itself,
    whose JSON objects may hold the fields (``{"data": {...}}``, ``{"sensor": {"temp": ..}}``
    for a feature ``sensor.temp``), which are not read there: said so."""
    shown = ", ".join(repr(name) for name in names)
    reason = f"feature field{'s' if len(names) > 1 else ''} {shown} missing"
    near = near_names(names, present)
    nfc = {unicodedata.normalize("NFC", name) for name in names}
    forms = [name for name in near if unicodedata.normalize("NFC", name) in nfc]
    if forms:
        # The same name to the eye: "letter case too" said nothing of the difference.
        reason += (
            f" (the record has {forms[0]!a}, the same name with its accents written as other "
            "Unicode code points: send field names in Unicode NFC)"
        )
    elif near:
        have = " and ".join(repr(name) for name in near)
        reason += f" (the record has {have}: field names must match exactly, letter case too)"
    elif record is not None and (inside := _nested_hint(names, record)):
        reason += inside
    return reason


def _nested_hint(names: Sequence[str], record: Mapping[Any, Any]) -> str:
    """Where the record's JSON objects hold the missing fields, what to send instead."""
    for key, value in record.items():
        if isinstance(value, dict) and sum(name in value for name in names) * 2 >= len(names):
            return (
                f" (the record's object {str(key)!r} holds them: fields are read at the top "
                "level of the record, not inside an object; send them there)"
            )
    for name in names:
        parts = name.split(".")
        node: Any = record
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        if len(parts) > 1 and node is not None and isinstance(record.get(parts[0]), dict):
            return (
                f" (the record has {name!r} nested, in the object {parts[0]!r}: fields are read "
                f'at the top level of the record, by their whole name; send "{name}": '
                "VALUE there)"
            )
    return ""


def near_names(names: Sequence[str], present: Iterable[Any]) -> list[str]:
    """The names among ``present`` that differ from one of ``names`` only in letter case and
    spaces (``features.name_key``, as a CSV's missing-column hint compares them), or are close
    to it in spelling, one per name, in the order of ``names``."""
    import difflib

    others = [str(k) for k in present if k not in names]
    folded: dict[str, str] = {}
    for other in others:
        folded.setdefault(name_key(other), other)
    out: list[str] = []
    for name in names:
        match = folded.get(name_key(name))
        if match is None:
            close = difflib.get_close_matches(name, others, n=1, cutoff=0.8)
            match = close[0] if close else None
        if match is not None and match not in out:
            out.append(match)
    return out


def _json_type(obj: object) -> str:
    if isinstance(obj, list):
        return "array"
    if isinstance(obj, dict):
        return "object"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, bool):
        return "boolean"
    if obj is None:
        return "null"
    return "number"


def message_text(value: bytes) -> str:
    """A message's bytes as the text a dead letter keeps (cut at 10 kB)."""
    # Bytes that are not UTF-8, and NUL (which PostgreSQL text cannot hold), are written as
    # escapes (\xff, \x00), the way the entity of a key that is not UTF-8 is: what the
    # message held stays readable, not one replacement character for any byte.
    text = (
        value[:RAW_PREVIEW_BYTES]
        .decode("utf-8", errors="backslashreplace")
        .replace("\x00", "\\x00")
    )
    return text if len(value) <= RAW_PREVIEW_BYTES else text + "...(cut)"


DEAD_LETTER_HEADER = "anomaly-vae.error."


def dead_letter_message(
    key: str, reason: str, original: Any | None, *, max_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """What the dead-letter topic receives for a rejected message: ``(key, value, headers)``.

    The message as it came, so that it can be replayed once fixed: its own key, its value's
    bytes unchanged (not UTF-8, NUL, whatever they hold) and its own headers, plus headers
    ``anomaly-vae.error.reason``, ``.source-key``, ``.topic``, ``.partition`` and ``.offset``
    (the convention of Kafka Connect's dead-letter queues). A value over ``max_bytes`` (what the
    producer may send) goes as its first 10 kB with the header ``anomaly-vae.error.value-bytes``
    giving its whole length. The key and the message's own headers count too, so that the letter
    as a whole fits: a key that would not is cut the same way (``.key-bytes``), then own header
    values over 10 kB (``.header-bytes``: ``name=length`` of each), then the own headers are
    left out (``.headers-dropped``: how many), then the value is cut. ``original``: the consumed
    record; without it (None) the letter is an empty value with the error headers alone."""
    topic, partition, offset = key.rsplit(":", 2)
    headers = [
        (f"{DEAD_LETTER_HEADER}reason", reason.encode()),
        (f"{DEAD_LETTER_HEADER}source-key", key.encode()),
        (f"{DEAD_LETTER_HEADER}topic", topic.encode()),
        (f"{DEAD_LETTER_HEADER}partition", partition.encode()),
        (f"{DEAD_LETTER_HEADER}offset", offset.encode()),
    ]
    if original is None:
        return None, b"", headers  # a Kafka record needs a key or a value
    value = original.value
    msg_key = original.key
    own = [(str(k), bytes(v or b"")) for k, v in (getattr(original, "headers", None) or [])]

    def cut_value() -> None:
        nonlocal value
        if value is not None and len(value) > RAW_PREVIEW_BYTES:
            headers.append((f"{DEAD_LETTER_HEADER}value-bytes", str(len(value)).encode()))
            value = value[:RAW_PREVIEW_BYTES]

    def size() -> int:
        named = sum(len(k.encode()) + len(v) for k, v in own + headers)
        return len(msg_key or b"") + len(value or b"") + named

    if value is not None and len(value) > max_bytes:
        cut_value()
    # A key or headers the producer cannot send would raise in the middle of the batch, on
    # every replay of it: the poison message would stop the stream for good.
    if size() > max_bytes and msg_key is not None and len(msg_key) > RAW_PREVIEW_BYTES:
        headers.append((f"{DEAD_LETTER_HEADER}key-bytes", str(len(msg_key)).encode()))
        msg_key = msg_key[:RAW_PREVIEW_BYTES]
    if size() > max_bytes and any(len(v) > RAW_PREVIEW_BYTES for _, v in own):
        long = [(k, v) for k, v in own if len(v) > RAW_PREVIEW_BYTES]
        cuts = ",".join(f"{k}={len(v)}" for k, v in long)
        headers.append((f"{DEAD_LETTER_HEADER}header-bytes", cuts.encode()))
        own = [(k, v[:RAW_PREVIEW_BYTES]) for k, v in own]
    if size() > max_bytes and own:
        headers.append((f"{DEAD_LETTER_HEADER}headers-dropped", str(len(own)).encode()))
        own = []
    if size() > max_bytes:
        cut_value()
    if value is None and msg_key is None:
        value = b""
    return msg_key, value, own + headers


# ============================================================================ clients
def client_options(cfg: KafkaConfig) -> dict[str, Any]:
    """kafka-python options shared by consumers and producers; the password from the env."""
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in cfg.bootstrap_servers.split(",") if s.strip()],
        "client_id": cfg.client_id,
        # One bootstrap attempt is short; connect_with_retry backs off between attempts.
        "bootstrap_timeout_ms": 5000,
    }
    options.update(cfg.client)
    if isinstance(options.get("api_version"), list):
        # YAML has no tuples: api_version: [2, 5] is a list, which kafka-python refuses
        # ("api_version must be tuple") though it is the only way a pipeline file can say it.
        options["api_version"] = tuple(options["api_version"])
    password = os.environ.get(PASSWORD_ENV)
    if password:
        options["sasl_plain_password"] = password
    return options


def options_for(options: dict[str, Any], client: type) -> dict[str, Any]:
    """``options`` without those only the other kind of client takes: kafka.client holds
    consumer and producer options together (fetch_max_bytes, compression_type), and
    kafka-python refuses any option its class does not know (the dead-letter producer stopped
    the scorer with a traceback over a consumer's fetch_max_bytes). A name neither knows stays,
    for the client to refuse by name."""
    from kafka import KafkaConsumer, KafkaProducer

    kinds = (set(KafkaConsumer.DEFAULT_CONFIG), set(KafkaProducer.DEFAULT_CONFIG))
    either = kinds[0] | kinds[1]
    own = set(getattr(client, "DEFAULT_CONFIG", either))
    return {k: v for k, v in options.items() if k in own or k not in either}


# kafka-python options whose values are never secrets, shown as they are in the log line;
# the value of any other option (a password, a token provider, and a misspelt secret such as
# sasl_plain_pasword, which no list of secret words catches) is logged as ***.
_LOGGED_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "client_id",
        "bootstrap_timeout_ms",
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "ssl_check_hostname",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_crlfile",
        "ssl_ciphers",
        "api_version",
        "request_timeout_ms",
        "connections_max_idle_ms",
        "reconnect_backoff_ms",
        "reconnect_backoff_max_ms",
        "retry_backoff_ms",
        "metadata_max_age_ms",
        "fetch_max_bytes",
        "fetch_min_bytes",
        "fetch_max_wait_ms",
        "max_partition_fetch_bytes",
        "compression_type",
        "isolation_level",
    }
)


def new_client(client: type, *, networks: list[Any] | None = None, **options: Any) -> Any:
    """``client(**options)`` (KafkaConsumer, KafkaProducer, KafkaAdminClient) that leaves
    nothing running when its constructor fails.

    kafka-python starts a client's network thread before its bootstrap, and a bootstrap that
    fails (no broker) raises out of the constructor with that thread still running: it went on
    reconnecting, logging "Connection failed" every few seconds, and a scorer waiting for a
    broker that is down left one such thread behind per attempt. The network clients this
    constructor makes (through its own ``kafka_client`` setting) are closed here before the
    error goes on.

    ``networks``, when given, receives those network clients as they are made: closing one
    from another thread ends a bootstrap or a request that waits on a broker that never
    answers (the constructor or the call raises), and its network thread with it."""
    made: list[Any] = [] if networks is None else networks
    default_factory = getattr(client, "DEFAULT_CONFIG", {}).get("kafka_client")
    factory = options.pop("kafka_client", default_factory)
    if factory is None:  # a client without the setting: nothing to track
        return client(**options)

    def tracked(*args: Any, **kwargs: Any) -> Any:
        made.append(factory(*args, **kwargs))
        return made[-1]

    try:
        return client(**options, kafka_client=tracked)
    except BaseException:
        for network in made:
            try:
                network.close()
            except Exception as exc:  # closing is best effort; the first error goes on
                logger.debug("closing a failed client's network: %s", exc)
        raise


def secret_values(options: dict[str, Any]) -> list[str]:
    """The text of option values that are, or may hold, a secret (a password, a token, a
    proxy URL's user:password), never to be shown in an error message."""
    return [
        str(value)
        for name, value in options.items()
        if isinstance(value, str)
        and value
        and (
            name in ("proxy_url", "socks5_proxy")
            or any(word in name.lower() for word in ("password", "secret", "token"))
        )
    ]


def redacted(options: dict[str, Any]) -> dict[str, Any]:
    """Options safe to log: the value of any option not known to be harmless is ``***``."""
    return {k: (v if k in _LOGGED_OPTIONS else "***") for k, v in options.items()}


def connect_with_retry(
    factory: Any,
    *,
    what: str,
    bootstrap: str,
    stop: threading.Event | None = None,
    backoff_max_s: float = 30.0,
    give_up_after_s: float | None = None,
    stalled_after_s: float = 30.0,
    settings_hint: str = "",
    hidden: Iterable[str] = (),
    client_names: str = "",
) -> Any:
    """Call ``factory()`` until the broker answers, backing off 0.5 s, 1 s, 2 s... (capped).

    Logs each retry with the bootstrap address. Returns None if ``stop`` is set meanwhile.
    ``factory()`` runs in a thread of its own: kafka-python's bootstrap timeout does not cover
    a TLS handshake, and a client set to SSL against a plaintext listener waited for the
    broker's answer for good (neither ``--idle-timeout`` nor SIGTERM stopped it). A call that
    has not returned after ``stalled_after_s`` is a ConfigError. ``settings_hint`` ends the
    error's line: which client settings to check besides the address. A client refusing its
    settings (kafka-python raises TypeError or ValueError for a wrong value, with a traceback)
    is a ConfigError too, any of the ``hidden`` values (secrets) in its text as ``***``, with
    ``client_names`` (the kafka.client options given) to say which settings to check.
    """
    from kafka.errors import KafkaConfigurationError, KafkaError

    delay = 0.5
    started = time.monotonic()
    while True:
        try:
            made, client = _call_unless_stalled(factory, stop, stalled_after_s)
            if not made:
                return None  # stopped
            return client
        except (KafkaConfigurationError, TypeError, ValueError, AssertionError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            for secret in hidden:
                if secret:
                    text = text.replace(secret, "***")
            raise ConfigError(
                f"Kafka client settings are invalid: {text}: check kafka.client in the "
                f"pipeline{f' ({client_names})' if client_names else ''}"
            ) from None
        except _StalledError:
            raise ConfigError(
                f"Kafka broker at {bootstrap} connected but gave no answer in "
                f"{stalled_after_s:.0f} s: check that kafka.client.security_protocol matches "
                "the broker's listener (a TLS client waits for good on a plaintext one)"
            ) from None
        except (KafkaError, OSError) as exc:
            waited = time.monotonic() - started
            if give_up_after_s is not None and waited >= give_up_after_s:
                raise ConfigError(
                    f"Kafka broker at {bootstrap} not reachable after {waited:.0f} s "
                    f"({type(exc).__name__}): check --bootstrap and that the broker runs"
                    f"{settings_hint}"
                ) from None
            logger.warning(
                "%s: broker at %s not reachable (%s); retrying in %.1f s",
                what,
                bootstrap,
                type(exc).__name__,
                delay,
            )
            if stop is not None:
                if stop.wait(delay):
                    return None
            else:
                time.sleep(delay)
            delay = min(backoff_max_s, delay * 2)


class _StalledError(Exception):
    """A client's constructor has not returned in time (a TLS handshake left waiting)."""


def _call_unless_stalled(
    factory: Any, stop: threading.Event | None, stalled_after_s: float
) -> tuple[bool, Any]:
    """``(True, factory())`` from a daemon thread; ``(False, None)`` once ``stop`` is set (the
    thread, waiting on a socket, is left behind: the process is stopping); _StalledError
    after ``stalled_after_s``. The factory's own exception is raised here."""
    box: dict[str, Any] = {}
    done, abandoned = threading.Event(), threading.Event()

    def call() -> None:
        try:
            box["client"] = factory()
            if abandoned.is_set():  # made after all, for nobody: closed, not left open
                box["client"].close()
        except BaseException as exc:  # handed over to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=call, name="kafka-connect", daemon=True).start()
    deadline = time.monotonic() + stalled_after_s
    while not done.wait(0.2):
        if stop is not None and stop.is_set():
            abandoned.set()
            return False, None
        if time.monotonic() >= deadline:
            abandoned.set()
            raise _StalledError
    if "error" in box:
        raise box["error"]
    return True, box["client"]


def flatten(polled: dict[Any, list[Any]]) -> list[Any]:
    """The records of one ``poll()`` in partition order, offsets ascending within each."""
    out: list[Any] = []
    for tp in sorted(polled, key=lambda t: (t.topic, t.partition)):
        out.extend(polled[tp])
    return out


def next_offsets(records: Iterable[Any]) -> dict[tuple[str, int], int]:
    """For each (topic, partition) the offset to commit: the last record's offset + 1."""
    out: dict[tuple[str, int], int] = {}
    get = out.get
    for rec in records:
        key = (rec.topic, rec.partition)
        offset = rec.offset + 1
        if offset > get(key, -1):
            out[key] = offset
    return out


class SlowTaskWarning(logging.Filter):
    """kafka-python 3 warns when a step of its event loop takes over 0.1 s of wall time ('Task
    ... ran for 0.229s (>0.100s threshold). It is blocking the event loop ... Other pollers
    will time out'). In a scorer the step shares the interpreter lock with the scoring and
    writing threads, so a busy machine made it at a group join (every start on a topic of 64
    partitions here) or a rebalance: no fault, and nothing to do. Under ``STALL_S`` such a line
    is DEBUG (left out unless kafka-python's own DEBUG lines are on); a longer stall, which
    could cost heartbeats, stays a WARNING."""

    STALL_S = 1.0
    _ELAPSED = re.compile(r"^Task .* ran for ([0-9.]+)s \(>[0-9.]+s threshold\)")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and isinstance(record.msg, str):
            match = self._ELAPSED.match(record.msg)
            if match is not None and float(match.group(1)) < self.STALL_S:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_slow_task_warning() -> None:
    """Install :class:`SlowTaskWarning` on kafka-python's event-loop logger, once: the stream
    scorer does, and so does ``simulate``, whose producer shares the interpreter with the
    simulation (a broker not up yet made 'Task ... ran for 0.164s ... Other pollers will time
    out' among its retry lines)."""
    selector = logging.getLogger("kafka.net.selector")
    if not any(isinstance(f, SlowTaskWarning) for f in selector.filters):
        selector.addFilter(SlowTaskWarning())
