"""Running the Alembic migrations from code, and checking a database is at their head.

The migration scripts ship in the package (``anomaly_vae/migrations``), so ``db upgrade`` works
from any directory once anomaly-vae is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from anomaly_vae.errors import ConfigError, SchemaVersionError
from anomaly_vae.storage.engine import DatabaseTarget, upgrade_hint

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def is_known_revision(revision: str | None) -> bool:
    """Whether this version's migrations know ``revision`` (None, no schema, is known)."""
    return revision is None or revision in {s.revision for s in _scripts().walk_revisions()}


def newer_schema_message(what: str, revision: str) -> str:
    """What to say of a database a newer anomaly-vae migrated (to a revision unknown here): the
    two ways out, since one who went back to this version (a bad release) meant not to upgrade
    it again, and 'upgrade anomaly-vae' alone left them no way back to the data."""
    return (
        f"{what} is at schema revision {revision}, newer than this anomaly-vae knows "
        f"(head {head_revision()}): {newer_schema_way_out()}"
    )


def newer_schema_way_out() -> str:
    return (
        "upgrade anomaly-vae, or, to keep this version, migrate the database back with the "
        f"newer one: 'anomaly-vae db downgrade {head_revision()}'"
    )


def _require_known(connection: Connection) -> str | None:
    # Alembic's own error for a revision it has no script for names neither the database nor
    # the way out ("Can't locate revision identified by '...'").
    current = current_revision(connection)
    if not is_known_revision(current):
        assert current is not None
        raise SchemaVersionError(newer_schema_message("the database", current))
    return current


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate up to ``revision``; returns (revision before, revision after)."""
    with migrating(engine) as connection:
        before = _require_known(connection)
        with _known_revision(revision):
            command.upgrade(alembic_config(connection), revision)
        after = current_revision(connection)
    return before, after


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Migrate down to ``revision`` (``base`` removes every table, Alembic's version table
    too: it left that one, empty)."""
    with migrating(engine) as connection:
        before = _require_known(connection)
        with _known_revision(revision):
            command.downgrade(alembic_config(connection), revision)
        after = current_revision(connection)
        if after is None:
            connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    return before, after


@contextmanager
def _known_revision(revision: str) -> Iterator[None]:
    """Alembic's error for a revision it cannot resolve, as one line naming the revisions."""
    try:
        yield
    except CommandError as exc:
        known = [script.revision for script in reversed(list(_scripts().walk_revisions()))]
        raise ConfigError(
            f"cannot migrate to revision {revision!r}: {exc} "
            f"(revisions: base, {', '.join(known)}, head; or -N to go down N steps)"
        ) from None


# The key of the PostgreSQL advisory lock a migration holds: 'anomaly-vae' as a number.
MIGRATION_LOCK_KEY = int.from_bytes(b"anom-vae", "big") & 0x7FFF_FFFF_FFFF_FFFF


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction for a migration: all of it or nothing.

    Two migrations at once (two deploy jobs, or an operator beside one) take turns: the
    second waits for the first to commit, then reads the revision it left (PostgreSQL: a
    transaction-level advisory lock taken before the revision is read; SQLite: the write lock,
    ``BEGIN IMMEDIATE``). Without it both read "no schema" and the second failed part way
    with PostgreSQL's "Key (typname, typnamespace)=(alembic_version, 2200) already exists"
    (shown as "cannot connect") or SQLite's "database is locked".

    SQLite: batch mode copies a table and drops the old one, which fails with foreign keys on
    while other tables' rows refer to it, so they are off during the migration (checked
    before the commit, and on again after it); and Python's sqlite3 runs DDL outside a
    transaction unless one was begun explicitly, so one is.
    """
    with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(
                        f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
                    )
                yield connection
            return
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # no effect in a transaction
        connection.commit()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise RuntimeError(f"migration broke a foreign key: {tuple(broken)}")
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def require_current_schema(connection: Connection, target: DatabaseTarget) -> None:
    """Refuse a database whose schema is not at this version's head, saying what to run."""
    current = current_revision(connection)
    scripts = _scripts()
    head = scripts.get_current_head()
    if current == head:
        return
    if current is None:
        raise SchemaVersionError(
            f"the database {target.display} has no anomaly-vae schema yet: "
            f"run '{upgrade_hint(target)}' first"
        )
    if not is_known_revision(current):
        raise SchemaVersionError(newer_schema_message(f"the database {target.display}", current))
    raise SchemaVersionError(
        f"the database {target.display} is at schema revision {current}, behind this "
        f"anomaly-vae (head {head}): run '{upgrade_hint(target)}' to migrate it"
    )
