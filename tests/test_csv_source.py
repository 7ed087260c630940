"""CsvSource on its own: row numbers, rejects and errors for files as exports write them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from anomaly_vae.config import CsvConfig
from anomaly_vae.sources.csv import CsvSource


def read_all(source: CsvSource) -> tuple[pd.DataFrame, pd.DataFrame]:
    chunks = list(source.chunks())
    return (
        pd.concat([c.frame for c in chunks]),
        pd.concat([c.rejects for c in chunks]),
    )


def test_blank_lines_do_not_shift_the_rows_of_lines_with_too_many_fields(tmp_path: Path) -> None:
    # The parser skips blank lines but counts them in its "line N": a reject after one was
    # given the next row's number, and the scored row after it the reject's.
    rows = [f"{i},{i * 1.5}" for i in range(12)]
    rows[5] += ",extra"
    rows[10] += ",x"
    lines = ["", "id,value", *rows[:3], "", "   ", *rows[3:8], "", *rows[8:]]
    path = tmp_path / "blanks.csv"
    path.write_text("\n".join(lines) + "\n\n")
    frame, rejects = read_all(CsvSource(path, chunk_size=4))
    assert rejects.index.tolist() == [5, 10]
    assert [json.loads(raw)[0] for raw in rejects["raw"]] == ["5", "10"]
    assert frame["id"].tolist() == [i for i in range(12) if i not in (5, 10)]
    assert frame.index.tolist() == frame["id"].tolist()


@pytest.mark.parametrize("sep", ["||", "", "\n", '"'])
def test_a_separator_that_is_not_one_character_is_refused(sep: str) -> None:
    # '||' was read as a regular expression that splits between every character: the error
    # was "column '|' appears twice in the header".
    with pytest.raises(ValidationError, match=r"csv\.sep must be one character"):
        CsvConfig(sep=sep)
    assert CsvConfig(sep="\t").sep == "\t"
