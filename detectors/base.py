"""The detector contract: combinable statistics -> fit -> numba scoring, and two drivers.

A detector describes its fit as ``n_stages`` passes over the data. In pass ``k`` every
batch is summarised per class by :meth:`BaseDetector.batch_statistics` (combinable
statistics from :mod:`poisonguard.detectors.statistics`), the summaries are merged, and
:meth:`BaseDetector.advance` turns the merged summaries into the state for the next pass.
The state after the last pass is the fitted *model*; ``model.suspicion(X, labels)`` scores
rows with a numba kernel, and ``model.thresholds_for(labels)`` gives each row's threshold.

Two drivers run the same three steps:

* the scikit-learn-style estimator (:meth:`BaseDetector.fit`), in memory, chunk by chunk;
* the Beam stage in :mod:`poisonguard.pipelines` (``CombinePerKey`` per pass, the model
  as a side input to a batched scoring ``ParDo``).

Scores follow scikit-learn's outlier convention: ``score_samples`` is higher for more
normal rows, ``decision_function = threshold - suspicion`` is negative for flagged rows and
``predict`` returns -1 (flagged) or +1. :meth:`BaseDetector.suspicion` is the
poison-oriented view: higher is more suspicious.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ..schemas import ConfigError, row_hash
from ._sklearn import Interval
from .statistics import Histogram
from .thresholds import SUSPICION_EDGES, upper_quantile_threshold

#: Rows per chunk when the estimator walks an in-memory array (bounds temporary memory).
CHUNK_ROWS = 65536


def group_by_label(labels: np.ndarray):
    """Yield ``(label, row_indices)`` per distinct label, labels as plain Python values, sorted."""
    if len(labels) == 0:
        return
    codes, uniques = pd.factorize(labels, sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniques)))[:-1]
    for label, rows in zip(uniques, np.split(order, bounds)):
        yield (label.item() if isinstance(label, np.generic) else label), rows


def label_codes(classes, labels: np.ndarray) -> np.ndarray:
    """Index of each label in ``classes``; -1 for a label the model has not seen."""
    return pd.Index(list(classes)).get_indexer(pd.Index(labels)).astype(np.int64)


class BaseDetector(OutlierMixin, BaseEstimator):
    """Shared driver code; subclasses define the stages, the model and ``name``."""

    #: Short name used for the ``score_<name>`` column and on the command line.
    name: str = ""
    #: Number of passes over the data the fit needs.
    n_stages: int = 1

    _parameter_constraints: dict = {
        "seed": [Interval(Integral, 0, None, closed="left")],
    }

    # -- the contract, shared by both drivers ---------------------------------------------
    def initial_state(self, n_features: int):
        """State before the first pass (parameters validated)."""
        raise NotImplementedError

    def batch_statistics(self, stage: int, state, X: np.ndarray, labels: np.ndarray, hashes, into: dict | None = None) -> dict:
        """Summaries of one batch for pass ``stage``: ``{label: statistic}``.

        ``hashes`` (uint64, one per row) is only needed in passes that sample rows (else
        None). With ``into``, the batch is added to those statistics (created as needed)
        and ``into`` is returned: the in-memory driver accumulates that way, which is the
        same as merging per-batch statistics but skips work a sample would discard.
        """
        raise NotImplementedError

    def advance(self, stage: int, state, statistics: dict):
        """Turn merged statistics of pass ``stage`` into the next state (the model after the last)."""
        raise NotImplementedError

    def row_hashes(self, row_ids) -> np.ndarray:
        """Keyed hashes of row ids that select this detector's bounded samples."""
        return row_hash(row_ids, self.seed, purpose=f"{self.name}-sample")

    # -- in-memory driver ----------------------------------------------------------------
    def fit(self, X, y, *, row_ids=None):
        """Fit on rows ``X`` (N, d) with class labels ``y`` (N,).

        ``row_ids`` (N,), optional, identify rows for the deterministic bounded sample; by
        default ``0..N-1``. Passing the pipeline's row ids reproduces its result exactly.
        """
        self._validate_params()
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=1)
        y = self._check_labels(y, len(X))
        ids = np.arange(len(X)) if row_ids is None else np.asarray(row_ids)
        if len(ids) != len(X):
            raise ConfigError(f"row_ids has {len(ids)} entries but X has {len(X)} rows")
        hashes = self.row_hashes(ids)
        state = self.initial_state(X.shape[1])
        for stage in range(self.n_stages):
            merged: dict = {}
            for start in range(0, len(X), CHUNK_ROWS):
                part = slice(start, start + CHUNK_ROWS)
                self.batch_statistics(stage, state, X[part], y[part], hashes[part], into=merged)
            state = self.advance(stage, state, merged)
        self._set_model(state)
        return self

    def _set_model(self, model) -> None:
        self.model_ = model
        self.classes_ = np.asarray(model.classes, dtype=object)
        self.thresholds_ = dict(zip(model.classes, model.thresholds.tolist()))

    def calibrate(self, X, y, *, target_fpr: float = 0.01):
        """Set one threshold for all classes from trusted reference rows.

        The threshold is the smallest value that at most ``target_fpr`` of the reference
        rows exceed (to a resolution of 0.01). Rows of classes the model has not seen are
        ignored.
        """
        check_is_fitted(self, "model_")
        hist = Histogram(SUSPICION_EDGES).add_batch(self.suspicion(X, y))
        self._set_model(self.model_.with_threshold(calibrated_threshold(hist, target_fpr)))
        return self

    def suspicion(self, X, y) -> np.ndarray:
        """Per-row suspicion (N,), higher = more suspicious; NaN for unseen classes."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        y = self._check_labels(y, len(X))
        out = np.empty(len(X), dtype=np.float64)
        for start in range(0, len(X), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            out[part] = self.model_.suspicion(X[part], y[part])
        return out

    def score_samples(self, X, y) -> np.ndarray:
        """Opposite of :meth:`suspicion`: higher = more normal (scikit-learn convention)."""
        return -self.suspicion(X, y)

    def decision_function(self, X, y) -> np.ndarray:
        """``threshold(class) - suspicion``: negative for flagged rows."""
        y = self._check_labels(y, len(X))
        return self.model_.thresholds_for(y) - self.suspicion(X, y)

    def predict(self, X, y) -> np.ndarray:
        """-1 for rows flagged as suspicious, +1 otherwise."""
        return np.where(self.decision_function(X, y) < 0, -1, 1)

    def fit_predict(self, X, y, **kwargs) -> np.ndarray:
        return self.fit(X, y, **kwargs).predict(X, y)

    @staticmethod
    def _check_labels(y, n_rows: int) -> np.ndarray:
        if y is None:
            raise ConfigError("y (class labels) is required: detectors score rows within their class")
        y = column_or_1d(y, warn=False)
        if len(y) != n_rows:
            raise ConfigError(f"y has {len(y)} labels but X has {n_rows} rows")
        if pd.isna(y).any():
            raise ConfigError("y contains missing labels")
        return y


def calibrated_threshold(histogram: Histogram, target_fpr: float) -> float:
    """Threshold that at most ``target_fpr`` of the reference rows in ``histogram`` exceed."""
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f"target FPR must be in (0, 1), got {target_fpr}")
    if histogram.total == 0:
        raise ConfigError("no reference rows of a known class to calibrate on")
    return upper_quantile_threshold(histogram.edges, histogram.counts, target_fpr)
