"""Shared fixtures: small synthetic data and one small trained model per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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


# ----------------------------------------------------------------------- real services
def service_unavailable(what: str, why: str) -> None:
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
