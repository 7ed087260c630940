"""Anomaly labels read one way everywhere (pure: no torch, no files).

``fit`` (``y`` or ``columns.label``), ``score --label-column`` and the labels files of
``thresholds preview`` / ``tune`` all read a label value as 1 (anomalous), 0 (normal) or no label
(a blank): the same export gives the same labels to every command.
"""

from __future__ import annotations

import pandas as pd

from anomaly_vae.errors import ConfigError

# Words public data sets use (intrusion and fraud sets: BENIGN / MALICIOUS, attack, fraud).
_TRUE = {
    "1", "true", "yes", "y", "t", "anomaly", "anomalous", "abnormal", "outlier", "fault",
    "faulty", "failure", "malicious", "attack", "fraud", "fraudulent", "defect", "defective",
}  # fmt: skip
_FALSE = {
    "0", "false", "no", "n", "f", "normal", "ok", "nominal", "inlier", "benign", "legitimate",
}  # fmt: skip


def label_to_binary(
    series: pd.Series, *, name: str, source: str | None = None, strict: bool = True
) -> pd.Series:
    """Labels as 1 (anomaly), 0 (normal) or NA: numbers (non-zero is anomalous), booleans, or
    words such as 'anomaly' / 'normal'. Raises ConfigError naming the first unknown (or
    negative) value and its row (the index label: a CSV file's data row number), after
    ``source`` when given; with ``strict=False`` such a value is NA instead."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("Int64")
    if pd.api.types.is_numeric_dtype(series):
        values = series.astype("float64")
        if strict:
            _no_negative_labels(values, name, source)
            _no_fractional_labels(values, name, source)
        else:
            values = values.where(~(values < 0) & ~_fractional(values))
        return (values != 0).astype("Int64").where(values.notna())
    text = series.astype("string").str.strip().str.lower()
    text = text.mask(text == "")  # a cell of blanks is an empty cell: no label, not 'normal'
    out = pd.Series(pd.NA, index=series.index, dtype="Int64")
    out[text.isin(list(_TRUE)).fillna(False).to_numpy(dtype=bool)] = 1
    out[text.isin(list(_FALSE)).fillna(False).to_numpy(dtype=bool)] = 0
    numeric = pd.to_numeric(text, errors="coerce")
    if strict:
        _no_negative_labels(numeric, name, source)
        _no_fractional_labels(numeric, name, source)
    else:
        numeric = numeric.where(~(numeric < 0) & ~_fractional(numeric))
    is_num = numeric.notna().to_numpy()
    out[is_num] = (numeric[is_num] != 0).astype("Int64")
    unknown = text.notna().to_numpy() & out.isna().to_numpy()
    if strict and unknown.any():
        first = series[unknown]
        raise ConfigError(
            f"{_where(source)}label column {name!r} has value {first.iloc[0]!r} (row "
            f"{first.index[0]}), which is neither normal (0, false, normal, benign) nor anomalous "
            "(1, true, anomaly, malicious): correct it, or leave the cell empty (no label); a "
            "column of attack or fault names needs mapping to 1 / 0 first"
        )
    return out


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _no_negative_labels(values: pd.Series, name: str, source: str | None = None) -> None:
    """A -1 / 1 label (scikit-learn's predict: -1 = outlier) would read as all anomalous."""
    negative = values < 0
    if negative.any():
        raise ConfigError(
            f"{_where(source)}label column {name!r} has the negative value "
            f"{values[negative].iloc[0]:g} (row {values[negative].index[0]}): "
            "write 1 (or true, anomaly) for anomalies and 0 (false, normal) for normal rows; "
            "a -1 / 1 label, as scikit-learn's predict gives, is ambiguous"
        )


def _fractional(values: pd.Series) -> pd.Series:
    """Numbers that are no class: 0.62, infinity (a score or a measurement, not a label)."""
    finite = values.abs() < float("inf")
    return values.notna() & (~finite | (values != values.round()))


def _no_fractional_labels(values: pd.Series, name: str, source: str | None = None) -> None:
    """A column of scores or measurements named as the label would read as all anomalous
    (non-zero), every such row left out of training or counted as an anomaly."""
    fractional = _fractional(values)
    if fractional.any():
        raise ConfigError(
            f"{_where(source)}label column {name!r} has the value "
            f"{values[fractional].iloc[0]:g} (row {values[fractional].index[0]}), which is no "
            "label: write 1 (or true, anomaly) for anomalies and 0 (false, normal) for normal "
            "rows; is it the right column?"
        )
