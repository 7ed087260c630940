"""A mixture-of-Gaussians prior learned with the VAE (diagnostic for benchmarks/README.md,
finding 8).

    python -m benchmarks.prior_mixture --datasets cardio,satellite,wilt --seeds 0,1

For each split (the `plain` protocol of ``benchmarks.detection``) trains anomaly-vae twice
through ``AnomalyVAE.fit`` with every default left as it is (widths, latent size, step budget,
scaling, optimiser, KL warm-up, early stopping): once as shipped, once with the N(0, I) prior
replaced by a learned mixture p(z) = sum_c pi_c N(z; m_c, diag s_c^2) of ``COMPONENTS``
components (means drawn from N(0, I), log-variances 0, logits 0, trained jointly with the
network by the same optimiser). Training then uses the single-sample KL estimate
log q(z|x) - log p(z) at the reparameterised z (validation: at the fixed validation noise, as
the package's). The swap lives in this script only (a ``VAE`` subclass and patches of
``anomaly_vae.training`` for the length of a fit); the package is not changed.

Scores: the default model's negative ELBO (``anomaly_score``), and for the mixture model the
negative ELBO with its own prior at the posterior mean: the package's reconstruction term at
z = mu (the K=1 rule) plus log q(mu|x) - log p(mu). Beside them, from the same mixture-trained
model, two diagnostics: the package's score as it is (N(0, I) KL) and -log p(mu) alone. Prints
ROC-AUC x 100 per set, the mean over seeds, and each seed's for the first two; also how many
mixture weights end above 5 %, the range of the learned log-variances, and the fit times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from anomaly_vae import AnomalyVAE, estimator, training
from anomaly_vae.model import VAE, LikelihoodLayout, feature_nll, fixed_noise, gaussian_log_prob
from benchmarks.detection import DATA, experiment_args, load, make_split

COMPONENTS = 10
DEFAULT_SETS = "cardio,satellite,wilt,annthyroid,thyroid,vowels,mammography"


class MixturePriorVAE(VAE):
    """The package's VAE with a learned Gaussian-mixture prior in place of N(0, I).

    The prior's parameters are the model's own, so ``fit_vae``'s flat optimiser, gradient
    clipping and best-epoch copy treat them like every other weight. ``forward`` keeps the
    sampled z (``last_z``) for the KL estimate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        d = self.latent_dim
        # Drawn after the network's weights, so those are the default model's.
        self.prior_means = nn.Parameter(torch.randn(COMPONENTS, d))
        self.prior_log_vars = nn.Parameter(torch.zeros(COMPONENTS, d))
        self.prior_logits = nn.Parameter(torch.zeros(COMPONENTS))
        self.last_z: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        self.last_z = z
        return self.decode(z), mu, log_var

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) per record under the mixture."""
        per_component = gaussian_log_prob(
            z.unsqueeze(-2), self.prior_means, self.prior_log_vars
        ) + torch.log_softmax(self.prior_logits, dim=-1)
        return torch.logsumexp(per_component, dim=-1)

    def kl_estimate(self, z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
        """log q(z|x) - log p(z) per record: the single-sample KL estimate at ``z``."""
        return gaussian_log_prob(z, mu, log_var) - self.log_prior(z)


@contextmanager
def _mixture_prior_training(seed: int) -> Iterator[list[MixturePriorVAE]]:
    """While open, ``AnomalyVAE.fit`` builds a ``MixturePriorVAE`` and ``fit_vae`` trains it
    with the mixture KL estimate: in training at the reparameterised z of the forward pass, in
    validation at the same fixed noise vector ``fit_vae`` gives the decoder. The generic
    autograd step is used (the written-out step has the N(0, I) KL's gradients built in)."""
    built: list[MixturePriorVAE] = []

    def build(**kwargs: Any) -> MixturePriorVAE:
        built.append(MixturePriorVAE(**kwargs))
        return built[-1]

    def kl(mu: Tensor, log_var: Tensor) -> Tensor:
        model = built[-1]
        if model.training:
            assert model.last_z is not None
            z = model.last_z
        else:  # _validation_loss: z = mu + std * the fit's fixed validation noise
            eps = fixed_noise(1, model.latent_dim, seed=seed)[0].to(mu.device)
            z = mu + torch.exp(0.5 * log_var) * eps
        return model.kl_estimate(z, mu, log_var)

    def numeric_elbo(
        x: Tensor,
        out: Tensor,
        log_var_x: Tensor,
        mu: Tensor,
        log_var: Tensor,
        *,
        weight: float,
        min_log_var: float,
    ) -> Tensor:
        layout = LikelihoodLayout(x.shape[-1], ())
        noise = log_var_x.clamp(min=min_log_var)
        nll, _ = feature_nll(x, torch.ones_like(x), out, noise, layout)
        return (nll.sum(dim=-1) + weight * kl(mu, log_var)).mean()

    with (
        mock.patch.object(estimator, "VAE", build),
        mock.patch.object(training, "kl_divergence", kl),
        mock.patch.object(training, "numeric_elbo", numeric_elbo),
        mock.patch.object(training._MlpStep, "for_model", classmethod(lambda cls, model: None)),
    ):
        yield built


def _mixture_scores(
    model: AnomalyVAE, prior: MixturePriorVAE, x: np.ndarray
) -> dict[str, np.ndarray]:
    """Scores of the mixture-trained model. ``ELBO (mixture prior)``: the negative ELBO under
    its own prior at the posterior mean, the package's K=1 score less its N(0, I) KL term (the
    reconstruction term at z = mu) plus log q(mu|x) - log p(mu). Two diagnostics: the package's
    score as it is (the N(0, I) KL, as if the prior had not changed), and -log p(mu) alone."""
    arrays = model.score_arrays(x)
    frame = pd.DataFrame(x, columns=model.feature_names_in_)
    clean, _ = model.schema_.validate(frame, source="benchmark")
    encoded = torch.as_tensor(model.preprocessor_.transform(clean).x)
    with torch.inference_mode():
        prior.eval()
        mu, log_var = prior.encode(encoded)
        kl = prior.kl_estimate(mu, mu, log_var).double().numpy()
        latent = -prior.log_prior(mu).double().numpy()
    return {
        "ELBO (mixture prior)": np.asarray(arrays.neg_elbo - arrays.kl + kl),
        "mixture model, N(0, I) KL": np.asarray(arrays.neg_elbo),
        "-log p(mu)": latent,
    }


def compare(name: str, seed: int, data: Path = DATA) -> dict[str, float]:
    x, y = load(name, data)
    split = make_split(x, y, seed, "plain")
    started = time.perf_counter()
    default = AnomalyVAE(seed=seed, verbose=False).fit(split.x_train)
    middle = time.perf_counter()
    with _mixture_prior_training(seed) as built:
        mixture = AnomalyVAE(seed=seed, verbose=False).fit(split.x_train)
    assert len(built) == 1
    assert mixture.model_ is built[0]
    ended = time.perf_counter()
    weights = torch.softmax(built[0].prior_logits.detach(), dim=-1)
    log_vars = built[0].prior_log_vars.detach()
    out = {
        "ELBO (N(0, I))": 100.0
        * float(roc_auc_score(split.y_test, default.anomaly_score(split.x_test))),
    }
    for label, score in _mixture_scores(mixture, built[0], split.x_test).items():
        out[label] = 100.0 * float(roc_auc_score(split.y_test, score))
    out |= {
        "components over 5 %": float((weights > 0.05).sum()),
        "prior log-var min": float(log_vars.min()),
        "prior log-var max": float(log_vars.max()),
        "seconds default": middle - started,
        "seconds mixture": ended - middle,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    args = experiment_args(__doc__.splitlines()[0], DEFAULT_SETS, argv)
    names = args.datasets.split(",")
    torch.set_num_threads(1)
    # Each small set's fit warns that its threshold rests on few held-out rows: not used here.
    logging.getLogger("anomaly_vae").setLevel(logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in names:
        runs = pd.DataFrame([compare(name, seed, args.data) for seed in seeds])
        mean = "  ".join(f"{k} {v:.1f}" for k, v in runs.mean().items())
        each = " / ".join(
            f"{a:.1f} vs {b:.1f}"
            for a, b in zip(runs["ELBO (N(0, I))"], runs["ELBO (mixture prior)"], strict=True)
        )
        print(f"{name}  {mean}  (per seed, default vs mixture: {each})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
