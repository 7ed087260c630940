"""On a CUDA GPU (skipped without one): the same model and the same guarantees as on the CPU.

The rest of the suite runs on the GPU too where one is present (``device: auto``: the windowed
and conv models of test_windows.py, batch/stream parity in test_windows_stream.py); these tests
hold what only a GPU can break: cuBLAS picking its kernel by the number of rows, bf16 autocast
against the CPU's float32, weights moving between devices through the model file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from anomaly_vae import AnomalyVAE
from tests.conftest import correlated_normal, with_anomalies

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_model() -> AnomalyVAE:
    model = AnomalyVAE(epochs=15, seed=0, device="cuda").fit(correlated_normal(4000, seed=0))
    assert next(model.model_.parameters()).device.type == "cuda"
    assert model.training_summary_["device"].startswith("cuda")
    return model


def test_a_record_scores_the_same_alone_or_in_any_batch_on_the_gpu(gpu_model: AnomalyVAE) -> None:
    data, _ = with_anomalies(3000, 150, seed=11)
    first = gpu_model.score_batch(data)
    whole = first.scores["score"].to_numpy()
    assert np.array_equal(whole, gpu_model.score_batch(data).scores["score"].to_numpy())
    assert first.raw_contributions is not None
    for size in (1, 37, 1000, 2500):
        stop = 200 if size == 1 else len(data)
        parts = [gpu_model.score_batch(data.iloc[i : i + size]) for i in range(0, stop, size)]
        chunked = pd.concat([p.scores for p in parts])["score"].to_numpy()
        assert np.array_equal(chunked, whole[: len(chunked)]), f"batches of {size}"
        # Contributions too, leave-one-out for the flagged records included.
        shares = np.concatenate([p.raw_contributions for p in parts])
        assert np.array_equal(shares, first.raw_contributions[: len(shares)]), f"size {size}"


def test_gpu_and_cpu_scores_of_one_model_agree(gpu_model: AnomalyVAE, tmp_path: Path) -> None:
    gpu_model.save(tmp_path / "m")
    on_cpu = AnomalyVAE.load(tmp_path / "m", device="cpu")
    on_gpu = AnomalyVAE.load(tmp_path / "m", device="cuda")
    assert next(on_cpu.model_.parameters()).device.type == "cpu"
    assert next(on_gpu.model_.parameters()).device.type == "cuda"
    data, labels = with_anomalies(2000, 100, seed=12)
    cpu = on_cpu.score_batch(data).scores
    gpu = on_gpu.score_batch(data).scores
    assert np.array_equal(gpu["score"].to_numpy(), gpu_model.score_batch(data).scores["score"])
    # bf16 autocast on the GPU, float32 on the CPU: close, ranked the same, flagged alike.
    a, b = cpu["score"].to_numpy(), gpu["score"].to_numpy()
    assert np.isfinite(b).all()
    assert float(spearmanr(a, b).statistic) > 0.995
    assert np.median(np.abs(a - b) / (np.abs(a) + 1.0)) < 0.02
    flagged_cpu, flagged_gpu = cpu["is_anomaly"].to_numpy(), gpu["is_anomaly"].to_numpy()
    assert (flagged_cpu != flagged_gpu).mean() < 0.01
    assert flagged_gpu[labels == 1].mean() > 0.4  # 0.6 on the CPU


def test_every_score_term_and_leave_one_out_run_on_the_gpu(gpu_model: AnomalyVAE) -> None:
    data, _labels = with_anomalies(1000, 50, seed=13)
    gpu_model.config_.scoring.n_samples = 16
    try:
        arrays = gpu_model.score_arrays(data, importance_weighted=True)
    finally:
        gpu_model.config_.scoring.n_samples = 1
    assert arrays.nll_iw is not None
    assert np.isfinite(arrays.nll_iw).all()
    assert np.isfinite(arrays.neg_elbo).all()
    assert np.isfinite(arrays.recon_error).all()
    assert arrays.contributions is not None
    assert arrays.contributions.shape == (len(data), len(gpu_model.schema_.names))
    # The importance-weighted bound sits at or below the K=16 ELBO, up to bf16 rounding.
    assert np.mean(arrays.nll_iw <= arrays.neg_elbo + 1e-2) > 0.99
    batch = gpu_model.score_batch(data.iloc[1000:])  # the anomalies
    names = {name for row in batch.top_features_list(2) for name, _ in row}
    assert names <= set(gpu_model.schema_.names)
    assert names
