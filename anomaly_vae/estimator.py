"""``AnomalyVAE``: the scikit-learn-style face of the package.

Score direction, everywhere: **higher means more anomalous**. ``score`` is the negative ELBO in
nats (or the score kind chosen), ``decision_function`` is that score minus ``threshold_`` (positive
means anomalous) and ``predict`` returns 1 for anomalies and 0 for normal records.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ValidationError
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from anomaly_vae import errors
from anomaly_vae._version import __version__
from anomaly_vae.artifacts import WEIGHTS_FILE, load_artifact, save_artifact
from anomaly_vae.config import (
    ColumnsConfig,
    ModelConfig,
    PipelineConfig,
    ScoringConfig,
    TrainingConfig,
    WindowConfig,
    format_validation_error,
)
from anomaly_vae.errors import (
    ConfigError,
    InvalidRecordsError,
    ModelFileError,
    SchemaError,
)
from anomaly_vae.features import (
    EncodedBatch,
    FeatureLayout,
    FeatureSchema,
    Preprocessor,
    _short,
    row_json,
)
from anomaly_vae.labels import label_to_binary
from anomaly_vae.model import VAE, LikelihoodLayout
from anomaly_vae.scoring import (
    IMPUTE_ROUNDS,
    SCORE_KINDS,
    SCORE_REVISION,
    ScoreArrays,
    Scorer,
    contribution_shares,
    top_features_json,
    top_features_list,
    top_features_text,
)
from anomaly_vae.training import fit_vae, resolve_device, split_indices, torch_threads
from anomaly_vae.windows import (
    ENTITY_MAX_CHARS,
    OK,
    OUT_OF_RANGE_TIME,
    WindowState,
    contradicts_date_order,
    entity_problem,
    entity_text,
    event_seconds,
    far_epoch_reason,
    flatten_windows,
    numeric_date_order,
    out_of_range_time,
    window_layout,
)

logger = logging.getLogger(__name__)

CALIBRATION_POINTS = 10_001
MIN_TRAINING_ROWS = 10
# A flagged record's columns explained by leaving each out: those with the largest one-pass
# contributions (the one column that matters stands out there too, if not always first).
LOO_COLUMNS = 8

# Flat estimator parameters and the config field each one overrides.
_PARAM_FIELDS: dict[str, tuple[str, str]] = {
    "hidden_dims": ("model", "hidden_dims"),
    "latent_dim": ("model", "latent_dim"),
    "beta": ("model", "beta"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "learning_rate": ("training", "learning_rate"),
    "device": ("training", "device"),
    "seed": ("training", "seed"),
    "n_samples": ("scoring", "n_samples"),
    "score_kind": ("scoring", "score_kind"),
    "threshold_quantile": ("scoring", "threshold_quantile"),
}


class NotFittedError(errors.NotFittedError, SklearnNotFittedError):
    """``errors.NotFittedError`` that is scikit-learn's too: code written for any estimator
    (``except sklearn.exceptions.NotFittedError``, ``check_estimator``) catches it. Defined
    here, not in ``errors``, which must not import scikit-learn (the CLI's light commands)."""


@dataclass
class ScoreBatch:
    """What scoring a batch of records gives: scores for valid rows, reasons for the rest.

    ``contributions`` holds each feature column's share of the record's excess over its usual
    level (rows sum to 1, or 0 when nothing stands out); it is worked out from
    ``raw_contributions`` (nats per column) and ``baseline`` on first use, so a pipeline can
    leave that work to the thread that writes the results.
    ``scores`` is indexed like the input (valid rows only) with columns ``score``,
    ``recon_error``, ``kl``, ``nll_iw`` (when computed), ``percentile`` and ``is_anomaly``.
    ``rejects`` is indexed like the input (rejected rows only) with ``reason`` and ``raw``.
    """

    scores: pd.DataFrame
    rejects: pd.DataFrame
    raw_contributions: np.ndarray | None
    feature_names: list[str]
    baseline: np.ndarray | None = None
    # Scored records with at least one feature value missing (filled in by the scorer).
    gaps: int = 0
    # A windowed model's order of numeric dates (05/11/2026) its times were read in (True: day
    # first), None when none was needed: what the stored event times are read in too.
    day_first: bool | None = None

    @cached_property
    def contributions(self) -> np.ndarray | None:
        if self.raw_contributions is None:
            return None
        return contribution_shares(self.raw_contributions, self.baseline)

    def top_features_text(self, k: int, *, arrow: bool = False) -> Any:
        """Per record, ``col:share;...`` (numpy ``str``; ``arrow=True``: Arrow-backed)."""
        # No contributions: a zero-width matrix, which top_features_text turns into "" per row.
        contributions = self.contributions
        if contributions is None:
            empty = np.zeros((len(self.scores), 0), dtype=np.float32)
            return top_features_text(empty, [], k, arrow=arrow)
        return top_features_text(contributions, self.feature_names, k, arrow=arrow)

    def top_features_json(self, k: int) -> np.ndarray:
        """Per record, JSON text of the ``[column, share]`` pairs (for the database)."""
        if self.contributions is None:
            return np.full(len(self.scores), "[]", dtype=object)
        return top_features_json(self.contributions, self.feature_names, k)

    def top_features_list(self, k: int) -> list[list[tuple[str, float]]]:
        if self.contributions is None:
            return [[] for _ in range(len(self.scores))]
        return top_features_list(self.contributions, self.feature_names, k)


class AnomalyVAE(BaseEstimator):
    """A variational autoencoder anomaly detector for tabular records.

    Parameters left as ``None`` take their value from ``config`` (a ``PipelineConfig``, or a dict
    of its sections: ``{"model": {"latent_dim": 4}}``), else the built-in default. ``columns`` (a
    ``ColumnsConfig`` or a dict of its fields) says which columns are ids, timestamps, labels,
    ignored, or forced numeric/categorical.

    Fitted attributes end in ``_``: ``schema_``, ``preprocessor_``, ``model_``, ``threshold_``,
    ``calibration_`` (sorted held-out normal scores), ``config_``, ``training_summary_``,
    ``n_features_in_`` (the columns of an array X, every one read by position; the feature
    columns of a DataFrame), ``feature_names_in_`` (the feature columns the model reads; an
    array's are ``x0``, ``x1``...), ``model_hash_`` (after save or load).
    """

    def __init__(
        self,
        *,
        hidden_dims: list[int] | tuple[int, ...] | None = None,
        latent_dim: int | None = None,
        beta: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        n_samples: int | None = None,
        score_kind: str | None = None,
        threshold_quantile: float | None = None,
        columns: ColumnsConfig | dict[str, Any] | None = None,
        device: str | None = None,
        seed: int | None = None,
        verbose: bool = False,
        config: PipelineConfig | dict[str, Any] | None = None,
    ) -> None:
        self.hidden_dims = hidden_dims
        self.latent_dim = latent_dim
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.n_samples = n_samples
        self.score_kind = score_kind
        self.threshold_quantile = threshold_quantile
        self.columns = columns
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.config = config

    # ================================================================ configuration
    def _config(self) -> PipelineConfig | None:
        """The ``config`` parameter as a PipelineConfig (a dict is validated as one)."""
        config = self.config
        if config is None or isinstance(config, PipelineConfig):
            return config
        if isinstance(config, dict):
            try:
                return PipelineConfig.model_validate(config)
            except ValidationError as exc:
                raise ConfigError(
                    f"The 'config' parameter: {format_validation_error(exc)}"
                ) from None
        # 'dict' object has no attribute 'model_copy' was all a dict got.
        raise ConfigError(
            "The 'config' parameter must be a PipelineConfig or a dict of its sections "
            f"(PipelineConfig.from_yaml(path) reads a pipeline file). Got {type(config).__name__} "
            "instead."
        )

    def _resolve_config(self) -> PipelineConfig:
        config = self._config()
        base = config.model_copy(deep=True) if config is not None else PipelineConfig()
        sections: dict[str, dict[str, Any]] = {
            "model": base.model.model_dump(),
            "training": base.training.model_dump(),
            "scoring": base.scoring.model_dump(),
        }
        for param, (section, field_name) in _PARAM_FIELDS.items():
            value = getattr(self, param)
            if value is not None:
                listed = param == "hidden_dims" and isinstance(value, (list, tuple, np.ndarray))
                # Anything else (hidden_dims=64) is pydantic's to refuse, naming the parameter.
                sections[section][field_name] = list(value) if listed else value
        sections["training"]["progress"] = bool(self.verbose)
        classes: dict[str, type[BaseModel]] = {
            "model": ModelConfig,
            "training": TrainingConfig,
            "scoring": ScoringConfig,
        }
        built: dict[str, Any] = {}
        for section, cls in classes.items():
            try:
                built[section] = cls.model_validate(sections[section])
            except ValidationError as exc:
                raise ConfigError(_param_message(exc, section)) from None
        columns = base.columns
        if self.columns is not None:
            try:
                # A copy: the pipeline's rules fill in columns.entity / timestamp from its
                # window, which changed the caller's object (a parameter fit must not touch,
                # and one that another model given it then read too).
                columns = (
                    self.columns.model_copy(deep=True)
                    if isinstance(self.columns, ColumnsConfig)
                    else ColumnsConfig.model_validate(self.columns)
                )
            except ValidationError as exc:
                raise ConfigError(
                    f"The 'columns' parameter: {format_validation_error(exc)}"
                ) from None
        extra = base.model_dump(exclude={"model", "training", "scoring", "columns"})
        try:
            resolved = PipelineConfig(columns=columns, **built, **extra)
        except ValidationError as exc:
            # A rule across sections (window.entity against columns.entity, a conv encoder
            # without a window) was pydantic's multi-line error.
            raise ConfigError(
                f"The parameters do not fit together: {format_validation_error(exc)}"
            ) from None
        if resolved.scoring.score_kind == "nll_iw":
            resolved.scoring.importance_weighted = True
        return resolved

    # ======================================================================= fitting
    def fit(self, X: pd.DataFrame | np.ndarray, y: Any = None) -> AnomalyVAE:
        """Learn the schema, scaling and VAE from normal records; return ``self``.

        Rows whose label (``columns.label`` in ``X``, or ``y``) marks them anomalous are left
        out of training. Rows with unparseable values are left out with a warning.
        """
        cfg = self._resolve_config()
        device = resolve_device(cfg.training.device)
        # Training seeds torch's global generator (training.seed): without the fork, every fit
        # left it in the same state, so the caller's own torch.rand / randn after each fit
        # drew the same numbers every time, and a sequence they had seeded was replaced.
        cuda: list[int] = []
        if device.type == "cuda":
            cuda = [device.index if device.index is not None else torch.cuda.current_device()]
        # One torch thread unless configured: the network is small, so more threads gain
        # little, and they lose badly (10x seen) when other work shares the cores.
        with torch.random.fork_rng(devices=cuda), torch_threads(cfg.training.num_threads or 1):
            return self._fit(cfg, X, y)

    def _fit(self, cfg: PipelineConfig, X: pd.DataFrame | np.ndarray, y: Any) -> AnomalyVAE:
        # A pyarrow table fitted as the DataFrame it is (its columns read by name at scoring,
        # not as an array's by position).
        X = _named_columns_as_frame(X)
        unread = set(cfg.columns.non_features())
        if cfg.columns.features is not None and isinstance(X, pd.DataFrame):
            unread |= {str(c) for c in X.columns} - set(cfg.columns.features)
        given = _as_frame(X, unread=unread)
        window = cfg.window
        _refuse_columns_in_index(
            given,
            [
                *(cfg.columns.features or []),
                *cfg.columns.numeric,
                *cfg.columns.categorical,
                cfg.columns.label,
                window.time if window else None,
                window.entity if window else None,
            ],
            source="training data",
        )
        rows = len(given)
        anomalous = self._labelled_anomalies(given, y, cfg.columns)
        frame = given.loc[~anomalous]
        n_labelled = rows - len(frame)
        if len(frame) < MIN_TRAINING_ROWS:  # before the columns are judged on no rows at all
            labelled = f" ({n_labelled} labelled anomalous left out)" if n_labelled else ""
            raise SchemaError(
                f"training data has {_rows(len(frame))}{labelled}; a model needs at least "
                f"{MIN_TRAINING_ROWS} rows of normal data"
            )
        schema = FeatureSchema.infer(frame, cfg.columns)
        clean, rejects = schema.validate(frame, source="training data")
        if len(rejects):
            first = rejects.iloc[0]
            logger.warning(
                "%s left out of training (first: row %s: %s)",
                _rows(len(rejects)),
                rejects.index[0],
                first["reason"],
            )
        if len(clean) < MIN_TRAINING_ROWS:
            raise SchemaError(
                f"training data has {len(clean)} valid row{'' if len(clean) == 1 else 's'}; "
                "a model needs at least "
                f"{MIN_TRAINING_ROWS} rows of normal data"
            )
        device = resolve_device(cfg.training.device)
        pre = Preprocessor.fit(clean, schema, max_categories=cfg.columns.max_categories)
        encoded = pre.transform(clean)
        layout = pre.layout
        n_examples = len(clean)
        unwindowed = 0  # rows with no valid event time or no entity (a windowed model's)
        if cfg.window is not None:
            _decide_date_order(frame.loc[clean.index], cfg)
            left_out = _Labelled(
                rows=given.iloc[np.flatnonzero(anomalous)],
                positions=np.flatnonzero(anomalous),
                kept_positions=np.flatnonzero(~anomalous),
            )
            encoded, layout, unwindowed, keys = self._training_windows(
                frame, clean, encoded, pre, cfg, left_out
            )
            n_examples = encoded.x.shape[0]
            # Windows overlap: hold out the latest ones, not a random sample of them; the
            # latest of each entity, not the file's last rows (one entity's in a file sorted
            # by entity, the slowest sampled one's in a file sorted by time).
            train_idx, val_idx = latest_per_entity(*keys, fraction=cfg.training.validation_fraction)
        else:
            train_idx, val_idx = split_indices(
                n_examples, cfg.training.validation_fraction, cfg.training.seed
            )
        train = EncodedBatch(encoded.x[train_idx], encoded.observed[train_idx])
        val = EncodedBatch(encoded.x[val_idx], encoded.observed[val_idx])
        latent = cfg.model.latent_dim or default_latent_dim(layout.n_blocks)
        torch.manual_seed(cfg.training.seed)
        model = VAE(
            n_numeric=layout.n_numeric,
            cat_sizes=layout.cat_sizes,
            hidden_dims=cfg.model.hidden_dims,
            latent_dim=latent,
            dropout=cfg.model.dropout,
            min_log_var=cfg.model.min_log_var,
            encoder=cfg.model.encoder,
            window_steps=1 if cfg.window is None else cfg.window.size,
            conv_channels=cfg.model.conv_channels,
            conv_kernel=cfg.model.conv_kernel,
        )
        result = fit_vae(
            model,
            train,
            val,
            LikelihoodLayout(layout.n_numeric, tuple(layout.cat_sizes)),
            cfg=cfg.training,
            beta=cfg.model.beta,
            device=device,
        )
        self.config_ = cfg
        self.score_kind_: str = cfg.scoring.score_kind
        self.schema_ = schema
        self.preprocessor_ = pre
        self.model_ = model
        self.latent_dim_ = latent
        self.device_ = device
        # An array's width (its columns are read by position, a column left out too), a
        # DataFrame's feature columns (read by name).
        self.n_features_in_ = len(schema.names) if isinstance(X, pd.DataFrame) else frame.shape[1]
        self.feature_names_in_ = np.asarray(schema.names, dtype=object)
        self._scorers: dict[tuple[Any, ...], Scorer] = {}
        self.score_revision_ = SCORE_REVISION
        calib_batch = val if len(val_idx) else train
        arrays = self._scorer().score(calib_batch)
        calibration = np.sort(arrays.primary(self.score_kind_))
        self._set_calibration(calibration, cfg.scoring.threshold_quantile)
        needed = math.ceil(1.0 / (1.0 - cfg.scoring.threshold_quantile))
        if len(calibration) < needed:
            # The 0.995 quantile of 2 scores is their maximum: a guess, not a calibration.
            logger.warning(
                "the threshold is the %g quantile of only %d held-out normal rows (%d or more "
                "are needed to estimate it): the share of normal records it flags may be far "
                "from %.3g%%; train on more normal data, or lower scoring.threshold_quantile",
                cfg.scoring.threshold_quantile,
                len(calibration),
                needed,
                100 * (1 - cfg.scoring.threshold_quantile),
            )
        self.feature_baseline_ = (
            np.median(arrays.contributions, axis=0).astype(np.float64)
            if arrays.contributions is not None and len(arrays.contributions)
            else np.zeros(len(schema.names))
        )
        self.training_summary_: dict[str, Any] = {
            "rows": len(frame),
            # Columns of an array given as X (None for a DataFrame): an array of another width
            # is refused when scoring, not read by position as other columns.
            "array_columns": None if isinstance(X, pd.DataFrame) else frame.shape[1],
            "rows_labelled_anomalous": n_labelled,
            "rows_rejected": len(rejects) + unwindowed,
            "rows_train": len(train_idx),
            "windows": n_examples if cfg.window is not None else None,
            "rows_validation": len(val_idx),
            "data_sha256": _frame_hash(clean),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "batch_size": result.batch_size,
            "seconds": round(result.seconds, 3),
            "device": result.device,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.model_hash_: str | None = None
        return self

    def _labelled_anomalies(
        self, frame: pd.DataFrame, y: Any, columns: ColumnsConfig
    ) -> np.ndarray:
        """Which rows of ``frame`` are labelled anomalous (``y``, or ``columns.label``)."""
        labels = None
        if y is not None:
            values = np.asarray(y)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]  # a column vector, or a one-column DataFrame, as sklearn
            if values.ndim == 0:
                # fit(df, "label"): the label column's name where its values go ("got shape ()").
                hint = (
                    f": to name X's label column, pass columns={{'label': {y!r}}} to AnomalyVAE "
                    f"(or y=X[{y!r}])"
                    if isinstance(y, str)
                    else ""
                )
                raise ConfigError(
                    f"y must be one label per row (a 1-D array, a list or a Series); got the "
                    f"single value {_short(y)}{hint}"
                )
            if values.ndim != 1:
                raise ConfigError(
                    f"y must be one label per row (a 1-D array, a list or a Series); got shape "
                    f"{values.shape}"
                )
            labels = label_to_binary(pd.Series(values), name="y")
            if len(labels) != len(frame):
                raise ConfigError(f"y has {len(labels)} values but X has {len(frame)} rows")
            labels.index = frame.index
        elif columns.label and columns.label in frame.columns:
            labels = label_to_binary(frame[columns.label], name=columns.label)
        elif columns.label:
            # A misspelt label column trains on the labelled anomalies without a word (the
            # --label-column flag is checked by the CLI; a pipeline's may be for exports only).
            import difflib

            close = difflib.get_close_matches(columns.label, [str(c) for c in frame.columns], 1)
            logger.warning(
                "the label column %r (columns.label) is not in the training data: no rows are "
                "left out as labelled anomalies%s",
                columns.label,
                f"; did you mean {close[0]!r}?" if close else "",
            )
        if labels is None:
            return np.zeros(len(frame), dtype=bool)
        anomalous = np.asarray(labels.fillna(0).to_numpy() == 1, dtype=bool)
        if anomalous.any():
            logger.info("left %d labelled anomalies out of training", int(anomalous.sum()))
        return anomalous

    def _training_windows(
        self,
        frame: pd.DataFrame,
        clean: pd.DataFrame,
        encoded: EncodedBatch,
        pre: Preprocessor,
        cfg: PipelineConfig,
        labelled: _Labelled,
    ) -> tuple[EncodedBatch, FeatureLayout, int, tuple[np.ndarray, np.ndarray]]:
        """Full windows of the training rows (file order, per entity, the scoring rules), how
        many rows were left out for want of a valid event time or an entity, and each window's
        entity and time (arrival position when the window has no time column). No window
        spans a labelled anomaly left out of training: the entity's window starts again after
        it."""
        assert cfg.window is not None
        entities, times, reasons = _window_keys(frame.loc[clean.index], cfg)
        if frame.index.is_unique:
            positions = labelled.kept_positions[frame.index.get_indexer(clean.index)]
        else:  # rows found by label, as above: their order is the file's
            positions = labelled.kept_positions[: len(clean)]
        bad = reasons != None  # noqa: E711 - elementwise on an object array
        if bad.any():
            logger.warning(
                "%d training rows have no valid event time or no entity: left out (first: "
                "row %s: %s)",
                int(bad.sum()),
                clean.index[np.flatnonzero(bad)[0]],
                reasons[bad][0],
            )
            keep = ~bad
            encoded = EncodedBatch(encoded.x[keep], encoded.observed[keep])
            entities = entities[keep]
            times = None if times is None else times[keep]
            positions = positions[keep]
        series = entities
        if len(labelled.rows):
            # Each stretch of an entity between labelled anomalies is a series of its own.
            marks_entities, marks_times, marks_bad = _window_keys(labelled.rows, cfg)
            ok = marks_bad == None  # noqa: E711 - elementwise on an object array
            before = _labelled_before(
                entities,
                positions.astype(np.float64) if times is None else times,
                positions,
                marks_entities[ok],
                (labelled.positions.astype(np.float64) if marks_times is None else marks_times)[ok],
                labelled.positions[ok],
            )
            series = np.asarray(
                [f"{e}\x00{k}" if k else e for e, k in zip(entities, before, strict=True)],
                dtype=object,
            )
        layout = pre.layout
        state = WindowState(cfg.window.spec(), width=layout.input_dim, n_numeric=layout.n_numeric)
        assembled = state.assemble(encoded, series.tolist(), times)
        full = assembled.status == OK
        if int(full.sum()) < MIN_TRAINING_ROWS:
            # Say what cut the windows short: rows with no time or entity, too few rows, gaps,
            # or a file out of time order.
            counts = state.counters
            why = []
            if bad.any():
                why.append(
                    f"{int(bad.sum())} of {len(bad)} rows have no valid event time or no entity "
                    f"(first: row {clean.index[np.flatnonzero(bad)[0]]}: {reasons[bad][0]})"
                )
            if counts.gaps:
                why.append(
                    f"{counts.gaps} gaps over window.max_gap_s ({cfg.window.max_gap_s:g} s) "
                    "restarted a window"
                )
            if counts.late:
                why.append(
                    f"{counts.late} rows were more than window.lateness_s "
                    f"({cfg.window.lateness_s:g} s) behind their entity's newest (is the file "
                    "in time order?)"
                )
            raise SchemaError(
                f"training data gives {int(full.sum())} full windows of {cfg.window.size} "
                f"records; a windowed model needs at least {MIN_TRAINING_ROWS}: give it more "
                "rows per entity or a smaller window.size" + (f" ({'; '.join(why)})" if why else "")
            )
        if state.counters.late:
            # Late rows train nothing; a file out of time order would lose them without a word.
            logger.warning(
                "%d of %d training rows were more than window.lateness_s (%g s) behind their "
                "entity's newest and are left out: is the file in time order per entity?",
                state.counters.late,
                len(entities),
                cfg.window.lateness_s,
            )
        flat = flatten_windows(assembled.x[full], assembled.observed[full], layout.n_numeric)
        when = np.arange(len(entities), dtype=np.float64) if times is None else times
        keys = (np.asarray(entities, dtype=object)[full], np.asarray(when)[full])
        return flat, window_layout(layout, cfg.window.size), int(bad.sum()), keys

    @property
    def windowed(self) -> bool:
        """True when records are scored with a window of their entity's previous records."""
        self._check_fitted()
        return self.config_.window is not None

    def check_columns(self, present: Any, *, source: str = "input") -> None:
        """Raise SchemaError when a column the model reads is not in ``present`` (a header):
        a feature column, or a windowed model's time or entity column."""
        self._check_fitted()
        self.schema_.check_columns(present, source=source)
        window = self.config_.window
        if window is None:
            return
        have = {str(c) for c in present}
        for what, name in (("time", window.time), ("entity", window.entity)):
            if name and name not in have:
                # A model scores with the window it was trained with: a scoring pipeline
                # without window.{what} changes nothing, so say what does.
                raise SchemaError(
                    f"{source}: the window's {what} column {name!r} is missing: add it (the "
                    f"model was trained with window.{what}: {name}; a model without it needs "
                    "training again)"
                )

    def new_window_state(self) -> WindowState | None:
        """An empty per-entity window state for this model (None for a row-wise model): carry
        it from one ``score_batch`` call to the next to score a series in pieces."""
        self._check_fitted()
        window = self.config_.window
        if window is None:
            return None
        layout = self.preprocessor_.layout
        return WindowState(window.spec(), width=layout.input_dim, n_numeric=layout.n_numeric)

    def _layout(self) -> FeatureLayout:
        layout = self.preprocessor_.layout
        window = self.config_.window
        return layout if window is None else window_layout(layout, window.size)

    def _set_calibration(self, sorted_scores: np.ndarray, quantile: float) -> None:
        finite = sorted_scores[np.isfinite(sorted_scores)]
        if len(finite) == 0:
            raise SchemaError("calibration failed: no finite scores on held-out data")
        self.threshold_ = float(_sorted_quantiles(finite, np.asarray([quantile]))[0])
        if len(finite) > CALIBRATION_POINTS:
            finite = _sorted_quantiles(finite, np.linspace(0.0, 1.0, CALIBRATION_POINTS))
        self.calibration_ = finite.astype(np.float64)
        self.threshold_quantile_ = float(quantile)

    # ======================================================================= scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            # "or AnomalyVAE.load()" read as if model.load(path) filled this model; it returns
            # a new one, and model.load(path) alone left the model it was called on unfitted.
            raise NotFittedError(
                "this AnomalyVAE is not fitted: call fit(X), or load a fitted one with "
                "model = load_model(path) (load returns a new model, it does not fill this one)"
            )

    def _scorer(self, *, mode: str = "full", importance_weighted: bool | None = None) -> Scorer:
        cfg = self.config_.scoring
        iw = cfg.importance_weighted if importance_weighted is None else importance_weighted
        key = (mode, iw, cfg.n_samples, str(self.device_), cfg.batch_size)
        scorer = self._scorers.get(key)
        if scorer is None:
            self.model_.to(self.device_)
            scorer = Scorer(
                self.model_,
                self._layout(),
                n_samples=cfg.n_samples,
                seed=self.config_.training.seed,
                device=self.device_,
                batch_size=cfg.batch_size,
                importance_weighted=iw,
                contributions=mode == "full" and cfg.top_features > 0,
                mode="recon" if mode == "recon" else "full",
                mixed_precision=self.config_.training.mixed_precision,
                indicators_in_recon_error=self.score_revision_ < 2,
            )
            self._scorers[key] = scorer
        return scorer

    def _array_columns(self) -> int | None:
        """How many columns the array this model was fitted on had (None: a DataFrame, or a
        model file from before this was recorded)."""
        width = self.training_summary_.get("array_columns")
        return int(width) if isinstance(width, int) else None

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Where each score falls among held-out normal scores, 0 to 100. A score equal to
        some of them is placed in the middle of those (a model trained on constant data has
        them all equal, and a normal record was at 100)."""
        self._check_fitted()
        calibration = self.calibration_
        given = np.asarray(scores)
        flat = given.reshape(-1)
        below = np.searchsorted(calibration, flat, side="left")
        upto = below.copy()
        # Equal to a held-out score (rare but for constant data): only those need the second
        # search, for where the equal ones end.
        if len(calibration):
            inside = np.minimum(below, len(calibration) - 1)
            if len(tied := np.flatnonzero(calibration[inside] == flat)):
                upto[tied] = np.searchsorted(calibration, flat[tied], side="right")
        return (50.0 * (below + upto) / len(calibration)).reshape(given.shape)[()]

    def score_batch(
        self,
        X: pd.DataFrame | np.ndarray,
        *,
        threshold: float | None = None,
        source: str = "input",
        windows: WindowState | None = None,
        entity_column: str | None = None,
    ) -> ScoreBatch:
        """Validate and score records; invalid rows come back in ``rejects``, not as errors.

        ``entity_column``: the column of ``X`` that holds each record's entity in place of the
        pipeline's entity column (the stream scorer's ``_entity``, from a field or the message
        key). Without it, a column of that name in the input is one more column, unread.

        A windowed model (``window`` in the pipeline) scores each record with its entity's
        previous records from ``windows`` (``new_window_state()``; records in arrival order,
        the state moves past them) or, when None, from this call's records alone. Its scores
        have a ``window_status`` column (``ok``, ``warming_up``, ``late``, ``replayed``); only
        ``ok`` records can be flagged.

        Raises ``SchemaError`` when a feature column is missing altogether.
        """
        self._check_fitted()
        if threshold is not None:
            try:
                limit = float(threshold)
            except (TypeError, ValueError):
                limit = math.nan
            if not math.isfinite(limit):
                # NaN compared as never crossed: every record normal, without a word.
                raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
        frame = _as_frame(X, expected=list(self.feature_names_in_), width=self._array_columns())
        window = self.config_.window
        _refuse_columns_in_index(
            frame,
            [*self.schema_.names, *((window.time, window.entity) if window else ())],
            source=source,
        )
        if window is not None and entity_column is None:
            # The model's own message for a window column missing ("the model was trained
            # with window.time: ts"), not the one for a pipeline at training time ("remove
            # window.time from the pipeline", which changes nothing at scoring).
            self.check_columns(frame.columns, source=source)
        if window is not None and not frame.index.is_unique:
            # Rows of pd.concat(...) without ignore_index: scored by position, their labels
            # given back (fit takes such a frame; scoring it was "a windowed model scores
            # frames with a unique index", with no word of what to do).
            labels = frame.index
            batch = self.score_batch(
                frame.reset_index(drop=True),
                threshold=threshold,
                source=source,
                windows=windows,
                entity_column=entity_column,
            )
            batch.scores.index = labels.take(batch.scores.index.to_numpy(dtype=np.int64))
            batch.rejects.index = labels.take(batch.rejects.index.to_numpy(dtype=np.int64))
            return batch
        clean, rejects = self.schema_.validate(frame, source=source)
        clean, rejects = self._reject_bad_entities(frame, clean, rejects, entity_column)
        if window is not None:
            return self._score_windows(frame, clean, rejects, threshold, windows, entity_column)
        encoded = self.preprocessor_.transform(clean)
        arrays = self._scorer().score(encoded)
        scores = self._score_frame(arrays, clean.index, threshold)
        self._explain_flagged(arrays, scores, encoded)
        return self._batch(arrays, scores, rejects, gaps=self._gaps(clean, encoded))

    def _gaps(self, clean: pd.DataFrame, encoded: EncodedBatch) -> int:
        """How many of the records in ``clean`` miss a feature value."""
        if not len(clean):
            return 0
        categorical = self.schema_.categorical
        if not categorical and (not encoded.observed.size or encoded.observed.min() > 0):
            return 0  # the usual case, without a row-wise pass
        missing = (encoded.observed == 0).any(axis=1)
        for name in categorical:
            missing |= clean[name].isna().to_numpy()
        return int(missing.sum())

    def _reject_bad_entities(
        self,
        frame: pd.DataFrame,
        clean: pd.DataFrame,
        rejects: pd.DataFrame,
        entity_column: str | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Records whose entity key cannot be stored (``entity_problem``: too long, a NUL
        character) join the rejects, so that one such record never fails a database write.
        The entity is ``entity_column`` (a stream source's) or the pipeline's entity column."""
        column = entity_column or self.config_.columns.entity
        if not column or column not in frame.columns or not len(clean):
            return clean, rejects
        series = frame[column]
        if series.dtype != object and not isinstance(series.dtype, pd.StringDtype):
            return clean, rejects  # numbers: always short, never a NUL
        values = series.loc[clean.index].tolist()
        texts = [v for v in values if isinstance(v, str)]
        if max(map(len, texts), default=0) <= ENTITY_MAX_CHARS and "\x00" not in "".join(texts):
            return clean, rejects  # the usual case, without a call per record
        reasons = [entity_problem(v) if isinstance(v, str) else None for v in values]
        bad = np.asarray([r is not None for r in reasons], dtype=bool)
        if not bad.any():
            return clean, rejects
        extra = _rejects_of(frame.loc[clean.index[bad]], [r for r in reasons if r is not None])
        rejects = pd.concat([rejects, extra]).sort_index() if len(rejects) else extra
        return clean.loc[~bad], rejects

    def _score_windows(
        self,
        frame: pd.DataFrame,
        clean: pd.DataFrame,
        rejects: pd.DataFrame,
        threshold: float | None,
        windows: WindowState | None,
        entity_column: str | None = None,
    ) -> ScoreBatch:
        """``score_batch`` for a windowed model: records without an event time are rejected,
        the others get their window from ``windows`` and are scored by the one ``Scorer``."""
        cfg = self.config_
        assert cfg.window is not None
        if not frame.index.is_unique:
            raise ConfigError("a windowed model scores frames with a unique index")
        state = windows if windows is not None else self.new_window_state()
        assert state is not None
        rows = frame.loc[clean.index]
        day_first = _run_date_order(rows, cfg, state)
        entities, times, reasons = _window_keys(
            rows, cfg, entity_column=entity_column, day_first=day_first
        )
        bad = reasons != None  # noqa: E711 - elementwise on an object array
        if bad.any():
            extra = _rejects_of(rows.iloc[np.flatnonzero(bad)], reasons[bad].tolist())
            rejects = pd.concat([rejects, extra]) if len(rejects) else extra
            keep = ~bad
            clean, rows, entities = clean.iloc[keep], rows.iloc[keep], entities[keep]
            times = None if times is None else times[keep]
        streams, seqs = _stream_positions(rows)
        encoded = self.preprocessor_.transform(clean)
        layout = self.preprocessor_.layout
        assembled = state.assemble(encoded, entities.tolist(), times, streams=streams, seqs=seqs)
        flat = flatten_windows(assembled.x, assembled.observed, layout.n_numeric)
        arrays = self._scorer().score(flat)
        scores = self._score_frame(arrays, clean.index, threshold)
        scores["window_status"] = assembled.status_names()
        scores.loc[assembled.status != OK, "is_anomaly"] = np.int8(0)
        if windows is None:
            _warn_if_out_of_order(scores["window_status"], cfg.window, entity_column)
        self._explain_flagged(arrays, scores, flat)
        batch = self._batch(arrays, scores, rejects, gaps=self._gaps(clean, encoded))
        batch.day_first = day_first
        return batch

    def _explain_flagged(
        self, arrays: ScoreArrays, scores: pd.DataFrame, encoded: EncodedBatch
    ) -> None:
        """Flagged records get their leading columns' contributions by leaving each column out
        (``Scorer.leave_one_out``): the ``LOO_COLUMNS`` columns with the largest one-pass
        contributions, or every column when there are few, up to 1 + ``IMPUTE_ROUNDS``
        network passes each. At most half the batch's own model work (and at least 1,024
        records) is spent so; past that, the highest scores first, and the others keep the
        one-pass split.
        """
        contributions = arrays.contributions
        if contributions is None or not len(scores):
            return
        flagged = np.flatnonzero(scores["is_anomaly"].to_numpy() == 1)
        if not len(flagged):
            return
        width = contributions.shape[1]
        tried = min(width, LOO_COLUMNS)
        # A column tried costs up to 1 + IMPUTE_ROUNDS network passes (a numeric column left
        # out is a gap, filled in as one): counted as one, a batch with many records flagged
        # (drift, a new threshold) took three times its own model work again, in the stream
        # scorer just when it was needed to keep up.
        budget = max(1024, len(scores) // (2 * tried * (1 + IMPUTE_ROUNDS)))
        if len(flagged) > budget:
            primary = scores["score"].to_numpy()[flagged]
            flagged = np.sort(flagged[np.argsort(-primary, kind="stable")[:budget]])
        one_pass = contributions[flagged]
        if tried < width:  # the columns that already stand out, largest first
            columns = np.argpartition(-one_pass, tried - 1, axis=1)[:, :tried]
        else:
            columns = np.broadcast_to(np.arange(width), one_pass.shape)
        subset = EncodedBatch(x=encoded.x[flagged], observed=encoded.observed[flagged])
        loo = self._scorer().leave_one_out(subset, np.ascontiguousarray(columns))
        np.put_along_axis(one_pass, columns, loo, axis=1)
        contributions[flagged] = one_pass

    def _batch(
        self, arrays: ScoreArrays, scores: pd.DataFrame, rejects: pd.DataFrame, *, gaps: int
    ) -> ScoreBatch:
        return ScoreBatch(
            scores=scores,
            rejects=rejects,
            raw_contributions=arrays.contributions,
            feature_names=list(self.schema_.names),
            baseline=self.feature_baseline_,
            gaps=gaps,
        )

    def _score_frame(
        self, arrays: ScoreArrays, index: pd.Index, threshold: float | None
    ) -> pd.DataFrame:
        primary = arrays.primary(self.score_kind_)
        limit = self.threshold_ if threshold is None else float(threshold)
        data: dict[str, Any] = {
            "score": primary,
            "recon_error": arrays.recon_error,
            "kl": arrays.kl,
        }
        if arrays.nll_iw is not None:
            data["nll_iw"] = arrays.nll_iw
        data["percentile"] = self.percentile(primary)
        data["is_anomaly"] = (primary > limit).astype(np.int8)
        return pd.DataFrame(data, index=index)

    def score(self, X: pd.DataFrame | np.ndarray, y: Any = None) -> pd.DataFrame:
        """Score every row; a frame indexed like ``X`` with ``score`` (higher = more anomalous),
        ``recon_error``, ``kl``, ``percentile``, ``is_anomaly`` and ``top_features``.

        Raises ``InvalidRecordsError`` (with ``.rejects``) if any row cannot be scored.
        ``y`` is refused: scikit-learn calls ``score(X, y)`` for a metric when no ``scoring``
        is given (``cross_val_score``, ``GridSearchCV``), and per-row scores are none.
        """
        if y is not None:
            raise ConfigError(
                "AnomalyVAE.score(X) gives per-row anomaly scores, not a metric, and takes no "
                "labels: give scikit-learn a scoring (cross_val_score(..., scoring='roc_auc'), "
                "GridSearchCV(..., scoring='average_precision')); it reads decision_function"
            )
        batch = self._every_row(X)
        out = batch.scores.copy()
        out["top_features"] = batch.top_features_text(self.config_.scoring.top_features)
        return out

    def _every_row(self, X: pd.DataFrame | np.ndarray) -> ScoreBatch:
        """``score_batch(X)``, or ``InvalidRecordsError`` if any row cannot be scored."""
        batch = self.score_batch(X)
        if len(batch.rejects):
            first_row = batch.rejects.index[0]
            reason = batch.rejects.iloc[0]["reason"]
            # "1 rows cannot be scored (first: ...); fix them" for the one bad row.
            one = len(batch.rejects) == 1
            raise InvalidRecordsError(
                (
                    f"1 row cannot be scored (row {first_row}: {reason}); fix it, or call "
                    "score_batch() to get the others scored and the reject listed"
                    if one
                    else f"{len(batch.rejects)} rows cannot be scored (first: row {first_row}: "
                    f"{reason}); fix them, or call score_batch() to get the others scored and "
                    "the rejects listed"
                ),
                rejects=batch.rejects,
            )
        if len(batch.scores) > 1:
            self._warn_empty_features(X)
        return batch

    def _warn_empty_features(self, X: pd.DataFrame | np.ndarray) -> None:
        """A warning naming feature columns with no value in any row of X: every record was
        scored with the value filled in, as ``score`` CSV jobs say in their summary (a join
        that lost a sensor's column gave plausible scores in Python without a word)."""
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f":
            # Not through _as_frame: a DataFrame of a large array may be a copy of it.
            names = [n for n in _array_names(X.shape[1]) if n in set(self.schema_.names)]
            columns = [int(n[1:]) for n in names]
            if len(self.schema_.names) == X.shape[1]:
                names, columns = list(self.schema_.names), list(range(X.shape[1]))
            blank = np.isnan(X).all(axis=0)  # a boolean per value, not a copy of X
            empty = [n for n, c in zip(names, columns, strict=True) if blank[c]]
        elif isinstance(X, pd.DataFrame):
            frame = _as_frame(X, expected=list(self.feature_names_in_), width=self._array_columns())
            empty = [n for n in self.schema_.names if frame[n].isna().all()]
        else:
            return
        if empty:
            many = len(empty) > 1
            logger.warning(
                "feature column%s %s had no value in any of the %d rows: the records were "
                "scored without %s (as missing values); is the input complete?",
                "s" if many else "",
                ", ".join(repr(n) for n in empty[:10]) + (", ..." if len(empty) > 10 else ""),
                len(X),
                "them" if many else "it",
            )

    def anomaly_score(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The score of each row as an array; higher means more anomalous (no top-features
        text is built: ``predict`` and ``decision_function`` need only the score)."""
        return np.asarray(self._every_row(X).scores["score"].to_numpy())

    def decision_function(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """``score - threshold_``: positive means anomalous (a windowed model's records that
        are not ``ok``, never flagged, have theirs too: ``predict`` gives them 0)."""
        return self.anomaly_score(X) - self.threshold_

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """1 for anomalous rows (score above ``threshold_``), 0 for normal ones: ``score(X)``'s
        ``is_anomaly``, so a windowed model's ``warming_up`` and ``late`` records are 0."""
        return self._every_row(X).scores["is_anomaly"].to_numpy().astype(np.int64)

    def fit_predict(self, X: pd.DataFrame | np.ndarray, y: Any = None) -> np.ndarray:
        """``fit(X)`` then ``predict(X)``: 1 for the training rows above the threshold."""
        return self.fit(X, y).predict(X)

    def score_samples(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """scikit-learn's outlier-detector convention (``IsolationForest``, ``OneClassSVM``):
        higher means more normal, so this is ``-anomaly_score(X)``."""
        return -self.anomaly_score(X)

    def score_arrays(
        self, X: pd.DataFrame | np.ndarray, *, mode: str = "full", importance_weighted: bool = False
    ) -> ScoreArrays:
        """Raw per-record terms for valid input (benchmarks, research); rows must all be valid."""
        self._check_fitted()
        frame = _as_frame(X, expected=list(self.feature_names_in_), width=self._array_columns())
        clean, rejects = self.schema_.validate(frame)
        if len(rejects):
            raise InvalidRecordsError(
                f"{_rows(len(rejects))} cannot be scored (first: row {rejects.index[0]}: "
                f"{rejects.iloc[0]['reason']})",
                rejects=rejects,
            )
        encoded = self.preprocessor_.transform(clean)
        state = self.new_window_state()
        if state is not None:
            entities, times, _reasons = _window_keys(frame.loc[clean.index], self.config_)
            assembled = state.assemble(encoded, entities.tolist(), times)
            encoded = flatten_windows(
                assembled.x, assembled.observed, self.preprocessor_.layout.n_numeric
            )
        return self._scorer(mode=mode, importance_weighted=importance_weighted).score(encoded)

    # =================================================================== persistence
    def save(self, path: str | Path) -> str:
        """Write the model directory; returns the model's content hash."""
        self._check_fitted()
        metadata = {
            "package_version": __version__,
            "torch_version": torch.__version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": self.config_.name,
            # The database section is where results go, not part of the model (and its URL
            # may hold a password): it is never written to model.json.
            "config": _storable_config(self.config_),
            "score_kind": self.score_kind_,
            "score_revision": self.score_revision_,
            "schema": self.schema_.to_dict(),
            "preprocessor": self.preprocessor_.to_dict(),
            "network": {
                "n_numeric": self.model_.n_numeric,
                "cat_sizes": self.model_.cat_sizes,
                "hidden_dims": list(self.config_.model.hidden_dims),
                "latent_dim": self.latent_dim_,
                "dropout": self.config_.model.dropout,
                "min_log_var": self.config_.model.min_log_var,
                "encoder": self.config_.model.encoder,
                "window_steps": 1 if self.config_.window is None else self.config_.window.size,
                "conv_channels": list(self.config_.model.conv_channels),
                "conv_kernel": self.config_.model.conv_kernel,
            },
            "calibration": {
                "scores": self.calibration_.tolist(),
                "threshold": self.threshold_,
                "threshold_quantile": self.threshold_quantile_,
                "feature_baseline": self.feature_baseline_.tolist(),
            },
            "training": self.training_summary_,
        }
        self.model_hash_ = save_artifact(path, metadata=metadata, weights=self.model_.state_dict())
        return self.model_hash_

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> AnomalyVAE:
        """Load a model directory written by ``save``. Never executes code from the files."""
        meta, weights, digest = load_artifact(path)
        try:
            cfg = PipelineConfig.model_validate(meta["config"], context={"stored": True})
            if device is not None:
                cfg.training.device = device
            elif missing := _missing_device(cfg.training.device):
                # The device it was trained on is not a condition of scoring: a model trained
                # with 'device: cuda' (or 'mps', on a Mac) could not be loaded (not even by
                # 'info', nor by 'stream', which has no --device) on a machine without one.
                logger.warning(
                    "%s was trained with device %r; there is no %s here: it scores on the "
                    "CPU (the same scores up to float rounding)",
                    path,
                    cfg.training.device,
                    missing,
                )
                cfg.training.device = "cpu"
            est = cls(config=cfg)
            est.config_ = cfg
            est.score_kind_ = str(meta["score_kind"])
            if est.score_kind_ not in SCORE_KINDS:
                raise ValueError(f"unknown score kind {est.score_kind_!r}")
            # Scored as it was calibrated: a model saved before a change of the score keeps
            # the computation its threshold and percentiles were made with.
            est.score_revision_ = int(meta.get("score_revision", 1))
            if not 1 <= est.score_revision_ <= SCORE_REVISION:
                raise ModelFileError(
                    f"{path}: the model's score_revision {est.score_revision_} is newer than "
                    f"this anomaly-vae knows ({SCORE_REVISION}): upgrade anomaly-vae"
                )
            est.schema_ = FeatureSchema.from_dict(meta["schema"])
            est.preprocessor_ = Preprocessor.from_dict(meta["preprocessor"], est.schema_)
            _check_scaling(est.preprocessor_)
            net = meta["network"]

            def network() -> VAE:
                return VAE(
                    n_numeric=int(net["n_numeric"]),
                    cat_sizes=[int(s) for s in net["cat_sizes"]],
                    hidden_dims=[int(h) for h in net["hidden_dims"]],
                    latent_dim=int(net["latent_dim"]),
                    dropout=float(net["dropout"]),
                    min_log_var=float(net["min_log_var"]),
                    # Model files from before the conv encoder existed are MLPs.
                    encoder=str(net.get("encoder", "mlp")),
                    window_steps=int(net.get("window_steps", 1)),
                    conv_channels=[int(c) for c in net.get("conv_channels", [32, 16])],
                    conv_kernel=int(net.get("conv_kernel", 7)),
                )

            # The network's shape first, without memory: sizes edited in model.json (a latent
            # dimension of 10**9) must not allocate what the weights do not hold.
            with torch.device("meta"):
                outline = network()
            _check_weight_shapes(outline, weights)
            model = network()
            bad = [
                k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()
            ]
            if bad:
                raise ValueError(f"weight {bad[0]!r} holds NaN or infinite values")
            try:
                model.load_state_dict(weights, strict=True)
            except RuntimeError as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""
                raise ValueError(
                    f"{WEIGHTS_FILE} does not fit the network in model.json ({detail})"
                ) from None
            calib = meta["calibration"]
            est.calibration_ = np.asarray(calib["scores"], dtype=np.float64)
            est.threshold_ = float(calib["threshold"])
            est.threshold_quantile_ = float(calib["threshold_quantile"])
            if not 0.0 < est.threshold_quantile_ < 1.0:
                raise ValueError(f"threshold_quantile {est.threshold_quantile_} is not in (0, 1)")
            if est.calibration_.ndim != 1 or np.any(np.diff(est.calibration_) < 0):
                raise ValueError("the calibration scores are not a sorted list")
            est.feature_baseline_ = np.asarray(calib["feature_baseline"], dtype=np.float64)
            if est.feature_baseline_.shape != (len(est.schema_.names),):
                raise ValueError("feature_baseline does not match the schema")
            est.training_summary_ = dict(meta.get("training", {}))
            layout = est._layout()
        except ModelFileError:
            raise
        except (
            AttributeError,  # a list or a string where model.json holds an object
            KeyError,
            IndexError,
            TypeError,
            ValueError,
            RuntimeError,
            ValidationError,
        ) as exc:
            # pydantic's first line names no setting ("1 validation error for PipelineConfig").
            detail = (
                format_validation_error(exc)
                if isinstance(exc, ValidationError)
                else (str(exc).splitlines()[0] if str(exc) else "")
            )
            raise ModelFileError(
                f"{path}: the model description is inconsistent ({type(exc).__name__}: "
                f"{detail}): retrain the model"
            ) from None
        if layout.n_numeric != model.n_numeric or list(layout.cat_sizes) != model.cat_sizes:
            raise ModelFileError(f"{path}: the weights do not fit the stored feature layout")
        if (
            len(est.calibration_) == 0
            or not np.isfinite(est.calibration_).all()
            or not math.isfinite(est.threshold_)
        ):
            raise ModelFileError(f"{path}: the stored calibration is empty or not finite")
        try:
            est.device_ = resolve_device(cfg.training.device)
        except ConfigError as exc:
            if device is not None:
                raise  # the caller's device= argument, not the file
            raise ModelFileError(
                f"{path}: model.json names the training device {cfg.training.device!r}, which "
                f"cannot score here ({exc}): load it with device='cpu' (score --device cpu)"
            ) from None
        est.model_ = model.to(est.device_).eval()  # a loaded model is ready where it scores
        est.latent_dim_ = model.latent_dim
        est.n_features_in_ = est._array_columns() or len(est.schema_.names)
        est.feature_names_in_ = np.asarray(est.schema_.names, dtype=object)
        est._scorers = {}
        est.model_hash_ = digest
        return est

    @property
    def name(self) -> str:
        cfg = getattr(self, "config_", None) or self._config()
        return cfg.name if cfg is not None else "default"


# ============================================================================ helpers
def _missing_device(name: str) -> str:
    """What a model's training device names that this machine lacks ('' when it is here)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        return "CUDA GPU"
    if name.startswith("mps") and not torch.backends.mps.is_available():
        return "Apple MPS"
    return ""


def _check_weight_shapes(outline: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """ValueError unless ``weights`` hold exactly the tensors of ``outline``, shape by shape."""
    expected = {k: tuple(v.shape) for k, v in outline.state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ValueError(f"{WEIGHTS_FILE} does not fit the network in model.json ({what})")
    for key, want in expected.items():
        got = tuple(weights[key].shape)
        if got != want:
            raise ValueError(
                f"{WEIGHTS_FILE} does not fit the network in model.json (size mismatch for "
                f"{key}: {list(got)} in the weights, {list(want)} in the network)"
            )


def _rejects_of(rows: pd.DataFrame, reasons: list[str]) -> pd.DataFrame:
    """Rejects (``reason``, ``raw``: the row's values as strict JSON) for ``rows``, by index."""
    return pd.DataFrame(
        {"reason": reasons, "raw": [row_json(r) for r in rows.to_dict("records")]},
        index=rows.index,
    )


def latest_per_entity(
    entities: np.ndarray, times: np.ndarray, *, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A (train, validation) split of windows that holds out the latest ``fraction`` of each
    entity's windows by event time: each window's place in its entity's series (1/n for its
    first of n, 1 for its last) ranks it, and the ``round(fraction * total)`` latest places go
    to validation (at least one, and one left to train). Every entity is trained on and
    calibrated with, whatever order the file is in."""
    n = len(entities)
    if n < 2:
        return np.arange(n), np.arange(0)
    n_val = min(max(round(n * fraction), 1), n - 1)
    codes = pd.factorize(pd.Series(entities, dtype=object))[0]
    order = np.lexsort((np.arange(n), times, codes))  # by entity, then time, then arrival
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)  # place in the entity's series, from 0
    place = np.empty(n, dtype=np.float64)
    place[order] = (rank + 1) / np.repeat(counts, counts)
    held = np.argsort(-place, kind="stable")[:n_val]
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _window_keys(
    rows: pd.DataFrame,
    cfg: PipelineConfig,
    *,
    entity_column: str | None = None,
    day_first: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Entity (text; ``entity_column`` when a stream source gave one, else the window's entity
    column, else one series), event time in seconds (None: arrival order), and for each row
    the reason it cannot be windowed, or None: its time is missing or not a time, or the window
    names an entity column and the row has none (it would join an unnamed series of its own).
    ``day_first``: the order of numeric dates when the model has none (``_run_date_order``)."""
    window = cfg.window
    assert window is not None
    if window.day_first is not None:
        day_first = window.day_first
    n = len(rows)
    if entity_column is not None:
        raw = rows[entity_column]
    elif window.entity and window.entity in rows.columns:
        raw = rows[window.entity]
    elif window.entity:
        # Without it every entity's records would make one series, their windows mixed.
        raise SchemaError(
            f"the window's entity column {window.entity!r} is not in the input: add it, or "
            "remove window.entity from the pipeline (one series for all records)"
        )
    else:
        raw = pd.Series([""] * n, index=rows.index, dtype=object)
    texts = [entity_text(v) for v in raw.tolist()]
    entities = np.asarray([t or "" for t in texts], dtype=object)
    reasons = np.full(n, None, dtype=object)
    if window.entity:
        # A stream's record: the field may come from the message key too, so say where to
        # put it ("missing" alone read as if the field had to be in the JSON).
        where = " (neither a field of the message nor its key)" if entity_column else ""
        for i in np.flatnonzero(np.asarray([not t for t in texts], dtype=bool)):  # None or ""
            reasons[i] = f"window entity column {window.entity!r}: missing{where}"
    if not window.time:
        return entities, None, reasons
    if window.time not in rows.columns:
        raise SchemaError(
            f"the window's time column {window.time!r} is not in the input: add it, or remove "
            "window.time from the pipeline"
        )
    values = rows[window.time].tolist()
    times, bad = event_seconds(values, day_first=day_first)
    order = None if day_first is None else ("day" if day_first else "month")
    for i in np.flatnonzero(bad):
        if reasons[i] is None:
            value = values[i]
            if entity_text(value) is None:
                why = "missing"
            elif (
                order is not None
                and isinstance(value, str)
                and contradicts_date_order(pd.Series([value]), bool(day_first))[0]
            ):
                why = (
                    f"{_short(value)} cannot be read {order} first, the order this model reads "
                    f"numeric dates in (window.day_first: {str(day_first).lower()}, "
                    f"{_order_origin(window.day_first)}): train it with "
                    f"window.day_first: {str(not day_first).lower()}, or write times "
                    "as ISO 8601"
                )
            elif out_of_range_time(value):
                why = f"{_short(value)} {OUT_OF_RANGE_TIME}"
            elif (far := far_epoch_reason(value)) is not None:
                why = f"{_short(value)} {far}"
            else:
                # Cut as a feature's bad value is: a long text made a reason as long.
                why = f"{_short(value)} is not a time"
            reasons[i] = f"window time column {window.time!r}: {why}"
    return entities, times, reasons


@dataclass
class _Labelled:
    """The rows left out of training as labelled anomalies, with their positions in the
    training data, and the positions of the rows kept."""

    rows: pd.DataFrame
    positions: np.ndarray
    kept_positions: np.ndarray


def _labelled_before(
    entities: np.ndarray,
    order: np.ndarray,
    positions: np.ndarray,
    marks_entities: np.ndarray,
    marks_order: np.ndarray,
    marks_positions: np.ndarray,
) -> np.ndarray:
    """For each row, how many labelled anomalous rows (the marks) of its entity come before
    it: in event time (``order``; the position in the file without a time), ties in file
    order."""
    counts = np.zeros(len(entities), dtype=np.int64)
    for key in set(marks_entities.tolist()):
        rows = np.flatnonzero(entities == key)
        if not len(rows):
            continue
        mine = marks_entities == key
        sort = np.lexsort((marks_positions[mine], marks_order[mine]))
        mark_t, mark_p = marks_order[mine][sort], marks_positions[mine][sort]
        t, p = order[rows], positions[rows]
        lo = np.searchsorted(mark_t, t, side="left")
        hi = np.searchsorted(mark_t, t, side="right")
        counts[rows] = lo
        for j in np.flatnonzero(hi > lo):  # marks at the same time: those earlier in the file
            counts[rows[j]] += int(np.sum(mark_p[lo[j] : hi[j]] < p[j]))
    return counts


def _order_origin(model_order: bool | None) -> str:
    if model_order is not None:
        return "from its pipeline or its training data's times"
    return "decided by the first such times of this run, the training data having none"


def _run_date_order(rows: pd.DataFrame, cfg: PipelineConfig, state: WindowState) -> bool | None:
    """The order numeric dates are read in for ``rows``: the model's (``window.day_first``);
    for a model trained without numeric dates (ISO 8601 or epoch times), the order the first
    batch of this run that holds some decides (``numeric_date_order``), kept in ``state`` for
    every later chunk or Kafka batch. Decided batch by batch, an export's chunk with days up
    to 12 only was read month first and the next one day first: its records late, the scores
    depending on --chunk-size."""
    window = cfg.window
    assert window is not None
    if window.day_first is not None:
        return window.day_first
    if state.day_first is None and window.time and window.time in rows.columns:
        state.day_first = numeric_date_order(rows[window.time].tolist())
    return state.day_first


def _decide_date_order(rows: pd.DataFrame, cfg: PipelineConfig) -> None:
    """Set ``window.day_first`` from the training rows' times when the pipeline leaves it
    null and they hold numeric dates (05/11/2026): the model then reads every export and
    every Kafka batch in that one order, not in an order each batch decides for itself."""
    window = cfg.window
    if window is None or window.day_first is not None or not window.time:
        return
    if window.time not in rows.columns:
        return  # _window_keys says so
    order = numeric_date_order(rows[window.time].tolist())
    if order is not None:
        window.day_first = order
        logger.info(
            "window.time %r holds numeric dates: read %s first from now on",
            window.time,
            "day" if order else "month",
        )


def _stream_positions(rows: pd.DataFrame) -> tuple[list[str] | None, np.ndarray | None]:
    """``topic:partition`` and offset of each record from a Kafka source, else (None, None)."""
    if "_source_key" not in rows.columns:
        return None, None
    parts = [str(k).rsplit(":", 1) for k in rows["_source_key"].tolist()]
    return [p[0] for p in parts], np.asarray([int(p[1]) for p in parts], dtype=np.int64)


def _check_scaling(pre: Preprocessor) -> None:
    """A stored centre must be finite and a stored scale finite and positive: anything else
    (an edited model.json) would score every record as missing or wildly anomalous."""
    for name in pre.schema.numeric:
        center, scale = pre.center[name], pre.scale[name]
        if not math.isfinite(center) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"column {name!r} has centre {center} and scale {scale} (a scale must be a "
                "finite number above 0)"
            )


def default_latent_dim(n_blocks: int) -> int:
    """Half the number of features, between 2 and 32."""
    return int(min(32, max(2, math.ceil(n_blocks / 2))))


def _sorted_quantiles(sorted_values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile(sorted_values, q)`` (linear method) for values already sorted: an
    interpolation instead of one partition per quantile (0.7 s -> 1 ms for 10,001 quantiles of
    40k scores)."""
    positions = q * (len(sorted_values) - 1)
    return np.interp(positions, np.arange(len(sorted_values)), sorted_values)


def _warn_if_out_of_order(
    status: pd.Series, window: WindowConfig, entity_column: str | None
) -> None:
    """A one-off windowed call reads its rows in the order given: a frame out of time order
    (shuffled, or sorted by another column) has many ``late`` records, never flagged. Say so
    and what to do, as ``score`` does for a file."""
    late = int((status == "late").sum())
    if late <= max(10, 0.01 * len(status)):
        return
    keys = [k for k in (entity_column or window.entity, window.time) if k]
    order = f"sort it first, e.g. frame.sort_values({keys!r}), " if keys else ""
    logger.warning(
        "%d of %d records were late (scored alone, never flagged): the rows are read in the "
        "order given, each entity's in time order; is the frame in time order? %sor raise "
        "window.lateness_s (%g s)",
        late,
        len(status),
        order,
        window.lateness_s,
    )


def _as_frame(
    X: pd.DataFrame | np.ndarray,
    expected: list[str] | None = None,
    width: int | None = None,
    *,
    unread: Collection[str] = (),
) -> pd.DataFrame:
    """X as a frame with text column names; an array's columns are x0, x1... (or ``expected``,
    the model's features, when it has as many). ``width``: the columns of the array a model
    was fitted on, which an array (or pd.DataFrame(array)) to score must have. A column of
    complex numbers is refused when the model may read it: one of ``expected`` (scoring),
    else any not in ``unread`` (training: ignored, id, label... columns)."""
    X = _named_columns_as_frame(X)
    if not isinstance(X, pd.DataFrame):
        return _array_frame(X, expected, width)
    frame = _frame_of(X, expected, width)
    read = set(expected) if expected is not None else None
    complex_columns = [
        c
        for c, d in frame.dtypes.items()
        if d.kind == "c" and (c in read if read is not None else c not in unread)
    ]
    if complex_columns:
        # An extra column the model never reads (columns.ignore, or not a feature) was
        # refused too, though extra columns are otherwise left alone.
        raise ConfigError(_complex_message(f"column {complex_columns[0]!r} of X"))
    return frame


def _named_columns_as_frame(X: Any) -> Any:
    """X as a DataFrame when its columns have names though it is none, else X itself."""
    if isinstance(X, pd.DataFrame):
        return X
    if callable(getattr(X, "to_pandas", None)) and hasattr(X, "schema"):
        # A pyarrow Table or RecordBatch (a polars DataFrame too: a schema and to_pandas, not
        # a one-column array) went through np.asarray: its columns were read by position, so
        # a table whose columns came in another order than training was scored on the wrong
        # columns without a word.
        return X.to_pandas()
    if isinstance(X, np.ndarray) and X.dtype.names:
        # A structured or record array (df.to_records()): its fields are named columns, one
        # element a record; it was "got one row of 3 values" for three records.
        return pd.DataFrame(X)
    return X


def _frame_of(X: pd.DataFrame, expected: list[str] | None, width: int | None) -> pd.DataFrame:
    """``_as_frame`` of a DataFrame, before its complex columns are looked at."""
    if isinstance(X.columns, pd.MultiIndex):
        # Each name became the text of a tuple, "('x', 'a')", and then a KeyError.
        raise ConfigError(
            f"X has {X.columns.nlevels}-level column names (a MultiIndex, such as "
            f"{X.columns[0]!r}); AnomalyVAE reads columns by one name each: flatten them, "
            "e.g. X.columns = ['_'.join(map(str, c)) for c in X.columns]"
        )
    # Arrow text (read_csv / read_parquet with dtype_backend="pyarrow": string, dictionary)
    # as Python objects: pd.to_numeric turns such a column into Arrow doubles whose NaN is
    # no missing value, so every text value counted as a number, the column was taken as
    # numeric and every row rejected. Arrow numbers, booleans and times stay as they are.
    arrow_text = {
        c: object
        for c, d in X.dtypes.items()
        if isinstance(d, pd.ArrowDtype) and d.kind not in "biufmM"
    }
    if arrow_text:
        return _frame_of(X.astype(arrow_text), expected, width)
    positional = list(X.columns) == list(range(X.shape[1]))
    if width is not None and positional:
        # A model fitted on an array (its columns x0, x1...) and a frame made from one
        # (pd.DataFrame(array): columns 0, 1...): the same columns, by position.
        _check_width(X.shape[1], width)
        return X.set_axis(_array_names(width), axis=1)
    array_names = expected is not None and expected == _array_names(len(expected))
    if array_names and positional:
        return X.set_axis(_array_names(X.shape[1]), axis=1)
    fitted_on_array = width is not None or array_names  # (width: None in older model files)
    if fitted_on_array and not {str(c) for c in X.columns} & set(expected or ()):
        # fit(df.to_numpy()) then score(df), as scikit-learn code often does: "feature
        # columns 'x0', 'x1' missing (columns found: 'a', 'b')" said nothing of why.
        raise SchemaError(
            f"X has named columns ({_names_preview(X.columns)}), but the model was fitted on an "
            f"array, whose {width or len(expected or ())} columns are read by position (x0, "
            "x1...): "
            "pass X.to_numpy() with the columns in the order of training, or fit on the "
            "DataFrame to have its columns read by name"
        )
    frame = X if all(isinstance(c, str) for c in X.columns) else X.rename(columns=str)
    # Column names are text everywhere else (schemas, CSV headers, JSON messages); a name
    # twice would make frame[name] two columns (pandas then fails deep inside).
    if not frame.columns.is_unique:
        names = [str(c) for c in frame.columns]
        twice = next(n for n in names if names.count(n) > 1)
        where = [i + 1 for i, n in enumerate(names) if n == twice]
        raise ConfigError(
            f"X has the column name {twice!r} more than once (columns "
            f"{', '.join(map(str, where))}): rename or remove all but one"
        )
    return frame


def _names_preview(columns: Any, limit: int = 5) -> str:
    names = [repr(str(c)) for c in columns]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _array_frame(X: Any, expected: list[str] | None, width: int | None) -> pd.DataFrame:
    """``_as_frame`` of anything but a DataFrame: a 2-D array, or what refuses one."""
    if sparse.issparse(X):
        # np.asarray of a sparse matrix is a 0-d object array: "got an array of shape ()".
        raise ConfigError(
            f"X is a scipy sparse {type(X).__name__}; AnomalyVAE reads dense rows: pass "
            "X.toarray() (a missing value is NaN, not an absent entry); in a Pipeline, make the "
            "step before it dense (OneHotEncoder(sparse_output=False)), or leave text columns "
            "to AnomalyVAE, which encodes them itself"
        )
    if isinstance(X, pd.Series):
        # A record (df.iloc[i]: its index the column names) or a column (df["flow"]); fit's
        # Series, which has no expected names (and one record is too few to train on), was
        # told to pass a one-row frame, which would be a training set of one row.
        if expected is not None and set(expected) <= {str(name) for name in X.index}:
            raise ConfigError(
                "X is a Series; a record to score is a one-row DataFrame: pass df.iloc[[i]] "
                "(not df.iloc[i]), or series.to_frame().T"
            )
        column = f"column {str(X.name)!r}" if X.name is not None else "column"
        raise ConfigError(
            f"X is a Series (one {column}); AnomalyVAE reads a DataFrame: pass "
            "series.to_frame() for one feature (df[['name']], not df['name']), or df.iloc[[i]] "
            "for one record"
        )
    # Records as JSON gives them (the API's and the stream's form) were "X must be a
    # DataFrame or a 2-D array; got a dict" or "... of shape (1,)", with no word of the fix.
    if isinstance(X, dict):
        raise ConfigError(
            "X is a dict; pass pd.DataFrame([X]) for one record (its keys the column names), "
            "or pd.DataFrame(X) for a dict of columns"
        )
    if isinstance(X, (list, tuple)) and X and all(isinstance(r, dict) for r in X):
        raise ConfigError(
            "X is a list of dicts (records); pass pd.DataFrame(X), whose columns are their keys"
        )
    try:
        array = np.asarray(X)
    except ValueError as exc:
        why = (
            "its rows have different numbers of values"
            if "inhomogeneous" in str(exc)  # numpy's word for ragged rows
            else str(exc).splitlines()[0]
        )
        raise ConfigError(
            f"X cannot be read as a 2-D array: {why}; pass rows of equal length, or a DataFrame"
        ) from None
    if array.ndim == 1 and array.dtype != object:
        raise ConfigError(
            f"X must be 2-D (rows x features); got one row of {array.shape[0]} values: pass "
            "X.reshape(1, -1) for a single record (or X.reshape(-1, 1) for one feature)"
        )
    if array.ndim != 2:
        what = f"an array of shape {array.shape}" if array.ndim else f"a {type(X).__name__}"
        raise ConfigError(f"X must be a DataFrame or a 2-D array; got {what}")
    if array.dtype.kind == "c":
        raise ConfigError(_complex_message("X"))
    if width is not None:
        _check_width(array.shape[1], width)
    names = _array_names(array.shape[1])
    if expected is not None and len(expected) == array.shape[1]:
        if width is None and list(expected) != names:
            # A model fitted on a DataFrame read an array's columns as its own, by position,
            # without a word (scikit-learn warns of it): columns in another order were scored
            # as the wrong features.
            logger.warning(
                "X is an array, but the model was fitted on a DataFrame: its %d columns are "
                "read by position as %s; pass a DataFrame to have them read by name",
                len(names),
                _names_preview(expected),
            )
        names = list(expected)
    return pd.DataFrame(array, columns=names)


def _refuse_columns_in_index(frame: pd.DataFrame, names: list[str | None], *, source: str) -> None:
    """SchemaError when a column the model reads is not among X's columns but names a level
    of its index (df.set_index("ts")): it was only called missing."""
    levels = {str(n) for n in frame.index.names if n is not None}
    if not levels:
        return
    for name in names:
        if name and name in levels and name not in frame.columns:
            raise SchemaError(
                f"{source}: column {name!r} is the index of X, not a column: pass "
                "X.reset_index() (AnomalyVAE reads columns, never the index)"
            )


def _complex_message(what: str) -> str:
    # Cast to float with a ComplexWarning, the imaginary parts silently dropped.
    return (
        f"{what} holds complex numbers, which AnomalyVAE does not read: pass the parts as two "
        "real columns (X.real, X.imag) or the magnitude (np.abs(X))"
    )


def _check_width(given: int, width: int) -> None:
    if given != width:
        raise ConfigError(
            f"X has {given} columns, but the model was fitted on an array of {width}: an "
            "array's columns are read by position, so pass the same columns in the same order "
            "(or fit and score DataFrames, whose columns are read by name)"
        )


def _array_names(n: int) -> list[str]:
    """The column names of an array given as X: x0, x1..."""
    return [f"x{i}" for i in range(n)]


def _frame_hash(frame: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _param_message(exc: ValidationError, section: str) -> str:
    err = exc.errors()[0]
    message = _lower_first(err["msg"])
    value = err.get("input")
    if err["loc"]:
        field_name = str(err["loc"][0])
    else:
        # A rule on the whole section (a boolean where a number goes) names the field first,
        # "latent_dim: expected a number...", and its input is the section: the message was
        # "The model.model setting latent_dim: ... Got {'hidden_dims': [128, 64], ...} instead."
        field_name, named, rest = message.partition(": ")
        if not (named and isinstance(value, dict) and field_name in value):
            return f"The {section} settings: {message}"
        message, value = rest, value[field_name]
    param = next(
        (p for p, (s, f) in _PARAM_FIELDS.items() if s == section and f == field_name), None
    )
    label = f"The {param!r} parameter" if param else f"The {section}.{field_name} setting"
    # "must be greater than or equal to 1" reads on from the label; a rule's own sentence
    # ("every hidden width must be >= 1, got [0]") after a colon, its value said once.
    joined = f"{label} {message}" if message.startswith("must ") else f"{label}: {message}"
    return joined + ("." if repr(value) in message else f". Got {value!r} instead.")


def _lower_first(text: str) -> str:
    text = text.replace("Input should be", "must be").replace("Value error, ", "")
    return text[:1].lower() + text[1:] if text else text


# Words in a kafka.client option's name that mark it as a secret (sasl_plain_password,
# ssl_password, an OAuth token...), and options whose value may hold one (a proxy URL's
# user:password): never written to model.json.
_SECRET_OPTION_WORDS = ("password", "secret", "token")
_SECRET_OPTIONS = frozenset({"proxy_url", "socks5_proxy"})


def _storable_config(config: PipelineConfig) -> dict[str, Any]:
    """The pipeline as model.json keeps it: without the database section (where results go,
    not part of the model; its URL may hold a password) and without secrets among the Kafka
    client options (a model directory is copied and shared; the stream scorer takes the SASL
    password from ANOMALY_VAE_KAFKA_SASL_PASSWORD, others from ``stream --pipeline``). Only
    options kafka-python knows are written: a misspelt secret (``sasl_plain_pasword``) has no
    secret's word in its name."""
    from anomaly_vae.config import kafka_client_option_names

    data = config.model_dump(mode="json", exclude={"database"})
    client = (data.get("kafka") or {}).get("client") or {}
    known = kafka_client_option_names() if client else frozenset()
    secrets = sorted(
        k
        for k in client
        if k in _SECRET_OPTIONS or any(w in k.lower() for w in _SECRET_OPTION_WORDS)
    )
    unknown = sorted(k for k in client if k not in known and k not in secrets)
    for name in secrets + unknown:
        del client[name]
    if secrets:
        logger.warning(
            "kafka.client %s not written to the model directory (a secret): the stream scorer "
            "takes the SASL password from ANOMALY_VAE_KAFKA_SASL_PASSWORD, any other secret "
            "from 'stream --pipeline FILE'",
            ", ".join(secrets),
        )
    if unknown:
        logger.warning(
            "kafka.client %s not written to the model directory: not a kafka-python client "
            "option (misspelt? it may hold a secret)",
            ", ".join(unknown),
        )
    return data
