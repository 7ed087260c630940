"""Windows per entity (``anomaly_vae.windows``) and the windowed model (real torch)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from anomaly_vae import AnomalyVAE
from anomaly_vae.config import KafkaConfig, PipelineConfig
from anomaly_vae.datasets import make_pump_data
from anomaly_vae.errors import ConfigError, SchemaError
from anomaly_vae.estimator import latest_per_entity
from anomaly_vae.features import EncodedBatch
from anomaly_vae.jobs.stream import StreamBatch, StreamScorer, WriteResult
from anomaly_vae.sources.kafka import Message
from anomaly_vae.windows import (
    LATE,
    OK,
    REPLAYED,
    WARMING_UP,
    WindowSpec,
    WindowState,
    entity_from_bytes,
    entity_to_bytes,
    event_seconds,
    out_of_range_time,
)
from tests.conftest import query
from tests.test_cli import run_inline

REPO = Path(__file__).resolve().parents[1]


def rows(values: list[float]) -> EncodedBatch:
    """One numeric column holding ``values`` (the value identifies the record)."""
    x = np.asarray(values, dtype=np.float32).reshape(-1, 1)
    return EncodedBatch(x=x, observed=np.ones_like(x))


def state(size: int = 3, **kw: object) -> WindowState:
    return WindowState(WindowSpec(size=size, **kw), width=1, n_numeric=1)  # type: ignore[arg-type]


def windows_of(result: object) -> list[list[float]]:
    return [[float(v) for v in w[:, 0]] for w in result.x]  # type: ignore[attr-defined]


def test_window_holds_the_previous_records_of_the_same_entity_in_time_order() -> None:
    st = state(3)
    out = st.assemble(rows([1, 10, 2, 20, 3, 30]), ["a", "b"] * 3, np.arange(6.0))
    assert windows_of(out) == [
        [1, 1, 1],
        [10, 10, 10],
        [1, 1, 2],
        [10, 10, 20],
        [1, 2, 3],
        [10, 20, 30],
    ]
    assert out.status.tolist() == [WARMING_UP] * 4 + [OK, OK]


def test_warming_up_pads_with_the_oldest_record_and_is_never_flagged() -> None:
    st = state(4)
    out = st.assemble(rows([5, 6]), ["a", "a"], np.array([0.0, 1.0]))
    assert windows_of(out) == [[5, 5, 5, 5], [5, 5, 5, 6]]
    assert out.status.tolist() == [WARMING_UP, WARMING_UP]
    assert st.counters.warming_up == 2


def test_late_record_within_lateness_is_put_in_order() -> None:
    st = state(3, lateness_s=10.0)
    st.assemble(rows([1, 2, 4]), ["a"] * 3, np.array([0.0, 10.0, 30.0]))
    late = st.assemble(rows([3]), ["a"], np.array([25.0]))  # 5 s behind the newest
    assert windows_of(late) == [[1, 2, 3]]
    assert late.status.tolist() == [OK]
    after = st.assemble(rows([5]), ["a"], np.array([40.0]))
    assert windows_of(after) == [[3, 4, 5]]  # the late record sits where it belongs


def test_record_beyond_lateness_is_scored_on_its_own_and_counted() -> None:
    st = state(3, lateness_s=2.0)
    st.assemble(rows([1, 2, 3]), ["a"] * 3, np.array([0.0, 10.0, 20.0]))
    late = st.assemble(rows([9]), ["a"], np.array([5.0]))
    assert windows_of(late) == [[9, 9, 9]]
    assert late.status.tolist() == [LATE]
    assert st.counters.late == 1
    after = st.assemble(rows([4]), ["a"], np.array([30.0]))
    assert windows_of(after) == [[2, 3, 4]]  # the late record did not enter the window


def test_gap_longer_than_the_limit_restarts_the_window() -> None:
    st = state(3, max_gap_s=60.0)
    out = st.assemble(rows([1, 2, 3, 4, 5]), ["a"] * 5, np.array([0.0, 10, 20, 500, 510]))
    assert windows_of(out)[3:] == [[4, 4, 4], [4, 4, 5]]
    assert out.status.tolist() == [WARMING_UP, WARMING_UP, OK, WARMING_UP, WARMING_UP]
    assert st.counters.gaps == 1


def test_lateness_and_gap_limits_are_exact() -> None:
    # The other tests sit far from the limits: a record 0.5 s past lateness_s put in order, or
    # a gap 0.5 s over max_gap_s not restarting the window, passed them all.
    st = state(3, lateness_s=10.0)
    st.assemble(rows([1, 2, 3]), ["a"] * 3, np.array([0.0, 10.0, 30.0]))
    at_limit = st.assemble(rows([4]), ["a"], np.array([20.0]))  # exactly 10 s behind
    assert at_limit.status.tolist() == [OK]
    assert windows_of(at_limit) == [[1, 2, 4]]
    past = st.assemble(rows([5]), ["a"], np.array([19.5]))  # 10.5 s behind
    assert past.status.tolist() == [LATE]
    assert windows_of(past) == [[5, 5, 5]]

    st = state(2, max_gap_s=60.0)
    out = st.assemble(rows([1, 2, 3]), ["a"] * 3, np.array([0.0, 60.0, 120.5]))
    assert windows_of(out) == [[1, 1], [1, 2], [3, 3]]  # 60 s apart: no gap; 60.5 s: a gap
    assert out.status.tolist() == [WARMING_UP, OK, WARMING_UP]
    assert st.counters.gaps == 1


def test_duplicate_timestamps_keep_arrival_order() -> None:
    st = state(3)
    out = st.assemble(rows([1, 2, 3, 4]), ["a"] * 4, np.array([0.0, 5.0, 5.0, 5.0]))
    assert windows_of(out) == [[1, 1, 1], [1, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert out.status.tolist() == [WARMING_UP, WARMING_UP, OK, OK]


def test_no_time_column_means_arrival_order_across_batches() -> None:
    st = state(3)
    st.assemble(rows([1, 2]), ["a", "a"])
    out = st.assemble(rows([3]), ["a"])
    assert windows_of(out) == [[1, 2, 3]]


def messy_stream(n: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Three entities, jittered times (some late, some very late), duplicates and gaps."""
    rng = np.random.default_rng(seed)
    entities = [f"e{int(i)}" for i in rng.integers(0, 3, n)]
    times = np.arange(n, dtype=np.float64) * 10.0 + rng.normal(0, 15, n).round()
    times[rng.random(n) < 0.05] += 400.0  # gaps ahead
    times[rng.random(n) < 0.05] -= 200.0  # far behind
    values = rng.normal(size=n).astype(np.float32)
    return values, entities, times


def whole_and_chunked(spec: dict[str, Any], seed: int, chunk: int) -> tuple[Any, Any]:
    """The windows of a messy 300-record stream assembled in one pass, and in chunks of
    ``chunk`` records through one state: (whole, parts concatenated), each with x and status."""
    values, entities, times = messy_stream(300, seed=seed)
    whole = state(**spec).assemble(rows(values.tolist()), entities, times)
    st = state(**spec)
    parts = [
        st.assemble(
            rows(values[i : i + chunk].tolist()), entities[i : i + chunk], times[i : i + chunk]
        )
        for i in range(0, len(values), chunk)
    ]
    x = np.concatenate([p.x for p in parts])
    status = np.concatenate([p.status for p in parts])
    return whole, (x, status)


@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_any_chunking_gives_the_same_windows_as_one_pass(chunk: int) -> None:
    spec = {"size": 5, "lateness_s": 20.0, "max_gap_s": 150.0}
    whole, (x, status) = whole_and_chunked(spec, 1, chunk)
    assert np.array_equal(x, whole.x)
    assert np.array_equal(status, whole.status)
    assert {int(s) for s in whole.status} >= {OK, WARMING_UP, LATE}


@pytest.mark.parametrize("chunk", [1, 7, 50])
def test_the_buffer_limit_gives_the_same_windows_however_the_input_is_cut(chunk: int) -> None:
    # With a long lateness, the buffer's cap (max_buffered) decided: it was applied at the end
    # of each batch only, so a record arriving behind more than max_buffered newer ones found
    # its predecessors still there in one big batch and already gone when the input came in
    # chunks (or Kafka micro-batches): other windows, other scores. Such a record is late.
    spec = {"size": 4, "lateness_s": 1e6, "max_buffered": 6}
    whole, (x, status) = whole_and_chunked(spec, 3, chunk)
    assert np.array_equal(status, whole.status)
    assert np.array_equal(x, whole.x)
    assert LATE in {int(s) for s in whole.status}
    one = state(size=3, lateness_s=1e6, max_buffered=2)
    one.assemble(rows([1, 2, 3, 4, 5]), ["a"] * 5, np.arange(5.0))
    behind = one.assemble(rows([9, 8]), ["a"] * 2, np.array([1.5, 2.5]))
    assert behind.status.tolist() == [LATE, OK]  # 3 newer records, then 2
    assert windows_of(behind) == [[9, 9, 9], [2, 3, 8]]


def test_state_round_trip_continues_exactly_as_uninterrupted() -> None:
    values, entities, times = messy_stream(200, seed=2)
    spec = {"size": 4, "lateness_s": 20.0, "max_gap_s": 150.0}
    whole = state(**spec).assemble(rows(values.tolist()), entities, times)  # type: ignore[arg-type]
    first = state(**spec)  # type: ignore[arg-type]
    a = first.assemble(rows(values[:120].tolist()), entities[:120], times[:120])
    stored = first.take_dirty()
    assert set(stored) == set(entities[:120])
    assert not first.dirty
    second = state(**spec)  # type: ignore[arg-type]
    second.loader = lambda keys: {k: stored[k] for k in keys if k in stored}
    b = second.assemble(rows(values[120:].tolist()), entities[120:], times[120:])
    assert np.array_equal(np.concatenate([a.x, b.x]), whole.x)
    assert np.array_equal(np.concatenate([a.status, b.status]), whole.status)


def test_bytes_round_trip_with_missing_values_and_sequences() -> None:
    st = state(3)
    batch = rows([1, 2, 3])
    batch.observed[1, 0] = 0.0
    st.assemble(batch, ["a"] * 3, np.array([0.0, 1, 2]), streams=["t:0"] * 3, seqs=np.arange(3))
    ent = st.entities["a"]
    back = entity_from_bytes(entity_to_bytes(ent), width=1, n_numeric=1)
    assert np.array_equal(back.times, ent.times)
    assert np.array_equal(back.rows, ent.rows)
    assert back.observed is not None
    assert ent.observed is not None
    assert np.array_equal(back.observed, ent.observed)
    assert back.last_seq == {"t:0": 2}
    assert back.max_time == ent.max_time
    with pytest.raises(ValueError, match="columns"):
        entity_from_bytes(entity_to_bytes(ent), width=2, n_numeric=1)


def test_replayed_records_leave_the_state_alone() -> None:
    st = state(3)
    st.assemble(rows([1, 2, 3]), ["a"] * 3, np.arange(3.0), streams=["t:0"] * 3, seqs=np.arange(3))
    again = st.assemble(
        rows([2, 3]), ["a"] * 2, np.arange(1.0, 3.0), streams=["t:0"] * 2, seqs=np.arange(1, 3)
    )
    assert again.status.tolist() == [REPLAYED, REPLAYED]
    nxt = st.assemble(rows([4]), ["a"], np.array([3.0]), streams=["t:0"], seqs=np.array([3]))
    assert windows_of(nxt) == [[2, 3, 4]]
    assert nxt.status.tolist() == [OK]


def test_memory_per_entity_is_bounded() -> None:
    st = state(5, lateness_s=0.0)
    st.assemble(rows(list(range(1000))), ["a"] * 1000, np.arange(1000.0))
    assert len(st.entities["a"].times) == 4
    wide = state(5, lateness_s=1e9, max_buffered=10)
    wide.assemble(rows(list(range(1000))), ["a"] * 1000, np.arange(1000.0))
    assert len(wide.entities["a"].times) == 14
    assert wide.counters.dropped_from_buffer == 1000 - 14


def test_event_seconds_reads_iso_text_and_numbers_alike() -> None:
    seconds, bad = event_seconds(["2026-11-01T00:00:10Z", 10, "1761955210", None, "soon"])
    assert seconds[0] == pd.Timestamp("2026-11-01T00:00:10Z").timestamp()
    assert seconds[1] == 10.0
    assert seconds[2] == 1761955210.0
    assert bad.tolist() == [False, False, False, True, True]
    # Epoch milliseconds (what Kafka clients stamp) are read as event_timestamps reads them.
    ms, bad = event_seconds([1761955210500, "1761955210500", 1761955210.5])
    assert ms.tolist() == [1761955210.5] * 3
    assert not bad.any()


def test_window_columns_must_agree_with_the_columns_section() -> None:
    cfg = PipelineConfig.model_validate({"window": {"size": 5, "entity": "dev", "time": "t"}})
    assert cfg.columns.entity == "dev"
    assert cfg.columns.timestamp == "t"
    with pytest.raises(ValueError, match="same column"):
        PipelineConfig.model_validate(
            {"columns": {"entity": "pump"}, "window": {"size": 5, "entity": "dev"}}
        )
    path = REPO / "tests" / "_bad_window.yaml"
    path.write_text("window:\n  size: 0\n")
    try:
        with pytest.raises(ConfigError, match=r"window\.size"):
            PipelineConfig.from_yaml(path)
    finally:
        path.unlink()


def test_window_entity_and_time_must_be_two_columns(tmp_path: Path) -> None:
    # window: {entity: machine, time: machine} was accepted: every record of an entity at the
    # same instant (its id read as epoch seconds), windows in arrival order, without a word.
    path = tmp_path / "pipeline.yaml"
    for text in (
        "window: {size: 8, entity: machine, time: machine}\n",
        "columns: {entity: machine, timestamp: machine}\nwindow: {size: 8}\n",
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            PipelineConfig.from_yaml(path)
        assert str(caught.value) == (
            f"pipeline file {path}: window.entity and window.time both name 'machine': the time "
            "is the column of each record's event time, another column (leave window.time out "
            "for arrival order)"
        )


@pytest.mark.parametrize(
    "section",
    [
        {"window": {"size": 5, "lateness_s": float("inf")}},
        {"window": {"size": 5, "max_gap_s": float("inf")}},
        {"training": {"learning_rate": float("inf")}},
        {"model": {"beta": float("inf")}},
        {"alerts": {"cooldown_s": float("nan")}},
    ],
)
def test_a_pipeline_refuses_infinite_or_nan_settings(section: dict[str, Any]) -> None:
    # YAML reads ".inf" as a float: lateness_s: .inf failed with a traceback in WindowSpec, and
    # learning_rate: .inf trained and saved a model without a word.
    with pytest.raises(ValidationError, match="finite number"):
        PipelineConfig.model_validate(section)


def test_a_pipeline_refuses_a_latent_size_the_scorer_cannot_draw_for() -> None:
    # latent_dim: 100000 trained, then failed with a SobolEngine traceback.
    with pytest.raises(ValidationError, match="latent_dim"):
        PipelineConfig.model_validate({"model": {"latent_dim": 100_000}})


# ============================================================== the windowed model (torch)
@pytest.fixture(scope="module")
def window_model() -> AnomalyVAE:
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 8
    cfg.training.progress = False
    return AnomalyVAE(config=cfg).fit(make_pump_data(1600, seed=1))


def test_a_column_set_as_the_index_is_named_as_the_index(window_model: AnomalyVAE) -> None:
    # df.set_index("ts") (a time series' usual shape) was "the window's time column 'ts' is
    # not in the input: add it, or remove window.time from the pipeline": the column is there,
    # as the index, and a scoring pipeline does not change the model's window.
    data = make_pump_data(60, seed=5)
    for column in ("ts", "pump_id", "station"):  # the window's time, its entity, a feature
        with pytest.raises(SchemaError, match=rf"column '{column}' is the index of X, not a col"):
            window_model.score(data.set_index(column))
    with pytest.raises(SchemaError, match=r"training data: column 'ts' is the index of X"):
        AnomalyVAE(config=window_model.config_).fit(data.set_index("ts"))
    with pytest.raises(SchemaError) as caught:
        window_model.score(data.drop(columns=["ts"]))
    assert "the model was trained with window.time: ts" in str(caught.value)
    assert "remove window." not in str(caught.value)


def test_a_shuffled_frame_is_named_as_out_of_order(
    window_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # score() reads rows in the order given: a shuffled frame came back mostly 'late' (never
    # flagged) without a word; the CLI says so for a file.
    data = make_pump_data(400, seed=5)
    with caplog.at_level("WARNING", logger="anomaly_vae.estimator"):
        window_model.score(data)
    assert "were late" not in caplog.text
    shuffled = data.sample(frac=1.0, random_state=0)
    with caplog.at_level("WARNING", logger="anomaly_vae.estimator"):
        scores = window_model.score(shuffled)
    late = int((scores["window_status"] == "late").sum())
    assert late > 10
    assert f"{late} of 400 records were late" in caplog.text
    assert "frame.sort_values(['pump_id', 'ts'])" in caplog.text


def test_a_frame_with_repeated_index_labels_is_scored_in_order(window_model: AnomalyVAE) -> None:
    # pd.concat of two exports without ignore_index (labels 0..29 twice): fit takes such a
    # frame, scoring it was "a windowed model scores frames with a unique index".
    data = make_pump_data(60, seed=5).astype({"flow": object})
    data.loc[7, "flow"] = "n/a?"
    joined = pd.concat(
        [data.iloc[:30].reset_index(drop=True), data.iloc[30:].reset_index(drop=True)]
    )
    assert not joined.index.is_unique
    expected = window_model.score_batch(data)
    got = window_model.score_batch(joined)
    assert got.scores.index.tolist() == joined.index[expected.scores.index].tolist()
    np.testing.assert_array_equal(got.scores["score"], expected.scores["score"])
    assert (got.scores["window_status"].to_numpy() == expected.scores["window_status"]).all()
    assert got.rejects.index.tolist() == [7]
    assert got.rejects["reason"].tolist() == expected.rejects["reason"].tolist()


def test_windowed_scores_do_not_depend_on_how_the_input_is_cut(window_model: AnomalyVAE) -> None:
    data = make_pump_data(300, seed=5, anomaly_rate=0.05)
    whole = window_model.score_batch(data, windows=window_model.new_window_state())
    st = window_model.new_window_state()
    parts = [window_model.score_batch(data.iloc[i : i + 41], windows=st) for i in range(0, 300, 41)]
    joined = pd.concat([p.scores for p in parts])
    assert np.array_equal(joined["score"].to_numpy(), whole.scores["score"].to_numpy())
    assert (joined["window_status"] == whole.scores["window_status"]).all()


def test_a_column_named_like_the_stream_entity_is_not_read_as_the_entity(
    window_model: AnomalyVAE, tmp_path: Path
) -> None:
    # An export (or a training file) with a column named '_entity', the name of the column the
    # stream scorer fills from the message key, had it replace the window's entity column:
    # every pump's records made one series, and 195 of 400 records were flagged instead of 28.
    data = make_pump_data(300, seed=5, anomaly_rate=0.05)
    plain = window_model.score_batch(data).scores
    odd = window_model.score_batch(data.assign(_entity="SAME")).scores
    assert np.array_equal(plain["score"].to_numpy(), odd["score"].to_numpy())
    cfg = window_model.config_.model_copy(deep=True)
    training = make_pump_data(800, seed=1)
    refit = AnomalyVAE(config=cfg).fit(training.assign(_entity="SAME"))
    # Trained on the pumps' own series: as many full windows as without the column.
    again = AnomalyVAE(config=cfg).fit(training)
    assert refit.training_summary_["windows"] == again.training_summary_["windows"]


def test_warming_up_records_are_scored_not_flagged_and_named(window_model: AnomalyVAE) -> None:
    data = make_pump_data(200, seed=6, anomaly_rate=0.1)
    batch = window_model.score_batch(data, threshold=-1e9)
    status = batch.scores["window_status"]
    size = window_model.config_.window.size  # type: ignore[union-attr]
    assert (status == "warming_up").sum() == 4 * (size - 1)  # four pumps
    assert len(batch.scores) == len(data)  # nothing dropped
    assert (batch.scores.loc[status == "warming_up", "is_anomaly"] == 0).all()
    assert (batch.scores.loc[status == "ok", "is_anomaly"] == 1).all()
    names = {name for row in batch.top_features_list(3) for name, _ in row}
    assert names
    assert names <= set(window_model.schema_.names)


def test_fit_leaves_the_columns_parameter_as_given() -> None:
    # The window's entity and time were written into the caller's ColumnsConfig: the parameter
    # changed under fit (scikit-learn's rule), and a row model given the same object after it
    # left pump_id out of its features without a word.
    from anomaly_vae.config import ColumnsConfig

    data = make_pump_data(400, seed=1)
    columns = ColumnsConfig(id=["event_id"], label="label", ignore=["anomaly_kind", "ts"])
    windowed = {"window": {"size": 2, "entity": "pump_id"}}
    AnomalyVAE(epochs=1, seed=0, columns=columns, config=windowed).fit(data)
    assert columns.entity is None
    row_model = AnomalyVAE(epochs=1, seed=0, columns=columns).fit(data)
    assert "pump_id" in row_model.schema_.names


def test_predict_never_flags_a_record_without_a_full_window(window_model: AnomalyVAE) -> None:
    # predict compared the score with threshold_ alone: a warming-up record with a high score
    # was 1 there while score(X)["is_anomaly"] (and the CSV, the database) said 0.
    data = make_pump_data(200, seed=6)
    data.loc[:7, "flow"] *= 5.0  # the first records of each pump: warming up, and far off
    scores = window_model.score(data)
    warming = (scores["window_status"] == "warming_up").to_numpy()
    assert (window_model.decision_function(data)[warming] > 0).any()
    flags = window_model.predict(data)
    assert (flags[warming] == 0).all()
    np.testing.assert_array_equal(flags, scores["is_anomaly"].to_numpy())


def test_only_records_with_a_full_window_get_a_stored_severity(window_model: AnomalyVAE) -> None:
    # The severity written to scores.severity (CSV jobs, the stream, the API): a warming-up
    # record over the threshold got 'warning' beside its is_anomaly 0, and no test noticed.
    from anomaly_vae.storage.sink import severity_labels

    data = make_pump_data(200, seed=6, anomaly_rate=0.1)
    scores = window_model.score_batch(data, threshold=-1e9).scores
    status = scores["window_status"].to_numpy()
    middle = float(scores["score"].median())
    levels = severity_labels(scores, -1e9, middle)
    assert (status == "warming_up").any()
    assert all(level is None for level in levels[status != "ok"])
    above = scores["score"].to_numpy() > middle
    ok = status == "ok"
    assert (levels[ok & above] == "critical").all()
    assert (levels[ok & ~above] == "warning").all()
    assert (ok & above).any()
    assert (ok & ~above).any()


def test_records_without_a_valid_time_are_rejected_with_a_reason(window_model: AnomalyVAE) -> None:
    data = make_pump_data(50, seed=7)
    data.loc[3, "ts"] = "not a time"
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [3]
    assert "window time column 'ts'" in batch.rejects.iloc[0]["reason"]
    assert len(batch.scores) == 49


def test_a_record_with_no_entity_is_rejected_not_put_in_a_series_of_its_own(
    window_model: AnomalyVAE,
) -> None:
    # A row whose entity cell was empty joined an unnamed series ("") with every other such
    # row, whatever machine it came from: its window mixed them. Like a missing time, it is a
    # reject with its reason, in a batch as in a stream (a message with no entity field or key).
    data = make_pump_data(60, seed=8)
    data["pump_id"] = data["pump_id"].astype(object)
    data.loc[[5, 9], "pump_id"] = [None, ""]
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [5, 9]
    assert set(batch.rejects["reason"]) == {"window entity column 'pump_id': missing"}
    assert len(batch.scores) == 58
    stream = data.assign(_entity=data["pump_id"].where(data["pump_id"] != "", None))
    rejects = window_model.score_batch(stream, entity_column="_entity").rejects
    assert list(rejects.index) == [5, 9]
    # A message may give its entity as its key: the reason says where it was looked for.
    assert set(rejects["reason"]) == {
        "window entity column 'pump_id': missing (neither a field of the message nor its key)"
    }


def test_a_record_with_no_time_is_rejected_as_missing_with_strict_json(
    window_model: AnomalyVAE,
) -> None:
    # The raw values go to dead_letters.raw as JSON text: NaN there is not JSON (PostgreSQL's
    # raw::jsonb and strict parsers refuse it), so a missing value is null, as for other rejects.
    data = make_pump_data(50, seed=7)
    data.loc[3, "ts"] = None
    data.loc[3, "flow"] = np.nan
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [3]
    assert batch.rejects.iloc[0]["reason"] == "window time column 'ts': missing"

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    raw = json.loads(batch.rejects.iloc[0]["raw"], parse_constant=refuse)
    assert raw["ts"] is None
    assert raw["flow"] is None
    assert raw["pump_id"] == data.loc[3, "pump_id"]


def test_epoch_milliseconds_give_the_same_windows_as_iso_times(window_model: AnomalyVAE) -> None:
    # Epoch numbers above 1e11 are milliseconds for windows as for stored event times: read as
    # seconds, 5 s steps were 5000 s gaps past max_gap_s and every record stayed warming_up.
    data = make_pump_data(120, seed=8)
    ms = data.assign(
        ts=pd.to_datetime(data["ts"], utc=True).map(lambda t: int(t.timestamp() * 1000))
    )
    iso = window_model.score_batch(data).scores
    in_ms = window_model.score_batch(ms).scores
    assert (iso["window_status"] == "ok").sum() > 0
    assert in_ms["window_status"].tolist() == iso["window_status"].tolist()
    assert np.array_equal(in_ms["score"].to_numpy(), iso["score"].to_numpy())


def test_windowed_model_saved_and_loaded_scores_the_same(
    window_model: AnomalyVAE, tmp_path: Path
) -> None:
    window_model.save(tmp_path / "m")
    loaded = AnomalyVAE.load(tmp_path / "m")
    data = make_pump_data(120, seed=8)
    a = window_model.score_batch(data)
    b = loaded.score_batch(data)
    assert np.array_equal(a.scores["score"].to_numpy(), b.scores["score"].to_numpy())
    assert loaded.windowed
    assert loaded.config_.window == window_model.config_.window


def test_window_sees_temporal_anomalies_a_row_model_cannot(window_model: AnomalyVAE) -> None:
    """Shuffling one pump's readings in time keeps every row plausible on its own; the windowed
    model, which knows how a pump's readings follow each other, scores the shuffle higher."""
    data = make_pump_data(800, seed=9)
    one = data[data["pump_id"] == data["pump_id"].iloc[0]].reset_index(drop=True)
    shuffled = one.copy()
    cols = ["rpm", "flow", "pressure_in", "pressure_out", "current", "temperature", "vibration"]
    rng = np.random.default_rng(0)
    shuffled[cols] = one[cols].to_numpy()[rng.permutation(len(one))]
    normal = window_model.score_batch(one).scores
    odd = window_model.score_batch(shuffled).scores
    ok = (normal["window_status"] == "ok").to_numpy()
    assert np.median(odd["score"].to_numpy()[ok]) > np.median(normal["score"].to_numpy()[ok])


# ============================================================== the conv encoder option
@pytest.fixture(scope="module")
def conv_model() -> AnomalyVAE:
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.model.encoder = "conv"
    cfg.model.conv_channels = [16, 8]
    cfg.model.conv_kernel = 3
    cfg.training.epochs = 8
    cfg.training.progress = False
    return AnomalyVAE(config=cfg).fit(make_pump_data(1600, seed=1))


def test_conv_model_saves_loads_and_scores_the_same_however_the_input_is_cut(
    conv_model: AnomalyVAE, tmp_path: Path
) -> None:
    assert conv_model.model_.encoder_kind == "conv"
    conv_model.save(tmp_path / "m")
    network = json.loads((tmp_path / "m" / "model.json").read_text())["network"]
    assert network["encoder"] == "conv"
    assert network["window_steps"] == 8
    assert network["conv_channels"] == [16, 8]
    loaded = AnomalyVAE.load(tmp_path / "m")
    assert loaded.model_.encoder_kind == "conv"
    data = make_pump_data(300, seed=5, anomaly_rate=0.05)
    whole = conv_model.score_batch(data, windows=conv_model.new_window_state())
    st = loaded.new_window_state()
    parts = [loaded.score_batch(data.iloc[i : i + 41], windows=st) for i in range(0, 300, 41)]
    joined = pd.concat([p.scores for p in parts])
    assert np.array_equal(joined["score"].to_numpy(), whole.scores["score"].to_numpy())
    names = {name for row in whole.top_features_list(3) for name, _ in row}
    assert names
    assert names <= set(conv_model.schema_.names)  # attribution names input columns


def test_conv_model_sees_temporal_anomalies(conv_model: AnomalyVAE) -> None:
    data = make_pump_data(800, seed=9)
    one = data[data["pump_id"] == data["pump_id"].iloc[0]].reset_index(drop=True)
    shuffled = one.copy()
    cols = ["rpm", "flow", "pressure_in", "pressure_out", "current", "temperature", "vibration"]
    shuffled[cols] = one[cols].to_numpy()[np.random.default_rng(0).permutation(len(one))]
    normal = conv_model.score_batch(one).scores
    odd = conv_model.score_batch(shuffled).scores
    ok = (normal["window_status"] == "ok").to_numpy()
    assert np.median(odd["score"].to_numpy()[ok]) > np.median(normal["score"].to_numpy()[ok])


def test_conv_encoder_needs_a_window() -> None:
    with pytest.raises(ValueError, match="needs a window"):
        PipelineConfig.model_validate({"model": {"encoder": "conv"}})
    with pytest.raises(ValueError, match="encoder"):
        PipelineConfig.model_validate({"model": {"encoder": "lstm"}, "window": {"size": 4}})


def test_model_files_from_before_the_conv_option_load_as_mlp(
    window_model: AnomalyVAE, tmp_path: Path
) -> None:
    window_model.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    for key in ("encoder", "window_steps", "conv_channels", "conv_kernel"):
        meta["network"].pop(key)
    meta_path.write_text(json.dumps(meta))
    loaded = AnomalyVAE.load(tmp_path / "m")
    assert loaded.model_.encoder_kind == "mlp"
    data = make_pump_data(60, seed=8)
    assert np.array_equal(
        loaded.score_batch(data).scores["score"].to_numpy(),
        window_model.score_batch(data).scores["score"].to_numpy(),
    )


class _StateStore:
    """A stream sink that keeps what a database would: the window states written with each
    batch, read back for entities a scorer does not hold."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}

    def write(self, batch: StreamBatch) -> WriteResult:
        self.states.update(batch.window_states or {})
        return WriteResult(scores_written=len(batch.records))

    def load_window_states(self, entities: list[str]) -> dict[str, bytes]:
        return {key: self.states[key] for key in entities if key in self.states}

    def close(self) -> None:
        pass


def test_a_partition_moving_away_and_back_continues_from_the_stored_state(
    window_model: AnomalyVAE,
) -> None:
    """Scorer A scores a partition, B takes it over, then A gets it back: A must not go on
    from what it held before (stale), but from what B stored."""
    data = make_pump_data(240, seed=10)
    records = data.astype(object).where(data.notna(), None).to_dict(orient="records")
    values = [json.dumps(r).encode() for r in records]
    messages = [
        Message("t", 0, i, str(data["pump_id"].iloc[i]).encode(), v, 1_700_000_000_000)
        for i, v in enumerate(values)
    ]
    cfg = window_model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(topic="t")
    store = _StateStore()
    a = StreamScorer(window_model, cfg, store)
    b = StreamScorer(window_model, cfg, store)
    scores = []
    for scorer, part in ((a, messages[:80]), (b, messages[80:160]), (a, messages[160:])):
        scorer._windows_moved.set()  # what the rebalance listener does on assignment
        batch = scorer.score_records(part)
        store.write(batch)
        scores.append(batch.scores.scores["score"].to_numpy())
    expected = window_model.score_batch(data).scores["score"].to_numpy()
    got = np.concatenate(scores)
    assert len(got) == len(expected)
    assert np.flatnonzero(got != expected).tolist() == []


def test_an_entity_spread_over_partitions_is_said_once(
    window_model: AnomalyVAE, caplog: pytest.LogCaptureFixture
) -> None:
    # Messages keyed by something else than the pump (here: the event id) spread each pump over
    # the partitions. Each scorer process then windows only the part it reads: with
    # --processes 2, or after a rebalance, the windows (and scores) depended on which process
    # read what, and the windows stored for a pump by one overwrote the other's, without a word.
    data = make_pump_data(80, seed=10)
    records = data.astype(object).where(data.notna(), None).to_dict(orient="records")
    cfg = window_model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(topic="t")

    def messages(partition_of: Any) -> list[Message]:
        return [
            Message("t", partition_of(i), i, str(i).encode(), json.dumps(r).encode(), 0)
            for i, r in enumerate(records)
        ]

    by_pump = {"P1": 0, "P2": 1, "P3": 2, "P4": 0}
    keyed = StreamScorer(window_model, cfg, _StateStore())
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.jobs.stream"):
        keyed.score_records(messages(lambda i: by_pump[str(records[i]["pump_id"])]))
    assert "partitions" not in caplog.text
    spread = StreamScorer(window_model, cfg, _StateStore())
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.jobs.stream"):
        spread.score_records(messages(lambda i: i % 3))
        spread.score_records(messages(lambda i: i % 3))
    assert caplog.text.count("arrives on") == 1
    assert "entity 'P1' arrives on 3 partitions (t:0, t:1, t:2), and 3 more entities" in (
        caplog.text
    )
    assert "produce them with the entity as the message key" in caplog.text


def scored_into_sqlite(
    model: AnomalyVAE,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    seed: int,
    sql: str,
) -> tuple[pd.DataFrame, str, list[Any]]:
    """``model`` saved, an export of 400 pump records scored into a SQLite file by the CLI,
    and ``sql``'s rows from it: (the export, the database URL, the rows)."""
    model.save(tmp_path / "m")
    data = make_pump_data(400, seed=seed, anomaly_rate=0.05)
    export = tmp_path / "export.csv"
    data.to_csv(export, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = ("score", str(export), "--model-dir", str(tmp_path / "m"), "--db", url, "-q")
    done = run_inline(capsys, *args)
    assert done.returncode == 0, done.stderr
    rows = query(url, sql)
    return data, url, rows


def test_a_batch_job_stores_each_records_window_status(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = "SELECT source_key, window_status FROM scores ORDER BY id"
    data, _, rows = scored_into_sqlite(window_model, tmp_path, capsys, 9, sql)
    expected = window_model.score_batch(data, windows=window_model.new_window_state()).scores
    by_row = {int(key.rsplit(":", 1)[1]): status for key, status in rows}
    assert [by_row[i] for i in range(len(data))] == expected["window_status"].tolist()
    assert {"ok", "warming_up"} <= set(by_row.values())


def test_the_summary_counts_window_statuses_and_asks_about_an_unsorted_file(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file in another order (newest first) left most records late, never flagged, and the
    # summary did not say so.
    window_model.save(tmp_path / "m")
    data = make_pump_data(400, seed=9, anomaly_rate=0.05)
    lines = {}
    for name, frame in (("sorted", data), ("reversed", data.iloc[::-1])):
        export = tmp_path / f"{name}.csv"
        frame.to_csv(export, index=False)
        out = str(tmp_path / f"{name}.scores.csv")
        done = run_inline(
            capsys, "score", str(export), "--model-dir", str(tmp_path / "m"), "--out", out, "-q"
        )
        assert done.returncode == 0, done.stderr
        lines[name] = [line for line in done.stdout.splitlines() if line.startswith("windows:")]
    (in_order,) = lines["sorted"]
    assert "0 late" in in_order
    assert "time order" not in in_order
    (backwards,) = lines["reversed"]
    late = int(backwards.split(" late")[0].rsplit(" ", 1)[1])
    assert late > 300
    assert "is the file in time order per entity?" in backwards


@pytest.mark.parametrize("written", ["int", "float"])
def test_numeric_entities_with_a_gap_keep_their_windows_across_chunks(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str
) -> None:
    # Pump ids 1..4 in a CSV, one of them missing in the second chunk: pandas reads that chunk's
    # column as floats, and pump 3 became entity "3.0" there but "3" in the first chunk, so
    # every window restarted at the chunk boundary (and the database kept "3.0"). Written as
    # floats ("3.0", as pandas writes a column of numbers with a gap), pump 3 is still "3", as
    # in a Kafka message.
    window_model.save(tmp_path / "m")
    data = make_pump_data(240, seed=9)
    data["pump_id"] = data["pump_id"].str[1:].astype(object)
    data.loc[200, "pump_id"] = None
    if written == "float":
        data["pump_id"] = data["pump_id"].astype("float64")
    export = tmp_path / "export.csv"
    data.to_csv(export, index=False)
    model = str(tmp_path / "m")
    url = f"sqlite:///{tmp_path / 'results.db'}"
    for out, chunk in (("one.csv", "1000"), ("chunked.csv", "120")):
        args = ["score", str(export), "--model-dir", model, "--out", str(tmp_path / out)]
        done = run_inline(capsys, *args, "--chunk-size", chunk, "--db", url)
        assert done.returncode == 0, done.stderr
    one, chunked = (pd.read_csv(tmp_path / name) for name in ("one.csv", "chunked.csv"))
    assert (one["window_status"] == chunked["window_status"]).all()
    assert np.array_equal(one["score"].to_numpy(), chunked["score"].to_numpy())
    keys = query(url, "SELECT DISTINCT entity_key FROM scores")
    # The row with no pump is a reject (a window needs its entity), not an entity of None.
    assert {k for (k,) in keys} == {"1", "2", "3", "4"}
    assert len(one) == 239


def test_too_few_training_windows_says_whether_gaps_or_time_order_cut_them() -> None:
    # The message only said "give it more rows or a smaller window.size", also when every row
    # was there but a short max_gap_s or a file in reverse time order left no full window.
    data = make_pump_data(400, seed=2)
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 1
    cfg.training.progress = False
    gaps = cfg.model_copy(deep=True)
    assert gaps.window is not None
    gaps.window.max_gap_s = 1.0
    with pytest.raises(SchemaError, match=r"gaps over window\.max_gap_s \(1 s\) restarted"):
        AnomalyVAE(config=gaps).fit(data)
    with pytest.raises(SchemaError, match=r"behind their entity's newest \(is the file in time"):
        AnomalyVAE(config=cfg).fit(data.iloc[::-1])


def test_too_few_training_windows_for_want_of_times_says_so() -> None:
    # A training file whose times could not be read said only "gives 0 full windows ...: give
    # it more rows per entity or a smaller window.size", as if the file were too short.
    data = make_pump_data(400, seed=2)
    data["ts"] = "yesterday"
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 1
    cfg.training.progress = False
    with pytest.raises(
        SchemaError,
        match=r"400 of 400 rows have no valid event time or no entity \(first: row 0: window "
        r"time column 'ts': 'yesterday' is not a time\)",
    ):
        AnomalyVAE(config=cfg).fit(data)


@pytest.mark.parametrize("column", ["pump_id", "ts"])
def test_a_training_file_without_the_windows_column_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str
) -> None:
    # "the window's entity column 'pump_id' is not in the input" named no file.
    train = tmp_path / "train.csv"
    make_pump_data(200, seed=2).drop(columns=[column]).to_csv(train, index=False)
    done = run_inline(
        capsys,
        "train",
        str(train),
        "--model-dir",
        str(tmp_path / "m"),
        "--pipeline",
        str(REPO / "pipelines" / "pumps_windows.yaml"),
    )
    assert done.returncode == 2
    what = "entity" if column == "pump_id" else "time"
    assert f"{train}: the window's {what} column {column!r} is missing (columns: " in done.stderr
    assert f"remove window.{what} from the pipeline" in done.stderr


def test_held_out_windows_are_the_latest_of_every_entity() -> None:
    # A file sorted by entity: the held-out windows were the file's last ones, all of pump C.
    entities = np.asarray(["A"] * 10 + ["B"] * 10 + ["C"] * 5, dtype=object)
    times = np.r_[np.arange(10.0), np.arange(10.0)[::-1], np.arange(5.0)]
    train, held = latest_per_entity(entities, times, fraction=0.2)
    assert len(held) == 5
    assert sorted([*train, *held]) == list(range(25))
    assert sorted(zip(entities[held], times[held], strict=True)) == [
        ("A", 8.0),
        ("A", 9.0),
        ("B", 8.0),
        ("B", 9.0),
        ("C", 4.0),
    ]
    assert latest_per_entity(entities[:1], times[:1], fraction=0.2)[1].tolist() == []


@pytest.mark.parametrize("timed", [True, False])
def test_training_windows_never_span_labelled_anomalies_left_out(timed: bool) -> None:
    # The labelled rows were dropped before the windows were built: the records on either
    # side of an anomaly made windows that never occurred (a jump in time and value), trained
    # as normal. Such windows are left out; the entity's window starts again after it.
    n, size = 60, 5
    label = np.zeros(n, dtype=int)
    label[30:34] = 1
    frame = pd.DataFrame(
        {
            "dev": ["A"] * n,
            "t": 1_790_000_000 + 10 * np.arange(n),
            "x": np.sin(np.arange(n) / 5) + 5 * label,
            "y": np.cos(np.arange(n) / 7),
            "label": label,
        }
    )
    window: dict[str, Any] = {"size": size, "entity": "dev"}
    if timed:
        window["time"] = "t"
    else:
        frame = frame.drop(columns=["t"])
    model = AnomalyVAE(
        config={"columns": {"label": "label"}, "window": window}, epochs=1, seed=0
    ).fit(frame)
    summary = model.training_summary_
    assert summary["rows_labelled_anomalous"] == 4
    # 56 normal rows: the first 4 of the entity and the first 4 after the anomaly warm up.
    assert summary["windows"] == 56 - 2 * (size - 1)


def _three_pumps(first: int, n: int, seed: int) -> pd.DataFrame:
    """Pumps P0 and P1 whose flow rises with their temperature, P2 whose flow falls."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, sign in enumerate([1.0, 1.0, -1.0]):
        i = np.arange(first, first + n)
        wave = np.sin(i / 8)
        parts.append(
            pd.DataFrame(
                {
                    "pump": f"P{k}",
                    "ts": 1_790_000_000 + i * 10,
                    "temp": 50 + 5 * wave + rng.normal(0, 0.1, n),
                    "flow": 10 + sign * 2 * wave + rng.normal(0, 0.1, n),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_a_file_sorted_by_entity_trains_on_every_entity() -> None:
    # Training held out the file's last windows: in a file sorted by entity, all of the last
    # pump's, so the model never learnt it (its normal records scored like anomalies) and the
    # threshold was calibrated on that one pump alone.
    cfg = PipelineConfig.model_validate(
        {
            "window": {"size": 4, "entity": "pump", "time": "ts"},
            "training": {"epochs": 30, "progress": False},
        }
    )
    model = AnomalyVAE(config=cfg).fit(_three_pumps(0, 300, seed=1))
    fresh = _three_pumps(300, 100, seed=2)
    scores = model.score_batch(fresh).scores
    median = scores["score"].groupby(fresh["pump"]).median()
    assert median["P2"] < 1.3 * median["P0"], median.to_dict()


def test_a_window_of_one_record_is_described_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Training said "... full windows of 1 records ...: the first 0 of each entity, after a
    # gap, or late" and info "window: 1 records per entity".
    train = tmp_path / "train.csv"
    make_pump_data(200, seed=2).to_csv(train, index=False)
    pipeline = tmp_path / "pipeline.yaml"
    text = (REPO / "pipelines" / "pumps_windows.yaml").read_text()
    pipeline.write_text(text.replace("epochs: null", "epochs: 1").replace("size: 8 ", "size: 1 "))
    model = str(tmp_path / "m")
    done = run_inline(
        capsys, "train", str(train), "--model-dir", model, "--pipeline", str(pipeline)
    )
    assert done.returncode == 0, done.stderr
    assert "full windows of 1 record from 200 rows" in done.stdout
    assert "0 rows without a full window: late)" in done.stdout
    info = run_inline(capsys, "info", "--model-dir", model)
    assert "window: 1 record per entity (column 'pump_id')" in info.stdout


def test_late_training_rows_are_not_left_out_silently(caplog: pytest.LogCaptureFixture) -> None:
    # A training file whose second half runs backwards in time trained on half its rows and
    # said "0 rows rejected".
    data = make_pump_data(600, seed=2)
    half = len(data) // 2
    data = pd.concat([data.iloc[:half], data.iloc[half:].iloc[::-1]])
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 1
    cfg.training.progress = False
    with caplog.at_level(logging.WARNING):
        AnomalyVAE(config=cfg).fit(data)
    assert "training rows were more than window.lateness_s (30 s) behind" in caplog.text
    assert "is the file in time order per entity?" in caplog.text


def test_info_shows_the_window_and_the_columns_scoring_needs(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # info said nothing of the window: nothing told a user that an export needs pump_id and ts.
    window_model.save(tmp_path / "m")
    done = run_inline(capsys, "info", "--model-dir", str(tmp_path / "m"))
    assert done.returncode == 0, done.stderr
    assert (
        "window: 8 records per entity (column 'pump_id'), in event time (column 'ts'), "
        "lateness 30 s, a gap over 120 s restarts it"
    ) in done.stdout
    assert "columns: id event_id; entity pump_id; timestamp ts; label label" in done.stdout
    assert "csv: sep ',', decimal '.'" in done.stdout


def test_entities_and_ids_are_read_as_the_file_writes_them_in_every_chunk(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pump "007" beside pump "P2": a chunk holding only pump 007's rows was read as numbers, so
    # the pump was entity "7" there and "007" in the other chunks (its window restarted, scores
    # depended on the chunk size), and the id column lost its leading zeros in the output.
    window_model.save(tmp_path / "m")
    data = make_pump_data(240, seed=9)
    data["pump_id"] = data["pump_id"].where(data["pump_id"] != "P1", "007")
    data["event_id"] = [f"{i:05d}" for i in range(len(data))]
    data = pd.concat([data[data["pump_id"] != "007"], data[data["pump_id"] == "007"]])
    export = tmp_path / "export.csv"
    data.to_csv(export, index=False)
    model = str(tmp_path / "m")
    for out, chunk in (("one.csv", "1000"), ("chunked.csv", "50")):
        args = ["score", str(export), "--model-dir", model, "--out", str(tmp_path / out)]
        done = run_inline(capsys, *args, "--chunk-size", chunk)
        assert done.returncode == 0, done.stderr
    one, chunked = (pd.read_csv(tmp_path / n, dtype=str) for n in ("one.csv", "chunked.csv"))
    pd.testing.assert_frame_equal(one, chunked)
    assert one["event_id"].tolist() == data["event_id"].tolist()
    assert set(one["pump_id"]) == set(data["pump_id"])


@pytest.mark.parametrize("column", ["pump_id", "ts"])
def test_an_export_without_the_windows_entity_or_time_column_is_refused_before_any_output(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str
) -> None:
    # Without its entity column every pump's records made one series (their windows mixed,
    # scored without a word); without its time column the job failed after creating its output.
    window_model.save(tmp_path / "m")
    export = tmp_path / "export.csv"
    make_pump_data(100, seed=9).drop(columns=[column]).to_csv(export, index=False)
    out = tmp_path / "scores.csv"
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = ["score", str(export), "--model-dir", str(tmp_path / "m"), "--out", str(out)]
    done = run_inline(capsys, *args, "--db", url)
    assert done.returncode == 2
    assert f"export.csv: the window's {'entity' if column == 'pump_id' else 'time'} column" in (
        done.stderr
    )
    assert f"{column!r} is missing" in done.stderr
    # The model scores with the window it was trained with: a scoring pipeline without
    # window.entity changes nothing, so the message must not send the user there.
    assert "remove window." not in done.stderr
    assert "the model was trained with window." in done.stderr
    assert not out.exists()
    with pytest.raises(SchemaError, match="entity column 'pump_id'"):
        window_model.score_batch(make_pump_data(20, seed=9).drop(columns=["pump_id"]))


def test_numeric_dates_are_read_in_one_order_for_the_whole_column(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Read value by value, 20/11/2026 came out day first and 05/11/2026 month first (May):
    # a European export's times out of order, its windows assembled in the wrong order.
    from anomaly_vae import windows
    from anomaly_vae.windows import event_timestamps

    def days(values: list[str]) -> list[str]:
        return [t.strftime("%Y-%m-%d") for t in event_timestamps(pd.Series(values))]

    assert days(["05/11/2026 10:00", "20/11/2026 10:00"]) == ["2026-11-05", "2026-11-20"]
    assert days(["11/20/2026", "05/11/2026"]) == ["2026-11-20", "2026-05-11"]
    assert days(["05.11.2026 10:00", "06.11.2026"]) == ["2026-11-05", "2026-11-06"]
    assert days(["2026-11-05T10:00:00Z", "20/11/2026"]) == ["2026-11-05", "2026-11-20"]
    seconds, bad = windows.event_seconds(["05/11/2026 10:00", "13/11/2026 10:00"])
    assert not bad.any()
    assert seconds[1] - seconds[0] == 8 * 86400
    windows._warned_ambiguous_dates = False
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.windows"):
        assert days(["05/11/2026", "06/11/2026"]) == ["2026-05-11", "2026-06-11"]
    assert "could put the day or the month first" in caplog.text


def _day_first_times(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its times written as a European export writes them (13/11/2026 23:00)."""
    stamps = pd.to_datetime(frame["ts"], utc=True)
    return frame.assign(ts=stamps.dt.strftime("%d/%m/%Y %H:%M:%S"))


@pytest.fixture(scope="module")
def day_first_model() -> AnomalyVAE:
    # Training times cross midnight into the 13th: day first, said by the data itself.
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 2
    cfg.training.progress = False
    train = _day_first_times(make_pump_data(1600, seed=1, start="2026-11-12T23:00:00Z"))
    return AnomalyVAE(config=cfg).fit(train)


def test_numeric_dates_are_read_in_the_models_order_in_every_chunk_and_stored_alike(
    day_first_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The order of 12/11/2026 was decided chunk by chunk: a chunk holding only days up to 12
    # was read month first (December 11), the next one, with 13/11/2026, day first
    # (November 13): every record after the first chunk was 'late' (scored on its own, never
    # flagged), the scores depended on --chunk-size, and the stored event times jumped a month.
    assert day_first_model.config_.window is not None
    assert day_first_model.config_.window.day_first is True  # learned, and saved with the model
    data = make_pump_data(600, seed=5, anomaly_rate=0.05, start="2026-11-12T23:50:00Z")
    truth = pd.to_datetime(data["ts"], utc=True).dt.floor("s")  # as the export writes them
    export = _day_first_times(data)
    whole = day_first_model.score_batch(export, windows=day_first_model.new_window_state())
    st = day_first_model.new_window_state()
    parts = [
        day_first_model.score_batch(export.iloc[i : i + 100], windows=st)
        for i in range(0, 600, 100)
    ]
    joined = pd.concat([p.scores for p in parts])
    assert set(joined["window_status"]) == {"ok", "warming_up"}
    assert (joined["window_status"] == whole.scores["window_status"]).all()
    assert np.array_equal(joined["score"].to_numpy(), whole.scores["score"].to_numpy())

    day_first_model.save(tmp_path / "m")
    loaded = AnomalyVAE.load(tmp_path / "m")
    assert loaded.config_.window == day_first_model.config_.window
    path = tmp_path / "export.csv"
    export.to_csv(path, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    out = str(tmp_path / "scores.csv")
    args = ["score", str(path), "--model-dir", str(tmp_path / "m"), "--out", out]
    done = run_inline(capsys, *args, "--chunk-size", "100", "--db", url, "-q")
    assert done.returncode == 0, done.stderr
    assert "differs from the model's" not in done.stderr
    # The pipeline it was trained with (day_first left out) is not another window.
    pipeline = REPO / "pipelines" / "pumps_windows.yaml"
    again = run_inline(capsys, *args, "--pipeline", str(pipeline), "-q")
    assert again.returncode == 0, again.stderr
    assert "differs from the model's" not in again.stderr
    info = run_inline(capsys, "info", "--model-dir", str(tmp_path / "m"))
    assert ", dates like 05/11/2026 read day first" in info.stdout
    scored = pd.read_csv(out)  # scores as the CSV writes them (float32 text)
    assert scored["window_status"].tolist() == whole.scores["window_status"].tolist()
    assert np.allclose(scored["score"].to_numpy(), whole.scores["score"].to_numpy(), rtol=1e-6)
    rows = query(url, "SELECT source_key, event_time FROM scores")
    stored = {int(key.rsplit(":", 1)[1]): pd.Timestamp(t) for key, t in rows}
    assert len(stored) == 600
    for i in (0, 99, 100, 240, 599):
        assert stored[i].tz_localize(None) == truth[i].tz_localize(None), i


def test_a_model_trained_on_iso_times_reads_numeric_dates_in_one_order_for_the_whole_run(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model trained on ISO 8601 times has no order of numeric dates, so each chunk of an
    # export decided its own: 30/11/2026 day first, the next chunk's 01/12/2026 (a day and a
    # month up to 12) month first, 12 January: every record after the first chunk was 'late'
    # (never flagged), the scores depended on --chunk-size and the stored times were wrong.
    assert window_model.config_.window is not None
    assert window_model.config_.window.day_first is None
    data = make_pump_data(600, seed=5, anomaly_rate=0.05, start="2026-11-30T23:58:00Z")
    truth = pd.to_datetime(data["ts"], utc=True).dt.floor("s")
    export = _day_first_times(data)
    assert export["ts"].iloc[0].startswith("30/11/2026")
    assert export["ts"].iloc[100:].str.startswith("01/12/2026").all()
    whole = window_model.score_batch(export, windows=window_model.new_window_state())
    assert set(whole.scores["window_status"]) == {"ok", "warming_up"}
    st = window_model.new_window_state()
    parts = [
        window_model.score_batch(export.iloc[i : i + 100], windows=st) for i in range(0, 600, 100)
    ]
    joined = pd.concat([p.scores for p in parts])
    assert joined["window_status"].tolist() == whole.scores["window_status"].tolist()
    assert np.array_equal(joined["score"].to_numpy(), whole.scores["score"].to_numpy())

    window_model.save(tmp_path / "m")
    path = tmp_path / "export.csv"
    export.to_csv(path, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = [
        "score",
        str(path),
        "--model-dir",
        str(tmp_path / "m"),
        "--out",
        str(tmp_path / "s.csv"),
    ]
    done = run_inline(capsys, *args, "--chunk-size", "100", "--db", url, "-q")
    assert done.returncode == 0, done.stderr
    assert "0 late" in done.stdout
    rows = query(url, "SELECT source_key, event_time FROM scores")
    stored = {int(key.rsplit(":", 1)[1]): pd.Timestamp(t) for key, t in rows}
    for i in (0, 99, 100, 350, 599):
        assert stored[i].tz_localize(None) == truth[i].tz_localize(None), i

    # Kafka micro-batches alike: the scores, and the event times the sink stores.
    records = export.astype(object).where(export.notna(), None).to_dict(orient="records")
    messages = [
        Message("t", 0, i, str(r["pump_id"]).encode(), json.dumps(r).encode(), 0)
        for i, r in enumerate(records)
    ]
    cfg = window_model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(topic="t")
    scorer = StreamScorer(window_model, cfg, _StateStore())
    batches = [scorer.score_records(messages[i : i + 100]) for i in range(0, 600, 100)]
    streamed = np.concatenate([b.scores.scores["score"].to_numpy() for b in batches])
    assert np.array_equal(streamed, whole.scores["score"].to_numpy())
    times = pd.concat([b.records["_event_time"] for b in batches], ignore_index=True)
    assert times.dt.tz_localize(None).tolist() == truth.dt.tz_localize(None).tolist()


@pytest.mark.parametrize(
    "layout",
    ["%Y-%m-%d %H:%M:%S,%f", "%d/%m/%Y %H:%M:%S.%f", "%a, %d %b %Y %H:%M:%S.%f +0000"],
)
def test_times_with_fractions_of_a_second_in_other_layouts_are_read(
    window_model: AnomalyVAE, layout: str
) -> None:
    # Python logging's "2026-11-02 10:00:00,123" (or any layout but ISO 8601 with a fraction
    # of a second) killed the job: a TypeError from pandas, the two parses' units mixed.
    data = make_pump_data(120, seed=6, start="2026-11-13T10:00:00.250Z")
    stamps = pd.to_datetime(data["ts"], utc=True)
    written = data.assign(ts=stamps.dt.strftime(layout))
    iso = window_model.score_batch(data, windows=window_model.new_window_state())
    other = window_model.score_batch(written, windows=window_model.new_window_state())
    assert len(other.rejects) == 0
    assert np.array_equal(other.scores["score"].to_numpy(), iso.scores["score"].to_numpy())
    seconds, bad = event_seconds(written["ts"].tolist())
    assert not bad.any()
    epoch = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    assert np.allclose(seconds, epoch, rtol=0, atol=1e-3)


def test_epoch_seconds_with_a_decimal_comma_are_times(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A ';' export with decimal commas writes a fraction of a second as 1793577600,25: every
    # record was rejected ("'1793577600,25' is not a time").
    data = make_pump_data(120, seed=6, start="2026-11-13T10:00:00.250Z")
    stamps = pd.to_datetime(data["ts"], utc=True)
    epoch = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    window_model.save(tmp_path / "m")
    export = tmp_path / "export.csv"
    data.assign(ts=epoch).to_csv(export, sep=";", decimal=",", index=False)
    assert "1794564000,25;" in export.read_text()
    out = tmp_path / "scores.csv"
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = ["score", str(export), "--model-dir", str(tmp_path / "m"), "--out", str(out)]
    done = run_inline(capsys, *args, "--sep", ";", "--decimal", ",", "--db", url, "-q")
    assert done.returncode == 0, done.stderr
    assert "120 scored" in done.stdout
    scored = pd.read_csv(out, sep=";", decimal=",")  # written as the export was read
    iso = window_model.score_batch(data, windows=window_model.new_window_state()).scores
    assert scored["window_status"].tolist() == iso["window_status"].tolist()
    assert np.allclose(scored["score"].to_numpy(), iso["score"].to_numpy(), rtol=1e-6)
    stored = query(url, "SELECT event_time FROM scores ORDER BY id LIMIT 1")[0][0]
    assert pd.Timestamp(stored) == stamps[0].tz_localize(None)


def test_a_batch_job_whose_every_time_is_unreadable_stores_its_rejects(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every row rejected for its time: the sink read the event times of no row, an empty
    # column of text, with a pandas deprecation warning that pandas 4 turns into an error.
    window_model.save(tmp_path / "m")
    export = tmp_path / "export.csv"
    make_pump_data(30, seed=6).assign(ts="yesterday").to_csv(export, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = ["score", str(export), "--model-dir", str(tmp_path / "m"), "--db", url, "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = run_inline(capsys, *args)
    assert done.returncode == 0, done.stderr
    assert "30 rejected rows added to dead_letters" in done.stdout
    assert query(url, "SELECT count(*) FROM dead_letters") == [(30,)]


def test_a_time_text_past_what_an_event_time_holds_is_rejected(window_model: AnomalyVAE) -> None:
    # '3000-01-01T00:00:00Z' was windowed at 1830 (its seconds overflowed nanoseconds), and
    # the stored event time (score --db, a Kafka message) died with an OutOfBoundsDatetime
    # traceback: one such message stopped the stream scorer, again after each restart.
    from anomaly_vae.windows import event_timestamps

    data = make_pump_data(40, seed=6)
    data["ts"] = data["ts"].astype(object)
    data.loc[[5, 9], "ts"] = ["3000-01-01T00:00:00Z", "1600-01-01 10:00:00.5"]
    _, bad = event_seconds(data["ts"].tolist())
    assert bad.tolist() == [i in (5, 9) for i in range(40)]
    assert event_timestamps(data["ts"]).isna().tolist() == bad.tolist()
    batch = window_model.score_batch(data)
    assert sorted(batch.rejects.index) == [5, 9]
    assert (
        batch.rejects["reason"]
        .str.endswith("is a date outside the years 1677 to 2262 that a time can be read in")
        .all()
    )
    records = data.astype(object).where(data.notna(), None).to_dict(orient="records")
    messages = [
        Message("t", 0, i, str(r["pump_id"]).encode(), json.dumps(r).encode(), 0)
        for i, r in enumerate(records)
    ]
    cfg = window_model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(topic="t")
    streamed = StreamScorer(window_model, cfg, _StateStore()).score_records(messages)
    assert len(streamed.scores.scores) == 38
    assert len(streamed.rejects) == 2


def test_an_empty_entity_field_beside_a_key_is_windowed_by_the_key(
    window_model: AnomalyVAE,
) -> None:
    # {"pump_id": ""} with the key P1 was rejected: "window entity column 'pump_id': missing
    # (neither a field of the message nor its key)", where {"pump_id": null} with that key
    # was windowed as P1.
    data = make_pump_data(12, seed=6)
    records = data.astype(object).where(data.notna(), None).to_dict(orient="records")
    messages = []
    for i, r in enumerate(records):
        key = str(r["pump_id"]).encode()
        value = {**r, "pump_id": "" if i == 5 else None if i == 7 else r["pump_id"]}
        messages.append(Message("t", 0, i, key, json.dumps(value).encode(), 0))
    cfg = window_model.config_.model_copy(deep=True)
    cfg.kafka = KafkaConfig(topic="t")
    streamed = StreamScorer(window_model, cfg, _StateStore()).score_records(messages)
    assert len(streamed.rejects) == 0, streamed.rejects["reason"].tolist()
    assert streamed.records["_entity"].tolist() == [str(r["pump_id"]) for r in records]


def test_a_date_that_contradicts_the_models_order_is_rejected_saying_what_to_do() -> None:
    # A model trained on dates that are day first only by convention (no day above 12 in the
    # training file) reads them month first, said at training; an export then holding
    # 13/11/2026 is not read as November 13 beside 12/11/2026 as December 11.
    cfg = PipelineConfig.from_yaml(REPO / "pipelines" / "pumps_windows.yaml")
    cfg.training.epochs = 1
    cfg.training.progress = False
    train = _day_first_times(make_pump_data(1600, seed=1, start="2026-11-01T00:00:00Z"))
    model = AnomalyVAE(config=cfg).fit(train)
    assert model.config_.window is not None
    assert model.config_.window.day_first is False
    export = _day_first_times(make_pump_data(40, seed=5, start="2026-11-12T23:59:00Z"))
    batch = model.score_batch(export)
    late = export["ts"].str.startswith("13/")
    assert list(batch.rejects.index) == list(export.index[late])
    reason = batch.rejects.iloc[0]["reason"]
    assert "cannot be read month first" in reason
    assert "window.day_first: true" in reason
    # Set in the pipeline, the order is the one given.
    cfg.window.day_first = True  # type: ignore[union-attr]
    told = AnomalyVAE(config=cfg).fit(train)
    assert len(told.score_batch(export).rejects) == 0


def test_threshold_preview_tune_and_contamination_leave_out_records_no_threshold_flags(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A windowed model's warming-up and late records are never flagged (the scorer and the
    # write path say so), but the threshold commands judged every stored score alike:
    # 'preview --value 0' said it would flag all 400 records and open alerts on warming-up
    # ones, 'tune' ranked them (a threshold tuned to catch records it can never flag), and
    # '--contamination' took its top share from scores no threshold applies to.
    _, url, stored = scored_into_sqlite(
        window_model, tmp_path, capsys, 11, "SELECT source_key, score, window_status FROM scores"
    )
    frame = pd.DataFrame(stored, columns=["source_key", "score", "window_status"])
    ok = frame["window_status"] == "ok"
    assert 0 < (~ok).sum() < len(frame)
    name = window_model.config_.name

    args = ["thresholds", "preview", name, "--db", url, "--format", "json"]
    done = run_inline(capsys, *args, "--value", "-1000000")
    assert done.returncode == 0, done.stderr
    everything = json.loads(done.stdout)
    assert everything["records"] == len(frame)
    assert everything["flagged"] == int(ok.sum())

    done = run_inline(capsys, *args, "--contamination", "0.1")
    assert done.returncode == 0, done.stderr
    top = json.loads(done.stdout)["proposed"]["warning"]
    assert top == pytest.approx(float(np.quantile(frame.loc[ok, "score"], 0.9)))

    # Labels that call exactly the warming-up records anomalous: no threshold catches one.
    labels = tmp_path / "labels.csv"
    frame.assign(label=(~ok).astype(int))[["source_key", "label"]].to_csv(labels, index=False)
    tune = ["thresholds", "tune", name, "--db", url, "--labels", str(labels), "--format", "json"]
    done = run_inline(capsys, *tune, "--objective", "f1")
    assert done.returncode == 0, done.stderr
    tuned = json.loads(done.stdout)
    assert tuned["recall"] == 0.0
    assert tuned["false_alarm_rate"] == 0.0


@pytest.mark.parametrize("unit", ["us", "ns"])
def test_epoch_micro_and_nanoseconds_give_the_same_windows_as_iso_times(
    window_model: AnomalyVAE, tmp_path: Path, capsys: pytest.CaptureFixture[str], unit: str
) -> None:
    # Epoch numbers from PostgreSQL or Python (microseconds) or Go and pandas (nanoseconds)
    # were read as milliseconds: 10 s steps were hours apart, past max_gap_s, so every record
    # stayed warming_up and none could be flagged; with --db the job died with a traceback
    # (OutOfBoundsDatetime) storing their event times.
    data = make_pump_data(120, seed=8)
    stamps = pd.to_datetime(data["ts"], utc=True)
    since = stamps - pd.Timestamp("1970-01-01", tz="UTC")
    per_second = {"us": 1_000_000, "ns": 1_000_000_000}[unit]
    epoch = data.assign(ts=(since // pd.Timedelta(seconds=1 / per_second)).astype("int64"))
    assert epoch["ts"].iloc[0] == int(stamps.iloc[0].timestamp()) * per_second
    iso = window_model.score_batch(data).scores
    assert (iso["window_status"] == "ok").sum() > 0
    numbers = window_model.score_batch(epoch).scores
    assert numbers["window_status"].tolist() == iso["window_status"].tolist()
    assert np.array_equal(numbers["score"].to_numpy(), iso["score"].to_numpy())

    window_model.save(tmp_path / "m")
    export = tmp_path / "export.csv"
    epoch.to_csv(export, index=False)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    args = ["score", str(export), "--model-dir", str(tmp_path / "m"), "--db", url, "-q"]
    done = run_inline(capsys, *args)
    assert done.returncode == 0, done.stderr
    rows = query(url, "SELECT source_key, event_time FROM scores")
    stored = {int(key.rsplit(":", 1)[1]): pd.Timestamp(t) for key, t in rows}
    assert len(stored) == len(data)
    for i in (0, 57, 119):
        assert abs(stored[i].tz_localize(None) - stamps[i].tz_localize(None)) < pd.Timedelta(
            1, unit="ms"
        )


def test_an_epoch_number_past_what_an_event_time_holds_is_rejected(
    window_model: AnomalyVAE,
) -> None:
    data = make_pump_data(30, seed=8).astype({"ts": object})
    data.loc[4, "ts"] = 9e16  # microseconds: the year 4822, past a 64-bit nanosecond time
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [4]
    assert "is an epoch time past the year 2262" in batch.rejects.iloc[0]["reason"]


def test_training_says_how_many_rows_made_windows_and_how_many_were_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A windowed model's training said "trained on 2366 rows ... 0 rows rejected" for a file of
    # 2400 rows of which 6 had no time or no pump (left out) and 28 no full window: the
    # counts were windows called rows, and the rows left out were not counted as rejected.
    data = make_pump_data(600, seed=1)
    data.loc[[5, 50], "ts"] = None
    data.loc[[7], "ts"] = "garbage"
    data["pump_id"] = data["pump_id"].astype(object)
    data.loc[[9], "pump_id"] = None
    train = tmp_path / "train.csv"
    data.to_csv(train, index=False)
    pipeline = tmp_path / "pipeline.yaml"
    text = (REPO / "pipelines" / "pumps_windows.yaml").read_text()
    pipeline.write_text(text.replace("epochs: null", "epochs: 1"))
    model = str(tmp_path / "m")
    done = run_inline(
        capsys, "train", str(train), "--model-dir", model, "--pipeline", str(pipeline)
    )
    assert done.returncode == 0, done.stderr
    assert "4 training rows have no valid event time or no entity: left out (first: row 5:" in (
        done.stderr
    )
    # 4 pumps: 7 rows each before a full window, and one more where a left-out row was.
    full = 600 - 4 - 4 * 7
    assert (
        f"trained 'pumps-windows' on {full} full windows of 8 records from 600 rows of {train} "
    ) in done.stdout
    assert "; 4 rows rejected; 28 rows without a full window: the first 7 of each entity" in (
        done.stdout
    )
    assert "held-out normal windows" in done.stdout
    info = run_inline(capsys, "info", "--model-dir", model)
    assert "full windows of 600 rows (+" in info.stdout


def test_a_true_or_false_time_is_rejected_not_read_as_1970(window_model: AnomalyVAE) -> None:
    # A JSON true in the time field was windowed at 1 s after the epoch (false at 0) while its
    # stored event time was none: in a new pump's series, the next real record came 56 years
    # later, after a 'gap'.
    data = make_pump_data(40, seed=7).astype({"ts": object})
    data.loc[3, "ts"] = True
    data.loc[9, "ts"] = False
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [3, 9]
    assert batch.rejects.loc[3, "reason"] == "window time column 'ts': True is not a time"
    assert len(batch.scores) == 38


def test_a_date_past_the_years_a_time_holds_is_named_so_not_called_no_time(
    window_model: AnomalyVAE,
) -> None:
    # '9999-12-31T00:00:00Z' (an export's "no end") is ISO 8601 but past 2262, the last year
    # a 64-bit nanosecond time reaches: its reason said "is not a time", and the batch
    # database sink's warning "Write ISO 8601", which it was.
    from anomaly_vae.windows import out_of_range_time

    data = make_pump_data(12, seed=7).astype({"ts": object})
    data.loc[2, "ts"] = "9999-12-31T00:00:00Z"
    data.loc[4, "ts"] = "0001-01-01"
    data.loc[6, "ts"] = "2026-13-01T00:00:00Z"
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [2, 4, 6]
    far = "is a date outside the years 1677 to 2262 that a time can be read in"
    assert (
        batch.rejects.loc[2, "reason"] == f"window time column 'ts': '9999-12-31T00:00:00Z' {far}"
    )
    assert batch.rejects.loc[4, "reason"] == f"window time column 'ts': '0001-01-01' {far}"
    assert str(batch.rejects.loc[6, "reason"]).endswith("'2026-13-01T00:00:00Z' is not a time")
    assert [out_of_range_time(v) for v in ("2300-01-01 10:00", "yesterday", 1e30, None)] == [
        True,
        False,
        False,
        False,
    ]


def test_a_long_time_text_is_not_repeated_whole_in_its_reason(window_model: AnomalyVAE) -> None:
    # A time field of 500,000 characters gave a reason of 500,041: a dead letter's reason
    # (and the dead-letter topic's header) of half a megabyte, echoed whole by the API, where
    # a feature's bad value is cut ("column 'flow': 'yyy...' is not a number").
    data = make_pump_data(10, seed=7).astype({"ts": object})
    data.loc[2, "ts"] = "x" * 500_000
    data.loc[4, "ts"] = "13/" + "1" * 500_000
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [2, 4]
    for reason in batch.rejects["reason"]:
        assert len(reason) < 400, reason[:200]
    reason = str(batch.rejects.loc[2, "reason"])
    assert reason.startswith("window time column 'ts': 'xxx")
    assert reason.endswith("...' is not a time")


def test_dates_written_as_digits_are_pointed_out(caplog: pytest.LogCaptureFixture) -> None:
    """20261112 (or 20261112230000) read as an epoch time is August 1970 (or the year 2612):
    windows, gaps and lateness come out wrong without a word. A warning says so, once; real
    epoch seconds and milliseconds are not taken for such dates."""
    import anomaly_vae.windows as windows_module
    from anomaly_vae.windows import event_seconds

    windows_module._warned_times.clear()
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.windows"):
        event_seconds([1_764_000_000, 1_764_000_060])
        event_seconds([1_764_000_000_000, 1_764_000_060_000])
        assert "written as digits" not in caplog.text
        event_seconds([20261112, 20261113, 20261114])
        assert caplog.text.rstrip().endswith(
            "times like 20261112 look like dates written as digits (YYYYMMDD or "
            "YYYYMMDDhhmmss), but a number is read as an epoch time (1970-08-23 12:05:12): "
            "write them as ISO 8601 (2026-11-12) for windows, gaps and lateness to be right"
        )
        caplog.clear()
        event_seconds([20261112, 20261113])
        assert caplog.text == ""  # once
    windows_module._warned_times.clear()
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.windows"):
        event_seconds([20261112230000, 20261112230100])
    assert "times like 20261112230000" in caplog.text
    # In milliseconds the year 2612: past what a time holds, so no time, not a time in 2612.
    assert "(the year 2612, past the year 2262 that a time can be read in: no time" in caplog.text


def test_numeric_event_times_of_score_db_and_excel_serial_dates_are_pointed_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """'score --db' stores a model's timestamp column through event_times_in_order, which
    gave no word for 20260101 (stored as 1970-08-23) nor for Excel's serial dates (45292.5,
    2024-01-01 12:00, stored as 1970-01-01 12:34:52)."""
    import anomaly_vae.windows as windows_module
    from anomaly_vae.windows import event_times_in_order

    windows_module._warned_times.clear()
    with caplog.at_level(logging.WARNING, logger="anomaly_vae.windows"):
        event_times_in_order(pd.Series([1_764_000_000, 1_764_000_060, "2026-11-01"]))
        assert caplog.text == ""
        event_times_in_order(pd.Series(["20260101", "20260102"]))
        assert "times like 20260101 look like dates written as digits" in caplog.text
        caplog.clear()
        event_times_in_order(pd.Series([45292.5, 45292.75, 45293]))
        assert caplog.text.rstrip().endswith(
            "times like 45292.5 are read as epoch seconds, 1970-01-01 12:34:52.500000: if they "
            "are Excel serial dates (days since 1899-12-30, 2024-01-01 12:00:00), write them "
            "as ISO 8601 (format the column as a date in Excel before saving) for the stored "
            "event times, windows, gaps and lateness to be right"
        )
        caplog.clear()
        event_times_in_order(pd.Series([45292.5]))
        assert caplog.text == ""  # once


def test_a_number_past_the_years_a_time_holds_is_named_so_not_called_no_time(
    window_model: AnomalyVAE,
) -> None:
    # 20261112230000 (a date written as digits with its time of day) is an epoch time in ms,
    # the year 2612: every record was rejected with "'20261112230000' is not a time" beside
    # a warning that it was read as 2612, and no word of the year 2262.
    data = make_pump_data(12, seed=7).astype({"ts": object})
    data.loc[2, "ts"] = 20261112230000
    data.loc[4, "ts"] = "20261112230000"
    data.loc[6, "ts"] = 1e30
    data.loc[8, "ts"] = 20261112  # August 1970: a time (the warning says what it is)
    batch = window_model.score_batch(data)
    assert list(batch.rejects.index) == [2, 4, 6]
    digits = (
        "looks like a date written as digits, but a number is read as an epoch time, this one "
        "past the year 2262 that a time can be read in: write times as ISO 8601 (2026-11-12)"
    )
    assert batch.rejects.loc[2, "reason"] == f"window time column 'ts': 20261112230000 {digits}"
    assert batch.rejects.loc[4, "reason"] == f"window time column 'ts': '20261112230000' {digits}"
    assert batch.rejects.loc[6, "reason"] == (
        "window time column 'ts': 1e+30 is an epoch time past the year 2262 that a time can be "
        "read in"
    )


def test_precision_and_recall_against_labels_count_the_records_flagged_not_the_scores(
    window_model: AnomalyVAE, tmp_path: Path
) -> None:
    # 'score --label-column' with a windowed model: warming-up and late records are never
    # flagged, but precision and recall "at the threshold" counted every score above it, so
    # a summary read "0 flagged ... precision 0.281, recall 1.000 at the threshold". They
    # are those of the is_anomaly the scores file holds.
    from sklearn.metrics import precision_score, recall_score

    from anomaly_vae.jobs.batch import CsvScoreWriter, score_csv
    from anomaly_vae.sources.csv import CsvSource

    data = make_pump_data(400, seed=5, anomaly_rate=0.05)
    export = tmp_path / "export.csv"
    data.iloc[::-1].to_csv(export, index=False)  # newest first: most records late
    out = tmp_path / "scores.csv"
    summary = score_csv(
        window_model,
        CsvSource(export),
        sinks=[CsvScoreWriter(out)],
        passthrough=["label"],
        label_column="label",
    )
    scores = pd.read_csv(out)
    assert (scores["window_status"] == "late").sum() > 300
    late = scores["window_status"] == "late"
    assert (scores.loc[late, "score"] > summary.threshold).any()  # above it, yet not flagged
    truth, flagged = scores["label"].to_numpy(), scores["is_anomaly"].to_numpy()
    assert summary.metrics is not None
    assert summary.metrics["recall"] == pytest.approx(recall_score(truth, flagged))
    assert summary.metrics["precision"] == pytest.approx(
        precision_score(truth, flagged, zero_division=0.0)
    )


def test_only_dates_past_the_years_a_time_holds_are_called_out_of_range() -> None:
    # An ISO week date ('2026-W01') or ordinal date ('2026-001'), which Python reads and the
    # time reader does not, was "a date outside the years 1677 to 2262 that a time can be read
    # in" (the warning of 'score --db', a windowed model's reject reason).
    assert out_of_range_time("9999-12-31")
    assert out_of_range_time("1600-01-01T00:00:00Z")
    assert out_of_range_time("2262-04-12")
    assert not out_of_range_time("2026-W01")
    assert not out_of_range_time("2026-001")
    assert not out_of_range_time("yesterday")
