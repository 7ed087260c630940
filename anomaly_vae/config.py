"""Validated settings: model, training, scoring, columns, and the pipeline file that holds them.

Everything an operator changes lives in a pipeline file (``pipelines/*.yaml``), validated here by
pydantic. Command-line flags override it. Nothing is read from the environment at import time:
settings are built once at the edge (CLI, API) and passed down.
"""

from __future__ import annotations

import codecs
import numbers
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from anomaly_vae.errors import ConfigError

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _wants_number(annotation: Any) -> bool:
    """Whether a field of this type takes a number and not a boolean (``int``, ``float``,
    ``int | None``, ...)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_wants_number(a) for a in args)
    return False


def _wants_numbers(annotation: Any) -> bool:
    """Whether a field of this type is a list of numbers (``list[int]``)."""
    return typing.get_origin(annotation) is list and all(
        _wants_number(a) for a in typing.get_args(annotation)
    )


class NoBooleanNumbers(BaseModel):
    """Refuses ``true`` / ``false`` where a number is expected. pydantic reads a boolean as 1 or
    0 there, so ``epochs: true`` trained one epoch and ``learning_rate: yes`` (YAML 1.1's
    boolean) set 1.0, silently."""

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            if field is None:
                continue
            if isinstance(value, bool) and _wants_number(field.annotation):
                raise ValueError(
                    f"{name}: expected a number, got a boolean (true/false, yes/no, on/off)"
                )
            if (
                isinstance(value, list)
                and _wants_numbers(field.annotation)
                and any(isinstance(v, bool) for v in value)
            ):
                raise ValueError(f"{name}: expected numbers, got a boolean in {value}")
        return data


class _Strict(NoBooleanNumbers):
    # No infinity or NaN in any setting: YAML reads ".inf" and ".nan" as floats, and every
    # number here is a size, a rate or a duration (lateness_s: .inf would fail deep in the
    # window code; learning_rate: .inf would train a model of NaN weights).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# The largest latent size the scorer's quasi-random draws support (torch's SobolEngine.MAXDIM).
MAX_LATENT_DIM = 21_201


class ModelConfig(_Strict):
    """Shape of the VAE. ``latent_dim=None`` picks a size from the number of input features."""

    hidden_dims: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)
    latent_dim: int | None = Field(default=None, ge=1, le=MAX_LATENT_DIM)
    beta: float = Field(default=1.0, ge=0.0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    min_log_var: float = Field(default=-6.0, le=0.0)
    # "conv" (windowed models only): 1-D convolutions over the window's steps, weights shared
    # across time, instead of the MLP over the flattened window (``model.VAE``).
    encoder: Literal["mlp", "conv"] = "mlp"
    conv_channels: list[int] = Field(default_factory=lambda: [32, 16], min_length=1)
    conv_kernel: int = Field(default=7, ge=1, le=99)

    @field_validator("hidden_dims", "conv_channels")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(width < 1 for width in value):
            raise ValueError(f"every hidden width must be >= 1, got {value}")
        return value


class TrainingConfig(_Strict):
    """The fit loop. ``epochs=None`` and ``batch_size=None`` are sized from the data; with
    ``epochs=None``, large data trains on at most ``max_rows_seen`` rows, at up to 3x
    ``learning_rate`` when that leaves fewer than ``target_steps`` steps.
    ``num_threads``: torch threads while fitting, 1 unless set (the network is small: more
    threads gain little on a CPU and lose badly when other work shares the cores)."""

    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    patience: int = Field(default=20, ge=1)
    kl_warmup_epochs: int = Field(default=10, ge=0)
    grad_clip: float = Field(default=5.0, gt=0.0)
    target_steps: int = Field(default=4000, ge=1)
    max_epochs: int = Field(default=400, ge=1)
    # On large data, train on a bounded number of rows seen rather than a number of epochs: the
    # model stops improving long before ten passes over a million rows.
    max_rows_seen: int = Field(default=1_000_000, ge=1)
    # What numpy's and torch's generators take: an unsigned 64-bit number.
    seed: int = Field(default=0, ge=0, le=2**64 - 1)
    device: str = "auto"
    mixed_precision: bool = True
    num_threads: int | None = Field(default=None, ge=1)
    progress: bool = True


class ScoringConfig(_Strict):
    """How records are scored. ``n_samples`` is K for the Monte Carlo ELBO; K=1 (the default) is
    the one-point rule at the posterior mean: it ranks as well as K=8 quasi-random points on the
    benchmark sets at a third of the cost (see benchmarks/README.md).
    ``num_threads``: torch threads of a batch job; ``None`` leaves one core to parsing and
    writing (all cores but one, at least one)."""

    n_samples: int = Field(default=1, ge=1, le=4096)
    score_kind: Literal["neg_elbo", "nll_iw", "recon_error"] = "neg_elbo"
    importance_weighted: bool = False
    batch_size: int = Field(default=8192, ge=1)
    top_features: int = Field(default=3, ge=0)
    threshold_quantile: float = Field(default=0.995, gt=0.0, lt=1.0)
    chunk_size: int = Field(default=50_000, ge=1)
    num_threads: int | None = Field(default=None, ge=1)


def column_name(value: Any) -> Any:
    """A column named by a number is that number's text, as every column name is read (a
    frame's columns go through ``str``): ``pd.DataFrame(array)``'s ``0``, or a CSV header's
    ``2019``, which YAML reads as a number. Anything else is left to validation (a boolean
    stays refused)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    return value


class ColumnsConfig(_Strict):
    """Which columns are features, identifiers, timestamps or labels.

    ``numeric`` / ``categorical`` force a column's kind; otherwise the kind is inferred.
    ``features`` restricts the features to that list.
    """

    features: list[str] | None = None
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    id: list[str] = Field(default_factory=list)
    timestamp: str | None = None
    entity: str | None = None
    label: str | None = None
    max_categories: int = Field(default=50, ge=2)

    @field_validator("features", "numeric", "categorical", "ignore", "id", mode="before")
    @classmethod
    def _one_name_is_a_list_of_one(cls, value: Any) -> Any:
        """``ignore: note`` is ``ignore: [note]`` (it was "Input should be a valid list"); a
        name that is a number is its text (``column_name``)."""
        if isinstance(value, str) or column_name(value) is not value:
            return [column_name(value)]
        items = value.tolist() if hasattr(value, "tolist") else value  # an array, an Index
        return [column_name(v) for v in items] if isinstance(items, (list, tuple)) else value

    @field_validator("timestamp", "entity", "label", mode="before")
    @classmethod
    def _a_number_is_its_text(cls, value: Any) -> Any:
        return column_name(value)

    @model_validator(mode="after")
    def _no_overlap(self) -> ColumnsConfig:
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise ValueError(f"columns listed as both numeric and categorical: {sorted(both)}")
        return self

    def non_features(self) -> list[str]:
        """Columns that are never features: ignored, ids, timestamp, entity, label."""
        out = list(self.ignore) + list(self.id)
        for name in (self.timestamp, self.entity, self.label):
            if name:
                out.append(name)
        return out

    def passthrough(self) -> list[str]:
        """Columns copied from the input to the score output, in order."""
        out = list(self.id)
        for name in (self.entity, self.timestamp):
            if name and name not in out:
                out.append(name)
        return out


class CsvConfig(_Strict):
    sep: str = ","
    encoding: str = "utf-8"
    decimal: Literal[".", ","] = "."  # "," for exports written with decimal commas

    @model_validator(mode="after")
    def _one_character_separator_not_the_decimal(self) -> CsvConfig:
        if len(self.sep) != 1 or self.sep in '"\r\n':
            # The parser reads a longer one as a regular expression ('||' splits everywhere).
            raise ValueError(
                f"csv.sep must be one character other than a quote or a line break, such as "
                f"',', ';', '|' or a tab ('\\t'); got {self.sep!r}"
            )
        if self.decimal == self.sep:
            # A model trained on a decimal-comma export keeps decimal ',': scoring a ','-
            # separated export with it, --sep ',' alone (which the missing-column error
            # suggests) came here, and nothing said to give the decimal mark too.
            raise ValueError(
                f"csv.decimal and csv.sep are both {self.sep!r}: a decimal-comma export is "
                "usually ';'-separated (sep: ';'), and a ','-separated one writes decimal "
                "points (decimal: '.', --decimal '.')"
            )
        try:
            text_encoding = getattr(codecs.lookup(self.encoding), "_is_text_encoding", True)
        except LookupError:
            text_encoding = False
        if not text_encoding:
            # Found out only when a file was opened, in a message that named the file, not
            # the pipeline's setting.
            raise ValueError(
                f"csv.encoding {self.encoding!r} is not a text encoding (e.g. utf-8, cp1252, "
                "latin-1, utf-16)"
            )
        return self


class KafkaConfig(_Strict):
    """The stream scorer's Kafka settings. ``client`` passes extra options to kafka-python
    (``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``...); secrets belong in the
    environment: ``ANOMALY_VAE_KAFKA_SASL_PASSWORD`` fills ``sasl_plain_password``.
    """

    bootstrap_servers: str = "localhost:9092"
    topic: str | None = None
    group_id: str = "anomaly-vae"
    client_id: str = "anomaly-vae"
    alerts_topic: str | None = None
    dead_letter_topic: str | None = None
    entity_field: str | None = None  # default: columns.entity; the message key when absent
    key_is_entity: bool = True
    max_batch_records: int = Field(default=20_000, ge=1)  # a backlog: fewer, larger writes
    max_batch_wait_ms: int = Field(default=200, ge=1)
    max_message_bytes: int = Field(default=1_000_000, ge=1)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    connect_backoff_max_s: float = Field(default=30.0, gt=0)
    metrics_interval_s: float = Field(default=10.0, gt=0)
    threshold_refresh_s: float = Field(default=2.0, gt=0)
    num_threads: int = Field(default=1, ge=1)
    processes: int = Field(default=1, ge=1)  # scorer processes in the group, on one machine
    # A windowed model: the entities whose windows a scorer keeps in memory. Past it, those
    # fed least recently (their state stored with their scores) are dropped, and read back
    # from the database when they come again: memory stays bounded when entity ids churn.
    max_window_entities: int = Field(default=200_000, ge=1)
    client: dict[str, Any] = Field(default_factory=dict)

    @field_validator("client")
    @classmethod
    def _client_option_names(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """In a pipeline file (``PipelineConfig.from_yaml``), refuse a client option that
        kafka-python does not know (a misspelt ``sasl_plain_pasword`` went into model.json in
        clear, no secret's word in its name) or that the scorer sets itself (``group_id``
        crashed the consumer with a TypeError). A model directory's stored settings are not
        checked here: a model saved before this check still loads."""
        if value and (info.context or {}).get("pipeline_file"):
            problem = client_option_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _broker_addresses(cls, value: str, info: ValidationInfo) -> str:
        """Checked before any client (``bootstrap_problem``); a model directory's stored
        settings are not: a model saved with such an address still loads."""
        problem = bootstrap_problem(value)
        if problem and not (info.context or {}).get("stored"):
            raise ValueError(problem)
        return value

    @field_validator("group_id")
    @classmethod
    def _group_name(cls, value: str, info: ValidationInfo) -> str:
        """An empty (or blank) group id: the dev broker took it, Apache Kafka (2.2 on) refuses
        it when the scorer joins the group, mid-run; refused before any client. A model
        directory's stored settings are not checked: a model saved with one still loads."""
        if not value.strip() and not (info.context or {}).get("stored"):
            raise ValueError(
                "a consumer group needs a name: Apache Kafka refuses an empty group id"
            )
        return value

    @field_validator("topic", "alerts_topic", "dead_letter_topic")
    @classmethod
    def _kafka_topic_name(cls, value: str | None) -> str | None:
        """Kafka's rule for topic names, checked before any client (which raises mid-run)."""
        if value is None:
            return value
        problem = topic_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def check_output_topics(self) -> None:
        """Refuse an alerts or dead-letter topic that is the topic being scored: a rejected
        message published back to it is consumed, rejected and published again without end
        (and alerts would come back as records that are rejected). Checked once every setting
        is in place, not field by field: flags override a pipeline's topics one at a time."""
        for name, flag in (
            ("dead_letter_topic", "--dead-letter-topic"),
            ("alerts_topic", "--alerts-topic"),
        ):
            value = getattr(self, name)
            if value is not None and value == self.topic:
                raise ConfigError(
                    f"{flag} {value} (kafka.{name}) is the topic being scored: what is "
                    "published there would be consumed again; name another topic"
                )
        # One topic for both: a consumer of the alerts read rejected sensor messages among
        # them (the dead letters are the messages as they came, not alert events).
        if self.alerts_topic is not None and self.alerts_topic == self.dead_letter_topic:
            raise ConfigError(
                f"--alerts-topic and --dead-letter-topic (kafka.alerts_topic, "
                f"kafka.dead_letter_topic) are both {self.alerts_topic}: the alerts' consumers "
                "would receive the rejected messages among the alert events; name two topics"
            )


def topic_name_problem(value: str) -> str | None:
    """What keeps ``value`` from being one Kafka topic name (Kafka's rule), or None: checked
    before any client, which raises mid-run (and a broker that takes any name, as the dev
    broker does, would create a topic no scorer may read)."""
    if any(c in value for c in ",*?[]()|^$+"):
        return (
            f"{value!r} is not one Kafka topic name: a scorer reads one topic, named "
            "exactly (no list, no pattern); run one scorer per topic"
        )
    if not _TOPIC_NAME.fullmatch(value) or value in (".", ".."):
        return (
            f"{value!r} is not a Kafka topic name: 1 to 249 of ASCII letters, digits, "
            "'.', '_' and '-'"
        )
    return None


def bootstrap_problem(value: str) -> str | None:
    """What keeps ``value`` from being Kafka bootstrap addresses (``host:port``, several
    separated by commas, as kafka-python reads them), or None: checked before any client
    (``KafkaConfig``'s validator). An empty list was an IndexError traceback out of
    kafka-python's bootstrap, a port that is not a number "Kafka client settings are invalid
    ... check kafka.client", and addresses separated by spaces one host name, retried until
    the broker was called unreachable."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if not entries:
        return "no broker address: give host:port (several separated by commas)"
    for entry in entries:
        address = re.sub("^.*://", "", entry)  # kafka-python drops a PLAINTEXT:// prefix
        if address.startswith("["):  # an IPv6 literal: [::1]:9092
            host, _, rest = address[1:].partition("]")
            port = rest[1:] if rest else None
        elif address.count(":") == 1:
            host, _, port = address.partition(":")
        else:  # a host alone (port 9092), or an IPv6 literal without brackets
            host, port = address, None
        if not host or any(c.isspace() for c in host):
            return (
                f"{entry!r} is not a broker address: write host:port, several separated by "
                "commas (localhost:9092,broker2:9092)"
            )
        if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            return (
                f"{entry!r} is not a broker address: its port {port!r} is not a number from 1 "
                "to 65535"
            )
    return None


# kafka.client options the scorer sets itself, from its own settings: what to set instead.
_OWNED_CLIENT_OPTIONS = {
    "bootstrap_servers": "kafka.bootstrap_servers (--bootstrap)",
    "client_id": "kafka.client_id",
    "group_id": "kafka.group_id (--group)",
    "auto_offset_reset": "kafka.auto_offset_reset",
    "session_timeout_ms": "kafka.session_timeout_ms (--session-timeout-ms)",
    "heartbeat_interval_ms": "kafka.heartbeat_interval_ms",
    "max_poll_interval_ms": "kafka.max_poll_interval_ms",
    "max_poll_records": "kafka.max_batch_records (--batch-size)",
}
# ... and those no setting changes: why.
_FIXED_CLIENT_OPTIONS = {
    "enable_auto_commit": "the scorer commits offsets once a batch is written",
    "acks": "alerts and dead letters are sent with acks=all",
    "linger_ms": "the scorer's producer sets it",
}
for _name in ("key_deserializer", "value_deserializer", "key_serializer", "value_serializer"):
    _FIXED_CLIENT_OPTIONS[_name] = "the scorer reads and writes raw bytes"
# kafka-python options that take a Python object, which a YAML file cannot give.
_OBJECT_CLIENT_OPTIONS = frozenset(
    {
        "selector",
        "ssl_context",
        "kafka_client",
        "partitioner",
        "metric_reporters",
        "sasl_oauth_token_provider",
        "default_offset_commit_callback",
        "partition_assignment_strategy",
    }
)


def kafka_client_option_names() -> frozenset[str]:
    """Every option kafka-python's consumer or producer takes (the scorer runs both)."""
    from kafka import KafkaConsumer, KafkaProducer

    return frozenset(KafkaConsumer.DEFAULT_CONFIG) | frozenset(KafkaProducer.DEFAULT_CONFIG)


def client_option_problem(client: dict[str, Any]) -> str | None:
    """What is wrong with the names of ``kafka.client``'s options, or None. Names only: a
    value may be a secret."""
    import difflib

    known = kafka_client_option_names()
    problems = []
    for name in map(str, client):
        if name in _OWNED_CLIENT_OPTIONS:
            problems.append(
                f"{name} is set by the scorer itself: set {_OWNED_CLIENT_OPTIONS[name]} instead"
            )
        elif name in _FIXED_CLIENT_OPTIONS:
            problems.append(
                f"{name} is set by the scorer itself ({_FIXED_CLIENT_OPTIONS[name]}): leave it out"
            )
        elif name in _OBJECT_CLIENT_OPTIONS:
            problems.append(f"{name} takes a Python object, which a pipeline file cannot give")
        elif name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(
                f"{name} is not a kafka-python client option{hint}: fix its spelling (the "
                "options of kafka-python's KafkaConsumer and KafkaProducer)"
            )
    protocol = client.get("security_protocol")
    if protocol is not None and protocol not in _SECURITY_PROTOCOLS:
        # kafka-python takes any other text as PLAINTEXT: a typo (SASL_SSl) connected
        # without TLS and without SASL, not a word said.
        problems.append(
            f"security_protocol {protocol!r} is not one of {', '.join(_SECURITY_PROTOCOLS)} "
            "(kafka-python would connect without TLS or SASL)"
        )
    mechanism = client.get("sasl_mechanism")
    if mechanism is not None:
        from kafka.net.sasl import SASL_MECHANISMS

        if mechanism not in SASL_MECHANISMS:
            problems.append(
                f"sasl_mechanism {mechanism!r} is not one of {', '.join(sorted(SASL_MECHANISMS))}"
            )
    return "; ".join(problems) or None


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


# The most records an alert rule's k, n or resolve_after may count.
MAX_ALERT_RULE_RECORDS = 1_000_000


class AlertsConfig(_Strict):
    """The alert rule (``thresholds.AlertRule``): an alert opens when ``k`` of an entity's last
    ``n`` records crossed the threshold, unless its previous alert opened less than
    ``cooldown_s`` seconds before (event time); it resolves after ``resolve_after`` normal
    records in a row. The pipeline's rule goes with the thresholds calibrated from a model;
    once an operator sets a threshold or rule (CLI or API), theirs stays in force."""

    # At most MAX_ALERT_RULE_RECORDS: the rule reads each entity's last max(n, resolve_after)
    # stored records, and a count past 64 bits was a traceback at the next write.
    k: int = Field(default=1, ge=1, le=MAX_ALERT_RULE_RECORDS)
    n: int = Field(default=1, ge=1, le=MAX_ALERT_RULE_RECORDS)
    cooldown_s: float = Field(default=0.0, ge=0.0)
    resolve_after: int = Field(default=1, ge=1, le=MAX_ALERT_RULE_RECORDS)

    @model_validator(mode="after")
    def _k_within_n(self) -> AlertsConfig:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n}): k of the last n records")
        return self


class WindowConfig(_Strict):
    """Score each record with the ``size - 1`` records of its entity before it (``windows.py``).

    ``entity`` names the series a record belongs to (one series when absent) and ``time`` its
    event time (ISO 8601 text, or epoch seconds, milliseconds, microseconds or nanoseconds, told
    apart by magnitude; arrival order when absent).
    They are the same columns as ``columns.entity`` / ``columns.timestamp``, which they fill in
    when those are not set.
    Records up to ``lateness_s`` seconds behind their entity's newest one are put in time order;
    older ones are scored on their own as ``late`` and never flagged. A gap longer than
    ``max_gap_s`` restarts the window. Until a record has a full window it is ``warming_up``
    (scored, never flagged). ``max_buffered`` bounds the records kept for reordering: a record
    behind more than that many newer ones of its entity is late too.
    ``day_first``: how times written as numeric dates with the year last (05/11/2026) are read,
    day first (true) or month first (false); left null, training decides it from the training
    data's times and the model keeps it, so that every chunk and every Kafka batch reads them
    in one order (``windows.numeric_date_order``).
    """

    size: int = Field(ge=1, le=10_000)
    entity: str | None = None
    time: str | None = None
    lateness_s: float = Field(default=0.0, ge=0.0)
    max_gap_s: float | None = Field(default=None, gt=0.0)
    max_buffered: int = Field(default=1000, ge=0)
    day_first: bool | None = None

    @field_validator("entity", "time", mode="before")
    @classmethod
    def _a_number_is_its_text(cls, value: Any) -> Any:
        return column_name(value)

    def spec(self) -> Any:
        from anomaly_vae.windows import WindowSpec

        return WindowSpec(
            size=self.size,
            lateness_s=self.lateness_s,
            max_gap_s=self.max_gap_s,
            max_buffered=self.max_buffered,
        )


class DatabaseConfig(_Strict):
    """Where results go. ``url``: ``sqlite:///file.db`` or ``postgresql://user@host/db``.

    Overridden by ``--db`` and by the ``ANOMALY_VAE_DATABASE_URL`` environment variable, which
    is the better place for a URL with a password: the pipeline file is often committed. The
    section is never saved into a model directory.
    """

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("url must not be empty: leave it out to use the default")
        return value


# The longest model name (models.name and thresholds.model_name are String(200)).
MODEL_NAME_MAX_CHARS = 200
# What a model name may be made of, as the errors say it.
MODEL_NAME_RULE = "letters, digits, '-', '_' or '.', and not only dots"


def only_dots(name: str) -> bool:
    """Whether ``name`` is only dots ('.', '..'): the HTTP API cannot serve such a model at
    /models/{name}, as clients and proxies resolve the segments '.' and '..' away
    ('/models/../score' is sent as '/score'), so it is refused when a model is named."""
    return bool(name) and not name.strip(".")


class PipelineConfig(_Strict):
    """One pipeline file: what an operator edits to change columns, model, threshold, I/O."""

    name: str = "default"
    model_dir: str | None = None  # where `stream` finds the model (--model-dir overrides)
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    csv: CsvConfig = Field(default_factory=CsvConfig)
    database: DatabaseConfig | None = None
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    # Owned by a later stage: kept as a plain dict so that one file serves every command.
    thresholds: dict[str, Any] | None = None
    alerts: AlertsConfig | None = None
    window: WindowConfig | None = None

    @model_validator(mode="after")
    def _window_columns(self) -> PipelineConfig:
        window = self.window
        if window is None:
            if self.model.encoder == "conv":
                raise ValueError("model.encoder 'conv' needs a window (window: {size: N})")
            return self
        for field_name, column_field in (("entity", "entity"), ("time", "timestamp")):
            mine = getattr(window, field_name)
            theirs = getattr(self.columns, column_field)
            if mine and theirs and mine != theirs:
                raise ValueError(
                    f"window.{field_name} ({mine!r}) and columns.{column_field} ({theirs!r}) "
                    "must name the same column"
                )
            if mine and not theirs:
                self.columns.__dict__[column_field] = mine
            if theirs and not mine:
                window.__dict__[field_name] = theirs
        if window.entity and window.entity == window.time:
            # Accepted, every record of an entity had the entity as its time: one instant, the
            # windows in arrival order, gaps and lateness meaningless, without a word.
            raise ValueError(
                f"window.entity and window.time both name {window.entity!r}: the time is the "
                "column of each record's event time, another column (leave window.time out for "
                "arrival order)"
            )
        return self

    @field_validator("thresholds")
    @classmethod
    def _no_thresholds_section(cls, value: Any, info: ValidationInfo) -> Any:
        # Nothing reads it: a file with `thresholds: {value: 41.7}` trained and scored at the
        # calibrated threshold without a word. A model directory that stored one still loads.
        if value is not None and (info.context or {}).get("pipeline_file"):
            raise ValueError(
                "a pipeline file does not set thresholds, and this section would be ignored: "
                "the model's calibrated threshold is scoring.threshold_quantile (when training), "
                "an operator's is set with 'anomaly-vae thresholds set' (or score --threshold), "
                "and the alert rule goes under alerts:"
            )
        return value

    @field_validator("kafka", mode="before")
    @classmethod
    def _empty_kafka_section(cls, value: Any) -> Any:
        # An empty `kafka:` section in YAML (or a model file from before it existed) is null.
        return {} if value is None else value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str, info: ValidationInfo) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            # The value itself is shown by format_validation_error ("(got 'a b')").
            raise ValueError(f"name must be {MODEL_NAME_RULE}")
        stored = isinstance(info.context, dict) and info.context.get("stored")
        if only_dots(value) and not stored:
            # Trained, saved and scored to CSV, and registered by 'score --db', but the HTTP
            # API's /models/{name} never reached it. A model saved before this check still
            # loads; registering it is refused (repository.register_model).
            raise ValueError(
                f"name must be {MODEL_NAME_RULE}: the HTTP API cannot reach /models/{value}"
            )
        # The database keeps a name in String(200) columns: a longer one trained and scored to
        # CSV, and SQLite stored it, but PostgreSQL refused the first 'score --db' with "value
        # too long for type character varying(200)". A model directory saved before this check
        # still loads (context 'stored').
        if len(value) > MODEL_NAME_MAX_CHARS and not stored:
            raise ValueError(
                f"name is {len(value)} characters long: at most {MODEL_NAME_MAX_CHARS} (the "
                "results database keeps a model's name in that many)"
            )
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Read and validate a pipeline file; every problem becomes one ConfigError line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"pipeline file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"pipeline file {path} cannot be read: {exc}") from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no objects
        except _DuplicateKeyError as exc:
            raise ConfigError(
                f"pipeline file {path} (line {exc.line}): {exc.key!r} is set twice (first on "
                f"line {exc.first_line}); the second would replace the first without a word: "
                "keep one"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            # Not the parser's words, which may quote the file (an alias '*hunter2' given as a
            # password); but a tab, which YAML does not indent with, is said as such: "fix its
            # syntax" left a file that looks right in an editor unexplained.
            tab = "'\\t'" in str(getattr(exc, "problem", "") or "")
            problem = "a tab character: YAML indents with spaces, not tabs" if tab else ""
            raise ConfigError(
                f"pipeline file {path}{where} is not valid YAML"
                + (f" ({problem})" if problem else "")
                + ": fix its syntax"
            ) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"pipeline file {path} must hold a mapping at the top level")
        try:
            return cls.model_validate(data, context={"pipeline_file": True})
        except ValidationError as exc:
            raise ConfigError(f"pipeline file {path}: {format_validation_error(exc)}") from None

    def over(
        self, base: PipelineConfig, *, source: str | Path = "the pipeline file"
    ) -> PipelineConfig:
        """``base`` (a model's own pipeline) with the top-level sections this one sets in their
        place: what a pipeline file leaves out is the model's, not the defaults (a file with only
        ``kafka:`` kept no entity, id or timestamp column)."""
        data = base.model_dump()
        data.update(self.model_dump(include=set(self.model_fields_set)))
        try:
            return PipelineConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(
                f"{source} over the model's own settings: {format_validation_error(exc)}"
            ) from None


class _DuplicateKeyError(Exception):
    def __init__(self, key: object, first_line: int, line: int) -> None:
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key set twice in one mapping (PyYAML keeps the last: a
    second ``columns:`` section at the end of a file dropped the first one's label)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' may repeat
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        except TypeError:  # an unhashable key: the safe loader says what is wrong with it
            break
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


# Where a pipeline file holds secrets: the database URL (its password), the Kafka client's
# options (SASL, SSL), and any key whose name says so, wherever it was put by mistake
# (kafka.sasl_plain_password instead of kafka.client.sasl_plain_password).
_SECRET_WORDS = ("password", "secret", "token", "passwd", "credential")


def _may_be_secret(loc: tuple[int | str, ...]) -> bool:
    """Whether a value at ``loc`` in a pipeline may be a secret, never to be echoed back."""
    names = [str(part).lower() for part in loc]
    if names[:1] == ["database"] or names[:2] == ["kafka", "client"]:
        return True
    return any(word in name for name in names for word in _SECRET_WORDS)


def format_validation_error(exc: ValidationError) -> str:
    """One line from a pydantic error: 'training.epochs: Input should be >= 1 (got 0)'."""
    parts = []
    for err in exc.errors():
        # A check of the whole file (two sections that disagree) has no place: its message
        # names the settings itself ("value: window.entity and ..." read as a setting 'value').
        loc = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
        if got_text and _may_be_secret(err["loc"]):
            got_text = " (value not shown: it may hold a secret)"
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix, no news
        if err["type"] == "extra_forbidden":
            message += _unknown_key_hint(exc.title, err["loc"])
        parts.append(f"{loc}: {message}{got_text}" if loc else f"{message}{got_text}")
    return "; ".join(parts)


def _unknown_key_hint(title: str, loc: tuple[int | str, ...]) -> str:
    """For a key a section does not have: the section's key it may be a misspelling of, or,
    under kafka, that a kafka-python option goes under kafka.client ('' when neither)."""
    import difflib

    section: Any = {cls.__name__: cls for cls in _Strict.__subclasses__()}.get(title)
    for part in loc[:-1]:
        field = section.model_fields.get(part) if section is not None else None
        if field is None:
            return ""
        kinds = [field.annotation, *getattr(field.annotation, "__args__", ())]
        section = next((k for k in kinds if isinstance(k, type) and issubclass(k, _Strict)), None)
    if section is None:
        return ""
    name = str(loc[-1])
    if section is KafkaConfig and name in kafka_client_option_names():
        where = f": {name} is a kafka-python option, which goes under kafka.client"
        if name == "sasl_plain_password":
            where += " (or in the environment variable ANOMALY_VAE_KAFKA_SASL_PASSWORD)"
        return where
    close = difflib.get_close_matches(name, list(section.model_fields), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


Device = Literal["auto", "cpu", "cuda"]
