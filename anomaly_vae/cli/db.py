"""``db``, ``models``, ``anomalies`` and ``runs``: the results database from the command line.

The database URL comes from ``--db``, else ``ANOMALY_VAE_DATABASE_URL``, else the pipeline
file's ``database.url`` (``--pipeline``), else ``sqlite:///anomaly_vae.db`` in the working
directory. Every command but ``db upgrade`` / ``db downgrade`` / ``db current`` refuses a
database whose schema is not current, saying to run ``anomaly-vae db upgrade``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from anomaly_vae.cli import app, setup_logging
from anomaly_vae.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from anomaly_vae.storage.engine import DatabaseTarget

db_app = typer.Typer(help="Create, migrate and inspect the results database.", no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions.", no_args_is_help=True)
anomalies_app = typer.Typer(help="Records flagged as anomalous.", no_args_is_help=True)
runs_app = typer.Typer(help="Scoring runs (batch jobs, stream sessions).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(anomalies_app, name="anomalies")
dead_letters_app = typer.Typer(
    help="Records that could not be scored (dead letters): list, count by reason, export.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")
app.add_typer(dead_letters_app, name="dead-letters")

DB_HELP = (
    "Database URL (sqlite:///file.db or postgresql://user:password@host:5432/db); "
    "default: $ANOMALY_VAE_DATABASE_URL, else the pipeline's database.url, "
    "else sqlite:///anomaly_vae.db"
)
PIPELINE_HELP = "Pipeline YAML file whose database.url to use."
ESCAPE_FORMULAS_HELP = (
    "With --format csv: put a ' before a text value that begins with =, +, -, @, a tab or a "
    "carriage return and is not a number, so that a spreadsheet shows it as text instead of "
    "running it as a formula (entities, keys and raw records come from the data)."
)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class ReportFormat(str, Enum):
    """The reports of one threshold (show, preview, tune): a table or JSON, no CSV form."""

    table = "table"
    json = "json"


def database_target(
    db: str | None, pipeline: Path | None, *, pipeline_url: str | None = None
) -> DatabaseTarget:
    """The database URL by precedence: ``--db``, environment, pipeline file, default."""
    from anomaly_vae.config import PipelineConfig
    from anomaly_vae.storage.engine import resolve_database_url

    if pipeline is not None and pipeline_url is None:
        cfg = PipelineConfig.from_yaml(pipeline)
        pipeline_url = cfg.database.url if cfg.database else None
    return resolve_database_url(
        db, environ=os.environ, pipeline_url=pipeline_url, pipeline_path=pipeline
    )


@contextmanager
def opened(
    target: DatabaseTarget, *, check_schema: bool = True, create_missing: bool = False
) -> Iterator[Engine]:
    """An engine on a checked database; driver errors become one-line errors.
    ``create_missing``: create a SQLite file that does not exist yet (jobs that write)."""
    from sqlalchemy.exc import SQLAlchemyError

    from anomaly_vae.storage.engine import connection_error, is_driver_error, open_database

    engine = open_database(target, check_schema=check_schema, create_missing=create_missing)
    try:
        yield engine
    except SQLAlchemyError as exc:
        raise connection_error(exc, target) from None
    except Exception as exc:
        # The bulk writes use the driver's own cursor (COPY, executemany): its errors too.
        if is_driver_error(exc):
            raise connection_error(exc, target) from None
        raise
    finally:
        engine.dispose()


@contextmanager
def connected(
    target: DatabaseTarget, *, check_schema: bool = True, create_missing: bool = False
) -> Iterator[Connection]:
    """A connection to a checked database (see ``opened``)."""
    with (
        opened(target, check_schema=check_schema, create_missing=create_missing) as engine,
        engine.connect() as connection,
    ):
        yield connection


def require_model(connection: Connection, model: str | None) -> None:
    """A filter on a model name nobody registered is a one-line error naming it, not an
    empty list (which reads as a clean bill for a misspelt name)."""
    if model is not None:
        from anomaly_vae.storage import repository as repo

        repo.registered_versions(connection, name=model, hint=": see 'anomaly-vae models list'")


# Threshold versions 'models show' lists (the newest; 'thresholds history' pages the rest).
MODELS_SHOW_THRESHOLDS = 10


def require_limit(limit: int) -> None:
    if limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")


# ======================================================================== db ...
@db_app.command("upgrade")
def db_upgrade(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
    revision: str = typer.Option("head", "--revision", help="Target revision."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Create the schema, or migrate it to the latest revision."""
    setup_logging(verbose)
    from anomaly_vae.storage import migrate

    target = database_target(db, pipeline)
    with opened(target, check_schema=False) as engine:
        before, after = migrate.upgrade(engine, revision)
    if before == after and revision not in ("head", after) and after is not None:
        # Alembic does nothing when asked "up" to a revision below the current one; this
        # said "already at revision 0002" for '--revision 0001', as if 0001 were the current.
        typer.echo(
            f"{target.display}: schema at revision {after}, not below {revision}: nothing done "
            f"(to go down to it: anomaly-vae db downgrade {revision})"
        )
    elif before == after:
        typer.echo(f"{target.display}: schema already at revision {after}")
    else:
        typer.echo(f"{target.display}: schema migrated from {before or 'empty'} to {after}")


# "-1" (one step down) is a revision, not an unknown option
@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision: an id, -1, or base (drop all)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Migrate the schema down ('base' drops every table and its data)."""
    setup_logging(verbose)
    from anomaly_vae.storage import migrate
    from anomaly_vae.storage.engine import require_sqlite_file

    target = database_target(db, pipeline)
    require_sqlite_file(target)  # not an empty file left under a mistyped name
    with opened(target, check_schema=False) as engine:
        before, after = migrate.downgrade(engine, revision)
    if before is None:  # it said "migrated down from None to base"
        typer.echo(f"{target.display}: no anomaly-vae schema there: nothing to migrate down")
        return
    typer.echo(f"{target.display}: schema migrated down from {before} to {after or 'base'}")


@db_app.command("current")
def db_current(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
    check: bool = typer.Option(
        False,
        "--check",
        help="Exit with status 1 unless the schema is up to date (a deploy step's gate).",
    ),
) -> None:
    """Show the schema revision of the database and whether it is current."""
    setup_logging(False)
    from anomaly_vae.storage import migrate
    from anomaly_vae.storage.engine import require_sqlite_file, upgrade_hint

    target = database_target(db, pipeline)
    require_sqlite_file(target)  # not an empty file left under a mistyped name
    head = migrate.head_revision()
    with connected(target, check_schema=False) as connection:
        current = migrate.current_revision(connection)
    if current == head:
        state = "up to date"
    elif not migrate.is_known_revision(current):
        # Not "behind": 'db upgrade' cannot migrate a revision this version has no script for.
        state = f"newer than this anomaly-vae knows: {migrate.newer_schema_way_out()}"
    else:
        state = f"behind: run '{upgrade_hint(target)}'"
    typer.echo(f"{target.display}: revision {current or 'none'} (latest {head}): {state}")
    if check and current != head:
        raise typer.Exit(1)


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_age(text: str, option: str = "--older-than") -> timedelta:
    """A duration: a whole number and a unit, s, m, h, d or w ('30d', '12h')."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION else ""
    number = value[: -len(unit)] if unit else value
    if not unit or not number.isdigit():
        raise ConfigError(
            f"{option} {text!r} is not a duration: use a whole number and a unit, "
            "s, m, h, d or w (e.g. 30d, 12h)"
        )
    return timedelta(seconds=int(number) * _DURATION[unit])


@db_app.command("prune")
def db_prune(
    older_than: str | None = typer.Option(
        None, "--older-than", help="Delete what was written longer ago than this: 30d, 12h, 2w."
    ),
    before: str | None = typer.Option(
        None, "--before", help="Or: delete what was written before this date or time (UTC)."
    ),
    model: str | None = typer.Option(None, "--model", help="Only this model name's rows."),
    include_flagged: bool = typer.Option(
        False, "--include-flagged", help="Delete old flagged rows too (kept by default)."
    ),
    keep_dead_letters: bool = typer.Option(
        False, "--keep-dead-letters", help="Delete old score rows only, no dead letters."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; delete nothing."),
    batch: int = typer.Option(50_000, "--batch", help="Rows (ids) per transaction.", min=1),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """Delete old score rows and dead letters (retention), and alert events left unpublished in
    the alert outbox. Rows that alerts point to are always kept, and flagged rows unless
    --include-flagged; models, thresholds, alerts and runs stay."""
    setup_logging(False)
    from anomaly_vae.storage.retention import prune

    if (older_than is None) == (before is None):
        raise ConfigError("give one of --older-than (e.g. 30d) or --before (a date or time)")
    if older_than is not None:
        try:
            cutoff = datetime.now(timezone.utc) - parse_age(older_than)
        except OverflowError:  # was a traceback: "date value out of range"
            raise ConfigError(
                f"--older-than {older_than!r} reaches back before the year 1: give a shorter "
                "age, or --before DATE"
            ) from None
    else:
        cutoff = parse_since(before or "", "--before")
    target = database_target(db, pipeline)
    with connected(target) as connection:
        require_model(connection, model)
        result = prune(
            connection,
            before=cutoff,
            model_name=model,
            keep_flagged=not include_flagged,
            dead_letters=not keep_dead_letters,
            batch=batch,
            dry_run=dry_run,
        )
    verb = "would delete" if dry_run else "deleted"
    when = cutoff.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    parts = [f"{result.scores_deleted:,} score rows"]
    if not keep_dead_letters:
        parts.append(f"{result.dead_letters_deleted:,} dead letters")
    if result.outbox_deleted:  # said only when some: a scorer that never had an alerts topic
        parts.append(f"{result.outbox_deleted:,} alert events never published (alert outbox)")
    kept = "flagged or pointed to by an alert" if not include_flagged else "pointed to by an alert"
    typer.echo(
        f"{target.display}: {verb} {_and_list(parts)} written before {when}"
        f"{f' (model {model})' if model else ''}; kept {result.scores_kept:,} older score rows "
        f"({kept})"
    )
    if not dry_run and target.is_sqlite and result.scores_deleted:
        typer.echo("SQLite reuses the freed space; to shrink the file run: sqlite3 FILE 'VACUUM'")


def _and_list(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


# ==================================================================== models ...
@models_app.command("list")
def models_list(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
) -> None:
    """Registered model versions, newest first."""
    setup_logging(False)
    from anomaly_vae.storage import repository as repo

    with connected(database_target(db, pipeline)) as connection:
        rows = [row._asdict() for row in repo.list_models(connection)]
    columns = ["name", "version", "score_kind", "scores", "created_at", "registered_at", "path"]
    emit(rows, columns, fmt, empty="no models registered yet: score with --db to register one")


@models_app.command("show")
def models_show(
    name: str = typer.Argument(..., help="Model name (the pipeline's name)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """A model's versions and its threshold history (the newest version is in force)."""
    setup_logging(False)
    from anomaly_vae.storage import repository as repo
    from anomaly_vae.storage.tuning import model_in_use

    with connected(database_target(db, pipeline)) as connection:
        versions = repo.registered_versions(
            connection, name=name, hint=": see 'anomaly-vae models list'"
        )
        # The newest few: a name whose threshold a job tunes every hour has thousands.
        thresholds = repo.list_thresholds(
            connection, model_name=name, limit=MODELS_SHOW_THRESHOLDS + 1
        )
        in_use = model_in_use(connection, name=name).id
    typer.echo(f"model {name}: {len(versions)} version(s)")
    for v in versions:
        summary = v.training_summary or {}
        examples = "rows" if summary.get("windows") is None else "full windows"
        # The one thresholds policies, previews and tuning use: not always the newest
        # registered (after a rollback to an older version).
        used = "; in use (scored last)" if v.id == in_use else ""
        # As 'info' says it: the rows trained on and those held out (which 'train' counted
        # together, so "trained on 2400 rows" read as 600 of its 3000 rows lost).
        held = summary.get("rows_validation")
        held_text = f" (+{held} held out)" if held is not None else ""
        typer.echo(
            f"  version {v.version} ({v.score_kind}), trained {_text(v.created_at)} on "
            f"{summary.get('rows_train', '?')} {examples}{held_text}, registered "
            f"{_text(v.registered_at)}{used}"
        )
        typer.echo(f"    path {v.path}; calibrated threshold {v.calibration.get('threshold'):.6g}")
        features = v.feature_schema.get("columns", [])
        if features:
            names = ", ".join(f"{c.get('name')} ({c.get('kind')})" for c in features)
            typer.echo(f"    features: {names}")
    if not thresholds:
        typer.echo("thresholds: none yet")
        return
    typer.echo("thresholds (newest first; the first is in force):")
    shown = thresholds[:MODELS_SHOW_THRESHOLDS]
    for t in shown:
        critical = f", critical {t.critical:.6g}" if t.critical is not None else ""
        typer.echo(
            f"  v{t.version} {t.policy}: warning {t.warning:.6g}{critical}, "
            f"{_text(t.created_at)} by {t.created_by}: {t.reason}"
        )
    if len(thresholds) > len(shown):
        typer.echo(
            f"  (older versions: 'anomaly-vae thresholds history {name} --before-id "
            f"{shown[-1].id}')"
        )


# ================================================================= anomalies ...
@anomalies_app.command("list")
def anomalies_list(
    model: str | None = typer.Option(None, "--model", help="Only this model name."),
    since: str | None = typer.Option(
        None, "--since", help="Only records from this date or time on (YYYY-MM-DD, ISO 8601)."
    ),
    until: str | None = typer.Option(
        None, "--until", help="Only records before this date or time (YYYY-MM-DD, ISO 8601)."
    ),
    entity: str | None = typer.Option(None, "--entity", help="Only this entity."),
    before_id: int | None = typer.Option(
        None,
        "--before-id",
        help="Only the rows after this id: the next page after the last id shown.",
    ),
    limit: int = typer.Option(50, "--limit", help="At most this many rows."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    escape: bool = typer.Option(False, "--escape-formulas", help=ESCAPE_FORMULAS_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """Flagged records, newest first (by event time, else scoring time)."""
    setup_logging(False)
    from anomaly_vae.storage import repository as repo

    require_limit(limit)
    start = parse_since(since) if since else None
    end = parse_since(until, "--until") if until else None
    with connected(database_target(db, pipeline)) as connection:
        require_model(connection, model)
        rows = [
            row._asdict()
            for row in repo.list_anomalies(
                connection,
                model_name=model,
                since=start,
                until=end,
                entity=entity,
                limit=limit,
                before_id=before_id,
            )
        ]
        empty = "no anomalies found"
        if not rows and entity is not None:
            empty += entity_case_hint(connection, entity)
    columns = [
        "id",
        "time",
        "model",
        "model_version",
        "entity_key",
        "score",
        "percentile",
        "severity",
        "alert_state",
        "top_features",
        "source_key",
    ]
    emit(rows, columns, fmt, empty=empty, escape_formulas=escape)
    if fmt is OutputFormat.table and len(rows) == limit:
        typer.echo(f"(more may follow: --before-id {rows[-1]['id']} shows the next page)")


def entity_case_hint(connection: Connection, entity: str, *, alerts: bool = False) -> str:
    """For a list that ``--entity`` left empty: the keys that are ``entity`` but for case or
    spaces ('p4' asked, 'P4' stored), said after the empty line; entities match exactly."""
    from anomaly_vae.storage import repository as repo

    others = repo.entities_in_another_case(connection, entity, alerts=alerts)
    if not others:
        return ""
    return (
        f" for entity {entity!r}; the {'alerts' if alerts else 'flagged records'} hold "
        f"{', '.join(repr(o) for o in others)} (--entity matches exactly, case included)"
    )


def parse_since(text: str, option: str = "--since") -> datetime:
    """A date or ISO 8601 time (given with ``option``); without a time zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not a date or time: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[+00:00]"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# ====================================================================== runs ...
class RunKind(str, Enum):
    batch = "batch"
    stream = "stream"


class RunStatus(str, Enum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


RUN_COLUMNS = [
    "id",
    "kind",
    "status",
    "model",
    "model_version",
    "started_at",
    "finished_at",
    "rows_read",
    "rows_scored",
    "rows_flagged",
    "rows_rejected",
    "rows_inserted",
    "source",
    "error",  # why a failed run failed (the job's one-line error)
]
# What a run's row holds beyond the listing's columns (runs show, csv and json).
RUN_DETAIL_COLUMNS = [
    *RUN_COLUMNS,
    # of rows_inserted, those db prune deleted since: 'runs show' said 998 inserted of a run
    # whose rows were gone, where 'models list' counted what is left
    "rows_pruned",
    "threshold_value",
    "threshold_id",
    "lag",
    "latency_p50_ms",
    "latency_p99_ms",
    "records_per_s",
    "metrics_at",
]


@runs_app.command("list")
def runs_list(
    kind: RunKind | None = typer.Option(None, "--kind", help="Only batch or stream runs."),
    status: RunStatus | None = typer.Option(
        None, "--status", help="Only running, succeeded or failed runs."
    ),
    model: str | None = typer.Option(None, "--model", help="Only this model name."),
    before_id: int | None = typer.Option(
        None, "--before-id", help="Only runs before this id: the next page after the last shown."
    ),
    limit: int = typer.Option(20, "--limit", help="At most this many runs."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """Scoring runs, newest first, with their counts and status (csv and json: also the
    error a failed run ended with, and a stream run's last lag, latency and rate)."""
    setup_logging(False)
    from anomaly_vae.storage import repository as repo

    require_limit(limit)
    with connected(database_target(db, pipeline)) as connection:
        require_model(connection, model)
        rows = [
            row._asdict()
            for row in repo.list_runs(
                connection,
                limit=limit,
                kind=kind.value if kind else None,
                status=status.value if status else None,
                model_name=model,
                before_id=before_id,
            )
        ]
    columns = RUN_COLUMNS if fmt is OutputFormat.table else RUN_DETAIL_COLUMNS
    if fmt is OutputFormat.table:
        now = repo.utc_now()
        for row in rows:
            silent = repo.stream_run_silence(row, now)
            if silent is not None:
                row["status"] = f"running (silent {_duration_text(silent)})"
    filtered = any(v is not None for v in (kind, status, model, before_id))
    emit(rows, columns, fmt, empty="no scoring runs found" if filtered else "no scoring runs yet")


@runs_app.command("show")
def runs_show(
    run_id: int = typer.Argument(..., help="The run's id (see 'runs list')."),
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="table or json."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """One run: what it scored, with which model and threshold, its counts, how it ended
    (the error of a failed run) and a stream run's last reported lag, latency and rate."""
    setup_logging(False)
    from anomaly_vae.errors import NotFoundError
    from anomaly_vae.storage import repository as repo

    with connected(database_target(db, pipeline)) as connection:
        rows = repo.list_runs(connection, run_id=run_id, limit=1)
    if not rows:
        raise NotFoundError(f"no scoring run {run_id}: see 'anomaly-vae runs list'")
    row = rows[0]._asdict()
    if fmt is ReportFormat.json:
        typer.echo(json.dumps({c: _json(row[c]) for c in RUN_DETAIL_COLUMNS}, indent=1))
        return
    width = max(len(c) for c in RUN_DETAIL_COLUMNS)
    for c in RUN_DETAIL_COLUMNS:
        typer.echo(f"{c.ljust(width)}  {_text(row[c])}".rstrip())


# ============================================================== dead letters ...
class ExportFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"


DEAD_LETTER_COLUMNS = [
    "id",
    "rejected_at",
    "run_id",
    "run_kind",
    "model",
    "model_version",
    "source_key",
    "reason",
    "raw",
]


def _dead_letter_filter(
    connection: Connection,
    *,
    model: str | None,
    run: int | None,
    since: str | None,
    until: str | None,
    reason: str | None,
    before_id: int | None = None,
) -> Any:
    from anomaly_vae.storage.dead_letters import DeadLetterFilter

    require_model(connection, model)
    return DeadLetterFilter(
        model_name=model,
        run_id=run,
        since=parse_since(since) if since else None,
        until=parse_since(until, "--until") if until else None,
        reason=reason,
        before_id=before_id,
    )


_MODEL_OPTION = typer.Option(None, "--model", help="Only this model name.")
_RUN_OPTION = typer.Option(None, "--run", help="Only this scoring run (see 'runs list').")
_SINCE_OPTION = typer.Option(
    None, "--since", help="Only rejected from this date or time on (YYYY-MM-DD, ISO 8601)."
)
_UNTIL_OPTION = typer.Option(
    None, "--until", help="Only rejected before this date or time (YYYY-MM-DD, ISO 8601)."
)
_REASON_OPTION = typer.Option(
    None, "--reason", help="Only reasons containing this text (letter case ignored)."
)


@dead_letters_app.command("list")
def dead_letters_list(
    model: str | None = _MODEL_OPTION,
    run: int | None = _RUN_OPTION,
    since: str | None = _SINCE_OPTION,
    until: str | None = _UNTIL_OPTION,
    reason: str | None = _REASON_OPTION,
    before_id: int | None = typer.Option(
        None, "--before-id", help="Only ids below this: the next page after the last id shown."
    ),
    limit: int = typer.Option(50, "--limit", help="At most this many rows."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    escape: bool = typer.Option(False, "--escape-formulas", help=ESCAPE_FORMULAS_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """Rejected records, newest first, with the reason and the record as received (cut to
    80 characters in the table; whole in csv and json)."""
    setup_logging(False)
    from anomaly_vae.storage.dead_letters import list_dead_letters

    require_limit(limit)
    with connected(database_target(db, pipeline)) as connection:
        where = _dead_letter_filter(
            connection,
            model=model,
            run=run,
            since=since,
            until=until,
            reason=reason,
            before_id=before_id,
        )
        rows = list_dead_letters(connection, where, limit=limit)
    columns = DEAD_LETTER_COLUMNS
    if fmt is OutputFormat.table:  # cut to a line; the run's kind and model version: csv, json
        rows = [
            {**row, "raw": _cut(row["raw"], 80), "reason": _cut(row["reason"], 100)} for row in rows
        ]
        columns = [c for c in columns if c not in ("run_kind", "model_version")]
    emit(rows, columns, fmt, empty="no dead letters found", escape_formulas=escape)
    if fmt is OutputFormat.table and len(rows) == limit:
        typer.echo(f"(more may follow: --before-id {rows[-1]['id']} shows the next page)")


@dead_letters_app.command("summary")
def dead_letters_summary(
    model: str | None = _MODEL_OPTION,
    run: int | None = _RUN_OPTION,
    since: str | None = _SINCE_OPTION,
    until: str | None = _UNTIL_OPTION,
    reason: str | None = _REASON_OPTION,
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """Rejected records counted by reason, most common first. Reasons that differ only in
    the record's own value or in numbers (row, offset, byte count) count together, shown with
    one full example."""
    setup_logging(False)
    from anomaly_vae.storage.dead_letters import summarize

    with connected(database_target(db, pipeline)) as connection:
        where = _dead_letter_filter(
            connection, model=model, run=run, since=since, until=until, reason=reason
        )
        counts = summarize(connection, where)
    rows: list[dict[str, Any]] = [
        {
            "count": c.count,
            "reason": c.pattern,
            "example": c.example_reason,
            "example_source_key": c.example_source_key,
            "first_rejected_at": c.first_rejected_at,
            "last_rejected_at": c.last_rejected_at,
            "runs": ",".join(str(r) for r in c.runs),
        }
        for c in counts
    ]
    columns = list(rows[0]) if rows else ["count", "reason"]
    if fmt is OutputFormat.table:
        columns = ["count", "reason", "example_source_key", "last_rejected_at", "runs"]
        rows = [{**row, "reason": _cut(row["reason"], 100)} for row in rows]
    emit(rows, columns, fmt, empty="no dead letters found")
    if fmt is OutputFormat.table and rows:
        typer.echo(f"{sum(c.count for c in counts):,} dead letters in all")


@dead_letters_app.command("export")
def dead_letters_export(
    out: str = typer.Option(
        ..., "--out", "-o", help="File to write (- for standard output); replaced if it exists."
    ),
    model: str | None = _MODEL_OPTION,
    run: int | None = _RUN_OPTION,
    since: str | None = _SINCE_OPTION,
    until: str | None = _UNTIL_OPTION,
    reason: str | None = _REASON_OPTION,
    fmt: ExportFormat = typer.Option(
        ExportFormat.jsonl, "--format", help="jsonl (one JSON object per line) or csv."
    ),
    escape: bool = typer.Option(False, "--escape-formulas", help=ESCAPE_FORMULAS_HELP),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
) -> None:
    """Every matching rejected record, newest first, whole: for a look in other tools, or to
    fix and send again (the ``raw`` field is the record as received; Kafka messages over
    10 kB were stored cut). Reads the table a page at a time, whatever its size."""
    setup_logging(False)
    from anomaly_vae.storage.dead_letters import iter_dead_letters

    target = database_target(db, pipeline)
    written = 0
    with connected(target) as connection:
        where = _dead_letter_filter(
            connection, model=model, run=run, since=since, until=until, reason=reason
        )
        with _output(out) as stream:
            writer = csv.writer(stream, lineterminator="\n") if fmt is ExportFormat.csv else None
            if writer is not None:
                writer.writerow(DEAD_LETTER_COLUMNS)
            for row in iter_dead_letters(connection, where):
                if writer is not None:
                    writer.writerow([csv_cell(row[c], escape) for c in DEAD_LETTER_COLUMNS])
                else:
                    record = {c: _json(row[c]) for c in DEAD_LETTER_COLUMNS}
                    stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    if out != "-":
        typer.echo(f"wrote {written:,} dead letters to {out}")


@contextmanager
def _output(out: str) -> Iterator[Any]:
    """Standard output for ``-``, else the file (UTF-8), written to a temporary name and
    moved into place only when complete: a failed export leaves no half file behind."""
    if out == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out} is a directory: give a file name")
    if not path.parent.exists():
        raise ConfigError(f"--out {out}: the directory {path.parent} does not exist")
    suffix = path.suffix.lower()
    if path.name.lower().endswith((".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")):
        raise ConfigError(
            f"--out {out}: an archive (.zip, .tar) is not written; name it .jsonl or .csv, "
            "or with .gz, .bz2, .xz or .zst after that to have it compressed"
        )
    partial = path.with_name(path.name + ".partial")
    # A new file of our own ('x': O_EXCL, which never follows a link): whatever is at the
    # '.partial' name goes first. Opened as it was found, a symbolic link planted there (in
    # /tmp, say) had the export overwrite the file it pointed to.
    try:
        partial.unlink(missing_ok=True)
        raw = partial.open("xb")
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot create {partial}: {exc.strerror or exc}; "
            "write to a folder only you can write to"
        ) from None
    try:
        with raw:
            # A name ending in .gz, .bz2, .xz or .zst gets what it says (it was plain text).
            binary: Any = raw
            if suffix == ".gz":
                import gzip

                binary = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6)
            elif suffix == ".bz2":
                import bz2

                binary = bz2.BZ2File(raw, mode="wb")
            elif suffix == ".xz":
                import lzma

                binary = lzma.LZMAFile(raw, mode="wb")  # noqa: SIM115  closed with the text handle
            elif suffix == ".zst":
                import zstandard

                binary = zstandard.ZstdCompressor().stream_writer(raw, closefd=False)
            with io.TextIOWrapper(binary, encoding="utf-8", newline="") as handle:
                yield handle
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _cut(text: str | None, width: int) -> str | None:
    """One line of at most ``width`` characters, for a table cell."""
    if text is None:
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# ==================================================================== output
def emit(
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    fmt: OutputFormat,
    *,
    empty: str,
    escape_formulas: bool = False,
) -> None:
    """Rows as an aligned table, CSV or JSON on standard output. ``escape_formulas``: CSV
    text values a spreadsheet would run as formulas get a leading ``'``."""
    if fmt is OutputFormat.json:
        typer.echo(json.dumps([{c: _json(row[c]) for c in columns} for row in rows], indent=1))
        return
    if fmt is OutputFormat.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([csv_cell(row[c], escape_formulas) for c in columns])
        sys.stdout.flush()
        return
    if not rows:
        typer.echo(empty)
        return
    cells = [[_text(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + "Z"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):  # top features, written as the scores file writes them
        from anomaly_vae.features import feature_name_text

        return ";".join(f"{feature_name_text(str(pair[0]))}:{float(pair[1]):.2f}" for pair in value)
    return str(value)


def _duration_text(seconds: float) -> str:
    """``35 min``, ``5 h``, ``3 d``: how long, to the unit that reads best."""
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.0f} h"
    return f"{minutes / 1440:.0f} d"


def _json(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def csv_cell(value: Any, escape_formulas: bool = False) -> Any:
    """A value as a CSV cell; with ``escape_formulas``, text that a spreadsheet would run as a
    formula (OWASP's CSV injection list; not a number such as -5) gets a leading ``'``."""
    cell = _csv(value)
    if escape_formulas and isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(cell.strip())
        except ValueError:
            return "'" + cell
    return cell


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value
