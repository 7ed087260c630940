from __future__ import annotations

import io
import json
import logging
import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from anomaly_vae.config import ColumnsConfig, PipelineConfig
from anomaly_vae.errors import ConfigError, SchemaError
from anomaly_vae.features import CLIP, FeatureColumn, FeatureSchema, Preprocessor, robust_scale


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 200
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "ts": pd.date_range("2026-01-01", periods=n, freq="min").astype(str),
            "temp": rng.normal(20, 2, n),
            "mode": rng.choice(["auto", "manual"], n),
            "label": np.zeros(n, dtype=int),
            "note": [f"free text {i}" for i in range(n)],
        }
    )


def test_infer_kinds_and_leave_out_ids_labels_timestamps(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(_frame(), ColumnsConfig(label="label"))
    assert schema.numeric == ["temp"]
    assert schema.categorical == ["mode"]
    text = caplog.text
    assert "'id' looks like a row identifier" in text
    assert "'ts'" in text
    assert "'note' has 200 distinct text values" in text


def test_dates_as_text_are_timestamps_even_when_there_are_few_of_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A day column of a month's export (30 distinct dates) became a categorical feature: every
    # record of the next month had an unknown category and scored as anomalous.
    rng = np.random.default_rng(0)
    n = 600
    days = pd.date_range("2025-01-01", periods=n, freq="h").strftime("%Y-%m-%d")
    frame = pd.DataFrame(
        {
            "day": days,
            "stamp": pd.date_range("2025-01-01", periods=n, freq="D").strftime("%d/%m/%Y")[:n],
            "month": rng.choice(["Jan", "Feb", "Mar"], n),
            "firmware": rng.choice(["1.10.12", "1.10.13"], n),
            "temp": rng.normal(20, 2, n),
        }
    )
    frame["stamp"] = frame["stamp"].where(frame.index % 20 == 0).ffill()  # 30 distinct
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.categorical == ["month", "firmware"]
    assert schema.numeric == ["temp"]
    assert "'day' looks like timestamps" in caplog.text
    assert "'stamp' looks like timestamps" in caplog.text


def test_numbers_with_a_decimal_comma_are_named_with_the_option_to_read_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A ';'-separated export with decimal commas read without --decimal ',': its numbers were
    # said to "look like timestamps" (dateutil reads 20,5 as a day) or became categories.
    text = "temp;const;mode\n" + "".join(
        f"{20 + i % 7},{i % 10};5,0;{'ab'[i % 2]}\n" for i in range(200)
    )
    frame = pd.read_csv(io.StringIO(text), sep=";")
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["mode"]
    assert "'temp' holds numbers written with a comma ('20,0')" in caplog.text
    assert "'const' holds numbers written with a comma ('5,0')" in caplog.text
    assert "--decimal ','" in caplog.text
    assert "timestamps" not in caplog.text


def test_a_numeric_column_with_some_text_points_to_columns_numeric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 10 % "offline" in a sensor column: the warning said it had 901 distinct text values and
    # to list it under columns.categorical.
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000).astype(object)
    values[::10] = "offline"
    frame = pd.DataFrame({"x": values, "y": rng.normal(size=1000)})
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["y"]
    assert "'x' holds numbers but 10% of its values are text such as 'offline'" in caplog.text
    assert "list it under columns.numeric" in caplog.text
    assert "columns.categorical" not in caplog.text


def test_whole_number_ids_in_no_sequence_are_left_out_by_their_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # customer_id and txnId drawn at random (no sequence, so not row numbers) were numeric
    # features without a word: every later customer outside the training range of ids scored
    # as anomalous.
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "customer_id": rng.choice(np.arange(100_000, 999_999), n, replace=False),
            "txnId": rng.choice(np.arange(10**9, 2 * 10**9), n, replace=False),
            "store_id": rng.integers(1, 20, n),  # repeats: a code, not an id
            "bytes": rng.choice(np.arange(10**6), n, replace=False),  # unique, not named so
            "amount": rng.gamma(2, 50, n),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["store_id", "bytes", "amount"]
    for name in ("customer_id", "txnId"):
        assert (
            f"column {name!r} looks like an identifier (its name, and a different whole number "
            f"in each of its {n} rows) and is not used as a feature"
        ) in caplog.text
    # Named as features, they are features.
    explicit = FeatureSchema.infer(frame, ColumnsConfig(features=["customer_id", "amount"]))
    assert explicit.names == ["customer_id", "amount"]


def test_numbers_with_thousands_separators_or_units_are_named_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A spreadsheet export: "12,345.67" and "18.5%" were "distinct text values" to be listed
    # under columns.categorical, which would make every new amount an unknown category.
    rng = np.random.default_rng(0)
    amounts = rng.normal(12_000, 3_000, 500)
    frame = pd.DataFrame(
        {
            "revenue": [f"{v:,.2f}" for v in amounts],
            "margin": [f"{v:.1f}%" for v in rng.uniform(5, 30, 500)],
            "units": rng.integers(100, 5000, 500),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["units"]
    said = "holds numbers written with thousands separators or a unit"
    assert f"'revenue' {said} ('{frame.revenue[0]}')" in caplog.text
    assert f"'margin' {said} ('{frame.margin[0]}')" in caplog.text
    assert "plain numbers" in caplog.text
    assert "columns.categorical" not in caplog.text


def _grouped_whole(values: np.ndarray) -> list[str]:
    return [f"{v * 1000:,d}" for v in values]


def _grouped_french(values: np.ndarray) -> list[str]:
    return [f"{v // 1000}\u202f{v % 1000:03d},{v % 10}" for v in values * 5]


@pytest.mark.parametrize("written", [_grouped_whole, _grouped_french])
def test_numbers_with_thousands_separators_are_named_as_such_not_as_timestamps(
    caplog: pytest.LogCaptureFixture, written: Callable[[np.ndarray], list[str]]
) -> None:
    # dateutil reads '3,126,000' as 1 March of the year 126: a column of whole amounts written
    # with thousands separators was said to "look like timestamps", to be named as
    # columns.timestamp. French formats group thousands with U+202F ('10\u202f850,0'): such a
    # column, read with --decimal ',', was said to look like timestamps too (dateutil reads
    # some of them as dates), or to hold "distinct text values" to list under
    # columns.categorical.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "amount": written(rng.integers(2_000, 4_000, 500)),
            "units": rng.integers(100, 5000, 500),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["units"]
    said = "holds numbers written with thousands separators or a unit"
    assert f"'amount' {said} ({frame.amount[0]!r})" in caplog.text
    assert "timestamps" not in caplog.text


def test_numbers_written_with_a_unit_or_currency_code_are_named_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # '12.5 kg', '230 V', 'USD 1,200.00': such a column was said to hold "distinct text values
    # (more than max_categories)", to raise max_categories or list under columns.categorical,
    # where it needs to be exported as plain numbers. A day and month ('12 Jan') is a date.
    rng = np.random.default_rng(2)
    values = rng.gamma(4, 30, 500)
    frame = pd.DataFrame(
        {
            "weight": [f"{v:.1f} kg" for v in values],
            "voltage": [f"{int(v) + 200}V" for v in values],
            "price": [f"USD {v * 10:,.2f}" for v in values],
            "day": [
                f"{d} {m}"
                for d, m in zip(
                    rng.integers(1, 29, 500),
                    rng.choice(["Jan", "Feb", "Mar", "Apr", "May", "Jun"], 500),
                    strict=True,
                )
            ],
            "note": [f"{int(v)} days" for v in values],
            "temp": rng.normal(20, 2, 500),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    said = "holds numbers written with thousands separators or a unit"
    for name in ("weight", "voltage", "price"):
        assert f"'{name}' {said} ({frame[name][0]!r})" in caplog.text
    assert "'day' looks like timestamps" in caplog.text
    assert f"'note' {said}" not in caplog.text  # a word, not a unit


def test_times_of_day_and_durations_are_not_said_to_be_timestamps_to_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A run time written 00:05:30 (the date parser reads it as today at that time) was said
    # to "look like timestamps", to be named as columns.timestamp, which cannot work: a
    # record's time is a date. What to do with it is to give it as a number.
    rng = np.random.default_rng(1)
    seconds = rng.integers(0, 20_000, 500)
    frame = pd.DataFrame(
        {
            "run_time": [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in seconds],
            "shift_start": [
                f"{h}:{m:02d}" for h, m in zip(seconds % 24, seconds % 60, strict=True)
            ],
            "stamp": pd.date_range("2025-01-01", periods=500, freq="min").strftime(
                "%Y-%m-%d %H:%M"
            ),
            "temp": rng.normal(20, 2, 500),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    said = "holds times of day or durations ({!r}), not dates, which cannot be a feature"
    assert f"'run_time' {said.format(frame.run_time[0])}" in caplog.text
    assert f"'shift_start' {said.format(frame.shift_start[0])}" in caplog.text
    assert "export them as numbers (seconds, or hours such as 5.5)" in caplog.text
    assert "'stamp' looks like timestamps" in caplog.text  # a date in it: one
    assert "'run_time' looks like" not in caplog.text
    with pytest.raises(SchemaError, match="'run_time' holds times of day or durations"):
        FeatureSchema.infer(frame, ColumnsConfig(features=["run_time", "temp"]))


def test_numbers_with_thousands_separators_of_a_decimal_comma_export_are_named_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A ';' export with decimal commas read with --decimal ',': amounts under 1,000 come as
    # numbers, those above keep their thousands dot as text ('1.927,62'). The column was said
    # to hold "numbers but 50% of its values are text", to be listed under columns.numeric,
    # which rejects every amount over 1,000.
    rng = np.random.default_rng(0)
    amounts = rng.gamma(2, 600, 500)
    written = [
        round(v, 2)
        if v < 1000
        else f"{int(v) // 1000}.{int(v) % 1000:03d},{int(v * 100) % 100:02d}"
        for v in amounts
    ]
    frame = pd.DataFrame({"amount": pd.Series(written, dtype=object), "units": amounts // 7})
    assert 0.2 < frame["amount"].map(lambda v: isinstance(v, str)).mean() < 0.8
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["units"]
    example = next(v for v in written if isinstance(v, str))
    assert (
        f"'amount' holds numbers written with thousands separators or a unit ('{example}')"
    ) in caplog.text
    assert "values are text" not in caplog.text


def test_a_misspelt_column_to_leave_out_is_named_with_the_closest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # columns.ignore: [tempp] left 'temp' in the features without a word.
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(_frame(), ColumnsConfig(label="label", ignore=["tempp"]))
    assert "temp" in schema.numeric
    assert "'tempp' is to be left out" in caplog.text
    assert "did you mean 'temp'?" in caplog.text


def test_a_misspelt_entity_or_timestamp_column_is_named_at_fit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # columns.entity: modee trained with 'mode' as a categorical feature without a word (only
    # scoring said the file had no entity column 'modee'), as ids and ignored columns were told.
    frame = _frame()
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(
            frame, ColumnsConfig(label="label", entity="modee", timestamp="tss")
        )
    assert "mode" in schema.categorical
    assert "entity column 'modee' (columns.entity) is not in the training data" in caplog.text
    assert "did you mean 'mode'?" in caplog.text
    assert "timestamp column 'tss' (columns.timestamp) is not in the training data" in (caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        FeatureSchema.infer(frame, ColumnsConfig(label="label", entity="mode", timestamp="ts"))
    assert "not in the training data" not in caplog.text


def test_an_empty_column_of_a_csv_is_not_a_feature(caplog: pytest.LogCaptureFixture) -> None:
    text = "temp,empty,mode\n" + "".join(f"{20 + i % 7},,{'ab'[i % 2]}\n" for i in range(50))
    frame = pd.read_csv(io.StringIO(text))  # the empty column is read as float NaN
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp", "mode"]
    assert "'empty' is empty in the training data and is not used" in caplog.text
    explicit = FeatureSchema.infer(frame, ColumnsConfig(numeric=["temp", "empty"]))
    assert "empty" in explicit.numeric  # named by the user: kept
    # ... and said at fit: it trained nothing, and every scored record then counted as
    # "scored with a missing value filled in", the export called incomplete.
    clean, _ = explicit.validate(frame)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Preprocessor.fit(clean, explicit)
    assert "numeric column 'empty' has no value in any training row" in caplog.text


def test_a_column_of_tiny_values_keeps_its_spread() -> None:
    # Picoamps: the spread (1e-13) was under an absolute cut-off of 1e-12, so the column was
    # taken as constant (scale 1) and every value scored alike.
    rng = np.random.default_rng(0)
    assert robust_scale(rng.normal(0, 1, 1000) * 1e-13) == pytest.approx(1e-13, rel=0.1)
    assert robust_scale(np.full(100, 5.0)) == 1.0  # constant
    assert robust_scale(np.full(100, 0.3) + rng.normal(0, 1e-17, 100)) == 1.0  # rounding noise
    assert robust_scale(np.zeros(50)) == 1.0


def test_huge_values_that_differ_only_by_rounding_are_not_scaled_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Values near 1e18 (an epoch in nanoseconds, a 64-bit counter) whose spread is under the
    # relative floor count as no spread; the fallback scale of 1 then made their float64
    # rounding steps (128 apart) hundreds of standard units, clipped at 1e4: every normal
    # record scored far above the others (a threshold of 166 nats where 6 was usual), and the
    # column was not named as constant.
    rng = np.random.default_rng(0)
    values = 1e18 + rng.integers(0, 1000, 400).astype(np.float64)
    assert np.ptp(values) / robust_scale(values) < 1e-3
    frame = pd.DataFrame({"a": rng.normal(size=400), "big": values})
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        pre = Preprocessor.fit(clean, schema)
    assert np.abs(pre.transform(clean).x[:, 1]).max() < 1e-3
    assert "never change in the training rows (big=1e+18 to within 1e-9 of it)" in caplog.text
    assert robust_scale(np.full(100, 1e18)) == 1.0  # constant: any other value stands out


def test_explicit_kinds_and_ignore() -> None:
    cols = ColumnsConfig(ignore=["note", "ts", "label"], categorical=["id"], numeric=["temp"])
    schema = FeatureSchema.infer(_frame(), cols)
    assert schema.categorical == ["id", "mode"]
    assert "note" not in schema.names


def test_numeric_text_column_is_numeric_and_bad_cells_are_rejected_with_reasons() -> None:
    frame = pd.DataFrame(
        {"a": ["1.5", "2", "oops", "", "inf", "nan"] + ["3"] * 40, "b": [1.0] * 46}
    )
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.numeric == ["a", "b"]
    clean, rejects = schema.validate(frame)
    assert list(rejects.index) == [2, 4]
    assert rejects.loc[2, "reason"] == "column 'a': 'oops' is not a number"
    assert rejects.loc[4, "reason"] == "column 'a': inf is not a finite number"
    assert json.loads(str(rejects.loc[2, "raw"])) == {"a": "oops", "b": 1.0}
    assert np.isnan(clean["a"].loc[3])
    assert np.isnan(clean["a"].loc[5])
    assert len(clean) + len(rejects) == len(frame)


def test_a_complex_value_among_objects_does_not_turn_other_bad_values_into_numbers() -> None:
    # One complex value in an object column made pandas parse it as complex: 'oops' and '  '
    # came back as whatever memory held (6.9e-310) and were scored as numbers.
    schema = FeatureSchema([FeatureColumn("a", "numeric"), FeatureColumn("b", "numeric")])
    values = pd.Series([1.5, 1 + 2j, "oops", "2", "  ", None], dtype=object)
    frame = pd.DataFrame({"a": values, "b": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a ComplexWarning about imaginary parts dropped
        clean, rejects = schema.validate(frame)
    assert list(rejects.index) == [1, 2]
    assert rejects.loc[1, "reason"] == "column 'a': (1+2j) is not a number"
    assert rejects.loc[2, "reason"] == "column 'a': 'oops' is not a number"
    assert clean["a"].tolist()[:2] == [1.5, 2.0]
    assert clean["a"].iloc[2:].isna().all()


def test_a_number_with_a_decimal_comma_is_rejected_with_the_option_to_read_it() -> None:
    # A ';' export with decimal commas scored without --decimal ',': every row was rejected
    # with "'99,5' is not a number" and nothing said how to read the file.
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0, 2.0] * 20}), ColumnsConfig())
    _, rejects = schema.validate(pd.DataFrame({"a": ["99,5", "1.5x", "-0,25"]}))
    # The hint says what a number is, too: a Kafka message or an API record (the same
    # validation) has no --decimal to give, and the hint named only that option.
    hint = (
        "(a decimal comma? a number is written with a point; a CSV with decimal commas is "
        "read with --decimal ',')"
    )
    assert rejects.loc[0, "reason"] == f"column 'a': '99,5' is not a number {hint}"
    assert rejects.loc[1, "reason"] == "column 'a': '1.5x' is not a number"
    assert str(rejects.loc[2, "reason"]).endswith(hint)


def test_a_number_with_thousands_commas_is_rejected_with_what_to_write() -> None:
    # '9,970.0' and '1,234,567', as a spreadsheet's number format exports them: the reason was
    # only "is not a number", and every row of such an export was rejected so.
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0, 2.0] * 20}), ColumnsConfig())
    _, rejects = schema.validate(pd.DataFrame({"a": ["9,970.0", " -1,234,567 ", "1,23,4.5"]}))
    assert rejects.loc[0, "reason"] == (
        "column 'a': '9,970.0' is not a number (',' as a thousands separator is not read: "
        "write the number without it, e.g. '9970.0')"
    )
    assert str(rejects.loc[1, "reason"]).endswith("e.g. '-1234567')")
    assert rejects.loc[2, "reason"] == "column 'a': '1,23,4.5' is not a number"


def test_a_number_with_spaces_as_thousands_separators_is_rejected_with_what_to_write() -> None:
    # '1 234,5' (a space, U+00A0 or U+202F, as French formats group thousands) and Swiss
    # "1'234.50": the reason was only "is not a number".
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0, 2.0] * 20}), ColumnsConfig())
    values = ["1 234,5", "10\u202f850,0", "-1\u00a0234\u00a0567", "1'234.50", "1 23"]
    _, rejects = schema.validate(pd.DataFrame({"a": values}))
    assert rejects.loc[0, "reason"] == (
        "column 'a': '1 234,5' is not a number (' ' as a thousands separator is not read: "
        "write the number without it, e.g. '1234,5')"
    )
    assert str(rejects.loc[1, "reason"]).endswith(
        "('\\u202f' as a thousands separator is not read: write the number without it, "
        "e.g. '10850,0')"
    )
    assert str(rejects.loc[2, "reason"]).endswith("e.g. '-1234567')")
    assert str(rejects.loc[3, "reason"]).endswith("e.g. '1234.50')")
    assert rejects.loc[4, "reason"] == "column 'a': '1 23' is not a number"


def test_a_number_with_a_unicode_minus_sign_is_rejected_with_what_to_write() -> None:
    # '−3' (U+2212, as word processors and typographic report formats write a negative
    # number) was "'−3' is not a number": the same to the eye as '-3'. Rejected, not guessed.
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0, 2.0] * 20}), ColumnsConfig())
    _, rejects = schema.validate(pd.DataFrame({"a": ["\u22123", "\u2212", " \u22121.5e2 "]}))
    assert rejects.loc[0, "reason"] == (
        "column 'a': '\u22123' is not a number (its '\u2212' is the Unicode minus sign U+2212, "
        "not the hyphen-minus '-' a number is written with: write '-3')"
    )
    assert rejects.loc[1, "reason"] == "column 'a': '\u2212' is not a number"
    assert str(rejects.loc[2, "reason"]).endswith("write '-1.5e2')")


def test_a_value_python_reads_as_a_number_is_not_said_to_hold_a_unicode_minus() -> None:
    # '1_000' and '١٢٣' (Arabic-Indic digits) are numbers to Python's float, not to the
    # column's parser: their reason said "its '−' is the Unicode minus sign U+2212" and told
    # to write the same value again, though neither holds a '−'.
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0, 2.0] * 20}), ColumnsConfig())
    _, rejects = schema.validate(
        pd.DataFrame({"a": ["1_000", "\u0661\u0662\u0663", "\u22121_000"]})
    )
    assert rejects.loc[0, "reason"] == "column 'a': '1_000' is not a number"
    assert rejects.loc[1, "reason"] == "column 'a': '\u0661\u0662\u0663' is not a number"
    assert rejects.loc[2, "reason"] == "column 'a': '\u22121_000' is not a number"


def test_boolean_column_with_one_stray_value_rejects_only_that_row() -> None:
    # A True/False column is numeric (pandas reads it as bool). When one chunk of an export
    # holds a stray value, pandas reads that chunk's column as text: the True/False rows must
    # still be 1/0, not all rejected, so results do not depend on where chunks are cut.
    train = pd.read_csv(io.StringIO("x,flag\n" + "".join(f"{i},{i % 2 == 0}\n" for i in range(40))))
    schema = FeatureSchema.infer(train, ColumnsConfig())
    assert schema.numeric == ["x", "flag"]
    export = pd.read_csv(io.StringIO("x,flag\n1,True\n2,False\n3,yes\n4,\n5,TRUE\n"))
    clean, rejects = schema.validate(export)
    assert list(rejects.index) == [2]
    assert rejects.loc[2, "reason"] == "column 'flag': 'yes' is not a number"
    assert clean["flag"].loc[[0, 1, 4]].tolist() == [1.0, 0.0, 1.0]
    assert np.isnan(clean["flag"].loc[3])


def test_float_infinity_in_numeric_dtype_is_rejected() -> None:
    frame = pd.DataFrame({"a": [1.0, np.inf, -np.inf, 2.0]})
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    _, rejects = schema.validate(frame)
    assert list(rejects.index) == [1, 2]


def test_no_feature_left_names_the_columns_judged_no_features(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two text columns of too many values: "no feature columns left after leaving out ids,
    # labels and ignored columns", though none was an id, a label or ignored.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "city": rng.choice([f"city{i}" for i in range(80)], 400),
            "note": rng.choice([f"n{i}" for i in range(90)], 400),
            "skip": rng.normal(size=400),
        }
    )
    with pytest.raises(SchemaError) as raised:
        FeatureSchema.infer(frame, ColumnsConfig(ignore=["skip"]))
    assert str(raised.value).endswith(
        "; 'city', 'note' were judged no features (the warnings above say why): list those to "
        "use under columns.features, or columns.categorical for text of many values"
    )
    with pytest.raises(SchemaError) as raised:
        FeatureSchema.infer(frame[["skip"]], ColumnsConfig(ignore=["skip"]))
    assert "judged" not in str(raised.value)


def test_missing_feature_column_names_it_and_suggests_separator() -> None:
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0] * 5, "b": [2.0] * 5}), ColumnsConfig())
    with pytest.raises(SchemaError, match=r"feature column 'b' missing"):
        schema.validate(pd.DataFrame({"a": [1.0]}), source="x.csv")
    with pytest.raises(SchemaError, match=r"try --sep ';'"):
        schema.check_columns(["a;b"], source="x.csv")
    # One backslash, as the user types it (the hint showed '\\t').
    with pytest.raises(SchemaError, match=r"looks '\\t'-separated: try --sep '\\t'"):
        schema.check_columns(["a\tb"], source="x.csv")
    # An export separated (or aligned) by spaces: it said "is the separator right (--sep)?".
    with pytest.raises(SchemaError, match=r"the header looks separated by spaces: try --sep ' '$"):
        schema.check_columns(["a b"], source="x.txt")
    with pytest.raises(SchemaError, match=r"aligned by spaces, not CSV: save it as CSV"):
        schema.check_columns(["   a    b"], source="x.txt")


def test_a_column_name_in_another_unicode_form_is_shown_by_its_code_points() -> None:
    # An export whose header writes é as e and a combining accent (NFD, as macOS tools may):
    # the error said "'Température' is 'Température' there: names differ only in spaces or
    # case", two names that look the same.
    composed = "Temp\u00e9rature"
    schema = FeatureSchema.infer(
        pd.DataFrame({composed: [1.0, 2.0] * 5, "b": [2.0, 3.0] * 5}), ColumnsConfig()
    )
    with pytest.raises(SchemaError) as raised:
        schema.check_columns(["Tempe\u0301rature", "b"], source="x.csv")
    assert (
        "is there with its accented letters written as other Unicode code points "
        "('Tempe\\u0301rature' in the file, 'Temp\\xe9rature' in the model: one composed, one "
        "decomposed, NFC / NFD)"
    ) in str(raised.value)
    assert "spaces or case" not in str(raised.value)


def test_a_feature_column_with_a_blank_header_cell_is_warned_about_and_explained_when_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A blank header cell ("a,,b") is read as 'Unnamed: 1', a name made from its position:
    # trained on as a feature without a word, then an export with a column added before it
    # ('Unnamed: 2' there) was refused for "feature column 'Unnamed: 1' missing", a name the
    # user never wrote.
    rng = np.random.default_rng(0)
    lines = ["a,,b"] + [",".join(f"{v:.3f}" for v in rng.normal(size=3)) for _ in range(50)]
    frame = pd.read_csv(io.StringIO("\n".join(lines)))
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.numeric == ["a", "Unnamed: 1", "b"]
    assert (
        "feature column 'Unnamed: 1' has no name in the header (a blank cell: pandas names it "
        "after its position), so an export with its columns in another order would lack it: "
        "give it a name in the header"
    ) in caplog.text
    export = pd.read_csv(io.StringIO("c,a,,b\n1,2,3,4\n"))
    with pytest.raises(SchemaError) as caught:
        schema.check_columns(export.columns, source="x.csv")
    assert str(caught.value).endswith(
        "; 'Unnamed: 1' is column 2 of the training file, whose header cell was blank (pandas "
        "names such a column after its position); this file's column with no name: "
        "'Unnamed: 2': keep the training file's column order, or name the column in both "
        "files and retrain"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        FeatureSchema.infer(frame.rename(columns={"Unnamed: 1": "flow"}), ColumnsConfig())
    assert "no name in the header" not in caplog.text


def test_utf8_text_read_as_cp1252_is_named_as_such(caplog: pytest.LogCaptureFixture) -> None:
    # A model trained on a cp1252 export (--encoding cp1252) reads later files as cp1252; an
    # export then saved as UTF-8 read 'Total (€)' as 'Total (â‚¬)': "feature column 'Total (€)'
    # missing" with both names shown and nothing said of the encoding, and 'Zürich' became
    # an unknown category 'ZÃ¼rich' beside the known 'Zürich'.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"Total (€)": rng.normal(size=60), "city": rng.choice(["Zürich", "Bern"], 60)}
    )
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    misread = "Total (€)".encode().decode("cp1252")
    with pytest.raises(SchemaError) as caught:
        schema.check_columns([misread, "city"], source="x.csv")
    assert str(caught.value).endswith(
        f"; 'Total (€)' is {misread!r} there, UTF-8 text read in another encoding: give "
        "--encoding utf-8 (csv.encoding in a pipeline)"
    )
    pre = Preprocessor.fit(schema.validate(frame)[0], schema)
    city = "Zürich".encode().decode("cp1252")
    with caplog.at_level(logging.WARNING):
        pre.transform(schema.validate(pd.DataFrame({"Total (€)": [0.0], "city": [city]}))[0])
    (warned,) = [r.getMessage() for r in caplog.records if "learned in training" in r.getMessage()]
    assert warned == (
        f"column 'city': {city!r} not among the values learned in training, scored as the "
        "unknown category (a novelty, usually flagged); known values: "
        f"{', '.join(map(repr, pre.categories['city']))}. If it is a known value spelled "
        f"differently, fix the input or retrain with it; {city!r} is 'Zürich', UTF-8 text read "
        "in another encoding: give --encoding utf-8 (csv.encoding in a pipeline)"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pre.transform(schema.validate(pd.DataFrame({"Total (€)": [0.0], "city": ["Genf"]}))[0])
    assert "not among the values learned" in caplog.text
    assert "another encoding" not in caplog.text


def test_a_file_without_a_header_line_or_another_schema_is_said_in_a_short_line() -> None:
    names = [f"s{i}" for i in range(300)]
    schema = FeatureSchema.infer(pd.DataFrame({n: [1.0, 2.0] for n in names}), ColumnsConfig())
    # Its first line of values taken for names: it was only "feature columns ... missing".
    with pytest.raises(SchemaError, match=r"first line looks like data.*needs a header line"):
        schema.check_columns(["7", "10.691", "-0.2", "True", "south"], source="x.csv")
    # Another model's file: 20 of the missing names, not 300.
    with pytest.raises(SchemaError) as caught:
        schema.check_columns(["id", "temp", "0", "1"], source="x.csv")
    message = str(caught.value)
    assert "'s19', ... (300 in all) missing" in message
    assert "'s20'" not in message
    assert "first line" not in message  # names, whole numbers included


def test_extra_columns_are_ignored() -> None:
    schema = FeatureSchema.infer(pd.DataFrame({"a": [1.0] * 5}), ColumnsConfig())
    clean, rejects = schema.validate(pd.DataFrame({"z": ["x"], "a": [3.0]}))
    assert list(clean.columns) == ["a"]
    assert rejects.empty


def test_preprocessor_robust_scaling_unknown_bucket_and_missing_indicator() -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"x": np.r_[rng.normal(10, 2, 999), [1e6]], "c": ["a", "b"] * 500})
    train.loc[5, "x"] = np.nan
    schema = FeatureSchema.infer(train, ColumnsConfig())
    clean, _ = schema.validate(train)
    pre = Preprocessor.fit(clean, schema)
    # The outlier does not inflate the scale: IQR-based.
    assert pre.scale["x"] == pytest.approx(2.0, rel=0.15)
    assert pre.with_indicator == ["x"]
    layout = pre.layout
    assert layout.n_numeric == 1
    assert layout.cat_sizes == [3, 2]
    test = pd.DataFrame({"x": [pre.center["x"], np.nan], "c": ["b", "never-seen"]})
    enc = pre.transform(schema.validate(test)[0])
    assert enc.x.dtype == np.float32
    assert enc.x.flags["C_CONTIGUOUS"]
    assert enc.x[0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert enc.x[1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]  # unknown bucket; missing flag
    assert enc.observed[:, 0].tolist() == [1.0, 0.0]
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())), schema)
    assert np.array_equal(again.transform(schema.validate(test)[0]).x, enc.x)


@pytest.mark.parametrize("dtype", [object, "str"])
def test_category_text_is_trimmed_in_either_string_dtype(dtype: object) -> None:
    """An object column of text (a DataFrame built by hand, read with dtype=object) and
    pandas' string dtype give the same categories: blanks around a value trimmed, a value of
    blanks only and a null missing, the input left as it was."""
    train = pd.DataFrame({"x": np.arange(40.0), "c": ["a", "b"] * 20})
    schema = FeatureSchema.infer(train, ColumnsConfig(categorical=["c"]))
    pre = Preprocessor.fit(schema.validate(train)[0], schema)
    raw = ["a ", " b", "   ", None, "a"]
    test = pd.DataFrame({"x": [1.0] * 5, "c": pd.Series(raw, dtype=dtype)})  # type: ignore[call-overload]
    clean, rejects = schema.validate(test)
    assert rejects.empty
    assert [None if pd.isna(v) else v for v in clean["c"]] == ["a", "b", None, None, "a"]
    assert test["c"].tolist()[:3] == raw[:3]
    enc = pre.transform(clean)
    # Slots: [<unknown>, a, b]; a blank is an empty block (a gap), not the unknown slot.
    assert enc.x[:, 1:].tolist() == [
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
    ]


def test_a_huge_finite_value_is_clipped_without_a_runtime_warning() -> None:
    # 1e308 in a Kafka message (a finite JSON number) printed "RuntimeWarning: overflow
    # encountered in divide" into the stream scorer's log: the column's scale is under 1.
    rng = np.random.default_rng(2)
    train = pd.DataFrame({"x": rng.normal(6, 0.3, 500)})
    schema = FeatureSchema.infer(train, ColumnsConfig())
    pre = Preprocessor.fit(schema.validate(train)[0], schema)
    assert pre.scale["x"] < 1
    test = pd.DataFrame({"x": [1e308, -1e308, 6.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = pre.transform(schema.validate(test)[0])
    assert enc.x[:, 0].tolist()[:2] == [CLIP, -CLIP]
    assert enc.observed[:, 0].tolist() == [1.0, 1.0, 1.0]


def test_categories_compare_as_text() -> None:
    train = pd.DataFrame({"c": [1, 2, 3] * 10})
    schema = FeatureSchema.infer(train, ColumnsConfig(categorical=["c"]))
    pre = Preprocessor.fit(schema.validate(train)[0], schema)
    enc = pre.transform(schema.validate(pd.DataFrame({"c": ["2", 2.0, "x"]}))[0])
    assert enc.x[0].tolist() == enc.x[1].tolist()
    assert enc.x[2, 0] == 1.0  # unknown


def test_a_list_or_dict_in_a_categorical_column_is_rejected_not_an_unknown_category() -> None:
    # A JSON array or object (a Kafka message, an API record) was read as the category
    # "['x']", unknown, so the record was flagged for a value nobody sent.
    train = pd.DataFrame({"c": ["a", "b", "c"] * 10, "x": np.arange(30.0)})
    schema = FeatureSchema.infer(train, ColumnsConfig(categorical=["c"]))
    test = pd.DataFrame({"c": [["a"], {"id": "a"}, "a", 3, None], "x": [1.0] * 5})
    clean, rejects = schema.validate(test)
    assert clean.index.tolist() == [2, 3, 4]
    assert rejects["reason"].tolist() == [
        "column 'c': ['a'] is an array, not a category (text or a number)",
        "column 'c': {'id': 'a'} is an object, not a category (text or a number)",
    ]


def test_a_column_with_values_only_past_the_inferred_rows_is_a_feature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The kinds are inferred from the first INFER_SAMPLE_ROWS rows: a sensor added later (NaN
    # before) was left out as "empty in the training data", which it was not.
    from anomaly_vae.features import INFER_SAMPLE_ROWS

    n = INFER_SAMPLE_ROWS + 50
    rng = np.random.default_rng(0)
    late = np.full(n, np.nan)
    late[-50:] = rng.normal(size=50)
    mode = np.full(n, None, dtype=object)
    mode[-50:] = ["ab"[i % 2] for i in range(50)]
    frame = pd.DataFrame({"temp": rng.normal(size=n), "late": late, "mode": mode})
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.numeric == ["temp", "late"]
    assert schema.categorical == ["mode"]
    assert "empty" not in caplog.text


def test_a_text_column_of_blanks_only_is_empty_not_a_category(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A DataFrame keeps '' as text (a CSV reads it as missing): a column of '' and 'n/a' became
    # a category whose only value was "missing", so every value there later scored as unknown.
    frame = pd.DataFrame({"temp": np.arange(40) % 7 + 20.0, "kind": ["", "n/a", " "] * 13 + [""]})
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    assert "'kind' is empty in the training data (only blank or NA text)" in caplog.text


def test_a_column_with_one_value_in_training_is_named(caplog: pytest.LogCaptureFixture) -> None:
    # One non-missing value has no spread, as a constant column: it was scaled by 1 in its own
    # units without the warning a constant column gets.
    frame = _frame()
    frame["probe"] = np.nan
    frame.loc[frame.index[0], "probe"] = 1500.0
    schema = FeatureSchema.infer(frame, ColumnsConfig(label="label"))
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        Preprocessor.fit(clean, schema)
    assert "never change in the training rows (probe=1500 in its only non-missing row)" in (
        caplog.text
    )


def test_a_period_column_is_a_time_not_a_feature(caplog: pytest.LogCaptureFixture) -> None:
    # Read as its ordinals (19723, 19724...), a day column was a numeric feature, and every
    # record of a later day lay outside anything seen in training.
    frame = _frame().assign(day=pd.period_range("2024-01-01", periods=len(_frame()), freq="D"))
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig(label="label"))
    assert "day" not in schema.names
    assert "column 'day' holds timestamps and is not used as a feature" in caplog.text


def test_training_values_past_max_categories_are_named_not_called_novel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A forced categorical column with more values than max_categories left the rarer ones to
    # the unknown category without a word at fit, and scoring one of them then said it was
    # "not among the values learned in training (a novelty)": it had been in training.
    frame = pd.DataFrame({"zone": [f"z{i % 30}" for i in range(300)] + ["rare"] * 1})
    columns = ColumnsConfig(categorical=["zone"], max_categories=10)
    schema = FeatureSchema.infer(frame, columns)
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        pre = Preprocessor.fit(clean, schema, max_categories=columns.max_categories)
    assert "column 'zone' has 31 distinct values in training; the 9 most frequent" in caplog.text
    assert "the other 22 (" in caplog.text
    caplog.clear()
    loaded = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())), schema)
    with caplog.at_level(logging.WARNING):
        loaded.transform(schema.validate(pd.DataFrame({"zone": ["rare"]}))[0])
    (warned,) = [r.getMessage() for r in caplog.records]
    assert warned == (
        "column 'zone': 'rare' not among the values learned in training, scored as the unknown "
        "category (a novelty, usually flagged); known values: 'z0', 'z1', 'z2', 'z3', 'z4', "
        "'z5', 'z6', 'z7', 'z8'. If it is a known value spelled differently, fix the input or "
        "retrain with it (or it is one of the 22 rarer training values past "
        "columns.max_categories, which share the unknown category)"
    )
    # The HTTP API's warning is the same text (Preprocessor.unseen_note), naming a field.
    assert loaded.unseen_note("zone", ["rare"], noun="field") == "field" + warned[len("column") :]
    many = loaded.unseen_note("zone", [f"v{i}" for i in range(7)])
    assert many.startswith("column 'zone': 'v0', 'v1', 'v2', 'v3', 'v4' and 2 more not among")
    older = {k: v for k, v in pre.to_dict().items() if k != "other_values"}
    assert Preprocessor.from_dict(older, schema).other_values == {}


def test_blanks_past_max_categories_are_not_called_a_value_sharing_the_unknown_category(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 9 values and a few blanks under max_categories=10: the blanks took the tenth place, were
    # cut, and fit warned that "the other 1 (3 rows, such as '<missing>') share the unknown
    # category", naming the internal marker; the blanks are gaps, filled in, not unknown.
    zone = pd.Series([f"z{i % 9}" for i in range(300)], dtype=object)
    zone[:3] = None
    frame = pd.DataFrame({"zone": zone, "temp": np.linspace(10.0, 20.0, 300)})
    columns = ColumnsConfig(categorical=["zone"], max_categories=10)
    schema = FeatureSchema.infer(frame, columns)
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        pre = Preprocessor.fit(clean, schema, max_categories=columns.max_categories)
    assert "<missing>" not in caplog.text
    assert "share the unknown category" not in caplog.text
    assert pre.other_values == {}
    encoded = pre.transform(clean)
    assert encoded.x[:3, 1:].sum() == 0  # a gap: the block stays empty, to be filled in
    # With a real value cut too, the blanks are not counted among the values cut.
    frame.loc[3, "zone"] = "rare"
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        pre = Preprocessor.fit(clean, schema, max_categories=columns.max_categories)
    assert "has 10 distinct values in training; the 9 most frequent" in caplog.text
    assert "the other 1 (1 rows, such as 'rare')" in caplog.text
    assert pre.other_values == {"zone": 1}


def test_a_time_in_a_numeric_column_is_rejected_not_read_as_nanoseconds() -> None:
    # A column parsed as dates (read_csv(parse_dates=...)) where training had numbers was read
    # as nanoseconds since 1970: every record scored ~5e7 and was flagged, 'b:1.00'.
    frame = _frame()
    schema = FeatureSchema.infer(frame, ColumnsConfig(label="label"))
    numeric = schema.numeric[0]
    export = frame.head(3).copy()
    export[numeric] = pd.to_datetime(pd.Series(["2024-01-01", None, "2024-01-03"]))
    clean, rejects = schema.validate(export)
    assert list(rejects.index) == [0, 2]
    assert rejects["reason"].iloc[0] == (
        f"column {numeric!r}: '2024-01-01 00:00:00' is a time, not a number (a numeric column "
        "in training: was the column parsed as dates?)"
    )
    assert list(clean.index) == [1]


def test_a_duration_column_is_read_as_seconds_whatever_its_resolution() -> None:
    # A timedelta column (end - start) was read in its dtype's unit: 5.4e10 at [ns], 5.4e7 at
    # [us] (pandas' default for to_timedelta), 54 at [s]. The same durations in a frame of
    # another resolution than training's were then numbers a billion times apart.
    durations = pd.to_timedelta([54, 3, 120, None], unit="s")
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]})
    schema = FeatureSchema.infer(frame.assign(wait=durations), ColumnsConfig())
    assert schema.numeric == ["a", "wait"]
    for unit in ("ns", "us", "ms", "s"):
        clean, rejects = schema.validate(
            frame.assign(wait=durations.astype(f"timedelta64[{unit}]"))
        )
        assert rejects.empty
        np.testing.assert_array_equal(clean["wait"].to_numpy(), [54.0, 3.0, 120.0, np.nan])
    arrow = pd.Series([54_000, 3_000, 120_000, None]).astype(pd.ArrowDtype(pa.duration("ms")))
    clean, rejects = schema.validate(frame.assign(wait=arrow))
    assert rejects.empty
    np.testing.assert_array_equal(clean["wait"].to_numpy(), [54.0, 3.0, 120.0, np.nan])


def test_a_column_constant_in_training_is_named(caplog: pytest.LogCaptureFixture) -> None:
    # It stayed a feature scaled by 1 in its own units, without a word: a later change of a
    # setpoint flagged every record, and nobody had been told the column never moved.
    frame = _frame().assign(setpoint=5.0)
    schema = FeatureSchema.infer(frame, ColumnsConfig(label="label"))
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        Preprocessor.fit(clean, schema)
    assert "1 numeric column(s) never change in the training rows (setpoint=5)" in caplog.text
    assert "temp" not in caplog.text


def test_a_categorical_column_with_one_value_in_training_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A numeric column that never changed was named; a text one (one site, one firmware) was
    # not, and a record with any other value there was then a novelty without a word at fit.
    frame = _frame().assign(site="north")
    schema = FeatureSchema.infer(frame, ColumnsConfig(label="label"))
    assert "site" in schema.categorical
    clean, _ = schema.validate(frame)
    with caplog.at_level(logging.WARNING):
        Preprocessor.fit(clean, schema)
    assert "1 categorical column(s) hold one value in every training row (site='north')" in (
        caplog.text
    )


def test_a_record_without_any_feature_value_is_rejected_not_invented() -> None:
    # Every feature empty or null (a JSON message of nulls, a CSV row of empty cells): filled
    # in from the training data, it was scored as a record nobody sent, and often flagged.
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {"a": rng.normal(size=60), "b": rng.normal(size=60), "mode": ["x", "y"] * 30}
    )
    schema = FeatureSchema.infer(train, ColumnsConfig())
    frame = pd.DataFrame(
        {
            "a": [np.nan, 1.0, None, "oops"],
            "b": [None, np.nan, np.nan, None],
            "mode": [None, None, "x", None],
        }
    )
    clean, rejects = schema.validate(frame)
    assert list(clean.index) == [1, 2]
    assert list(rejects.index) == [0, 3]
    assert rejects.loc[0, "reason"] == (
        "no feature has a value (all 3 are empty or null): nothing to score; check that the "
        "record carries the feature columns"
    )
    assert rejects.loc[3, "reason"] == "column 'a': 'oops' is not a number"


@pytest.mark.parametrize(
    "ids",
    [
        np.arange(1000, 1600, 3),  # gaps: every third record of a table
        np.arange(500, 300, -1),  # newest first
        np.random.default_rng(1).permutation(np.arange(7, 207)),  # shuffled
        np.where(np.arange(200) == 5, np.nan, np.arange(200.0)),  # a missing id: read as float
    ],
    ids=["gaps", "decreasing", "shuffled", "with-a-missing-value"],
)
def test_ids_that_are_not_one_contiguous_run_are_still_row_identifiers(
    ids: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # Only ids increasing by exactly 1 were recognised: an id column with gaps (rows deleted,
    # a sample, or labelled anomalies left out of training) became a numeric feature, and every
    # record of a later export (ids past the training range) scored as anomalous.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"order_id": ids, "temp": rng.normal(20, 2, len(ids))})
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    assert "'order_id' looks like a row identifier" in caplog.text


@pytest.mark.parametrize("unit", [1, 1000, 10**9])
def test_epoch_times_shared_by_several_records_are_timestamps_not_features(
    unit: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Epoch seconds (ms, ns) in time order with records sharing a time (four pumps reporting
    # at once) are not unique, so not a row id: the column was a numeric feature, and every
    # record of an export a day later was flagged, 'epoch:0.96' its top feature.
    rng = np.random.default_rng(0)
    seconds = 1_793_491_200 + 10 * (np.arange(400) // 4)
    frame = pd.DataFrame({"epoch": seconds * unit, "temp": rng.normal(20, 2, 400)})
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    assert "'epoch' looks like epoch times" in caplog.text
    assert "2026-11-01" in caplog.text


def test_unique_epoch_times_in_order_are_named_as_times_not_row_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One record a minute, each time once: unique whole numbers in order, which the row-id
    # rule took first, so the warning called the column "a row identifier" and said to list
    # it under columns.features, not to name it as columns.timestamp. Numbers that count by
    # one stay row ids, whatever their range.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "ts": 1_793_491_200 + 60 * np.arange(400),
            "record": 1_793_491_200 + np.arange(400),
            "temp": rng.normal(20, 2, 400),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    assert "'ts' looks like epoch times (numbers in time order, read as 2026-11-01" in caplog.text
    assert "'ts' looks like a row identifier" not in caplog.text
    assert "'record' looks like a row identifier" in caplog.text


def test_whole_number_measurements_stay_features() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "rpm": rng.integers(1000, 3000, 500),  # repeats, no order
            "cents": rng.permutation(np.arange(0, 50_000, 37))[:500],  # unique but sparse
            # In the range of epoch seconds, but in no order: a measurement.
            "bytes": rng.integers(1_000_000_000, 4_000_000_000, 500),
            # In order, but far from any epoch range.
            "batch": np.arange(500) // 10,
            "temp": rng.normal(20, 2, 500),
        }
    )
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.numeric == ["rpm", "cents", "bytes", "batch", "temp"]


def test_a_category_with_its_accents_in_another_unicode_form_is_the_same_category(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 'Köln' written as o and a combining diaeresis (NFD, as macOS tools may) was an unknown
    # category, scored as a novelty, with a warning naming 'Köln' among the known values,
    # the same to the eye. Either form learnt, the other is matched.
    composed, decomposed = "K\u00f6ln", "Ko\u0308ln"
    rng = np.random.default_rng(0)
    for learnt, given in ((composed, decomposed), (decomposed, composed)):
        cities = rng.choice([learnt, "Bonn"], 200)
        train = pd.DataFrame({"temp": rng.normal(20, 2, 200), "city": cities})
        schema = FeatureSchema.infer(train, ColumnsConfig())
        pre = Preprocessor.fit(schema.validate(train)[0], schema)
        same = pd.DataFrame({"temp": [20.0, 21.0], "city": [learnt, "Bonn"]})
        other = same.assign(city=[given, "Bonn"])
        with caplog.at_level(logging.WARNING):
            got = pre.transform(schema.validate(other)[0]).x
        np.testing.assert_array_equal(got, pre.transform(schema.validate(same)[0]).x)
        assert "not among the values learned" not in caplog.text


def test_a_code_read_as_a_number_is_the_category_it_was_as_text() -> None:
    # A product code column (007, 012, A12) is text in a file where some code is not a number,
    # and numbers (7, 12) in a file or chunk where all are: every record of such an export had
    # an unknown category, scored as anomalous with the code column as its top feature.
    rng = np.random.default_rng(0)
    codes = rng.choice(["007", "012", "020", "A12"], 400)
    train = pd.DataFrame({"temp": rng.normal(20, 2, 400), "product": codes})
    schema = FeatureSchema.infer(train, ColumnsConfig())
    assert schema.categorical == ["product"]
    clean, _ = schema.validate(train)
    pre = Preprocessor.fit(clean, schema)
    as_text = pd.DataFrame({"temp": [20.0, 21.0, 19.0], "product": ["007", "012", "020"]})
    from_file = pd.read_csv(io.StringIO(as_text.to_csv(index=False)))
    assert from_file["product"].tolist() == [7, 12, 20]
    for as_read in (
        from_file,
        as_text.assign(product=[7.0, 12.0, 20.0]),
        as_text.assign(product=["7", "12.0", " 20"]),
    ):
        got = pre.transform(schema.validate(as_read)[0]).x
        np.testing.assert_array_equal(got, pre.transform(schema.validate(as_text)[0]).x)
    # The reverse: categories learnt from numbers, codes given as text.
    numbers = train.assign(product=rng.choice([7, 12, 20], 400))
    schema_n = FeatureSchema.infer(numbers, ColumnsConfig(categorical=["product"]))
    pre_n = Preprocessor.fit(schema_n.validate(numbers)[0], schema_n)
    np.testing.assert_array_equal(
        pre_n.transform(schema_n.validate(as_text)[0]).x,
        pre_n.transform(schema_n.validate(as_text.assign(product=[7, 12, 20]))[0]).x,
    )
    unknown_slot = len(schema.numeric)  # the first categorical block starts with <unknown>
    other = pre.transform(schema.validate(as_text.assign(product=["99", "A13", "7x"]))[0]).x
    assert (other[:, unknown_slot] == 1.0).all()


def test_a_pandas_category_column_of_numbers_is_categorical() -> None:
    # df["zone"].astype("category") with zones 10 / 20 / 30 (or codes "01", "02") was read as
    # one numeric feature, ordered and scaled: zone 20 "between" 10 and 30, a new zone 25
    # a normal value, and 40 only mildly unusual.
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {
            "temp": rng.normal(20, 2, 300),
            "zone": pd.Categorical(rng.choice([10, 20, 30], 300)),
            "code": pd.Categorical(rng.choice(["01", "02", "03"], 300)),
        }
    )
    schema = FeatureSchema.infer(train, ColumnsConfig())
    assert schema.categorical == ["zone", "code"]
    pre = Preprocessor.fit(schema.validate(train)[0], schema)
    assert sorted(pre.categories["zone"]) == ["10", "20", "30"]
    # Scored as the plain numbers or text an export holds, a zone is the same category.
    plain = pd.DataFrame({"temp": [20.0, 20.0], "zone": [10, 30], "code": ["01", "03"]})
    np.testing.assert_array_equal(
        pre.transform(schema.validate(plain)[0]).x,
        pre.transform(schema.validate(plain.astype(train.dtypes.to_dict()))[0]).x,
    )
    unknown_slot = len(schema.numeric)
    new_zone = pre.transform(schema.validate(plain.assign(zone=[25, 40]))[0]).x
    assert (new_zone[:, unknown_slot] == 1.0).all()


def test_a_number_two_categories_stand_for_stays_unknown() -> None:
    train = pd.DataFrame({"temp": np.arange(40.0) % 7, "code": ["7", "007", "B"] * 13 + ["B"]})
    schema = FeatureSchema.infer(train, ColumnsConfig(categorical=["code"]))
    pre = Preprocessor.fit(schema.validate(train)[0], schema)
    frame = pd.DataFrame({"temp": [1.0, 1.0, 1.0], "code": ["7", "007", "7.0"]})
    x = pre.transform(schema.validate(frame)[0]).x
    block = x[:, len(schema.numeric) : len(schema.numeric) + len(pre.categories["code"]) + 1]
    assert block.argmax(axis=1).tolist()[2] == 0  # '7.0': '7' or '007'? neither
    assert block.argmax(axis=1).tolist()[0] != block.argmax(axis=1).tolist()[1]


def test_a_missing_column_that_differs_only_in_spaces_or_case_is_pointed_out() -> None:
    # "feature columns 'x ', 'Temp' missing (... columns found: 'x', 'y', 'temp')": the
    # trailing space hardly shows in the message, and the column looked present.
    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(50, 4)), columns=["x ", "y", "Temp", "Flow  rate"])
    schema = FeatureSchema.infer(train, ColumnsConfig())
    export = train.rename(columns={"x ": "x", "Temp": "temp", "Flow  rate": "flow rate"})
    with pytest.raises(SchemaError) as caught:
        schema.validate(export, source="export.csv")
    text = str(caught.value)
    assert "feature columns 'x ', 'Temp', 'Flow  rate' missing" in text
    assert "'x ' is 'x' there, 'Temp' is 'temp' there, 'Flow  rate' is 'flow rate' there" in text
    assert "names differ only in spaces or case" in text
    # No such hint for a column that is simply not there, nor one naming another feature.
    with pytest.raises(SchemaError) as caught:
        schema.validate(train.drop(columns=["y"]))
    assert "differ only" not in str(caught.value)
    both = FeatureSchema.infer(train.assign(x=1.5 * train["y"]), ColumnsConfig())
    with pytest.raises(SchemaError) as caught:
        both.validate(train.assign(x=1.0).drop(columns=["x "]))
    assert "differ only" not in str(caught.value)


def test_values_near_the_float_limit_scale_without_a_runtime_warning() -> None:
    # np.std squared 1e300: "RuntimeWarning: overflow encountered in square" was printed, with
    # numpy's source line, in the middle of 'anomaly-vae train'.
    huge = np.array([1e300, -1e300, 3e299, -2e299] * 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scale = robust_scale(huge)
        robust_scale(np.array([1e308, -1e308] * 60))
        frame = pd.DataFrame({"v": [1e308, -1e308] * 60, "w": np.arange(120.0) % 7})
        schema = FeatureSchema.infer(frame, ColumnsConfig())
        Preprocessor.fit(schema.validate(frame)[0], schema)
    assert math.isfinite(scale)
    assert scale > 1e299


def test_a_category_padded_with_spaces_is_the_category() -> None:
    # An export that pads text to its column's width ('Paris   ', as CHAR columns do) gave every
    # record the unknown category: 74 of 1,000 normal records flagged instead of 10.
    rng = np.random.default_rng(0)
    train = pd.DataFrame(
        {"temp": rng.normal(20, 2, 300), "city": rng.choice(["Paris", "New York", "Zürich"], 300)}
    )
    schema = FeatureSchema.infer(train, ColumnsConfig())
    pre = Preprocessor.fit(schema.validate(train)[0], schema)
    plain = pd.DataFrame({"temp": [20.0] * 3, "city": ["Paris", "New York", "Zürich"]})
    padded = plain.assign(city=["Paris   ", " New York", "Zürich\t"])
    np.testing.assert_array_equal(
        pre.transform(schema.validate(padded)[0]).x, pre.transform(schema.validate(plain)[0]).x
    )
    other = plain.assign(city=["paris", "New  York", "Zurich"])  # other text stays unknown
    assert (pre.transform(schema.validate(other)[0]).x[:, 1] == 1.0).all()


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("label", [0, 1]),
        ("Is Anomaly", [True, False]),
        ("anomaly", ["normal", "anomaly"]),
        ("is-outlier", [0.0, 1.0]),
        # Kaggle's credit-card fraud set: 'Class' was learnt as a feature, and on pure noise
        # the model's ROC-AUC against it was 0.9997.
        ("Class", [0, 1]),
        ("is_fraud", [0, 1]),
        ("y", [0.0, 1.0]),
    ],
)
def test_a_label_column_not_named_as_one_is_no_feature(
    name: str, values: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    # 'anomaly-vae train normal.csv' without --label-column learnt a file's 'label' column as a
    # feature: labelled records then scored high because of their label (ROC-AUC against that
    # label flattered), and an export without the column could not be scored at all.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"temp": rng.normal(20, 2, 300), name: rng.choice(np.array(values), 300)})
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["temp"]
    assert f"column {name!r} looks like a label" in caplog.text
    assert f"give --label-column {name} (columns.label)" in caplog.text


def test_columns_named_like_labels_with_other_values_or_listed_stay_features() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "temp": rng.normal(20, 2, 300),
            "label": rng.choice(["pump", "fan", "valve"], 300),  # a label of another kind
            "anomaly": rng.normal(size=300),  # a score from another system
            "flag": rng.choice([0, 1], 300),  # not a label's name
        }
    )
    assert FeatureSchema.infer(frame, ColumnsConfig()).names == ["temp", "label", "anomaly", "flag"]
    binary = frame.assign(label=rng.choice([0, 1], 300))
    listed = ColumnsConfig(features=["temp", "label"])
    assert FeatureSchema.infer(binary, listed).names == ["temp", "label"]
    assert FeatureSchema.infer(binary, ColumnsConfig(numeric=["label"])).names[1] == "label"


def test_text_ids_of_a_small_file_are_no_categories(caplog: pytest.LogCaptureFixture) -> None:
    # 40 rows with an order number each (ORD-0001...) became a categorical feature of 40 values
    # seen once: every record of the next export had an unknown id and scored as anomalous.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "order": [f"ORD-{i:04d}" for i in rng.permutation(40)],
            "shop": rng.choice(["north", "south"], 40),
            "amount": rng.normal(50, 5, 40),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["shop", "amount"]
    assert "column 'order' has a different value in each of its 40 rows" in caplog.text
    listed = FeatureSchema.infer(frame, ColumnsConfig(categorical=["order"]))
    assert listed.categorical == ["order", "shop"]
    exact = FeatureSchema.infer(frame, ColumnsConfig(features=["order", "amount"]))
    assert exact.categorical == ["order"]
    few = FeatureSchema.infer(frame.head(12), ColumnsConfig())  # too few rows to tell
    assert "order" in few.categorical


def test_text_ids_of_a_large_file_are_named_as_ids_not_sent_to_columns_categorical(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Past max_categories, a transaction id column was "has 500 distinct text values (more
    # than max_categories=50) ...; list it under columns.categorical to use it": advice to
    # make an identifier a feature. Free text (words with spaces) keeps that message.
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "txn": [f"T{i:06d}" for i in rng.permutation(500)],
            "note": [f"free text {i}" for i in range(500)],
            "amount": rng.normal(50, 5, 500),
        }
    )
    with caplog.at_level(logging.WARNING):
        schema = FeatureSchema.infer(frame, ColumnsConfig())
    assert schema.names == ["amount"]
    assert (
        "column 'txn' has a different value in each of its 500 rows, like an identifier, and "
        "is not used as a feature; name it under columns.id to keep it in the output"
    ) in caplog.text
    assert "'txn' has 500 distinct text values" not in caplog.text
    assert "'note' has 500 distinct text values" in caplog.text


def test_a_single_column_name_where_a_list_goes_is_a_list_of_one() -> None:
    # 'ignore: note' in a pipeline file was "Input should be a valid list"; a name alone
    # means that one column.
    cfg = ColumnsConfig.model_validate(
        {"ignore": "note", "id": "event_id", "categorical": "station", "features": "rpm"}
    )
    assert (cfg.ignore, cfg.id, cfg.categorical, cfg.features) == (
        ["note"],
        ["event_id"],
        ["station"],
        ["rpm"],
    )
    with pytest.raises(ValidationError):
        ColumnsConfig.model_validate({"ignore": True})  # no name (a number is: see below)


def test_a_column_named_by_a_number_can_be_named_in_the_columns_settings() -> None:
    # pd.DataFrame(array) has columns 0, 1, 2, read as "0", "1", "2"; columns={"ignore": [0]}
    # was "ignore.0: Input should be a valid string (got 0)", and a CSV header "2019" in a
    # pipeline file ("label: 2019", a number to YAML) too.
    cfg = ColumnsConfig.model_validate(
        {"ignore": [0, np.int64(1)], "features": np.array([2, 3]), "label": 2019, "id": 7}
    )
    assert (cfg.ignore, cfg.features, cfg.label, cfg.id) == (["0", "1"], ["2", "3"], "2019", ["7"])
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 4))).rename(columns=str)
    schema = FeatureSchema.infer(frame, ColumnsConfig.model_validate({"ignore": [0]}))
    assert schema.names == ["1", "2", "3"]
    window = PipelineConfig.model_validate({"window": {"size": 3, "entity": 1, "time": 2}}).window
    assert window is not None
    assert (window.entity, window.time) == ("1", "2")
    with pytest.raises(ValidationError):
        ColumnsConfig.model_validate({"label": True})


def test_a_label_cell_of_blanks_is_no_label() -> None:
    # '  ' (a CSV cell of spaces) read as 'normal' after trimming, where an empty cell is no
    # label: the same row counted as a normal one in the metrics.
    from anomaly_vae.labels import label_to_binary

    labels = pd.Series(["1", "  ", "normal", None, "anomaly"])
    out = label_to_binary(labels, name="label")
    assert out.tolist()[0] == 1
    assert out.isna().tolist() == [False, True, False, True, False]
    assert out.dropna().tolist() == [1, 0, 1]


def test_label_words_of_intrusion_and_fraud_sets_are_read() -> None:
    # CIC-IDS style labels (BENIGN / MALICIOUS) and fraud flags were refused as unknown words.
    from anomaly_vae.labels import label_to_binary

    labels = pd.Series(["BENIGN", "Malicious", " attack ", "fraud", "legitimate", "faulty"])
    assert label_to_binary(labels, name="label").tolist() == [0, 1, 1, 1, 0, 1]
    with pytest.raises(ConfigError, match=r"'DDoS' \(row 1\).*mapping to 1 / 0"):
        label_to_binary(pd.Series(["BENIGN", "DDoS"]), name="label")


@pytest.mark.parametrize(
    "change",
    ["none", "nan", "inf", "-inf", "all-missing", "huge", "object"],
)
def test_numeric_validation_in_one_pass_gives_what_the_column_pass_gives(change: str) -> None:
    """A frame of numbers only (a parsed CSV's) is validated in one 2-D pass
    (``FeatureSchema._validate_numbers``): the clean frame, the rejects and their reasons are
    those of the column-by-column pass, which a frame of another kind still takes."""
    schema = FeatureSchema([FeatureColumn("a", "numeric"), FeatureColumn("b", "numeric")])
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"b": rng.integers(0, 9, 20), "a": rng.normal(size=20), "id": [f"r{i}" for i in range(20)]},
        index=pd.RangeIndex(100, 120),
    )
    if change == "nan":
        frame.loc[103, "a"] = np.nan
    elif change in ("inf", "-inf"):
        frame.loc[104, "a"] = float(change)
    elif change == "all-missing":
        frame["b"] = frame["b"].astype("float64")
        frame.loc[105, ["a", "b"]] = np.nan
    elif change == "huge":
        frame.loc[106, "a"] = 1e308
        frame.loc[107, "a"] = -1e308
    elif change == "object":
        frame["a"] = frame["a"].astype(object)
    fast = schema._validate_numbers(frame)
    assert (fast is None) == (change in ("inf", "-inf", "all-missing", "object"))
    clean, rejects = schema.validate(frame, source="x.csv")
    column_wise = frame.astype({"a": object, "b": object})  # never the one-pass path
    assert schema._validate_numbers(column_wise) is None
    clean_cols, rejects_cols = schema.validate(column_wise, source="x.csv")
    pd.testing.assert_frame_equal(clean, clean_cols.astype("float64"))
    assert list(clean.columns) == ["a", "b"]
    assert all(dtype == np.float64 for dtype in clean.dtypes)
    pd.testing.assert_frame_equal(rejects, rejects_cols)
    if fast is not None:
        pd.testing.assert_frame_equal(fast, clean)
        assert len(rejects) == 0


def test_a_category_that_differs_only_in_case_is_named(caplog: pytest.LogCaptureFixture) -> None:
    # 'Yes' where training had 'yes' was an unknown category like any other: with more than
    # ten known values the list in the warning did not even show 'yes'.
    rng = np.random.default_rng(0)
    values = ["yes", "no", *[f"code{i}" for i in range(12)]]
    frame = pd.DataFrame({"x": rng.normal(size=140), "answer": values * 10})
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    pre = Preprocessor.fit(schema.validate(frame)[0], schema)
    with caplog.at_level(logging.WARNING):
        pre.transform(schema.validate(pd.DataFrame({"x": [1.0], "answer": ["Yes"]}))[0])
    (warned,) = [r.getMessage() for r in caplog.records if "learned in training" in r.getMessage()]
    assert warned.endswith(
        "; 'Yes' differs from the known 'yes' only in case (categories are matched exactly: "
        "write it as in training, or retrain with both)"
    )
    assert "'yes'" not in warned.split("known values:")[1].split(". If")[0]  # not listed
    # Two known values it could be ('Ab' and 'aB'): no guess.
    frame = pd.DataFrame({"x": rng.normal(size=40), "grade": ["Ab", "aB", "B", "b"] * 10})
    schema = FeatureSchema.infer(frame, ColumnsConfig())
    pre = Preprocessor.fit(schema.validate(frame)[0], schema)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        pre.transform(schema.validate(pd.DataFrame({"x": [1.0], "grade": ["AB"]}))[0])
    assert "not among the values learned" in caplog.text
    assert "only in case" not in caplog.text
