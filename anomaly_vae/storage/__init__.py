"""The results database: tables, engine and URL handling, migrations, and the repository.

Engines are built at the edge (the CLI, later the API and the stream scorer) with
:func:`anomaly_vae.storage.engine.open_database` and passed down; nothing here is global.
"""

# The environment variable that names the database when --db does not. Here, not in engine.py,
# so that `score` without a database can look for it without loading SQLAlchemy.
ENV_VAR = "ANOMALY_VAE_DATABASE_URL"
