"""Alembic environment: run by ``anomaly-vae db upgrade`` (which hands over its connection) or by
the ``alembic`` command from a clone (``alembic.ini`` at the repository root; the URL comes from
``-x db=URL``, else ``ANOMALY_VAE_DATABASE_URL``, else ``sqlite:///anomaly_vae.db``)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from anomaly_vae.storage.engine import (
    DEFAULT_URL,
    ENV_VAR,
    create_database_engine,
    parse_database_url,
)
from anomaly_vae.storage.migrate import migrating
from anomaly_vae.storage.tables import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    text = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get(ENV_VAR)
    engine = create_database_engine(parse_database_url(text or DEFAULT_URL))
    try:
        # As `anomaly-vae db`: one transaction, and on SQLite foreign keys off during it.
        with migrating(engine) as conn:
            _configure(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them on a database")
run_migrations_online()
