"""``serve``: the HTTP API (see ``anomaly_vae.api``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path

import typer

from anomaly_vae.cli import app, setup_logging
from anomaly_vae.cli.db import DB_HELP, PIPELINE_HELP
from anomaly_vae.errors import ConfigError

logger = logging.getLogger(__name__)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    pipeline: Path | None = typer.Option(None, "--pipeline", help=PIPELINE_HELP),
    max_replay_scores: int | None = typer.Option(
        None,
        "--max-replay-scores",
        help="The most stored scores one request replays (a threshold preview, a "
        "contamination threshold; default 2,000,000, about 1 GiB of memory); a longer "
        "period is refused with how to narrow it.",
    ),
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs). Changes need the bearer token in
    ANOMALY_VAE_API_TOKEN; without it the API is read-only."""
    setup_logging(True)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0 to 65535, got {port}")
    if max_replay_scores is not None and max_replay_scores < 1:
        raise ConfigError(f"--max-replay-scores must be >= 1, got {max_replay_scores}")
    _check_can_listen(host, port)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import uvicorn

    from anomaly_vae.api import ApiSettings, create_app
    from anomaly_vae.cli.db import database_target, opened

    settings = ApiSettings.from_environment(database_target(db, pipeline), os.environ)
    if max_replay_scores is not None:
        settings = dataclasses.replace(settings, max_replay_scores=max_replay_scores)
    with opened(settings.database) as engine:
        if not settings.read_only:
            from anomaly_vae.api import database_refuses_changes

            with engine.connect() as connection:
                refused = database_refuses_changes(connection)
            if refused:
                logger.warning(
                    "%s takes no changes: %s; writes with the token will get 503 (GET /health "
                    "says read_only)",
                    settings.database.display,
                    refused,
                )
        logger.info(
            "serving http://%s:%d (docs at /docs) on %s, %s",
            host,
            port,
            settings.database.display,
            "read-only (no ANOMALY_VAE_API_TOKEN)"
            if settings.read_only
            else "writes need the token",
        )
        # log_config=None: uvicorn's lines (start-up, shutdown, one per request) go through
        # the root logger set up above, in the format of every other line. Its own config
        # printed them as "INFO:     ..." beside "INFO anomaly_vae.api: ...": two formats in
        # one log, and the access lines named no logger to filter on.
        # uvicorn shuts down gracefully on SIGTERM / SIGINT, then raises the signal again for
        # the handler it found: Python's default, so a SIGTERM ended the process as killed by
        # it (exit status 143) and Ctrl-C as interrupted (130), where 'stream' exits 0 after
        # the same orderly stop. This handler takes the signal raised again.
        stopped: list[int] = []
        previous = {
            signum: signal.signal(signum, lambda signum, _frame: stopped.append(signum))
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            uvicorn.run(
                create_app(settings, engine),
                host=host,
                port=port,
                log_level="info",
                access_log=True,
                log_config=None,
            )
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if stopped:
        logger.info("stopped on signal %d", stopped[0])


def _check_can_listen(host: str, port: int) -> None:
    """Bind the address as the server will (address reuse on): a port in use, or a host that
    is not this machine's, is one line here rather than uvicorn's own error after start-up."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}: choose another --port or "
            "--host (or stop what listens there)"
        ) from None
