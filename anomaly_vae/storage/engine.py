"""Database URLs, engines and the checks made before anything is read or written.

Where the URL comes from, first found wins: ``--db``, the ``ANOMALY_VAE_DATABASE_URL``
environment variable, the pipeline file's ``database.url``, else ``sqlite:///anomaly_vae.db`` in
the working directory. ``postgresql://`` and ``postgres://`` URLs use the psycopg 3 driver.

A URL is never shown with its password: every message and log line uses :func:`masked`.
Connection problems become one :class:`DatabaseConnectionError` line naming the host.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from anomaly_vae.errors import DatabaseConnectionError, DatabaseURLError, SchemaVersionError
from anomaly_vae.storage import ENV_VAR

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///anomaly_vae.db"
CONNECT_TIMEOUT_S = 10
SQLITE_BUSY_TIMEOUT_MS = 30_000

_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
# libpq also takes a password as a query parameter: ...?password=... (or sslpassword, the
# client key's passphrase).
_SECRET_QUERY_KEYS = ("password", "sslpassword")
_PASSWORD_IN_QUERY = re.compile(
    rf"([?&](?:{'|'.join(_SECRET_QUERY_KEYS)})=)[^&#\s]*", re.IGNORECASE
)


@dataclass(frozen=True)
class DatabaseTarget:
    """A parsed database URL and where it came from (for messages)."""

    url: URL
    origin: str

    @property
    def display(self) -> str:
        return masked(self.url)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def where(self) -> str:
        """The host (and port) or file, for messages."""
        if self.is_sqlite:
            return self.url.database or ":memory:"
        host = self.url.host or "localhost"
        return f"{host}:{self.url.port or 5432}"


def masked(url: URL | str) -> str:
    """The URL as text with its password (after the user name, or as a ``password`` or
    ``sslpassword`` query parameter) replaced by ``***``."""
    if isinstance(url, URL):
        text = url.render_as_string(hide_password=True)
    else:
        text = _mask_userinfo(url)
    return _PASSWORD_IN_QUERY.sub(r"\1***", text)


def _mask_userinfo(text: str) -> str:
    """``text`` (a URL that may not parse) with everything between the first ':' after the
    scheme (the end of the user name) and the LAST '@' replaced by ``***``: a password may hold
    spaces, '/', ':' or an unescaped '@', and a user name a '/' (a typo). Where the query holds
    an '@', more than the password is hidden, which a message can afford."""
    scheme = text.find("://")
    start = scheme + 3 if scheme >= 0 else 0
    at = text.rfind("@")
    colon = text.find(":", start, at) if at > start else -1
    if colon < 0:
        return text
    return f"{text[: colon + 1]}***{text[at:]}"


def resolve_database_url(
    cli_url: str | None,
    *,
    environ: Mapping[str, str],
    pipeline_url: str | None = None,
    pipeline_path: Path | str | None = None,
) -> DatabaseTarget:
    """Pick the URL by precedence (``--db``, environment, pipeline file, default) and parse it."""
    if cli_url:
        return DatabaseTarget(parse_database_url(cli_url, origin="--db"), "--db")
    if ENV_VAR in environ and not environ[ENV_VAR].strip():
        # Set, but to nothing (a secret that was not injected, a template left empty): the
        # default SQLite file in the working directory took its place without a word, and a
        # stream scorer wrote there and committed its offsets.
        fallback = "the pipeline file's database.url" if pipeline_url else DEFAULT_URL
        raise DatabaseURLError(
            f"{ENV_VAR} is set but empty: set it to the database URL (e.g. "
            f"postgresql://user:password@host:5432/anomalies), or unset it to use {fallback}"
        )
    if environ.get(ENV_VAR):
        return DatabaseTarget(parse_database_url(environ[ENV_VAR], origin=ENV_VAR), ENV_VAR)
    if pipeline_url:
        origin = f"{PIPELINE_ORIGIN}{pipeline_path}" if pipeline_path else "the pipeline"
        return DatabaseTarget(parse_database_url(pipeline_url, origin=origin), origin)
    return DatabaseTarget(parse_database_url(DEFAULT_URL, origin="default"), "default")


def parse_database_url(text: str, *, origin: str = "--db") -> URL:
    """Parse a URL; ``postgresql://`` maps to psycopg 3. Raises ``DatabaseURLError``."""
    shown = masked(text.strip())
    try:
        url = make_url(text.strip())
    except (ArgumentError, ValueError) as exc:
        why = "a port must be a number" if isinstance(exc, ValueError) else "not a URL"
        raise DatabaseURLError(
            f"malformed database URL {shown!r} (from {origin}): {why}; expected "
            "sqlite:///path/to/file.db or postgresql://user:password@host:5432/database"
        ) from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise DatabaseURLError(
            f"unsupported database {url.drivername!r} in {masked(url)!r} (from {origin}): "
            "anomaly-vae stores results in SQLite (sqlite:///file.db) or PostgreSQL "
            "(postgresql://user:password@host:5432/database)"
        )
    if "@" in (url.host or "") or (driver != "sqlite" and "@" in (url.database or "")):
        # The password (or user name) holds an unescaped '@' (or the user name a '/'): the
        # text after it would be taken as the host or the database, and shown in messages
        # (postgresql://bob:pa@ss/word@host/db: host 'ss', database 'word@host/db').
        raise DatabaseURLError(
            f"malformed database URL {shown!r} (from {origin}): an '@' in the user name or "
            "password must be written %40 (and a '/' in the user name %2F), e.g. postgresql://user:pa%40ss@host:5432/database"
        )
    url = url.set(drivername=driver)
    if driver == "sqlite" and url.database in (None, "", ":memory:"):
        # An in-memory database is gone when the command ends: 'db upgrade' "migrated" it,
        # and every later command found no schema there and said to run 'db upgrade'.
        raise DatabaseURLError(
            f"database URL {masked(url)!r} (from {origin}) names no SQLite file: give one, e.g. "
            "sqlite:///results.db (relative) or sqlite:////var/lib/anomaly-vae/results.db "
            "(absolute); an in-memory database would be gone when the command ends"
        )
    if driver.startswith("postgresql") and not url.database:
        raise DatabaseURLError(
            f"database URL {masked(url)!r} (from {origin}) names no database: "
            "add one after the host, e.g. postgresql://user@host:5432/anomalies"
        )
    return url


PIPELINE_ORIGIN = "pipeline file "


def upgrade_hint(target: DatabaseTarget) -> str:
    """The command that creates or migrates ``target``: with ``--db`` (the password masked) when
    that is where its URL came from, with ``--pipeline FILE`` when a pipeline file named it.
    Without the file, the command as said ('anomaly-vae db upgrade') created the default
    anomaly_vae.db beside it and left the pipeline's database as it was. The URL or path is
    quoted for the shell where it needs it: 'sqlite:///dir with spaces/a.db' pasted as it was
    gave ``db upgrade`` three arguments."""
    import shlex

    if target.origin == "--db":
        return f"anomaly-vae db upgrade --db {shlex.quote(target.display)}"
    if target.origin.startswith(PIPELINE_ORIGIN):
        path = target.origin.removeprefix(PIPELINE_ORIGIN)
        return f"anomaly-vae db upgrade --pipeline {shlex.quote(path)}"
    if target.origin not in (ENV_VAR, "default"):  # a pipeline built in code: its URL
        return f"anomaly-vae db upgrade --db {shlex.quote(target.display)}"
    return "anomaly-vae db upgrade"


def create_database_engine(url: URL) -> Engine:
    """An engine for ``url``; SQLite files get WAL, foreign keys and a busy timeout."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "anomaly-vae"},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (the list commands, an API) work while a scorer writes; NORMAL
    # synchronous is durable across application crashes in WAL mode and much faster than FULL.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def open_database(
    target: DatabaseTarget, *, check_schema: bool = True, create_missing: bool = False
) -> Engine:
    """Build the engine, connect once (clear errors), and check the schema is current.

    ``create_missing``: a SQLite file that does not exist yet is created at the latest schema
    (what a job that writes results wants: SQLite needs no set-up). Without it, a missing file
    is an error that says how to create it (a command that only reads has nothing to read).
    """
    if target.is_sqlite and target.url.database not in (None, "", ":memory:"):
        path = Path(target.url.database).expanduser().resolve()
        say_relative_sqlite(target, path)
        if not path.parent.is_dir():
            raise DatabaseConnectionError(
                f"cannot open the SQLite database {target.url.database}: folder {path.parent} "
                "does not exist"
            )
        if check_schema and not path.exists():
            if not create_missing:  # say so, rather than leave an empty file
                require_sqlite_file(target)
            _create_sqlite(target)
    engine = create_database_engine(target.url)
    try:
        with engine.connect() as connection:
            if check_schema:
                from anomaly_vae.storage.migrate import require_current_schema

                require_current_schema(connection, target)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise connection_error(exc, target) from None
    except BaseException:
        engine.dispose()
        raise
    logger.info("using database %s (from %s)", target.display, target.origin)
    return engine


def say_relative_sqlite(target: DatabaseTarget, path: Path) -> None:
    """One line naming the file a relative SQLite URL opens, ``path`` (``sqlite:///scores.db``
    is relative to the working directory, wherever the URL was written: a pipeline file's
    ``database.url`` too, not the pipeline file's folder). A warning when the URL came from a
    pipeline file or the environment, written once and read from other directories (a cron
    job, a service: another file, silently); else (``--db`` typed where it runs, the
    documented default) an info line, shown with ``-v``."""
    if Path(str(target.url.database)).expanduser().is_absolute():
        return
    piped = target.origin.startswith(PIPELINE_ORIGIN)
    logger.log(
        logging.WARNING if piped or target.origin == ENV_VAR else logging.INFO,
        "SQLite database %s (from %s) is a relative path: opening %s, relative to the working "
        "directory %s%s; write an absolute path (sqlite:///%s) to open the same file from any "
        "directory",
        target.display,
        target.origin,
        path,
        Path.cwd(),
        ", not to the pipeline file's folder" if piped else "",
        path,
    )


def require_sqlite_file(target: DatabaseTarget) -> None:
    """Refuse a SQLite URL whose file does not exist, saying how to create it: connecting
    would leave an empty file under that name (a typo'd path among them)."""
    if not target.is_sqlite or target.url.database in (None, "", ":memory:"):
        return
    if not Path(str(target.url.database)).expanduser().exists():
        raise SchemaVersionError(
            f"there is no database file {target.url.database} yet: "
            f"run '{upgrade_hint(target)}' to create it"
        )


def _create_sqlite(target: DatabaseTarget) -> None:
    """Create the SQLite file at the latest schema, safe against other processes creating it
    at the same moment (``stream --processes N`` starts N at once): the schema is built in a
    file of this process's own, which then takes the database's name only if no other process
    got there first (a hard link, which never replaces a file). The database's name therefore
    never holds a half-migrated file, and the loser simply uses the winner's."""
    from anomaly_vae.storage.migrate import upgrade

    path = Path(str(target.url.database)).expanduser().resolve()
    building = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.creating")
    engine = create_database_engine(target.url.set(database=str(building)))
    try:
        try:
            upgrade(engine)
        except SQLAlchemyError as exc:
            raise connection_error(exc, target) from None
        finally:
            engine.dispose()  # the last connection closed: the WAL is checkpointed into it
        try:
            os.link(building, path)
        except FileExistsError:
            return  # another process created it meanwhile: use theirs
        except OSError:  # a file system without hard links
            if path.exists():
                return
            os.replace(building, path)
    finally:
        for leftover in (building, *(Path(f"{building}{end}") for end in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    logger.info("created the SQLite database %s at the latest schema", target.display)


def is_driver_error(exc: BaseException) -> bool:
    """An error of the database driver itself (sqlite3, psycopg), which SQLAlchemy has not
    wrapped: what the bulk writes, on the driver's own cursor, raise."""
    import sqlite3

    if isinstance(exc, sqlite3.Error):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.Error)


def connection_error(exc: BaseException, target: DatabaseTarget) -> DatabaseConnectionError:
    """One line for a failed connection or statement, naming the host; never the password."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(orig).strip()
    lower = text.lower()
    where = target.where
    user = target.url.username or "(default user)"
    if target.is_sqlite:
        detail = _last_line(text)
        return DatabaseConnectionError(f"cannot use the SQLite database {where}: {detail}")
    if "permission denied" in lower or "must be owner" in lower:
        message = (
            f"PostgreSQL at {where} ({target.display}) refused user {user!r}: "
            f"{_last_line(text)}: grant it the privileges on anomaly-vae's tables (a job writes "
            "to them; migrations need their owner), or use another user"
        )
        return DatabaseConnectionError(_scrub(message, target))
    if "read-only transaction" in lower:  # a hot standby, or default_transaction_read_only
        message = (
            f"PostgreSQL at {where} ({target.display}) takes no changes (a read-only "
            "transaction: a standby?): point the URL at the primary"
        )
        return DatabaseConnectionError(_scrub(message, target))
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate and not sqlstate.startswith(_CONNECTION_SQLSTATES):
        # Connected, and the server answered a statement with an error (a timeout the user or
        # database sets, a lock, a constraint): not "cannot connect", nor "no answer within
        # 10 s: check the firewall", which a statement_timeout was shown as.
        first = text.splitlines()[0].strip() if text else type(orig).__name__
        server_detail = getattr(getattr(orig, "diag", None), "message_detail", None)
        if server_detail:
            first += f" ({str(server_detail).strip()[:200]})"
        message = (
            f"PostgreSQL at {where} ({target.display}) refused a statement: {first}"
            f"{_STATEMENT_HINTS.get(sqlstate, '')}"
        )
        return DatabaseConnectionError(_scrub(message, target))
    if "password authentication failed" in lower or "no password supplied" in lower:
        why = f"password authentication failed for user {user!r}: check the password in the URL"
    elif "does not exist" in lower and "database" in lower:
        why = (
            f"database {target.url.database!r} does not exist there: create it "
            f"(createdb {target.url.database}) or fix the URL"
        )
    elif "role" in lower and "does not exist" in lower:
        why = f"user {user!r} does not exist on that server"
    elif "connection refused" in lower:
        why = "connection refused: is PostgreSQL running there, on that port?"
    elif "could not translate host name" in lower or "name or service not known" in lower:
        why = "the host name cannot be resolved"
    elif any(
        sign in lower
        for sign in (
            "connection is lost",
            "server closed the connection",
            "terminating connection",
            "connection is closed",
        )
    ):
        # Connected, then cut off (a server restart, an administrator, a failover).
        message = (
            f"lost the connection to PostgreSQL at {where} ({target.display}) part way "
            "(server restarted, or the connection ended by an administrator): run the command "
            "again once the server answers; what a job committed stays, and scoring the same "
            "input again fills in only what is missing"
        )
        return DatabaseConnectionError(_scrub(message, target))
    elif "timeout" in lower or "timed out" in lower:
        why = f"no answer within {CONNECT_TIMEOUT_S} s: check the host, port and firewall"
    else:
        why = _last_line(text)
    message = f"cannot connect to PostgreSQL at {where} ({target.display}): {why}"
    return DatabaseConnectionError(_scrub(message, target))


# SQLSTATE classes of errors in connecting (connection exception, invalid authorization,
# invalid catalog name: no such database, operator intervention: the server shutting down).
_CONNECTION_SQLSTATES = ("08", "28", "3D", "57P")
_STATEMENT_HINTS = {
    "57014": ": a statement_timeout of this user or database (ALTER ROLE ... SET "
    "statement_timeout), or a cancel; raise it for anomaly-vae's user, or run the command again",
    "55P03": ": another session holds a lock on the table (lock_timeout); run the command "
    "again once it is done",
    "40P01": ": a deadlock with another session; run the command again",
    "40001": ": a conflict with another session; run the command again",
}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def _scrub(message: str, target: DatabaseTarget) -> str:
    secrets = [target.url.password] + [
        value
        for key, values in target.url.query.items()
        if key.lower() in _SECRET_QUERY_KEYS
        for value in ((values,) if isinstance(values, str) else values)
    ]
    for secret in secrets:
        if secret:
            message = message.replace(str(secret), "***")
    return message
