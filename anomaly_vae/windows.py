"""Windows of recent records per entity: pure numpy, no files, no network, no database.

A windowed model scores each record together with the ``size - 1`` records of the same entity
that precede it in event time. ``WindowState`` keeps, per entity, the last records it needs
(encoded rows, not raw text) and turns a batch of encoded records into a batch of windows. The
batch job (CSV chunks) and the stream scorer (Kafka micro-batches) drive the same state, one
record after another in arrival order, so a record gets the same window, hence the same score,
whichever way it came and however its input was cut into batches.

The rules (``WindowSpec``), all in event time (seconds; arrival order when there is no time
column):

* **order**: a record's window holds the ``size - 1`` records of its entity received before it
  whose time is at or before its own, in time order; records with the same time keep their
  arrival order (a duplicate timestamp is an ordinary record that comes after the earlier one);
* **lateness**: a record older than ``lateness_s`` behind the newest time seen for its entity,
  or behind more than ``max_buffered`` newer records of it, is *late*: it is scored on its own
  (a window of itself, repeated), never flagged, counted, and not added to the entity's window.
  A record within ``lateness_s`` takes its place in time order: its window holds the records
  before it in time, and the records after it see it where it belongs. Records already scored
  are not scored again;
* **gaps**: when two consecutive records of an entity are more than ``max_gap_s`` apart, the
  window restarts at the later one (the records before the gap are not part of its window);
* **warming up**: a record with fewer than ``size - 1`` records before it (a new entity, or
  just after a gap) is scored on its window padded at the oldest end with copies of its oldest
  record, marked ``warming_up`` and never flagged;
* **replays**: a record from a sequenced source (a Kafka partition's offsets) at or before the
  last sequence number applied to its entity from that source was already applied (a replay
  after a crash): the state is left alone and the record is marked ``replayed`` (its stored
  score, written the first time, stays).

Memory per entity is bounded: the last ``size - 1`` records before the lateness horizon plus
those inside it, at most ``size - 1 + max_buffered`` records (the oldest go first; a record
that would sit behind more than ``max_buffered`` newer ones is late, so that what was pruned
never matters).

``WindowState.to_bytes`` / ``from_bytes`` serialise one entity's state, so that a stream scorer
can persist it with the scores of the batch that produced it and rebuild it after a restart.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from anomaly_vae.features import EncodedBatch, FeatureLayout

if TYPE_CHECKING:
    import pandas as pd

OK, WARMING_UP, LATE, REPLAYED = 0, 1, 2, 3
STATUS_NAMES = np.asarray(["ok", "warming_up", "late", "replayed"], dtype=object)
_FORMAT = 1
_HEADER = struct.Struct("<BIIIBd")  # format, rows, width, n_numeric, has_observed, max_time


@dataclass(frozen=True)
class WindowSpec:
    """``size`` records per window (the record and the ``size - 1`` before it)."""

    size: int
    lateness_s: float = 0.0
    max_gap_s: float | None = None
    max_buffered: int = 1000

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"window size must be >= 1, got {self.size}")
        if self.lateness_s < 0 or not math.isfinite(self.lateness_s):
            raise ValueError(f"lateness_s must be >= 0, got {self.lateness_s}")
        if self.max_gap_s is not None and not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {self.max_gap_s}")


class EntityWindow:
    """One entity's recent records, sorted by time (arrival order among equal times)."""

    __slots__ = ("last_seq", "max_time", "observed", "rows", "times")

    def __init__(self, width: int, n_numeric: int) -> None:
        self.times = np.empty(0, dtype=np.float64)
        self.rows = np.empty((0, width), dtype=np.float32)
        self.observed: np.ndarray | None = None  # None: every numeric value was present
        self.max_time = -math.inf
        self.last_seq: dict[str, int] = {}

    def nbytes(self) -> int:
        extra = 0 if self.observed is None else self.observed.nbytes
        return self.times.nbytes + self.rows.nbytes + extra

    def observed_or_ones(self, n_numeric: int) -> np.ndarray:
        if self.observed is None:
            return np.ones((len(self.times), n_numeric), dtype=np.float32)
        return self.observed


@dataclass
class AssembledWindows:
    """Windows for a batch of records, in input order: ``x`` ``[n, size, width]``,
    ``observed`` ``[n, size, n_numeric]`` and ``status`` (``OK``, ``WARMING_UP``, ``LATE``,
    ``REPLAYED``) per record."""

    x: np.ndarray
    observed: np.ndarray
    status: np.ndarray

    def status_names(self) -> np.ndarray:
        return STATUS_NAMES[self.status]


@dataclass
class WindowCounters:
    records: int = 0
    warming_up: int = 0
    late: int = 0
    replayed: int = 0
    gaps: int = 0
    dropped_from_buffer: int = 0


Loader = Callable[[list[str]], Mapping[str, bytes]]


@dataclass
class WindowState:
    """Every entity's window; feed it records in arrival order with ``assemble``.

    ``loader`` (optional) is asked for the stored state of entities this object has not seen
    (a stream scorer after a restart or a rebalance); ``dirty`` names the entities changed since
    the last ``take_dirty`` (what to persist with the batch's scores).
    """

    spec: WindowSpec
    width: int
    n_numeric: int
    loader: Loader | None = None
    entities: dict[str, EntityWindow] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    counters: WindowCounters = field(default_factory=WindowCounters)
    # Entities whose records came from more than one source stream (Kafka partition): their
    # window is whole only while one scorer reads every one of those streams.
    split: set[str] = field(default_factory=set)
    # The order numeric dates (05/11/2026) are read in for a model that has none of its own
    # (trained on ISO 8601 or epoch times), decided by the first batch holding such dates and
    # kept for the rest of the run (True: day first); see ``estimator._run_date_order``.
    day_first: bool | None = None

    # ------------------------------------------------------------------ feeding
    def assemble(
        self,
        batch: EncodedBatch,
        entities: Sequence[str],
        times: np.ndarray | None = None,
        *,
        streams: Sequence[str] | None = None,
        seqs: np.ndarray | None = None,
    ) -> AssembledWindows:
        """Windows for ``batch`` (records in arrival order) and the state moved past them.

        ``times``: event times in seconds (float64), or None (arrival order). ``streams`` and
        ``seqs``: the source stream (e.g. ``topic:partition``) and sequence number of each
        record, for replay detection; None when the source cannot replay.
        """
        n = batch.x.shape[0]
        size, width, k = self.spec.size, self.width, self.n_numeric
        if batch.x.shape[1] != width:
            raise ValueError(f"encoded rows have {batch.x.shape[1]} columns, expected {width}")
        out_x = np.empty((n, size, width), dtype=np.float32)
        out_obs = np.empty((n, size, k), dtype=np.float32)
        status = np.zeros(n, dtype=np.int8)
        if n == 0:
            return AssembledWindows(out_x, out_obs, status)
        keys = np.asarray([str(e) for e in entities], dtype=object)
        self._load_missing(keys)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys.tolist()):
            groups.setdefault(key, []).append(i)
        for key, members in groups.items():
            idx = np.asarray(members, dtype=np.int64)
            ent = self.entities.get(key)
            if ent is None:
                ent = self.entities[key] = EntityWindow(width, k)
            t = self._times_for(ent, idx, times)
            stream_of = None if streams is None else [str(streams[i]) for i in members]
            seq_of = None if seqs is None else np.asarray(seqs)[idx].astype(np.int64)
            if self._in_order(ent, t, stream_of, seq_of):
                self._append_run(ent, batch, idx, t, out_x, out_obs, status)
                if stream_of is not None and seq_of is not None:
                    for s, q in zip(stream_of, seq_of.tolist(), strict=True):
                        ent.last_seq[s] = max(ent.last_seq.get(s, -1), q)
            else:
                for j, i in enumerate(members):
                    self._push_one(
                        ent,
                        batch,
                        int(i),
                        float(t[j]),
                        None if stream_of is None else stream_of[j],
                        None if seq_of is None else int(seq_of[j]),
                        out_x,
                        out_obs,
                        status,
                    )
            self._prune(ent)
            self.entities[key] = self.entities.pop(key)  # the most recently fed come last
            self.dirty.add(key)
            if len(ent.last_seq) > 1:
                self.split.add(key)
        self.counters.records += n
        self.counters.warming_up += int(np.sum(status == WARMING_UP))
        self.counters.late += int(np.sum(status == LATE))
        self.counters.replayed += int(np.sum(status == REPLAYED))
        return AssembledWindows(out_x, out_obs, status)

    def _times_for(
        self, ent: EntityWindow, idx: np.ndarray, times: np.ndarray | None
    ) -> np.ndarray:
        if times is not None:
            return np.asarray(times, dtype=np.float64)[idx]
        # Arrival order: a counter per entity, continued across batches.
        start = ent.max_time + 1.0 if math.isfinite(ent.max_time) else 0.0
        return start + np.arange(len(idx), dtype=np.float64)

    @staticmethod
    def _in_order(
        ent: EntityWindow, t: np.ndarray, streams: list[str] | None, seqs: np.ndarray | None
    ) -> bool:
        """True when the run can be appended as it is: sorted, none before the newest time."""
        if len(t) and t[0] < ent.max_time:
            return False
        if len(t) > 1 and np.any(np.diff(t) < 0):
            return False
        if streams is not None and seqs is not None:
            for s, q in zip(streams, seqs.tolist(), strict=True):
                if q <= ent.last_seq.get(s, -1):
                    return False
        return True

    def _append_run(
        self,
        ent: EntityWindow,
        batch: EncodedBatch,
        idx: np.ndarray,
        t: np.ndarray,
        out_x: np.ndarray,
        out_obs: np.ndarray,
        status: np.ndarray,
    ) -> None:
        """The common case, vectorised: records in time order, none late."""
        size, k = self.spec.size, self.n_numeric
        m = len(ent.times)
        times = np.concatenate([ent.times, t])
        rows = np.concatenate([ent.rows, batch.x[idx]])
        new_obs = batch.observed[idx]
        if ent.observed is None and bool(np.all(new_obs == 1.0)):
            observed = None
        else:
            observed = np.concatenate([ent.observed_or_ones(k), new_obs])
        total = len(times)
        starts = self._segment_starts(times)
        pos = np.arange(m, total, dtype=np.int64)
        first = np.maximum(pos - (size - 1), starts[pos])
        steps = np.arange(size - 1, -1, -1, dtype=np.int64)  # oldest first
        gather = np.maximum(pos[:, None] - steps[None, :], first[:, None])
        out_x[idx] = rows[gather]
        if observed is None:
            out_obs[idx] = 1.0
        else:
            out_obs[idx] = observed[gather]
        status[idx] = np.where(pos - first == size - 1, OK, WARMING_UP)
        self.counters.gaps += int(np.sum(starts[m:] == pos) - np.sum(pos == 0))
        ent.times, ent.rows, ent.observed = times, rows, observed
        ent.max_time = float(times[-1])

    def _segment_starts(self, times: np.ndarray) -> np.ndarray:
        """For each position, where its gap-free run begins."""
        n = len(times)
        gap = self.spec.max_gap_s
        if gap is None or n == 0:
            return np.zeros(n, dtype=np.int64)
        breaks = np.zeros(n, dtype=bool)
        breaks[0] = True
        breaks[1:] = np.diff(times) > gap
        marks = np.where(breaks, np.arange(n, dtype=np.int64), 0)
        return np.maximum.accumulate(marks)

    def _push_one(
        self,
        ent: EntityWindow,
        batch: EncodedBatch,
        i: int,
        t: float,
        stream: str | None,
        seq: int | None,
        out_x: np.ndarray,
        out_obs: np.ndarray,
        status: np.ndarray,
    ) -> None:
        """The general case, one record: replays, late records, inserts in time order."""
        size, k = self.spec.size, self.n_numeric
        row = batch.x[i]
        obs = batch.observed[i]
        if stream is not None and seq is not None and seq <= ent.last_seq.get(stream, -1):
            out_x[i] = row
            out_obs[i] = obs
            status[i] = REPLAYED
            return
        if stream is not None and seq is not None:
            ent.last_seq[stream] = seq
        pos = bisect.bisect_right(ent.times.tolist(), t)
        if t < ent.max_time - self.spec.lateness_s or len(ent.times) - pos > self.spec.max_buffered:
            # Behind more than max_buffered newer records: late too, whatever the buffer still
            # holds (pruned at batch ends), so that how the input was cut never matters.
            out_x[i] = row
            out_obs[i] = obs
            status[i] = LATE
            return
        times = np.insert(ent.times, pos, t)
        rows = np.insert(ent.rows, pos, row, axis=0)
        if ent.observed is None and bool(np.all(obs == 1.0)):
            observed = None
        else:
            observed = np.insert(ent.observed_or_ones(k), pos, obs, axis=0)
        starts = self._segment_starts(times)
        first = max(pos - (size - 1), int(starts[pos]))
        steps = np.arange(size - 1, -1, -1, dtype=np.int64)
        gather = np.maximum(pos - steps, first)
        out_x[i] = rows[gather]
        out_obs[i] = 1.0 if observed is None else observed[gather]
        status[i] = OK if pos - first == size - 1 else WARMING_UP
        if pos > 0 and starts[pos] == pos:
            self.counters.gaps += 1
        ent.times, ent.rows, ent.observed = times, rows, observed
        ent.max_time = max(ent.max_time, t)

    def _prune(self, ent: EntityWindow) -> None:
        """Keep the records a future window can use: those inside the lateness horizon and the
        ``size - 1`` before it; never more than ``size - 1 + max_buffered``."""
        keep_before = self.spec.size - 1
        horizon = ent.max_time - self.spec.lateness_s
        first_inside = int(np.searchsorted(ent.times, horizon, side="right"))
        start = max(0, first_inside - keep_before)
        # One record more than max_buffered even for a window of 1: what tells a record behind
        # max_buffered newer ones (late) from one that is not.
        cap = max(keep_before, 1) + self.spec.max_buffered
        if len(ent.times) - start > cap:
            self.counters.dropped_from_buffer += len(ent.times) - start - cap
            start = len(ent.times) - cap
        if start > 0:
            ent.times = ent.times[start:].copy()
            ent.rows = ent.rows[start:].copy()
            if ent.observed is not None:
                ent.observed = ent.observed[start:].copy()
                if bool(np.all(ent.observed == 1.0)):
                    ent.observed = None
        elif ent.rows.base is not None:
            ent.rows = ent.rows.copy()

    # ------------------------------------------------------------- persistence
    def _load_missing(self, keys: np.ndarray) -> None:
        if self.loader is None:
            return
        unknown = sorted({str(k) for k in keys.tolist()} - self.entities.keys())
        if not unknown:
            return
        for key, blob in self.loader(unknown).items():
            self.entities[key] = entity_from_bytes(blob, self.width, self.n_numeric)

    def take_dirty(self) -> dict[str, bytes]:
        """The serialised state of every entity changed since the last call."""
        out = {key: entity_to_bytes(self.entities[key]) for key in sorted(self.dirty)}
        self.dirty.clear()
        return out

    def evict(self, limit: int, keep: Collection[str] = ()) -> int:
        """Forget the entities fed least recently until at most ``limit`` are left, never one
        in ``keep`` (its state not yet stored) nor one changed since ``take_dirty``; the loader
        reads a forgotten entity's stored state back when it comes again. Nothing is forgotten
        without a loader. Returns how many were."""
        excess = len(self.entities) - limit
        if excess <= 0 or self.loader is None:
            return 0
        gone: list[str] = []
        for key in self.entities:  # oldest first
            if len(gone) == excess:
                break
            if key not in keep and key not in self.dirty:
                gone.append(key)
        for key in gone:
            del self.entities[key]
        return len(gone)

    def clear(self) -> None:
        """Forget every entity (their stored state is loaded again when they come back)."""
        self.entities.clear()
        self.dirty.clear()

    def to_bytes(self) -> dict[str, bytes]:
        return {key: entity_to_bytes(ent) for key, ent in self.entities.items()}

    def restore(self, states: Mapping[str, bytes]) -> None:
        for key, blob in states.items():
            self.entities[key] = entity_from_bytes(blob, self.width, self.n_numeric)

    def nbytes(self) -> int:
        """The arrays' bytes (what grows with entities), without Python object overheads."""
        return sum(ent.nbytes() for ent in self.entities.values())


def entity_to_bytes(ent: EntityWindow) -> bytes:
    """Header, then times (float64), rows (float32), observed (float32, when any value was
    missing) and the last sequence numbers (JSON)."""
    rows, width = ent.rows.shape
    k = 0 if ent.observed is None else ent.observed.shape[1]
    seq = json.dumps(ent.last_seq, sort_keys=True, separators=(",", ":")).encode()
    parts = [
        _HEADER.pack(_FORMAT, rows, width, k, ent.observed is not None, ent.max_time),
        np.ascontiguousarray(ent.times, dtype="<f8").tobytes(),
        np.ascontiguousarray(ent.rows, dtype="<f4").tobytes(),
    ]
    if ent.observed is not None:
        parts.append(np.ascontiguousarray(ent.observed, dtype="<f4").tobytes())
    parts.append(seq)
    return b"".join(parts)


def entity_from_bytes(blob: bytes, width: int, n_numeric: int) -> EntityWindow:
    fmt, rows, stored_width, k, has_obs, max_time = _HEADER.unpack_from(blob, 0)
    if fmt != _FORMAT:
        raise ValueError(f"window state format {fmt} is not known (expected {_FORMAT})")
    if stored_width != width or (has_obs and k != n_numeric):
        raise ValueError(
            f"stored window state has rows of {stored_width} columns, the model {width}"
        )
    offset = _HEADER.size
    ent = EntityWindow(width, n_numeric)
    ent.times = np.frombuffer(blob, dtype="<f8", count=rows, offset=offset).astype(np.float64)
    offset += 8 * rows
    ent.rows = (
        np.frombuffer(blob, dtype="<f4", count=rows * width, offset=offset)
        .reshape(rows, width)
        .astype(np.float32)
    )
    offset += 4 * rows * width
    if has_obs:
        ent.observed = (
            np.frombuffer(blob, dtype="<f4", count=rows * k, offset=offset)
            .reshape(rows, k)
            .astype(np.float32)
        )
        offset += 4 * rows * k
    ent.max_time = float(max_time)
    ent.last_seq = {str(s): int(q) for s, q in json.loads(blob[offset:].decode()).items()}
    return ent


# ------------------------------------------------------------------ model input layout
def window_layout(layout: FeatureLayout, size: int) -> FeatureLayout:
    """The layout of a flattened window: every step's numeric columns first (oldest step
    first), then every step's categorical blocks. Each block still names its input column, so
    per-column attribution sums a column's terms over the window's steps."""
    k = layout.n_numeric
    return FeatureLayout(
        n_numeric=k * size,
        cat_sizes=list(layout.cat_sizes) * size,
        block_columns=list(layout.block_columns[:k]) * size + list(layout.block_columns[k:]) * size,
        column_names=list(layout.column_names),
    )


def flatten_windows(x: np.ndarray, observed: np.ndarray, n_numeric: int) -> EncodedBatch:
    """``[n, size, width]`` windows -> the flat rows ``window_layout`` describes."""
    n, size, width = x.shape
    numeric = x[:, :, :n_numeric].reshape(n, size * n_numeric)
    cats = x[:, :, n_numeric:].reshape(n, size * (width - n_numeric))
    flat = np.ascontiguousarray(np.concatenate([numeric, cats], axis=1), dtype=np.float32)
    obs = np.ascontiguousarray(observed.reshape(n, size * n_numeric), dtype=np.float32)
    return EncodedBatch(x=flat, observed=obs)


# An epoch number above 1e11 is in milliseconds (in seconds it would be past the year 5138),
# above 1e14 in microseconds and above 1e17 in nanoseconds (each past the year 5138 in the unit
# below): what Java (ms), PostgreSQL or Python exports (us) and Go or pandas (ns) write.
_EPOCH_UNITS = ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3))
# The latest time a stored event time (nanoseconds in 64 bits) can hold, in seconds.
_MAX_SECONDS = 9_223_372_036.0


def _epoch_divisors(number: np.ndarray) -> np.ndarray:
    """Per epoch number, what divides it into seconds (1, 1e3, 1e6 or 1e9), by magnitude."""
    size = np.abs(number)
    out = np.ones(len(number), dtype=np.float64)
    for above, divisor in reversed(_EPOCH_UNITS):
        out[size > above] = divisor
    return out


def event_seconds(
    values: Iterable[object], *, day_first: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Event times as float seconds since the epoch, and a mask of the values that are not a
    time. Numbers are read as ``event_timestamps`` reads them (seconds, or milliseconds,
    microseconds, nanoseconds by magnitude); text as ISO 8601 (naive = UTC), or a number in
    text. ``day_first``: the order of numeric dates (``_time_text``)."""
    import pandas as pd

    raw = _comma_decimals(pd.Series(list(values), dtype=object))
    out = np.full(len(raw), np.nan, dtype=np.float64)
    # true / false (JSON) are not times, as event_timestamps reads them: not 1 and 0 seconds.
    flags = raw.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
    numeric = pd.to_numeric(raw.mask(flags), errors="coerce")
    is_num = numeric.notna().to_numpy()
    number = numeric[is_num].to_numpy(dtype=np.float64)
    out[is_num] = number / _epoch_divisors(number)
    if len(number):
        _warn_compact_dates(number)
        _warn_excel_serials(number)
    rest = ~is_num & raw.notna().to_numpy() & ~flags
    if rest.any():
        parsed, _ = _time_text(raw[rest].astype(str), day_first=day_first)
        ok = parsed.notna().to_numpy()
        ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        seconds = np.where(ok, ns / 1e9, np.nan)
        out[np.flatnonzero(rest)] = seconds
    bad = ~(np.abs(out) < _MAX_SECONDS)  # NaN, or past what a stored event time holds
    return out, bad


# Epoch seconds (or ms...) written with a decimal comma, as a ';' export with decimal commas
# writes a fraction of a second: 1793577600,25. Nine digits or more before the comma: no
# thousands separator ("1,793") nor anything else is read so.
_COMMA_EPOCH = re.compile(r"\s*[-+]?\d{9,},\d+\s*")


def _comma_decimals(raw: pd.Series) -> pd.Series:
    """``raw`` with epoch numbers written with a decimal comma as numbers in text with a
    decimal point; they were 'not a time' (every record of such an export rejected)."""
    is_text = raw.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if not is_text.any():
        return raw
    text = raw[is_text].astype(object)
    hit = text.map(lambda v: _COMMA_EPOCH.fullmatch(v) is not None).to_numpy(dtype=bool)
    if not hit.any():
        return raw
    out = raw.astype(object).copy()
    rows = text.index[hit]
    out[rows] = [str(v).replace(",", ".") for v in text[hit]]
    return out


# The kinds of time (below) that numbers read as epoch times were already said to look like,
# in this process: each is warned of once.
_warned_times: set[str] = set()


def _warn_if_most_look_like(
    kind: str,
    number: np.ndarray,
    matches: Callable[[np.ndarray], np.ndarray],
    message: Callable[[float], str],
) -> None:
    """Once per process for each ``kind``: a warning when most of ``number`` (numbers read as
    epoch times) are ``matches(number)``, the values among them that look like another kind
    of time; ``message`` makes its text from the first of them."""
    if kind in _warned_times or not len(number):
        return
    found = matches(number)
    if len(found) * 2 <= len(number):
        return
    _warned_times.add(kind)
    logging.getLogger(__name__).warning("%s", message(float(found[0])))


def _warn_compact_dates(number: np.ndarray) -> None:
    """Once per process: a warning when most numbers read as epoch times are dates written as
    digits (20261112, 20261112230000). They are read as epoch seconds (August 1970) or
    milliseconds (the year 2612), so the windows' gaps and lateness are wrong."""
    _warn_if_most_look_like("compact dates", number, _compact_dates, _compact_dates_message)


def _compact_dates(number: np.ndarray) -> np.ndarray:
    """The numbers among ``number`` that read as YYYYMMDD or YYYYMMDDhhmmss."""
    whole = number[(number == np.floor(number)) & (number > 0)]
    day = np.where(whole < 1e9, whole, np.floor(whole / 1e6))  # YYYYMMDD[hhmmss] -> YYYYMMDD
    digits = np.where((whole < 1e9) | ((whole >= 1e13) & (whole < 1e14)), day, 0.0)
    year, month, dom = digits // 10_000, digits // 100 % 100, digits % 100
    compact = (year >= 1900) & (year <= 2200) & (month >= 1) & (month <= 12) & (dom >= 1)
    compact &= dom <= 31
    found: np.ndarray = whole[compact]
    return found


def _compact_dates_message(first: float) -> str:
    import pandas as pd

    example = int(first)
    seconds = example / float(_epoch_divisors(np.array([float(example)]))[0])
    # 20261112230000 in ms is the year 2612, past what a time holds: no time at all (a window
    # rejects the record), where the warning said it was read as that year.
    read_as = (
        f"{pd.Timestamp(seconds, unit='s')}"
        if seconds < _MAX_SECONDS
        else f"the year {pd.Timestamp(seconds, unit='s').year}, past the year 2262 that a time can "
        "be read in: no time at all, and a windowed model rejects such records"
    )
    return (
        f"times like {example} look like dates written as digits (YYYYMMDD or YYYYMMDDhhmmss), "
        f"but a number is read as an epoch time ({read_as}): write them as ISO 8601 "
        f"({pd.Timestamp(str(example)[:8]).date().isoformat()}) for windows, gaps and lateness "
        "to be right"
    )


# Excel's serial dates (days since 1899-12-30) of 1970-01-01 and 2099-12-31.
_EXCEL_SERIALS = (25_569.0, 73_050.0)


def _warn_excel_serials(number: np.ndarray) -> None:
    """Once per process: a warning when most numbers read as epoch times are in the range of
    Excel's serial dates (45292.5 is 2024-01-01 12:00 there), which as epoch seconds are a
    few hours of 1970-01-01: a column an Excel user left in the "General" format."""
    _warn_if_most_look_like(
        "excel serials",
        number,
        lambda n: n[(n >= _EXCEL_SERIALS[0]) & (n <= _EXCEL_SERIALS[1])],
        _excel_serials_message,
    )


def _excel_serials_message(example: float) -> str:
    import pandas as pd

    as_excel = pd.Timestamp("1899-12-30") + pd.Timedelta(days=example)
    return (
        f"times like {example:g} are read as epoch seconds, {pd.Timestamp(example, unit='s')}: "
        f"if they are Excel serial dates (days since 1899-12-30, {as_excel.round('s')}), write "
        "them as ISO 8601 (format the column as a date in Excel before saving) for the stored "
        "event times, windows, gaps and lateness to be right"
    )


_WHOLE_FLOAT_TEXT = re.compile(r"(-?\d+)\.0+")


def entity_text(value: object) -> str | None:
    """An entity as the text it is keyed by; None when missing. A whole number written as a
    float (``3.0``: a float in a Kafka message, or a CSV column of numbers with a gap as pandas
    writes it) is keyed without ``.0``, so that pump 3 is ``"3"`` in a CSV file and in a Kafka
    message alike; other text, ``"007"`` included, is kept as it is."""
    import pandas as pd

    if value is None or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, str):
        whole = _WHOLE_FLOAT_TEXT.fullmatch(value)
        if whole:
            return whole.group(1)
    return str(value)


# The longest entity key the results database keeps (``String(200)`` in ``storage.tables``).
ENTITY_MAX_CHARS = 200


def entity_problem(text: str | None) -> str | None:
    """Why an entity key (``entity_text``) cannot be stored, or None: longer than
    ``ENTITY_MAX_CHARS``, or holding a NUL character (PostgreSQL text cannot). Such a record is
    rejected with this reason rather than failing the whole batch's write."""
    if text is None:
        return None
    if len(text) > ENTITY_MAX_CHARS:
        return (
            f"entity {text[:40]!r}... is {len(text)} characters long, over the "
            f"{ENTITY_MAX_CHARS} an entity key may have"
        )
    if "\x00" in text:
        return f"entity {text[:60]!r} holds a NUL character"
    return None


def event_timestamps(
    values: pd.Series | Sequence[object], *, day_first: bool | None = None
) -> pd.Series:
    """Event times as UTC timestamps: the first of ``event_times_in_order``."""
    return event_times_in_order(values, day_first=day_first)[0]


def out_of_range_time(value: object) -> bool:
    """Whether ``value``, which ``event_times_in_order`` read as no time, is an ISO 8601 date
    outside the times it can hold (1677-09-21 to 2262-04-11, a 64-bit nanosecond time), such
    as the '9999-12-31' an export writes for "no end": "not a time, write ISO 8601" would
    say the opposite of what is wrong with it."""
    if not isinstance(value, str):
        return False
    from datetime import datetime

    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return False
    # Python reads forms of ISO 8601 that the time reader does not (a week date, 2026-W01):
    # those are in range, and were said to be dates outside the years 1677 to 2262.
    # 1677 and 2262 hold times from or up to a day in them: a date there not read is past it.
    return not 1677 < parsed.year < 2262


# The years a time can be read in (a 64-bit nanosecond time), as every message says them.
TIME_YEARS = "the years 1677 to 2262 that a time can be read in"
OUT_OF_RANGE_TIME = f"is a date outside {TIME_YEARS}"


def far_epoch_reason(value: object) -> str | None:
    """Why a number (or a number in text), which ``event_seconds`` read as no time, is none: as
    an epoch time (seconds, or ms, us, ns by magnitude) it is past the years a time holds. A
    date written as digits with a time of day (20261112230000) is such a number (milliseconds:
    the year 2612): its reason said "is not a time", beside the warning that it was read as
    the year 2612. None for any other value."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    try:
        if isinstance(value, str):
            text = value.strip()
            number = float(text.replace(",", ".") if _COMMA_EPOCH.fullmatch(text) else text)
        else:
            number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    divisor = float(_epoch_divisors(np.array([number]))[0])
    if abs(number / divisor) < _MAX_SECONDS:
        return None
    day = _compact_day(number)
    if day is not None:
        return (
            "looks like a date written as digits, but a number is read as an epoch time, "
            f"this one past the year 2262 that a time can be read in: write times as ISO 8601 "
            f"({day})"
        )
    return "is an epoch time past the year 2262 that a time can be read in"


def _compact_day(number: float) -> str | None:
    """YYYY-MM-DD when ``number`` is a date written as digits (YYYYMMDD or YYYYMMDDhhmmss)."""
    if number != math.floor(number) or number <= 0:
        return None
    whole = int(number)
    if whole < 10**8 or 10**13 <= whole < 10**14:
        text = str(whole)[:8]
        year, month, dom = int(text[:4]), int(text[4:6]), int(text[6:8])
        if 1900 <= year <= 2200 and 1 <= month <= 12 and 1 <= dom <= 31:
            return f"{year:04d}-{month:02d}-{dom:02d}"
    return None


def event_times_in_order(
    values: pd.Series | Sequence[object], *, day_first: bool | None = None
) -> tuple[pd.Series, bool | None]:
    """Event times as UTC timestamps (a ``datetime64[ns, UTC]`` Series indexed like
    ``values``), NaT where a value is not a time: what the ``event_time`` of a stored score is.
    Numbers (or numbers in text) are seconds since the epoch, or milliseconds when above 1e11
    (past the year 5138 in seconds), microseconds above 1e14, nanoseconds above 1e17; a number
    past the year 2262 (beyond a 64-bit nanosecond time) is not a time; other text is ISO 8601
    (naive = UTC) or another layout pandas reads, numeric dates in the order ``day_first`` gives
    (``_time_text``). Used alike for CSV rows and Kafka messages.

    Beside the times, the order numeric dates were read in: ``day_first`` when given, else the
    one these values' numeric dates decided (None when they hold none), for a caller that
    keeps it for the rest of a run (a batch job's chunks, a stream's batches)."""
    import pandas as pd

    raw = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if not pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        raw = _comma_decimals(raw)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    if pd.api.types.is_bool_dtype(raw):
        return out, day_first
    if pd.api.types.is_numeric_dtype(raw):
        numeric = raw.astype("float64")
        text_rows = pd.Series(False, index=raw.index)
    else:
        # as bool: mapped over an empty column of text, map keeps its text dtype, and '&'
        # with it is deprecated in pandas 3 (a warning; an error to come).
        flags = raw.map(lambda v: isinstance(v, bool)).astype(bool)
        present = raw.notna() & ~flags
        numeric = pd.to_numeric(raw.where(present), errors="coerce")
        text_rows = present & numeric.isna()
    is_num = numeric.notna() & np.isfinite(numeric)
    if is_num.any():
        number = numeric[is_num]
        # score --db stores these times: a date written as digits or an Excel serial date
        # was stored as a time in 1970 without a word (the windows' reader warned).
        _warn_compact_dates(number.to_numpy(dtype=np.float64))
        _warn_excel_serials(number.to_numpy(dtype=np.float64))
        divisors = _epoch_divisors(number.to_numpy(dtype=np.float64))
        fits = np.abs(number.to_numpy(dtype=np.float64) / divisors) < _MAX_SECONDS
        rows = number.index
        units: tuple[tuple[Literal["s", "ms", "us", "ns"], float], ...] = (
            ("s", 1.0),
            ("ms", 1e3),
            ("us", 1e6),
            ("ns", 1e9),
        )
        for unit, divisor in units:
            pick = fits & (divisors == divisor)
            if pick.any():
                out[rows[pick]] = pd.to_datetime(
                    number[pick], unit=unit, utc=True, errors="coerce"
                ).dt.as_unit("ns")
    order = day_first
    if text_rows.any():
        out[text_rows], order = _time_text(raw[text_rows].astype(str), day_first=day_first)
    return out, order


def _time_text(text: pd.Series, *, day_first: bool | None = None) -> tuple[pd.Series, bool | None]:
    """Times written as text, UTC (naive = UTC); NaT where the text is not a time. ISO 8601
    first (fast), then the other layouts pandas reads ("2026-11-01 10:00:00+02:00", RFC 2822,
    "05/11/2026 10:00"...) for what that missed, numeric dates day first when ``day_first``,
    month first when False (a date that cannot be read in that order, 13/11/2026 month first,
    is not a time: read the other way it would be out of order with the others), and when None
    in one order for these values (``numeric_date_order``). With the times, that order (None
    when no numeric date was read and none was given)."""
    import pandas as pd

    parsed = _in_nanoseconds(pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601"))
    missed = parsed.isna()
    order = day_first
    if missed.any():
        rest = text[missed]
        if order is None:
            order = numeric_date_order(rest)  # ISO 8601 holds no numeric date: only these
        parsed[missed] = _in_nanoseconds(
            pd.to_datetime(
                rest,
                utc=True,
                errors="coerce",
                format="mixed",
                dayfirst=_day_first(rest) if order is None else order,
            )
        )
        if day_first is not None:
            wrong = contradicts_date_order(rest, day_first)
            if wrong.any():
                parsed = parsed.mask(parsed.index.isin(rest.index[wrong]))
    return parsed, order


def _in_nanoseconds(parsed: pd.Series) -> pd.Series:
    """Parsed times in nanoseconds, as every event time is kept; NaT where a time does not fit
    (before 1677 or after 2262), as for an epoch number past them. pandas gives each parse the
    unit its text needs: seconds for '2026-11-02 10:00:00', microseconds for '...,123'. Mixed,
    the second parse could not be put into the first (a TypeError: the job died on an export
    of '05/11/2026 10:00:00.5' or Python logging's '2026-11-02 10:00:00,123'); a year 3000 was
    read as 1830 (seconds that overflowed nanoseconds) or killed the job with OutOfBounds."""
    import pandas as pd

    low = pd.Timestamp.min.tz_localize("UTC")
    high = pd.Timestamp.max.tz_localize("UTC")
    fits = parsed.isna() | ((parsed >= low) & (parsed <= high))
    return parsed.where(fits).dt.as_unit("ns")


def contradicts_date_order(text: pd.Series, day_first: bool) -> np.ndarray:
    """Which of ``text`` are numeric dates that cannot be read in the order ``day_first``
    gives: a month above 12 (13/11/2026 read month first, 11/13/2026 read day first)."""
    import pandas as pd

    parts = text.astype(str).str.extract(_NUMERIC_DATE)
    month = pd.to_numeric(parts[2] if day_first else parts[0], errors="coerce")
    return (month > 12).fillna(False).to_numpy(dtype=bool)


# A date of numbers with the year last: 05/11/2026, 5.11.26, 05-11-2026 10:00.
_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})([./-])(\d{1,2})\2\d{2,4}(?:\D|$)")
_warned_ambiguous_dates = False


def numeric_date_order(values: Iterable[object]) -> bool | None:
    """The order ``_day_first`` reads the numeric dates among ``values`` in (True: day first),
    or None when there are none (ISO 8601 text, epoch numbers). A model decides it once, on
    its training data's times, so that every chunk of an export and every Kafka batch reads
    05/11/2026 alike: decided batch by batch, a batch holding only days up to 12 was read
    month first and the next one, holding 13/11/2026, day first."""
    import pandas as pd

    text = pd.Series([v for v in values if isinstance(v, str)], dtype=object)
    if not len(text) or not text.str.extract(_NUMERIC_DATE)[0].notna().any():
        return None
    return _day_first(text)


def _day_first(text: pd.Series) -> bool:
    """Whether the numeric dates among ``text`` put the day first. Read one by one, 20/11/2026
    came out day first and 05/11/2026 month first: one file's times out of order. So one order
    for all: day first when a value can only be read so (a first number above 12), month first
    when a second number is above 12; otherwise day first for dotted dates (05.11.2026, the
    convention) and month first for the others, as pandas reads them, said once."""
    import pandas as pd

    global _warned_ambiguous_dates
    parts = text.str.extract(_NUMERIC_DATE)
    known = parts[0].notna()
    if not known.any():
        return False
    first = pd.to_numeric(parts[0][known])
    second = pd.to_numeric(parts[2][known])
    if bool((first > 12).any()):
        return True
    if bool((second > 12).any()):
        return False
    if bool((parts[1][known] == ".").all()):
        return True
    if not _warned_ambiguous_dates:
        _warned_ambiguous_dates = True
        logging.getLogger(__name__).warning(
            "times like %r could put the day or the month first and none has a number above "
            "12 to tell: read month first; if they are day first, write times as ISO 8601 "
            "(2026-11-05 10:00) to be sure, or, for a model with a window, set "
            "window.day_first: true in the pipeline it is trained with",
            str(text[known].iloc[0]),
        )
    return False
