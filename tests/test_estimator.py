from __future__ import annotations

import copy
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_vae import AnomalyVAE, load_model
from anomaly_vae.errors import (
    ConfigError,
    InvalidRecordsError,
    ModelFileError,
    NotFittedError,
    SchemaError,
)
from tests.conftest import correlated_normal, with_anomalies


def test_detects_injected_anomalies(trained_model: AnomalyVAE) -> None:
    frame, labels = with_anomalies(1000, 100, seed=10)
    scores = trained_model.score(frame)
    assert roc_auc_score(labels, scores["score"]) > 0.95
    assert set(scores.columns) >= {
        "score",
        "recon_error",
        "kl",
        "percentile",
        "is_anomaly",
        "top_features",
    }
    # Calibrated threshold: few false alarms on normal rows, most anomalies caught.
    assert scores["is_anomaly"][labels == 0].mean() < 0.03
    assert scores["is_anomaly"][labels == 1].mean() > 0.5
    assert ((scores["percentile"] >= 0) & (scores["percentile"] <= 100)).all()


def test_kl_term_does_not_vanish(trained_model: AnomalyVAE) -> None:
    scores = trained_model.score(correlated_normal(500, seed=5))
    assert scores["kl"].mean() > 0.5  # the latent code carries information


def test_scores_are_deterministic_and_batch_independent(trained_model: AnomalyVAE) -> None:
    frame, _ = with_anomalies(700, 30, seed=3)
    first = trained_model.score(frame)
    second = trained_model.score(frame)
    pd.testing.assert_frame_equal(first, second)
    pieces = pd.concat(
        trained_model.score(frame.iloc[i : i + 33]) for i in range(0, len(frame), 33)
    )
    np.testing.assert_array_equal(pieces["score"].to_numpy(), first["score"].to_numpy())
    single = trained_model.score(frame.iloc[[17]])
    assert single["score"].iloc[0] == first["score"].iloc[17]


def test_api_directions(trained_model: AnomalyVAE) -> None:
    frame, labels = with_anomalies(300, 30, seed=4)
    decision = trained_model.decision_function(frame)
    predicted = trained_model.predict(frame)
    assert np.array_equal(predicted, (decision > 0).astype(int))
    assert decision[labels == 1].mean() > decision[labels == 0].mean()
    # scikit-learn's outlier detectors: score_samples higher = more normal. It was missing,
    # as was fit_predict (AttributeError for code written against IsolationForest).
    samples = trained_model.score_samples(frame)
    assert np.array_equal(samples, -trained_model.anomaly_score(frame))
    assert samples[labels == 1].mean() < samples[labels == 0].mean()


def test_fit_predict_is_fit_then_predict() -> None:
    x = correlated_normal(300, seed=0).drop(columns="kind").to_numpy()
    flags = AnomalyVAE(epochs=3, seed=1).fit_predict(x)
    assert np.array_equal(flags, AnomalyVAE(epochs=3, seed=1).fit(x).predict(x))
    assert set(np.unique(flags)) <= {0, 1}


def test_top_features_name_the_broken_column(trained_model: AnomalyVAE) -> None:
    frame = correlated_normal(50, seed=6)
    frame.loc[:, "s3"] = frame["s3"] + 25.0
    top = trained_model.score(frame)["top_features"]
    assert (top.str.split(":").str[0] == "s3").mean() > 0.9


def test_save_load_gives_identical_scores(trained_model: AnomalyVAE, tmp_path: Path) -> None:
    frame, _ = with_anomalies(400, 20, seed=7)
    digest = trained_model.save(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.model_hash_ == digest
    pd.testing.assert_frame_equal(trained_model.score(frame), loaded.score(frame))
    assert loaded.threshold_ == trained_model.threshold_
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format_version"] == 1
    assert meta["schema"]["columns"][0]["name"] == "s0"


def test_training_is_reproducible() -> None:
    data = correlated_normal(400, seed=1)
    a = AnomalyVAE(epochs=5, seed=3).fit(data)
    b = AnomalyVAE(epochs=5, seed=3).fit(data)
    c = AnomalyVAE(epochs=5, seed=4).fit(data)
    for key, value in a.model_.state_dict().items():
        assert torch.equal(value, b.model_.state_dict()[key])
    assert not torch.equal(a.model_.enc_mu.weight, c.model_.enc_mu.weight)


def test_fit_leaves_the_callers_torch_random_numbers_alone() -> None:
    # fit seeded torch's global generator with training.seed and left it so: the caller's
    # torch.rand after every fit gave the same numbers (a bootstrap loop's "random" noise was
    # one draw), and a sequence the caller had seeded was replaced.
    data = correlated_normal(100, seed=1)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    AnomalyVAE(epochs=1, seed=0).fit(data)
    assert torch.equal(torch.rand(4), expected)
    after_one = torch.rand(4)
    AnomalyVAE(epochs=1, seed=0).fit(data)
    assert not torch.equal(torch.rand(4), after_one)


def test_labelled_anomalies_are_left_out_of_training() -> None:
    frame, labels = with_anomalies(300, 40, seed=2)
    frame["label"] = labels.astype(int)
    model = AnomalyVAE(epochs=2, columns={"label": "label"}).fit(frame)
    assert "label" not in model.schema_.names
    s = model.training_summary_
    assert s["rows_train"] + s["rows_validation"] == 300


def test_a_minus_one_plus_one_label_is_refused_not_read_as_all_anomalous() -> None:
    # scikit-learn's convention (-1 = outlier, 1 = inlier) read as "non-zero = anomaly" left
    # every row out of training.
    frame, labels = with_anomalies(300, 40, seed=2)
    for sign in (labels.astype(int) * -2 + 1, [str(v) for v in labels.astype(int) * -2 + 1]):
        frame["label"] = sign
        with pytest.raises(ConfigError, match=r"label column 'label' has the negative value -1"):
            AnomalyVAE(epochs=2, columns={"label": "label"}).fit(frame)


def test_a_label_of_fractions_is_refused_not_read_as_all_anomalous() -> None:
    # y holding scores or measurements (0.62, 0.13...) read as "non-zero = anomaly": every row
    # but the zeros was left out of training as a labelled anomaly, without a word.
    frame, _ = with_anomalies(300, 40, seed=2)
    numeric = frame.drop(columns="kind")
    with pytest.raises(ConfigError, match=r"label column 'y' has the value 0\.\d+ \(row 0\)"):
        AnomalyVAE(epochs=1).fit(numeric, numeric["s0"].abs().to_numpy() + 0.01)
    frame["label"] = [f"{v:.2f}" for v in numeric["s1"].abs() + 0.01]
    with pytest.raises(ConfigError, match=r"label column 'label' has the value .* is it the right"):
        AnomalyVAE(epochs=1, columns={"label": "label"}).fit(frame)
    # Whole numbers are still classes: non-zero is anomalous.
    model = AnomalyVAE(epochs=1).fit(numeric, np.r_[np.zeros(300), np.full(40, 2.0)])
    assert model.training_summary_["rows_labelled_anomalous"] == 40


def test_y_as_a_column_vector_or_a_one_column_frame_is_read_as_labels() -> None:
    # fit(x, y.reshape(-1, 1)) or fit(x, df[["label"]]), which scikit-learn accepts, was a
    # pandas traceback: "Data must be 1-dimensional, got ndarray of shape (340, 1)".
    frame, labels = with_anomalies(300, 40, seed=2)
    x, y = frame.drop(columns="kind").to_numpy(), labels.astype(int)
    for given in (y.reshape(-1, 1), pd.DataFrame({"label": y})):
        model = AnomalyVAE(epochs=1).fit(x, given)
        assert model.training_summary_["rows_labelled_anomalous"] == 40
    with pytest.raises(ConfigError, match=r"y must be one label per row .* got shape \(340, 2\)"):
        AnomalyVAE(epochs=1).fit(x, np.c_[y, y])


def test_the_label_columns_name_given_as_y_says_how_to_name_it() -> None:
    # fit(df, "label") was "y must be one label per row (...); got shape ()".
    data = correlated_normal(50, seed=0).assign(label=0)
    with pytest.raises(ConfigError) as caught:
        AnomalyVAE(epochs=1).fit(data, "label")
    assert str(caught.value) == (
        "y must be one label per row (a 1-D array, a list or a Series); got the single value "
        "'label': to name X's label column, pass columns={'label': 'label'} to AnomalyVAE "
        "(or y=X['label'])"
    )
    with pytest.raises(ConfigError, match=r"got the single value 0$"):
        AnomalyVAE(epochs=1).fit(data, 0)


def test_too_few_training_rows_is_said_as_such() -> None:
    # An empty frame (or one whose rows are all labelled anomalous) was reported as "column
    # ... is empty" for every column and then "no feature columns left".
    frame = correlated_normal(40, seed=1)
    with pytest.raises(SchemaError, match=r"training data has 0 rows; a model needs at least"):
        AnomalyVAE(epochs=1).fit(frame.iloc[:0])
    frame["label"] = [1] * 35 + [0] * 5
    with pytest.raises(SchemaError, match=r"has 5 rows \(35 labelled anomalous left out\)"):
        AnomalyVAE(epochs=1, columns={"label": "label"}).fit(frame)


def test_parameter_errors_name_the_parameter() -> None:
    data = correlated_normal(50, seed=0)
    with pytest.raises(
        ConfigError,
        match=r"The 'latent_dim' parameter must be greater than or equal to 1. Got 0 instead",
    ):
        AnomalyVAE(latent_dim=0).fit(data)
    with pytest.raises(ConfigError, match="score_kind"):
        AnomalyVAE(score_kind="nope").fit(data)
    with pytest.raises(ConfigError, match="columns"):
        AnomalyVAE(columns={"bogus": 1}).fit(data)


def test_a_boolean_or_a_rule_broken_by_a_parameter_is_named_as_that_parameter() -> None:
    # latent_dim=True (a grid of flags) read "The model.model setting latent_dim: expected a
    # number, got a boolean (...). Got {'hidden_dims': [128, 64], 'latent_dim': True, ...}
    # instead."; hidden_dims=[0] "The 'hidden_dims' parameter every hidden width must be >= 1,
    # got [0]. Got [0] instead."
    data = correlated_normal(50, seed=0)
    with pytest.raises(ConfigError) as caught:
        AnomalyVAE(latent_dim=True).fit(data)
    assert str(caught.value) == (
        "The 'latent_dim' parameter: expected a number, got a boolean (true/false, yes/no, "
        "on/off). Got True instead."
    )
    with pytest.raises(ConfigError) as caught:
        AnomalyVAE(hidden_dims=[0]).fit(data)
    assert str(caught.value) == (
        "The 'hidden_dims' parameter: every hidden width must be >= 1, got [0]."
    )


def test_config_may_be_a_dict_of_sections_as_columns_may() -> None:
    # config={"model": {...}} failed with "'dict' object has no attribute 'model_copy'" (a
    # traceback from inside fit), while columns= took a dict.
    from sklearn.base import clone

    data = correlated_normal(60, seed=0)
    model = AnomalyVAE(epochs=1, seed=0, config={"name": "pumps", "model": {"latent_dim": 3}})
    assert model.name == "pumps"
    model.fit(data)
    assert model.latent_dim_ == 3
    assert model.name == "pumps"
    assert clone(model).get_params()["config"] == {"name": "pumps", "model": {"latent_dim": 3}}
    with pytest.raises(ConfigError, match=r"The 'config' parameter: model.latnet_dim: Extra"):
        AnomalyVAE(config={"model": {"latnet_dim": 3}}).fit(data)
    with pytest.raises(ConfigError, match=r"must be a PipelineConfig or a dict.*Got str"):
        AnomalyVAE(config="pipelines/pumps.yaml").fit(data)  # type: ignore[arg-type]


def test_parameters_that_contradict_each_other_are_one_config_error() -> None:
    # columns= naming another entity than the config's window came out of fit as pydantic's
    # multi-line ValidationError.
    from anomaly_vae.config import PipelineConfig

    data = correlated_normal(60, seed=0)
    windowed = PipelineConfig.model_validate({"window": {"size": 2, "entity": "b"}})
    with pytest.raises(ConfigError, match=r"^The parameters do not fit together: .*window\.entity"):
        AnomalyVAE(columns={"entity": "a"}, config=windowed).fit(data)


def test_scikit_learn_default_scoring_says_to_give_a_scoring() -> None:
    # cross_val_score / GridSearchCV without 'scoring' call score(X, y) for a metric: it failed
    # with "score() takes 2 positional arguments but 3 were given", every fold became NaN and
    # the grid search picked its first candidate.
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    frame, labels = with_anomalies(300, 40, seed=2)
    x, y = frame.drop(columns="kind").to_numpy(), labels.astype(int)
    model = AnomalyVAE(epochs=2, seed=0)
    with pytest.raises(ConfigError, match=r"not a metric.*scoring='roc_auc'"):
        cross_val_score(model, x, y, cv=2, error_score="raise")
    with pytest.warns(UserWarning, match=r"scoring='roc_auc'"):
        cross_val_score(model, x, y, cv=2)
    aucs = cross_val_score(model, x, y, cv=StratifiedKFold(2), scoring="roc_auc")
    assert np.all(aucs > 0.5)  # decision_function: positive = anomalous, as labels 1 are


def test_input_of_the_wrong_shape_says_what_to_pass(trained_model: AnomalyVAE) -> None:
    # A scipy sparse matrix was "got an array of shape ()", one row (df.iloc[0], x[0]) only
    # "shape (9,)", and hidden_dims=64 a bare TypeError "'int' object is not iterable".
    from scipy import sparse

    frame = correlated_normal(5, seed=3)
    numeric = frame.drop(columns="kind")
    with pytest.raises(ConfigError, match=r"scipy sparse csr_matrix.*pass X\.toarray\(\)"):
        trained_model.score(sparse.csr_matrix(numeric.to_numpy()))
    with pytest.raises(ConfigError, match=r"X is a Series.*df\.iloc\[\[i\]\]"):
        trained_model.score(frame.iloc[0])  # type: ignore[arg-type]
    # A column given to fit (or score) was told to pass a one-row frame, a training set of
    # one record: it is a column, to pass as a one-column frame.
    for call in (AnomalyVAE(epochs=1).fit, trained_model.score):
        with pytest.raises(ConfigError) as column:
            call(frame["s0"])  # type: ignore[arg-type]
        assert str(column.value) == (
            "X is a Series (one column 's0'); AnomalyVAE reads a DataFrame: pass "
            "series.to_frame() for one feature (df[['name']], not df['name']), or df.iloc[[i]] "
            "for one record"
        )
    with pytest.raises(ConfigError, match=r"one row of 8 values: pass X\.reshape\(1, -1\)"):
        AnomalyVAE(epochs=1).fit(numeric.to_numpy()[0])
    # A dict or a list of records (JSON's shape) was "got a dict" / "got an array of shape
    # (1,)", rows of unequal length numpy's own ValueError.
    with pytest.raises(ConfigError, match=r"X is a dict; pass pd\.DataFrame\(\[X\]\) for one"):
        trained_model.score({"s0": 1.0})  # type: ignore[arg-type]
    records = frame.to_dict("records")
    with pytest.raises(ConfigError, match=r"list of dicts \(records\); pass pd\.DataFrame\(X\)"):
        trained_model.score(records)  # type: ignore[arg-type]
    assert len(trained_model.score(pd.DataFrame(records))) == 5
    with pytest.raises(ConfigError, match=r"rows have different numbers of values"):
        trained_model.score([[1.0, 2.0], [3.0]])  # type: ignore[arg-type]
    assert len(trained_model.score(frame.iloc[[0]])) == 1
    with pytest.raises(ConfigError, match=r"The 'hidden_dims' parameter must be a valid list"):
        AnomalyVAE(hidden_dims=64).fit(numeric)  # type: ignore[arg-type]


def test_a_model_fitted_on_an_array_scores_a_frame_made_from_one() -> None:
    # fit(x) names the columns x0, x1...; predict(pd.DataFrame(x)) (columns 0, 1...) was
    # "feature columns 'x0', ... missing (columns found: '0', ...)".
    x = correlated_normal(300, seed=0).drop(columns="kind").to_numpy()
    model = AnomalyVAE(epochs=2, seed=0).fit(x)
    expected = model.anomaly_score(x[:20])
    np.testing.assert_array_equal(model.anomaly_score(pd.DataFrame(x[:20])), expected)
    np.testing.assert_array_equal(model.predict(pd.DataFrame(x[:20])), model.predict(x[:20]))
    # Columns named otherwise are not read by position: refused, saying why (fit(df.to_numpy())
    # then score(df) was "feature columns 'x0', ... missing (columns found: 'c0', ...)").
    named = pd.DataFrame(x[:5], columns=[f"c{i}" for i in range(x.shape[1])])
    with pytest.raises(SchemaError) as caught:
        model.score(named)
    assert str(caught.value) == (
        "X has named columns ('c0', 'c1', 'c2', 'c3', 'c4', ... (8 in all)), but the model was "
        "fitted on an array, whose 8 columns are read by position (x0, x1...): pass "
        "X.to_numpy() with the columns in the order of training, or fit on the DataFrame to "
        "have its columns read by name"
    )
    np.testing.assert_array_equal(model.anomaly_score(named.to_numpy()), expected[:5])


def test_an_array_of_another_width_than_the_fitted_one_is_refused(tmp_path: Path) -> None:
    # An array with one column more (a column inserted in front) was read by position, its
    # first 8 columns scored as if they were the model's: no error, wrong scores.
    x = correlated_normal(300, seed=0).drop(columns="kind").to_numpy()
    model = AnomalyVAE(epochs=2, seed=0).fit(x)
    model.save(tmp_path / "m")
    wider = np.c_[np.zeros((5, 1)), x[:5]]
    for fitted in (model, load_model(tmp_path / "m")):  # a Path, as AnomalyVAE.load takes
        for given in (wider, x[:5, :7], pd.DataFrame(wider)):
            with pytest.raises(ConfigError, match=r"X has \d columns, but the model was fitted on"):
                fitted.predict(given)
        np.testing.assert_array_equal(fitted.predict(x[:5]), model.predict(x[:5]))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has Apple MPS")
def test_a_device_this_machine_lacks_is_one_line_before_training() -> None:
    # device='mps' on a machine without it failed inside training with torch's RuntimeError
    # "PyTorch is not linked with support for mps devices".
    data = correlated_normal(50, seed=0)
    with pytest.raises(ConfigError, match=r"device 'mps' \(Apple MPS\) is not available here"):
        AnomalyVAE(epochs=1, device="mps").fit(data)
    with pytest.raises(ConfigError, match=r"device 'meta' is not supported: use 'auto'"):
        AnomalyVAE(epochs=1, device="meta").fit(data)


def test_score_batch_refuses_a_threshold_that_is_no_number(trained_model: AnomalyVAE) -> None:
    # threshold=nan flagged no record (NaN is never crossed), -inf every one, 'abc' was
    # float()'s "could not convert string to float"; the CLI's --threshold refuses them.
    frame = correlated_normal(5, seed=4)
    for bad in (float("nan"), -np.inf, "abc"):
        with pytest.raises(ConfigError, match=r"threshold must be a finite number, got"):
            trained_model.score_batch(frame, threshold=bad)  # type: ignore[arg-type]
    flagged = trained_model.score_batch(frame, threshold=-1e9).scores["is_anomaly"]
    assert flagged.tolist() == [1] * 5


def test_a_record_is_flagged_only_when_its_score_is_above_the_threshold(
    trained_model: AnomalyVAE,
) -> None:
    # README: a record crosses a threshold when its score is above it. No test put a score
    # exactly at the threshold: flagging at '>=' passed every test.
    frame = correlated_normal(20, seed=7)
    scores = trained_model.score(frame)["score"].to_numpy()
    order = np.argsort(scores)
    at = float(scores[order[10]])
    flagged = trained_model.score_batch(frame, threshold=at).scores["is_anomaly"].to_numpy()
    assert flagged.tolist() == (scores > at).astype(int).tolist()
    assert flagged[order[10]] == 0  # at the threshold: not above it
    assert flagged[order[11:]].all()
    assert not flagged[order[:11]].any()


def test_constructor_only_stores() -> None:
    model = AnomalyVAE(latent_dim=-5, device="no-such-device")
    assert model.get_params()["latent_dim"] == -5
    with pytest.raises(NotFittedError):
        model.score(correlated_normal(5, seed=0))
    # dir() (a notebook's tab completion) and hasattr() read fitted-only properties as absent;
    # dir() raised NotFittedError.
    assert "fit" in dir(model)
    assert not hasattr(model, "windowed")


def test_an_unfitted_model_raises_scikit_learns_not_fitted_error_too() -> None:
    # Code written for any scikit-learn estimator (and check_estimator) catches
    # sklearn.exceptions.NotFittedError; ours was not one, so it went through.
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    model = AnomalyVAE()
    frame = correlated_normal(5, seed=0)
    for method in ("score", "score_batch", "predict", "decision_function", "score_samples"):
        with pytest.raises(SklearnNotFittedError, match="not fitted: call fit"):
            getattr(model, method)(frame)
    with pytest.raises(NotFittedError):  # still the package's own, as documented
        model.save("never-written")


def test_load_called_on_a_model_says_it_returns_a_new_one(
    trained_model: AnomalyVAE, tmp_path: Path
) -> None:
    # model = AnomalyVAE(); model.load(path); model.predict(X) said "not fitted: call fit() or
    # AnomalyVAE.load()", which is what the user had just done: load returns a new model.
    trained_model.save(tmp_path / "m")
    model = AnomalyVAE()
    assert model.load(tmp_path / "m") is not model
    with pytest.raises(NotFittedError) as caught:
        model.predict(correlated_normal(5, seed=0))
    assert "model = load_model(path) (load returns a new model, it does not fill this one)" in (
        str(caught.value)
    )


def test_score_raises_on_invalid_rows_and_score_batch_keeps_them(trained_model: AnomalyVAE) -> None:
    frame = correlated_normal(10, seed=9).astype({"s1": object})
    frame.loc[4, "s1"] = "broken"
    with pytest.raises(InvalidRecordsError, match=r"row 4: column 's1': 'broken' is not a number"):
        trained_model.score(frame)
    batch = trained_model.score_batch(frame)
    assert list(batch.rejects.index) == [4]
    assert len(batch.scores) == 9
    # One bad row was "1 rows cannot be scored (first: ...); fix them", and score_arrays
    # said only "1 rows cannot be scored", naming neither row nor reason.
    with pytest.raises(InvalidRecordsError) as caught:
        trained_model.predict(frame)
    assert str(caught.value).startswith(
        "1 row cannot be scored (row 4: column 's1': 'broken' is not a number); fix it, or "
    )
    with pytest.raises(InvalidRecordsError, match=r"^1 row cannot be scored \(first: row 4: col"):
        trained_model.score_arrays(frame)
    frame.loc[6, "s1"] = "broken too"
    with pytest.raises(InvalidRecordsError, match=r"^2 rows cannot be scored \(first: row 4:"):
        trained_model.score(frame)


def test_importance_weighted_score_kind(tmp_path: Path) -> None:
    data = correlated_normal(300, seed=1)
    model = AnomalyVAE(epochs=3, score_kind="nll_iw", n_samples=4).fit(data)
    scores = model.score(data.head(20))
    assert "nll_iw" in scores
    np.testing.assert_array_equal(scores["score"].to_numpy(), scores["nll_iw"].to_numpy())
    model.save(tmp_path / "iw")
    assert AnomalyVAE.load(tmp_path / "iw").score(data.head(20))["score"].equals(scores["score"])


def test_numpy_input() -> None:
    x = correlated_normal(300, seed=0).drop(columns="kind").to_numpy()
    model = AnomalyVAE(epochs=3).fit(x)
    assert model.anomaly_score(x[:5]).shape == (5,)


# ------------------------------------------------------------------------ model files
def test_missing_directory_and_corrupt_files(trained_model: AnomalyVAE, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        AnomalyVAE.load(tmp_path / "nowhere")
    path = tmp_path / "m"
    trained_model.save(path)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        AnomalyVAE.load(path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        AnomalyVAE.load(path)


def test_the_train_command_said_for_a_missing_model_directory_quotes_its_path(
    tmp_path: Path,
) -> None:
    # 'my models/pumps' was said as "--model-dir .../my models/pumps": two arguments when
    # pasted into a shell.
    import shlex

    missing = tmp_path / "my models" / "pumps"
    with pytest.raises(ModelFileError) as caught:
        load_model(missing)
    said = re.search(r"train one with '(.*)'$", str(caught.value))
    assert said is not None, str(caught.value)
    assert shlex.split(said.group(1))[-2:] == ["--model-dir", str(missing)]


def test_a_model_path_starting_with_a_tilde_is_in_the_home_directory(
    trained_model: AnomalyVAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # model.save("~/models/pumps") in a notebook made a directory named "~" in the working
    # directory (pandas' to_csv("~/...") writes to the home directory).
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    trained_model.save("~/models/pumps")
    assert (home / "models" / "pumps" / "model.json").is_file()
    assert not (work / "~").exists()
    frame = correlated_normal(5, seed=3)
    loaded = load_model("~/models/pumps")
    np.testing.assert_array_equal(loaded.anomaly_score(frame), trained_model.anomaly_score(frame))


def test_loading_the_folder_of_a_model_names_the_model_directory_in_it(
    trained_model: AnomalyVAE, tmp_path: Path
) -> None:
    # load_model("models") for models/pumps was only "models is not a model directory:
    # model.json is missing".
    trained_model.save(tmp_path / "models" / "pumps")
    with pytest.raises(ModelFileError) as caught:
        load_model(tmp_path / "models")
    assert str(caught.value) == (
        f"{tmp_path / 'models'} is not a model directory: model.json is missing; it holds the "
        f"model directory {tmp_path / 'models' / 'pumps'}: pass that"
    )
    trained_model.save(tmp_path / "models" / "valves")
    with pytest.raises(
        ModelFileError, match=r"holds the model directories .*pumps, .*valves: pass"
    ):
        load_model(tmp_path / "models")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=r"model\.json is missing$"):
        load_model(tmp_path / "empty")


def test_a_deeply_nested_model_json_is_corrupt_not_a_recursion_error(
    trained_model: AnomalyVAE, tmp_path: Path
) -> None:
    # json.loads raised RecursionError, which came out of 'anomaly-vae info' as a traceback.
    path = tmp_path / "m"
    trained_model.save(path)
    (path / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match=r"model.json is corrupt \(maximum recursion"):
        AnomalyVAE.load(path)


def test_unknown_format_version(trained_model: AnomalyVAE, tmp_path: Path) -> None:
    path = tmp_path / "m"
    trained_model.save(path)
    meta = json.loads((path / "model.json").read_text())
    meta["format_version"] = 99
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="format version 99"):
        AnomalyVAE.load(path)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_loading_never_unpickles(trained_model: AnomalyVAE, tmp_path: Path) -> None:
    path = tmp_path / "m"
    trained_model.save(path)
    payload = pickle.dumps({"weights": _Boom()})
    (path / "weights.safetensors").write_bytes(payload)
    meta = json.loads((path / "model.json").read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()  # even with a matching checksum
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="cannot be read"):
        AnomalyVAE.load(path)


def _edit_scale(meta: dict[str, Any]) -> None:
    name = next(iter(meta["preprocessor"]["scale"]))
    meta["preprocessor"]["scale"][name] = 0.0


def _edit_calibration_order(meta: dict[str, Any]) -> None:
    meta["calibration"]["scores"] = meta["calibration"]["scores"][::-1]


def _edit_calibration_null(meta: dict[str, Any]) -> None:
    meta["calibration"]["scores"][0] = None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["network"].update(hidden_dims=[]), "IndexError"),
        (lambda m: m.update(score_kind="evil"), "unknown score kind 'evil'"),
        (_edit_scale, "scale must be a finite number above 0"),
        (lambda m: m["calibration"].update(threshold_quantile=7), "threshold_quantile"),
        (_edit_calibration_order, "not a sorted list"),
        (_edit_calibration_null, "calibration is empty or not finite"),
        # Sizes the weights do not have were allocated before the weights were compared:
        # 10**9 tried to take 256 GB (a smaller edit could take the machine's memory).
        (
            lambda m: m["network"].update(latent_dim=10**9),
            r"size mismatch for enc_mu.weight: \[\d+, \d+\] in the weights",
        ),
        (lambda m: m["network"].update(hidden_dims=[10**8, 10**8]), "does not fit the network"),
    ],
)
def test_an_edited_model_description_is_refused(
    trained_model: AnomalyVAE, tmp_path: Path, edit: Any, message: str
) -> None:
    """A hand-edited model.json is refused at load with a ModelFileError (one line in the CLI),
    not a traceback at scoring time nor silently wrong scores."""
    path = tmp_path / "m"
    trained_model.save(path)
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=message):
        AnomalyVAE.load(path)


def test_weights_that_do_not_fit_or_are_not_finite_are_refused(
    trained_model: AnomalyVAE, tmp_path: Path
) -> None:
    """Replaced weights with a matching checksum: NaN values, or tensors of another shape, are
    refused with a message that says which, not scored as NaN or a bare torch error."""
    import hashlib

    from safetensors.torch import load_file, save_file

    path = tmp_path / "m"
    trained_model.save(path)
    weights_path = path / "weights.safetensors"
    original = load_file(str(weights_path))
    first = next(iter(original))

    def replace(weights: dict[str, torch.Tensor]) -> None:
        save_file(weights, str(weights_path))
        meta = json.loads((path / "model.json").read_text())
        meta["weights_sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        (path / "model.json").write_text(json.dumps(meta))

    replace({**original, first: original[first] * float("nan")})
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        AnomalyVAE.load(path)
    replace({**original, first: torch.zeros(3, 3)})
    with pytest.raises(
        ModelFileError, match=f"does not fit the network.*size mismatch for {first}"
    ):
        AnomalyVAE.load(path)


def test_model_files_get_the_users_permissions_and_an_unreadable_one_is_one_line(
    trained_model: AnomalyVAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files were created 0600 (mkstemp) whatever the umask, so the service that scores
    could not read a model another user trained; an unreadable file was a traceback."""
    import os

    old = os.umask(0o022)
    try:
        trained_model.save(tmp_path / "m")
    finally:
        os.umask(old)
    for name in ("model.json", "weights.safetensors"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644, name
    assert not list((tmp_path / "m").glob(".tmp-*"))

    def denied(self: Path, *args: object, **kwargs: object) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    # As root (CI) a chmod 000 file is still readable: the refusal is made by hand.
    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ModelFileError, match=r"cannot read .*model.json: Permission denied"):
        AnomalyVAE.load(tmp_path / "m")


def test_a_threshold_from_too_few_held_out_rows_is_said_to_be_rough(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 10 rows of training data: the 0.995 quantile of 2 held-out scores (their maximum) was the
    # threshold, without a word.
    frame = correlated_normal(10, seed=1).drop(columns="kind")
    with caplog.at_level(logging.WARNING):
        AnomalyVAE(epochs=2, seed=0).fit(frame)
    assert "the threshold is the 0.995 quantile of only 2 held-out normal rows" in caplog.text
    assert "200 or more are needed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        AnomalyVAE(epochs=2, seed=0).fit(correlated_normal(1000, seed=1).drop(columns="kind"))
    assert "held-out normal rows" not in caplog.text


def test_frames_with_integer_column_names() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(300, 3)))  # columns 0, 1, 2 (integers)
    model = AnomalyVAE(epochs=2, seed=0).fit(frame)
    assert list(model.feature_names_in_) == ["0", "1", "2"]
    scores = model.score(frame.head(5))
    assert len(scores) == 5


def test_n_features_in_is_the_width_of_the_array_to_score(tmp_path: Path) -> None:
    # A column left out in training (empty, or a row counter) made n_features_in_ 2 for a
    # 3-column array, and an array of n_features_in_ columns was then refused for its width.
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=300), np.full(300, np.nan), rng.normal(size=300)])
    model = AnomalyVAE(epochs=1, seed=0).fit(x)
    assert model.n_features_in_ == 3
    assert list(model.feature_names_in_) == ["x0", "x2"]
    assert model.predict(np.zeros((2, model.n_features_in_))).shape == (2,)
    model.save(tmp_path / "m")
    assert load_model(tmp_path / "m").n_features_in_ == 3


def test_multi_level_or_complex_columns_are_refused_with_what_to_do(
    trained_model: AnomalyVAE,
) -> None:
    frame = correlated_normal(20, seed=1)
    nested = frame.set_axis(pd.MultiIndex.from_product([["s"], frame.columns]), axis=1)
    # A KeyError "('s', 'a')" from deep inside pandas.
    with pytest.raises(ConfigError, match=r"2-level column names.*flatten them"):
        trained_model.score(nested)
    with pytest.raises(ConfigError, match=r"2-level column names"):
        AnomalyVAE(epochs=1).fit(nested)
    # The imaginary parts were dropped with a ComplexWarning, and the model trained.
    waves = np.exp(1j * np.arange(60)).reshape(30, 2)
    with pytest.raises(ConfigError, match=r"^X holds complex numbers.*np.abs"):
        AnomalyVAE(epochs=1).fit(waves)
    with pytest.raises(ConfigError, match=r"column 'w' of X holds complex numbers"):
        AnomalyVAE(epochs=1).fit(pd.DataFrame({"a": waves[:, 0].real, "w": waves[:, 1]}))


def test_a_complex_column_the_model_never_reads_is_left_alone(trained_model: AnomalyVAE) -> None:
    # Extra columns are ignored, but one of complex numbers (an FFT kept beside the features)
    # was refused: at scoring, and at fit even when columns.ignore named it.
    frame = correlated_normal(40, seed=1)
    spectrum = np.fft.fft(frame["s0"].to_numpy())
    scores = trained_model.score(frame.assign(spectrum=spectrum))
    np.testing.assert_array_equal(scores["score"], trained_model.score(frame)["score"])
    model = AnomalyVAE(epochs=1, columns={"ignore": ["spectrum"]}).fit(
        frame.assign(spectrum=spectrum)
    )
    assert "spectrum" not in model.feature_names_in_
    # A column the model reads still is refused.
    with pytest.raises(ConfigError, match=r"column 's0' of X holds complex numbers"):
        trained_model.score(frame.assign(s0=spectrum))


def test_batch_job_scores_with_its_own_thread_count(
    trained_model: AnomalyVAE, tmp_path: Path
) -> None:
    """score_csv runs torch with scoring.num_threads (writers see it) and restores the count."""
    from anomaly_vae.jobs.batch import ScoredChunk, score_csv, scoring_threads
    from anomaly_vae.sources.csv import CsvSource

    path = tmp_path / "export.csv"
    correlated_normal(300, seed=5).to_csv(path, index=False)
    seen: list[int] = []

    class Recorder:
        def write(self, chunk: ScoredChunk) -> None:
            seen.append(torch.get_num_threads())
            assert len(chunk.output) == len(chunk.batch.scores)

        def close(self) -> None:
            pass

    before = torch.get_num_threads()
    model = trained_model
    configured = model.config_.scoring.num_threads
    try:
        model.config_.scoring.num_threads = 1
        summary = score_csv(model, CsvSource(path, chunk_size=100), sinks=[Recorder()])
    finally:
        model.config_.scoring.num_threads = configured
    assert summary.rows_scored == 300
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == before
    assert scoring_threads(3) == 3
    assert scoring_threads(None) >= 1


def test_fit_uses_its_own_thread_count_and_restores_it() -> None:
    from anomaly_vae.config import PipelineConfig, TrainingConfig

    before = torch.get_num_threads()
    seen: list[int] = []
    frame = correlated_normal(300, seed=2).drop(columns="kind")

    class Spy(AnomalyVAE):
        def _fit(self, cfg: PipelineConfig, X: Any, y: Any) -> AnomalyVAE:
            seen.append(torch.get_num_threads())
            return super()._fit(cfg, X, y)

    Spy(epochs=1, seed=0).fit(frame)
    Spy(epochs=1, seed=0, config=PipelineConfig(training=TrainingConfig(num_threads=2))).fit(frame)
    assert seen == [1, 2]
    assert torch.get_num_threads() == before


def _gap_effect(model: AnomalyVAE, normal: pd.DataFrame, column: str) -> tuple[float, float]:
    """The median rise of the score when ``column`` is blanked on normal records, and the share
    of those records then flagged."""
    full = model.score(normal)["score"].to_numpy()
    gapped = normal.copy()
    gapped[column] = np.nan
    scores = model.score(gapped)["score"].to_numpy()
    return float(np.median(scores - full)), float(np.mean(scores > model.threshold_))


def test_one_missing_sensor_value_does_not_make_a_normal_record_anomalous(
    pump_model: tuple[AnomalyVAE, Path],
) -> None:
    """A sensor that drops one reading: the gap is filled from the record's other columns
    (not with the median, which the encoder read as a real reading at odds with the rest) and
    counts as a typical value, and the missing-indicator block is no evidence. Before, one gap
    raised a normal record's score by up to several nats and flagged up to a fifth of them."""
    from anomaly_vae.datasets import SENSORS, make_pump_data

    model, _ = pump_model
    data = make_pump_data(3000, seed=7)
    normal = data[(data["label"] == 0) & data[SENSORS].notna().all(axis=1)]
    indicator = set(model.preprocessor_.with_indicator)
    assert indicator  # both kinds of column are covered
    assert set(SENSORS) - indicator
    full_flagged = float(np.mean(model.score(normal)["score"].to_numpy() > model.threshold_))
    for column in SENSORS:
        rise, flagged = _gap_effect(model, normal, column)
        assert rise < 1.0, (column, rise)
        assert flagged <= full_flagged + 0.01, (column, flagged, full_flagged)


def test_a_blank_category_is_a_gap_and_a_new_one_still_stands_out(
    pump_model: tuple[AnomalyVAE, Path],
) -> None:
    """A categorical column with no blank in training: a blank there is filled from the other
    columns (it used to be the ``<unknown>`` bucket, and flagged every record), while a value
    never seen stays the novelty it is."""
    from anomaly_vae.datasets import SENSORS, make_pump_data

    model, _ = pump_model
    assert "<missing>" not in model.preprocessor_.categories["station"]
    data = make_pump_data(3000, seed=8)
    normal = data[(data["label"] == 0) & data[SENSORS].notna().all(axis=1)]
    full_flagged = float(np.mean(model.score(normal)["score"].to_numpy() > model.threshold_))
    rise, flagged = _gap_effect(model, normal, "station")
    assert rise < 1.0
    assert flagged <= full_flagged + 0.03
    novel = normal.assign(station="a station never seen")
    scores = model.score(novel)["score"].to_numpy()
    assert np.mean(scores > model.threshold_) > 0.9


def test_a_record_with_a_gap_scores_the_same_alone_and_in_any_batch(
    trained_model: AnomalyVAE,
) -> None:
    data = correlated_normal(300, seed=11)
    data.loc[[3, 150, 299], "s2"] = np.nan
    data.loc[150, "s5"] = np.nan
    whole = trained_model.score(data)
    data_kind = data.assign(kind=data["kind"].astype(object))
    data_kind.loc[10, "kind"] = None
    assert trained_model.score_batch(data_kind).gaps == 4  # rows 3, 10, 150, 299
    for i in (3, 150, 299):
        alone = trained_model.score(data.iloc[[i]])
        assert alone["score"].iloc[0] == whole["score"].iloc[i]
        assert alone["recon_error"].iloc[0] == whole["recon_error"].iloc[i]
    # The rows without a gap score as they do without the gapped rows beside them.
    others = data.drop(index=[3, 150, 299])
    np.testing.assert_array_equal(
        trained_model.score(others)["score"].to_numpy(),
        whole["score"].drop(index=[3, 150, 299]).to_numpy(),
    )


def test_a_feature_column_empty_in_every_row_is_warned_about(
    trained_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # A join that lost a sensor's values: every record scored with it filled in, and the CSV
    # job's summary says so, but score() in Python said nothing.
    frame = correlated_normal(20, seed=6).assign(s3=np.nan)
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.estimator"):
        trained_model.score(frame)
    assert (
        "feature column 's3' had no value in any of the 20 rows: the records were scored "
        "without it (as missing values); is the input complete?"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.estimator"):
        trained_model.predict(frame.iloc[[0]])  # one record with a gap: an ordinary gap
        trained_model.predict(correlated_normal(20, seed=6))
    assert "had no value" not in caplog.text
    # An array, read by position (without a copy of it to find out).
    x = correlated_normal(300, seed=0).drop(columns="kind").to_numpy()
    on_array = AnomalyVAE(epochs=1, seed=0).fit(x)
    gapped = x[:10].copy()
    gapped[:, 2] = np.nan
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.estimator"):
        on_array.score(gapped)
    assert "feature column 'x2' had no value in any of the 10 rows" in caplog.text


def test_a_gap_is_filled_from_the_other_columns(trained_model: AnomalyVAE) -> None:
    """``Scorer.impute`` puts the model's guess in the gap: close to the value that was
    there on data the model knows, where the median is not."""
    data = correlated_normal(500, seed=12)
    clean, _ = trained_model.schema_.validate(data, source="test")
    encoded = trained_model.preprocessor_.transform(clean)
    truth = encoded.x[:, 2].copy()
    encoded.observed[:, 2] = 0.0
    encoded.x[:, 2] = 0.0  # the median, as transform puts it
    scorer = trained_model._scorer()
    filled = scorer.impute(torch.as_tensor(encoded.x), torch.as_tensor(encoded.observed))
    guess = filled[:, 2].numpy()
    assert np.mean(np.abs(guess - truth)) < 0.5 * np.mean(np.abs(truth))
    np.testing.assert_array_equal(filled[:, 3:].numpy(), encoded.x[:, 3:])


def test_blanks_around_a_category_do_not_make_it_unknown(
    trained_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    """'hi ' (an export that pads its fields) is the category 'hi', '  ' is a blank; a value
    never seen is named once in a warning with the known values."""
    data = correlated_normal(200, seed=13)
    plain = trained_model.score(data)["score"].to_numpy()
    padded = data.assign(kind=" " + data["kind"] + "  ")
    np.testing.assert_array_equal(trained_model.score(padded)["score"].to_numpy(), plain)
    blank = data.assign(kind="   ")
    gap = data.assign(kind=None)
    np.testing.assert_array_equal(
        trained_model.score(blank)["score"].to_numpy(), trained_model.score(gap)["score"].to_numpy()
    )
    with caplog.at_level(logging.WARNING, logger="anomaly_vae"):
        trained_model.score(data.assign(kind="HI-13"))
        trained_model.score(data.assign(kind="HI-13"))
    warned = [r.getMessage() for r in caplog.records if "learned in training" in r.getMessage()]
    assert len(warned) == 1
    assert "column 'kind': 'HI-13' not among the values learned" in warned[0]
    assert "'hi', 'lo'" in warned[0]


def test_an_id_column_is_no_feature_once_labelled_anomalies_are_left_out() -> None:
    # With a label column, the labelled anomalies were dropped before the columns were judged:
    # the id column then had gaps, became a feature, and every record of the next export (ids
    # past the training range) was flagged, 'order id' its top feature.
    rng = np.random.default_rng(0)
    frame = correlated_normal(600, seed=1)
    frame.insert(0, "order id", np.arange(len(frame)))
    frame["label"] = (rng.random(len(frame)) < 0.05).astype(int)
    model = AnomalyVAE(columns={"label": "label"}, epochs=5, seed=0).fit(frame)
    assert "order id" not in model.schema_.names
    later = correlated_normal(300, seed=2)
    later.insert(0, "order id", np.arange(10_000, 10_300))
    assert model.predict(later).mean() < 0.2


def test_a_column_name_twice_in_a_dataframe_is_named(trained_model: AnomalyVAE) -> None:
    # fit raised AttributeError ("'DataFrame' object has no attribute 'str'") and score a
    # TypeError from inside pandas; a CSV file with such a header is refused by name.
    frame = correlated_normal(200, seed=3)
    twice = frame.rename(columns={"s2": "s1"})
    with pytest.raises(ConfigError, match=r"'s1' more than once \(columns 2, 3\)"):
        AnomalyVAE(epochs=1, seed=0).fit(twice)
    with pytest.raises(ConfigError, match=r"'s1' more than once"):
        trained_model.score(twice)
    numbered = pd.DataFrame(np.ones((20, 2)), columns=[0, "0"])  # the same once names are text
    with pytest.raises(ConfigError, match=r"'0' more than once \(columns 1, 2\)"):
        AnomalyVAE(epochs=1, seed=0).fit(numbered)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without a GPU")
def test_a_model_trained_on_cuda_loads_on_a_machine_without_a_gpu(
    trained_model: AnomalyVAE, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 'device: cuda' in the training pipeline is stored with the model: loading it where there
    # is no GPU failed ("device 'cuda' was asked for..."), for 'info' and 'stream' too, which
    # have no --device to override it.
    path = _loads_on_the_cpu(
        trained_model, tmp_path, caplog, "cuda", "there is no CUDA GPU here", rows=100
    )
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        AnomalyVAE.load(path, device="cuda")  # asked for: still refused


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has Apple MPS")
def test_a_model_trained_on_apple_mps_loads_elsewhere_on_the_cpu(
    trained_model: AnomalyVAE, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A model trained on a Mac with device 'mps' failed to load anywhere else.
    _loads_on_the_cpu(trained_model, tmp_path, caplog, "mps", "there is no Apple MPS here", rows=50)


def _loads_on_the_cpu(
    trained_model: AnomalyVAE,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    device: str,
    said: str,
    *,
    rows: int,
) -> Path:
    """``trained_model`` saved as if trained with ``device``: it loads on the CPU, says so
    (``said``), and scores as before. Returns the model directory."""
    path = tmp_path / "m"
    trained_model.save(path)
    meta = json.loads((path / "model.json").read_text())
    meta["config"]["training"]["device"] = device
    (path / "model.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        loaded = AnomalyVAE.load(path)
    assert loaded.device_.type == "cpu"
    assert f"was trained with device {device!r}; {said}" in caplog.text
    frame, _ = with_anomalies(rows, rows // 10, seed=9)
    np.testing.assert_allclose(
        loaded.score(frame)["score"], trained_model.score(frame)["score"], rtol=1e-5
    )
    return path


def test_a_label_column_not_in_the_training_data_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # columns.label misspelt in a pipeline file ('faults' for 'fault') trained on the labelled
    # anomalies as normal rows without a word; the --label-column flag was already checked.
    rng = np.random.default_rng(0)
    frame = correlated_normal(300, seed=1)
    frame["fault"] = (rng.random(len(frame)) < 0.1).astype(int)
    with caplog.at_level(logging.WARNING):
        model = AnomalyVAE(columns={"label": "faults"}, epochs=1, seed=0).fit(frame)
    assert (
        "the label column 'faults' (columns.label) is not in the training data: no rows are "
        "left out as labelled anomalies; did you mean 'fault'?"
    ) in caplog.text
    assert model.training_summary_["rows"] == 300
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        AnomalyVAE(columns={"label": "fault"}, epochs=1, seed=0).fit(frame)
    assert "is not in the training data" not in caplog.text


def test_a_score_tied_with_calibration_scores_is_placed_among_them(
    trained_model: AnomalyVAE,
) -> None:
    # With every held-out score equal (a model of constant data), a normal record's score,
    # equal to them, was at the 100th percentile.
    model = copy.deepcopy(trained_model)
    model.calibration_ = np.zeros(100)
    assert model.percentile(np.array([-1.0, 0.0, 1.0])).tolist() == [0.0, 50.0, 100.0]
    model.calibration_ = np.arange(100.0)
    assert model.percentile(np.array([49.5, 99.5])).tolist() == [50.0, 100.0]
    # Ties at several values, one above them all, any shape (only tied scores are looked up
    # a second time).
    model.calibration_ = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 2.0])
    got = model.percentile(np.array([[0.0, 1.0], [2.0, 3.0]]))
    assert got.shape == (2, 2)
    assert got.ravel() == pytest.approx([100 / 6, 350 / 6, 550 / 6, 100.0])
    assert model.percentile(np.float64(1.0)) == pytest.approx(350 / 6)


def test_a_sparse_step_before_it_in_a_pipeline_is_named_with_the_fix() -> None:
    # "pass X.toarray()" was all the message said, and inside a Pipeline there is no X to call
    # it on: a OneHotEncoder's default sparse output is the usual cause.
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "c": [f"k{i % 20}" for i in range(60)]})
    encode = make_column_transformer((StandardScaler(), ["a"]), (OneHotEncoder(), ["c"]))
    with pytest.raises(ConfigError, match=r"sparse csr_matrix.*OneHotEncoder\(sparse_output=False"):
        make_pipeline(encode, AnomalyVAE(epochs=1)).fit(frame)


def test_frames_read_with_the_pyarrow_backend_keep_their_text_columns() -> None:
    # pd.to_numeric of an Arrow string column gives Arrow doubles whose NaN is no missing
    # value: 'mode' was taken as numeric and every training row rejected ("'on' is not a
    # number"), so read_csv(..., dtype_backend="pyarrow") could not be fitted at all.
    import io

    import pyarrow as pa

    rng = np.random.default_rng(0)
    text = pd.DataFrame(
        {
            "a": rng.normal(size=200),
            "mode": rng.choice(["on", "off", "idle"], 200),
            "zone": rng.choice(["n", "s"], 200),
        }
    ).to_csv(index=False)
    frame = pd.read_csv(io.StringIO(text), dtype_backend="pyarrow")
    frame["zone"] = frame["zone"].astype(pd.ArrowDtype(pa.dictionary(pa.int32(), pa.string())))
    model = AnomalyVAE(epochs=1, seed=0).fit(frame)
    assert model.schema_.numeric == ["a"]
    assert model.schema_.categorical == ["mode", "zone"]
    plain = frame.astype({"a": float, "mode": object, "zone": object})
    np.testing.assert_array_equal(model.anomaly_score(frame), model.anomaly_score(plain))
    bad = frame.head(2).astype({"a": pd.ArrowDtype(pa.string())})
    bad.loc[1, "a"] = "high"
    reasons = model.score_batch(bad).rejects["reason"].tolist()
    assert reasons == ["column 'a': 'high' is not a number"]


def test_an_arrow_table_is_read_by_column_name_not_by_position(
    trained_model: AnomalyVAE,
) -> None:
    # A pyarrow Table went through np.asarray and was read by position: with its columns in
    # another order than training, every record was scored on the wrong columns, silently.
    import pyarrow as pa

    frame = correlated_normal(20, seed=4)
    shuffled = frame[list(reversed(frame.columns))]
    expected = trained_model.anomaly_score(frame)
    table = pa.Table.from_pandas(shuffled, preserve_index=False)
    np.testing.assert_array_equal(trained_model.anomaly_score(table), expected)
    batch = table.to_batches()[0]
    np.testing.assert_array_equal(trained_model.anomaly_score(batch), expected)
    with pytest.raises(SchemaError, match=r"feature column 's0' missing"):
        trained_model.score(table.drop_columns(["s0"]))


def test_a_model_fitted_on_an_arrow_table_is_one_fitted_on_a_frame() -> None:
    # fit(pa.Table) read the table by name but recorded it as an array (array_columns), so
    # scoring took the model for an array model: pd.DataFrame(array) read by position.
    import pyarrow as pa

    frame = correlated_normal(200, seed=4).drop(columns="kind")
    model = AnomalyVAE(epochs=1, seed=0).fit(pa.Table.from_pandas(frame, preserve_index=False))
    assert model.training_summary_["array_columns"] is None
    assert list(model.feature_names_in_) == list(frame.columns)
    with pytest.raises(SchemaError, match=r"feature columns 's0', 's1'"):
        model.score(pd.DataFrame(frame.to_numpy()[:5]))  # columns 0, 1...: not its names


def test_a_record_array_is_read_by_field_name(trained_model: AnomalyVAE) -> None:
    # df.to_records() (a structured array: one element per record, named fields) was
    # "X must be 2-D (rows x features); got one row of 20 values".
    frame = correlated_normal(20, seed=4)
    records = frame[list(reversed(frame.columns))].to_records(index=False)
    np.testing.assert_array_equal(
        trained_model.anomaly_score(records), trained_model.anomaly_score(frame)
    )


def test_the_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    # It used normal_df, export_df and messy_df without making them: a NameError as written.
    import subprocess
    import sys

    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = readme.split("```python\n")[1:]
    assert blocks, "README.md has no python example"
    for block in blocks:
        code = block.split("\n```", 1)[0]
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert "column 'flow': 'n/a?' is not a number" in done.stdout
    assert (tmp_path / "models" / "pumps" / "model.json").is_file()


def _recon_error_over_every_block(model: AnomalyVAE, frame: pd.DataFrame) -> np.ndarray:
    """The reconstruction error as anomaly-vae computed it before score_revision 2 (by hand):
    the mean squared error over the observed numeric values and every categorical block, the
    missing-indicator blocks included, at the posterior mean."""
    clean, _ = model.schema_.validate(frame)
    encoded = model.preprocessor_.transform(clean)
    x = torch.as_tensor(encoded.x, dtype=torch.float32)
    observed = torch.as_tensor(encoded.observed, dtype=torch.float32)
    with torch.no_grad():
        mu, _ = model.model_.encode(x)
        out = model.model_.decode(mu)
    k = model.model_.n_numeric
    total = (((x[:, :k] - out[:, :k]) * observed) ** 2).sum(dim=1)
    count = observed.sum(dim=1)
    start = k
    for size in model.model_.cat_sizes:
        probs = torch.softmax(out[:, start : start + size], dim=1)
        total = total + ((x[:, start : start + size] - probs) ** 2).sum(dim=1)
        count = count + size
        start += size
    return (total / count).numpy()


def test_a_model_saved_before_score_revision_2_keeps_the_reconstruction_error_it_was_calibrated_on(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    """Upgrading: a model directory an earlier anomaly-vae wrote (no score_revision in
    model.json) counted its missing-indicator blocks in the reconstruction error, a mean, and
    its threshold and percentiles were calibrated so. Scored by this version without them, a
    recon_error model's every score grew (by half on the pumps) under the same threshold: it
    flagged twice as many records after the upgrade (101 -> 227 of 3,000). It keeps them."""
    import shutil

    from anomaly_vae.datasets import SENSORS, make_pump_data

    model, path = pump_model
    assert model.preprocessor_.with_indicator  # the model has indicator blocks
    meta = json.loads((path / "model.json").read_text())
    old_dir = tmp_path / "old"
    shutil.copytree(path, old_dir)
    meta.pop("score_revision", None)  # as model.json was before this version
    (old_dir / "model.json").write_text(json.dumps(meta))
    old = load_model(old_dir)

    data = make_pump_data(400, seed=12)
    normal = data[(data["label"] == 0) & data[SENSORS].notna().all(axis=1)]
    expected = _recon_error_over_every_block(old, normal)
    old_scores = old.score(normal)
    np.testing.assert_allclose(old_scores["recon_error"].to_numpy(), expected, rtol=1e-4)
    # This version's own models leave the indicators out (a different scale, so the check
    # above tells the two apart); the negative ELBO is the same for both.
    new_scores = model.score(normal)
    assert not np.allclose(new_scores["recon_error"].to_numpy(), expected, rtol=1e-2)
    np.testing.assert_array_equal(old_scores["score"], new_scores["score"])


def test_a_model_file_of_a_newer_score_revision_is_refused_in_one_line(
    pump_model: tuple[AnomalyVAE, Path], tmp_path: Path
) -> None:
    import shutil

    _, path = pump_model
    newer = tmp_path / "newer"
    shutil.copytree(path, newer)
    meta = json.loads((path / "model.json").read_text())
    meta["score_revision"] = 99
    (newer / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="score_revision 99 is newer than this anomaly-vae"):
        load_model(newer)


def test_an_array_given_to_a_model_fitted_on_a_dataframe_is_warned_of(
    trained_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # Its columns were read as the model's by position without a word (scikit-learn warns
    # "X does not have valid feature names"): an array of the columns in another order was
    # scored as the wrong features.
    frame = correlated_normal(5, seed=3)
    columns = list(trained_model.feature_names_in_)
    with caplog.at_level(logging.WARNING):
        by_name = trained_model.score(frame)
    assert "X is an array" not in caplog.text
    with caplog.at_level(logging.WARNING):
        by_position = trained_model.score(frame[columns].to_numpy())
    assert by_position["score"].tolist() == by_name["score"].tolist()
    assert (
        f"X is an array, but the model was fitted on a DataFrame: its {len(columns)} columns "
        "are read by position as 's0', 's1', 's2'"
    ) in caplog.text
    assert "pass a DataFrame to have them read by name" in caplog.text


def test_an_empty_model_path_is_refused_not_the_working_directory(
    trained_model: AnomalyVAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # save("") (an unset variable, say) wrote model.json and weights.safetensors into the
    # working directory without a word; load_model("") read whatever model was there.
    from anomaly_vae import load_model
    from anomaly_vae.errors import ModelFileError

    monkeypatch.chdir(tmp_path)
    for path in ("", "  "):
        with pytest.raises(ModelFileError) as saving:
            trained_model.save(path)
        assert str(saving.value) == (
            'the model directory to save to is an empty path: give the directory ("." for '
            "the working directory)"
        )
        with pytest.raises(ModelFileError, match="the model directory to load is an empty path"):
            load_model(path)
    assert list(tmp_path.iterdir()) == []
    trained_model.save(".")  # the working directory, asked for
    assert load_model(".").threshold_ == trained_model.threshold_
