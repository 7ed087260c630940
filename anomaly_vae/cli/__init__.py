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
    # kafka-python logs every connection at INFO: keep its warnings, not its chatter.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(KafkaRepeats())


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
