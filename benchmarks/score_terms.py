"""Extra score terms beside the ELBO (diagnostic for benchmarks/README.md, finding 6).

    python -m benchmarks.score_terms --datasets cardio,satellite,wilt --seeds 0,1

Trains anomaly-vae with its defaults on each split (the `plain` protocol of
``benchmarks.detection``), then scores the test rows with the ELBO alone and with one more term
added: the 5th-neighbour distance in latent space (posterior means), the 5th-neighbour distance in
the model's scaled inputs, a Ledoit-Wolf Mahalanobis distance in the scaled inputs, and the last
two together. Each term is standardised by its own training scores (median and IQR), so nothing
is fitted on test labels. Then three scores in place of the ELBO, from the same model: the
Gaussian term with maximum-likelihood noise variances plus the KL term, a Mahalanobis distance
of the reconstruction residuals, one of the posterior means, the negative log density of the
posterior means under a Gaussian mixture fitted to the training rows' (the aggregate posterior
in place of the prior), and that added to the reconstruction term. Prints ROC-AUC x 100, the
mean over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors

from anomaly_vae import AnomalyVAE
from benchmarks.detection import DATA, experiment_args, load, make_split

K = 5


def _inputs_and_latents(model: AnomalyVAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.DataFrame(x, columns=model.feature_names_in_)
    clean, _ = model.schema_.validate(frame, source="benchmark")
    encoded = model.preprocessor_.transform(clean)
    with torch.inference_mode():
        model.model_.eval()
        mu, _ = model.model_.encode(torch.as_tensor(encoded.x))
    return encoded.x, mu.numpy()


def _residuals(model: AnomalyVAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scaled inputs minus their reconstruction at the posterior mean, and the KL term."""
    frame = pd.DataFrame(x, columns=model.feature_names_in_)
    clean, _ = model.schema_.validate(frame, source="benchmark")
    encoded = torch.as_tensor(model.preprocessor_.transform(clean).x)
    with torch.inference_mode():
        model.model_.eval()
        mu, log_var = model.model_.encode(encoded)
        reconstruction = model.model_.decode(mu)[:, : encoded.shape[1]]
    kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(1)
    return (encoded - reconstruction).numpy(), kl.numpy()


def _knn(reference: np.ndarray) -> Callable[[np.ndarray, bool], np.ndarray]:
    index = NearestNeighbors(n_neighbors=K + 1).fit(reference)

    def distance(points: np.ndarray, own: bool) -> np.ndarray:
        # A training row is its own nearest neighbour: skip it.
        d, _ = index.kneighbors(points, n_neighbors=K + 1 if own else K)
        return np.asarray(d[:, -1])

    return distance


def _standardised(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    q25, q50, q75 = np.quantile(train, [0.25, 0.5, 0.75])
    return np.asarray((test - q50) / max(q75 - q25, 1e-12))


def terms(name: str, seed: int, data: Path = DATA) -> dict[str, float]:
    x, y = load(name, data)
    split = make_split(x, y, seed, "plain")
    model = AnomalyVAE(seed=seed, verbose=False).fit(split.x_train)
    elbo = _standardised(model.anomaly_score(split.x_train), model.anomaly_score(split.x_test))
    in_train, z_train = _inputs_and_latents(model, split.x_train)
    in_test, z_test = _inputs_and_latents(model, split.x_test)
    latent_knn, input_knn = _knn(z_train), _knn(in_train)
    covariance = LedoitWolf().fit(in_train)
    extra = {
        "latent 5-NN": _standardised(latent_knn(z_train, True), latent_knn(z_test, False)),
        "input 5-NN": _standardised(input_knn(in_train, True), input_knn(in_test, False)),
        "Mahalanobis": _standardised(
            covariance.mahalanobis(in_train), covariance.mahalanobis(in_test)
        ),
    }
    extra["input 5-NN + Mahalanobis"] = extra["input 5-NN"] + extra["Mahalanobis"]
    out = {"ELBO": 100.0 * float(roc_auc_score(split.y_test, elbo))}
    for label, term in extra.items():
        out[f"ELBO + {label}"] = 100.0 * float(roc_auc_score(split.y_test, elbo + term))
    # Scores in place of the ELBO, from the same model (finding 6, second table): the Gaussian
    # term with each column's noise variance set to its training residuals' (maximum
    # likelihood), plus the KL term; a Ledoit-Wolf Mahalanobis distance of the residuals; the
    # same of the posterior means.
    r_train, _ = _residuals(model, split.x_train)
    r_test, kl_test = _residuals(model, split.x_test)
    variance = (r_train**2).mean(axis=0) + 1e-6
    gaussian = 0.5 * (r_test**2 / variance + np.log(variance)).sum(axis=1)
    # The aggregate posterior in place of the N(0, I) prior: a Gaussian mixture fitted to the
    # training rows' posterior means (components chosen by BIC, 1 to 8), its negative log
    # density alone, and added to the reconstruction term (the ELBO less its KL term).
    mixture = _bic_mixture(z_train, seed)
    latent_density = -mixture.score_samples(z_test)
    reconstruction = model.anomaly_score(split.x_test) - kl_test
    replaced = {
        "ML noise variance + KL": gaussian + kl_test,
        "residual Mahalanobis": LedoitWolf().fit(r_train).mahalanobis(r_test),
        "latent Mahalanobis": LedoitWolf().fit(z_train).mahalanobis(z_test),
        "latent GMM": latent_density,
        "reconstruction + latent GMM": reconstruction + latent_density,
    }
    for label, score in replaced.items():
        out[label] = 100.0 * float(roc_auc_score(split.y_test, score))
    return out


def _bic_mixture(z: np.ndarray, seed: int, most: int = 8) -> GaussianMixture:
    """The Gaussian mixture (full covariances) of 1 to ``most`` components with the lowest BIC."""
    best: tuple[float, GaussianMixture] | None = None
    for k in range(1, most + 1):
        mixture = GaussianMixture(k, random_state=seed, reg_covar=1e-3, n_init=2).fit(z)
        bic = float(mixture.bic(z))
        if best is None or bic < best[0]:
            best = (bic, mixture)
    assert best is not None
    return best[1]


def main(argv: list[str] | None = None) -> int:
    args = experiment_args(
        __doc__.splitlines()[0], "cardio,satellite,wilt,vowels,mnist,annthyroid", argv
    )
    names = args.datasets.split(",")
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in names:
        runs = pd.DataFrame([terms(name, seed, args.data) for seed in seeds])
        print(name, "  ".join(f"{k} {v:.1f}" for k, v in runs.mean().items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
