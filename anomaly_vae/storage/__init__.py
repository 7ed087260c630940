"""The results database: tables, engine and URL handling, migrations, and the repository.

Engines are built at the edge (the CLI, later the API and the stream scorer) with
:func:`anomaly_vae.storage.engine.open_database` and passed down; nothing here is global.
"""
