"""Which columns made a record anomalous: flagged records are explained by leaving each column
out, so that one extreme value is named even when it drags the latent code and spoils the
reconstruction of the other columns."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_vae import AnomalyVAE
from anomaly_vae.config import PipelineConfig
from anomaly_vae.features import EncodedBatch


def orders(n: int, seed: int) -> pd.DataFrame:
    """An order table whose total is quantity x unit price x (1 - discount)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east"], n),
            "qty": rng.integers(1, 10, n).astype(float),
            "unit_price": rng.gamma(3.0, 10.0, n).round(2),
            "discount": rng.random(n).round(3),
            "weight_kg": rng.normal(5.0, 1.0, n).round(3),
        }
    )
    frame["total"] = (frame["qty"] * frame["unit_price"] * (1 - frame["discount"])).round(2)
    return frame


@pytest.fixture(scope="module")
def order_model() -> AnomalyVAE:
    cfg = PipelineConfig(name="orders")
    cfg.training.seed = 3
    return AnomalyVAE(config=cfg).fit(orders(3000, seed=1))


@pytest.mark.parametrize("column", ["total", "unit_price", "weight_kg"])
def test_an_extreme_value_is_named_first(order_model: AnomalyVAE, column: str) -> None:
    test = orders(40, seed=2)
    test[column] *= 30.0
    batch = order_model.score_batch(test)
    flagged = batch.scores["is_anomaly"].to_numpy() == 1
    assert flagged.mean() > 0.9
    top = [t.split(":")[0] for t in batch.top_features_text(3)[flagged]]
    assert np.mean([t == column for t in top]) >= 0.9, top


def test_records_not_flagged_keep_the_one_pass_split(order_model: AnomalyVAE) -> None:
    test = orders(200, seed=4)
    plain = order_model.score_batch(test, threshold=1e9)  # nothing flagged
    every = order_model.score_batch(test, threshold=-1e9)  # everything flagged
    assert plain.raw_contributions is not None
    assert every.raw_contributions is not None
    assert not plain.scores["is_anomaly"].any()
    assert every.scores["is_anomaly"].all()
    np.testing.assert_allclose(plain.scores["score"], every.scores["score"])
    # Scores never change; the explanation of flagged records does.
    assert not np.allclose(plain.raw_contributions, every.raw_contributions)


def test_leaving_a_column_out_removes_exactly_its_terms(order_model: AnomalyVAE) -> None:
    """For a column the network ignores entirely, leaving it out changes nothing but its own
    likelihood term: the leave-one-out value equals the one-pass contribution."""
    test = orders(64, seed=5)
    clean, _ = order_model.schema_.validate(test, source="test")
    encoded = order_model.preprocessor_.transform(clean)
    scorer = order_model._scorer()
    names = order_model.schema_.names
    j = names.index("weight_kg")
    first = scorer.model.encoder[0]
    assert isinstance(first, torch.nn.Linear)
    saved = first.weight.detach().clone()
    try:
        layout = order_model.preprocessor_.layout
        inputs = [b for b, c in enumerate(layout.block_columns) if c == j]
        assert inputs
        assert all(b < layout.n_numeric for b in inputs)
        with torch.no_grad():
            first.weight[:, inputs] = 0.0  # the encoder no longer reads weight_kg
        columns = np.full((len(clean), 1), j)
        loo = scorer.leave_one_out(EncodedBatch(x=encoded.x, observed=encoded.observed), columns)
        one_pass = scorer.score(encoded).contributions
        assert one_pass is not None
        np.testing.assert_allclose(loo[:, 0], one_pass[:, j], rtol=1e-4, atol=1e-5)
    finally:
        with torch.no_grad():
            first.weight.copy_(saved)


def test_contribution_shares_lift_over_the_baseline() -> None:
    from anomaly_vae.scoring import contribution_shares

    raw = np.array(
        [
            [3.0, 1.0, 2.0],  # lifts 2, 0 (below its baseline), 1
            [0.5, 0.5, 0.5],  # nothing above the baseline
            [np.nan, 4.0, 1.0],  # a NaN lift: no shares rather than NaN shares
        ],
        dtype=np.float32,
    )
    baseline = np.array([1.0, 2.0, 1.0])
    shares = contribution_shares(raw, baseline)
    assert shares.dtype == np.float32
    np.testing.assert_allclose(shares[0], [2 / 3, 0.0, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(shares[1:], 0.0)
    unlifted = contribution_shares(raw[:1], None)[0]
    np.testing.assert_allclose(unlifted, [0.5, 1 / 6, 1 / 3], rtol=1e-6)
    assert raw[0, 0] == 3.0  # the input is left alone


def parse_top_features(text: str) -> list[tuple[str, float]]:
    """``top_features`` text as README documents it: pieces NAME:SHARE joined by ';', a name
    holding ':', ';' or '"' in double quotes with '"' doubled."""
    piece = re.compile(r'(?:"((?:[^"]|"")*)"|([^:;"]*)):(\d\.\d\d)(;|$)')
    out: list[tuple[str, float]] = []
    at = 0
    while at < len(text):
        match = piece.match(text, at)
        assert match is not None, (text, at)
        quoted, plain, share, _ = match.groups()
        out.append((quoted.replace('""', '"') if quoted is not None else plain, float(share)))
        at = match.end()
    return out


def test_column_names_with_separators_are_quoted_in_the_top_features_text() -> None:
    # 'total;eur:1' read back as the two columns 'total' and 'eur', the share as ':1:0.61'.
    names = {"total": "total;eur:1", "unit_price": "price:unit", "qty": 'qty "n"'}
    cfg = PipelineConfig(name="orders")
    cfg.training.seed = 3
    cfg.training.epochs = 30
    model = AnomalyVAE(config=cfg).fit(orders(1500, seed=1).rename(columns=names))
    test = orders(40, seed=2).rename(columns=names)
    test["total;eur:1"] *= 30.0
    texts = model.score(test)["top_features"].tolist()
    parsed = [parse_top_features(t) for t in texts]
    assert all(name in model.schema_.names for row in parsed for name, _ in row)
    assert {name for row in parsed for name, _ in row} >= {"total;eur:1"}
    assert np.mean([row[0][0] == "total;eur:1" for row in parsed]) >= 0.9
    assert parse_top_features("weight_kg:0.70;region:0.30") == [("weight_kg", 0.7), ("region", 0.3)]

    from anomaly_vae.cli.db import _text

    stored = [["total;eur:1", 0.6123], ['qty "n"', 0.3], ["discount", 0.08]]
    assert _text(stored) == '"total;eur:1":0.61;"qty ""n""":0.30;discount:0.08'


def test_top_features_helpers_leave_out_a_nan_share_and_refuse_a_bad_k() -> None:
    # top_features_text / _json are public helpers: a NaN share failed inside pyarrow ("Index
    # -9223372036854775808 out of bounds"), k=-1 with "'StringScalar' object has no attribute
    # 'to_numpy'", and a names list one short put no name at all to a column's share.
    from anomaly_vae.scoring import top_features_json, top_features_list, top_features_text

    shares = np.array([[np.nan, 0.75, 0.25], [0.5, 0.5, 0.0]], dtype=np.float32)
    names = ["a", "b", "c"]
    assert top_features_text(shares, names, 3).tolist() == ["b:0.75;c:0.25", "a:0.50;b:0.50"]
    assert top_features_json(shares, names, 5).tolist() == [
        '[["b",0.7500],["c",0.2500]]',
        '[["a",0.5000],["b",0.5000]]',
    ]
    assert top_features_list(shares, names, 3) == [
        [("b", 0.75), ("c", 0.25)],
        [("a", 0.5), ("b", 0.5)],
    ]
    for helper in (top_features_text, top_features_json, top_features_list):
        with pytest.raises(ValueError, match="k must be 0 or more, got -1"):
            helper(shares, names, -1)
        with pytest.raises(ValueError, match="2 names for 3 contribution columns"):
            helper(shares, names[:2], 2)


def test_leaving_columns_out_costs_at_most_half_the_batch_model_work(
    order_model: AnomalyVAE, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each column tried costs up to 1 + IMPUTE_ROUNDS network passes: with every record
    flagged, only as many as fit in half the batch's own passes are explained so (at least
    1,024), the highest scores first. Counted as one pass each, 2,500 of 20,000 were, three
    times the batch's own model work again."""
    from anomaly_vae.estimator import LOO_COLUMNS
    from anomaly_vae.scoring import IMPUTE_ROUNDS, Scorer

    test = orders(20_000, seed=6)
    seen: list[int] = []
    real = Scorer.leave_one_out

    def counting(self: Scorer, batch: EncodedBatch, columns: np.ndarray) -> np.ndarray:
        seen.append(len(columns))
        return real(self, batch, columns)

    monkeypatch.setattr(Scorer, "leave_one_out", counting)
    every = order_model.score_batch(test, threshold=-1e9)
    assert every.scores["is_anomaly"].all()
    tried = min(len(order_model.schema_.names), LOO_COLUMNS)
    assert tried == 6
    # 20,000 // (2 * 6 * 6) = 277 records: under the floor of 1,024 (was 20,000 // 12).
    assert len(test) // (2 * tried * (1 + IMPUTE_ROUNDS)) < 1024
    assert seen == [1024]
