"""Alembic migrations of the results database, shipped inside the package so that
``anomaly-vae db upgrade`` finds them wherever anomaly-vae is installed."""
