"""The training loop's hand-written pieces against the torch operations they replace."""

from __future__ import annotations

import pytest
import torch

from anomaly_vae.model import VAE, Dropout, LikelihoodLayout, feature_nll, kl_divergence
from anomaly_vae.training import _FlatAdam, _FlatParameters, _MlpStep, numeric_elbo


def _reference_loss(inputs: list[torch.Tensor], weight: float, min_log_var: float) -> torch.Tensor:
    x, out, log_var_x, mu, log_var = inputs
    noise = log_var_x.clamp(min=min_log_var)
    nll, _ = feature_nll(x, torch.ones_like(x), out, noise, LikelihoodLayout(x.shape[1], ()))
    return (nll.sum(dim=-1) + weight * kl_divergence(mu, log_var)).mean()


def _inputs(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    out = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    # One noise log-variance below the floor: clamped, so it gets no gradient.
    log_var_x = torch.tensor([0.3, -1.0, -7.5, 0.0, 1.2], dtype=torch.float64)
    mu = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    log_var = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    return [t.requires_grad_(i > 0) for i, t in enumerate((x, out, log_var_x, mu, log_var))]


@pytest.mark.parametrize("weight", [0.0, 0.37, 1.0])
def test_numeric_elbo_value_and_gradients_match_the_composed_loss(weight: float) -> None:
    ours_in, ref_in = _inputs(), _inputs()
    ours = numeric_elbo(*ours_in, weight=weight, min_log_var=-6.0)
    ref = _reference_loss(ref_in, weight, -6.0)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    for a, b in zip(ours_in[1:], ref_in[1:], strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    clamped = ours_in[2].grad
    assert clamped is not None
    assert clamped[2] == 0.0  # below the floor: no gradient


def test_numeric_elbo_gradients_pass_gradcheck() -> None:
    x, out, log_var_x, mu, log_var = _inputs(1)
    log_var_x = log_var_x.detach().clone().fill_(0.2).requires_grad_(True)  # off the kink
    assert torch.autograd.gradcheck(
        lambda o, n, m, v: numeric_elbo(x, o, n, m, v, weight=0.5, min_log_var=-6.0),
        (out, log_var_x, mu, log_var),
    )


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("fused", [True, False])
def test_flat_adam_follows_torch_adam(
    weight_decay: float, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not fused:  # as on a torch without the fused kernel
        monkeypatch.setattr(_FlatAdam, "_fused_kernel_works", lambda self, device: False)
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, generator=gen)
    ours = torch.nn.Parameter(start.clone())
    ref = torch.nn.Parameter(start.clone())
    opt = _FlatAdam(ours, 3e-3, weight_decay)
    assert (opt.fallback is None) == fused
    ref_opt = torch.optim.Adam([ref], lr=3e-3, weight_decay=weight_decay)
    for _ in range(5):
        grad = torch.randn(50, generator=gen)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(ours.data, ref.data)
    assert not torch.equal(ours.data, start)


def test_dropout_keeps_one_minus_p_scaled_and_is_identity_in_eval() -> None:
    torch.manual_seed(0)
    layer = Dropout(0.2)
    x = torch.ones(400, 500, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1.25))
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, y.detach())  # the gradient is the scaled mask
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def _step_by_autograd(model: VAE, x: torch.Tensor, weight: float) -> torch.Tensor:
    out, mu, log_var = model(x)
    loss = numeric_elbo(
        x, out, model.log_var_x, mu, log_var, weight=weight, min_log_var=model.min_log_var
    )
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize(
    ("hidden", "dropout", "weight"),
    [([128, 64, 32], 0.2, 1.0), ([16], 0.0, 0.3), ([24, 12], 0.5, 0.0)],
)
def test_written_out_step_gives_autograds_loss_and_gradients(
    hidden: list[int], dropout: float, weight: float
) -> None:
    torch.manual_seed(0)
    model = VAE(n_numeric=6, cat_sizes=[], hidden_dims=hidden, latent_dim=2, dropout=dropout)
    with torch.no_grad():  # some units past the log-variance clamps, one noise term too
        model.enc_log_var.bias[0] = 9.0
        model.enc_log_var.bias[1] = -13.0
        model.log_var_x[2] = -7.0
    model.train()
    x = torch.randn(33, 6)
    flat = _FlatParameters(model)
    step = _MlpStep.for_model(model)
    assert step is not None
    torch.manual_seed(1)  # the same dropout masks and noise for both
    flat.zero_grad()
    expected_loss = _step_by_autograd(model, x, weight)
    expected = flat.grad.clone()
    torch.manual_seed(1)
    flat.grad.fill_(float("nan"))  # every gradient must be written
    loss = step.step(x, weight)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat.grad, expected, rtol=1e-4, atol=1e-6)
    assert expected.abs().sum() > 0
    flat.release()


def test_written_out_step_is_not_used_where_it_does_not_apply() -> None:
    conv = VAE(
        n_numeric=24, cat_sizes=[], hidden_dims=[8], latent_dim=2, encoder="conv", window_steps=8
    )
    assert _MlpStep.for_model(conv) is None


_OVERLAPPING_FITS = """
import threading, torch
from anomaly_vae.training import torch_threads
torch.set_num_threads(3)
first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
def first():
    with torch_threads(1):
        first_in.set()
        second_in.wait(10)
    first_out.set()
def second():
    first_in.wait(10)
    with torch_threads(1):
        second_in.set()
        first_out.wait(10)
threads = [threading.Thread(target=first), threading.Thread(target=second)]
for t in threads:
    t.start()
for t in threads:
    t.join(20)
after_threads = torch.get_num_threads()
with torch_threads(4):
    with torch_threads(1):
        innermost = torch.get_num_threads()
    outer = torch.get_num_threads()
print(after_threads, innermost, outer, torch.get_num_threads())
"""


def test_overlapping_thread_settings_give_back_the_count_from_before() -> None:
    # Two fits in threads, each in torch_threads(1): the second saved the first's 1 and put it
    # back last, so the process stayed at 1 thread after both. (In a fresh interpreter: under
    # pytest a thread's setting may stay its own, and the fault does not show.)
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _OVERLAPPING_FITS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "1", "4", "3"]
