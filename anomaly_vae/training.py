"""The fit loop: mini-batches from one tensor, KL warm-up, gradient clipping, early stopping.

Data is held as one tensor on the training device and shuffled with a seeded generator, which is
both fast (no DataLoader per-row overhead) and reproducible: the same data, config and seed give
the same weights on the same machine.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anomaly_vae.config import TrainingConfig
from anomaly_vae.errors import TrainingError
from anomaly_vae.features import EncodedBatch
from anomaly_vae.model import (
    LATENT_LOG_VAR_MAX,
    LATENT_LOG_VAR_MIN,
    LOG_2PI,
    VAE,
    Dropout,
    LikelihoodLayout,
    feature_nll,
    fixed_noise,
    kl_divergence,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    batch_size: int
    seconds: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    from anomaly_vae.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available: use 'cpu'")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device {name!r} is not a torch device: use 'auto', 'cpu' or 'cuda'"
        ) from None
    # torch.device('mps') (or 'meta', 'xpu'...) is made without a check; the first tensor put
    # there failed deep in training with "PyTorch is not linked with support for mps devices".
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} (Apple MPS) is not available here: use 'cpu'")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported: use 'auto', 'cpu' or 'cuda'")
    return device


# Training has diverged when its best validation loss is above the untrained network's by
# more than that loss's own size, or by this many nats.
DIVERGED_MARGIN_NATS = 10.0


def auto_batch_size(n_train: int) -> int:
    """About 32 steps an epoch on small data, up to 1024 rows a step on large data."""
    target = max(1, n_train // 32)
    power = 2 ** round(math.log2(target)) if target > 1 else 1
    return int(min(1024, max(32, power)))


def auto_epochs(n_train: int, batch_size: int, cfg: TrainingConfig) -> int:
    """About ``target_steps`` optimiser steps, at least 10 epochs, at most ``max_epochs``, and
    no more passes than ``max_rows_seen`` rows allow (at least one pass)."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    epochs = max(10, math.ceil(cfg.target_steps / steps_per_epoch))
    budget = max(1, math.ceil(cfg.max_rows_seen / max(n_train, 1)))
    return int(min(cfg.max_epochs, epochs, budget))


def fit_vae(
    model: VAE,
    train: EncodedBatch,
    val: EncodedBatch,
    layout: LikelihoodLayout,
    *,
    cfg: TrainingConfig,
    beta: float,
    device: torch.device,
) -> TrainResult:
    """Train ``model`` in place and leave the weights of the best validation epoch in it."""
    started = time.perf_counter()
    n_train = train.x.shape[0]
    batch_size = cfg.batch_size or auto_batch_size(n_train)
    batch_size = min(batch_size, n_train)
    epochs = cfg.epochs or auto_epochs(n_train, batch_size, cfg)
    steps_per_epoch = math.ceil(n_train / batch_size)
    # The KL weight reaches beta within the first quarter of training at the latest, so that a
    # short run (a row budget on large data) still ends on the full objective.
    warmup_steps = min(cfg.kl_warmup_epochs * steps_per_epoch, epochs * steps_per_epoch // 4)

    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
    model.to(device)
    x_train = torch.from_numpy(train.x).to(device)
    o_train = torch.from_numpy(train.observed).to(device)
    x_val = torch.from_numpy(val.x).to(device)
    o_val = torch.from_numpy(val.observed).to(device)
    val_eps = fixed_noise(1, model.latent_dim, seed=cfg.seed)[0].to(device)

    flat = _FlatParameters(model)
    learning_rate = auto_learning_rate(cfg, epochs * steps_per_epoch)
    optimizer = _FlatAdam(flat.param, learning_rate, cfg.weight_decay)
    # What the untrained network scores: a trained one that does no better has diverged.
    untrained_loss = _validation_loss(model, x_val, o_val, layout, val_eps, beta)
    use_amp = cfg.mixed_precision and device.type == "cuda"

    def autocast() -> AbstractContextManager[object]:
        # A disabled autocast still costs a context switch per step: none at all without AMP.
        if use_amp:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    best_state = copy.deepcopy(model.state_dict())
    best_loss, best_epoch, bad_epochs = math.inf, 0, 0
    history: list[dict[str, float]] = []
    step = 0
    bar = tqdm(
        range(1, epochs + 1),
        desc="training",
        unit="epoch",
        disable=not cfg.progress,
        leave=False,
    )
    epoch = 0
    # Every value observed and no categorical block: the Gaussian term alone, no mask, no cat.
    numeric_only = not layout.cat_sizes and bool(o_train.all())
    # That case on an MLP without mixed precision: forward and backward written out, no graph.
    written_out = _MlpStep.for_model(model) if numeric_only and not use_amp else None
    for epoch in bar:
        model.train()
        order = torch.randperm(n_train, generator=gen).to(device)
        running = torch.zeros((), device=device)
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            xb = x_train.index_select(0, idx)
            weight = beta * min(1.0, step / warmup_steps) if warmup_steps else beta
            if written_out is not None:
                loss = written_out.step(xb, weight)
                flat.clip_grad_norm(cfg.grad_clip)
                optimizer.step()
                running.add_(loss, alpha=xb.shape[0])
                step += 1
                continue
            with autocast():
                out, mu, log_var = model(xb)
            if numeric_only:
                loss = numeric_elbo(
                    xb,
                    out.float(),
                    model.log_var_x,
                    mu.float(),
                    log_var.float(),
                    weight=weight,
                    min_log_var=model.min_log_var,
                )
            else:
                nll, _ = feature_nll(
                    xb, o_train.index_select(0, idx), out.float(), model.noise_log_var(), layout
                )
                kl = kl_divergence(mu.float(), log_var.float())
                loss = (nll.sum(dim=-1) + weight * kl).mean()
            flat.zero_grad()
            loss.backward()
            flat.clip_grad_norm(cfg.grad_clip)
            optimizer.step()
            running.add_(loss.detach(), alpha=xb.shape[0])  # no host sync per step
            step += 1
        train_loss = float(running) / n_train
        val_loss = _validation_loss(model, x_val, o_val, layout, val_eps, beta)
        if not math.isfinite(val_loss) and x_val.shape[0] == 0:
            val_loss = train_loss  # too few rows to hold some out: watch the training loss
        history.append({"epoch": float(epoch), "train_loss": train_loss, "val_loss": val_loss})
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if not math.isfinite(train_loss):
            logger.warning(
                "training loss is not finite at epoch %d; keeping the best weights", epoch
            )
            break
        warmed_up = step >= warmup_steps
        if val_loss < best_loss - 1e-4 * abs(best_loss if math.isfinite(best_loss) else 1.0):
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        elif warmed_up:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                break
    bar.close()
    flat.release()
    if not math.isfinite(best_loss) or (
        math.isfinite(untrained_loss)
        and best_loss > untrained_loss + max(abs(untrained_loss), DIVERGED_MARGIN_NATS)
    ):
        # A learning rate far too high blows the weights up in the first steps: the model
        # was saved all the same, with a threshold of 1e33 nats, and scored every record as
        # noise. Nothing is kept; the one line says what to change. (A run of an epoch or
        # two can end a little above the untrained network's loss: that is not divergence.)
        raise TrainingError(
            f"training diverged: the best validation loss ({best_loss:.4g} nats, epoch "
            f"{best_epoch}) is far above the untrained network's ({untrained_loss:.4g}); "
            f"lower training.learning_rate (the run used {learning_rate:.3g}), or look for "
            "columns with extreme values"
        )
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        epochs_run=epoch,
        best_epoch=best_epoch,
        best_val_loss=float(best_loss),
        batch_size=batch_size,
        seconds=time.perf_counter() - started,
        device=str(device),
        history=history,
    )


def auto_learning_rate(cfg: TrainingConfig, planned_steps: int) -> float:
    """``learning_rate``, raised up to 3x when the row budget leaves fewer than ``target_steps``
    steps (large data, epochs sized automatically).

    Adam moves each weight by about the learning rate per step, so the learned noise
    log-variances (starting at 0, ending near log of the residual variance, -4 or lower) need
    thousands of steps at 1e-3: a short run on large data ended with them far from their optimum
    and the ELBO ranked anomalies worse than the plain reconstruction error (ROC-AUC 0.94 against
    0.99 on 200k x 32; 0.989 at 3e-3 for the same time).
    """
    if cfg.epochs is not None or planned_steps >= cfg.target_steps:
        return cfg.learning_rate
    return cfg.learning_rate * min(3.0, cfg.target_steps / max(planned_steps, 1))


class _FlatAdam:
    """Adam (torch's defaults: betas 0.9 / 0.999, eps 1e-8) on the one flat parameter.

    Where this torch has the fused Adam kernel, it is called directly: ``torch.optim.Adam.step``
    spends about twice the kernel's own time (20 us at 27k weights) sorting its one tensor by
    device and dtype, checking graph capture and recording a profiler range, on every step.
    Otherwise (no fused kernel, or its signature changed) it is ``torch.optim.Adam``.
    """

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, param: torch.Tensor, lr: float, weight_decay: float) -> None:
        self.param, self.lr, self.weight_decay = param, float(lr), float(weight_decay)
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.steps = torch.zeros((), dtype=torch.float32, device=param.device)
        self.fallback: torch.optim.Adam | None = None
        if not self._fused_kernel_works(param.device):
            self.fallback = torch.optim.Adam(
                [param], lr=self.lr, weight_decay=self.weight_decay, foreach=True
            )

    def step(self) -> None:
        if self.fallback is not None:
            self.fallback.step()
            return
        grad = self.param.grad
        assert grad is not None
        self.steps += 1
        self._fused(self.param.data, grad, self.exp_avg, self.exp_avg_sq, self.steps)

    def _fused(self, *tensors: torch.Tensor) -> None:
        param, grad, exp_avg, exp_avg_sq, steps = tensors
        torch._fused_adam_(
            [param],
            [grad],
            [exp_avg],
            [exp_avg_sq],
            [],
            [steps],
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )

    def _fused_kernel_works(self, device: torch.device) -> bool:
        """One step of the kernel on a scratch tensor, against the formula."""
        try:
            p = torch.ones(2, device=device)
            g = torch.full((2,), 0.5, device=device)
            m, v = torch.zeros(2, device=device), torch.zeros(2, device=device)
            self._fused(p, g, m, v, torch.ones((), device=device))
        except (AttributeError, RuntimeError, TypeError):
            return False
        # Adam's first step moves each weight by lr * g / (|g| + eps), g including the decay.
        g_decayed = 0.5 + self.weight_decay
        expected = 1.0 - self.lr * g_decayed / (g_decayed + self.eps)
        return bool(torch.allclose(p.cpu(), torch.full((2,), expected), rtol=1e-4, atol=1e-6))


class _FlatParameters:
    """The model's parameters and gradients as views of one flat buffer each, for the length of
    a fit: the optimiser step and the gradient clipping then touch one tensor instead of one per
    layer, which is most of a small model's step time at small batch sizes on a CPU.

    Autograd accumulates each parameter's gradient in place into its view (the gradients are
    zeroed, never set to None); a gradient that arrives as a new tensor is copied back into its
    view. ``release`` gives every parameter its own storage back (saved weights must not share
    memory).
    """

    def __init__(self, model: nn.Module) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        data = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.param = nn.Parameter(data)
        self.grad = torch.zeros_like(data)
        self.param.grad = self.grad
        self.grad_views: list[torch.Tensor] = []
        offset = 0
        for p in self.params:
            n = p.numel()
            p.data = self.param.data[offset : offset + n].view_as(p)
            view = self.grad[offset : offset + n].view_as(p)
            p.grad = view
            self.grad_views.append(view)
            offset += n

    def zero_grad(self) -> None:
        self.grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> None:
        for p, view in zip(self.params, self.grad_views, strict=True):
            if p.grad is not view:
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
        norm = torch.linalg.vector_norm(self.grad)
        self.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))

    def release(self) -> None:
        for p in self.params:
            p.data = p.data.clone()
            p.grad = None


def numeric_elbo(
    x: torch.Tensor,
    out: torch.Tensor,
    log_var_x: torch.Tensor,
    mu: torch.Tensor,
    log_var: torch.Tensor,
    *,
    weight: float,
    min_log_var: float,
) -> torch.Tensor:
    """The training loss on numeric-only data with every value observed, as one autograd node:
    the batch mean of ``feature_nll(...)[0].sum(-1) + weight * kl_divergence(mu, log_var)``,
    with the noise log-variances ``log_var_x.clamp(min=min_log_var)``.

    Built from separate operations this is about twenty autograd nodes, forward and backward,
    each costing more than its arithmetic on a small batch; here the gradients are written out.
    """
    return _NumericElbo.apply(x, out, log_var_x, mu, log_var, float(weight), float(min_log_var))


class _NumericElbo(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        out: torch.Tensor,
        log_var_x: torch.Tensor,
        mu: torch.Tensor,
        log_var: torch.Tensor,
        weight: float,
        min_log_var: float,
    ) -> torch.Tensor:
        loss, saved = _elbo_value(x, out, log_var_x, mu, log_var, weight, min_log_var)
        ctx.save_for_backward(*saved)
        ctx.weight, ctx.n = weight, x.shape[0]
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = _elbo_grads(ctx.saved_tensors, ctx.n, ctx.weight, grad / ctx.n)
        return None, *grads, None, None


def _elbo_value(
    x: torch.Tensor,
    out: torch.Tensor,
    log_var_x: torch.Tensor,
    mu: torch.Tensor,
    log_var: torch.Tensor,
    weight: float,
    min_log_var: float,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``numeric_elbo``'s value, and what ``_elbo_grads`` needs of the forward pass."""
    n = x.shape[0]
    noise_log_var = log_var_x.clamp(min=min_log_var)
    inv_var = torch.exp(-noise_log_var)
    diff = out - x
    sq_sum = (diff * diff).sum(dim=0)  # per column, over the batch
    var = torch.exp(log_var)
    nll = 0.5 * (torch.dot(sq_sum, inv_var) + n * (LOG_2PI * x.shape[-1] + noise_log_var.sum()))
    kl = 0.5 * ((mu * mu).sum() + var.sum() - log_var.sum() - mu.numel())
    return (nll + weight * kl) / n, (diff, inv_var, sq_sum, log_var_x >= min_log_var, mu, var)


def _elbo_grads(
    saved: tuple[torch.Tensor, ...], n: int, weight: float, g: torch.Tensor | float
) -> tuple[torch.Tensor, ...]:
    """The gradients of ``numeric_elbo`` times ``g * n`` with respect to the decoder output,
    the noise log-variances, ``mu`` and ``log_var`` (the KL term's part of the last two)."""
    diff, inv_var, sq_sum, unclamped, mu, var = saved
    grad_out = diff * (inv_var * g)
    grad_log_var_x = (0.5 * g) * (n - sq_sum * inv_var) * unclamped
    grad_mu = mu * (g * weight)
    grad_log_var = (var - 1.0) * (0.5 * weight * g)
    return grad_out, grad_log_var_x, grad_mu, grad_log_var


class _MlpStep:
    """One training step of an MLP VAE on numeric-only, fully observed data with its forward
    and backward written out (no autograd graph): the same arithmetic as ``model(x)`` and
    ``numeric_elbo(...).backward()``, the same random draws in the same order (each dropout
    mask, then the reparameterisation noise), the gradients written straight into the
    parameters' ``.grad`` (the views of ``_FlatParameters``). At PyOD's shape and batch 32 on a
    CPU a step takes about half the time: the graph's bookkeeping and the modules' calls cost
    more than the arithmetic of such small matrices.
    """

    def __init__(self, model: VAE) -> None:
        self.model = model
        self.encoder = [m for m in model.encoder if isinstance(m, nn.Linear)]
        self.decoder = [m for m in model.decoder if isinstance(m, nn.Linear)]
        drops = [m for m in [*model.encoder, *model.decoder] if isinstance(m, Dropout)]
        self.p = drops[0].p if drops else 0.0
        self.scale = 1.0 / (1.0 - self.p)
        self.silu_backward = torch.ops.aten.silu_backward

    @classmethod
    def for_model(cls, model: VAE) -> _MlpStep | None:
        """The written-out step for ``model``, or None where it does not apply (the conv
        encoder; layers other than Linear / SiLU / Dropout; no ``silu_backward`` op)."""
        if model.encoder_kind != "mlp" or not hasattr(torch.ops.aten, "silu_backward"):
            return None
        kinds = (nn.Linear, nn.SiLU, Dropout)
        layers = [*model.encoder, *model.decoder]
        if not all(isinstance(m, kinds) for m in layers):
            return None
        if len({m.p for m in layers if isinstance(m, Dropout)}) > 1:
            return None
        return cls(model)

    def _layer(self, linear: nn.Linear, h: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        a = torch.addmm(linear.bias, h, linear.weight.t())
        out = nn.functional.silu(a)
        keep = None
        if self.p > 0.0:
            keep = torch.rand_like(a).ge_(self.p).mul_(self.scale)
            out.mul_(keep)
        return out, (h, a, keep)

    def _back(
        self, linear: nn.Linear, grad: torch.Tensor, saved: tuple[Any, ...], *, first: bool
    ) -> torch.Tensor:
        """Gradients of one Linear + SiLU (+ dropout) layer; returns the gradient at its input
        (not for the ``first`` layer, whose input is the data)."""
        h, a, keep = saved
        if keep is not None:
            grad = grad * keep
        grad_a = self.silu_backward(grad, a)
        _linear_grads(linear, grad_a, h)
        return grad_a if first else torch.mm(grad_a, linear.weight)

    @torch.no_grad()
    def step(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """Forward and backward on the batch ``x``; the gradients are left in the parameters'
        ``.grad``. Returns the loss (a 0-d tensor: no host sync)."""
        model = self.model
        h, encoded = x, []
        for linear in self.encoder:
            h, saved = self._layer(linear, h)
            encoded.append(saved)
        mu = torch.addmm(model.enc_mu.bias, h, model.enc_mu.weight.t())
        raw_log_var = torch.addmm(model.enc_log_var.bias, h, model.enc_log_var.weight.t())
        log_var = raw_log_var.clamp(LATENT_LOG_VAR_MIN, LATENT_LOG_VAR_MAX)  # as VAE.encode
        std = torch.exp(0.5 * log_var)
        eps = torch.randn_like(mu)
        g, decoded = mu + std * eps, []
        for linear in self.decoder:
            g, saved = self._layer(linear, g)
            decoded.append(saved)
        out = torch.addmm(model.dec_out.bias, g, model.dec_out.weight.t())

        # The loss and its gradients, as numeric_elbo (the batch mean).
        n = x.shape[0]
        log_var_x = model.log_var_x
        loss, saved = _elbo_value(x, out, log_var_x, mu, log_var, weight, model.min_log_var)
        grad_out, grad_log_var_x, kl_grad_mu, kl_grad_log_var = _elbo_grads(
            saved, n, weight, 1.0 / n
        )
        assert log_var_x.grad is not None
        log_var_x.grad.copy_(grad_log_var_x)

        _linear_grads(model.dec_out, grad_out, g)
        grad = torch.mm(grad_out, model.dec_out.weight)
        for linear, saved in zip(reversed(self.decoder), reversed(decoded), strict=True):
            grad = self._back(linear, grad, saved, first=False)
        # z = mu + exp(log_var / 2) * eps, and the KL term's own gradients.
        grad_mu = grad + kl_grad_mu
        grad_log_var = (grad * eps * std * 0.5 + kl_grad_log_var) * (
            (raw_log_var >= LATENT_LOG_VAR_MIN) & (raw_log_var <= LATENT_LOG_VAR_MAX)
        )
        _linear_grads(model.enc_mu, grad_mu, h)
        _linear_grads(model.enc_log_var, grad_log_var, h)
        grad = torch.mm(grad_mu, model.enc_mu.weight).addmm_(grad_log_var, model.enc_log_var.weight)
        last = len(self.encoder) - 1
        for i, (linear, saved) in enumerate(
            zip(reversed(self.encoder), reversed(encoded), strict=True)
        ):
            grad = self._back(linear, grad, saved, first=i == last)
        return loss


def _linear_grads(linear: nn.Linear, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
    """A Linear layer's weight and bias gradients, written into their ``.grad``."""
    weight, bias = linear.weight.grad, linear.bias.grad
    if weight is None or bias is None:
        raise RuntimeError("the written-out step needs the flat gradient views in place")
    torch.mm(grad_out.t(), inputs, out=weight)
    torch.sum(grad_out, 0, out=bias)


@torch.no_grad()
def _validation_loss(
    model: VAE,
    x: torch.Tensor,
    observed: torch.Tensor,
    layout: LikelihoodLayout,
    eps: torch.Tensor,
    beta: float,
) -> float:
    """The beta-ELBO on validation rows with one fixed noise vector: deterministic per epoch."""
    if x.shape[0] == 0:
        return math.nan
    model.eval()
    total = 0.0
    for start in range(0, x.shape[0], 16384):
        xb, ob = x[start : start + 16384], observed[start : start + 16384]
        mu, log_var = model.encode(xb)
        z = mu + torch.exp(0.5 * log_var) * eps
        nll, _ = feature_nll(xb, ob, model.decode(z), model.noise_log_var(), layout)
        total += float((nll.sum(dim=-1) + beta * kl_divergence(mu, log_var)).sum())
    return total / x.shape[0]


# torch's thread count is one setting for the whole process. The blocks that change it, in
# any thread, are kept in order of entry: the count is the newest open block's, and the count
# from before the first block comes back when the last one closes. (Each block putting back
# what it found left a process at 1 thread after two fits in threads overlapped: the second
# found the first's 1 and put it back last.)
_threads_lock = threading.Lock()
_threads_open: list[tuple[object, int]] = []
_threads_before: int | None = None


@contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``num_threads`` torch threads, then restore the count."""
    global _threads_before
    token = object()
    with _threads_lock:
        if not _threads_open:
            _threads_before = torch.get_num_threads()
        _threads_open.append((token, int(num_threads)))
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        with _threads_lock:
            _threads_open[:] = [entry for entry in _threads_open if entry[0] is not token]
            if _threads_open:
                torch.set_num_threads(_threads_open[-1][1])
            elif _threads_before is not None:
                torch.set_num_threads(_threads_before)
                _threads_before = None


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random (train, validation) split; validation gets at least one row when n > 1."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = round(n * fraction)
    n_val = min(max(n_val, 1 if n > 1 else 0), n - 1) if n > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])
