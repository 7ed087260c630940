"""``train``, ``score``, ``info`` and ``demo``: the core commands."""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError

from anomaly_vae.cli import app, setup_logging
from anomaly_vae.config import MODEL_NAME_MAX_CHARS, CsvConfig, PipelineConfig, WindowConfig
from anomaly_vae.errors import ConfigError, InputFileError, SchemaError

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Connection

    from anomaly_vae.estimator import AnomalyVAE
    from anomaly_vae.jobs.batch import BatchSummary, CsvRejectsWriter
    from anomaly_vae.sources.csv import CsvSource
    from anomaly_vae.storage.engine import DatabaseTarget

logger = logging.getLogger(__name__)

REPO_PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _sep(value: str | None) -> str | None:
    if value is None:
        return None
    if value == "":
        # It was taken as "not given": ',' for train, the model's separator for score, where a
        # quoting mistake in a script (--sep "$SEP" with SEP unset) deserves a word.
        raise ConfigError("--sep is empty: give the separator, e.g. --sep ';' or --sep tab")
    return "\t" if value in ("\\t", "tab", "TAB") else value


def _csv_with(
    csv: CsvConfig, *, sep: str | None, decimal: str | None, encoding: str | None = None
) -> CsvConfig:
    """``csv`` with the separator, decimal mark and text encoding given on the command line
    (None: as in ``csv``), checked together like a pipeline file's."""
    if encoding is not None:
        import codecs

        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise ConfigError(
                f"--encoding {encoding!r}: unknown text encoding (e.g. utf-8, cp1252, latin-1, "
                "utf-16)"
            ) from None
    pairs = (("sep", sep), ("decimal", decimal), ("encoding", encoding))
    changes = {name: value for name, value in pairs if value is not None}
    if not changes:
        return csv
    try:
        return CsvConfig.model_validate({**csv.model_dump(), **changes})
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        given = " ".join(f"--{name} {value!r}" for name, value in changes.items())
        raise ConfigError(f"{given}: {problem}") from None


def load_pipeline(path: Path | None, *, default_name: str = "default") -> PipelineConfig:
    """The pipeline file (or the defaults); a model it does not name is named ``default_name``
    (the model directory's name), with or without a file: two models never share the name
    'default', and with it their thresholds and results in the database."""
    # In Unicode NFC: macOS names folders in NFD ('e' and a combining accent, which is no
    # letter), and 'pumps-é' became 'pumps-e-', not the name typed later.
    default_name = unicodedata.normalize("NFC", default_name)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in default_name)
    if not safe.strip("."):  # none, or a directory named '...': no name the API can serve
        safe = "default"
    safe = safe[:MODEL_NAME_MAX_CHARS]  # a directory's name may be longer than the database's
    if path is None:
        return PipelineConfig(name=safe)
    cfg = PipelineConfig.from_yaml(path)
    if "name" not in cfg.model_fields_set:
        cfg.name = safe
    return cfg


def read_training_csv(
    path: Path,
    *,
    sep: str,
    encoding: str,
    decimal: str = ".",
    label: str = "",
    text_columns: list[str] | None = None,
    sep_given: bool = False,
) -> pd.DataFrame:
    """Read a whole training file (training needs it in memory) with the CSV source's checks;
    ``label`` names it in messages (default: the path); ``text_columns`` (ids, entity,
    timestamp) are read as text, as scoring reads them. ``sep_given``: the separator was
    given (--sep, or csv.sep in the pipeline), not the default ','; a one-column header is
    then not refused as looking otherwise separated (a ';' file of one column 'Temperatur,
    °C' over values 12,5 is one column)."""
    import pandas as pd

    from anomaly_vae.features import SEPARATOR_CANDIDATES, looks_like_data, space_table_hint
    from anomaly_vae.sources.csv import REPEATED_HEADER, CsvSource

    source = CsvSource(
        path, sep=sep, encoding=encoding, chunk_size=200_000, decimal=decimal, label=label
    )
    path = Path(source.label)
    header = source.header()
    if len(header) == 1:
        only = header[0]
        for candidate, shown in SEPARATOR_CANDIDATES:
            if candidate != sep and candidate in only and not sep_given:
                raise InputFileError(
                    f"{path}: only one column found ({only[:60]!r}); the header looks "
                    f"'{shown}'-separated: try --sep '{shown}'"
                )
        table = source.space_table() if " " in only else None
        if table == "aligned" or (table == "spaced" and not sep_given):
            raise InputFileError(
                f"{path}: only one column found ({only[:60]!r}); "
                + space_table_hint(table, "the lines look")
            )
    if looks_like_data(header):
        logger.warning(
            "%s: the first line looks like data, not column names (%s): the model's columns "
            "are named after it; give the file a header line",
            path,
            ", ".join(repr(name) for name in header[:5]) + (", ..." if len(header) > 5 else ""),
        )
    frames = []
    n_bad = n_headers = 0
    for chunk in source.chunks(text_columns=text_columns or ()):
        frames.append(chunk.frame)
        if len(chunk.rejects):
            n_bad += len(chunk.rejects)
            n_headers += int((chunk.rejects["reason"] == REPEATED_HEADER).sum())
            if n_bad == len(chunk.rejects):
                logger.warning("%s: %s (row left out)", path, chunk.rejects.iloc[0]["reason"])
    if n_bad:
        logger.warning("%s: %d malformed lines left out of training", path, n_bad)
    if not frames or sum(len(f) for f in frames) == 0:
        raise InputFileError(f"{path} has a header but no data rows: nothing to train on")
    frame = pd.concat(frames)
    # Counted with the rows rejected in the summary.
    frame.attrs[MALFORMED_LINES] = {"fields": n_bad - n_headers, "headers": n_headers}
    return frame


MALFORMED_LINES = "anomaly_vae.malformed_lines"


@app.command()
def train(
    data: Path = typer.Argument(..., help="CSV file of normal records to learn from ('-': stdin)."),
    model_dir: Path = typer.Option(..., "--model-dir", help="Directory to write the model to."),
    pipeline: Path | None = typer.Option(None, "--pipeline", help="Pipeline YAML file."),
    ignore_columns: str | None = typer.Option(
        None, "--ignore-columns", help="Comma-separated columns to leave out."
    ),
    label_column: str | None = typer.Option(
        None,
        "--label-column",
        help="Label column (1 = anomaly): never a feature; labelled "
        "anomalies are left out of training.",
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (default: sized from data)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    sep: str | None = typer.Option(None, "--sep", help="CSV separator (default ',')."),
    decimal: str | None = typer.Option(
        None, "--decimal", help="Decimal mark: '.' (default) or ',' (with --sep ';')."
    ),
    encoding: str | None = typer.Option(
        None,
        "--encoding",
        help="Text encoding of the file (default utf-8; e.g. cp1252, latin-1, utf-16); the "
        "model remembers it for scoring.",
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Train a model on normal data and save it to --model-dir."""
    setup_logging(verbose)
    from anomaly_vae.estimator import AnomalyVAE, label_to_binary
    from anomaly_vae.jobs.batch import key_columns

    _check_model_dir(model_dir)
    cfg = load_pipeline(pipeline, default_name=model_dir.resolve().name)
    if ignore_columns:
        cfg.columns.ignore = [*cfg.columns.ignore, *_split(ignore_columns)]
    if label_column:
        cfg.columns.label = label_column
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {epochs}")
        cfg.training.epochs = epochs
    if seed is not None:
        try:
            cfg.training.seed = seed
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            raise ConfigError(f"--seed {seed}: {problems}") from None
    if device:
        cfg.training.device = device
    sep_given = sep is not None or "sep" in cfg.csv.model_fields_set
    cfg.csv = _csv_with(cfg.csv, sep=_sep(sep), decimal=decimal, encoding=encoding)
    shown = _shown(data)
    with _input_file(data) as path:
        frame = read_training_csv(
            path,
            sep=cfg.csv.sep,
            encoding=cfg.csv.encoding,
            decimal=cfg.csv.decimal,
            label=str(shown),
            text_columns=key_columns(cfg),
            sep_given=sep_given,
        )
    # A misspelt label would train on the labelled anomalies without a word.
    _require_column(label_column, list(frame.columns), "--label-column", shown)
    _require_window_columns(cfg, list(frame.columns), shown)
    if cfg.columns.label and cfg.columns.label in frame:
        # Checked here too, so that an odd label value is named with the file it is in.
        label_to_binary(frame[cfg.columns.label], name=cfg.columns.label, source=str(shown))
    model = AnomalyVAE(config=cfg, verbose=_show_progress(quiet)).fit(frame)
    digest = model.save(model_dir)
    _print_training(model, shown, model_dir, digest, malformed=frame.attrs.get(MALFORMED_LINES))


def _existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else the nearest folder above it that does (what mkdir meets)."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def _check_model_dir(model_dir: Path) -> None:
    """Refuse a --model-dir that cannot be written before training, not after it."""
    import os

    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigError(
            f"--model-dir {model_dir} is a file, not a directory: give the directory to write "
            "the model to (it is created when missing)"
        )
    existing = _existing_ancestor(model_dir)
    if not existing.is_dir():
        raise ConfigError(f"--model-dir {model_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--model-dir {model_dir}: {existing} is not writable by this user: give a "
            "directory you can write to"
        )


def _require_column(name: str | None, columns: list[str], option: str, data: Path) -> None:
    """A column named on the command line must be in the file."""
    if name and name not in columns:
        shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise ConfigError(f"{option} {name!r}: {data} has no such column (columns: {shown})")


def _require_window_columns(cfg: PipelineConfig, columns: list[str], data: Path) -> None:
    """The window's entity and time columns must be in the training file (named with it)."""
    if cfg.window is None:
        return
    for what, name in (("entity", cfg.window.entity), ("time", cfg.window.time)):
        if name and name not in columns:
            listed = ", ".join(repr(c) for c in columns[:20])
            shown = listed + (", ..." if len(columns) > 20 else "")
            raise SchemaError(
                f"{data}: the window's {what} column {name!r} is missing (columns: {shown}): "
                f"add it, or remove window.{what} from the pipeline"
                + (" (one series for all records)" if what == "entity" else " (arrival order)")
            )


def _print_training(
    model: AnomalyVAE,
    data: Path,
    model_dir: Path,
    digest: str,
    *,
    malformed: dict[str, int] | None = None,
) -> None:
    """The training summary; ``malformed`` (``read_training_csv``'s count): lines of the file
    left out before the model saw the rows (it counts the rows it rejected), those with more
    or fewer fields than the header and the header line repeated."""
    s = model.training_summary_
    schema = model.schema_
    labelled = s.get("rows_labelled_anomalous", 0)
    left_out = f", {labelled} labelled anomalous rows left out" if labelled else ""
    fields, headers = (malformed or {}).get("fields", 0), (malformed or {}).get("headers", 0)
    said = []
    if fields:
        said.append(
            f"{fields} malformed line{'s' if fields > 1 else ''}: more or fewer fields than the "
            "header"
        )
    if headers:
        said.append(
            f"{headers} repeated header line{'s' if headers > 1 else ''}: files joined with "
            "their headers?"
        )
    bad_lines = f" ({'; '.join(said)})" if said else ""
    features = (
        f"{len(schema.numeric)} numeric, {len(schema.categorical)} categorical features; "
        f"{s['rows_rejected'] + fields + headers} rows rejected{bad_lines}{left_out}"
    )
    window = model.config_.window
    if window is not None:
        # Examples are windows: a row with no full window of its entity's records before it
        # (warming up, after a gap, late) trains nothing, and the counts said "rows".
        short = s["rows"] - s["rows_rejected"] - s["windows"]
        # A window of one record is full from the first record on: only a late row has none.
        causes = (
            "late"
            if window.size == 1
            else f"the first {window.size - 1} of each entity, after a gap"
            + (", after a labelled anomaly" if s["rows_labelled_anomalous"] else "")
            + ", or late"
        )
        typer.echo(
            f"trained '{model.name}' on {s['windows']} full windows of {window.size} "
            f"record{'' if window.size == 1 else 's'} from {s['rows']} rows of {data} "
            f"({features}; {short} rows without a full window: {causes})"
        )
    else:
        typer.echo(
            f"trained '{model.name}' on {s['rows_train'] + s['rows_validation']} rows of {data} "
            f"({features})"
        )
    held_out = "windows" if window is not None else "rows"
    typer.echo(
        f"{s['epochs_run']} epochs (best {s['best_epoch']}), validation loss "
        f"{s['best_val_loss']:.3f} nats, {s['seconds']:.1f} s on {s['device']}"
    )
    typer.echo(
        f"threshold {model.threshold_:.4g} ({100 * model.threshold_quantile_:g}th percentile of "
        f"{s['rows_validation']} held-out normal {held_out})"
    )
    typer.echo(f"model saved to {model_dir} (version {digest[:12]})")


@app.command()
def score(
    data: Path = typer.Argument(..., help="CSV export to score ('-': standard input)."),
    model_dir: Path = typer.Option(..., "--model-dir", help="Model directory (from train)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Output CSV (default: DATA's file name with .scores.csv, in the current directory; "
        "'-': standard output, the default for DATA '-').",
    ),
    rejects: Path | None = typer.Option(
        None, "--rejects", help="Rejected rows CSV (default: next to --out, .rejects.csv)."
    ),
    pipeline: Path | None = typer.Option(
        None,
        "--pipeline",
        help="Pipeline YAML: the sections it sets (columns, csv, alerts, database...) replace "
        "the model's, and of scoring: top_features, batch_size, num_threads and chunk_size; the "
        "model's window and other scoring settings stay.",
    ),
    sep: str | None = typer.Option(None, "--sep", help="CSV separator (default: the model's)."),
    decimal: str | None = typer.Option(
        None, "--decimal", help="Decimal mark, '.' or ',' (default: the model's)."
    ),
    encoding: str | None = typer.Option(
        None, "--encoding", help="Text encoding, e.g. utf-8, cp1252 (default: the model's)."
    ),
    label_column: str | None = typer.Option(None, "--label-column", help="Evaluate against it."),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        help="Score threshold (default: with a database, the one in force there; else the "
        "model's calibrated one).",
    ),
    chunk_size: int | None = typer.Option(
        None,
        "--chunk-size",
        help="Rows per chunk (default: scoring.chunk_size of --pipeline, else the model's).",
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    db: str | None = typer.Option(
        None,
        "--db",
        help="Write results to this database (also when $ANOMALY_VAE_DATABASE_URL or the "
        "--pipeline file's database.url is set); then CSV output only with --out.",
    ),
    escape_formulas: bool = typer.Option(
        False,
        "--escape-formulas",
        help="In the scores CSV, put a ' before a copied value (id, entity, time, label) or "
        "top_features text that begins with =, +, -, @, a tab or a carriage return and is not "
        "a number, so that a spreadsheet shows it as text instead of running it as a formula.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Score a CSV export; write one row of scores per input row (to CSV and/or a database).

    DATA '-' reads standard input; '--out -' writes the scores to standard output (then the
    summary goes to standard error)."""
    setup_logging(verbose)
    with _input_file(data) as path:
        _score_file(
            path,
            shown=_shown(data),
            model_dir=model_dir,
            out=out,
            rejects=rejects,
            pipeline=pipeline,
            sep=sep,
            decimal=decimal,
            encoding=encoding,
            label_column=label_column,
            threshold=threshold,
            chunk_size=chunk_size,
            device=device,
            db=db,
            quiet=quiet,
            escape_formulas=escape_formulas,
        )


STDIN = Path("<stdin>")


def _is_dash(path: Path | None) -> bool:
    return path is not None and str(path) == "-"


def _shown(data: Path) -> Path:
    """How messages name the input: ``<stdin>`` for ``-``."""
    return STDIN if _is_dash(data) else data


@contextlib.contextmanager
def _input_file(data: Path) -> Iterator[Path]:
    """``data`` itself, or for ``-`` standard input copied to a temporary file (removed after):
    the reader needs a file it can read twice (the header first, a rejected line's text)."""
    if not _is_dash(data):
        yield data
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="anomaly-vae-stdin-") as tmp:
        from anomaly_vae.sources.csv import compressed_suffix

        head = sys.stdin.buffer.peek(8)[:8] if hasattr(sys.stdin.buffer, "peek") else b""
        path = Path(tmp) / ("stdin" + (compressed_suffix(head) or ".csv"))
        with open(path, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle, 1 << 20)
        yield path


def _score_file(
    data: Path,
    *,
    shown: Path,
    model_dir: Path,
    out: Path | None,
    rejects: Path | None,
    pipeline: Path | None,
    sep: str | None,
    decimal: str | None,
    encoding: str | None,
    label_column: str | None,
    threshold: float | None,
    chunk_size: int | None,
    device: str | None,
    db: str | None,
    quiet: bool,
    escape_formulas: bool = False,
) -> None:
    """``score`` on a file; ``shown`` names it in messages (``<stdin>``)."""
    from anomaly_vae.estimator import AnomalyVAE
    from anomaly_vae.jobs.batch import (
        CsvRejectsWriter,
        CsvScoreWriter,
        default_rejects_path,
        score_csv,
    )
    from anomaly_vae.sources.csv import CsvSource

    model = AnomalyVAE.load(model_dir, device=device)
    # What the pipeline file does not set (its columns, its csv section...) is the model's own.
    cfg = model.config_
    if pipeline:
        file_cfg = PipelineConfig.from_yaml(pipeline)
        cfg = file_cfg.over(model.config_, source=pipeline)
        warn_trained_settings(pipeline, file_cfg, model.config_)
        _apply_scoring_section(model, file_cfg, pipeline)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    if threshold is not None and not math.isfinite(threshold):
        # nan would flag nothing, silently (every comparison with it is false)
        raise ConfigError(f"--threshold must be a finite number, got {threshold}")
    target = _score_database(db, pipeline, cfg)
    csv_out = out is not None or target is None
    stem = "stdin" if shown == STDIN else _stem(shown)
    if out is None and shown == STDIN and csv_out:
        out = Path("-")  # a filter: standard input in, standard output out
    out = out or Path(stem + ".scores.csv")
    to_stdout = _is_dash(out)
    # Scores to standard output, or to a device or pipe (/dev/null: it wrote
    # /dev/null.rejects.csv): the rejects still go to a file, in the working directory.
    special = to_stdout or (out.exists() and not out.is_file())
    rejects = rejects or default_rejects_path(Path(stem + ".scores.csv") if special else out)
    if csv_out:
        _check_outputs(data, None if to_stdout else out, rejects, model_dir)
    csv_cfg = _csv_with(cfg.csv, sep=_sep(sep), decimal=decimal, encoding=encoding)
    source = CsvSource(
        data,
        sep=csv_cfg.sep,
        encoding=csv_cfg.encoding,
        chunk_size=chunk_size or cfg.scoring.chunk_size,
        decimal=csv_cfg.decimal,
        label=str(shown),
    )
    # Check the header (and the database) before any output is created.
    header = source.header()
    model.check_columns(header, source=source.label)
    _require_column(label_column, header, "--label-column", shown)
    _warn_missing_passthrough(cfg, header, source.label, label_column=label_column)
    if target is not None:
        from anomaly_vae.cli.db import connected

        with connected(target, create_missing=True) as connection:
            summary = _score_into_database(
                connection,
                model,
                source,
                model_dir=model_dir,
                cfg=cfg,
                csv_paths=(out, rejects) if csv_out else None,
                label_column=label_column,
                threshold=threshold,
                quiet=quiet,
                target_display=target.display,
                escape_formulas=escape_formulas,
            )
        _print_summary(summary, err=to_stdout)
        return
    # Written as the export was read: its separator and decimal mark.
    score_writer = CsvScoreWriter(
        out, sep=source.sep, decimal=source.decimal, escape_formulas=escape_formulas
    )
    rejects_writer = CsvRejectsWriter(rejects, sep=source.sep)
    summary = score_csv(
        model,
        source,
        sinks=[score_writer, rejects_writer],
        passthrough=cfg.columns.passthrough(),
        label_column=label_column or cfg.columns.label,
        threshold=threshold,
        progress=_show_progress(quiet),
    )
    _add_csv_outputs(summary, out, rejects, rejects_writer)
    _print_summary(summary, err=to_stdout)


# Scoring settings that change only the output or the speed, not a score: a pipeline file given
# to `score` sets them. The others (n_samples, score_kind, importance_weighted,
# threshold_quantile) are what the model's calibration was made with.
_SCORING_AT_SCORE_TIME = ("top_features", "batch_size", "num_threads", "chunk_size")


def _apply_scoring_section(
    model: AnomalyVAE, file_cfg: PipelineConfig, source: Path, *, warn: bool = True
) -> None:
    """The ``scoring:`` settings of a pipeline file given to ``score`` or ``stream``: applied
    where they change only the output or the speed; the others stay the model's, with a
    warning that names them (they were ignored without a word: ``top_features: 1`` still
    wrote three). ``warn=False``: apply only (a scorer process whose supervisor warned)."""
    if "scoring" not in file_cfg.model_fields_set:
        return
    given = file_cfg.scoring
    own = model.config_.scoring
    named = [k for k in type(given).model_fields if k in given.model_fields_set]
    applied = {k: getattr(given, k) for k in named if k in _SCORING_AT_SCORE_TIME}
    if applied:
        model.config_ = model.config_.model_copy(update={"scoring": own.model_copy(update=applied)})
    fixed = [
        f"{k} {getattr(given, k)!r} (the model's: {getattr(own, k)!r})"
        for k in named
        if k not in applied and getattr(given, k) != getattr(own, k)
    ]
    if fixed and warn:
        logger.warning(
            "%s: scoring.%s: set when training, the model's is used; give --threshold to score "
            "at another threshold (with --db: 'anomaly-vae thresholds set'), or retrain",
            source,
            "; scoring.".join(fixed),
        )


def _check_outputs(data: Path, out: Path | None, rejects: Path, model_dir: Path) -> None:
    """The scores file (None: standard output) and the rejects file must be neither the input,
    which is still being read while they are written, nor each other, nor a file of the model
    directory; nor is the rejects file standard output (it was written to a file named '-')."""
    from anomaly_vae.artifacts import META_FILE, WEIGHTS_FILE

    if _is_dash(rejects):
        raise ConfigError(
            "--rejects -: the rejects cannot go to standard output (the scores can, with "
            "--out -); give a file name, e.g. --rejects rejects.csv"
        )
    if out is not None and out.resolve() == data.resolve():
        raise ConfigError(f"--out {out} would overwrite the input: choose another file")
    if rejects.resolve() == data.resolve():
        raise ConfigError(f"--rejects {rejects} would overwrite the input: choose another file")
    # '--out models/pumps/model.json' replaced the model's own file with the scores: the
    # model was gone ("model.json is corrupt") once the run had succeeded.
    model_files = {(model_dir / name).resolve() for name in (META_FILE, WEIGHTS_FILE)}
    for flag, path in (("--out", out), ("--rejects", rejects)):
        if path is not None and path.resolve() in model_files:
            raise ConfigError(
                f"{flag} {path} is a file of the model directory {model_dir}: writing there "
                "would destroy the model; choose another file"
            )
    if out is not None and rejects.resolve() == out.resolve():
        raise ConfigError(
            f"--rejects {rejects} is the scores file (--out): the rejects would overwrite the "
            "scores; choose another file"
        )
    from anomaly_vae.jobs.batch import check_writable

    # The rejects file is created at the first reject: a path it cannot have is said now,
    # not part way through the file.
    check_writable(rejects)


def warn_trained_settings(pipeline: Path, file_cfg: PipelineConfig, model: PipelineConfig) -> None:
    """Name the settings of a pipeline file given to ``score`` or ``stream`` that the model does
    not take: a model scores with the window it was trained with, whatever the file says, and
    under its name. (Its ``scoring:`` section: ``_apply_scoring_section``.)"""
    if "name" in file_cfg.model_fields_set and file_cfg.name != model.name:
        # Results, thresholds and alerts are kept under the name the model was trained with.
        logger.warning(
            "%s: name %r differs from the model's (%r); the model's is used (a name is set when "
            "training)",
            pipeline,
            file_cfg.name,
            model.name,
        )
    window_given = file_cfg.window
    if window_given is not None and window_given.day_first is None and model.window is not None:
        # Left null, the order of numeric dates was learned in training: no difference.
        window_given = window_given.model_copy(update={"day_first": model.window.day_first})
    if "window" in file_cfg.model_fields_set and window_given != model.window:
        # A model scores with the window it was trained with: it cannot take another.
        logger.warning(
            "%s: window %s differs from the model's (%s); the model's is used (a window is set "
            "when training)",
            pipeline,
            _window_text(file_cfg.window),
            _window_text(model.window),
        )


def _window_text(window: WindowConfig | None) -> str:
    if window is None:
        return "none"
    shown = window.model_dump(exclude_defaults=True)
    return "{" + ", ".join(f"{key}: {value}" for key, value in shown.items()) + "}"


def _warn_missing_passthrough(
    cfg: PipelineConfig, header: list[str], label: str, *, label_column: str | None = None
) -> None:
    """The pipeline's id, entity and timestamp columns are not needed to score, but without
    them the scores carry only the row number, alerts are not kept per entity and scores carry
    no event time: say so once, naming a column of the file that differs from the name only in
    spaces or case. A label column is often absent (production exports have none): said only
    when such a near name is there, as the detection metrics are then missing."""
    from anomaly_vae.features import name_key

    near = {name_key(name): name for name in header}

    def hint(name: str) -> str:
        other = near.get(name_key(name))
        return (
            f"; {other!r} is there: names differ only in spaces or case (rename the file's "
            "column, or give the name in the pipeline)"
            if other
            else ""
        )

    ids = [("id", name, "the scores carry the row number but not it") for name in cfg.columns.id]
    for what, name, loss in (
        *ids,
        ("entity", cfg.columns.entity, "alerts are not kept per entity"),
        ("timestamp", cfg.columns.timestamp, "scores carry no event time"),
    ):
        if name and name not in header:
            logger.warning(
                "%s has no %s column %r (columns.%s in the pipeline): %s%s",
                label,
                what,
                name,
                what,
                loss,
                hint(name),
            )
    wanted = label_column or cfg.columns.label
    if wanted and wanted not in header and hint(wanted):
        logger.warning(
            "%s has no label column %r: no detection metrics%s", label, wanted, hint(wanted)
        )


def _add_csv_outputs(
    summary: BatchSummary, out: Path, rejects: Path, rejects_writer: CsvRejectsWriter
) -> None:
    summary.outputs.append("the scores to standard output" if _is_dash(out) else str(out))
    if rejects_writer.count:
        summary.outputs.append(f"{rejects} ({_rejected_rows(rejects_writer.count)})")


def _rejected_rows(n: int) -> str:
    """'1 rejected row with its reason' (it said '1 rejected rows with reasons')."""
    return "1 rejected row with its reason" if n == 1 else f"{n:,} rejected rows with reasons"


def _score_database(
    db: str | None, pipeline: Path | None, cfg: PipelineConfig
) -> DatabaseTarget | None:
    """The database to write to, or None (CSV only): ``--db``, else the environment variable,
    else the pipeline file's ``database.url``."""
    import os

    from anomaly_vae.cli.db import database_target
    from anomaly_vae.storage import ENV_VAR

    pipeline_url = cfg.database.url if cfg.database else None
    if not (db or ENV_VAR in os.environ or pipeline_url):  # set but empty: refused there
        return None
    return database_target(db, pipeline, pipeline_url=pipeline_url)


def _score_into_database(
    connection: Connection,
    model: AnomalyVAE,
    source: CsvSource,
    *,
    model_dir: Path,
    cfg: PipelineConfig,
    csv_paths: tuple[Path, Path] | None,
    label_column: str | None,
    threshold: float | None,
    quiet: bool,
    target_display: str,
    escape_formulas: bool = False,
) -> BatchSummary:
    """Register the model and the run, then score chunk by chunk, one transaction each."""
    from anomaly_vae.jobs.batch import CsvRejectsWriter, CsvScoreWriter, Sink, score_csv
    from anomaly_vae.storage.repository import csv_source_key_prefix
    from anomaly_vae.storage.sink import DatabaseSink, start_batch_run

    digest = source.sha256()
    run = start_batch_run(
        connection,
        model=model,
        model_dir=model_dir,
        # A file by its absolute path; standard input as "<stdin>", not its temporary copy.
        source=source.label if source.label == str(STDIN) else str(source.path.resolve()),
        source_sha256=digest,
        threshold=threshold,
        alert_rule=cfg.alerts.model_dump() if cfg.alerts else None,
    )
    sink = DatabaseSink(
        connection,
        run=run,
        key_prefix=csv_source_key_prefix(digest),
        top_features=model.config_.scoring.top_features,
        entity_column=cfg.columns.entity,
        timestamp_column=cfg.columns.timestamp,
        day_first=None if model.config_.window is None else model.config_.window.day_first,
        source=source.label,
    )
    sinks: list[Sink] = [sink]
    rejects_writer = None
    if csv_paths is not None:
        rejects_writer = CsvRejectsWriter(csv_paths[1], sep=source.sep)
        sinks = [
            CsvScoreWriter(
                csv_paths[0],
                sep=source.sep,
                decimal=source.decimal,
                escape_formulas=escape_formulas,
            ),
            rejects_writer,
            sink,
        ]
    summary = score_csv(
        model,
        source,
        sinks=sinks,
        passthrough=cfg.columns.passthrough(),
        label_column=label_column or cfg.columns.label,
        threshold=run.threshold,
        progress=_show_progress(quiet),
    )
    sink.finish(summary)
    if csv_paths is not None and rejects_writer is not None:
        _add_csv_outputs(summary, csv_paths[0], csv_paths[1], rejects_writer)
    already = sink.written - sink.inserted
    kept = ""
    if already:
        # Rows are idempotent on their key: a re-scored record keeps what it was first given.
        kept = f" ({already} already there, kept as first scored"
        if sink.kept_with_other_flags:
            kept += (
                f": {sink.kept_with_other_flags} of them keep another is_anomaly / severity than "
                f"this run's threshold {run.threshold:.4g} gives, the one of their first "
                "scoring; stored flags are never rewritten: 'anomaly-vae thresholds preview "
                f"{model.name}' replays stored scores under the threshold in force"
            )
        kept += ")"
    dead_already = sink.dead_letters - sink.dead_letters_inserted
    summary.outputs.append(
        f"{target_display}: run {run.run_id}, {sink.inserted} score rows added"
        + kept
        + f", {sink.dead_letters_inserted} rejected rows added to dead_letters"
        + (f" ({dead_already} already there)" if dead_already else "")
        + f", {sink.alerts_opened} alerts opened (model {model.name} version {run.model_version})"
        + (
            f"; {sink.unread_times} scores without an event time (their {cfg.columns.timestamp!r} "
            "is not a time)"
            if sink.unread_times
            else ""
        )
    )
    return summary


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (
        *(f".csv{c}" for c in (".gz", ".bz2", ".zip", ".xz", ".zst")),
        *(f"{t}{c}" for t in (".csv.tar", ".tar") for c in (".gz", ".bz2", ".xz", "")),
        ".tgz",
        ".csv",
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _print_summary(summary: BatchSummary, *, err: bool = False) -> None:
    """The summary lines; to standard error when the scores go to standard output."""
    for line in summary.lines():
        typer.echo(line, err=err)


@app.command()
def info(
    model_dir: Path = typer.Option(..., "--model-dir", help="Model directory."),
) -> None:
    """Show what a model directory holds: schema, training, calibration."""
    from anomaly_vae.estimator import AnomalyVAE

    model = AnomalyVAE.load(model_dir)
    s = model.training_summary_
    typer.echo(f"model '{model.name}' version {str(model.model_hash_)[:12]} ({model_dir})")
    from anomaly_vae.features import MISSING

    def text(value: str) -> str:
        # A name or value with a line break (a header cell written with Alt+Enter) or another
        # control character is quoted: printed as it is, it split the line in two.
        return value if value.isprintable() else repr(value)

    pre = model.preprocessor_
    for col in model.schema_.columns:
        if col.name in pre.center:
            detail = (
                f" (training median {pre.center[col.name]:.6g}, scale {pre.scale[col.name]:.4g})"
            )
        elif col.name in pre.categories:
            known = [text(c) for c in pre.categories[col.name] if c != MISSING]
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            detail = f" ({len(known)} values learned: {shown})"
        else:
            detail = ""
        typer.echo(f"  feature {text(col.name)}: {col.kind}{detail}")
    examples = "rows"
    if model.config_.window is not None and s.get("windows") is not None:
        examples = f"full windows of {s.get('rows', '?')} rows"
    labelled = s.get("rows_labelled_anomalous")
    typer.echo(
        f"trained {s.get('trained_at', '?')} on {s.get('rows_train', '?')} {examples} "
        f"(+{s.get('rows_validation', '?')} held out), {s.get('epochs_run', '?')} epochs"
        + (f"; {labelled} labelled anomalous rows left out" if labelled else "")
    )
    typer.echo(
        f"score: {model.score_kind_}; threshold {model.threshold_:.4g} at quantile "
        f"{model.threshold_quantile_:g} of held-out normal scores"
    )
    for line in _pipeline_lines(model.config_):
        typer.echo(line)


def _pipeline_lines(cfg: PipelineConfig) -> list[str]:
    """What scoring with the model needs beside its features: the window, the columns the
    pipeline names, and how the CSV files are written."""
    lines = []
    window = cfg.window
    if window is not None:
        gap = f", a gap over {window.max_gap_s:g} s restarts it" if window.max_gap_s else ""
        lines.append(
            f"window: {window.size} record{'' if window.size == 1 else 's'} per "
            + (f"entity (column {window.entity!r})" if window.entity else "series (one for all)")
            + (f", in event time (column {window.time!r})" if window.time else ", arrival order")
            + f", lateness {window.lateness_s:g} s{gap}"
            + (
                ""
                if window.day_first is None
                else f", dates like 05/11/2026 read {'day' if window.day_first else 'month'} first"
            )
            + (f", encoder {cfg.model.encoder}" if cfg.model.encoder != "mlp" else "")
        )
    columns = cfg.columns
    named = [
        ("id", ", ".join(columns.id)),
        ("entity", columns.entity),
        ("timestamp", columns.timestamp),
        ("label", columns.label),
        ("ignored", ", ".join(columns.ignore)),
    ]
    shown = "; ".join(f"{what} {value}" for what, value in named if value)
    if shown:
        lines.append(f"columns: {shown}")
    lines.append(
        f"csv: sep {cfg.csv.sep!r}, decimal {cfg.csv.decimal!r}, encoding {cfg.csv.encoding!r}"
    )
    return lines


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo"), "--workdir", help="Where to write the demo files."),
    rows: int = typer.Option(20_000, "--rows", help="Normal rows to train on."),
    pipeline: Path | None = typer.Option(
        None,
        "--pipeline",
        help="Pipeline YAML file (default: pipelines/pumps.yaml, or the demo's own pipeline, "
        "written to the workdir, where there is none).",
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Fewer epochs for a quicker demo."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate example pump data, train on it, score an export with anomalies, summarise."""
    setup_logging(False)
    import pandas as pd

    from anomaly_vae.datasets import make_pump_data
    from anomaly_vae.estimator import AnomalyVAE
    from anomaly_vae.jobs.batch import CsvRejectsWriter, CsvScoreWriter, key_columns, score_csv
    from anomaly_vae.sources.csv import CsvSource

    if rows < 100:
        raise ConfigError(f"--rows must be at least 100, got {rows}")
    existing = _existing_ancestor(workdir)
    if not existing.is_dir():
        # mkdir's own "File exists (demo)" did not say that the path is a file.
        raise ConfigError(
            f"--workdir {workdir}: {existing} is a file, not a directory: give a directory for "
            "the demo's files (it is created when missing)"
        )
    pipeline = pipeline or _find_pipeline("pumps.yaml")
    if pipeline is None:
        # An installed package has no pipelines/ folder: the demo writes its own pipeline.
        from anomaly_vae.datasets import PUMP_PIPELINE_TEXT

        workdir.mkdir(parents=True, exist_ok=True)
        pipeline = workdir / "pipeline.yaml"
        pipeline.write_text(PUMP_PIPELINE_TEXT, encoding="utf-8")
        typer.echo(f"no pipelines/pumps.yaml here: wrote the demo's pipeline to {pipeline}")
    cfg = PipelineConfig.from_yaml(pipeline)
    if epochs is not None:
        cfg.training.epochs = epochs
    workdir.mkdir(parents=True, exist_ok=True)
    normal_csv, export_csv = workdir / "normal.csv", workdir / "export.csv"

    # The files are written as the pipeline's csv section says, so that it reads them back.
    def write(frame: pd.DataFrame, path: Path) -> None:
        if cfg.csv.decimal != ".":
            # to_csv writes the decimal mark only in float columns: the numbers of a column
            # that holds text too (flow, below) came out as 144.749 in a decimal-comma file,
            # which its reader rejects as ambiguous (144749?).
            frame = frame.copy()
            for name in frame.columns:
                if frame[name].dtype == "O":
                    frame[name] = [
                        str(v).replace(".", cfg.csv.decimal) if isinstance(v, float) else v
                        for v in frame[name].tolist()
                    ]
        frame.to_csv(
            path, index=False, sep=cfg.csv.sep, decimal=cfg.csv.decimal, encoding=cfg.csv.encoding
        )

    write(make_pump_data(rows, seed=1), normal_csv)
    export = make_pump_data(
        max(1000, rows // 4),
        anomaly_rate=0.03,
        seed=2,
        first_event_id=10_000_000,
        start="2026-11-20T00:00:00Z",
    )
    # A few rows as real exports have them: text where a number belongs, an infinite reading.
    export = export.astype({"flow": object})
    export.loc[[7, 500], "flow"] = ["n/a (sensor offline)", "inf"]
    write(export, export_csv)
    typer.echo(f"wrote {normal_csv} ({rows} normal rows) and {export_csv} ({len(export)} rows)")

    # The commands as a shell takes them: 'my demo/normal.csv' unquoted was two arguments.
    model_dir = str(workdir / "model")
    train_cmd = ["anomaly-vae", "train", str(normal_csv), "--model-dir", model_dir]
    typer.echo("\n$ " + shlex.join([*train_cmd, "--pipeline", str(pipeline)]))
    frame = read_training_csv(
        normal_csv,
        sep=cfg.csv.sep,
        encoding=cfg.csv.encoding,
        decimal=cfg.csv.decimal,
        text_columns=key_columns(cfg),
    )
    model = AnomalyVAE(config=cfg, verbose=_show_progress(quiet)).fit(frame)
    digest = model.save(workdir / "model")
    _print_training(
        model, normal_csv, workdir / "model", digest, malformed=frame.attrs.get(MALFORMED_LINES)
    )

    out = workdir / "scores.csv"
    rejects = workdir / "scores.rejects.csv"
    score_cmd = ["anomaly-vae", "score", str(export_csv), "--model-dir", model_dir]
    typer.echo("\n$ " + shlex.join([*score_cmd, "--out", str(out)]))
    writer = CsvRejectsWriter(rejects, sep=cfg.csv.sep)
    summary = score_csv(
        model,
        CsvSource(export_csv, sep=cfg.csv.sep, encoding=cfg.csv.encoding, decimal=cfg.csv.decimal),
        sinks=[CsvScoreWriter(out, sep=cfg.csv.sep, decimal=cfg.csv.decimal), writer],
        passthrough=cfg.columns.passthrough(),
        label_column=cfg.columns.label,
        progress=_show_progress(quiet),
    )
    summary.outputs.append(str(out))
    if writer.count:
        summary.outputs.append(f"{rejects} ({_rejected_rows(writer.count)})")
    _print_summary(summary)

    scores = pd.read_csv(out, sep=cfg.csv.sep, decimal=cfg.csv.decimal)  # as the export
    top = scores.sort_values("score", ascending=False).head(5)
    typer.echo("\nthe five most anomalous records:")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        cols = [
            c
            for c in ["row", "ts", "pump_id", "score", "percentile", "label", "top_features"]
            if c in top.columns
        ]
        typer.echo(top[cols].to_string(index=False))


def _find_pipeline(name: str) -> Path | None:
    """``pipelines/NAME`` in the working directory or in the source checkout this package runs
    from; ``None`` when neither has it (an installed package)."""
    for folder in (Path.cwd() / "pipelines", REPO_PIPELINES):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None
