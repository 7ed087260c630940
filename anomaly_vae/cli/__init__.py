"""The ``anomaly-vae`` command.

Each group of commands lives in its own module and registers itself on ``app``. Errors a user
can cause (``AnomalyVAEError``) are printed as one line, with exit status 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from anomaly_vae.errors import AnomalyVAEError

app = typer.Typer(
    name="anomaly-vae",
    help="Anomaly detection for tabular and sensor data with variational autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_USER_ERROR = 2


def _version(value: bool) -> None:
    if value:
        from anomaly_vae._version import __version__

        typer.echo(f"anomaly-vae {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Anomaly detection for tabular and sensor data with variational autoencoders."""


def setup_logging(verbose: bool = False, *, prefix: str = "") -> None:
    """Log lines to stderr; ``prefix`` starts each one (a scorer process's ``[i/N] ``)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=prefix.replace("%", "%%") + "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # A level an earlier command of this process set (serve quiets alembic) does not carry
    # over to this one: a --verbose stream run after an in-process serve showed no alembic line.
    logging.getLogger("alembic").setLevel(logging.NOTSET)
    # kafka-python logs every connection at INFO: keep its warnings, not its chatter.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # ... but one of its INFO lines says records were skipped: raised to a warning.
    fetcher = logging.getLogger("kafka.consumer.fetcher")
    fetcher.setLevel(logging.INFO)
    for old in [f for f in fetcher.filters if isinstance(f, OffsetOutOfRange)]:
        fetcher.removeFilter(old)
    fetcher.addFilter(OffsetOutOfRange())
    for handler in logging.getLogger().handlers:
        handler.addFilter(KafkaRepeats())


class OffsetOutOfRange(logging.Filter):
    """kafka-python's fetcher, at INFO: only its line saying a fetch offset is out of range,
    as a WARNING that says what it means. A group's committed offset that retention deleted
    before the records were scored is reset by ``auto_offset_reset`` (earliest: the oldest
    record still held), and the deleted records are never scored: that was said at INFO, under
    the level kept for kafka-python, so the skip went without a word."""

    TEMPLATE = "Fetch offset %s is out of range for topic-partition %s"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.msg != self.TEMPLATE:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (
            self.TEMPLATE + ": the group's committed offset is no longer in the partition "
            "(retention deleted the records before they were scored, or the topic was created "
            "again); reading goes on where kafka.auto_offset_reset says, and records deleted "
            "were not scored"
        )
        return True


class KafkaRepeats(logging.Filter):
    """Lets through one line of each kind (the same message template) from kafka-python per
    ``hold_s`` seconds. While a broker is down it logs five ERROR and WARNING lines per retry,
    a few a second, which buried the scorer's own line saying what it does about it; the first
    of each kind still shows, with a word that the repeats are held back."""

    def __init__(self, hold_s: float = 60.0) -> None:
        super().__init__()
        self.hold_s = hold_s
        self.last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == "kafka" or record.name.startswith("kafka.")):
            return True
        key = (record.name, record.msg)
        last = self.last.get(key)
        if last is not None and record.created - last < self.hold_s:
            return False
        self.last[key] = record.created
        note = f" (kafka-python; repeats of this line held back for {self.hold_s:g} s)"
        if isinstance(record.msg, str) and not record.msg.endswith(note):
            record.msg += note
        return True


# The command line as given to ``main``: what ``stream --processes N`` starts each child with.
ARGV: list[str] = []


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    from anomaly_vae.jobs.processes import child_label

    # A scorer started by `stream --processes N` says which one it is, as its log lines do.
    label = child_label()
    prefix = f"[{label}] " if label else ""
    try:
        app(args=argv, prog_name="anomaly-vae")
    except AnomalyVAEError as exc:
        typer.echo(f"{prefix}error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        typer.echo(f"{prefix}error: {exc.strerror or exc}{where}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        typer.echo(f"{prefix}interrupted", err=True)
        sys.exit(130)


# Command modules register themselves on ``app``; imported last, after ``app`` exists.
from anomaly_vae.cli import core, db, serve, stream, thresholds  # noqa: E402, F401
