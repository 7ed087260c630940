"""Feature schema and preprocessing: pure functions of DataFrames, no files, no network.

``FeatureSchema`` says which columns are features and of which kind; it is inferred once, at
training time, and saved with the model. ``FeatureSchema.validate`` splits incoming records into
rows that can be scored and rejected rows with a reason each. ``Preprocessor`` turns valid rows
into the float32 matrix the network reads:

* numeric columns are centred on the median and scaled by the inter-quartile range (robust to
  outliers in the training data), floored at a third of a winsorised standard deviation; a
  missing value is set to the median and left out of the likelihood (``observed`` is 0 there),
  and, when the column had missing values in training, shown to the network through a two-class
  missing-indicator feature (otherwise ``scoring.Scorer.impute`` fills the gap from the other
  columns before a record is scored);
* categorical columns are one-hot encoded with an ``<unknown>`` bucket in slot 0 for values never
  seen in training (or too rare to keep); a missing value is the category ``<missing>`` when
  training had it, otherwise an all-zero block that ``scoring.Scorer.impute`` fills.

The encoded layout is ``[numeric | categorical blocks | missing-indicator blocks]``;
``FeatureLayout`` records it, so the likelihood and the per-column attribution can find each block.
"""

from __future__ import annotations

import json
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomaly_vae.config import ColumnsConfig
from anomaly_vae.errors import ConfigError, SchemaError

logger = logging.getLogger(__name__)

# Values outside the learned categories that transform met, per column, while a
# ``collect_unseen_values`` block runs in this context (thread, task).
_UNSEEN_VALUES: ContextVar[dict[str, dict[str, None]] | None] = ContextVar(
    "unseen_values", default=None
)


@contextmanager
def collect_unseen_values() -> Iterator[dict[str, dict[str, None]]]:
    """Every value outside a column's learned categories that ``Preprocessor.transform`` meets
    in this block, per column, in order of appearance: the log's warning names each value once
    per process (five per column), so a caller answering for its own records (the API) names
    them itself."""
    found: dict[str, dict[str, None]] = {}
    token = _UNSEEN_VALUES.set(found)
    try:
        yield found
    finally:
        _UNSEEN_VALUES.reset(token)


ColumnKind = Literal["numeric", "categorical"]
UNKNOWN = "<unknown>"
MISSING = "<missing>"
# A standardised value beyond this is as anomalous as it gets; clipping keeps float32 finite.
CLIP = 1e4
# A numeric column whose values differ by less than this share of their size has no spread
# (rounding noise on 0.3, or the float64 neighbours of 1e18): it is scaled as a constant one.
RELATIVE_SPREAD_FLOOR = 1e-9
# Rows sampled to infer column kinds: enough to be sure, cheap on wide files.
INFER_SAMPLE_ROWS = 20_000
NUMERIC_PARSE_SHARE = 0.95
# A text column with this many values or more, each different, is an identifier, not categories.
MIN_ID_ROWS = 20
# Text that means "no value" in a numeric column.
_NA_WORDS = ["nan", "na", "n/a", "null", "none"]


class AmbiguousNumber(str):
    """A cell of a decimal-comma file (``--decimal ','``) written ``122.456``: where ',' is
    the decimal mark, '.' is usually the thousands separator (122456), but it may be a
    decimal point (122.456). The CSV reader leaves the text as it is (an ignored or
    categorical column reads it as before) and marks it with this type; a numeric feature
    column rejects it (``_to_float``) rather than read either number in silence. ``mark``:
    the decimal mark the file was read with."""

    mark: str = ","


@dataclass(frozen=True)
class FeatureColumn:
    name: str
    kind: ColumnKind


@dataclass
class FeatureSchema:
    """The feature columns a model reads, in order, with their kinds."""

    columns: list[FeatureColumn]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "categorical"]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [{"name": c.name, "kind": c.kind} for c in self.columns]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        cols = []
        for item in data["columns"]:
            if item["kind"] not in ("numeric", "categorical"):
                raise ValueError(f"unknown column kind {item['kind']!r}")
            cols.append(FeatureColumn(name=str(item["name"]), kind=item["kind"]))
        names = [c.name for c in cols]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"feature column {twice!r} is listed more than once")
        return cls(columns=cols)

    # ------------------------------------------------------------------ inference
    @classmethod
    def infer(cls, frame: pd.DataFrame, columns: ColumnsConfig) -> FeatureSchema:
        """Infer feature columns and kinds from training data.

        Numeric dtypes are numeric; text columns whose values almost all parse as numbers are
        numeric (the rest are rejected rows); other text columns with at most
        ``columns.max_categories`` distinct values are categorical. Columns that look like row
        identifiers or timestamps are left out with a warning naming them.
        """
        present = [str(c) for c in frame.columns]
        excluded = set(columns.non_features())
        for name in [*columns.numeric, *columns.categorical, *(columns.features or [])]:
            if name not in present:
                raise SchemaError(
                    f"column {name!r} named in the pipeline is not in the training data "
                    f"(columns there: {_preview(present)})"
                )
            if name in excluded:
                raise ConfigError(
                    f"column {name!r} is both a feature and an ignored/id/label column: pick one"
                )
        _warn_absent([*columns.ignore, *columns.id], present)
        _warn_absent_keys(columns, present)
        candidates = (
            list(columns.features)
            if columns.features is not None
            else [c for c in present if c not in excluded]
        )
        sample = frame.head(INFER_SAMPLE_ROWS)
        cols: list[FeatureColumn] = []
        for name in candidates:
            if name in columns.numeric:
                cols.append(FeatureColumn(name, "numeric"))
                continue
            if name in columns.categorical:
                cols.append(FeatureColumn(name, "categorical"))
                continue
            explicit = columns.features is not None
            column = sample[name]
            if len(frame) > len(column) and not column.notna().any():
                # Values only past the sampled rows (a sensor added later): judge those, not
                # call the column "empty in the training data".
                column = frame[name].dropna().head(INFER_SAMPLE_ROWS)
            if not explicit and _looks_like_label(name, column):
                logger.warning(
                    "column %r looks like a label (its name, values 0/1) and is not used as a "
                    "feature: a label as a feature scores the labelled records by their label; "
                    "give --label-column %s (columns.label) to leave its anomalies out of "
                    "training and to evaluate against it, or list it under columns.features to "
                    "use it as a feature",
                    name,
                    name,
                )
                continue
            kind = _infer_kind(column, name, columns.max_categories, explicit=explicit)
            if kind is not None:
                cols.append(FeatureColumn(name, kind))
        _warn_nameless([c.name for c in cols])
        if not cols:
            judged = candidates  # none forced numeric or categorical: those are features
            raise SchemaError(
                "no feature columns left after leaving out ids, labels and ignored columns "
                f"(columns in the data: {_preview(present)})"
                + (
                    # Left out as ids, times, empty or of too many values: the warnings above
                    # said why, the error only blamed ids, labels and ignored columns.
                    f"; {_preview(judged, limit=5)} were judged no features (the warnings "
                    "above say why): list those to use under columns.features, or "
                    "columns.categorical for text of many values"
                    if judged and columns.features is None
                    else ""
                )
            )
        return cls(columns=cols)

    # ----------------------------------------------------------------- validation
    def check_columns(self, present: Iterable[Any], *, source: str = "input") -> None:
        """Raise SchemaError naming every feature column missing from ``present``."""
        have = {str(c) for c in present}
        missing = [n for n in self.names if n not in have]
        if not missing:
            return
        header = [str(c) for c in present]
        hint = _separator_hint(header, self.names)
        if not hint and len(missing) == len(self.names):
            hint = _no_header_hint(header)
        if not hint:
            hint = _encoding_hint(missing, header)
        if not hint:
            hint = _near_names_hint(missing, header, self.names)
        if not hint:
            hint = _nameless_hint(missing, header)
        plural = "s" if len(missing) > 1 else ""
        raise SchemaError(
            f"{source}: feature column{plural} {_preview(missing, limit=20)} "
            f"missing (the model reads {len(self.names)} features; columns found: "
            f"{_preview(header)}){hint}"
        )

    def validate(
        self, frame: pd.DataFrame, *, source: str = "input"
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split ``frame`` into (valid feature rows, rejected rows).

        Valid rows come back as a frame of the feature columns, numeric ones as float64 (NaN for
        missing) and categorical ones as object strings (None for missing), with the input's
        index. Rejected rows come back as a frame indexed like the input with columns
        ``reason`` and ``raw`` (the row's values as JSON). Extra columns are ignored.
        """
        self.check_columns(frame.columns, source=source)
        if (fast := self._validate_numbers(frame)) is not None:
            return fast, _empty_rejects()
        n = len(frame)
        problems: list[tuple[np.ndarray, np.ndarray]] = []  # (bad row mask, reason per row)
        out: dict[str, Any] = {}
        for col in self.columns:
            series = frame[col.name]
            if col.kind == "numeric":
                values, bad, reasons = _to_float(series, col.name)
                out[col.name] = values
                if bad is not None:
                    problems.append((bad, reasons))
            else:
                out[col.name] = _to_category_text(series)
                if (structured := _structured_values(series, col.name)) is not None:
                    problems.append(structured)
        bad_any = np.zeros(n, dtype=bool)
        for bad, _ in problems:
            bad_any |= bad
        if self.columns:
            # A record without a single feature value has nothing to score: filled in from the
            # training data it would be scored as an invented record (and often flagged).
            observed = bad_any.copy()  # a row already rejected keeps its own reason
            for values in out.values():
                observed |= pd.notna(values)
            if not observed.all():
                reason = (
                    f"no feature has a value (all {len(self.columns)} are empty or null): "
                    "nothing to score; check that the record carries the feature columns"
                )
                problems.append((~observed, np.full(n, reason, dtype=object)))
                bad_any |= ~observed
        clean = pd.DataFrame(out, index=frame.index)
        if not bad_any.any():
            return clean, _empty_rejects()
        reason_text = np.full(n, "", dtype=object)
        for bad, reasons in problems:
            idx = np.flatnonzero(bad)
            for i in idx:
                reason_text[i] = f"{reason_text[i]}; {reasons[i]}" if reason_text[i] else reasons[i]
        rejected_rows = frame.iloc[np.flatnonzero(bad_any)]
        rejects = pd.DataFrame(
            {
                "reason": reason_text[bad_any],
                "raw": [row_json(r) for r in rejected_rows.to_dict(orient="records")],
            },
            index=rejected_rows.index,
        )
        return clean.iloc[np.flatnonzero(~bad_any)], rejects

    def _validate_numbers(self, frame: pd.DataFrame) -> pd.DataFrame | None:
        """``validate``'s result in one 2-D pass when every feature is numeric, held as plain
        numpy floats or integers (a parsed CSV's columns), and no row is to be rejected (no
        infinity, no row without any value); else None, and ``validate`` goes column by
        column, with a reason for each rejected row. One float64 block, as ``transform`` reads
        it."""
        names = self.names
        if not names or any(c.kind != "numeric" for c in self.columns):
            return None
        if not frame.columns.is_unique:
            return None
        dtypes = frame.dtypes[names]
        if not all(isinstance(d, np.dtype) and d.kind in "fiu" for d in dtypes):
            return None
        values = frame[names].to_numpy(dtype=np.float64, copy=True)
        if len(values) and not (np.isfinite(values.min()) and np.isfinite(values.max())):
            # NaN (min and max carry it) or an infinity somewhere: look closer.
            missing = np.isnan(values)
            if np.isinf(values[~missing]).any() or missing.all(axis=1).any():
                return None
        return pd.DataFrame(values, index=frame.index, columns=names, copy=False)


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({"reason": pd.Series([], dtype=object), "raw": pd.Series([], dtype=object)})


def row_json(row: dict[Any, Any]) -> str:
    """A rejected row's values as strict JSON: a missing value is null, infinity its text."""
    clean: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            clean[str(key)] = None if math.isnan(value) else str(value)
        elif isinstance(value, (np.integer, np.floating, np.bool_)):
            clean[str(key)] = value.item()
        elif value is None or isinstance(value, (str, int, float, bool)):
            clean[str(key)] = value
        elif value is pd.NA or value is pd.NaT:
            clean[str(key)] = None
        else:
            clean[str(key)] = str(value)
    return json.dumps(clean, ensure_ascii=False, allow_nan=False)


def _to_float(series: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Parse a column as float64; return (values, bad-row mask or None, reason per row)."""
    if pd.api.types.is_datetime64_any_dtype(series) or isinstance(series.dtype, pd.PeriodDtype):
        # Read as nanoseconds (1.7e18) a time in a numeric column scored absurdly high and was
        # flagged, explained by that column alone: reject it, as a time held as text is.
        given = series.notna().to_numpy()
        reasons = np.full(len(series), "", dtype=object)
        for i in np.flatnonzero(given):
            reasons[i] = (
                f"column {name!r}: {_short(str(series.iloc[i]))} is a time, not a number (a "
                "numeric column in training: was the column parsed as dates?)"
            )
        return np.full(len(series), np.nan), given, reasons
    if pd.api.types.is_bool_dtype(series):
        values = series.astype("float64").to_numpy()
    elif getattr(series.dtype, "kind", "") == "m":  # timedelta64, or pyarrow's duration
        # Durations in seconds: as numbers they were counts of the dtype's unit (ns, us, s),
        # so frames of two resolutions disagreed by up to 1e9, and NaT was -9.2e18 (pyarrow's
        # durations were rejected as "not a number").
        values = series.dt.total_seconds().to_numpy(dtype="float64", na_value=np.nan)
    elif pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        parsed = pd.to_numeric(series, errors="coerce")
        if parsed.dtype.kind == "c":
            # One complex value among the objects (1+2j) made pandas parse the column as
            # complex, and every other value it could not read came back as whatever memory
            # held (6.9e-310, 2e-323), scored as a number: parse without the complex values,
            # which are rejected below as no number, as a complex column is refused.
            is_complex = np.fromiter(
                (isinstance(v, (complex, np.complexfloating)) for v in series.tolist()),
                dtype=bool,
                count=len(series),
            )
            parsed = pd.to_numeric(series.mask(is_complex), errors="coerce")
        values = parsed.to_numpy(dtype="float64", na_value=np.nan)
        given = series.notna().to_numpy()
        text = series.astype("string").str.strip()
        given = given & (text.fillna("") != "").to_numpy()
        unparsed = given & np.isnan(values)
        if unparsed.any():
            lowered = text.str.lower().to_numpy(dtype=object, na_value="")
            # True / False are 1 / 0, as when pandas reads the whole column as booleans (one
            # stray value in a chunk leaves them as text).
            for word, number in (("true", 1.0), ("false", 0.0)):
                hit = unparsed & (lowered == word)
                if hit.any():
                    values = values.copy() if not values.flags.writeable else values
                    values[hit] = number
                    unparsed &= ~hit
            # A 'nan' or 'NaN' string is a missing value, not garbage.
            unparsed &= ~np.isin(lowered, _NA_WORDS)
        # Read by pandas as a number, but '.' may be the thousands separator (see
        # AmbiguousNumber): rejected rather than read either way in silence.
        ambiguous = _ambiguous_numbers(series)
        if unparsed.any() or ambiguous.any():
            reasons = np.full(len(series), "", dtype=object)
            raw = series.to_numpy(dtype=object)
            for i in np.flatnonzero(ambiguous):
                reasons[i] = _ambiguous_reason(name, raw[i])
            for i in np.flatnonzero(unparsed):
                reasons[i] = f"column {name!r}: {_short(raw[i])} is not a number"
                if _COMMA_NUMBER_RE.match(str(raw[i])):
                    # Not only a CSV's: a Kafka message or an API record has no --decimal.
                    reasons[i] += (
                        " (a decimal comma? a number is written with a point; a CSV with "
                        "decimal commas is read with --decimal ',')"
                    )
                elif _POINT_GROUPED_RE.match(str(raw[i])):
                    # 1.234,5 or 1.234.567 in a decimal-comma file: thousands separators,
                    # which are not read (a lone 122.456 could be either: see AmbiguousNumber).
                    reasons[i] += (
                        " ('.' as a thousands separator is not read: write the number "
                        "without it, e.g. "
                        f"{_short(str(raw[i]).strip().replace('.', ''))})"
                    )
                elif _COMMA_GROUPED_RE.match(str(raw[i])):
                    # 1,234.5 or 1,234,567, as a spreadsheet's number format writes them.
                    reasons[i] += (
                        " (',' as a thousands separator is not read: write the number "
                        "without it, e.g. "
                        f"{_short(str(raw[i]).strip().replace(',', ''))})"
                    )
                elif grouped := _SPACE_GROUPED_RE.match(str(raw[i])):
                    # 1 234,5 (a space, or a no-break one, as French and other formats
                    # write them) or 1'234.50 (Swiss).
                    mark = grouped.group(1)
                    reasons[i] += (
                        f" ({mark!r} as a thousands separator is not read: write the number "
                        "without it, e.g. "
                        f"{_short(str(raw[i]).strip().replace(mark, ''))})"
                    )
                elif _MINUS_SIGN in str(raw[i]) and _parses_as_number(
                    str(raw[i]).replace(_MINUS_SIGN, "-")
                ):
                    # '−3' (U+2212), as word processors, spreadsheets' typographic formats
                    # and some reports write a negative number: said, not guessed.
                    reasons[i] += (
                        " (its '−' is the Unicode minus sign U+2212, not the hyphen-minus '-' "
                        "a number is written with: write "
                        f"{_short(str(raw[i]).strip().replace(_MINUS_SIGN, '-'))})"
                    )
            inf = np.isinf(values) & ~ambiguous
            for i in np.flatnonzero(inf):
                reasons[i] = f"column {name!r}: {values[i]} is not a finite number"
            return values, unparsed | ambiguous | inf, reasons
    inf = np.isinf(values)
    if inf.any():
        reasons = np.full(len(series), "", dtype=object)
        for i in np.flatnonzero(inf):
            reasons[i] = f"column {name!r}: {values[i]} is not a finite number"
        return values, inf, reasons
    return values, None, np.empty(0, dtype=object)


_MINUS_SIGN = "\u2212"


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (Python's float: the readings pandas takes too)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parses_as_number(text: str) -> bool:
    """Whether ``text`` reads as a number the way a column's values are read (pandas'
    parser), not Python's float: that one also takes '1_000' and digits of other scripts
    ('١٢٣'), which a column still rejects."""
    import pandas as pd

    parsed = pd.to_numeric(pd.Series([text], dtype=object), errors="coerce")
    return bool(parsed.notna().iloc[0])


def _ambiguous_numbers(series: pd.Series) -> np.ndarray:
    """Which values of a column are ``AmbiguousNumber`` cells (only an object column holds
    them: the CSV reader's)."""
    if series.dtype != object:
        return np.zeros(len(series), dtype=bool)
    return np.fromiter(
        (type(v) is AmbiguousNumber for v in series.tolist()), dtype=bool, count=len(series)
    )


def _ambiguous_reason(name: str, value: object) -> str:
    text = str(value).strip()
    sign = text[0] if text[:1] in "+-" else ""
    whole, _, part = text.lstrip("+-").partition(".")
    mark = getattr(value, "mark", ",")
    return (
        f"column {name!r}: {text!r} is ambiguous in a file read with --decimal '{mark}': "
        f"'.' there is usually the thousands separator ({sign}{whole}{part}), but it may be "
        f"a decimal point ({sign}{whole}.{part}); write it without the '.' "
        f"({sign}{whole}{part}) or with the decimal mark ({sign}{whole}{mark}{part})"
    )


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a text's closing quote kept)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." + (text[-1] if text[-1] in "'\"" else "")


def _structured_values(series: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows of a categorical column holding a list or a dict (a JSON array or object from
    a Kafka message or an API client), with the reason, else None. Their text (``"['x']"``,
    ``"{'id': 'north'}"``) was scored as an unknown category: flagged, explained by that
    column, though the producer had only nested the value."""
    # Lists and dicts make pandas infer "mixed": text, numbers and booleans are not scanned.
    if series.dtype != object or not pd.api.types.infer_dtype(series, skipna=True).startswith(
        "mixed"
    ):
        return None
    raw = series.to_numpy(dtype=object)
    hit = np.fromiter((isinstance(v, (list, dict)) for v in raw), dtype=bool, count=len(raw))
    if not hit.any():
        return None
    reasons = np.full(len(raw), "", dtype=object)
    for i in np.flatnonzero(hit):
        kind = "an array" if isinstance(raw[i], list) else "an object"
        reasons[i] = (
            f"column {name!r}: {_short(raw[i])} is {kind}, not a category (text or a number)"
        )
    return hit, reasons


def _to_category_text(series: pd.Series) -> np.ndarray:
    """Categories compare as text: 3, 3.0 and '3' are one category; missing stays None."""
    missing = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(series):
        out = np.where(series.to_numpy(dtype=bool), "true", "false").astype(object)
    elif pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        whole = np.isfinite(values) & (values == np.round(values))
        out = np.empty(len(values), dtype=object)
        out[whole] = values[whole].astype(np.int64).astype(str).astype(object)
        for i in np.flatnonzero(~whole & ~missing):
            out[i] = _category_key(values[i])
    elif (inferred := pd.api.types.infer_dtype(series, skipna=True)) == "empty":
        out = np.full(len(series), None, dtype=object)
    elif inferred == "string":
        # Surrounding blanks are padding, not part of the value ('north ' is 'north'); a value
        # of blanks only is missing. Trimmed once per distinct value (a batch has few): a
        # per-row strip cost a stream scorer 0.16 µs a record and column.
        codes, uniques = pd.factorize(series)  # missing: code -1, the last entry below
        trimmed = [str(v).strip() or None for v in uniques]
        out = np.array([*trimmed, None], dtype=object).take(codes)
        return out  # None where missing or blank
    else:
        raw = series.to_numpy(dtype=object)
        out = np.fromiter((_category_key(v) for v in raw), dtype=object, count=len(raw))
        missing = missing | (out == "")
    out[missing] = None
    return out


# A number written as text, as a CSV cell or a JSON string holds it: 007, 1.50, -3, 2e3.
_PLAIN_NUMBER_RE = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$")


def _number_key(text: str) -> str | None:
    """The category key of a code written as a number (``'007'``, ``'7.0'`` and ``7`` are
    ``'7'``), or None for other text."""
    if not _PLAIN_NUMBER_RE.match(text):
        return None
    value = float(text)
    return _category_key(value) if math.isfinite(value) else None


def _loose_key(text: str) -> str:
    """What a category is matched by when it is not found as it is: a number's key (``'007'``,
    ``'7.0'`` and ``7`` are ``'7'``), other text without the spaces around it and with its
    accented letters in one Unicode form (NFC: ``'Köln'`` with ``ö`` one code point or ``o``
    and a combining accent, as macOS tools may write it, which looked the same and was an
    unknown category, scored as a novelty)."""
    stripped = text.strip()
    number = _number_key(stripped)
    return number if number is not None else unicodedata.normalize("NFC", stripped)


def _match_loosely(codes: np.ndarray, values: np.ndarray, cats: list[str]) -> None:
    """Give values outside ``cats`` the category they are but for how they are written (in
    place): the same number, or the same text but for spaces around it.

    A code column such as 007, 012, A12 is read as text from a file where some value is not a
    number, and as numbers (7, 12) from a file or chunk where all are; a database export pads
    text to its column's width ('Paris   '). One value must be one category either way, not an
    unknown value that scores as anomalous. A value two kept categories both stand for (``'7'``
    and ``'007'``) stays unknown."""
    by_key: dict[str, int] = {}
    for i, cat in enumerate(cats):
        key = _loose_key(cat)
        by_key[key] = -1 if key in by_key else i + 1
    rows = np.flatnonzero(codes == 0)
    distinct, which = np.unique(values[rows].astype(str), return_inverse=True)
    matched = np.zeros(len(distinct), dtype=np.int64)  # 0: still unknown
    for j, value in enumerate(distinct.tolist()):
        matched[j] = max(by_key.get(_loose_key(value), 0), 0)
    codes[rows] = matched[which.reshape(-1)]


def _category_key(value: object) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def _infer_kind(
    series: pd.Series, name: str, max_categories: int, *, explicit: bool
) -> ColumnKind | None:
    non_null = series.dropna()
    if len(non_null) == 0:  # before the dtype checks: an empty CSV column is read as float
        if explicit:
            return "numeric"
        logger.warning("column %r is empty in the training data and is not used", name)
        return None
    if pd.api.types.is_bool_dtype(series):
        return "numeric"
    if pd.api.types.is_numeric_dtype(series):
        if explicit:
            return "numeric"
        since = _epoch_times_range(non_null)
        # Epoch times before row ids (not before ids named so): a time per record, in order,
        # also runs in sequence like a row id, and was named one ("list it under
        # columns.features"), not a time to name as columns.timestamp. Numbers that count by
        # one are row ids, whatever their range.
        if _looks_like_row_id(non_null) and (since is None or _counts_by_one(non_null)):
            logger.warning(
                "column %r looks like a row identifier (unique whole numbers in sequence) and is "
                "not used as a feature; list it under columns.features to use it anyway",
                name,
            )
            return None
        if _looks_like_named_id(name, non_null):
            logger.warning(
                "column %r looks like an identifier (its name, and a different whole number in "
                "each of its %d rows) and is not used as a feature; list it under "
                "columns.features to use it anyway",
                name,
                len(non_null),
            )
            return None
        if since is not None:
            logger.warning(
                "column %r looks like epoch times (numbers in time order, read as %s) and is "
                "not used as a feature; name it as columns.timestamp to keep it in the output, "
                "or list it under columns.features to use it anyway",
                name,
                since,
            )
            return None
        return "numeric"
    # A Period column (pd.period_range, .dt.to_period) is times too: pd.to_numeric read it as
    # its ordinals, a numeric feature that every later period lies outside of.
    if pd.api.types.is_datetime64_any_dtype(series) or isinstance(series.dtype, pd.PeriodDtype):
        if explicit:
            raise SchemaError(f"column {name!r} holds timestamps, which cannot be a feature")
        logger.warning("column %r holds timestamps and is not used as a feature", name)
        return None
    # A pandas category column (astype("category"), pd.cut) says what it is: categories, even
    # when they are numbers (zones 10 / 20 / 30, codes "01", "02"), which were read as one
    # numeric feature, ordered and scaled.
    declared = isinstance(series.dtype, pd.CategoricalDtype)
    text = non_null.astype(str).str.strip()
    given = non_null[~text.str.lower().isin(["", *_NA_WORDS])]
    if len(given) == 0:
        # Only blanks and NA words ('', 'n/a'): as a category it had no value but "missing",
        # and every value a later record has there scored as unknown.
        if explicit:
            return "numeric"
        logger.warning(
            "column %r is empty in the training data (only blank or NA text) and is not used",
            name,
        )
        return None
    parsed = pd.to_numeric(given, errors="coerce")
    if not declared and len(given) and parsed.notna().mean() >= NUMERIC_PARSE_SHARE:
        return "numeric"
    if not explicit and not declared and _looks_like_comma_numbers(given):
        example = str(given[given.astype(str).str.contains(",")].iloc[0])
        logger.warning(
            "column %r holds numbers written with a comma (%r) and is not used as a feature: "
            "if the comma is the decimal mark, read the file with --decimal ',' (csv.decimal "
            "in the pipeline)",
            name,
            example,
        )
        return None
    n_distinct = non_null.astype(str).nunique()
    # Dates written as text are timestamps even when there are few of them (a month of days):
    # as categories, every later date would be an unknown value, scored as anomalous.
    few = n_distinct <= max_categories
    # Whole numbers with thousands separators are times to dateutil ('3,126,000': 1 March of
    # the year 126): such a column was said to look like timestamps.
    if (
        (not few or _looks_like_date_text(non_null))
        and _looks_like_time(non_null)
        and (declared or _formatted_number_example(given) is None)
    ):
        if clock := _clock_time_example(non_null):
            # '00:05:30' alone: a duration or a time of day, which the date parser reads as
            # today at that time. Naming it as columns.timestamp, as said of dates, cannot
            # work (a record's time is a date), and a feature needs a number.
            said = (
                f"column {name!r} holds times of day or durations ({clock!r}), not dates, "
                "which cannot be a feature as they are: export them as numbers (seconds, or "
                "hours such as 5.5) to use them"
            )
            if explicit:
                raise SchemaError(said)
            logger.warning("%s; it is not used as a feature", said)
            return None
        if explicit:
            raise SchemaError(f"column {name!r} holds timestamps, which cannot be a feature")
        logger.warning(
            "column %r looks like timestamps and is not used as a feature; name it as "
            "columns.timestamp to keep it in the output",
            name,
        )
        return None
    if not explicit and few and len(non_null) >= MIN_ID_ROWS and n_distinct == len(non_null):
        # Text ids of a small file (ORD-0001, ORD-0002...): under max_categories, but every value
        # once; as categories, every later record's id is unknown and scores as anomalous.
        logger.warning(
            "column %r has a different value in each of its %d rows, like an identifier, and is "
            "not used as a feature; list it under columns.categorical to use it anyway",
            name,
            n_distinct,
        )
        return None
    if few:
        return "categorical"
    message = (
        f"column {name!r} has {n_distinct} distinct text values (more than "
        f"max_categories={max_categories})"
    )
    if explicit:
        raise SchemaError(f"{message}: raise max_categories or drop it from the features")
    formatted = None if declared else _formatted_number_example(given)
    if formatted is not None:
        # "12,345.67", "12.5%": numbers a thousands separator or a unit keeps as text.
        logger.warning(
            "column %r holds numbers written with thousands separators or a unit (%r), which "
            "are read as text, so it is not used as a feature; export it as plain numbers "
            "(12345.67, 12.5) to use it",
            name,
            formatted,
        )
        return None
    share = float(parsed.notna().mean()) if len(given) else 0.0
    if share >= 0.5 and not declared:
        # Mostly numbers with some text ("offline"): categories are not what it needs.
        example = str(given[parsed.isna()].iloc[0])
        logger.warning(
            "column %r holds numbers but %.0f%% of its values are text such as %r, so it is not "
            "used as a feature; list it under columns.numeric to use it (rows with text there "
            "are then rejected)",
            name,
            100 * (1 - share),
            example,
        )
        return None
    if n_distinct == len(non_null) and not text.str.contains(r"\s").any():
        # Order ids, transaction ids, UUIDs (one word each, unlike free text): "has 5000
        # distinct text values ... list it under columns.categorical to use it" pointed at
        # making an identifier a feature.
        logger.warning(
            "column %r has a different value in each of its %d rows, like an identifier, and "
            "is not used as a feature; name it under columns.id to keep it in the output",
            name,
            n_distinct,
        )
        return None
    logger.warning(
        "%s and is not used as a feature; list it under columns.categorical to use it", message
    )
    return None


# Column names that mean "this record is an anomaly" (compared without case, spaces or dashes).
_LABEL_NAMES = {
    "label",
    "labels",
    "anomaly",
    "anomalous",
    "is_anomaly",
    "is_anomalous",
    "anomaly_label",
    "outlier",
    "is_outlier",
    "ground_truth",
    # The label columns of the common public data sets: Kaggle's credit-card fraud ('Class'),
    # scikit-learn / ADBench arrays written out ('y', 'target'), intrusion and fraud data.
    "class",
    "target",
    "y",
    "fraud",
    "is_fraud",
    "attack",
    "is_attack",
}
_LABEL_VALUES = {"0", "1", "0.0", "1.0", "true", "false", "normal", "anomaly", "anomalous"}


def _looks_like_label(name: str, values: pd.Series) -> bool:
    """A column named like an anomaly label whose values are 0 / 1 (or true / false)."""
    key = re.sub(r"[\s\-]+", "_", name.strip().casefold())
    if key not in _LABEL_NAMES:
        return False
    distinct = values.dropna().unique()
    if not 0 < len(distinct) <= 4:
        return False
    return {str(v).strip().casefold() for v in distinct} <= _LABEL_VALUES


def _counts_by_one(values: pd.Series) -> bool:
    """Whole numbers that go up (or down) by exactly one from row to row: 1001, 1002..."""
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        steps = np.diff(arr)
    return bool(len(steps)) and bool(np.all(steps == 1) or np.all(steps == -1))


def _looks_like_row_id(values: pd.Series) -> bool:
    """Unique whole numbers that run in sequence: increasing (or decreasing) in file order, with
    or without gaps (rows deleted from the source, a sample, labelled anomalies left out of
    training), or a shuffled run with few gaps. Such a column numbers the records: as a feature,
    every later export (ids past the training range) would score as anomalous."""
    if len(values) < 100 or pd.api.types.is_bool_dtype(values):
        return False
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        return False
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 - (-1e308): not an id anyway
        steps = np.diff(arr)
    if np.all(steps > 0) or np.all(steps < 0):
        return True
    distinct = np.unique(arr)
    return len(distinct) == len(arr) and distinct[-1] - distinct[0] + 1 <= 2 * len(arr)


# A name that says identifier: customer_id, txn-ID, order no, CustomerId, invoiceNumber.
_ID_NAME = re.compile(r"(?:^|[\s_.\-#/])(?:id|ids|uuid|guid|key|no|nr|num|number)$")
_ID_NAME_CAMEL = re.compile(r"[a-z0-9](?:Id|ID|Uuid|UUID|Guid|GUID|Key|No|Nr|Num|Number)$")


def _looks_like_named_id(name: str, values: pd.Series) -> bool:
    """Whole numbers, a different one in each row, in a column named like an identifier
    (customer_id, txnId): ids drawn at random are in no sequence, so the row-id rule missed
    them, and as a feature every later customer outside the training range scored as
    anomalous."""
    text = name.strip()
    if not (_ID_NAME.search(text.casefold()) or _ID_NAME_CAMEL.search(text)):
        return False
    if len(values) < MIN_ID_ROWS or pd.api.types.is_bool_dtype(values):
        return False
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        return False
    return len(np.unique(arr)) == len(arr)


# Epoch times from 2000 to 2100, in seconds, milliseconds, microseconds or nanoseconds.
_EPOCH_SECONDS = (946_684_800.0, 4_102_444_800.0)


def _epoch_times_range(values: pd.Series) -> str | None:
    """'2026-11-01 to 2026-11-02 (epoch seconds)' for numbers that run in time order (ties
    allowed: records that share a time) and all lie between 2000 and 2100 as epoch seconds,
    milliseconds, microseconds or nanoseconds; else None. Not unique, such a column is no row
    id, and as a feature every later export lies outside its training range."""
    if len(values) < 100 or pd.api.types.is_bool_dtype(values):
        return None
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    if not np.all((arr >= _EPOCH_SECONDS[0]) & (arr <= _EPOCH_SECONDS[1] * 1e9)):  # NaN too
        return None
    if not np.all(np.diff(arr) >= 0) or arr[0] == arr[-1]:
        return None
    for unit, scale in (("seconds", 1.0), ("ms", 1e3), ("us", 1e6), ("ns", 1e9)):
        low, high = _EPOCH_SECONDS[0] * scale, _EPOCH_SECONDS[1] * scale
        if low <= arr[0] and arr[-1] <= high:
            first, last = (
                pd.Timestamp(float(v) / scale, unit="s").date() for v in (arr[0], arr[-1])
            )
            return f"{first} to {last} in epoch {unit}"
    return None


# A date as text: 2026-11-01, 2026/11/01, 11/1/26, 01.11.2026, with or without a time of day
# (not a version number such as 1.10.12).
_DATE_TEXT = (
    r"^\s*(?:\d{4}([-/.])\d{1,2}\1\d{1,2}|\d{1,2}([-/])\d{1,2}\2\d{2,4}|\d{1,2}\.\d{1,2}\.\d{4})"
    r"(?:[T ]\d.*)?$"
)
# A number written with a decimal (or thousands) comma: 99,5 or -0,25.
_COMMA_NUMBER = r"^\s*[-+]?\d*,\d+\s*$"
_COMMA_NUMBER_RE = re.compile(_COMMA_NUMBER)
# Points as thousands separators, as a decimal-comma export writes them: 1.234,5 or 1.234.567.
_POINT_GROUPED_RE = re.compile(
    r"^\s*[-+]?\d{1,3}(?:\.\d{3})+,\d+\s*$|^\s*[-+]?\d{1,3}(?:\.\d{3}){2,}\s*$"
)
# Commas as thousands separators, as a spreadsheet's number format writes them: 1,234.5 or
# 1,234,567 (a lone 1,234 is _COMMA_NUMBER's: it may be a decimal comma).
_COMMA_GROUPED_RE = re.compile(
    r"^\s*[-+]?\d{1,3}(?:,\d{3})+\.\d+\s*$|^\s*[-+]?\d{1,3}(?:,\d{3}){2,}\s*$"
)
# Spaces (plain, no-break U+00A0 or narrow no-break U+202F) or apostrophes as thousands
# separators: 1 234,5, 1 234 567, 1'234.50.
_SPACE_GROUPED_RE = re.compile(
    r"^\s*[-+]?\d{1,3}([ \u00a0\u202f'])\d{3}(?:\1\d{3})*(?:[.,]\d+)?\s*$"
)


def _looks_like_date_text(values: pd.Series) -> bool:
    head = values.astype(str).head(200)
    return bool(head.str.match(_DATE_TEXT).mean() > 0.9)


def _looks_like_comma_numbers(values: pd.Series) -> bool:
    """Most values are numbers once a comma is read as the decimal mark, and some have one."""
    if len(values) == 0:
        return False
    text = values.astype(str).str.strip()
    with_comma = text.str.match(_COMMA_NUMBER)
    numbers = with_comma | pd.to_numeric(text, errors="coerce").notna()
    return bool(with_comma.any() and numbers.mean() >= NUMERIC_PARSE_SHARE)


# A number with thousands separators, a currency sign or a percent sign: 12,345.67, $1,200,
# 12.5%; or as a decimal-comma export writes them: 1.927,62, 12.345, 1 200,5 €, 12,5 %. The
# spaces may be no-break ones, U+00A0 or the narrow U+202F that French formats write.
# Units a number may be written with ('12.5 kg', '230V', 'USD 12.00'): named, not any word
# ('12 Jan' is a date).
_UNITS = (
    "kg|g|mg|t|lb|lbs|oz|km|m|cm|mm|µm|mi|ft|in|l|L|ml|mL|h|min|s|ms|µs|V|kV|mV|A|mA|W|kW|MW|"
    "Wh|kWh|MWh|Hz|kHz|MHz|GHz|bar|mbar|Pa|hPa|kPa|MPa|psi|°C|°F|°|K|rpm|dB|Nm|N|kN|J|kJ|"
    "m/s|km/h|mph|m³|m3|m²|m2|l/min|L/min|m³/h|m3/h|ppm|ppb|pcs"
)
_CURRENCY_CODES = "USD|EUR|GBP|CHF|JPY|CNY|CAD|AUD|SEK|NOK|DKK|PLN|CZK|INR"
_FORMATTED_NUMBER = re.compile(
    rf"^\s*[-+]?(?:[$€£]|(?:{_CURRENCY_CODES})\s)?\s*(?:"
    r"(?:\d{1,3}(?:[,\u00a0\u202f ']\d{3})+|\d+)(?:\.\d+)?"
    r"|(?:\d{1,3}(?:[.\u00a0\u202f ']\d{3})+|\d+)(?:,\d+)?"
    rf")\s*(?:[%€]|(?:{_UNITS})(?![\w/]))?\s*$",
    re.IGNORECASE,
)


def _formatted_number_example(values: pd.Series) -> str | None:
    """A value with a thousands separator or a unit, when almost all values are numbers read
    that way and some are written so; else None."""
    if len(values) == 0:
        return None
    text = values.astype(str).str.strip()
    fits = text.str.match(_FORMATTED_NUMBER)
    plain = pd.to_numeric(text, errors="coerce").notna()
    written = fits & ~plain
    if not written.any() or fits.mean() < NUMERIC_PARSE_SHARE:
        return None
    return str(text[written].iloc[0])


# A time of day or a duration without a date: 7:05, 00:05:30, 125:00:00.5.
_CLOCK_TIME = re.compile(r"^\s*\d{1,3}:[0-5]\d(?::[0-5]\d(?:[.,]\d+)?)?\s*$")


def _clock_time_example(values: pd.Series) -> str | None:
    """One of ``values`` when they are times of day or durations without a date (all of the
    first 200), else None."""
    head = values.head(200).astype(str)
    if len(head) and bool(head.str.match(_CLOCK_TIME).all()):
        return str(head.iloc[0]).strip()
    return None


def _looks_like_time(values: pd.Series) -> bool:
    head = values.head(200).astype(str)
    try:
        parsed = pd.to_datetime(head, errors="coerce", format="mixed")
    except (ValueError, TypeError):
        return False
    return bool(parsed.notna().mean() > 0.9)


def _warn_absent(names: Iterable[str], present: list[str]) -> None:
    """A column to leave out that is not there is most likely misspelt, and the column meant
    becomes a feature: say so, with the closest name."""
    import difflib

    for name in names:
        if name not in present:
            close = difflib.get_close_matches(name, present, n=1)
            hint = f": did you mean {close[0]!r}?" if close else ""
            logger.warning(
                "column %r is to be left out (columns.ignore / columns.id / --ignore-columns) "
                "but the training data has no such column%s",
                name,
                hint,
            )


def _warn_absent_keys(columns: ColumnsConfig, present: list[str]) -> None:
    """The entity and timestamp columns are not features either: a misspelt one left the
    column meant among the features (pump ids as categories), which only scoring named."""
    import difflib

    for what, name in (("entity", columns.entity), ("timestamp", columns.timestamp)):
        if name and name not in present:
            close = difflib.get_close_matches(name, present, n=1)
            logger.warning(
                "the %s column %r (columns.%s) is not in the training data%s",
                what,
                name,
                what,
                f"; did you mean {close[0]!r}?" if close else "",
            )


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# The separators a header read as one column is tried with, each as a message shows it (a
# tab as '\t'): the CSV source's checks, training's, and the hints of a missing column.
SEPARATOR_CANDIDATES = ((";", ";"), ("\t", "\\t"), ("|", "|"), (",", ","))
# A line of a table whose columns are aligned by runs of spaces (or indented).
ALIGNED_BY_SPACES = re.compile(r"\S {2,}\S|^ +\S")


def space_table_hint(kind: str, subject: str) -> str:
    """What to do with a text table read as one column: ``kind`` 'aligned' (columns aligned
    by runs of spaces) or 'spaced' (one space between values); ``subject`` says what looks
    so ("the lines look", "the header looks")."""
    if kind == "aligned":
        return (
            f"{subject} like a table with its columns aligned by spaces, not CSV: save it as "
            "CSV (values separated by commas, or one space: --sep ' ')"
        )
    return f"{subject} separated by spaces: try --sep ' '"


def _separator_hint(header: list[str], expected: list[str]) -> str:
    if len(header) != 1:
        return ""
    only = header[0]
    for sep, label in SEPARATOR_CANDIDATES:
        if sep in only and any(e in only.split(sep) for e in expected):
            return f"; the header looks '{label}'-separated: try --sep '{label}'"
    if any(e in only.split() for e in expected):
        kind = "aligned" if ALIGNED_BY_SPACES.search(only) else "spaced"
        return "; " + space_table_hint(kind, "the header looks")
    return "; only one column was found: is the separator right (--sep)?"


def name_key(name: str) -> str:
    """A column name as compared for "differs only in spaces or case" hints."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


def _encoding_hint(missing: list[str], header: list[str]) -> str:
    """Missing names that are in ``header`` as UTF-8 bytes read in a one-byte encoding
    ('Total (€)' as 'Total (â‚¬)'): a model trained on a cp1252 export reads every later file
    as cp1252 unless told, and an export saved as UTF-8 lost its non-ASCII columns."""
    wanted = set(missing)
    for name in header:
        for fixed in _utf8_readings(name):
            if fixed in wanted:
                return f"; {fixed!r} is {name!r} there, {_UTF8_MISREAD}"
    return ""


_UTF8_MISREAD = (
    "UTF-8 text read in another encoding: give --encoding utf-8 (csv.encoding in a pipeline)"
)
# The same for a field of a JSON request: JSON is UTF-8, so the client decoded the text in
# another encoding before it sent it (no --encoding reaches that).
_UTF8_MISREAD_FIELD = (
    "UTF-8 text decoded in another encoding before it was sent: send the text as its source "
    "wrote it"
)


def _utf8_readings(text: str) -> list[str]:
    """What ``text`` says if it is UTF-8 bytes decoded as cp1252 or latin-1 ('â‚¬' for '€');
    none when it is not (plain ASCII, or bytes that are no UTF-8)."""
    out: list[str] = []
    for encoding in ("cp1252", "latin-1"):
        try:
            fixed = text.encode(encoding).decode("utf-8")
        except UnicodeError:
            continue
        if fixed != text and fixed not in out:
            out.append(fixed)
    return out


# pandas' name for a column whose header cell is blank: "Unnamed: N", N its 0-based position.
_NAMELESS = re.compile(r"Unnamed: (\d+)")


def _warn_nameless(features: list[str]) -> None:
    """Feature columns with a blank header cell: pandas names them by their position, so an
    export with a column added or moved before one lacks it ("feature column 'Unnamed: 1'
    missing"), which nobody named."""
    nameless = [name for name in features if _NAMELESS.fullmatch(name)]
    if nameless:
        logger.warning(
            "feature column%s %s ha%s no name in the header (a blank cell: pandas names it "
            "after its position), so an export with its columns in another order would lack "
            "%s: give %s a name in the header",
            "s" if len(nameless) > 1 else "",
            _preview(nameless),
            "ve" if len(nameless) > 1 else "s",
            "them" if len(nameless) > 1 else "it",
            "them" if len(nameless) > 1 else "it",
        )


def _nameless_hint(missing: list[str], header: list[str]) -> str:
    """For missing 'Unnamed: N' columns: what the name is, and where the file's nameless
    columns are instead."""
    nameless = [name for name in missing if _NAMELESS.fullmatch(name)]
    if not nameless:
        return ""
    match = _NAMELESS.fullmatch(nameless[0])
    assert match is not None
    here = [name for name in header if _NAMELESS.fullmatch(name)]
    where = (
        f"; this file's column{'s' if len(here) > 1 else ''} with no name: {_preview(here)}"
        if here
        else "; this file has no column without a name"
    )
    return (
        f"; {nameless[0]!r} is column {int(match.group(1)) + 1} of the training file, whose "
        f"header cell was blank (pandas names such a column after its position){where}: keep "
        "the training file's column order, or name the column in both files and retrain"
    )


def _near_names_hint(missing: list[str], header: list[str], features: list[str]) -> str:
    """Missing columns that are in ``header`` but for spaces, case or Unicode form ('x ' and
    'x', 'Temp' and 'temp'), which a message that quotes both hardly shows."""
    present: dict[str, list[str]] = {}
    for name in header:
        if name not in features:  # a feature of its own is not another's misspelling
            present.setdefault(name_key(name), []).append(name)
    found = {
        name: present[key][0]
        for name in missing
        if len(present.get(key := name_key(name), [])) == 1
    }
    forms = {
        name: other
        for name, other in found.items()
        if unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", other)
    }
    if forms:
        # 'Température' and 'Température', one with é, one with e and a combining accent (as
        # macOS tools may write it): "names differ only in spaces or case" quoted two names
        # that look the same.
        name, other = next(iter(forms.items()))
        return (
            f"; {name!r} is there with its accented letters written as other Unicode code "
            f"points ({other!a} in the file, {name!a} in the model: one composed, "
            "one decomposed, NFC / NFD); rename the file's columns as the model has them (save "
            "the file's text in Unicode NFC), or retrain the model on files with these names"
        )
    pairs = [f"{name!r} is {other!r} there" for name, other in found.items()]
    if not pairs:
        return ""
    shown = ", ".join(pairs[:5]) + (", ..." if len(pairs) > 5 else "")
    return (
        f"; {shown}: names differ only in spaces or case; rename the file's columns as the "
        "model has them, or retrain the model on files with these names"
    )


_NEEDS_QUOTES = re.compile(r'[:;"\r\n]')


def feature_name_text(name: str) -> str:
    """A column name as ``top_features`` text writes it (``name:share;name:share``): as it is,
    or, when it holds a ``:``, ``;``, ``"`` or a line break, in double quotes with each ``"``
    doubled (``"temp:in":0.61;flow:0.30``), so that the text splits one way only."""
    if _NEEDS_QUOTES.search(name):
        return '"' + name.replace('"', '""') + '"'
    return name


def looks_like_data(header: Sequence[str]) -> bool:
    """Whether a header line holds values rather than names: half or more of them numbers with
    a fraction, or true / false (whole numbers not counted: 0, 1, 2... are names pandas gives
    columns, and some exports keep them)."""

    def is_value(name: str) -> bool:
        text = name.strip()
        if text.lower() in ("true", "false"):
            return True
        try:
            float(text)
        except ValueError:
            return False
        return not text.lstrip("+-").isdigit()

    return bool(header) and sum(is_value(str(n)) for n in header) * 2 >= len(header)


def _no_header_hint(header: list[str]) -> str:
    if not looks_like_data(header):
        return ""
    return (
        "; the first line looks like data, not column names: the file needs a header line "
        "with the columns the model was trained on (anomaly-vae info --model-dir ... lists them)"
    )


# ====================================================================== preprocessing
def robust_scale(present: np.ndarray) -> float:
    """The inter-quartile range (as a normal standard deviation), floored at a third of the
    standard deviation of the values winsorised at the 1st and 99th percentiles.

    The IQR alone is robust to outliers in the training data but collapses on columns that are
    nearly constant with a spread-out minority (counts, flags, sparse pixels): such a column
    would come out tens of times wider than the others and dominate every score. The floor keeps
    the robustness (winsorising stops a few extreme values from inflating it).
    """
    # Values near the float limit (1e300) overflow the squares and differences: an infinite
    # spread, handled below, not a RuntimeWarning printed in the middle of 'anomaly-vae train'.
    with np.errstate(over="ignore", invalid="ignore"):
        q01, q25, q75, q99 = np.percentile(present, [1, 25, 75, 99])
        iqr_scale = float(q75 - q25) / 1.349
        spread = float(np.std(np.clip(present, q01, q99)))
    scale = max(iqr_scale, spread / 3.0) if math.isfinite(spread) else iqr_scale
    # "No spread" is relative to the values' size: a column of picoamps (1e-13) has a real
    # spread far under any absolute cut-off, while rounding noise on 0.3 is not a spread.
    size = float(np.max(np.abs([q01, q99])))
    floor = RELATIVE_SPREAD_FLOOR * size if math.isfinite(size) and size > 0 else 0.0
    if not math.isfinite(scale) or scale <= floor:
        with np.errstate(over="ignore", invalid="ignore"):
            scale = float(np.std(present))
    if not math.isfinite(scale) or scale <= floor:
        # No spread: one unit, so that any other value stands out. Values that do differ,
        # but only under the floor (1e18 and its float64 neighbours, 128 apart), are scaled
        # by the floor: by 1 their rounding steps were hundreds of standard units, and every
        # normal record scored as far out as an anomaly.
        scale = 1.0 if present.min() == present.max() else max(1.0, floor)
    return scale


@dataclass
class FeatureLayout:
    """Where each block sits in the encoded matrix, and which input column it explains."""

    n_numeric: int
    cat_sizes: list[int]
    block_columns: list[int]  # for each block (numeric first, then categorical): column index
    column_names: list[str]

    @property
    def input_dim(self) -> int:
        return self.n_numeric + sum(self.cat_sizes)

    @property
    def n_blocks(self) -> int:
        return self.n_numeric + len(self.cat_sizes)


@dataclass
class EncodedBatch:
    x: np.ndarray  # float32 [n, input_dim], C-contiguous
    observed: np.ndarray  # float32 [n, n_numeric]: 1 where the numeric value was present


@dataclass
class Preprocessor:
    """Learned scaling and encodings; JSON-serialisable state."""

    schema: FeatureSchema
    center: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    with_indicator: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    # Per categorical column, how many distinct training values beyond max_categories were
    # left to the unknown category (0 or absent: none).
    other_values: dict[str, int] = field(default_factory=dict)
    # Values never seen in training already named in a warning, per column (not saved).
    _warned: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)

    def _warn_unseen(self, name: str, values: np.ndarray) -> None:
        """A warning naming values of ``name`` outside the categories learned in training (each
        value once, up to five per column): they score as the ``<unknown>`` category, which
        usually flags the record, and a different spelling of a known value is the usual
        cause."""
        warned = self._warned.setdefault(name, set())
        if len(warned) >= 5:
            return
        new = [v for v in dict.fromkeys(str(v) for v in values) if v not in warned]
        new = new[: 5 - len(warned)]
        if not new:
            return
        warned.update(new)
        logger.warning("%s", self.unseen_note(name, new))

    def unseen_note(self, name: str, values: Iterable[str], *, noun: str = "column") -> str:
        """The text that names ``values`` of ``name`` outside its learned categories (the first
        five, then how many more): the log's warning (``noun`` "column") and the HTTP API's
        (``noun`` "field") alike. It lists the known values, says when the column had rarer
        training values past ``columns.max_categories`` (which share the unknown category),
        and names a value that is a known one as UTF-8 text read in another encoding."""
        new = list(dict.fromkeys(values))
        shown = new[:5]
        listed = ", ".join(repr(v) for v in shown) + (
            f" and {len(new) - 5} more" if len(new) > 5 else ""
        )
        known = [c for c in self.categories.get(name, []) if c != MISSING]
        known_text = ", ".join(repr(c) for c in known[:10]) + (", ..." if len(known) > 10 else "")
        other = self.other_values.get(name, 0)
        rarer = (
            f" (or it is one of the {other} rarer training values past "
            "columns.max_categories, which share the unknown category)"
            if other
            else ""
        )
        advice = _UTF8_MISREAD_FIELD if noun == "field" else _UTF8_MISREAD
        misread = next(
            (
                f"; {value!r} is {fixed!r}, {advice}"
                for value in shown
                for fixed in _utf8_readings(value)
                if fixed in known
            ),
            "",
        )
        # 'Yes' where training had 'yes': named, as the known values listed may not show it
        # (ten at most). Not matched in silence: 'A' and 'a' may be two grades or codes.
        by_case: dict[str, list[str]] = {}
        for category in known:
            by_case.setdefault(category.casefold(), []).append(category)
        cased = next(
            (
                f"; {value!r} differs from the known {by_case[value.casefold()][0]!r} only in "
                "case (categories are matched exactly: write it as in training, or retrain with "
                "both)"
                for value in shown
                if len(by_case.get(value.casefold(), [])) == 1
            ),
            "",
        )
        return (
            f"{noun} {name!r}: {listed} not among the values learned in training, scored as the "
            f"unknown category (a novelty, usually flagged); known values: "
            f"{known_text or 'none'}. If it is a known value spelled differently, fix the input "
            f"or retrain with it{rarer}{misread}{cased}"
        )

    # ------------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls, clean: pd.DataFrame, schema: FeatureSchema, *, max_categories: int = 50
    ) -> Preprocessor:
        """Learn centre/scale per numeric column and the kept categories per categorical one.

        ``clean`` is the output of ``schema.validate``.
        """
        if len(clean) == 0:
            raise SchemaError("no valid training rows to learn from")
        pre = cls(schema=schema)
        constant: list[str] = []
        for name in schema.numeric:
            values = clean[name].to_numpy(dtype="float64")
            present = values[~np.isnan(values)]
            if len(present) == 0:
                center, scale = 0.0, 1.0
                # Named a feature (columns.numeric / features), else inference left it out.
                logger.warning(
                    "numeric column %r has no value in any training row: the model learns "
                    "nothing from it, and every record it scores has it as a missing value "
                    "filled in; train on data that has it, or leave it out of the features",
                    name,
                )
            else:
                center = float(np.median(present))
                scale = robust_scale(present)
                if len(present) == 1:
                    # One value in the whole column: no spread either (it was not named).
                    constant.append(f"{name}={present[0]:g} in its only non-missing row")
                elif present.min() == present.max():
                    constant.append(f"{name}={present[0]:g}")
                else:
                    with np.errstate(over="ignore", invalid="ignore"):
                        rounding = np.ptp(present) <= RELATIVE_SPREAD_FLOOR * np.abs(present).max()
                    if rounding:
                        constant.append(f"{name}={center:g} to within 1e-9 of it")
            pre.center[name] = center
            pre.scale[name] = scale
            if len(present) < len(values):
                pre.with_indicator.append(name)
        one_value: list[str] = []
        for name in schema.categorical:
            counts = pd.Series(clean[name]).fillna(MISSING).value_counts()
            kept = [str(v) for v in counts.index[: max_categories - 1]]
            pre.categories[name] = sorted(kept)
            if len(counts) == 1 and counts.index[0] != MISSING:
                one_value.append(f"{name}={str(counts.index[0])!r}")
            # Blanks cut from the kept values are gaps (filled in, as in a column that had
            # none), not values that share the unknown category: not counted or named here.
            cut = counts.iloc[len(kept) :]
            cut = cut[cut.index != MISSING]
            if len(cut):
                # A column forced categorical (columns.categorical) with more values than
                # max_categories: the rarer ones score as unknown, seen in training or not.
                pre.other_values[name] = len(cut)
                logger.warning(
                    "column %r has %d distinct values in training; the %d most frequent are "
                    "its categories, the other %d (%d rows, such as %r) share the unknown "
                    "category with values never seen: raise columns.max_categories to keep "
                    "them apart",
                    name,
                    len(counts) - int(MISSING in counts.index),
                    len(kept) - int(MISSING in kept),
                    len(cut),
                    int(cut.sum()),
                    str(cut.index[0]),
                )
        if one_value:
            # As a numeric column that never moved: only the unknown category is left for any
            # other value, a novelty to the model (a new site, a second firmware version).
            logger.warning(
                "%d categorical column(s) hold one value in every training row (%s): a record "
                "with another value there scores as anomalous; drop them (columns.ignore) if "
                "they do not matter",
                len(one_value),
                ", ".join(one_value[:5]) + (", ..." if len(one_value) > 5 else ""),
            )
        if constant:
            # A column that never moved in training has no spread to scale by: any other value
            # there stands out by its distance in the column's own units.
            logger.warning(
                "%d numeric column(s) never change in the training rows (%s): a record with "
                "another value there scores as anomalous; drop them (columns.ignore) if they "
                "do not matter",
                len(constant),
                ", ".join(constant[:5]) + (", ..." if len(constant) > 5 else ""),
            )
        return pre

    # ----------------------------------------------------------------- transform
    @property
    def layout(self) -> FeatureLayout:
        names = self.schema.names
        index = {n: i for i, n in enumerate(names)}
        numeric = self.schema.numeric
        blocks = [index[n] for n in numeric]
        sizes: list[int] = []
        for name in self.schema.categorical:
            sizes.append(len(self.categories[name]) + 1)
            blocks.append(index[name])
        for name in self.with_indicator:
            sizes.append(2)
            blocks.append(index[name])
        return FeatureLayout(
            n_numeric=len(numeric), cat_sizes=sizes, block_columns=blocks, column_names=names
        )

    def transform(self, clean: pd.DataFrame) -> EncodedBatch:
        """Encode validated rows (``schema.validate`` output) as float32."""
        layout = self.layout
        n = len(clean)
        numeric = self.schema.numeric
        # Every entry of x is written below when there are numeric columns only.
        x = (np.empty if layout.input_dim == len(numeric) else np.zeros)(
            (n, layout.input_dim), dtype=np.float32
        )
        observed = np.ones((n, layout.n_numeric), dtype=np.float32)
        if numeric:
            # One 2-D pass over all numeric columns (a column at a time writes x with a stride).
            # ``validate``'s frame of numbers only is one float64 block: read without a copy.
            raw = clean[numeric].to_numpy(dtype=np.float64, copy=False)
            center = np.asarray([self.center[name] for name in numeric])
            scale = np.asarray([self.scale[name] for name in numeric])
            # A huge finite value (1e308 in a column of scale under 1) overflows to infinity
            # here, which the clip bounds: no RuntimeWarning in the scorer's output.
            missing = np.isnan(raw)
            with np.errstate(over="ignore"):
                numbers = np.subtract(raw, center, order="K")
                numbers /= scale
            np.clip(numbers, -CLIP, CLIP, out=numbers)
            if missing.any():
                numbers[missing] = 0.0
                observed[missing] = 0.0
            x[:, : len(numeric)] = numbers
        offset = layout.n_numeric
        for name in self.schema.categorical:
            cats = self.categories[name]
            values = clean[name].to_numpy(dtype=object)
            missing = pd.isna(values)
            if missing.any():
                values = np.where(missing, MISSING, values)
            # get_indexer gives -1 for values outside the kept categories: the unknown slot.
            codes = pd.Index(cats, dtype=object).get_indexer(values).astype(np.int64) + 1
            if not codes.all():
                _match_loosely(codes, values, cats)
            unseen = (codes == 0) & ~missing
            if unseen.any():
                self._warn_unseen(name, values[unseen])
                sink = _UNSEEN_VALUES.get()
                if sink is not None:
                    sink.setdefault(name, {}).update(dict.fromkeys(map(str, values[unseen])))
            if missing.any() and MISSING not in cats:
                # No missing value in training: a gap, not an unknown value. The block stays
                # empty and ``scoring.Scorer.impute`` fills it from the other columns.
                rows = np.flatnonzero(~missing)
                x[rows, offset + codes[rows]] = 1.0
            else:
                x[np.arange(n), offset + codes] = 1.0
            offset += len(cats) + 1
        for name in self.with_indicator:
            missing = np.isnan(clean[name].to_numpy(dtype="float64"))
            x[np.arange(n), offset + missing.astype(np.int64)] = 1.0
            offset += 2
        return EncodedBatch(x=x, observed=observed)

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "center": self.center,
            "scale": self.scale,
            "with_indicator": self.with_indicator,
            "categories": self.categories,
            "other_values": self.other_values,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], schema: FeatureSchema) -> Preprocessor:
        pre = cls(
            schema=schema,
            center={str(k): float(v) for k, v in data["center"].items()},
            scale={str(k): float(v) for k, v in data["scale"].items()},
            with_indicator=[str(v) for v in data["with_indicator"]],
            categories={str(k): [str(c) for c in v] for k, v in data["categories"].items()},
            # Model files from before this was recorded have none.
            other_values={str(k): int(v) for k, v in data.get("other_values", {}).items()},
        )
        for name in schema.numeric:
            if name not in pre.center or name not in pre.scale:
                raise ValueError(f"no scaling stored for numeric column {name!r}")
        for name in pre.with_indicator:
            if name not in schema.numeric:
                raise ValueError(f"a missing-value indicator for {name!r}, not a numeric column")
        for name in schema.categorical:
            if name not in pre.categories:
                raise ValueError(f"no categories stored for categorical column {name!r}")
            cats = pre.categories[name]
            if len(set(cats)) < len(cats):
                twice = next(c for c in cats if cats.count(c) > 1)
                raise ValueError(f"category {twice!r} of column {name!r} is listed twice")
        return pre
