"""CsvSource on its own: row numbers, rejects and errors for files as exports write them."""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import zstandard
from pydantic import ValidationError

from anomaly_vae.cli.core import read_training_csv
from anomaly_vae.config import CsvConfig
from anomaly_vae.errors import InputFileError
from anomaly_vae.sources.csv import CsvSource


def read_all(source: CsvSource) -> tuple[pd.DataFrame, pd.DataFrame]:
    chunks = list(source.chunks())
    return (
        pd.concat([c.frame for c in chunks]),
        pd.concat([c.rejects for c in chunks]),
    )


def read_all_text(source: CsvSource, text: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    chunks = list(source.chunks(text_columns=text))
    return pd.concat([c.frame for c in chunks]), pd.concat([c.rejects for c in chunks])


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


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".csv.zip", ".csv.zst", ".tar", ".tar.gz"])
def test_lines_with_fewer_fields_than_the_header_are_rejected_not_padded(
    tmp_path: Path, suffix: str
) -> None:
    # The parser padded a short line with blanks, which were then scored as missing values
    # filled in: a line cut in two (an unquoted line break in a value) became two records.
    # Such a line is a reject with its fields, as one with too many fields is, whatever the
    # blank lines, quoted line breaks and chunks around it; a blank last field is no gap.
    lines = ["id,note,value,site"]
    lines += [f'{i},"a\nb",{i}.5,north' for i in range(3)]
    lines += ["3,x,3.5,", "", "4,cut", "here,4.5,south", "5,x,5.5,south,extra", "6,x", "7,x,7.5,"]
    lines += ["8,x,8.5,south,"]
    # A field over the csv module's 128 KiB limit stopped the re-reading of the lines after it.
    lines[1] = lines[1].replace('"a\nb"', '"' + "a" * 200_000 + '"')
    text = "\n".join(lines) + "\n"
    path = tmp_path / f"short{suffix}"
    if suffix == ".csv.gz":
        path.write_bytes(gzip.compress(text.encode()))
    elif suffix == ".csv.zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("short.csv", text)
    elif suffix == ".csv.zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    elif suffix.startswith(".tar"):
        # Read by pandas as the archive's one file; the raw lines were read as gzip text
        # (tar headers and all) or not at all.
        (tmp_path / "short.csv").write_text(text)
        with tarfile.open(path, "w:gz" if suffix.endswith(".gz") else "w") as archive:
            archive.add(tmp_path / "short.csv", arcname="short.csv")
    else:
        path.write_text(text)
    for chunk_size in (2, 100):
        frame, rejects = read_all(CsvSource(path, chunk_size=chunk_size))
        assert frame.index.tolist() == [0, 1, 2, 3, 8]
        assert [int(v) for v in frame["id"]] == [0, 1, 2, 3, 7]
        assert frame["site"].isna().tolist() == [False, False, False, True, True]
        assert rejects.index.tolist() == [4, 5, 6, 7, 9]
        # Lines as an editor numbers them: the two quoted line breaks above count.
        assert str(rejects.loc[4, "reason"]).startswith("line 9: expected 4 fields, saw 2")
        assert json.loads(str(rejects.loc[4, "raw"])) == ["4", "cut"]
        assert json.loads(str(rejects.loc[5, "raw"])) == ["here", "4.5", "south"]
        assert rejects.loc[6, "reason"] == "line 11: expected 4 fields, saw 5"
        assert rejects.loc[9, "reason"] == (
            "line 14: expected 4 fields, saw 5 (the extra fields are empty: a separator at the "
            "end of the line? remove it)"
        )
        assert json.loads(str(rejects.loc[7, "raw"])) == ["6", "x"]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_reject_names_the_line_an_editor_shows_after_a_header_with_line_breaks(
    tmp_path: Path, newline: str
) -> None:
    # Excel writes a header cell with a line break (Alt+Enter: "Temp<newline>(C)") in quotes.
    # The reasons named the parser's record number, "line 4" for the line an editor shows as
    # line 6, two lines off for every reject in the file; a quoted value with a line break
    # added one more to every later reject.
    lines = ['"Temp\n(C)","Flow\n(l/min)",note', "1.5,2.5,a", '2.5,3.5,"b\nc"']
    lines += ["3.5,4.5", "4.5,5.5,d,extra", "5.5,6.5,e"]
    path = tmp_path / "excel.csv"
    text = "".join(line.replace("\n", newline) + newline for line in lines)
    path.write_bytes(text.encode())
    for chunk_size in (1, 100):
        frame, rejects = read_all(CsvSource(path, chunk_size=chunk_size))
        assert frame.index.tolist() == [0, 1, 4]
        assert rejects.index.tolist() == [2, 3]
        assert str(rejects.loc[2, "reason"]).startswith("line 7: expected 3 fields, saw 2")
        assert rejects.loc[3, "reason"] == "line 8: expected 3 fields, saw 4"


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_quote_never_closed_is_named_by_its_line_and_data_row(
    tmp_path: Path, suffix: str
) -> None:
    # The run stopped with the parser's "EOF inside string starting at row 7": its count of
    # records from 0, blank lines counted, a quoted line break not, which is neither the data
    # row (4) of the scores file nor the line (9) an editor shows.
    lines = ["id,note,value", "", '0,"a\nb",1.5', "1,x,2.5", "", "2,y,3.5", "3,z,4.5"]
    lines += ['4,"never closed,5.5', "5,w,6.5", "6,v,7.5"]
    text = "\n".join(lines) + "\n"
    path = tmp_path / f"quote{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix == ".csv.gz" else text.encode())
    with pytest.raises(InputFileError) as error:
        read_all(CsvSource(path, chunk_size=2))
    assert str(error.value) == (
        f'{path}: a quote (") opened on line 9 (data row 4) is never closed, so the rest of the '
        'file reads as one value: close it, or write a quote inside a value as two ("")'
    )
    header = tmp_path / "header.csv"
    header.write_text('id,"note,value\n0,a,1.5\n')
    with pytest.raises(InputFileError, match=r"opened in the header \(line 1\) is never closed"):
        CsvSource(header).header()


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 7])
def test_a_line_with_too_many_fields_after_the_last_chunk_is_still_a_reject(
    tmp_path: Path, chunk_size: int
) -> None:
    # The parser reports such a line in the call that reads past it: after the rows of the
    # last chunk that call has no rows, and the line was lost without a word ("5 rows read"
    # of 6), with --chunk-size 1 or 2 wherever the line was at a chunk's end.
    path = tmp_path / "long.csv"
    rows = [f"{i},{i}.5,north" for i in range(6)]
    rows[2] += ",extra"
    rows[5] += ",x,y"
    path.write_text("id,value,site\n" + "\n".join(rows) + "\n")
    frame, rejects = read_all(CsvSource(path, chunk_size=chunk_size))
    assert frame.index.tolist() == [0, 1, 3, 4]
    assert rejects.index.tolist() == [2, 5]
    assert json.loads(str(rejects.loc[5, "raw"])) == ["5", "5.5", "north", "x", "y"]


@pytest.mark.parametrize("sep", [",", ";"])
def test_an_excel_separator_hint_before_the_header_is_named(tmp_path: Path, sep: str) -> None:
    # "sep=;" (a line some tools write for Excel) was read as the header, and the error said
    # the first data line had more fields than it: "fix or remove that line", the wrong one.
    path = tmp_path / "hint.csv"
    path.write_text(f"sep={sep}\r\nid{sep}temp\r\n0{sep}1\r\n")
    with pytest.raises(InputFileError, match=rf"hint\.csv: the first line is 'sep={sep}', a "):
        CsvSource(path, sep=sep).header()
    with pytest.raises(InputFileError, match=f"remove that line .*--sep '{sep}'"):
        list(CsvSource(path, sep="," if sep == ";" else ";").chunks())


def test_a_semicolon_export_with_decimal_commas_read_with_commas_gets_the_separator_hint(
    tmp_path: Path,
) -> None:
    # Excel's German export read with the default ',': the header is one column and the first
    # data line, split at its decimal commas, longer; the error blamed that line.
    path = tmp_path / "excel.csv"
    path.write_text("id;temp;site\r\n0;20,5;north\r\n1;21,0;south\r\n")
    with pytest.raises(InputFileError, match=r"it looks ';'-separated: try --sep ';' \(and --dec"):
        CsvSource(path).header()


def test_a_semicolon_export_whose_header_names_hold_commas_is_not_read_with_commas(
    tmp_path: Path,
) -> None:
    # "Temperatur, °C;Druck, bar;Pumpe" over "20,94;986,0;P0": split at ',', the header and
    # every line had three fields, so the file was read without an error, its columns cut at
    # the decimal commas ('Temperatur' holding 20, '°C;Druck' holding '94;986'), and a model
    # was trained on them.
    path = tmp_path / "excel.csv"
    lines = ["Temperatur, °C;Druck, bar;Pumpe"]
    lines += [f"{20 + i % 3},{i % 10};{1000 + i},5;P{i % 2}" for i in range(30)]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    with pytest.raises(
        InputFileError,
        match=r"excel\.csv: the file looks ';'-separated, not ','-separated \(split at ';', "
        r"each line .*try --sep ';' \(and --decimal ','",
    ):
        CsvSource(path).header()
    with pytest.raises(InputFileError, match="looks ';'-separated"):
        list(CsvSource(path).chunks())
    frame, rejects = read_all(CsvSource(path, sep=";", decimal=","))
    assert frame.columns.tolist() == ["Temperatur, °C", "Druck, bar", "Pumpe"]
    assert frame["Druck, bar"].iloc[1] == 1001.5
    assert rejects.empty


def test_the_checks_read_the_start_of_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The separator check sampled the first lines split at ',', again at ';', and once more
    # for decimal commas; the header below a title, JSON and a space-aligned table each read
    # them again: up to five readings of the same lines.
    import anomaly_vae.sources.csv as csv_module

    path = tmp_path / "excel.csv"
    lines = ["Temperatur, °C;Druck, bar;Pumpe"]
    lines += [f"{20 + i % 3},{i % 10};{1000 + i},5;P{i % 2}" for i in range(30)]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    opened: list[Path] = []
    opener = csv_module._text_opener

    def counting(target: Path) -> object:
        open_text = opener(target)

        def open_counted(*args: object, **kwargs: object) -> object:
            opened.append(target)
            return open_text(*args, **kwargs)

        return open_counted

    monkeypatch.setattr(csv_module, "_text_opener", counting)
    source = CsvSource(path)
    with pytest.raises(InputFileError, match="looks ';'-separated"):
        source.header()
    assert source.space_table() is None
    assert len(opened) == 1


@pytest.mark.parametrize(("sep", "shown"), [("\t", "\\t"), ("|", "|")])
def test_a_file_whose_header_name_holds_a_comma_gets_its_own_separator_hint(
    tmp_path: Path, sep: str, shown: str
) -> None:
    # A tab- (or '|'-) separated file with "Flow, l/s" in its header, read with ',': the
    # header had two fields, every data line one; each row was rejected ("expected 2 fields,
    # saw 1") and training said the file had "a header but no data rows".
    path = tmp_path / "export.txt"
    path.write_text(
        f"id{sep}Flow, l/s{sep}site\n" + "".join(f"{i}{sep}{i}.5{sep}P1\n" for i in range(5))
    )
    with pytest.raises(
        InputFileError,
        match=rf"the file looks '{re.escape(shown)}'-separated, not ','-separated \(split at ',', "
        rf"no data line has the header's 2 fields; split at '{re.escape(shown)}', every line "
        rf"has 3\): try --sep '{re.escape(shown)}'$",
    ):
        CsvSource(path).header()
    assert CsvSource(path, sep=sep).header() == ["id", "Flow, l/s", "site"]


def test_a_comma_file_with_other_separators_in_its_values_is_read_as_it_is(
    tmp_path: Path,
) -> None:
    # No hint where the file's own separator splits every line as the header: a name with a
    # ';' or a '|' and values holding them stay a ',' file.
    path = tmp_path / "tags.csv"
    path.write_text(
        "id,tags;labels,ratio|pct\n"
        + "".join(f"{i},a;b,{i}|{i}\n" for i in range(5))
        + "".join(f'{i},"1,5;2,5",0\n' for i in range(5, 8))
    )
    assert CsvSource(path).header() == ["id", "tags;labels", "ratio|pct"]
    frame, rejects = read_all(CsvSource(path))
    assert len(frame) == 8
    assert rejects.empty


@pytest.mark.parametrize("order", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_named_with_the_encoding_to_give(
    tmp_path: Path, order: str
) -> None:
    # SQL Server's 'bcp -w' writes UTF-16 with no byte order mark: "is not a CSV text file
    # (it holds binary data)", nothing of the encoding.
    path = tmp_path / "bcp.csv"
    path.write_bytes("id,temp,site\n0,20.5,Köln\n1,21.0,Bonn\n".encode(order))
    with pytest.raises(
        InputFileError,
        match=rf"bcp\.csv looks like UTF-16 text without a byte order mark, not utf-8: give "
        rf"--encoding {order} \(csv\.encoding: {order} in a pipeline\)$",
    ):
        CsvSource(path).header()
    frame, rejects = read_all(CsvSource(path, encoding=order))
    assert frame["site"].tolist() == ["Köln", "Bonn"]
    assert rejects.empty
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"id,temp\n\x00\x01\x02\x00\x00\x00" * 20)
    with pytest.raises(InputFileError, match=r"it holds binary data"):
        CsvSource(binary).header()


def test_key_columns_keep_words_that_other_columns_read_as_missing(tmp_path: Path) -> None:
    # An id 'NA' (or 'null', a pump named 'None') was copied as an empty cell, and a windowed
    # model rejected its records for a missing entity; the rejects' raw values said null.
    path = tmp_path / "keys.csv"
    path.write_text("id,pump,value,note\nNA,None,NA,NA\nnull,P1,1.5,x\n,N/A,2.5,null\n007,,n/a,\n")
    frame, _ = read_all_text(CsvSource(path, chunk_size=2), ["id", "pump"])
    assert frame["id"].tolist()[:2] == ["NA", "null"]
    assert pd.isna(frame["id"].iloc[2])
    assert frame["id"].iloc[3] == "007"
    assert frame["pump"].tolist()[:3] == ["None", "P1", "N/A"]
    assert pd.isna(frame["pump"].iloc[3])
    assert frame["value"].isna().tolist() == [True, False, False, True]
    assert frame["note"].isna().tolist() == [True, False, True, True]


def test_a_header_ending_with_a_separator_needs_no_last_field(tmp_path: Path) -> None:
    # "a,b,c," over "1,2,3": the empty name at the end is the separator's, not a column the
    # lines left out; a line shorter than the named columns is still a reject.
    path = tmp_path / "header.csv"
    path.write_text("id,temp,site,\n0,20.5,north\n1,21.0\n2,19.5,south,\n")
    frame, rejects = read_all(CsvSource(path))
    assert frame["id"].tolist() == [0, 2]
    assert rejects.index.tolist() == [1]
    assert str(rejects.loc[1, "reason"]).startswith("line 3: expected 3 fields, saw 2")


def test_a_comma_as_both_separator_and_decimal_mark_says_to_give_the_decimal_point() -> None:
    # A model trained on a ';' export with decimal commas keeps decimal ',': scoring a
    # ','-separated export with --sep ',' (what the missing-column error suggests) was refused
    # with only "a decimal-comma export is usually ';'-separated", nothing about --decimal '.'.
    with pytest.raises(ValidationError, match=r"both ','.*decimal: '\.', --decimal '\.'"):
        CsvConfig(sep=",", decimal=",")


@pytest.mark.parametrize("sep", ["||", "", "\n", '"'])
def test_a_separator_that_is_not_one_character_is_refused(sep: str) -> None:
    # '||' was read as a regular expression that splits between every character: the error
    # was "column '|' appears twice in the header".
    with pytest.raises(ValidationError, match=r"csv\.sep must be one character"):
        CsvConfig(sep=sep)
    assert CsvConfig(sep="\t").sep == "\t"


@pytest.mark.parametrize(
    ("above", "first"),
    [
        ("Report generated 2026-11-01\n\n", "'Report generated 2026-11-01') has 1 field"),
        ("# exported by SCADA v2\n# plant 3, line 2\n", "'# exported by SCADA v2') has 1 field"),
        ("Exported by SCADA, v2\n", "'Exported by SCADA, v2') has 2 fields"),
    ],
)
def test_a_title_or_comment_lines_above_the_header_are_named_not_the_header(
    tmp_path: Path, above: str, first: str
) -> None:
    # The error said "the first data line has more fields than the header (1 columns): fix or
    # remove that line", and that line was the header itself.
    path = tmp_path / "report.csv"
    lines = "".join(f"{i},{20 + i / 10},north\n" for i in range(5))
    path.write_text(above + "id,temp,site\n" + lines)
    header_line = above.count("\n") + 1
    message = (
        rf"report\.csv: line 1 \({re.escape(first)}, and the lines from line {header_line} on "
        rf"3: is the header line {header_line} \('id,temp,site'\), below a title or comment "
        r"lines\? remove the lines above it$"
    )
    with pytest.raises(InputFileError, match=message):
        CsvSource(path).header()
    with pytest.raises(InputFileError, match=message):
        list(CsvSource(path).chunks())
    path.write_text("id,temp,site\n" + lines)
    assert CsvSource(path).header() == ["id", "temp", "site"]


@pytest.mark.parametrize(
    ("text", "kind", "call"),
    [
        (
            '{"temp": 19.7, "site": "a,b"}\n{"temp": 18.2, "site": "c"}\n',
            "JSON lines",
            "lines=True",
        ),
        ('[{"temp": 19.7, "site": "a"},\n {"temp": 18.2, "site": "c"}]\n', "a JSON document", ""),
        ('[\n  {\n    "temp": 19.7\n  }\n]\n', "a JSON document", ""),
    ],
)
def test_a_json_file_is_named_as_json_not_read_as_csv(
    tmp_path: Path, text: str, kind: str, call: str
) -> None:
    # JSON lines read as CSV: '{"temp": 19.7' was a column, ' "site": "a' another, and a model
    # was trained on them (one categorical feature of garbage, "model saved").
    path = tmp_path / "records.json"
    path.write_text(text)
    with pytest.raises(InputFileError, match=rf"records\.json is {kind}.*, not CSV text") as raised:
        CsvSource(path).header()
    assert f"pd.read_json(FILE{', ' + call if call else ''}).to_csv(OUT" in str(raised.value)
    with pytest.raises(InputFileError, match="not CSV text"):
        read_training_csv(path, sep=",", encoding="utf-8")


def test_a_file_separated_or_aligned_by_spaces_is_named_as_such(tmp_path: Path) -> None:
    # Read with ',', the header was one column 'temp pressure site' of text values, and
    # training said "no feature columns left after leaving out ids, labels and ignored
    # columns", nothing of the separator.
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("temp pressure site\n" + "".join(f"{i}.5 10{i}.0 north\n" for i in range(5)))
    with pytest.raises(InputFileError, match=r"the lines look separated by spaces: try --sep ' '$"):
        read_training_csv(spaced, sep=",", encoding="utf-8")
    assert CsvSource(spaced, sep=" ").header() == ["temp", "pressure", "site"]
    aligned = tmp_path / "aligned.txt"
    aligned.write_text(
        "  temp  pressure  site\n" + "".join(f"{i}.50    100{i}.0  north\n" for i in range(5))
    )
    with pytest.raises(InputFileError, match="a table with its columns aligned by spaces, not C"):
        read_training_csv(aligned, sep=",", encoding="utf-8")
    # A file of one column whose name holds a space is one.
    single = tmp_path / "single.csv"
    single.write_text("flow rate\n" + "".join(f"{i}.5\n" for i in range(12)))
    assert len(read_training_csv(single, sep=",", encoding="utf-8")) == 12


def test_a_one_column_header_over_lines_split_at_commas_in_values_is_no_title_line(
    tmp_path: Path,
) -> None:
    # The title-line rule needs a header of names over a column of numbers: a space-separated
    # file whose values hold a comma ("$1,911.37") has lines of two runs of text under ','.
    path = tmp_path / "report.txt"
    path.write_text("id amount site\n" + "".join(f"{i} $1,{i}11.37 north\n" for i in range(5)))
    with pytest.raises(InputFileError) as raised:
        CsvSource(path).header()
    assert "title" not in str(raised.value)


def test_a_first_data_line_with_too_many_fields_is_refused_not_taken_for_an_index(
    tmp_path: Path,
) -> None:
    # pandas made the first column the index of the whole file: every column shifted by one
    # (the ids read as temperatures...), and later lines with too many fields were kept.
    path = tmp_path / "first.csv"
    path.write_text("id,temp,site\n0,20.5,north,extra\n1,21.0,south\n2,19.5,north,x\n")
    with pytest.raises(InputFileError, match=r"first\.csv: the first data line has more fields"):
        CsvSource(path).header()
    with pytest.raises(InputFileError, match="fix or remove that line"):
        list(CsvSource(path).chunks())
    # Further down, such a line is a reject and the columns stay where they are.
    path.write_text("id,temp,site\n0,20.5,north\n1,21.0,south,extra\n2,19.5,north\n")
    frame, rejects = read_all(CsvSource(path))
    assert frame.to_dict("list") == {"id": [0, 2], "temp": [20.5, 19.5], "site": ["north"] * 2}
    assert rejects.index.tolist() == [1]


def test_data_lines_ending_with_a_separator_the_header_lacks_keep_their_columns(
    tmp_path: Path,
) -> None:
    # "1,2,3," under "a,b,c" (some exporters end every data line with the separator): the
    # first column became the index and every value moved one column to the left. A value in
    # that last place further down (z) is past the header, and left out like the empty ones.
    path = tmp_path / "trailing.csv"
    path.write_bytes(
        b"id,temp,site\r\n0,20.5,north,\r\n1,21.0,south,\r\n2,19.5,north,x,y\r\n3,18.0,east,z\r\n"
    )
    source = CsvSource(path, chunk_size=2)
    assert source.header() == ["id", "temp", "site"]
    frame, rejects = read_all(source)
    assert frame.to_dict("list") == {
        "id": [0, 1, 3],
        "temp": [20.5, 21.0, 18.0],
        "site": ["north", "south", "east"],
    }
    assert frame.index.tolist() == [0, 1, 3]
    assert rejects.index.tolist() == [2]


def test_parquet_and_excel_files_are_named_not_called_binary_data(tmp_path: Path) -> None:
    # A Parquet file was "not a CSV text file (it holds binary data)", and an Excel workbook
    # (a zip archive) was told to be renamed .csv.zip, which then failed to read as a CSV.
    import zipfile

    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    parquet = tmp_path / "export.parquet"
    frame.to_parquet(parquet)
    workbook = tmp_path / "export.xlsx"
    with zipfile.ZipFile(workbook, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    for path, kind in ((parquet, "a Parquet file"), (workbook, "an Excel workbook (.xlsx)")):
        with pytest.raises(InputFileError) as caught:
            CsvSource(path).header()
        assert str(caught.value).startswith(f"{path} is {kind}, not CSV text: ")
        assert "save it as CSV" in str(caught.value)


@pytest.mark.parametrize("encoding", ["klingon", "base64", "rot13"])
def test_a_pipeline_csv_encoding_that_is_no_text_encoding_is_refused_as_a_setting(
    encoding: str,
) -> None:
    # 'csv: {encoding: klingon}' passed; the error came when the data file was opened, naming
    # the data file ("unknown text encoding 'klingon' for normal.csv"), not the pipeline setting;
    # 'base64' reached the reader and failed there.
    with pytest.raises(ValidationError, match=f"csv.encoding '{encoding}' is not a text encoding"):
        CsvConfig(encoding=encoding)
    assert CsvConfig(encoding="cp1252").encoding == "cp1252"
    assert CsvConfig(encoding="UTF-16").encoding == "UTF-16"


@pytest.mark.parametrize("name", ["scores.csv", "scores.csv.gz"])
def test_a_scores_file_is_put_in_place_only_when_the_run_succeeds(
    pump_model: tuple[object, Path], tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A run that fails part way left a scores file under the name asked for, holding the
    first chunks and nothing to say it was incomplete; now they stay in NAME.partial."""
    from anomaly_vae.datasets import make_pump_data
    from anomaly_vae.jobs.batch import CsvScoreWriter, ScoredChunk, score_csv

    model, _ = pump_model
    data = tmp_path / "export.csv"
    make_pump_data(100, seed=3).to_csv(data, index=False)

    class FailsOnSecondChunk:
        def __init__(self) -> None:
            self.chunks = 0

        def write(self, chunk: ScoredChunk) -> None:
            self.chunks += 1
            if self.chunks == 2:
                raise OSError("disk full (simulated)")

        def close(self) -> None:
            pass

    out = tmp_path / name
    with pytest.raises(OSError, match="disk full"):
        score_csv(
            model,  # type: ignore[arg-type]
            CsvSource(data, chunk_size=30),
            sinks=[CsvScoreWriter(out), FailsOnSecondChunk()],
        )
    assert not out.exists()
    partial = tmp_path / f"{name}.partial"
    # The chunks written before the failure, compressed as the name asked for says.
    written = pd.read_csv(partial, compression="gzip" if name.endswith(".gz") else None)
    assert len(written) in (30, 60)
    assert f"are in {partial}" in caplog.text
    summary = score_csv(
        model,  # type: ignore[arg-type]
        CsvSource(data, chunk_size=30),
        sinks=[CsvScoreWriter(out)],
    )
    assert summary.rows_scored == len(pd.read_csv(out)) == 100
    assert not partial.exists()


def test_a_scores_file_that_is_a_pipe_or_a_link_is_written_in_place(
    pump_model: tuple[object, Path], tmp_path: Path
) -> None:
    """Only a regular file is written under '.partial' and renamed: the rename replaced what
    was there, so '--out /dev/null' (run as root) turned /dev/null into a file. A named pipe
    and a symbolic link stay what they are."""
    import os
    import stat
    import threading

    from anomaly_vae.datasets import make_pump_data
    from anomaly_vae.jobs.batch import CsvScoreWriter, score_csv

    model, _ = pump_model
    data = tmp_path / "export.csv"
    make_pump_data(50, seed=4).to_csv(data, index=False)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()
    score_csv(model, CsvSource(data), sinks=[CsvScoreWriter(pipe)])  # type: ignore[arg-type]
    reader.join(30)
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert received[0].count(b"\n") == 51  # header and 50 rows
    assert not (tmp_path / "pipe.partial").exists()
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    score_csv(model, CsvSource(data), sinks=[CsvScoreWriter(link)])  # type: ignore[arg-type]
    assert link.is_symlink()
    assert len(pd.read_csv(target)) == 50


def test_a_link_planted_at_the_partial_name_is_not_written_through(
    pump_model: tuple[object, Path], tmp_path: Path
) -> None:
    from anomaly_vae.datasets import make_pump_data
    from anomaly_vae.jobs.batch import CsvScoreWriter, score_csv

    model, _ = pump_model
    data = tmp_path / "export.csv"
    make_pump_data(20, seed=5).to_csv(data, index=False)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (tmp_path / "scores.csv.partial").symlink_to(victim)
    out = tmp_path / "scores.csv"
    score_csv(model, CsvSource(data), sinks=[CsvScoreWriter(out)])  # type: ignore[arg-type]
    assert victim.read_text() == "keep me\n"
    assert len(pd.read_csv(out)) == 20


def test_a_hard_link_planted_at_the_partial_name_is_not_written_through(
    pump_model: tuple[object, Path], tmp_path: Path
) -> None:
    # Only a symbolic link at NAME.partial was removed: a hard link to another file there
    # (a folder others can write to; the file theirs or, where the system lets them link
    # it, anyone's) was opened for writing as found, and the scores replaced that file's
    # content. The partial file is created new now, whatever was at its name.
    from anomaly_vae.datasets import make_pump_data
    from anomaly_vae.jobs.batch import CsvScoreWriter, score_csv

    model, _ = pump_model
    data = tmp_path / "export.csv"
    make_pump_data(20, seed=5).to_csv(data, index=False)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    for name in ("scores.csv", "scores.csv.gz"):
        os.link(victim, tmp_path / f"{name}.partial")
        out = tmp_path / name
        score_csv(model, CsvSource(data), sinks=[CsvScoreWriter(out)])  # type: ignore[arg-type]
        assert victim.read_text() == "keep me\n"
        assert len(pd.read_csv(out)) == 20


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_utf8_file_with_a_byte_order_mark_is_read_as_utf8_whatever_the_encoding_given(
    tmp_path: Path, suffix: str
) -> None:
    # Excel's "CSV UTF-8" starts the file with a byte order mark. Read with the cp1252 a model
    # trained on older exports remembers, the mark became part of the first column's name
    # ('ï»¿temp': "feature column 'temp' missing") and every accented value mojibake ('SÃ¼d',
    # an unknown category, flagged). The mark says the file is UTF-8.
    text = "temp,station\n1.5,Süd\n2.5,Nörd\n3.5\n"
    data = b"\xef\xbb\xbf" + text.encode("utf-8")
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    source = CsvSource(path, encoding="cp1252")
    assert source.header() == ["temp", "station"]
    frame, rejects = read_all(source)
    assert frame["station"].tolist() == ["Süd", "Nörd"]
    assert frame["temp"].tolist() == [1.5, 2.5]
    assert json.loads(rejects["raw"].iloc[0]) == ["3.5"]
    # Without a mark, cp1252 is read as cp1252.
    plain = tmp_path / "plain.csv"
    plain.write_bytes(text.encode("cp1252"))
    frame, _ = read_all(CsvSource(plain, encoding="cp1252"))
    assert frame["station"].tolist() == ["Süd", "Nörd"]


def test_a_scores_file_takes_the_exports_separator_and_decimal_mark(
    pump_model: tuple[object, object], tmp_path: Path
) -> None:
    # A ';' export with decimal commas got its scores as ',' and '0.25': the spreadsheet that
    # wrote the export opened them as one column of text. The score columns (nan and inf too)
    # are written with the export's mark, on both paths of the writer (pyarrow, and pandas
    # for a column pyarrow cannot type); text columns are written as they are.
    import numpy as np

    from anomaly_vae.jobs.batch import CsvRejectsWriter, CsvScoreWriter

    class Chunk:
        def __init__(self, output: pd.DataFrame) -> None:
            self.output = output
            self.rejects = pd.DataFrame(
                {"reason": ["'x;y' is not a number"], "raw": ["1;x;y"]},
                index=pd.Index([7], name="row"),
            )

    scores = pd.DataFrame(
        {
            "row": [0, 1, 2],
            "id": ["a.1", "b,2", "c"],
            "score": [0.25, np.nan, np.inf],
            "recon_error": [1.5, 2.0, 1e-7],
            "percentile": [12.5, 50.0, 99.75],
            "is_anomaly": [False, False, True],
            "top_features": ["temp:0.61;flow:0.30", "", "temp:1.00"],
        }
    )
    mixed = scores.assign(id=pd.Series(["a.1", 2, b"c"], dtype=object))  # pandas' path
    for name, frame in (("arrow", scores), ("pandas", mixed)):
        out = tmp_path / f"{name}.csv"
        writer = CsvScoreWriter(out, sep=";", decimal=",")
        writer.write(Chunk(frame))  # type: ignore[arg-type]
        writer.close()
        back = pd.read_csv(out, sep=";", decimal=",")
        assert back["score"].iloc[0] == 0.25, name
        assert np.isnan(back["score"].iloc[1]), name
        assert back["score"].iloc[2] == np.inf, name
        assert back["percentile"].tolist() == [12.5, 50.0, 99.75], name
        assert back["recon_error"].tolist() == [1.5, 2.0, 1e-7], name
        assert back["top_features"].iloc[0] == "temp:0.61;flow:0.30", name
        assert str(back["id"].iloc[0]) == "a.1", name
        assert "0,25" in out.read_text(), name
        assert "0.25" not in out.read_text(), name
    rejects = tmp_path / "rejects.csv"
    writer_r = CsvRejectsWriter(rejects, sep=";")
    writer_r.write(Chunk(scores))  # type: ignore[arg-type]
    writer_r.close()
    assert pd.read_csv(rejects, sep=";").to_dict("records") == [
        {"row": 7, "reason": "'x;y' is not a number", "raw": "1;x;y"}
    ]
    with pytest.raises(ValueError, match="cannot also be the separator"):
        CsvScoreWriter(tmp_path / "x.csv", sep=",", decimal=",")


def test_a_point_that_may_be_a_thousands_separator_is_marked_in_a_decimal_comma_file(
    tmp_path: Path,
) -> None:
    # With --decimal ',', '.' is usually the thousands separator: '122.456' may be 122456,
    # and was read as 122.456 in silence. It is kept as its text, marked as ambiguous (a
    # numeric feature rejects it); what can be read one way only still reads.
    from anomaly_vae.features import AmbiguousNumber

    path = tmp_path / "comma.csv"
    cells = ["1.234,5", "122.456", "1.5", "1e3", "1,5", "0.456", "1234.567", "-9.000", "n/a"]
    path.write_text("id;flow\n" + "".join(f"{i};{v}\n" for i, v in enumerate(cells)))
    frame, rejects = read_all(CsvSource(path, sep=";", decimal=","))
    assert rejects.empty
    read = dict(zip(cells, frame["flow"].tolist(), strict=True))
    assert [v for v in cells if isinstance(read[v], AmbiguousNumber)] == ["122.456", "-9.000"]
    assert read["122.456"] == "122.456"  # the text as written
    assert read["1e3"] == 1000.0
    assert read["1,5"] == 1.5
    # Plain text, as before: the features read 1.5, 0.456 and 1234.567, and reject 1.234,5.
    assert [type(read[v]) for v in ("1.5", "1.234,5", "0.456", "1234.567")] == [str] * 4
    # A file whose decimal mark is '.': nothing is ambiguous.
    dot = tmp_path / "dot.csv"
    dot.write_text("id;flow\n0;122.456\n1;n/a\n")
    frame, _ = read_all(CsvSource(dot, sep=";"))
    assert not any(isinstance(v, AmbiguousNumber) for v in frame["flow"].tolist())


@pytest.mark.parametrize("chunk_size", [3, 100])
def test_a_header_line_repeated_in_the_data_is_one_reject_saying_so(
    tmp_path: Path, chunk_size: int
) -> None:
    # Two exports joined with their headers ('cat a.csv b.csv'): the second header was a row
    # rejected as 'not a number' in every column, and it left its chunk's numeric columns as
    # text (an id column of whole numbers was then trained on as a feature).
    lines = ["id,site,value,note"] + [f"{i},north,{i}.25,x{i}" for i in range(4)]
    lines += ["id,site,value,note"] + [f"{i},south,{i}.5," for i in range(4, 8)]
    joined, alone = tmp_path / "joined.csv", tmp_path / "alone.csv"
    joined.write_text("\n".join(lines) + "\n")
    alone.write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    frame, rejects = read_all(CsvSource(joined, chunk_size=chunk_size))
    assert rejects.index.tolist() == [4]
    assert str(rejects.loc[4, "reason"]).startswith("the header line again, not a record")
    assert json.loads(str(rejects.loc[4, "raw"])) == ["id", "site", "value", "note"]
    assert frame.index.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]  # the file's data row numbers
    expected, _ = read_all(CsvSource(alone, chunk_size=chunk_size))
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected.reset_index(drop=True))
    # A row that only starts like the header is a record as before; text columns stay text.
    lines[5] = "id,site,7.75,note"
    joined.write_text("\n".join(lines) + "\n")
    frame, rejects = read_all_text(CsvSource(joined, chunk_size=chunk_size), ["id"])
    assert rejects.empty
    assert frame.loc[4, "value"] == 7.75
    assert frame["id"].tolist()[4] == "id"
