"""Each likelihood term against a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomaly_vae.features import EncodedBatch, FeatureLayout
from anomaly_vae.model import (
    VAE,
    LikelihoodLayout,
    SiLU,
    feature_nll,
    fixed_noise,
    gaussian_log_prob,
    kl_divergence,
    reconstruction_error,
    standard_normal_log_prob,
)
from anomaly_vae.scoring import Scorer

LOG_2PI = math.log(2 * math.pi)


def test_kl_matches_hand_computation() -> None:
    mu = torch.tensor([[1.0, 0.0]])
    log_var = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * [(1 + 1 - 1 - 0) + (0 + 2 - 1 - log 2)]
    expected = 0.5 * (1.0 + 1.0 - math.log(2.0))
    assert kl_divergence(mu, log_var).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3)).item() == pytest.approx(0.0)


def test_gaussian_and_categorical_nll_match_hand_computation() -> None:
    layout = LikelihoodLayout(n_numeric=2, cat_sizes=(3,))
    x = torch.tensor([[1.0, 2.0, 0.0, 1.0, 0.0]])
    observed = torch.tensor([[1.0, 1.0]])
    out = torch.tensor([[0.0, 2.0, 0.0, math.log(2.0), 0.0]])  # probs 1/4, 1/2, 1/4
    noise_log_var = torch.tensor([0.0, math.log(4.0)])
    nll, excess = feature_nll(x, observed, out, noise_log_var, layout)
    assert nll.shape == (1, 3)
    assert nll[0, 0].item() == pytest.approx(0.5 * (LOG_2PI + 0.0) + 0.5, rel=1e-6)
    assert nll[0, 1].item() == pytest.approx(0.5 * (LOG_2PI + math.log(4.0)), rel=1e-6)
    assert nll[0, 2].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert excess[0, 0].item() == pytest.approx(0.5)
    assert excess[0, 1].item() == pytest.approx(0.0)
    assert excess[0, 2].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_missing_numeric_value_contributes_nothing() -> None:
    layout = LikelihoodLayout(n_numeric=2, cat_sizes=())
    x = torch.tensor([[5.0, 1.0]])
    out = torch.zeros(1, 2)
    nll, excess = feature_nll(x, torch.tensor([[0.0, 1.0]]), out, torch.zeros(2), layout)
    assert nll[0, 0].item() == 0.0
    assert excess[0, 0].item() == 0.0
    assert nll[0, 1].item() == pytest.approx(0.5 * LOG_2PI + 0.5)


def test_reconstruction_error_is_mean_squared_error_over_observed_and_one_hot() -> None:
    layout = LikelihoodLayout(n_numeric=2, cat_sizes=(2,))
    x = torch.tensor([[1.0, 9.0, 1.0, 0.0]])
    observed = torch.tensor([[1.0, 0.0]])
    out = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # probs 0.5, 0.5
    # squared errors: 1 (numeric 0), skipped (missing), 0.25 + 0.25 (one-hot)
    value = reconstruction_error(x, observed, out, layout).item()
    assert value == pytest.approx((1.0 + 0.25 + 0.25) / 3.0)


def test_log_probs() -> None:
    z = torch.tensor([[1.0, -1.0]])
    assert standard_normal_log_prob(z).item() == pytest.approx(-LOG_2PI - 1.0)
    mu, log_var = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    expected = -0.5 * (0.0 + LOG_2PI) - 0.5 * (1.0 / 4.0 + math.log(4.0) + LOG_2PI)
    assert gaussian_log_prob(z, mu, log_var).item() == pytest.approx(expected, rel=1e-6)


def test_fixed_noise_is_reproducible_and_standard_normal() -> None:
    a = fixed_noise(4096, 3, seed=7)
    b = fixed_noise(4096, 3, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, fixed_noise(4096, 3, seed=8))
    assert abs(a.mean().item()) < 0.05
    assert a.std().item() == pytest.approx(1.0, abs=0.05)


class _LinearGaussianVAE(VAE):
    """x = z + noise (1-D), with the exact posterior as encoder: log p(x) is known in closed form.

    p(z) = N(0, 1), p(x|z) = N(z, s2), so p(x) = N(0, 1 + s2) and
    q(z|x) = N(x / (1 + s2), s2 / (1 + s2)).
    """

    def __init__(self, s2: float) -> None:
        super().__init__(n_numeric=1, cat_sizes=[], hidden_dims=[1], latent_dim=1, min_log_var=-20)
        self.s2 = s2
        with torch.no_grad():
            self.log_var_x.fill_(math.log(s2))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x / (1.0 + self.s2)
        return mean, torch.full_like(mean, math.log(self.s2 / (1.0 + self.s2)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def _exact_nll(x: float, s2: float) -> float:
    var = 1.0 + s2
    return 0.5 * (LOG_2PI + math.log(var) + x * x / var)


def test_elbo_and_importance_weighted_nll_match_closed_form() -> None:
    s2 = 0.5
    model = _LinearGaussianVAE(s2)
    layout = FeatureLayout(n_numeric=1, cat_sizes=[], block_columns=[0], column_names=["x"])
    xs = [0.0, 1.0, -2.5, 4.0]
    batch = EncodedBatch(
        x=torch.tensor(xs).reshape(-1, 1).numpy(), observed=torch.ones(len(xs), 1).numpy()
    )
    iw = Scorer(
        model, layout, n_samples=16, seed=0, device=torch.device("cpu"), importance_weighted=True
    ).score(batch)
    elbo = Scorer(model, layout, n_samples=4096, seed=0, device=torch.device("cpu")).score(batch)
    assert iw.nll_iw is not None
    for i, x in enumerate(xs):
        exact = _exact_nll(x, s2)
        # With the exact posterior every importance weight equals p(x): exact for any K.
        assert iw.nll_iw[i] == pytest.approx(exact, abs=1e-4)
        # The ELBO is tight too; its Monte Carlo estimate converges with K.
        assert elbo.neg_elbo[i] == pytest.approx(exact, abs=0.02)
        kl_expected = 0.5 * ((x / (1 + s2)) ** 2 + s2 / (1 + s2) - 1.0 - math.log(s2 / (1 + s2)))
        assert elbo.kl[i] == pytest.approx(kl_expected, rel=1e-5)


def test_one_sample_elbo_is_the_one_point_rule_at_the_posterior_mean() -> None:
    """K=1: z at the posterior mean (1-point Gauss-Hermite), by hand for x = z + noise."""
    s2 = 0.5
    model = _LinearGaussianVAE(s2)
    layout = FeatureLayout(n_numeric=1, cat_sizes=[], block_columns=[0], column_names=["x"])
    xs = [0.0, 1.0, -2.5, 4.0]
    batch = EncodedBatch(
        x=torch.tensor(xs).reshape(-1, 1).numpy(), observed=torch.ones(len(xs), 1).numpy()
    )
    arrays = Scorer(model, layout, n_samples=1, seed=0, device=torch.device("cpu")).score(batch)
    for i, x in enumerate(xs):
        mean, var = x / (1 + s2), s2 / (1 + s2)
        nll_at_mean = 0.5 * (LOG_2PI + math.log(s2) + (x - mean) ** 2 / s2)
        kl = 0.5 * (mean**2 + var - 1.0 - math.log(var))
        assert arrays.neg_elbo[i] == pytest.approx(nll_at_mean + kl, rel=1e-5)
        # The expectation over q adds var / (2 s2) to the reconstruction term (K -> infinity).
        assert arrays.neg_elbo[i] == pytest.approx(_exact_nll(x, s2) - var / (2 * s2), rel=1e-5)


def test_importance_weighted_bound_is_never_looser_than_the_elbo() -> None:
    torch.manual_seed(0)
    model = VAE(n_numeric=3, cat_sizes=[2], hidden_dims=[8], latent_dim=2)
    layout = FeatureLayout(
        n_numeric=3, cat_sizes=[2], block_columns=[0, 1, 2, 3], column_names=["a", "b", "c", "d"]
    )
    x = torch.randn(50, 5)
    x[:, 3:] = torch.nn.functional.one_hot(torch.randint(0, 2, (50,)), 2).float()
    batch = EncodedBatch(x=x.numpy(), observed=torch.ones(50, 3).numpy())
    arrays = Scorer(
        model, layout, n_samples=8, seed=3, device=torch.device("cpu"), importance_weighted=True
    ).score(batch)
    assert arrays.nll_iw is not None
    # Same samples: log mean(w) >= mean(log w) (Jensen), so nll_iw <= neg_elbo.
    assert (arrays.nll_iw <= arrays.neg_elbo + 1e-4).all()


# ============================================================== the conv encoder for windows
def test_conv_encoder_reads_each_column_as_a_channel_over_the_window_steps() -> None:
    from anomaly_vae.model import _Steps
    from anomaly_vae.windows import flatten_windows

    n, size, k, c = 3, 5, 2, 3  # 2 numeric columns, one categorical block of 3
    windows = torch.randn(n, size, k + c).numpy()
    flat = flatten_windows(windows, torch.ones(n, size, k).numpy(), k)
    steps = _Steps(n_numeric=k * size, n_cat=c * size, steps=size)
    channels = steps.to_channels(torch.from_numpy(flat.x))
    assert channels.shape == (n, k + c, size)
    assert torch.equal(channels, torch.from_numpy(windows).transpose(1, 2))
    assert torch.equal(steps.to_flat(channels), torch.from_numpy(flat.x))


def test_conv_vae_decodes_to_the_flat_layout_for_any_leading_shape() -> None:
    torch.manual_seed(0)
    size = 12
    model = VAE(
        n_numeric=2 * size,
        cat_sizes=[3] * size,
        hidden_dims=[8],
        latent_dim=4,
        encoder="conv",
        window_steps=size,
        conv_channels=[6, 5],
        conv_kernel=3,
    ).eval()
    x = torch.randn(7, model.input_dim)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (7, 4)
    z = torch.randn(3, 7, 4)
    out = model.decode(z)
    assert out.shape == (3, 7, model.input_dim)
    assert torch.allclose(out[1], model.decode(z[1]), atol=1e-6)
    # One record scores the same alone as in a batch.
    assert torch.allclose(model.encode(x[2:3])[0], mu[2:3], atol=1e-6)


def test_conv_vae_needs_whole_window_steps() -> None:
    with pytest.raises(ValueError, match="whole window steps"):
        VAE(
            n_numeric=7, cat_sizes=[], hidden_dims=[8], latent_dim=2, encoder="conv", window_steps=2
        )
    with pytest.raises(ValueError, match="encoder"):
        VAE(n_numeric=2, cat_sizes=[], hidden_dims=[8], latent_dim=2, encoder="lstm")


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_scoring_passes_give_the_numbers_of_a_training_pass_with_activations_in_place(
    encoder: str,
) -> None:
    # Without gradients the activations work in place (a scoring pass wrote and read a second
    # activation-sized tensor per layer); the outputs are those of a pass with gradients.
    torch.manual_seed(0)
    steps = 4 if encoder == "conv" else 1
    vae = VAE(
        n_numeric=3 * steps,
        cat_sizes=[2] * steps,
        hidden_dims=[16, 8],
        latent_dim=2,
        encoder=encoder,
        window_steps=steps,
        conv_channels=(4, 2),
        conv_kernel=3,
    ).eval()
    x = torch.randn(64, vae.input_dim)
    mu_grad, log_var_grad = vae.encode(x)
    out_grad = vae.decode(mu_grad)
    with torch.inference_mode():
        mu, log_var = vae.encode(x)
        out = vae.decode(mu)
        h = torch.randn(5, 7)
        assert SiLU()(h) is h  # in place
    assert torch.equal(mu, mu_grad.detach())
    assert torch.equal(log_var, log_var_grad.detach())
    assert torch.equal(out, out_grad.detach())
    h = torch.randn(5, 7, requires_grad=True)
    assert SiLU()(h) is not h  # with gradients: a new tensor, the input kept for backward


@pytest.mark.parametrize("indicators_in_recon_error", [False, True])
@pytest.mark.parametrize("layout_kind", ["numeric", "mixed"])
@pytest.mark.parametrize("gaps", [False, True])
def test_the_default_one_pass_scores_as_the_general_path_bit_for_bit(
    layout_kind: str, gaps: bool, indicators_in_recon_error: bool
) -> None:
    """K=1 at the posterior mean has its own path (``Scorer._score_at_mean``): every array it
    gives equals the general path's, with and without gaps, categorical blocks and
    missing-indicator blocks (weighted 0, left out of the reconstruction error or not)."""
    torch.manual_seed(1)
    if layout_kind == "numeric":
        layout = FeatureLayout(
            n_numeric=4, cat_sizes=[], block_columns=[0, 1, 2, 3], column_names=list("abcd")
        )
    else:  # a, b, c numeric; d categorical (3 values + unknown); c has a missing indicator
        layout = FeatureLayout(
            n_numeric=3, cat_sizes=[4, 2], block_columns=[0, 1, 2, 3, 2], column_names=list("abcd")
        )
    model = VAE(
        n_numeric=layout.n_numeric, cat_sizes=layout.cat_sizes, hidden_dims=[8], latent_dim=2
    ).eval()
    n = 300
    x = torch.randn(n, layout.input_dim)
    observed = torch.ones(n, layout.n_numeric)
    if layout_kind == "mixed":
        x[:, 3:7] = torch.nn.functional.one_hot(torch.randint(0, 4, (n,)), 4).float()
        x[:, 7:9] = torch.nn.functional.one_hot(torch.randint(0, 2, (n,)), 2).float()
    if gaps:
        observed[::7, 0] = 0.0
        x[::7, 0] = 0.0
        if layout_kind == "mixed":
            x[::11, 3:7] = 0.0  # an empty categorical block: a gap the model fills
    batch = EncodedBatch(x=x.numpy(), observed=observed.numpy())

    def scorer() -> Scorer:
        return Scorer(
            model,
            layout,
            n_samples=1,
            seed=0,
            device=torch.device("cpu"),
            batch_size=128,
            indicators_in_recon_error=indicators_in_recon_error,
        )

    fast = scorer()
    assert fast.one_pass
    general = scorer()
    general.one_pass = False
    a, b = fast.score(batch), general.score(batch)
    for name in ("neg_elbo", "recon_error", "kl", "contributions"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
