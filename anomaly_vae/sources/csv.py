"""Chunked CSV reading with clear errors: memory stays bounded whatever the file size.

Each chunk is a DataFrame indexed by the 0-based data row number (the header is not a row).
Lines with more or fewer fields than the header are not lost, nor padded: they come back as
rejects with their row number and reason, and the row numbers of the lines after them stay
right.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import json
import lzma
import re
import tarfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

from anomaly_vae.errors import InputFileError
from anomaly_vae.features import (
    ALIGNED_BY_SPACES,
    SEPARATOR_CANDIDATES,
    AmbiguousNumber,
    is_number,
    looks_like_data,
    space_table_hint,
)

FIRST_CHUNK_ROWS = 5000
_COMPRESSED = (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")
# What a compressed file starts with, for one whose name does not say it is compressed.
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip", ".csv.gz"),
    (b"PK\x03\x04", "zip", ".csv.zip"),
    (b"BZh", "bzip2", ".csv.bz2"),
    (b"\xfd7zXZ\x00", "xz", ".csv.xz"),
    (b"\x28\xb5\x2f\xfd", "zstd", ".csv.zst"),
)
# Table formats that are not CSV, by their first bytes: said by name, not as "binary data"
# (and an Excel workbook, a zip archive, not as a CSV file to be named .csv.zip).
_OTHER_FORMATS = (
    (b"PAR1", "a Parquet file"),
    (b"ARROW1", "an Arrow (Feather) file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (.xls)"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


def _other_format(head: bytes) -> str | None:
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04") and b"xl/" in head:
        return "an Excel workbook (.xlsx)"
    return None


# What the parser reads as a missing value by default (pandas' list, which it applies to the
# columns other than the key columns).
_NA_WORDS = sorted(STR_NA_VALUES)
_SEP_HINT = re.compile(r"^sep=.?$", re.IGNORECASE)
_BAD_LINE = re.compile(r"[Ss]kipping line (\d+): (.*)")
_UNCLOSED_QUOTE = re.compile(r"EOF inside string starting at row (\d+)")
_FIRST_LINE_TOO_LONG = "Length of header or names does not match length of data"
# Data records read to tell a file's separator from another one.
_SEP_SAMPLE = 50
_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+\s*$")
_ENCODING_HINT = (
    "if it uses another encoding, give it with --encoding (Excel on Windows writes cp1252; "
    "csv.encoding in a pipeline)"
)
_LABELS_ENCODING_HINT = (
    "if it uses another encoding, give it with --encoding (Excel on Windows writes cp1252)"
)


@dataclass
class CsvChunk:
    frame: pd.DataFrame  # indexed by data row number
    rejects: pd.DataFrame  # structural rejects (too many or too few fields): reason, raw; by row


@dataclass
class CsvSource:
    """A CSV file read in chunks. ``label`` names it in messages (defaults to the path)."""

    path: Path
    sep: str = ","
    encoding: str = "utf-8"
    chunk_size: int = 100_000
    decimal: str = "."
    label: str = ""
    # Whether a message may point to --decimal and a pipeline's csv section: the labels file of
    # thresholds preview / tune has neither (only --sep and --encoding), and its errors said
    # "csv.encoding in a pipeline", which a --pipeline given there does not apply to labels.
    pipeline_hints: bool = True
    _handle: IO[bytes] | None = field(default=None, init=False, repr=False)
    _spaced: bool | None = field(default=None, init=False, repr=False)
    _raw_header: list[str] | None = field(default=None, init=False, repr=False)
    _trailing_sep: bool = field(default=False, init=False, repr=False)
    _head: _HeadLines | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.label = self.label or str(self.path)

    @property
    def _encoding_hint(self) -> str:
        return _ENCODING_HINT if self.pipeline_hints else _LABELS_ENCODING_HINT

    @property
    def compressed(self) -> bool:
        return self.path.name.lower().endswith(_COMPRESSED)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def position(self) -> int:
        """Bytes consumed so far (approximate: the parser reads ahead), for progress bars."""
        if self._handle is None or self._handle.closed:
            return 0
        try:
            return self._handle.tell()
        except (OSError, ValueError):
            return 0

    def check(self) -> None:
        """Fail early with one line if the file is missing, empty or not CSV text."""
        if not self.path.exists():
            raise InputFileError(f"{self.label} does not exist")
        if self.path.is_dir():
            raise InputFileError(f"{self.label} is a directory, not a CSV file")
        if not self.path.is_file():
            # A pipe (<(zcat ...), /dev/stdin) reads once; the file is read more than once.
            raise InputFileError(
                f"{self.label} is not a regular file (a pipe?): it is read more than once; "
                "give '-' to read standard input, or save it to a file first (a .gz file is "
                "read as it is)"
            )
        if self.size == 0:
            raise InputFileError(f"{self.label} is empty: expected a header line and data rows")
        self._utf8_if_marked()
        if self.compressed:
            return
        with open(self.path, "rb") as handle:
            head = handle.read(65536)
        bad_at: int | None = None
        try:
            text = head.decode(self.encoding)
        except UnicodeDecodeError as exc:
            text = head[: exc.start].decode(self.encoding, errors="ignore")
            if exc.start < len(head) - 4:  # not just a character cut at the end of the block
                bad_at = exc.start
        except LookupError:
            raise InputFileError(
                f"unknown text encoding {self.encoding!r} for {self.label}"
            ) from None
        # NUL bytes are binary data, unless the encoding decodes them away (UTF-16).
        if bad_at is not None or "\x00" in text:
            kind = _other_format(head)
            if kind is not None:
                raise InputFileError(
                    f"{self.label} is {kind}, not CSV text: anomaly-vae reads CSV files; save "
                    "it as CSV (a header line, then one line per record) and give that file"
                )
            if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InputFileError(
                    f"{self.label} is UTF-16 text, not {self.encoding}: give --encoding utf-16"
                    + (" (csv.encoding: utf-16 in a pipeline)" if self.pipeline_hints else "")
                )
            if (order := _utf16_without_mark(head)) is not None:
                # SQL Server's bcp -w writes UTF-16 with no byte order mark: a NUL after every
                # character, which was "not a CSV text file (it holds binary data)".
                raise InputFileError(
                    f"{self.label} looks like UTF-16 text without a byte order mark, not "
                    f"{self.encoding}: give --encoding {order}"
                    + (f" (csv.encoding: {order} in a pipeline)" if self.pipeline_hints else "")
                )
            for magic, kind, suffix in _COMPRESSED_MAGIC:
                if head.startswith(magic):
                    raise InputFileError(
                        f"{self.label} is {kind}-compressed, not CSV text: name it with "
                        f"{suffix} at the end (e.g. export{suffix}), which is read as it is"
                    )
            if b"\x00" in head:
                raise InputFileError(f"{self.label} is not a CSV text file (it holds binary data)")
            raise InputFileError(
                f"{self.label} is not {self.encoding} text (bad byte at offset {bad_at}): "
                f"is it a CSV file? {self._encoding_hint}"
            )
        if not head.strip():
            raise InputFileError(f"{self.label} is empty: expected a header line and data rows")

    def _utf8_if_marked(self) -> None:
        """A file that starts with UTF-8's byte order mark (Excel's "CSV UTF-8") is UTF-8,
        whatever encoding was given: read as cp1252 (a model trained on older exports keeps
        it), the mark became part of the first column's name and accented text mojibake."""
        try:
            if codecs.lookup(self.encoding).name in ("utf-8", "utf-8-sig"):
                return  # the parser drops the mark itself
        except LookupError:
            return  # said by the checks that follow
        try:
            with _text_opener(self.path)(self.path, "rt", encoding="latin-1", newline="") as text:
                head = text.read(3)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, ValueError, ImportError):
            return  # said when the file is read
        if head == codecs.BOM_UTF8.decode("latin-1"):
            self.encoding = "utf-8-sig"

    def header(self) -> list[str]:
        """The column names, read without loading data."""
        self.check()
        self.spaced()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = self._read(nrows=1)
        assert isinstance(frame, pd.DataFrame)
        self._check_first_line(caught, len(frame.columns))
        # pandas renames a repeated name to NAME.1: which of the two is meant cannot be known.
        names = [name.strip() for name in self._raw_header or []]
        seen: dict[str, int] = {}
        for position, name in enumerate(names, start=1):
            if name and name in seen:
                if looks_like_data(names):
                    raise InputFileError(
                        f"{self.label}: the first line looks like data, not column names "
                        f"({', '.join(repr(n) for n in names[:5])}, ...): give the file a "
                        "header line naming its columns"
                    )
                raise InputFileError(
                    f"{self.label}: column {name!r} appears twice in the header (columns "
                    f"{seen[name]} and {position}): rename or remove one"
                )
            seen.setdefault(name, position)
        return [str(c) for c in frame.columns]

    def chunks(
        self, *, usecols: list[str] | None = None, text_columns: Iterable[str] = ()
    ) -> Iterator[CsvChunk]:
        """Yield chunks in file order; rows keep their data row numbers as the index.

        ``text_columns`` (ids, entities, timestamps: copied or used as keys, never features) are
        read as the text the file holds, not as whatever type each chunk's values suggest: an
        id ``007`` stays ``007``, and an entity is the same key in every chunk; only an empty
        cell is missing there (an id ``NA`` or ``null``, a pump named ``None``, stays what it
        is: the other columns read such words as missing values)."""
        self.check()
        self.spaced()
        text = set(text_columns)
        header = self.header() if text else []
        self._head = None  # the checks are done: their sampled lines are not kept while reading
        dtype = {name: str for name in header if name in text} if text else None
        na_values: dict[str, list[str]] | None = None
        if dtype:
            na_values = {name: [""] if name in dtype else _NA_WORDS for name in header}
        next_row = 0
        raw_lines: _LineFinder | None = None  # the text of lines with too many fields
        short_lines: _LineFinder | None = None  # ... and of those with too few
        names = self._raw_header or []
        width = len(names)
        # Fields a line needs: the header's, less empty names at its end (a header written
        # with a trailing separator, "a,b,c,", over lines without one).
        required = width
        while required > 1 and not names[required - 1].strip():
            required -= 1
        with open(self.path, "rb") as handle, contextlib.ExitStack() as stack:
            stack.callback(lambda: raw_lines.close() if raw_lines else None)
            stack.callback(lambda: short_lines.close() if short_lines else None)
            self._handle = handle
            reader = self._read(
                handle=handle,
                chunksize=self.chunk_size,
                usecols=usecols,
                dtype=dtype,
                **({"na_values": na_values, "keep_default_na": False} if na_values else {}),
            )
            assert not isinstance(reader, pd.DataFrame)
            # A small first chunk: what follows it (scoring, writing) starts sooner.
            first: int | None = min(self.chunk_size, FIRST_CHUNK_ROWS)
            previous: pd.DataFrame | None = None
            ended = False
            while not ended:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    try:
                        frame = reader.get_chunk(first) if first else next(reader)
                        first = None
                    except StopIteration:
                        # The parser may skip lines with too many fields in this last call
                        # (the line after a chunk's last row): they are still rejects.
                        ended = True
                        frame = (
                            previous.iloc[:0]
                            if previous is not None
                            else pd.DataFrame(columns=self.header())
                        )
                    except pd.errors.ParserError as exc:
                        raise self._malformed(exc) from None
                    except UnicodeDecodeError as exc:
                        raise InputFileError(
                            f"{self.label} is not {self.encoding} text ({exc.reason} at byte "
                            f"{exc.start} of a block, at data row {next_row} or after): "
                            f"{self._encoding_hint}"
                        ) from None
                    except (ValueError, OSError, EOFError) as exc:
                        raise InputFileError(
                            f"{self.label} cannot be read: {_first_line(exc)}"
                        ) from None
                self._check_first_line(caught, len(frame.columns))
                bad_lines, messages = _bad_lines(caught)
                if ended and not bad_lines:
                    break
                previous = frame
                # The parser pads a line with fewer fields than the header with blanks, which
                # would be scored as missing values: such a line can only be one whose last
                # field is blank, and those are counted on the raw text.
                last = frame[frame.columns[-1]] if len(frame.columns) == width else None
                padded = last is not None and bool(last.isna().any())
                if bad_lines and raw_lines is None:
                    raw_lines = _LineFinder(
                        self.path, self.encoding, self.sep, skip_space=self.spaced()
                    )
                if padded and short_lines is None:
                    # A second reader: this one goes by data row, the first by line number.
                    short_lines = _LineFinder(
                        self.path, self.encoding, self.sep, skip_space=self.spaced()
                    )
                found = (
                    raw_lines.lines(bad_lines)
                    if raw_lines
                    else [(number - 2, None, None) for number in bad_lines]
                )
                bad_rows = [row for row, _, _ in found]
                rows = _row_numbers(next_row, len(frame), bad_rows)
                frame.index = pd.Index(rows, name="row")
                raws = [raw for _, _, raw in found]
                # The line where the record starts in the file, as an editor numbers it (the
                # parser's "line N" counts records: a quoted value or header name holding a
                # line break put every later line number off).
                reasons = [
                    f"line {line or number}: {message}" + _empty_extra_hint(raw, width)
                    for number, (_, line, raw), message in zip(
                        bad_lines, found, messages, strict=True
                    )
                ]
                if padded and short_lines is not None and last is not None:
                    blank_last = frame.index[last.isna().to_numpy()].tolist()
                    short = short_lines.short_rows(blank_last, required)
                    if short:
                        frame = frame.drop(index=[row for row, *_ in short])
                        for row, line_no, count, raw in short:
                            bad_rows.append(row)
                            reasons.append(
                                f"line {line_no}: expected {required} fields, saw {count} (a "
                                "line cut short, or a value with a line break and no quotes?)"
                            )
                            raws.append(raw)
                if repeated := _repeated_header_rows(frame):
                    # Exports joined one after another ('cat a.csv b.csv'): the second file's
                    # header is a line of text where numbers belong; said as what it is, not
                    # as 'not a number' in every column, and the columns it turned to text
                    # are numbers again, as in a file without it.
                    frame = _numbers_again(frame.drop(index=repeated), skip=text)
                    bad_rows += repeated
                    reasons += [REPEATED_HEADER] * len(repeated)
                    raws += [json.dumps(names, ensure_ascii=False)] * len(repeated)
                rejects = pd.DataFrame(
                    {"reason": reasons, "raw": raws},
                    index=pd.Index(bad_rows, name="row"),
                    dtype=object,
                ).sort_index()
                if self.decimal != ".":
                    _parse_decimal_marks(frame, self.decimal, skip=text)
                next_row = (int(rows[-1]) + 1) if len(rows) else next_row + len(bad_rows)
                if len(bad_rows) and len(rows):
                    next_row = max(next_row, int(max(bad_rows)) + 1)
                yield CsvChunk(frame=frame, rejects=rejects)
        self._handle = None

    def _check_first_line(self, caught: list[warnings.WarningMessage], columns: int) -> None:
        """The parser fits every line to the first data line's fields when that one is
        longer than the header (index_col False keeps its extra fields from becoming the index,
        which shifted every column of the file): lines as long are then cut short, not
        rejected. When the extra fields are empty, the data lines end with a separator the
        header lacks ("1,2,3,"): cutting them is right. Otherwise the file is refused, naming
        the line to fix."""
        if self._trailing_sep or not any(_FIRST_LINE_TOO_LONG in str(m.message) for m in caught):
            return
        first = self._read(nrows=1, header=None, skiprows=1, dtype=str, keep_default_na=False)
        extra = [str(v) for v in first.iloc[0].tolist()[columns:]] if len(first) else []
        if extra and not "".join(extra).strip():
            self._trailing_sep = True
            return
        names = self._raw_header or []
        for sep, shown in SEPARATOR_CANDIDATES:
            if len(names) == 1 and sep != self.sep and sep in names[0]:
                # A ';' export with decimal commas read with ',': its one-column header is
                # followed by lines of many fields. Said as the separator it is.
                raise InputFileError(
                    f"{self.label}: only one column found in the header "
                    f"({names[0][:60]!r}); it looks '{shown}'-separated: try --sep '{shown}'"
                    + (
                        " (and --decimal ',' for numbers written 1,5)"
                        if sep == ";" and self.pipeline_hints
                        else ""
                    )
                )
        if len(names) == 1 and " " in names[0] and (table := self.space_table()):
            raise InputFileError(
                f"{self.label}: only one column found in the header ({names[0][:60]!r}); "
                + space_table_hint(table, "the lines look")
            )
        if below := self._header_below():
            raise InputFileError(below)
        raise InputFileError(
            f"{self.label}: the first data line has more fields than the header ({columns} "
            "columns), so the lines cannot be matched to the columns: fix or remove that "
            "line (a longer line further down is only rejected)"
        )

    def sha256(self) -> str:
        """The SHA-256 of the data: of the file's bytes, decompressed when the file is
        compressed or an archive (what the parser reads), so that an export and its ``.gz``
        give the same record keys."""
        digest = hashlib.sha256()
        if self.compressed:
            opener = _text_opener(self.path)
            try:
                with opener(self.path, "rt", encoding="latin-1", newline="") as text:
                    handle = text.buffer
                    for block in iter(lambda: handle.read(1 << 22), b""):
                        digest.update(block)
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError) as exc:
                raise InputFileError(f"{self.label} cannot be read: {_first_line(exc)}") from None
            return digest.hexdigest()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()

    def spaced(self) -> bool:
        """Whether the header has spaces after its separators (``a, b, c``, as some tools
        export): then spaces after every separator are skipped, so that the columns are named
        ``b`` and ``c`` and the values read ``P1``, not `` P1``. Read once, from the header."""
        if self._spaced is None:
            self._spaced = False
            names = self._header_line()
            line = self.sep.join(names).strip().lstrip("\ufeff")
            if _SEP_HINT.match(line):
                # Excel's separator hint ("sep=;"), written by some tools before the header:
                # read as the header, it made the error "the first data line has more fields".
                raise InputFileError(
                    f"{self.label}: the first line is {line!r}, a separator hint for Excel, not "
                    f"a header: remove that line (give the separator with --sep "
                    f"'{line[4:] or self.sep}'"
                    + (", csv.sep in a pipeline)" if self.pipeline_hints else ")")
                )
            if line.startswith(("{", "[")) and (kind := self._json_kind()):
                # JSON lines read as CSV: '{"temp":19.7' a column, '"region":"east"}' another,
                # and a model was trained on them.
                lines = ", lines=True" if "lines" in kind else ""
                raise InputFileError(
                    f"{self.label} is {kind}, not CSV text: anomaly-vae reads CSV files (a "
                    "header line, then one line per record); convert it, e.g. with pandas: "
                    f"pd.read_json(FILE{lines}).to_csv(OUT, index=False)"
                )
            self._check_separator(names)
            self._spaced = self.sep != " " and any(n[:1] in (" ", "\t") for n in names[1:])
            # The header's names as the data will be read: past the spaces, when skipped.
            self._raw_header = self._header_line() if self._spaced else names
        return self._spaced

    def _sample(self, sep: str) -> list[int]:
        """The field counts of the header and of up to ``_SEP_SAMPLE`` data records after it
        (blank lines skipped), the file split at ``sep`` (quotes honoured)."""
        return [len(fields) for _, fields in self._records(sep)]

    def _head_lines(self) -> _HeadLines:
        """The first lines of the file as text, read once for every check that samples them
        (the separator, decimal commas, a header below a title, JSON, a space-aligned table):
        each read them from the file again, up to five times."""
        if self._head is None or self._head.encoding != self.encoding:
            self._head = _HeadLines(self.path, self.encoding)
        return self._head

    def _records(self, sep: str) -> list[tuple[int, list[str]]]:
        """(line it starts on, fields) of the first record and of up to ``_SEP_SAMPLE``
        records after it, blank lines skipped, the file split at ``sep``."""
        out: list[tuple[int, list[str]]] = []
        csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
        reader = csv.reader(iter(self._head_lines()), delimiter=sep)
        try:
            while len(out) <= _SEP_SAMPLE:
                start = reader.line_num + 1
                fields = next(reader, None)
                if fields is None:
                    break
                if len(fields) <= 1 and not "".join(fields).strip(" \t"):
                    continue
                out.append((start, fields))
        except (csv.Error, *_HEAD_ERRORS):
            pass
        return out

    def _first_lines(self, count: int) -> list[str]:
        """Up to ``count`` non-blank lines from the start of the file, as text."""
        out: list[str] = []
        try:
            for line in self._head_lines():
                if line.strip():
                    out.append(line.rstrip("\r\n").lstrip("\ufeff"))
                    if len(out) >= count:
                        break
        except _HEAD_ERRORS:
            return out
        return out

    def _json_kind(self) -> str | None:
        """'JSON lines' or 'a JSON document' when the file is one, else None."""
        lines = self._first_lines(2)
        if not lines:
            return None
        first = lines[0].strip()
        if first in ("{", "[") or (first.startswith("[") and not first.endswith("]")):
            return "a JSON document"
        try:
            parsed = json.loads(first)
        except ValueError:
            return None
        if isinstance(parsed, dict):
            return "JSON lines (one JSON object a line)"
        return "a JSON document" if isinstance(parsed, list) else None

    def space_table(self) -> str | None:
        """For a file read as one column: 'aligned' when its lines are a table of columns
        aligned with runs of spaces (a fixed-width text export), 'spaced' when one space
        separates as many values on every line, else None."""
        lines = self._first_lines(_SEP_SAMPLE + 1)
        counts = {len(line.split()) for line in lines}
        if len(lines) < 2 or len(counts) != 1 or counts.pop() < 2:
            return None
        if any(ALIGNED_BY_SPACES.search(line) for line in lines):
            return "aligned"
        return (
            "spaced" if all(len(line.split(" ")) == len(line.split()) for line in lines) else None
        )

    def _header_below(self) -> str:
        """When the first lines are a title or comments above the header ("Report of
        2026-11-01", "# exported by ..."): the records from some line on all have one count
        of fields, more than the first line's. Then what to do, else ""."""
        if len(self.sep) != 1:
            return ""
        records = self._records(self.sep)
        if len(records) < 3:
            return ""
        first = len(records[0][1])
        for at, (line, fields) in enumerate(records[1:-1], start=1):
            count = len(fields)
            below = [f for _, f in records[at + 1 :]]
            if count <= first or any(len(f) != count for f in below):
                continue
            # A header above data: names, over a column of numbers (not a file whose
            # separator is another, each of its lines a few runs of text).
            numbers = [all(is_number(f[i]) for f in below) for i in range(count)]
            if any(is_number(name) for name in fields) or not any(numbers):
                return ""
            text = self.sep.join(fields)[:60]
            return (
                f"{self.label}: line 1 ({self.sep.join(records[0][1])[:60].lstrip(chr(0xFEFF))!r}) "
                f"has {first} field"
                f"{'s' if first > 1 else ''}, and the lines from line {line} on {count}: "
                f"is the header line {line} ({text!r}), below a title or comment lines? "
                f"remove the lines above it"
            )
        return ""

    def _check_separator(self, names: list[str]) -> None:
        """Refuse a file that another separator splits into the header's columns when this one
        does not: a tab-separated file whose header holds a comma (``Flow, l/s``) read with
        ',' gave every data line one field and the header two, and every row was rejected
        ("expected 2 fields, saw 1"); a ';' export with decimal commas whose header names hold
        commas (``Temperatur, °C;Druck, bar``) was read with ',' without any error, its
        columns cut at the decimal commas (``20`` and ``94;986``) and a model trained on
        them. A one-column header is said by the checks that read it."""
        if len(self.sep) != 1 or len(names) < 2:
            return
        own = self._sample(self.sep)
        if len(own) < 2:
            return
        own_broken = all(n != own[0] for n in own[1:])
        header_line = self.sep.join(names)
        for candidate, shown in SEPARATOR_CANDIDATES:
            if candidate in (self.sep, self.decimal) or candidate not in header_line:
                continue
            if candidate == "," and not own_broken:
                continue  # decimal commas in a ';' file: the other way round is not told
            records = self._records(candidate)
            counts = [len(fields) for _, fields in records]
            if len(counts) < 2 or counts[0] < 2 or any(n != counts[0] for n in counts[1:]):
                continue
            # Its data lines, split already, read once and said twice below.
            commas = candidate == ";" and _decimal_commas([f for _, f in records[1:]])
            if own_broken:
                why = (
                    f"split at '{self.sep}', no data line has the header's {own[0]} fields; "
                    f"split at '{shown}', every line has {counts[0]}"
                )
            elif commas:
                why = f"split at '{shown}', each line has numbers written with decimal commas"
            else:
                continue
            decimal = (
                " (and --decimal ',' for numbers written 1,5)"
                if commas and self.pipeline_hints
                else ""
            )
            raise InputFileError(
                f"{self.label}: the file looks '{shown}'-separated, not "
                f"'{_shown_sep(self.sep)}'-separated ({why}): try --sep '{shown}'{decimal}"
            )

    def _header_line(self) -> list[str]:
        """The header line's fields as written (no names made up or made unique by pandas)."""
        first = self._read(nrows=1, header=None, dtype=str, keep_default_na=False)
        return [str(v) for v in first.iloc[0].tolist()] if len(first) else []

    def _malformed(self, exc: pd.errors.ParserError) -> InputFileError:
        """The parser's error as one line. A quote never closed is found on the file's lines:
        the parser names it as "EOF inside string starting at row N", N its own count of
        records from 0 (the header, blank lines and quoted line breaks counted its way), which
        is neither a data row nor a line a user can go to."""
        text = _first_line(exc)
        match = _UNCLOSED_QUOTE.search(text)
        if match is None:
            return InputFileError(f"{self.label}: malformed CSV: {text}")
        record = int(match.group(1)) + 1  # 1-based, as _LineFinder counts them
        finder = _LineFinder(self.path, self.encoding, self.sep, skip_space=bool(self._spaced))
        try:
            ((row, line, _),) = finder.lines([record])
        finally:
            finder.close()
        if record == 1:
            where = "in the header (line 1)"
        elif line is None:
            where = f"in data row {row}"
        else:
            where = f"on line {line} (data row {row})"
        return InputFileError(
            f'{self.label}: a quote (") opened {where} is never closed, so the rest of the '
            'file reads as one value: close it, or write a quote inside a value as two ("")'
        )

    def _read(self, handle: IO[bytes] | None = None, **kwargs: Any) -> Any:
        source: Any = handle if handle is not None else self.path
        options: dict[str, Any] = {
            "sep": self.sep,
            "encoding": self.encoding,
            "decimal": self.decimal,
            "on_bad_lines": "warn",
            # Never the first column as an index: pandas does that to a whole file when its
            # first data line has one more field than the header, every column shifted by one.
            "index_col": False,
            "skipinitialspace": bool(self._spaced),
        }
        if handle is not None and self.compressed:
            source = self.path  # let pandas open it with the right decompressor
        try:
            return pd.read_csv(source, **options, **kwargs)
        except pd.errors.EmptyDataError:
            raise InputFileError(
                f"{self.label} is empty: expected a header line and data rows"
            ) from None
        except pd.errors.ParserError as exc:
            raise self._malformed(exc) from None
        except UnicodeDecodeError:
            raise InputFileError(
                f"{self.label} is not {self.encoding} text: is it a CSV file? {self._encoding_hint}"
            ) from None
        except ValueError as exc:
            raise InputFileError(f"{self.label} cannot be read: {_first_line(exc)}") from None
        except (OSError, EOFError) as exc:
            raise InputFileError(f"{self.label} cannot be read: {_first_line(exc)}") from None


def compressed_suffix(head: bytes) -> str | None:
    """The file name ending (".csv.gz"...) of compressed data that starts with ``head``."""
    for magic, _, suffix in _COMPRESSED_MAGIC:
        if head.startswith(magic):
            return suffix
    return None


_MAX_FIELD = 2**31 - 1


def _text_opener(path: Path) -> Any:
    """What opens ``path`` as text the way pandas reads its data (decompressed, the one file
    of an archive), by its name."""
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return _open_tar_member  # as pandas reads them: the archive's one file
    if name.endswith(".gz"):
        return gzip.open
    if name.endswith(".bz2"):
        return bz2.open
    if name.endswith(".xz"):
        return lzma.open
    if name.endswith(".zip"):
        return _open_zip_member
    if name.endswith(".zst"):
        return _open_zstd
    return open


# What opening or reading a file's text may raise (a file gone, a broken archive or
# compressed stream, zstandard not installed): the sampled lines end there.
_HEAD_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError, ImportError)


class _HeadLines:
    """The first lines of a possibly compressed file as text (``errors="replace"``, line ends
    kept, as ``csv.reader`` reads a file opened with ``newline=""``), read from the file once
    and iterated as often as asked. Lines are read as far as an iteration goes, a block at a
    time: the file is opened for each block (and the lines before it skipped), so no handle is
    left open between iterations. An error opening or reading the file is raised where it
    came, to every iteration that gets that far."""

    # Lines read at a time: the checks sample up to 51 records or non-blank lines, so one
    # block holds them unless blank lines or quoted line breaks abound.
    BLOCK = 128

    def __init__(self, path: Path, encoding: str) -> None:
        self.path = path
        self.encoding = encoding
        self._lines: list[str] = []
        self._end = False
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        at = 0
        while True:
            while at < len(self._lines):
                yield self._lines[at]
                at += 1
            if self._error is not None:
                raise self._error
            if self._end:
                return
            self._read_block()

    def _read_block(self) -> None:
        have = len(self._lines)
        try:
            with _text_opener(self.path)(
                self.path, "rt", encoding=self.encoding, errors="replace", newline=""
            ) as handle:
                for _ in range(have):
                    if not handle.readline():
                        break
                for _ in range(self.BLOCK):
                    line = handle.readline()
                    if not line:
                        self._end = True
                        break
                    self._lines.append(line)
        except _HEAD_ERRORS as exc:
            self._error = exc


class _LineFinder:
    """The data row number, the line it starts on and the fields (as a JSON list) of given
    records of a possibly compressed file (the parser's "line N": the header is record 1 when
    no blank line comes before it), read by Python's csv module on a second handle that only
    moves forward: used for the lines the parser skips (too many fields) or pads (too few), so
    that their values land in the rejects under the row number they have in the file, and the
    reason names the line an editor shows (a record is several lines when a quoted value
    holds a line break).

    The parser counts blank lines in its "line N" but skips them as rows, so the data row is
    the number of non-blank records before the line, less the header."""

    MAX_CHARS = 10_000

    def __init__(self, path: Path, encoding: str, sep: str, *, skip_space: bool = False) -> None:
        opener = _text_opener(path)
        self._handle: IO[str] | None = None
        self._records: Iterator[list[str]] = iter(())
        self._reader: Any = None  # the csv reader: its line_num counts the lines read
        if len(sep) == 1:
            try:
                self._handle = opener(path, "rt", encoding=encoding, errors="replace", newline="")
            except (OSError, zipfile.BadZipFile, tarfile.TarError, ValueError, ImportError):
                self._handle = None
            if self._handle is not None:
                # The csv module refuses a field over 128 KiB (a text blob the parser reads),
                # after which the lines could no longer be followed.
                csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
                self._reader = csv.reader(self._handle, delimiter=sep, skipinitialspace=skip_space)
                self._records = self._reader
        self._at = 0  # records read so far
        self._start = 0  # the line (1-based) the record read last starts on
        self._blank = 0  # blank ones among them (no row of the parser's)
        self._lost = self._handle is None  # cannot be followed: rows from line numbers

    def _advance(self) -> list[str] | None:
        """The next record's fields (None at the end, or when the file cannot be followed);
        counts it, and counts it blank when it is one (spaces or tabs alone: no row)."""
        if self._lost:
            return None
        start = self._reader.line_num + 1 if self._reader is not None else 0
        try:
            fields = next(self._records)
        except (StopIteration, csv.Error):
            self._lost = True
            return None
        self._at += 1
        self._start = start
        if len(fields) <= 1 and not "".join(fields).strip(" \t"):
            self._blank += 1
        return fields

    def _text(self, fields: list[str]) -> str:
        return json.dumps(fields, ensure_ascii=False)[: self.MAX_CHARS]

    def lines(self, numbers: list[int]) -> list[tuple[int, int | None, str | None]]:
        """(data row, line it starts on, fields as JSON text) of records ``numbers`` (1-based,
        increasing, after any asked before); when the file cannot be followed, the row as if
        no line were blank, and no line or text."""
        out: list[tuple[int, int | None, str | None]] = []
        for number in numbers:
            text: str | None = None
            line: int | None = None
            while self._at < number:
                fields = self._advance()
                if fields is None:
                    break
                if self._at == number:
                    text = self._text(fields)
                    line = self._start
            out.append((number - 2 - self._blank, line, text))
        return out

    def short_rows(self, rows: list[int], required: int) -> list[tuple[int, int, int, str]]:
        """(data row, line number, fields, fields as JSON text) of those of the data rows
        ``rows`` (increasing, after any asked before) that have fewer than ``required``
        fields; none when the file cannot be followed."""
        out: list[tuple[int, int, int, str]] = []
        for row in rows:
            while True:
                blank_before = self._blank
                fields = self._advance()
                if fields is None:
                    return out
                if self._blank > blank_before:
                    continue
                at_row = self._at - 2 - self._blank
                if at_row == row:
                    if len(fields) < required:
                        out.append((row, self._start, len(fields), self._text(fields)))
                    break
                if at_row > row:  # not where the parser has it: stop checking
                    self._lost = True
                    return out
        return out

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class _ArchiveText(io.TextIOWrapper):
    """An archive member as text that closes its archive with it."""

    archive: Any = None

    def close(self) -> None:
        super().close()
        if self.archive is not None:
            self.archive.close()


def _open_tar_member(path: Path, mode: str, **text: Any) -> IO[str]:
    """The one file of a tar archive (compressed or not) as text, as pandas reads it."""
    archive = tarfile.open(path, "r:*")  # noqa: SIM115  closed with the text handle
    files = [member for member in archive.getmembers() if member.isfile()]
    member = archive.extractfile(files[0]) if len(files) == 1 else None
    if member is None:
        archive.close()
        raise ValueError(f"{path}: {len(files)} files in the archive")
    wrapper = _ArchiveText(member, **text)
    wrapper.archive = archive
    return wrapper


def _open_zstd(path: Path, mode: str, **text: Any) -> IO[str]:
    import zstandard

    handle: IO[str] = zstandard.open(path, mode, **text)
    return handle


def _open_zip_member(path: Path, mode: str, **text: Any) -> IO[str]:
    """The one file of a zip archive as text (the member pandas reads)."""
    archive = zipfile.ZipFile(path)
    names = archive.namelist()
    if len(names) != 1:
        archive.close()
        raise ValueError(f"{path}: {len(names)} files in the archive")
    member = archive.open(names[0])
    archive.close()  # the member keeps the file open until it is closed itself
    return io.TextIOWrapper(member, **text)


def _parse_decimal_marks(frame: pd.DataFrame, decimal: str, *, skip: set[str]) -> None:
    """Numbers written with ``decimal`` in columns the parser left as text, in place.

    The parser reads ``1,5`` as 1.5 only when every value of the column in the chunk is a
    number: one stray value (``n/a``) leaves the whole column as text, and then every row of
    the chunk would be rejected for its decimal comma. Here the numbers of such a column are
    read as the parser reads them, and only the stray values stay text (and are rejected), so
    that a row's fate does not depend on the chunk it falls in. ``skip``: columns read as text
    on purpose (ids, entities, timestamps).

    A value that reads as a number with '.' and 3 digits after it alone (``122.456``, not
    ``0.456`` nor ``1.5``) is ambiguous where ',' is the decimal mark: '.' is usually the
    thousands separator there (122456), yet pandas would read 122.456. Its text is kept,
    marked as an ``AmbiguousNumber``, which a numeric feature column rejects naming the
    value and what to write instead (a column not read as a number, ignored or categorical,
    keeps it as text). Other values with a point (``1.5``, ``1234.5``, ``0.456``) and
    exponents (``1e3``) can be read one way only, and are."""
    pattern = _decimal_number_pattern(decimal)
    ambiguous = _AMBIGUOUS_POINT if decimal == "," else None
    for name in frame.columns:
        column = frame[name]
        if name in skip or not (
            pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)
        ):
            continue
        hit = column.str.match(pattern, na=False).to_numpy(dtype=bool)
        unsure = (
            column.str.match(ambiguous, na=False).to_numpy(dtype=bool)
            if ambiguous is not None
            else np.zeros(len(column), dtype=bool)
        )
        if hit.any() or unsure.any():
            values = column.to_numpy(dtype=object).copy()
            values[hit] = [float(v.strip().replace(decimal, ".")) for v in values[hit]]
            values[unsure] = [AmbiguousNumber(v) for v in values[unsure]]
            frame[name] = pd.Series(values, index=frame.index, dtype=object)


# With ',' as the decimal mark: one '.' with exactly 3 digits after it, a first group of 1 to
# 3 digits not starting with 0: 122.456, -1.000 (thousands, or a decimal point?).
_AMBIGUOUS_POINT = re.compile(r"^\s*[-+]?[1-9]\d{0,2}\.\d{3}\s*$")


def _decimal_number_pattern(decimal: str) -> re.Pattern[str]:
    mark = re.escape(decimal)
    return re.compile(rf"^\s*[-+]?(?:\d+{mark}?\d*|{mark}\d+)(?:[eE][-+]?\d+)?\s*$")


def _empty_extra_hint(raw: str | None, width: int) -> str:
    """For a line with more fields than the header whose extra fields are all empty: the
    likely cause (a separator at the end of that line), which the reason then says."""
    try:
        fields = json.loads(raw) if raw else None
    except ValueError:  # cut at MAX_CHARS
        return ""
    if not isinstance(fields, list) or len(fields) <= width:
        return ""
    if "".join(str(f) for f in fields[width:]).strip():
        return ""
    return " (the extra fields are empty: a separator at the end of the line? remove it)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _bad_lines(caught: list[warnings.WarningMessage]) -> tuple[list[int], list[str]]:
    """The parser's numbers of the lines it skipped (records: the header's is 1), with what
    it said of each."""
    lines: list[int] = []
    messages: list[str] = []
    for item in caught:
        for line in str(item.message).splitlines():
            match = _BAD_LINE.search(line)
            if match:
                lines.append(int(match.group(1)))
                messages.append(match.group(2).strip())
    return lines, messages


REPEATED_HEADER = (
    "the header line again, not a record (files joined one after another, each with its "
    "header?): left out"
)


def _repeated_header_rows(frame: pd.DataFrame) -> list[Any]:
    """The rows of ``frame`` that are the header line again: every field its column's name
    (a blank where the header's name is blank). Only a text column can hold its own name, so
    a chunk whose first column the parser read as numbers has none (one comparison a chunk)."""
    if not len(frame) or not len(frame.columns):
        return []
    first = frame.columns[0]
    column = frame[first]
    if not pd.api.types.is_string_dtype(column.dtype):
        return []
    candidates = frame.index[(column == first).to_numpy(dtype=bool, na_value=False)]
    rows = []
    for row in candidates:
        values = frame.loc[row]
        if all(
            (str(value) == str(name))
            or (pd.isna(value) and (not str(name).strip() or str(name).startswith("Unnamed: ")))
            for name, value in values.items()
        ):
            rows.append(row)
    return rows


def _numbers_again(frame: pd.DataFrame, *, skip: set[str]) -> pd.DataFrame:
    """``frame`` with each text column (but those in ``skip``, read as text on purpose) whose
    every value reads as a number turned into numbers, as the parser reads such a column."""
    for name in frame.columns:
        column = frame[name]
        if name in skip or not pd.api.types.is_string_dtype(column.dtype):
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        if not (numbers.isna() & column.notna()).any():
            frame[name] = numbers
    return frame


def _row_numbers(start: int, count: int, bad_rows: list[int]) -> np.ndarray:
    if not bad_rows:
        return np.arange(start, start + count, dtype=np.int64)
    candidates = np.arange(start, start + count + len(bad_rows), dtype=np.int64)
    return np.setdiff1d(candidates, np.asarray(bad_rows, dtype=np.int64))[:count]


def _utf16_without_mark(head: bytes) -> str | None:
    """'utf-16-le' or 'utf-16-be' when ``head`` is such text without a byte order mark: NUL
    bytes in nearly every odd (little-endian ASCII) or even (big-endian) position, none in
    the others; else None."""
    sample = head[:4096]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    for zeros, other, order in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros.count(0) >= 0.9 * len(zeros) and other.count(0) == 0:
            try:
                sample[: len(sample) // 2 * 2].decode(order)
            except UnicodeDecodeError:
                continue
            return order
    return None


def _decimal_commas(data: list[list[str]]) -> bool:
    """Whether every one of these data lines (split at ';') has a number written with a
    decimal comma (``20,94``)."""
    return bool(data) and all(any(_DECIMAL_COMMA.match(f) for f in fields) for fields in data)


def _shown_sep(sep: str) -> str:
    return "\\t" if sep == "\t" else sep
