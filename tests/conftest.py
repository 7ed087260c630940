"""Shared fixtures: small synthetic data and one small trained model per test session."""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_vae import AnomalyVAE
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.devbroker import BrokerError, DevBroker

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cli_logging_ends_with_the_test() -> Iterator[None]:
    """The CLI run in this process (``run_inline``) logs to the stderr pytest captured for
    that test (``setup_logging``: a root handler on ``sys.stderr``); once the test ends that
    stream is closed, and every later line of any test in this worker went to it and printed
    a 'Logging error' traceback instead, on whatever thread logged: kafka-python's IO thread
    spent 1.5 s on them in a rebalance and warned that a task was blocking its event loop.
    A command's logging ends with it, as it does with the process of a real run."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
    root.setLevel(level)


def correlated_normal(n: int, *, seed: int, n_features: int = 8) -> pd.DataFrame:
    """Normal data on a 2-D manifold in n_features dimensions, plus a categorical column."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mix = np.random.default_rng(123).normal(size=(2, n_features))
    x = latent @ mix + 0.05 * rng.normal(size=(n, n_features))
    frame = pd.DataFrame(x, columns=[f"s{i}" for i in range(n_features)])
    frame["kind"] = np.where(latent[:, 0] > 0, "hi", "lo")
    return frame


def with_anomalies(
    n_normal: int, n_anomalous: int, *, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    normal = correlated_normal(n_normal, seed=seed)
    rng = np.random.default_rng(seed + 1)
    odd = correlated_normal(n_anomalous, seed=seed + 2)
    cols = [c for c in odd.columns if c.startswith("s")]
    # Break the correlations without leaving the marginal ranges by much.
    odd[cols] = rng.permuted(odd[cols].to_numpy(), axis=1)
    frame = pd.concat([normal, odd], ignore_index=True)
    labels = np.r_[np.zeros(n_normal), np.ones(n_anomalous)]
    return frame, labels


@pytest.fixture(scope="session")
def trained_model() -> AnomalyVAE:
    data = correlated_normal(3000, seed=0)
    return AnomalyVAE(epochs=40, seed=0).fit(data)


@pytest.fixture(scope="session")
def pump_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[AnomalyVAE, Path]:
    from anomaly_vae.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps.yaml")
    cfg.training.epochs = 20
    model = AnomalyVAE(config=cfg).fit(make_pump_data(4000, seed=1))
    path = tmp_path_factory.mktemp("models") / "pumps"
    model.save(path)
    return model, path


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the database at ``url`` (SQLite or PostgreSQL)."""
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url

    engine = create_database_engine(parse_database_url(url))
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.exec_driver_sql(sql)]
    finally:
        engine.dispose()


# ----------------------------------------------------------------------- real services
def service_unavailable(what: str, why: str) -> NoReturn:
    """Skip outside CI; under CI=true a missing service fails the run instead."""
    message = f"{what} unavailable: {why}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: required services must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def broker() -> Iterator[DevBroker]:
    """A real Kafka-compatible broker (Tansu) on a free loopback port for the test session."""
    try:
        dev = DevBroker().start()
    except BrokerError as exc:
        service_unavailable("Kafka test broker", str(exc))
        raise  # unreachable: skip/fail raise
    try:
        yield dev
    finally:
        dev.stop()


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, partitions: int = 1) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = fresh_name("t")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


# ============================================================ databases (integration tier)
POSTGRES_ADMIN_URL = os.environ.get(
    "ANOMALY_VAE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty PostgreSQL databases (random names), all dropped at the end."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin_url = make_url(POSTGRES_ADMIN_URL)
    engine = create_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        engine.dispose()
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        service_unavailable(
            f"PostgreSQL at {admin_url.host}:{admin_url.port}", f"not reachable: {first}"
        )
    created: list[str] = []

    def make() -> str:
        name = f"anomaly_vae_test_{secrets.token_hex(6)}"
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return admin_url.set(database=name).render_as_string(hide_password=False)

    yield make
    with engine.connect() as connection:
        for name in created:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind: a SQLite file, and a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    factory = request.getfixturevalue("postgres_databases")
    return str(factory())


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A fresh database of each kind, migrated to the latest schema."""
    from anomaly_vae.storage.engine import create_database_engine, parse_database_url
    from anomaly_vae.storage.migrate import upgrade

    engine = create_database_engine(parse_database_url(empty_db_url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return empty_db_url


@pytest.fixture(scope="session")
def password_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A scratch PostgreSQL server that checks passwords (the shared one trusts everyone):
    initdb with scram-sha-256 as the ``postgres`` user, on a free loopback port. User
    ``alice``, password ``right-pw``."""
    import shutil
    import socket
    import subprocess
    import tempfile

    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    runuser = shutil.which("runuser")
    if not bin_dirs or runuser is None or os.geteuid() != 0:
        service_unavailable(
            "a password-checking PostgreSQL", "needs root, runuser and the server binaries"
        )
    bin_dir = bin_dirs[-1]
    folder = Path(tempfile.mkdtemp(prefix="anomaly-vae-pg-"))
    shutil.chown(folder, "postgres")
    (folder / "pw").write_text("right-pw\n")
    shutil.chown(folder / "pw", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def as_postgres(*args: str) -> None:
        subprocess.run(
            [runuser, "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    data = folder / "data"
    try:
        as_postgres(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "alice",
            "--auth=scram-sha-256",
            f"--pwfile={folder / 'pw'}",
        )
        as_postgres(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(folder / "log"),
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        service_unavailable("a password-checking PostgreSQL", exc.stderr.decode()[-300:])
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run(
            [
                runuser,
                "-u",
                "postgres",
                "--",
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def api_client(db_url: str, **settings: Any) -> Iterator[Any]:
    """FastAPI's TestClient on the database at ``db_url``, no token unless given (the API in
    process); ``settings``: other ``ApiSettings`` fields."""
    from fastapi.testclient import TestClient

    from anomaly_vae.api import ApiSettings, create_app
    from anomaly_vae.storage.engine import (
        DatabaseTarget,
        create_database_engine,
        parse_database_url,
    )

    target = DatabaseTarget(parse_database_url(db_url), "--db")
    engine = create_database_engine(target.url)
    try:
        settings.setdefault("token", None)
        app = create_app(ApiSettings(database=target, **settings), engine)
        with TestClient(app) as client:
            yield client
    finally:
        engine.dispose()
