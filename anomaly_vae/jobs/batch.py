"""Batch scoring of a CSV export: read in chunks, validate, score, hand each chunk to the sinks.

Memory is bounded by the chunk size whatever the file size. Every input row ends up either in the
scores or in the rejects, with its 0-based data row number, never silently dropped.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import logging
import lzma
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from anomaly_vae.config import PipelineConfig
from anomaly_vae.errors import ConfigError
from anomaly_vae.estimator import AnomalyVAE, ScoreBatch, label_to_binary
from anomaly_vae.jobs.memory import reuse_freed_memory
from anomaly_vae.sources.csv import CsvSource
from anomaly_vae.thresholds import most_crossed
from anomaly_vae.training import torch_threads
from anomaly_vae.windows import WindowCounters

logger = logging.getLogger(__name__)
T = TypeVar("T")

OUTPUT_SCORE_COLUMNS = ["score", "recon_error", "percentile", "is_anomaly", "top_features"]


@dataclass
class OutputColumns:
    """What a scores file holds besides the scores: passed-through columns, the label, and how
    many top features to name."""

    passthrough: list[str]
    label: str | None
    top_k: int


@dataclass
class ScoredChunk:
    """One chunk's results: the raw ``batch``, the input ``frame``, all rejects (validation and
    structural) and ``output`` (one row per scored record, CSV-ready), built on first use: in
    the writer thread, not on the scoring path."""

    batch: ScoreBatch
    frame: pd.DataFrame
    rejects: pd.DataFrame
    columns: OutputColumns

    @cached_property
    def output(self) -> pd.DataFrame:
        return _output_frame(self.frame, self.batch, self.columns)


class Sink(Protocol):
    def write(self, chunk: ScoredChunk) -> None: ...

    def close(self) -> None: ...


def _count_top_columns(counts: dict[str, int], batch: ScoreBatch, flagged: np.ndarray) -> None:
    """Adds, per feature column, the flagged records of ``batch`` it lifts most."""
    raw = batch.raw_contributions
    if raw is None or not flagged.any() or raw.shape[0] != len(flagged) or raw.shape[1] == 0:
        return
    lifted = raw[flagged]
    if batch.baseline is not None:
        lifted = lifted - batch.baseline[None, :]
    for column, n in enumerate(np.bincount(lifted.argmax(axis=1), minlength=raw.shape[1])):
        if n:
            name = batch.feature_names[column]
            counts[name] = counts.get(name, 0) + int(n)


@dataclass
class BatchSummary:
    source: str
    rows_read: int = 0
    rows_scored: int = 0
    rows_flagged: int = 0
    rows_rejected: int = 0
    rows_with_gaps: int = 0  # scored with a missing feature value filled in
    seconds: float = 0.0
    threshold: float = float("nan")
    metrics: dict[str, float] | None = None
    metrics_note: str = ""
    outputs: list[str] = field(default_factory=list)
    windows: WindowCounters | None = None  # a windowed model's
    first_reject: str = ""  # "row N: reason" of the first rejected row
    empty_features: list[str] = field(default_factory=list)  # no value in any row read
    label_column: str | None = None
    bad_labels: int = 0  # label values that are no label (left out of the metrics)
    first_bad_label: str = ""  # "row N: 'value'"
    negative_labels: int = 0  # of bad_labels, negative numbers (scikit-learn's -1 = outlier)
    # Per feature column, the flagged records it lifts most (for the "most rows flagged" line).
    top_columns: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        rate = self.rows_read / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"{self.source}: {self.rows_read} rows read, {self.rows_scored} scored, "
            f"{self.rows_flagged} flagged as anomalous (threshold {self.threshold:.4g}), "
            f"{self.rows_rejected} rejected, "
            + (
                f"{self.rows_with_gaps} with a missing value filled in, "
                if self.rows_with_gaps
                else ""
            )
            + f"in {self.seconds:.1f} s ({rate:,.0f} rows/s)"
        ]
        if self.empty_features:
            names = ", ".join(repr(n) for n in self.empty_features[:10])
            more = ", ..." if len(self.empty_features) > 10 else ""
            many = len(self.empty_features) > 1
            out.append(
                f"feature column{'s' if many else ''} {names}{more} had no value in any row: the "
                f"records were scored without {'them' if many else 'it'} (as missing values); is "
                "the export complete?"
            )
        if self.rows_scored == 0 and self.rows_rejected > 0:
            # Every row rejected is most often one cause (a column of another kind than the
            # model's): say it here, not only in the rejects file.
            out.append(
                f"no row could be scored: all {self.rows_rejected} were rejected (the first, "
                f"{self.first_reject}); each row's reason is written with the rejects"
            )
        if most_crossed(self.rows_scored, self.rows_flagged):
            out.append(self._most_flagged_line())
        if self.bad_labels:
            out.append(
                f"label column {self.label_column!r}: {self.bad_labels} value"
                f"{'s are' if self.bad_labels > 1 else ' is'} neither normal (0, false, normal) "
                f"nor anomalous (1, true, anomaly), left out of the metrics (the first, "
                f"{self.first_bad_label})"
                + (
                    "; a -1 / 1 label, as scikit-learn's predict gives, is ambiguous (is 1 "
                    "normal?): write 1 for anomalies and 0 for normal rows"
                    if self.negative_labels
                    else ""
                )
            )
        if self.metrics:
            m = self.metrics
            out.append(
                f"against the labels: ROC-AUC {m['roc_auc']:.3f}, PR-AUC {m['pr_auc']:.3f}, "
                f"precision {m['precision']:.3f}, recall {m['recall']:.3f} at the threshold "
                f"({int(m['n_anomalies'])} labelled anomalies in {int(m['n_labelled'])} rows)"
            )
        elif self.metrics_note:
            out.append(self.metrics_note)
        if self.windows is not None:
            out.append(self._window_line(self.windows))
        out.extend(f"wrote {path}" for path in self.outputs)
        return out

    def _most_flagged_line(self) -> str:
        """Most records over the threshold: anomalies are rare, so the export as a whole is
        unlike the training data. Say so, and which column stands out most often."""
        line = (
            f"{self.rows_flagged / self.rows_scored:.0%} of the scored rows crossed the threshold: "
            "unless most of this export is anomalous, it is as a whole unlike the training data "
            "(another machine or site, other units, a changed process, or training rows that "
            "were not representative)"
        )
        if self.top_columns:
            name, count = max(self.top_columns.items(), key=lambda item: item[1])
            line += (
                f"; the column that stands out most often is {name!r} (first in {count} of the "
                f"{self.rows_flagged} flagged rows): compare its values with the training data's "
                "('anomaly-vae info' shows each column's training median)"
            )
        return line + "; if this export is mostly normal, retrain on data like it"

    @staticmethod
    def _window_line(w: WindowCounters) -> str:
        line = (
            f"windows: {w.warming_up} records warming up (scored, never flagged), {w.late} late "
            f"(scored on their own, never flagged), {w.gaps} "
            f"gap{'' if w.gaps == 1 else 's'} restarted a window"
        )
        if w.late > max(10, 0.01 * w.records):
            line += (
                "; many late records: is the file in time order per entity? (sort it by the "
                "time column, or raise window.lateness_s)"
            )
        return line


class CsvScoreWriter:
    """Writes the score rows of each chunk to one CSV file, header once.

    pyarrow's CSV writer does the formatting in C, several times faster than
    ``DataFrame.to_csv``; float scores are written as float32 (7 significant digits).

    ``sep`` and ``decimal``: the export's own (``score`` writes the scores as it read the
    export: a ``;`` file with decimal commas gets ``;`` and ``0,25``, which the spreadsheet
    that wrote it reads as numbers; written with ``,`` and ``0.25`` it saw one column of text).
    """

    def __init__(
        self, path: Path, *, sep: str = ",", decimal: str = ".", escape_formulas: bool = False
    ) -> None:
        if decimal == sep:
            raise ValueError(f"the decimal mark {decimal!r} cannot also be the separator")
        self.path = Path(path)
        self.sep = sep
        self.decimal = decimal
        self.escape_formulas = escape_formulas
        self._stdout = str(path) == "-"  # standard output: written, flushed, never closed
        # Written under a '.partial' name and renamed when the run succeeds: a run that fails
        # part way leaves no file under the name asked for that looks complete. Only a regular
        # file (or a new one) is replaced so: /dev/null, a named pipe or a symbolic link is
        # written as it is (renaming over /dev/null made it a file).
        direct = self.path.is_symlink() or (self.path.exists() and not self.path.is_file())
        self.partial = self.path if direct else self.path.with_name(self.path.name + ".partial")
        if not direct and (self.partial.is_symlink() or self.partial.is_file()):
            # A link planted under the predictable '.partial' name (symbolic, or a hard link
            # to another file) would have the scores overwrite the file it points to: the
            # name is ours, what is there goes, and the file is created new (O_EXCL).
            self.partial.unlink()
        self._handle = (
            sys.stdout.buffer
            if self._stdout
            else _open_for_write(self.partial, binary=True, like=self.path, new=not direct)
        )
        self._header = True
        self.rows = 0

    def write(self, chunk: ScoredChunk) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        frame = chunk.output
        floats = [c for c in ("score", "recon_error", "percentile", "nll_iw") if c in frame]
        frame = frame.astype(dict.fromkeys(floats, "float32"))
        if self.escape_formulas:
            frame = escape_formulas(frame)
        options = pacsv.WriteOptions(include_header=self._header, delimiter=self.sep)
        try:
            # One thread: a pool per chunk costs more than it saves on a few columns.
            table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
            if self.decimal != ".":
                table = _decimal_marks(table, floats, self.decimal)
            pacsv.write_csv(table, self._handle, write_options=options)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # A column pyarrow cannot type (mixed Python objects): let pandas format it.
            text = frame.to_csv(
                sep=self.sep, decimal=self.decimal, index=False, header=self._header
            )
            self._handle.write(text.encode("utf-8"))
        self._header = False
        self.rows += len(frame)

    def close(self) -> None:
        """Called in a ``finally``: renames the file into place unless an exception is on its
        way out (then the rows written so far stay in the '.partial' file, and a warning says
        so)."""
        failed = sys.exc_info()[0] is not None
        if self._header and not failed:  # nothing scored: still leave a file with the header
            header = self.sep.join(["row", *OUTPUT_SCORE_COLUMNS]) + "\n"
            self._handle.write(header.encode("utf-8"))
        if self._stdout:
            self._handle.flush()
            return
        self._handle.close()
        if self.partial == self.path:  # written in place (a device, a pipe, a link)
            return
        if failed:
            logger.warning(
                "the run failed: the %d score rows written so far are in %s; %s was not written",
                self.rows,
                self.partial,
                self.path,
            )
        else:
            os.replace(self.partial, self.path)


def _decimal_marks(table: Any, names: list[str], decimal: str) -> Any:
    """``table`` with its float columns ``names`` as text with ``decimal`` for the point (the
    same digits pyarrow's CSV writer gives a float: ``0.25`` -> ``0,25``, ``1e-7`` as it is)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in names:
        i = table.schema.get_field_index(name)
        text = pc.replace_substring(pc.cast(table.column(i), pa.string()), ".", decimal)
        table = table.set_column(i, name, text)
    return table


# What a spreadsheet takes a cell starting with for a formula (OWASP's "CSV injection" list).
_FORMULA_START = r"^[=+\-@\t\r]"


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``'`` put before each text value that a spreadsheet would run as a
    formula (it begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return), as OWASP
    advises; a number (``-5``, ``+4917``) is left as it is. Only text columns (copied ids,
    entities, times, labels; top features) are looked at; scores are numbers."""
    out = frame
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            continue
        text = column.astype("string")
        risky = text.str.contains(_FORMULA_START, regex=True, na=False).to_numpy(dtype=bool)
        if not risky.any():
            continue
        numbers = pd.to_numeric(text[risky].str.strip(), errors="coerce").notna().to_numpy()
        hit = np.flatnonzero(risky)[~numbers]
        if not len(hit):
            continue
        values = column.to_numpy(dtype=object).copy()
        values[hit] = ["'" + str(v) for v in values[hit]]
        if out is frame:
            out = frame.copy()
        out[name] = pd.Series(values, index=frame.index, dtype=object)
    return out


class CsvRejectsWriter:
    """Writes rejected rows (row, reason, raw) to a CSV file; created only if there are any."""

    def __init__(self, path: Path, *, sep: str = ",") -> None:
        self.path = Path(path)
        self.sep = sep  # the export's own, as the scores file's
        self._handle: Any = None
        self.count = 0

    def write(self, chunk: ScoredChunk) -> None:
        if chunk.rejects.empty:
            return
        if self._handle is None:
            self._handle = _open_for_write(self.path)
            header = True
        else:
            header = False
        frame = chunk.rejects.rename_axis("row").reset_index()
        frame.to_csv(
            self._handle, sep=self.sep, index=False, header=header, columns=["row", "reason", "raw"]
        )
        self.count += len(frame)

    def close(self) -> None:
        """Called in a ``finally``. A run that rejected no row removes the rejects file an
        earlier run left at this name (a regular file, not a link or a device): beside this
        run's scores it named rows this run scored."""
        if self._handle is not None:
            self._handle.close()
        elif sys.exc_info()[0] is None and not self.path.is_symlink() and self.path.is_file():
            self.path.unlink()


def _open_for_write(
    path: Path, *, binary: bool = False, like: Path | None = None, new: bool = False
) -> Any:
    """``path`` opened for writing, compressed as the name ``like`` (default ``path``) says;
    ``new``: a file created here (O_EXCL: what appeared at that name meanwhile is an error)."""
    check_writable(path if like is None else like)
    # A name ending in .gz, .bz2, .xz or .zst gets what it says (it was plain text under that
    # name); an archive's (.zip, .tar) is refused by check_writable.
    opener: Any = {
        ".gz": functools.partial(gzip.open, compresslevel=6),  # 9, the default, is 3x slower
        ".bz2": bz2.open,
        ".xz": lzma.open,
        ".zst": _zstd_open,
    }.get((path if like is None else like).suffix.lower(), open)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "x" if new else "w"
        if binary:
            return opener(path, mode + "b")
        return opener(path, mode + "t", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _zstd_open(path: Path, mode: str, **text: Any) -> Any:
    import zstandard

    return zstandard.open(path, mode, **text)


def check_writable(path: Path) -> None:
    """Refuse, in one line, an output path that is a directory or lies under a file, or that
    is named as an archive (.zip, .tar): it would be plain text under that name."""
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory (give a file name)")
    if path.name.lower().endswith((".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")):
        raise ConfigError(
            f"cannot write {path}: an archive (.zip, .tar) is not written; name it .csv, or "
            ".csv.gz, .csv.bz2, .csv.xz or .csv.zst to have it compressed"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write {path}: {parent} is a file, not a directory")
            return


def default_rejects_path(out: Path) -> Path:
    name = out.name
    for suffix in (".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".csv"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".rejects.csv")
    return out.with_name(name + ".rejects.csv")


def score_csv(
    model: AnomalyVAE,
    source: CsvSource,
    *,
    sinks: list[Sink],
    passthrough: list[str] | None = None,
    label_column: str | None = None,
    threshold: float | None = None,
    progress: bool = False,
) -> BatchSummary:
    """Score every row of ``source`` and hand each chunk's results to ``sinks``.

    Sets the process's glibc allocator to reuse freed buffers (``jobs.memory``).
    """
    started = time.perf_counter()
    reuse_freed_memory()
    header = source.header()
    model.check_columns(header, source=source.label)
    passthrough = [c for c in (passthrough or []) if c in header]
    label = label_column if label_column and label_column in header else None
    columns = OutputColumns(passthrough, label, model.config_.scoring.top_features)
    for name in dict.fromkeys([*passthrough, *([label] if label else [])]):
        if name in SCORE_COLUMNS:
            logger.warning(
                "input column %r has the name of a score column: copied as %r",
                name,
                f"{name}_input",
            )
    limit = model.threshold_ if threshold is None else float(threshold)
    summary = BatchSummary(source=source.label, threshold=limit, label_column=label)
    scores_seen: list[np.ndarray] = []
    labels_seen: list[np.ndarray] = []
    flags_seen: list[np.ndarray] = []  # is_anomaly as written (a window's late: never)
    bar = tqdm(
        total=None if source.compressed else source.size,
        unit="B",
        unit_scale=True,
        desc="scoring",
        disable=not progress,
        leave=False,
    )
    writer = _SinkWorker(sinks)
    windows = model.new_window_state()  # a windowed model: carried from chunk to chunk
    try:
        with torch_threads(scoring_threads(model.config_.scoring.num_threads)):
            # Three stages overlap: parsing (a reader thread), scoring (here; torch releases the
            # GIL) and writing (a writer thread). Each queue holds two chunks: memory stays bounded.
            features = set(model.schema_.names)
            feature_names = list(model.schema_.names)
            seen_values = np.zeros(len(feature_names), dtype=np.int64)
            # Every column that is not a feature (nor the label, read as labels are) is read
            # as the text the file holds: besides the key columns, ignored and unknown ones,
            # which only a rejected row's raw record shows, and shows as written (an ignored
            # code 007 went to the dead letters as 7, and 1e400 as "inf").
            keys = key_columns(model.config_, passthrough)
            others = [c for c in header if c != label and c not in keys]
            text = [c for c in dict.fromkeys([*keys, *others]) if c not in features]
            chunks = source.chunks(text_columns=text)
            for chunk in _in_background(chunks, depth=2):
                frame = chunk.frame
                batch = model.score_batch(
                    frame, threshold=threshold, source=source.label, windows=windows
                )
                rejects = (
                    pd.concat([chunk.rejects, batch.rejects])
                    if len(chunk.rejects)
                    else batch.rejects
                )
                rejects = rejects.sort_index()
                if len(rejects) and not summary.first_reject:
                    summary.first_reject = f"row {rejects.index[0]}: {rejects['reason'].iloc[0]}"
                scored = ScoredChunk(batch, frame, rejects, columns)
                writer.put(scored)
                summary.rows_read += len(frame) + len(chunk.rejects)
                if not seen_values.all():
                    seen_values += frame[feature_names].notna().sum().to_numpy()
                summary.rows_scored += len(batch.scores)
                flagged = batch.scores["is_anomaly"].to_numpy(dtype=bool)
                summary.rows_flagged += int(flagged.sum())
                _count_top_columns(summary.top_columns, batch, flagged)
                summary.rows_rejected += len(rejects)
                summary.rows_with_gaps += batch.gaps
                if label is not None:
                    # Labels only evaluate: a value that is no label is left out of the
                    # metrics and named in the summary, not an error that stops the job with
                    # part of its output written.
                    given = frame.loc[batch.scores.index, label]
                    labels = label_to_binary(given, name=label, strict=False)
                    bad = (given.notna() & labels.isna()).to_numpy()
                    if bad.any():
                        if not summary.bad_labels:
                            first = given[bad]
                            value = first.iloc[0]
                            if isinstance(value, np.generic):  # -1, not np.int64(-1)
                                value = value.item()
                            summary.first_bad_label = f"row {first.index[0]}: {value!r}"
                        summary.bad_labels += int(bad.sum())
                        numbers = pd.to_numeric(given[bad], errors="coerce")
                        summary.negative_labels += int((numbers < 0).sum())
                    scores_seen.append(batch.scores["score"].to_numpy())
                    labels_seen.append(labels.to_numpy(dtype="float64", na_value=np.nan))
                    flags_seen.append(flagged)
                bar.update(max(0, source.position() - bar.n) if not source.compressed else 0)
            writer.finish()
            if summary.rows_read:
                summary.empty_features = [
                    n for n, count in zip(feature_names, seen_values, strict=True) if count == 0
                ]
    finally:
        bar.close()
        writer.abort()
        for sink in sinks:
            sink.close()
    summary.seconds = time.perf_counter() - started
    if windows is not None:
        summary.windows = windows.counters
    if label is not None:
        summary.metrics, summary.metrics_note = label_metrics(
            np.concatenate(scores_seen) if scores_seen else np.empty(0),
            np.concatenate(labels_seen) if labels_seen else np.empty(0),
            np.concatenate(flags_seen) if flags_seen else np.empty(0, dtype=bool),
        )
    return summary


def key_columns(cfg: PipelineConfig, passthrough: Iterable[str] = ()) -> list[str]:
    """The columns read as text from a CSV file: those copied to the output and the pipeline's
    ids, entity and timestamp (and the window's), never a feature. Read as the file writes
    them, an id ``007`` is not copied as ``7``, and an entity is one key in every chunk (a chunk
    where it looks numeric made it ``7`` there and ``007`` elsewhere: two windows)."""
    named = [*passthrough, *cfg.columns.passthrough()]
    if cfg.window is not None:
        named += [name for name in (cfg.window.entity, cfg.window.time) if name]
    features = {*(cfg.columns.features or []), *cfg.columns.numeric, *cfg.columns.categorical}
    return [name for name in dict.fromkeys(named) if name not in features]


def scoring_threads(configured: int | None) -> int:
    """Torch threads for a batch job: as configured, else every core but the one that parses
    and writes (two torch threads beside a busy parser run slower than one)."""
    if configured:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


_DONE = object()


@dataclass
class _Failure:
    exc: BaseException


def _in_background(items: Iterator[T], *, depth: int) -> Iterator[T]:
    """Iterate ``items`` in a thread, ``depth`` items ahead; errors surface in the caller."""
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(_Failure(exc))

    thread = threading.Thread(target=produce, name="csv-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                queue.get_nowait()
            except Empty:
                thread.join(timeout=0.1)


class _SinkWorker:
    """Hands scored chunks to the sinks in a writer thread, in order, two chunks at most ahead."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks
        self.queue: Queue[Any] = Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sink-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if self.error is not None:
                continue  # drain after a failure
            try:
                for sink in self.sinks:
                    sink.write(item)
            except BaseException as exc:
                self.error = exc

    def put(self, chunk: ScoredChunk) -> None:
        self._raise()
        self.queue.put(chunk)

    def finish(self) -> None:
        self.queue.put(_DONE)
        self.thread.join()
        self._raise()

    def abort(self) -> None:
        if self.thread.is_alive():
            self.queue.put(_DONE)
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


# What the scores file adds to the copied input columns; an input column of one of these
# names is copied as NAME_input rather than overwritten.
SCORE_COLUMNS = frozenset(
    {
        "row",
        "score",
        "recon_error",
        "percentile",
        "is_anomaly",
        "top_features",
        "window_status",
        "nll_iw",
    }
)


def _output_frame(frame: pd.DataFrame, batch: ScoreBatch, columns: OutputColumns) -> pd.DataFrame:
    scores = batch.scores
    label = columns.label
    data: dict[str, Any] = {"row": scores.index.to_numpy()}
    copied = [*columns.passthrough]
    if label is not None and label not in columns.passthrough:
        copied.append(label)
    for name in copied:
        out_name = f"{name}_input" if name in SCORE_COLUMNS else name
        data[out_name] = frame.loc[scores.index, name].to_numpy()
    data["score"] = scores["score"].to_numpy()
    data["recon_error"] = scores["recon_error"].to_numpy()
    data["percentile"] = scores["percentile"].to_numpy()
    data["is_anomaly"] = scores["is_anomaly"].to_numpy()
    data["top_features"] = batch.top_features_text(columns.top_k, arrow=True)
    if "window_status" in scores:
        data["window_status"] = scores["window_status"].to_numpy()
    if "nll_iw" in scores:
        data["nll_iw"] = scores["nll_iw"].to_numpy()
    return pd.DataFrame(data)


def label_metrics(
    scores: np.ndarray, labels: np.ndarray, flags: np.ndarray
) -> tuple[dict[str, float] | None, str]:
    """ROC-AUC, PR-AUC (of ``scores``), precision and recall of ``flags`` (is_anomaly as
    written: the threshold crossed, and for a windowed model a full window; a warming-up or
    late record above the threshold is not flagged, and was counted as one); (None, why) when
    undefined."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    known = ~np.isnan(labels)
    y = labels[known].astype(np.int64)
    s = scores[known]
    if len(scores) == 0:
        return None, "no row was scored: no detection metrics"
    if len(y) == 0:
        # Not "has no values": its values may all be ones read as no label ('maybe', 0.62),
        # which the line before this one counts.
        return (
            None,
            "the label column has no value read as normal or anomalous: no detection metrics",
        )
    if y.min() == y.max():
        kind = "anomalies" if y[0] == 1 else "normal rows"
        return None, f"the label column holds only {kind}: ROC-AUC and PR-AUC need both classes"
    flagged = flags.astype(bool)[known]
    tp = int(np.sum(flagged & (y == 1)))
    precision = tp / int(flagged.sum()) if flagged.any() else 0.0
    recall = tp / int(np.sum(y == 1))
    return (
        {
            "roc_auc": float(roc_auc_score(y, s)),
            "pr_auc": float(average_precision_score(y, s)),
            "precision": float(precision),
            "recall": float(recall),
            "n_labelled": float(len(y)),
            "n_anomalies": float(np.sum(y == 1)),
        },
        "",
    )
