"""Reading the dead-letter table: the records that could not be scored, and why.

Every reject (a CSV row with a non-numeric value or the wrong number of fields, a Kafka
message that is not JSON, lacks a feature, is oversized...) is a ``dead_letters`` row with its
``source_key`` (``csv:<sha>:<row>`` or ``<topic>:<partition>:<offset>``), the ``reason``, the
``raw`` record as received (the message or line text, or the JSON text of the row's values)
and the run that rejected it. These functions list them (``anomaly-vae dead-letters list``,
``GET /dead-letters``), count them by reason (``... summary``) and stream them all out
(``... export``), newest first; ``before_id`` pages through any number of rows without
skipping one (ids are unique and grow with the time a row was written).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from anomaly_vae.storage.repository import id_bound, int_id_is
from anomaly_vae.storage.tables import DeadLetter, Model, ScoringRun

DEFAULT_LIMIT = 50


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: all of them unless narrowed. ``reason`` matches a part of the
    reason, letter case ignored; ``since`` / ``until`` compare with ``rejected_at``."""

    model_name: str | None = None
    run_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    reason: str | None = None
    before_id: int | None = None

    def __post_init__(self) -> None:
        from anomaly_vae.storage.repository import check_period

        check_period(self.since, self.until)


def _select(where: DeadLetterFilter) -> Any:  # a Select of the listing's columns
    stmt = (
        select(
            DeadLetter.id,
            DeadLetter.rejected_at,
            DeadLetter.run_id,
            ScoringRun.kind.label("run_kind"),
            Model.name.label("model"),
            Model.version.label("model_version"),
            DeadLetter.source_key,
            DeadLetter.reason,
            DeadLetter.raw,
        )
        .join(Model, Model.id == DeadLetter.model_id)
        .join(ScoringRun, ScoringRun.id == DeadLetter.run_id)
        .order_by(DeadLetter.id.desc())
    )
    if where.model_name is not None:
        stmt = stmt.where(Model.name == where.model_name)
    if where.run_id is not None:
        stmt = stmt.where(int_id_is(DeadLetter.run_id, where.run_id))
    if where.since is not None:
        stmt = stmt.where(DeadLetter.rejected_at >= where.since)
    if where.until is not None:
        stmt = stmt.where(DeadLetter.rejected_at < where.until)
    if where.reason:
        # Escaped: a reason searched for "100%" or "field_a" means those characters.
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", where.reason.lower()) + "%"
        stmt = stmt.where(func.lower(DeadLetter.reason).like(pattern, escape="\\"))
    if where.before_id is not None:
        stmt = stmt.where(DeadLetter.id < id_bound(where.before_id))
    return stmt


def list_dead_letters(
    connection: Connection, where: DeadLetterFilter, *, limit: int = DEFAULT_LIMIT
) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters that ``where`` selects, newest first. The next page:
    the same filter with ``before_id`` set to the last row's ``id``."""
    return [row._asdict() for row in connection.execute(_select(where).limit(id_bound(limit)))]


def iter_dead_letters(
    connection: Connection, where: DeadLetterFilter, *, page: int = 5_000
) -> Iterator[dict[str, Any]]:
    """Every dead letter that ``where`` selects, newest first, read ``page`` rows at a time
    (by id, so a table of millions of rows never sits in memory, and rows written meanwhile
    are not read twice)."""
    before = where.before_id
    while True:
        rows = list_dead_letters(
            connection,
            dataclasses.replace(where, before_id=before),
            limit=page,
        )
        yield from rows
        if len(rows) < page:
            return
        before = int(rows[-1]["id"])


# A value quoted in a reason, after "column 'x': " or "field 'x': ", up to " is not": the
# record's own value, which would make every reason its own group.
_VALUE = re.compile(
    r"((?:column|field) (?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")): "
    r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|.*?) (is not)"
)
_QUOTED = re.compile(r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
_NUMBER = re.compile(r"\d+")


def reason_pattern(reason: str) -> str:
    """A reason with what differs from record to record masked, so that rejects for the same
    cause count together: the value after ``column 'x': `` or ``field 'x': `` becomes ``…``
    and numbers outside quotes (line, row, byte counts, JSON error positions) become ``N``;
    quoted column and field names stay, digits in them too."""
    text = _VALUE.sub(r"\1: … \3", reason)
    parts = _QUOTED.split(text)
    # split() with one group: the quoted pieces sit at the odd indexes
    return "".join(p if i % 2 else _NUMBER.sub("N", p) for i, p in enumerate(parts))


@dataclass(frozen=True)
class ReasonCount:
    """How many dead letters share a reason pattern, with one full example and the span."""

    pattern: str
    count: int
    example_reason: str
    example_source_key: str
    first_rejected_at: datetime
    last_rejected_at: datetime
    runs: tuple[int, ...]


def summarize(connection: Connection, where: DeadLetterFilter) -> list[ReasonCount]:
    """The dead letters that ``where`` selects, counted by :func:`reason_pattern`, most
    common first. Reads the reasons (not the raw records) of every matching row."""
    # The same filters as a listing; equal reason texts are grouped in the database first.
    matching = _select(where).with_only_columns(DeadLetter.id).order_by(None)
    stmt = (
        select(
            DeadLetter.reason,
            func.min(DeadLetter.source_key).label("source_key"),
            func.min(DeadLetter.rejected_at).label("first"),
            func.max(DeadLetter.rejected_at).label("last"),
            DeadLetter.run_id,
            func.count().label("n"),
        )
        .where(DeadLetter.id.in_(matching))
        .group_by(DeadLetter.reason, DeadLetter.run_id)
    )
    counts: Counter[str] = Counter()
    example: dict[str, tuple[str, str]] = {}
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    runs: dict[str, set[int]] = {}
    for row in connection.execute(stmt):
        pattern = reason_pattern(row.reason)
        counts[pattern] += int(row.n)
        example.setdefault(pattern, (row.reason, row.source_key))
        first[pattern] = min(first.get(pattern, row.first), row.first)
        last[pattern] = max(last.get(pattern, row.last), row.last)
        runs.setdefault(pattern, set()).add(int(row.run_id))
    return [
        ReasonCount(
            pattern=pattern,
            count=count,
            example_reason=example[pattern][0],
            example_source_key=example[pattern][1],
            first_rejected_at=first[pattern],
            last_rejected_at=last[pattern],
            runs=tuple(sorted(runs[pattern])),
        )
        for pattern, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
