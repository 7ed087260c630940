"""Batched scoring of encoded records on the chosen device: the one place scores are computed.

Every per-record term is in nats (or standardised units for ``recon_error``), and for each of them
**higher means more anomalous**. Scoring is deterministic: the Monte Carlo samples come from
``model.fixed_noise`` (K=1: the posterior mean), every mini-batch is padded to a multiple of
``ROW_BLOCK`` rows so the matrix kernels see the same shapes (on a GPU, to the whole batch size:
cuBLAS picks its kernel, and so its order of summation, by the number of rows), and no layer
mixes records; a record therefore scores the same twice, alone or in any batch, whole file or
chunked.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from anomaly_vae.features import EncodedBatch, FeatureLayout, feature_name_text
from anomaly_vae.model import (
    LOG_2PI,
    VAE,
    LikelihoodLayout,
    feature_nll,
    fixed_noise,
    gaussian_log_prob,
    kl_divergence,
    reconstruction_error,
    standard_normal_log_prob,
)

ScoreKind = Literal["neg_elbo", "nll_iw", "recon_error"]
SCORE_KINDS: tuple[str, ...] = ("neg_elbo", "nll_iw", "recon_error")
ROW_BLOCK = 64
# Encoder-decoder rounds that fill in a missing numeric value (``Scorer.impute``).
IMPUTE_ROUNDS = 5


@dataclass
class ScoreArrays:
    """Per-record terms, each ``float64[n]``.

    ``contributions`` is ``float32[n, n_columns]``: each input column's share of the
    reconstruction term before any baseline is taken off (nats, not yet normalised).
    """

    neg_elbo: np.ndarray
    recon_error: np.ndarray
    kl: np.ndarray
    nll_iw: np.ndarray | None
    contributions: np.ndarray | None

    def primary(self, kind: str) -> np.ndarray:
        if kind == "neg_elbo":
            return self.neg_elbo
        if kind == "recon_error":
            return self.recon_error
        if kind == "nll_iw":
            if self.nll_iw is None:
                raise ValueError("nll_iw was not computed: score with importance_weighted=True")
            return self.nll_iw
        raise ValueError(f"unknown score kind {kind!r}; use one of {SCORE_KINDS}")


# How scores are computed, saved in model.json as ``score_revision``, since a model's calibration
# (its threshold and the held-out scores behind percentiles) holds only under the computation it
# was made with. 1 (model files without the key): missing-indicator blocks count in every score;
# 2: they are inputs only. Revision-1 models keep them in the reconstruction error only.
SCORE_REVISION = 2


class Scorer:
    """Scores encoded batches with one model on one device.

    ``n_samples`` is K for the Monte Carlo ELBO and for the importance-weighted estimate.
    ``mode="recon"`` computes only the reconstruction error (one encoder and one decoder pass).
    """

    def __init__(
        self,
        model: VAE,
        layout: FeatureLayout,
        *,
        n_samples: int,
        seed: int,
        device: torch.device,
        batch_size: int = 8192,
        importance_weighted: bool = False,
        contributions: bool = True,
        mode: Literal["full", "recon"] = "full",
        mixed_precision: bool = False,
        indicators_in_recon_error: bool = False,
    ) -> None:
        self.model = model
        self.layout = layout
        self.lik_layout = LikelihoodLayout(layout.n_numeric, tuple(layout.cat_sizes))
        self.device = device
        self.batch_size = max(ROW_BLOCK, batch_size // ROW_BLOCK * ROW_BLOCK)
        # A GPU computes a padded row for next to nothing, and one shape means one kernel.
        self.fixed_rows = device.type == "cuda"
        self.importance_weighted = importance_weighted
        self.want_contributions = contributions
        self.mode = mode
        # K=1 is the one-point (Gauss-Hermite) rule: z at the posterior mean. It ranks as well
        # as K=8 quasi-random points on the benchmark sets (a single off-centre point ranks
        # worse) and reuses the decoder pass that the reconstruction error needs anyway.
        self.at_mean = n_samples == 1
        self.eps = (
            torch.zeros(1, model.latent_dim)
            if self.at_mean
            else fixed_noise(n_samples, model.latent_dim, seed=seed)
        ).to(device)
        self.block_index = torch.as_tensor(layout.block_columns, dtype=torch.long, device=device)
        self.n_columns = len(layout.column_names)
        self.imputable = torch.as_tensor(
            imputable_inputs(layout), dtype=torch.bool, device=device
        ).view(1, -1)
        # Missing-indicator blocks are inputs, not evidence: they leave every score term. But
        # the reconstruction error is a mean over the blocks, so leaving them out rescales it
        # for every record: a model saved before (``SCORE_REVISION`` 1,
        # ``indicators_in_recon_error``) keeps them in it, as its threshold and percentiles were
        # calibrated (else a recon_error model flagged twice as many normal records). The
        # negative ELBO is a sum: it loses only their small terms, and keeps the fix for gaps.
        indicators = indicator_blocks(layout)
        self.block_weight = torch.as_tensor(~indicators, dtype=torch.float32, device=device)
        skipped = np.zeros_like(indicators) if indicators_in_recon_error else indicators
        self.skip_blocks = frozenset(int(b) - layout.n_numeric for b in np.flatnonzero(skipped))
        # Every categorical block as (block number, start, stop in x); those that may be a gap
        # (all zeros: a missing value of a column that had none in training, not an
        # indicator), and which inputs each is made of.
        k = layout.n_numeric
        self.cat_blocks: list[tuple[int, int, int]] = []
        offset = k
        for b, size in enumerate(layout.cat_sizes):
            self.cat_blocks.append((k + b, offset, offset + size))
            offset += size
        self.cat_spans = [(lo, hi) for b, lo, hi in self.cat_blocks if not indicators[b]]
        members = torch.zeros(layout.input_dim - k, len(self.cat_spans))
        for i, (lo, hi) in enumerate(self.cat_spans):
            members[lo - k : hi - k, i] = 1.0
        self.cat_members = members.to(device)
        self.autocast = mixed_precision and device.type == "cuda"
        # The default (K=1 at the posterior mean, the full ELBO, no importance weights) has its
        # own path, ``_score_at_mean``: the same terms in fewer tensor passes.
        self.one_pass = self.at_mean and mode == "full" and not importance_weighted
        # Each block its own column (numeric columns only, no missing indicators): the
        # per-block terms are the per-column contributions as they are.
        self.blocks_are_columns = layout.block_columns == list(range(self.n_columns))
        self.weighted_blocks = [
            (b, lo, hi, float(self.block_weight[b]), b - k not in self.skip_blocks)
            for b, lo, hi in self.cat_blocks
        ]
        self.members_np = members.numpy() if self.cat_spans else None

    @torch.inference_mode()
    def score(self, batch: EncodedBatch) -> ScoreArrays:
        n = batch.x.shape[0]
        parts: dict[str, list[np.ndarray]] = {
            "neg_elbo": [],
            "recon_error": [],
            "kl": [],
            "nll_iw": [],
            "contrib": [],
        }
        self.model.eval()
        to = self.batch_size if self.fixed_rows else None
        complete = self._complete(batch)
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            x = _padded(batch.x[start:stop], self.device, to=to)
            obs = _padded(batch.observed[start:stop], self.device, to=to)
            rows = stop - start
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                if self.one_pass:
                    out = self._score_at_mean(x, obs, rows, complete=complete)
                else:
                    out = self._score_block(x, obs, rows, complete=complete)
            for key, value in out.items():
                parts[key].append(value[:rows].float().cpu().numpy())
        return ScoreArrays(
            neg_elbo=_cat(parts["neg_elbo"], n).astype(np.float64),
            recon_error=_cat(parts["recon_error"], n).astype(np.float64),
            kl=_cat(parts["kl"], n).astype(np.float64),
            nll_iw=_cat(parts["nll_iw"], n).astype(np.float64)
            if parts["nll_iw"] or (n == 0 and self.importance_weighted)
            else None,
            contributions=(
                _cat(parts["contrib"], n, width=self.n_columns) if self.want_contributions else None
            ),
        )

    @torch.inference_mode()
    def impute(self, x: Tensor, obs: Tensor, n_valid: int | None = None) -> Tensor:
        """``x`` with its gaps filled by the model's own guess: ``IMPUTE_ROUNDS`` rounds of
        encoding the record and putting the decoded value in each gap (for a numeric value its
        decoded mean; for a categorical block left empty by ``Preprocessor.transform``, its
        decoded probabilities, so that its likelihood term is the entropy of its categorical
        distribution). ``n_valid``: the rows of ``x`` that are records (the rest is padding).

        The median that ``Preprocessor.transform`` puts in a numeric gap is what a normal
        record would hold on average, not what this record's other columns say it holds: the
        encoder reads it as a real reading at odds with the rest, the latent code moves, and
        the other columns are reconstructed worse, so one sensor dropping out raised the score
        of a normal record by several nats and flagged many. A numeric column that had missing
        values in training keeps its median: the network learned it with its missing-indicator
        input. Only the rows with a gap go through the rounds (padded like ``score``, so a
        record imputes the same in any batch); the rest of ``x`` is returned unchanged.
        """
        k = self.lik_layout.n_numeric
        valid = x.shape[0] if n_valid is None else n_valid
        if not valid or not (k or self.cat_spans):
            return x
        gaps = (obs[:valid, :k] == 0) & self.imputable
        wanted = gaps.any(dim=1)
        empty = None
        if self.cat_spans:
            empty = x[:valid, k:] @ self.cat_members == 0
            wanted |= empty.any(dim=1)
        rows = wanted.nonzero().squeeze(1)
        n = rows.numel()
        if not n:
            return x
        to = self.batch_size if self.fixed_rows and n <= self.batch_size else n + (-n) % ROW_BLOCK
        sub = x.new_zeros((to, x.shape[1]))
        sub[:n] = x[rows]
        gap = gaps.new_zeros((to, k))
        gap[:n] = gaps[rows]
        hole = None
        if empty is not None:
            hole = empty.new_zeros((to, empty.shape[1]))
            hole[:n] = empty[rows]
        for _ in range(IMPUTE_ROUNDS):
            mu, _ = self.model.encode(sub)
            decoded = self.model.decode(mu)
            if k:
                sub[:, :k] = torch.where(gap, decoded[:, :k], sub[:, :k])
            if hole is not None:
                for i, (lo, hi) in enumerate(self.cat_spans):
                    if bool(hole[:, i].any()):
                        probs = torch.softmax(decoded[:, lo:hi], dim=-1)
                        sub[:, lo:hi] = torch.where(hole[:, i : i + 1], probs, sub[:, lo:hi])
        x = x.clone()
        x[rows] = sub[:n]
        return x

    def _complete(self, batch: EncodedBatch) -> bool:
        """Whether ``batch`` has no gap for ``impute`` to fill: every numeric value observed and
        no categorical block left empty. Checked once for the whole batch, on the host."""
        if not bool(batch.observed.all()):
            return False
        if self.members_np is None or not len(batch.x):
            return True
        k = self.lik_layout.n_numeric
        return bool((batch.x[:, k:] @ self.members_np).all())

    def _score_at_mean(
        self, x: Tensor, obs: Tensor, n_valid: int, *, complete: bool
    ) -> dict[str, Tensor]:
        """``_score_block`` for K=1 at the posterior mean (the default): the same terms (the
        reconstruction error, the negative ELBO, the KL and the per-column excess), each
        computed once. ``complete``: no gap anywhere in the batch (``_complete``), so the
        imputation and the masks by ``obs`` are left out."""
        model, layout = self.model, self.lik_layout
        if not complete:
            x = self.impute(x, obs, n_valid)
        mu, log_var = model.encode(x)
        out = model.decode(mu)
        kl = kl_divergence(mu, log_var)
        k = layout.n_numeric
        rows = x.shape[0]
        nll_parts: list[Tensor] = []
        excess_parts: list[Tensor] = []
        total = torch.zeros(rows, dtype=out.dtype, device=out.device)
        count: Tensor | float = 0.0
        gaps: Tensor | None = None
        if k:
            noise_log_var = model.noise_log_var()
            diff = x[:, :k] - out[:, :k]
            sq = 0.5 * diff * diff * torch.exp(-noise_log_var)
            const = 0.5 * (LOG_2PI + noise_log_var)
            if complete:
                total = total + (diff * diff).sum(dim=-1)
                count = float(k)
                excess_parts.append(sq)
                nll_parts.append(sq + const)
            else:
                masked = diff * obs
                total = total + (masked * masked).sum(dim=-1)
                count = obs.sum(dim=-1)
                excess_parts.append(sq * obs)
                nll_parts.append((sq + const) * obs)
                # A missing value counts as a typical one (see ``_score_block``).
                entropy = 0.5 * (LOG_2PI + 1.0 + noise_log_var)
                gaps = ((1.0 - obs) * entropy).sum(dim=-1)
        for _, lo, hi, weight, in_recon in self.weighted_blocks:
            logits = out[:, lo:hi]
            term = -(x[:, lo:hi] * torch.log_softmax(logits, dim=-1)).sum(dim=-1, keepdim=True)
            if weight != 1.0:
                term = term * weight
            excess_parts.append(term)
            nll_parts.append(term)
            if in_recon:
                probs_diff = x[:, lo:hi] - torch.softmax(logits, dim=-1)
                total = total + (probs_diff * probs_diff).sum(dim=-1)
                count = count + (hi - lo)
        recon = total / (count.clamp(min=1.0) if isinstance(count, Tensor) else max(count, 1.0))
        nll = nll_parts[0] if len(nll_parts) == 1 else torch.cat(nll_parts, dim=-1)
        nll_sum = nll.sum(dim=-1) if gaps is None else nll.sum(dim=-1) + gaps
        result = {"neg_elbo": nll_sum + kl, "recon_error": recon, "kl": kl}
        if self.want_contributions:
            excess = excess_parts[0] if len(excess_parts) == 1 else torch.cat(excess_parts, -1)
            if self.blocks_are_columns:
                result["contrib"] = excess
            else:
                per_col = torch.zeros(rows, self.n_columns, dtype=excess.dtype, device=x.device)
                per_col.index_add_(1, self.block_index, excess)
                result["contrib"] = per_col
        return result

    def _score_block(
        self, x: Tensor, obs: Tensor, n_valid: int, *, complete: bool = False
    ) -> dict[str, Tensor]:
        model, layout = self.model, self.lik_layout
        if not complete:  # else nothing to fill in
            x = self.impute(x, obs, n_valid)
        mu, log_var = model.encode(x)
        at_mu = model.decode(mu)
        recon = reconstruction_error(x, obs, at_mu, layout, self.skip_blocks)
        if self.mode == "recon":
            zeros = torch.zeros_like(recon)
            out = {"recon_error": recon, "neg_elbo": zeros, "kl": zeros}
            if self.want_contributions:
                out["contrib"] = torch.zeros(x.shape[0], self.n_columns, device=x.device)
            return out
        kl = kl_divergence(mu, log_var)
        std = torch.exp(0.5 * log_var)
        z = mu.unsqueeze(0) + std.unsqueeze(0) * self.eps.unsqueeze(1)  # [K, n, L]
        decoded = at_mu.unsqueeze(0) if self.at_mean else model.decode(z)
        noise_log_var = model.noise_log_var()
        nll, excess = feature_nll(x, obs, decoded, noise_log_var, layout)
        excess = excess * self.block_weight
        recon_k = (nll * self.block_weight).sum(dim=-1)  # [K, n]
        if layout.n_numeric:
            # A missing value counts as a typical one: the entropy of the model's Gaussian for
            # it, E[-log p(x | z)] over the values the model expects there. Left out, it took
            # its (usually negative) term out of the sum and so raised the score.
            entropy = 0.5 * (LOG_2PI + 1.0 + noise_log_var)
            recon_k = recon_k + ((1.0 - obs[:, : layout.n_numeric]) * entropy).sum(dim=-1)
        result = {"neg_elbo": recon_k.mean(dim=0) + kl, "recon_error": recon, "kl": kl}
        if self.importance_weighted:
            log_w = (
                -recon_k
                + standard_normal_log_prob(z)
                - gaussian_log_prob(z, mu.unsqueeze(0), log_var.unsqueeze(0))
            )
            k = log_w.shape[0]
            result["nll_iw"] = -(torch.logsumexp(log_w, dim=0) - math.log(k))
        if self.want_contributions:
            per_block = excess.mean(dim=0)  # [n, n_blocks]
            per_col = torch.zeros(
                x.shape[0], self.n_columns, dtype=per_block.dtype, device=x.device
            )
            per_col.index_add_(1, self.block_index, per_block)
            result["contrib"] = per_col
        return result

    @torch.inference_mode()
    def leave_one_out(self, batch: EncodedBatch, columns: np.ndarray) -> np.ndarray:
        """What each of some columns contributes to each record's score, by leaving it out:
        ``columns`` is ``int[n, m]`` (for each record, the m columns to try); returns
        ``float32[n, m]`` on the scale of ``ScoreArrays.contributions``.

        A column is left out the way a missing value is: its numeric inputs are marked
        unobserved and filled in by ``impute`` (the training median where the column has a
        missing indicator), its categorical blocks are given the decoder's own guess, and its
        likelihood terms leave the sum. Its contribution is how much the
        record's excess (the data-dependent likelihood terms plus the KL, at the posterior
        mean) falls without it. Where one extreme value drags the latent code and so spoils the
        reconstruction of other columns, this names the extreme value, which the per-term split
        of one pass does not. Costs one encoder and decoder pass per record and column tried.
        """
        n, m = columns.shape
        out = np.zeros((n, m), dtype=np.float32)
        if n == 0 or m == 0:
            return out
        model = self.model
        model.eval()
        k = self.lik_layout.n_numeric
        rows_per_pass = max(ROW_BLOCK, self.batch_size // m // ROW_BLOCK * ROW_BLOCK)
        to = rows_per_pass if self.fixed_rows else None
        for first in range(0, n, rows_per_pass):
            last = min(n, first + rows_per_pass)
            # Padded like ``score``: the same shapes whatever the batch, the same numbers.
            x = _padded(batch.x[first:last], self.device, to=to)
            obs = _padded(batch.observed[first:last], self.device, to=to)
            rows = x.shape[0]
            cols = torch.zeros(rows, m, dtype=torch.long, device=self.device)
            cols[: last - first] = torch.tensor(np.array(columns[first:last]), device=self.device)
            x = self.impute(x, obs, last - first)
            mu, log_var = model.encode(x)
            decoded = model.decode(mu)
            whole = self._excess(x, obs, decoded, mu, log_var).sum(dim=-1)  # [rows]
            # One copy of each record per column tried: [rows * m, ...].
            gone = self.block_index.view(1, -1) == cols.reshape(-1, 1)  # [rows*m, blocks]
            xs = x.repeat_interleave(m, dim=0)
            obs_s = obs.repeat_interleave(m, dim=0)
            if k:
                numeric_gone = gone[:, :k]
                xs[:, :k] = xs[:, :k].masked_fill(numeric_gone, 0.0)  # the median
                obs_s = obs_s.masked_fill(numeric_gone, 0.0)
            guess = decoded.repeat_interleave(m, dim=0)
            for block, lo, hi in self.cat_blocks:
                owned = gone[:, block]
                if bool(owned.any()):
                    xs[owned, lo:hi] = torch.softmax(guess[owned, lo:hi], dim=-1)
            xs = self.impute(xs, obs_s, (last - first) * m)
            mu_s, log_var_s = model.encode(xs)
            terms = self._excess(xs, obs_s, model.decode(mu_s), mu_s, log_var_s)
            kept = (terms[:, :-1] * (~gone)).sum(dim=-1) + terms[:, -1]  # [rows*m]
            delta = whole.repeat_interleave(m) - kept
            out[first:last] = delta.view(rows, m)[: last - first].float().cpu().numpy()
        return out

    def _excess(self, x: Tensor, obs: Tensor, out: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
        """The data-dependent likelihood term of each block and the KL, ``[n, n_blocks + 1]``."""
        _, excess = feature_nll(x, obs, out, self.model.noise_log_var(), self.lik_layout)
        excess = excess * self.block_weight
        return torch.cat([excess, kl_divergence(mu, log_var).unsqueeze(-1)], dim=-1)


def indicator_blocks(layout: FeatureLayout) -> np.ndarray:
    """``bool[n_blocks]``: the missing-indicator blocks (categorical blocks that explain a
    numeric column)."""
    k = layout.n_numeric
    numeric_columns = set(layout.block_columns[:k])
    return np.array(
        [b >= k and c in numeric_columns for b, c in enumerate(layout.block_columns)], dtype=bool
    )


def imputable_inputs(layout: FeatureLayout) -> np.ndarray:
    """``bool[n_numeric]``: the numeric inputs whose column has no missing-indicator block (it
    had no missing value in training), where ``Scorer.impute`` fills a gap."""
    flagged = {layout.block_columns[b] for b in np.flatnonzero(indicator_blocks(layout))}
    numeric = layout.block_columns[: layout.n_numeric]
    return np.array([c not in flagged for c in numeric], dtype=bool)


def _padded(array: np.ndarray, device: torch.device, *, to: int | None = None) -> Tensor:
    """``array`` on ``device``, zero rows added up to ``to`` rows (None: a multiple of
    ``ROW_BLOCK``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    pad = (-tensor.shape[0]) % ROW_BLOCK if to is None else to - tensor.shape[0]
    if pad:
        tensor = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))])
    return tensor.to(device, non_blocking=True)


def _cat(parts: list[np.ndarray], n: int, width: int | None = None) -> np.ndarray:
    if parts:
        return np.concatenate(parts)
    shape = (n,) if width is None else (n, width)
    return np.zeros(shape, dtype=np.float32)


def contribution_shares(raw: np.ndarray, baseline: np.ndarray | None) -> np.ndarray:
    """Each column's share of what lifts a record above its usual level, summing to 1 per row.

    ``baseline`` is each column's median contribution on held-out normal data: a column that
    always costs a few nats (a hard-to-predict category, say) does not explain an anomaly.
    float32 throughout, in place on one copy: this runs on every scored record.
    """
    lifted = np.array(raw, dtype=np.float32, copy=True)
    if baseline is not None:
        lifted -= np.asarray(baseline, dtype=np.float32)[None, :]
    np.maximum(lifted, 0.0, out=lifted)
    total = lifted.sum(axis=1, keepdims=True)
    nothing = ~(total[:, 0] > 0)  # NaN totals too
    np.divide(lifted, total, out=lifted, where=~nothing[:, None])
    lifted[nothing] = 0.0
    return lifted


def _top_shape(contributions: np.ndarray, names: list[str], k: int) -> tuple[int, int]:
    """(rows, k capped at the columns) of a contributions matrix, or a ValueError
    that says what is wrong (k=-1 failed inside pyarrow; a names list of the wrong length
    put one column's name on another's share)."""
    if np.ndim(contributions) != 2:
        raise ValueError(
            f"contributions must be 2-D (records x columns), got shape {np.shape(contributions)}"
        )
    n, width = contributions.shape
    if len(names) != width:
        raise ValueError(f"{len(names)} names for {width} contribution columns")
    if int(k) < 0:
        raise ValueError(f"k must be 0 or more, got {k}")
    return n, min(int(k), width)


def _top_k(contributions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and shares of the k largest contributions per row, largest first."""
    width = contributions.shape[1]
    if k < width:
        part = np.argpartition(-contributions, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(width), contributions.shape).copy()
    shares = np.take_along_axis(contributions, part, axis=1)
    order = np.argsort(-shares, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(shares, order, axis=1)


def top_features_text(
    contributions: np.ndarray,
    names: list[str],
    k: int,
    *,
    min_share: float = 0.005,
    arrow: bool = False,
) -> Any:
    """'col:share;col:share' for the k columns that explain most of each record's score.

    Vectorised: each (column, share rounded to 0.01) piece comes from a lookup table and the
    pieces are joined by pyarrow, so formatting a million rows takes a fraction of a second.
    A numpy array of ``str``; with ``arrow=True`` a pandas array over the Arrow strings (no
    Python object per row: what the CSV writer hands back to pyarrow).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n, k = _top_shape(contributions, names, k)
    if n == 0 or k == 0:
        if arrow:
            return pd.arrays.ArrowExtensionArray(pa.array([""] * n, pa.string()))
        return np.full(n, "", dtype=object)
    cols, shares = _top_k(contributions, k)
    below = ~(shares >= min_share)  # NaN too: a share that is no number is left out
    hundredths = np.clip(np.rint(np.nan_to_num(shares) * 100.0), 0, 100).astype(np.int64)
    table = _piece_texts(tuple(names))
    pieces = [
        pc.take(table, pa.array(cols[:, j] * 101 + hundredths[:, j], mask=below[:, j]))
        for j in range(k)
    ]
    # Shares are sorted, so the pieces left out (null) are always the last ones: join with ""
    # in their place and trim the trailing separators. (null_handling="skip" drops all-null
    # rows in some pyarrow versions.)
    joined = pc.binary_join_element_wise(*pieces, ";", null_handling="replace", null_replacement="")
    trimmed = pc.utf8_rtrim(joined, characters=";")
    if arrow:
        return pd.arrays.ArrowExtensionArray(trimmed)
    return np.asarray(trimmed.to_numpy(zero_copy_only=False), dtype=object)


def top_features_json(
    contributions: np.ndarray, names: list[str], k: int, *, min_share: float = 0.005
) -> np.ndarray:
    """The same as ``top_features_list``, as JSON text per record (``[["col",0.6123],...]``),
    built column-wise as ``top_features_text`` is: what the database stores, without a
    ``json.dumps`` per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, k = _top_shape(contributions, names, k)
    if n == 0 or k == 0:
        return np.full(n, "[]", dtype=object)
    cols, shares = _top_k(contributions, k)
    prefixes = pa.array(["[" + json.dumps(name) + "," for name in names], pa.string())
    numbers = _share_texts()
    below = ~(shares >= min_share)  # NaN too
    ten_thousandths = np.clip(
        np.rint(np.nan_to_num(shares.astype(np.float64)) * 10_000.0), 0, 10_000
    )
    pieces = [
        pc.binary_join_element_wise(
            pc.take(prefixes, cols[:, j]),
            pc.take(
                numbers,
                pa.array(ten_thousandths[:, j].astype(np.int64), mask=below[:, j]),
            ),
            "",
        )
        for j in range(k)
    ]
    # As in top_features_text: left-out pieces are always the last ones (shares are sorted).
    joined = pc.binary_join_element_wise(*pieces, ",", null_handling="replace", null_replacement="")
    trimmed = pc.utf8_rtrim(joined, characters=",")
    wrapped = pc.binary_join_element_wise("[", trimmed, "]", "")
    return np.asarray(wrapped.to_numpy(zero_copy_only=False), dtype=object)


@functools.lru_cache(maxsize=16)
def _piece_texts(names: tuple[str, ...]) -> Any:
    """'col:0.00' to 'col:1.00' for every column, in column order (101 per column); a name
    holding ':', ';' or '"' in double quotes (``feature_name_text``)."""
    import pyarrow as pa

    return pa.array(
        [f"{feature_name_text(name)}:{h / 100:.2f}" for name in names for h in range(101)],
        pa.string(),
    )


@functools.cache
def _share_texts() -> Any:
    """'0.0000]' to '1.0000]': a share's JSON text with the pair's closing bracket."""
    import pyarrow as pa

    return pa.array([f"{i / 10_000:.4f}]" for i in range(10_001)], pa.string())


def top_features_list(
    contributions: np.ndarray, names: list[str], k: int, *, min_share: float = 0.005
) -> list[list[tuple[str, float]]]:
    """The same as ``top_features_text`` as Python lists of (column, share), for JSON sinks."""
    n, k = _top_shape(contributions, names, k)
    if n == 0 or k == 0:
        return [[] for _ in range(n)]
    order, shares = _top_k(contributions, k)
    return [
        [
            (names[c], round(float(s), 4))
            for c, s in zip(row_cols, row_shares, strict=False)
            if s >= min_share
        ]
        for row_cols, row_shares in zip(order, shares, strict=False)
    ]
